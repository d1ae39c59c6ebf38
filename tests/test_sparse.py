"""Row-sparse optimizers (recsys_jax.sparse) against dense Optax and hand-written updates,
and the engine's compile-once cache (recsys_jax.engine)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from recsys_jax import sparse
from recsys_jax.data import make_synthetic
from recsys_jax.engine import check_optimizer
from recsys_jax.losses import mse
from recsys_jax.models import bias, make_apply, make_config
from recsys_jax.penalties import make_l2_penalty
from recsys_jax.train import Batch, TrainConfig, TrainState, fit, make_objective, make_update

CONFIG = make_config("bias", embedding_dim=3, mean_rating=3.0)
APPLY = make_apply("bias", CONFIG)
OBJECTIVE = make_objective(APPLY, mse, make_l2_penalty(0.1, 0.05))
U, I = 4, 5


def _params(seed=0):
    p = bias.init(jax.random.key(seed), U, I, CONFIG)
    k1, k2 = jax.random.split(jax.random.key(seed + 100))
    # nonzero biases so that every term has a gradient
    return p._replace(user_bias=0.3 * jax.random.normal(k1, (U,)), item_bias=0.3 * jax.random.normal(k2, (I,)))


def _batch(users, items, ratings, mask=None):
    users, items = jnp.asarray(users, jnp.int32), jnp.asarray(items, jnp.int32)
    mask = jnp.ones(users.shape, bool) if mask is None else jnp.asarray(mask)
    return Batch(users, items, jnp.asarray(ratings, jnp.float32), mask)


def _sparse_steps(params, batches, name, lr):
    rows_tx, dense = sparse.ROW_OPTIMIZERS[name]
    row_tx, dense_tx = rows_tx(), dense(optax.constant_schedule(lr))
    lay = sparse.layout(params)
    state = TrainState(params, sparse.init_opt_state(params, row_tx, dense_tx), jnp.zeros((), jnp.int32))
    step = jax.jit(sparse.make_sparse_update(OBJECTIVE, row_tx, dense_tx, optax.constant_schedule(lr), lay, params))
    carry = sparse.pack(state, lay)
    for b in batches:
        carry, _ = step(carry, b, None)
    return sparse.unpack(carry, lay, params, TrainState)


def _dense_steps(params, batches, tx):
    state = TrainState(params, tx.init(params), jnp.zeros((), jnp.int32))
    step = jax.jit(make_update(OBJECTIVE, tx))
    for b in batches:
        state, _ = step(state, b, None)
    return state


# duplicates within a batch (user 1 thrice, item 2 twice), untouched rows (user 3, item 4)
# and a padding example (weight 0) on user 0 / item 0, which nothing else touches
DUP = _batch([1, 2, 1, 1, 0], [2, 2, 3, 1, 0], [4.0, 3.0, 5.0, 1.0, 2.0], [True, True, True, True, False])


def test_sgd_equals_dense_sgd_with_duplicates_and_padding():
    p0 = _params()
    got = _sparse_steps(p0, [DUP, DUP], "sgd", 0.5).params
    want = _dense_steps(p0, [DUP, DUP], optax.sgd(0.5)).params
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_lazy_adam_equals_adam_when_every_row_is_touched():
    full = [_batch([0, 1, 2, 3, 0, 1, 2, 3], [0, 1, 2, 3, 4, 4, 1, 0], r) for r in
            ([4, 3, 5, 1, 2, 4, 3, 3], [1, 2, 3, 4, 5, 4, 3, 2], [3, 3, 3, 3, 4, 4, 4, 4])]
    p0 = _params(1)
    got = _sparse_steps(p0, full, "lazy_adam", 0.05)
    want = _dense_steps(p0, full, optax.adam(0.05))
    for g, w in zip(got.params, want.params):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-6)
    # the moments too: optax's mu/nu against the packed state columns
    mu, nu = want.opt_state[0].mu, want.opt_state[0].nu
    d = 1 + CONFIG.embedding_dim
    np.testing.assert_allclose(got.opt_state.rows["user"][:, :d],
                               np.concatenate([mu.user_bias[:, None], mu.user_factors], 1), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(got.opt_state.rows["item"][:, d:],
                               np.concatenate([nu.item_bias[:, None], nu.item_factors], 1), rtol=1e-5, atol=1e-10)


def test_lazy_adam_leaves_untouched_rows_and_matches_hand_update():
    p0 = _params(2)
    b1, b2, eps, lr = 0.9, 0.999, 1e-8, 0.01
    got = _sparse_steps(p0, [DUP], "lazy_adam", lr).params
    g = jax.grad(OBJECTIVE)(p0, DUP, None)  # the dense gradient: its rows are the merged ones
    for name in ("user_factors", "item_factors", "user_bias", "item_bias"):
        table, grad, new = (np.asarray(getattr(x, name)) for x in (p0, g, got))
        touched = [1, 2] if name.startswith("user") else [1, 2, 3]
        untouched = [r for r in range(table.shape[0]) if r not in touched]
        np.testing.assert_array_equal(new[untouched], table[untouched])  # incl. padding-only row 0
        m, v = (1 - b1) * grad[touched], (1 - b2) * grad[touched] ** 2
        want = table[touched] - lr * (m / (1 - b1)) / (np.sqrt(v / (1 - b2)) + eps)
        np.testing.assert_allclose(new[touched], want, rtol=1e-5, atol=1e-7)
    # the global bias is dense: one Adam step moves it by lr * sign(grad)
    np.testing.assert_allclose(got.global_bias, p0.global_bias - lr * np.sign(g.global_bias), rtol=1e-5)


def test_rowwise_adagrad_matches_hand_update():
    p0 = _params(3)
    lr, eps = 0.1, 1e-10
    got = _sparse_steps(p0, [DUP, DUP], "adagrad", lr).params
    # by hand, two steps: accumulator = sum over steps of the row's mean squared gradient
    p = jax.tree.map(np.asarray, p0)
    acc = {"user": np.zeros(U), "item": np.zeros(I), "global": 0.0}
    for _ in range(2):
        g = jax.tree.map(np.asarray, jax.grad(OBJECTIVE)(jax.tree.map(jnp.asarray, p), DUP, None))
        new = p._asdict()
        for side, rows in (("user", [1, 2]), ("item", [1, 2, 3])):
            grow = np.concatenate([getattr(g, f"{side}_bias")[:, None], getattr(g, f"{side}_factors")], 1)[rows]
            acc[side][rows] += np.mean(grow**2, axis=1)
            scale = lr / (np.sqrt(acc[side][rows]) + eps)
            for name in (f"{side}_bias", f"{side}_factors"):
                t = np.array(getattr(p, name))
                gr = getattr(g, name)[rows]
                t[rows] -= scale.reshape((-1,) + (1,) * (gr.ndim - 1)) * gr
                new[name] = t
        # the global bias is dense: element-wise AdaGrad (optax.scale_by_rss, eps inside the root)
        acc["global"] += float(g.global_bias) ** 2
        new["global_bias"] = p.global_bias - lr * g.global_bias / np.sqrt(acc["global"] + eps)
        p = type(p)(**new)
    for name in ("user_factors", "item_factors", "user_bias", "item_bias", "global_bias"):
        np.testing.assert_allclose(getattr(got, name), getattr(p, name), rtol=1e-5, atol=1e-7)


def test_optimizer_errors_name_the_reason():
    with pytest.raises(ValueError, match="reads table rows"):
        check_optimizer("lazy_adam", "svdpp", TrainConfig())
    with pytest.raises(ValueError, match="whole-table"):
        check_optimizer("sgd", "bias", TrainConfig(penalty="table", l2=1e-4))
    with pytest.raises(ValueError, match="known optimizers"):
        check_optimizer("rmsprop", "bias", TrainConfig())


@pytest.fixture(scope="module")
def two_splits():
    r, _ = make_synthetic(jax.random.key(0), 120, 100, 3000)
    perm = np.random.default_rng(0).permutation(len(r))
    return r.take(np.sort(perm[:2000])), r.take(np.sort(perm[1000:]))


@pytest.mark.parametrize("optimizer", ["adam", "lazy_adam"])
def test_second_fit_of_the_same_shapes_compiles_nothing(two_splits, optimizer):
    a, b = two_splits
    assert np.mean(a.ratings) != np.mean(b.ratings)  # different data, same shapes
    tc = TrainConfig(epochs=2, batch_size=256, lr=1e-2, l2=0.01, optimizer=optimizer)
    first = fit("bias", a, key=0, train_config=tc, progress=False)
    second = fit("bias", b, key=1, train_config=tc, progress=False)
    assert first.compile_seconds > 0 and second.compile_seconds == 0.0
    # and the second fit really trained on its own data: its mean sets mu's start
    assert float(second.params.global_bias) != pytest.approx(float(first.params.global_bias), abs=1e-6)
    assert np.all(np.isfinite(second.history["train_loss"]))
