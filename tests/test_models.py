"""Contract and hand-computed tests for every model in MODELS."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from conftest import configured_model
from recsys_jax.models import MODELS, bias, dot, make_apply, make_config, mlp

NUM_USERS, NUM_ITEMS = 5, 7
USERS = jnp.array([0, 4, 2, 2, 1], jnp.int32)
ITEMS = jnp.array([6, 0, 3, 3, 5], jnp.int32)
TIMES = jnp.array([11000.5, 12000.0, 9000.25, 15000.0, 11500.0], jnp.float32)  # days since the epoch


def tiny_train():
    """A small training set with timestamps and titles/genres, for models with `prepare`."""
    import pandas as pd

    from recsys_jax.data import Ratings

    rng = np.random.default_rng(0)
    pairs = [(u, i) for u in range(NUM_USERS) for i in range(NUM_ITEMS) if (u + 2 * i) % 3]
    users, items = np.array(pairs).T
    movies = pd.DataFrame(
        {"title": [f"Film {i} ({1980 + 7 * i})" for i in range(NUM_ITEMS)],
         "genres": ["Drama|Comedy", "Action", "(no genres listed)", "Drama", "Sci-Fi|Action|Drama", "Comedy", "Horror"]},
        index=pd.Index(np.arange(NUM_ITEMS), name="movieId"))
    return Ratings.from_raw(users, items, rng.integers(1, 11, len(users)) / 2,
                            rng.integers(8e8, 1.4e9, len(users)), movies=movies)


class Ctx:
    """A model with its tiny config, perturbed params, and the extra inputs it reads."""

    def __init__(self, name):
        self.name = name
        self.module, self.config, self.aux = configured_model(name, tiny_train(), embedding_dim=4)
        params = self.module.init(jax.random.key(0), NUM_USERS, NUM_ITEMS, self.config)
        # Move off the init (zero biases, tiny factors) so every term matters.
        leaves, treedef = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.key(1), len(leaves))
        leaves = [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
        self.params = jax.tree.unflatten(treedef, leaves)
        self.kw = {"aux": self.aux, "times": TIMES}  # every apply takes both; ignores what it does not use

    def one_kw(self, n):
        """Keyword arguments of predict_one for pair n."""
        import inspect

        names = inspect.signature(self.module.predict_one).parameters
        kw = {"config": self.config}
        if "aux" in names:
            kw["aux"] = self.aux
        if "time" in names:
            kw["time"] = TIMES[n]
        return kw


@pytest.fixture(scope="module", params=list(MODELS))
def model(request):
    ctx = Ctx(request.param)
    return ctx.name, ctx.module, ctx.config, ctx.params, ctx


def test_init_shapes_and_dtypes(model):
    name, module, config, params, ctx = model
    assert isinstance(params, module.Params)
    for field, value in params._asdict().items():
        assert value.dtype == jnp.float32, field
        if field.startswith("user_"):
            assert value.shape[0] == NUM_USERS, field
        if field.startswith("item_"):
            assert value.shape[0] == NUM_ITEMS, field
    tables = [f for f in params._fields if f.startswith(("user_", "item_"))]
    if name == "ease":  # no user or item table: B is over the items with a positive (tests/test_ease.py)
        assert params.weights.shape == (config.num_active + 1,) * 2
        return
    assert tables, "every model has user_* / item_* tables (the penalties find them by name)"
    assert any(getattr(params, f).shape[-1] == 4 for f in tables)


def test_init_is_deterministic(model):
    name, module, config, _, ctx = model
    a = module.init(jax.random.key(3), NUM_USERS, NUM_ITEMS, config)
    b = module.init(jax.random.key(3), NUM_USERS, NUM_ITEMS, config)
    c = module.init(jax.random.key(4), NUM_USERS, NUM_ITEMS, config)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    if name in ("knn", "ease", "bfm"):  # draw nothing: their tables come from the data (tests/test_knn.py,
        # test_ease.py) or from the kept samples (tests/test_bfm.py)
        return
    table = next(f for f in a._fields if f.startswith("user_") and not f.endswith("_bias"))
    assert not np.array_equal(getattr(a, table), getattr(c, table))


def test_compiled_init_equals_the_op_by_op_init_and_serves_every_mean(model, monkeypatch):
    """`init_params` (one compiled program, the mean an argument) gives the module's own init
    to the bit, also with a y-range and without mu; another training mean runs the same program."""
    from recsys_jax.engine.build import _init_program, init_params

    name, module, config, _, ctx = model
    if module.fit_epochs is not None:  # trains itself: fit never calls init_params for it
        return
    for options in ({}, {"y_range": (0.5, 5.5)}, {"global_mean": False}):
        if not set(options) <= set(module.Config._fields):
            continue
        for mean in (3.25, 4.125):
            cfg = config._replace(mean_rating=mean, **options)
            want = module.init(jax.random.key(5), NUM_USERS, NUM_ITEMS, cfg)
            got = init_params(name, jax.random.key(5), NUM_USERS, NUM_ITEMS, cfg)
            assert jax.tree.structure(got) == jax.tree.structure(want)
            for x, y in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
                np.testing.assert_array_equal(x, y)
        static = config._replace(mean_rating=0.0, **options)
        assert _init_program(name, NUM_USERS, NUM_ITEMS, static)._cache_size() == 1  # both means, one program


def test_apply_equals_loop_over_predict_one(model):
    name, module, config, params, ctx = model
    batched = module.apply(params, USERS, ITEMS, config=config, **ctx.kw)
    looped = [module.predict_one(params, u, i, **ctx.one_kw(n)) for n, (u, i) in enumerate(zip(USERS, ITEMS))]
    assert batched.shape == (len(USERS),) and batched.dtype == jnp.float32
    np.testing.assert_allclose(batched, np.array(looped), rtol=1e-6, atol=1e-6)


def test_jit_equals_no_jit(model):
    name, module, config, params, ctx = model
    apply_fn = make_apply(name, config)
    eager = apply_fn(params, USERS, ITEMS, **ctx.kw)
    jitted = jax.jit(apply_fn)(params, USERS, ITEMS, **ctx.kw)
    np.testing.assert_allclose(eager, jitted, rtol=1e-6, atol=1e-6)


def test_gradients_match_finite_differences(model):
    name, module, config, params, ctx = model
    apply_fn = make_apply(name, config)
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params)
        # check_grads perturbs with NumPy arithmetic; make the leaves JAX arrays again.
        f = lambda p: apply_fn(jax.tree.map(jnp.asarray, p), USERS, ITEMS, **ctx.kw)  # noqa: E731
        check_grads(f, (p64,), order=1, modes=["rev"], eps=1e-6)


def test_y_range_squash_bounds_the_output(model):
    name, module, _, params, ctx = model
    config = ctx.config._replace(y_range=(0.5, 5.5))
    squashed = make_apply(name, config)(params, USERS, ITEMS, **ctx.kw)
    raw = module.apply(params, USERS, ITEMS, config=config, **ctx.kw)
    np.testing.assert_allclose(squashed, 0.5 + 5.0 / (1.0 + np.exp(-np.asarray(raw))), rtol=1e-5)
    assert np.all((squashed > 0.5) & (squashed < 5.5))


def test_dot_by_hand():
    p = dot.Params(
        user_factors=jnp.array([[1.0, 2.0], [0.5, -1.0]]),
        item_factors=jnp.array([[3.0, 0.5], [-2.0, 4.0], [0.0, 1.0]]),
    )
    got = dot.apply(p, jnp.array([0, 1, 0]), jnp.array([0, 1, 2]))
    np.testing.assert_allclose(got, [1 * 3 + 2 * 0.5, 0.5 * -2 + -1 * 4, 2.0])


def test_bias_by_hand():
    p = bias.Params(
        global_bias=jnp.array(3.5),
        user_bias=jnp.array([0.25, -0.5]),
        item_bias=jnp.array([0.1, 0.0, -0.3]),
        user_factors=jnp.array([[1.0, 2.0], [0.5, -1.0]]),
        item_factors=jnp.array([[3.0, 0.5], [-2.0, 4.0], [0.0, 1.0]]),
    )
    got = bias.apply(p, jnp.array([0, 1]), jnp.array([0, 2]))
    np.testing.assert_allclose(got, [3.5 + 0.25 + 0.1 + 4.0, 3.5 - 0.5 - 0.3 - 1.0], rtol=1e-6)


def test_bias_init_starts_at_the_mean():
    config = make_config("bias", mean_rating=3.2)
    params = bias.init(jax.random.key(0), 3, 4, config)
    assert float(params.global_bias) == pytest.approx(3.2)
    squashed = make_config("bias", mean_rating=3.2, y_range=(0.0, 5.0))
    p2 = bias.init(jax.random.key(0), 3, 4, squashed)
    assert 5.0 * float(jax.nn.sigmoid(p2.global_bias)) == pytest.approx(3.2, abs=1e-5)


def test_mlp_by_hand():
    # K=1, H=2: h = relu(W1 [p; q] + c1), r = w2 . h + c2
    p = mlp.Params(
        user_factors=jnp.array([[1.0], [-2.0]]),
        item_factors=jnp.array([[0.5], [3.0]]),
        hidden_w=jnp.array([[1.0, -1.0], [2.0, 1.0]]),
        hidden_b=jnp.array([0.0, 0.5]),
        out_w=jnp.array([2.0, -1.0]),
        out_b=jnp.array(0.25),
    )
    config = mlp.Config(embedding_dim=1, hidden=2)
    # user 0, item 1: x = [1, 3]; W1^T x + c1 = [1 + 6, -1 + 3 + 0.5] = [7, 2.5]
    # user 1, item 0: x = [-2, 0.5]; = [-2 + 1, 2 + 0.5 + 0.5] = [-1 -> 0, 3]
    got = mlp.apply(p, jnp.array([0, 1]), jnp.array([1, 0]), config=config)
    np.testing.assert_allclose(got, [2 * 7 - 2.5 + 0.25, -3 + 0.25], rtol=1e-6)


def test_mlp_dropout_only_with_a_key():
    config = make_config("mlp", embedding_dim=8)
    params = mlp.init(jax.random.key(0), 50, 60, config)
    users = jnp.arange(50) % 50
    items = jnp.arange(50) % 60
    a = mlp.apply(params, users, items, config=config)
    b = mlp.apply(params, users, items, config=config)
    np.testing.assert_array_equal(a, b)
    c = mlp.apply(params, users, items, jax.random.key(1), config=config)
    d = mlp.apply(params, users, items, jax.random.key(1), config=config)
    e = mlp.apply(params, users, items, jax.random.key(2), config=config)
    np.testing.assert_array_equal(c, d)
    assert not np.allclose(c, a) and not np.allclose(c, e)
    no_drop = config._replace(input_dropout=0.0, hidden_dropout=0.0)
    np.testing.assert_allclose(mlp.apply(params, users, items, jax.random.key(1), config=no_drop), a, rtol=1e-6)


def test_mlp_dropout_is_unbiased_in_the_hidden_layer():
    # Inverted dropout keeps E[h] fixed: average many masks of the *input* layer only,
    # on a net whose hidden layer is linear in its input (relu inactive region avoided by
    # a large positive hidden bias), and compare with the deterministic output.
    config = mlp.Config(embedding_dim=2, hidden=3, input_dropout=0.3, hidden_dropout=0.0)
    params = mlp.init(jax.random.key(0), 1, 1, config)._replace(hidden_b=jnp.full((3,), 100.0))
    u = jnp.zeros(20_000, jnp.int32)
    noisy = mlp.apply(params, u, u, jax.random.key(5), config=config)
    clean = mlp.apply(params, u[:1], u[:1], config=config)
    assert float(jnp.mean(noisy)) == pytest.approx(float(clean[0]), abs=0.02)


def test_unknown_model_and_option_errors():
    from recsys_jax.models import get_model

    with pytest.raises(ValueError, match="known models"):
        get_model("svd9000")
    with pytest.raises(ValueError, match="no option"):
        make_config("bias", hidden=3)


def test_gmf_by_hand_and_reduces_to_dot():
    from recsys_jax.models import gmf

    p = gmf.Params(
        user_factors=jnp.array([[1.0, 2.0], [0.5, -1.0]]),
        item_factors=jnp.array([[3.0, 0.5], [-2.0, 4.0]]),
        out_w=jnp.array([2.0, -1.0]),
        out_b=jnp.array(0.5),
    )
    got = gmf.apply(p, jnp.array([0, 1]), jnp.array([0, 1]))
    np.testing.assert_allclose(got, [0.5 + 2 * 3 - 1 * 1, 0.5 + 2 * -1 - 1 * -4], rtol=1e-6)
    as_dot = p._replace(out_w=jnp.ones(2), out_b=jnp.array(0.0))
    d = dot.Params(p.user_factors, p.item_factors)
    np.testing.assert_allclose(gmf.apply(as_dot, USERS % 2, ITEMS % 2), dot.apply(d, USERS % 2, ITEMS % 2), rtol=1e-6)


def test_neumf_by_hand():
    from recsys_jax.models import neumf

    # K=1, hidden (2, 1, 1): MLP embeddings are 1-d each.
    p = neumf.Params(
        user_gmf=jnp.array([[2.0]]), item_gmf=jnp.array([[3.0]]),
        user_mlp=jnp.array([[1.0]]), item_mlp=jnp.array([[-1.0]]),
        w1=jnp.array([[1.0, 2.0], [3.0, 0.0]]), b1=jnp.array([0.0, 1.0]),   # [1,-1] -> [-2, 3] -> relu [0, 3]
        w2=jnp.array([[1.0], [2.0]]), b2=jnp.array([-1.0]),                  # 0 + 6 - 1 = 5
        w3=jnp.array([[0.5]]), b3=jnp.array([0.0]),                          # 2.5
        out_w=jnp.array([1.0, 2.0]), out_b=jnp.array(0.25),                  # 6 + 5 + .25
    )
    config = neumf.Config(embedding_dim=1, hidden=(2, 1, 1))
    got = neumf.apply(p, jnp.array([0]), jnp.array([0]), config=config)
    np.testing.assert_allclose(got, [11.25], rtol=1e-6)


def test_svdpp_by_hand():
    from recsys_jax.models import svdpp

    p = svdpp.Params(
        global_bias=jnp.array(3.0), user_bias=jnp.array([0.5, -0.5]), item_bias=jnp.array([0.1, 0.2, 0.3]),
        user_factors=jnp.array([[1.0, 0.0], [0.0, 1.0]]),
        item_factors=jnp.array([[1.0, 2.0], [3.0, -1.0], [0.0, 1.0]]),
        item_implicit=jnp.array([[2.0, 0.0], [0.0, 4.0], [2.0, 2.0]]),
    )
    # N(0) = {0, 2}: implicit = (y0 + y2) / sqrt 2 = [4, 2] / sqrt 2; N(1) = {1}: y1 = [0, 4]
    aux = svdpp.Aux(jnp.array([0, 0, 1]), jnp.array([0, 2, 1]), jnp.array([2 ** -0.5, 1.0]))
    z0 = np.array([1.0, 0.0]) + np.array([4.0, 2.0]) / np.sqrt(2)
    z1 = np.array([0.0, 1.0]) + np.array([0.0, 4.0])
    want = [3.0 + 0.5 + 0.2 + np.dot([3.0, -1.0], z0), 3.0 - 0.5 + 0.1 + np.dot([1.0, 2.0], z1)]
    np.testing.assert_allclose(svdpp.apply(p, jnp.array([0, 1]), jnp.array([1, 0]), aux=aux), want, rtol=1e-6)
    np.testing.assert_allclose(svdpp.predict_one(p, 0, 1, aux=aux), want[0], rtol=1e-6)


def test_svdpp_prepare_uses_the_training_pairs():
    from recsys_jax.models import svdpp

    train = tiny_train()
    aux = svdpp.prepare(train)
    counts = np.bincount(train.users, minlength=train.num_users)
    np.testing.assert_allclose(aux.norm, 1 / np.sqrt(counts), rtol=1e-6)
    got = sorted(zip(np.asarray(aux.rated_users).tolist(), np.asarray(aux.rated_items).tolist()))
    assert got == sorted(zip(train.users.tolist(), train.items.tolist()))


def test_timesvd_by_hand():
    from recsys_jax.models import timesvd

    config = timesvd.Config(embedding_dim=1, num_bins=4, beta=0.5)
    p = timesvd.Params(
        global_bias=jnp.array(3.0), user_bias=jnp.array([0.5]), user_drift_bias=jnp.array([0.2]),
        item_bias=jnp.array([-0.1]), item_bin_bias=jnp.array([[0.0, 0.1, 0.2, 0.3]]),
        user_factors=jnp.array([[2.0]]), item_factors=jnp.array([[0.5]]),
    )
    aux = timesvd.Aux(user_mean_day=jnp.array([100.0]), first_day=jnp.array(0.0), bin_days=jnp.array(50.0),
                      dev_scale=jnp.array(2.0))
    # t = 116: dev = +sqrt(16) / 2 = 2; bin = floor(116 / 50) = 2.  t = 91: dev = -3 / 2; bin 1.
    # t = 400: past the range -> last bin (3); dev = sqrt(300) / 2.
    got = timesvd.apply(p, jnp.array([0, 0, 0]), jnp.array([0, 0, 0]), config=config, aux=aux,
                        times=jnp.array([116.0, 91.0, 400.0]))
    base = 3.0 + 0.5 - 0.1 + 1.0
    np.testing.assert_allclose(got, [base + 0.2 * 2 + 0.2, base - 0.2 * 1.5 + 0.1, base + 0.2 * np.sqrt(300) / 2 + 0.3],
                               rtol=1e-6)


def test_fm_equals_the_explicit_pairwise_sum():
    from recsys_jax.models import fm

    train = tiny_train()
    config = fm.Config(embedding_dim=3)
    aux = fm.prepare(train, config)
    config = fm.configure(config, aux)
    params = fm.init(jax.random.key(0), NUM_USERS, NUM_ITEMS, config)
    params = jax.tree.map(lambda x: x + 0.2 * jax.random.normal(jax.random.key(2), x.shape), params)
    got = fm.apply(params, USERS, ITEMS, config=config, aux=aux)
    for n, (u, i) in enumerate(zip(np.asarray(USERS), np.asarray(ITEMS))):
        # Explicit feature list: (bias, factor, value) for the one-hots and the side features.
        feats = [(params.user_bias[u], params.user_factors[u], 1.0), (params.item_bias[i], params.item_factors[i], 1.0)]
        for j, x in zip(np.asarray(aux.item_features[i]), np.asarray(aux.item_values[i])):
            if x != 0:
                feats.append((params.feature_bias[j], params.feature_factors[j], float(x)))
        want = float(params.global_bias) + sum(float(b) * x for b, _, x in feats)
        want += sum(float(np.dot(va, vb)) * xa * xb
                    for a, (_, va, xa) in enumerate(feats) for (_, vb, xb) in feats[a + 1:])
        assert float(got[n]) == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_fm_side_features_from_titles_and_genres():
    from recsys_jax.models.fm import item_side_features

    feats = item_side_features([("Toy Story (1995)", "Adventure|Animation"), ("Untitled", "(no genres listed)"),
                                ("Heat (1995) ", "Action")], year_bucket=5)
    assert feats[0] == [("genre=Adventure", 2 ** -0.5), ("genre=Animation", 2 ** -0.5), ("year=1995", 1.0)]
    assert feats[1] == []
    assert feats[2] == [("genre=Action", 1.0), ("year=1995", 1.0)]
