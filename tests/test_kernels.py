"""The CPU kernels (recsys_jax.engine.kernels) against the XLA programs they stand in for: the fused
SGD step of the bias and dot models, and the Feistel permutation of the epoch's shuffle."""
import os
import stat

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from recsys_jax.engine import kernels, shuffle, sparse
from recsys_jax.data import make_synthetic
from recsys_jax.engine.build import make_engine
from recsys_jax.objectives.losses import mse
from recsys_jax.models import bias, dot, make_apply, make_config
from recsys_jax.objectives.penalties import make_l2_penalty
from recsys_jax.engine.step import Batch, TrainState, make_objective
from recsys_jax.engine.config import TrainConfig
from recsys_jax.engine.options import resolve_options
from recsys_jax.training.fit import fit


@pytest.fixture(scope="module", autouse=True)
def built():
    """Every test here needs the kernels loaded. Where they cannot be built they are
    skipped, unless ``RECSYS_JAX_REQUIRE_KERNELS=1`` (CI sets it: its machine has g++), where
    that is a failure. (How they are built and refused: tests/test_kernel_build.py, which
    runs everywhere.)"""
    if kernels.load() is None:
        if os.environ.get("RECSYS_JAX_REQUIRE_KERNELS", "").strip() not in ("", "0"):
            pytest.fail(f"CPU kernels required (RECSYS_JAX_REQUIRE_KERNELS) but unavailable: {kernels.why_not()}")
        pytest.skip(f"CPU kernels unavailable: {kernels.why_not()}")


def _batch(users, items, ratings, mask):
    return Batch(jnp.asarray(users, jnp.int32), jnp.asarray(items, jnp.int32), jnp.asarray(ratings, jnp.float32),
                 jnp.asarray(mask))


# duplicates within a batch (user 1 thrice, item 2 twice), untouched rows (user 3, item 4)
# and a padding example (weight 0) on user 0 / item 0, which nothing else touches
DUP = _batch([1, 2, 1, 1, 0], [2, 2, 3, 1, 0], [4.0, 3.0, 5.0, 1.0, 2.0], [True, True, True, True, False])
OTHER = _batch([3, 0, 2, 1, 2], [4, 4, 0, 2, 2], [2.0, 5.0, 1.5, 3.0, 4.5], [True, True, True, True, True])
L2, BIAS_L2, LR = 0.1, 0.05, 0.3


def _params(model, global_mean=True):
    if model == "bias":
        config = make_config("bias", embedding_dim=3, mean_rating=3.0, global_mean=global_mean)
        p = bias.init(jax.random.key(0), 4, 5, config)
        k1, k2 = jax.random.split(jax.random.key(100))  # nonzero biases: every term has a gradient
        p = p._replace(user_bias=0.3 * jax.random.normal(k1, (4,)), item_bias=0.3 * jax.random.normal(k2, (5,)))
    else:
        config = make_config("dot", embedding_dim=3)
        p = dot.init(jax.random.key(0), 4, 5, config)
    return config, p._replace(**{f: 10.0 * getattr(p, f) for f in p._fields if f.endswith("factors")})


def _train(model, config, params, batches, *, fused, global_mean=True, bias_l2=BIAS_L2, optimizer="sgd"):
    """``(params, losses)`` after ``optimizer`` steps on ``batches``: the kernel's step
    (``fused``) or XLA's (`recsys_jax.engine.sparse.make_sparse_update` on the objective written out)."""
    row_tx, make_dense = sparse.ROW_OPTIMIZERS[optimizer]
    schedule = optax.constant_schedule(LR)
    row_tx, dense_tx = row_tx(), make_dense(schedule)
    lay = sparse.layout(params)
    if fused:
        step = sparse.make_fused_update(optimizer, dense_tx, schedule, lay, l2=L2, bias_l2=bias_l2,
                                        global_mean=global_mean)
    else:
        objective = make_objective(make_apply(model, config), mse, make_l2_penalty(L2, bias_l2))
        step = sparse.make_sparse_update(objective, row_tx, dense_tx, schedule, lay, params)
    state = TrainState(params, sparse.init_opt_state(params, row_tx, dense_tx), jnp.zeros((), jnp.int32))
    carry, losses, step = sparse.pack(state, lay), [], jax.jit(step)
    for batch in batches:
        carry, loss = step(carry, batch, None)
        losses.append(float(loss))
    return sparse.unpack(carry, lay, params, TrainState).params, losses


def _assert_same(got, want, atol=1e-6):
    (got, got_losses), (want, want_losses) = got, want
    np.testing.assert_allclose(got_losses, want_losses, rtol=1e-5)
    for name in want._fields:
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-5, atol=atol, err_msg=name)


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "lazy_adam"])
@pytest.mark.parametrize("model,global_mean", [("bias", True), ("bias", False), ("dot", True)])
def test_fused_step_equals_the_xla_step(model, global_mean, optimizer):
    config, start = _params(model, global_mean)
    run = dict(global_mean=global_mean, optimizer=optimizer)
    got = _train(model, config, start, (DUP, OTHER, DUP), fused=True, **run)
    _assert_same(got, _train(model, config, start, (DUP, OTHER, DUP), fused=False, **run))
    # user 3 is touched by OTHER only; global_bias moves only where the model has it
    assert not np.allclose(got[0].user_factors[3], start.user_factors[3])
    if model == "bias":
        assert (float(got[0].global_bias) != float(start.global_bias)) == global_mean


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "lazy_adam"])
def test_a_diverged_step_leaves_nothing_for_the_next_one(optimizer):
    """A padding example (weight 0) on an inf row: the step's scratch is process-wide, and
    0 * inf = NaN left there reached the next call's rows. A healthy step on other tables
    afterwards must still be XLA's step (item 1 of the kernels' review). Either side's row may
    be the one in scratch (the kernel sorts by the larger table): both are poisoned in turn."""
    config, start = _params("bias")
    for poisoned in ("user_factors", "item_factors"):  # row 0: touched by padding only in DUP
        bad = start._replace(**{poisoned: getattr(start, poisoned).at[0].set(jnp.inf)})
        _train("bias", config, bad, (DUP,), fused=True, optimizer=optimizer)
    # OTHER touches user 0 and item 0 with weight: their scratch rows must be clean
    _assert_same(_train("bias", config, start, (OTHER,), fused=True, optimizer=optimizer),
                 _train("bias", config, start, (OTHER,), fused=False, optimizer=optimizer))


def test_a_healthy_fit_after_a_diverged_one_is_the_fit_of_a_fresh_process():
    """Issue 25's first "done when", at the level of whole fits: a fit that diverges (its
    rows inf, padding in its last batch) leaves nothing in the kernel's scratch for the next
    fit; that one equals, bit for bit, the same fit run before anything diverged (what a
    fresh process computes: its scratch starts clean)."""
    import warnings

    # ids from a large range: the padding (rating 0's user and item) is likely the only example
    # on its row in the last batch, as in the step-level test above
    train, _ = make_synthetic(jax.random.key(5), num_users=3000, num_items=2000, num_ratings=1000)
    options = resolve_options(kernels=True)
    model_config = make_config("bias", embedding_dim=4)

    def run(lr):
        tc = TrainConfig(epochs=2, batch_size=300, lr=lr, schedule="constant", optimizer="sgd", l2=1e-3)
        return fit("bias", train, train_config=tc, model_config=model_config, progress=False, options=options)

    before = run(0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        diverged = run(1e30)
    assert diverged.stop_reason and "non-finite" in diverged.stop_reason
    after = run(0.05)
    for name in before.params._fields:
        np.testing.assert_array_equal(getattr(after.params, name), getattr(before.params, name), err_msg=name)


def test_the_blocked_order_kernel_refuses_a_visit_that_repeats_a_block():
    """Its size check sums over blocks and its writes follow `visit`: a repeated block would
    write past the output (item 4 of the kernels' review)."""
    starts, sizes = jnp.asarray([0, 6, 7], jnp.int32), jnp.asarray([6, 1, 1], jnp.int32)
    out = jax.ShapeDtypeStruct((8,), jnp.int32)
    call = jax.ffi.ffi_call("recsys_blocked_permutation", out)
    shift = jnp.zeros(3, jnp.int32)
    ok = call(starts, sizes, jnp.asarray([2, 0, 1], jnp.int32), shift)
    np.testing.assert_array_equal(ok, [7, 0, 1, 2, 3, 4, 5, 6])
    with pytest.raises(Exception, match="repeats a block"):
        jax.block_until_ready(call(starts, sizes, jnp.asarray([0, 0, 1], jnp.int32), shift))


@pytest.mark.parametrize("num_users,num_items,optimizer", [(9, 5, "sgd"), (70_000, 6, "sgd"), (6, 70_000, "sgd"),
                                                            (9, 5, "adagrad"), (6, 70_000, "adagrad"),
                                                            (9, 5, "lazy_adam"), (70_000, 6, "lazy_adam")])
def test_fused_step_equals_the_xla_step_on_random_batches(num_users, num_items, optimizer):
    """Either side the larger (the kernel sorts by it), and a side above 65536 rows (its sort
    takes two radix passes); 300 examples with many duplicates, some of them padding."""
    config = make_config("bias", embedding_dim=4, mean_rating=3.0)
    params = bias.init(jax.random.key(1), num_users, num_items, config)
    params = params._replace(user_factors=10.0 * params.user_factors, item_factors=10.0 * params.item_factors)
    rng = np.random.default_rng(0)
    batches = [_batch(rng.integers(0, min(num_users, 40), 300), rng.integers(0, min(num_items, 40), 300),
                      rng.uniform(1, 5, 300), rng.uniform(size=300) < 0.9) for _ in range(2)]
    _assert_same(_train("bias", config, params, batches, fused=True, optimizer=optimizer),
                 _train("bias", config, params, batches, fused=False, optimizer=optimizer))


@pytest.mark.parametrize("model,dim,optimizer", [("dot", 50, "sgd"), ("bias", 50, "adagrad"),
                                                 ("dot", 64, "lazy_adam"), ("bias", 64, "sgd")])
def test_fused_step_equals_the_xla_step_at_the_compiled_widths(model, dim, optimizer):
    """Phase A is compiled for rows of 50, 51, 64 and 65 columns (50 or 64 factors, with or
    without the bias column) besides any width, and phase B walks the batch instead of the
    rows where the smaller side has more than 4 x batch rows: both sides of 3000 and 2000
    rows here, batches of 300 (item 10)."""
    config = make_config(model, embedding_dim=dim, **({"mean_rating": 3.0} if model == "bias" else {}))
    init = bias.init if model == "bias" else dot.init
    params = init(jax.random.key(2), 3000, 2000, config)
    params = params._replace(**{f: 3.0 * getattr(params, f) for f in params._fields if f.endswith("factors")})
    rng = np.random.default_rng(1)
    batches = [_batch(rng.integers(0, 3000, 300), rng.integers(0, 2000, 300), rng.uniform(1, 5, 300),
                      rng.uniform(size=300) < 0.95) for _ in range(2)]
    got = _train(model, config, params, batches, fused=True, optimizer=optimizer)
    # Adam's first step moves a parameter by lr G / (|G| + eps): where a row's gradient
    # nearly cancels (|G| ~ eps: one element of the 64 x 300 here, |G| = 1e-8 in float64),
    # float rounding in G moves it by up to lr. A wrong step moves it by ~lr; rounding here
    # by 2e-4.
    atol = LR * 1e-3 if optimizer == "lazy_adam" else 1e-6
    _assert_same(got, _train(model, config, params, batches, fused=False, optimizer=optimizer), atol=atol)
    touched = np.unique(np.asarray(batches[0].users))
    assert not np.allclose(got[0].user_factors[touched], params.user_factors[touched])


def test_fused_sgd_step_by_hand():
    """One step on one example, written out: e = mu + b_u + b_i + p.q - r, W = 1."""
    config, params = _params("bias")
    one = _batch([2, 0], [1, 0], [4.0, 9.0], [True, False])
    new, (loss,) = _train("bias", config, params, [one], fused=True)
    p, q = np.asarray(params.user_factors[2], np.float64), np.asarray(params.item_factors[1], np.float64)
    bu, bi, mu = float(params.user_bias[2]), float(params.item_bias[1]), float(params.global_bias)
    e = mu + bu + bi + p @ q - 4.0
    assert loss == pytest.approx(e * e + L2 * (p @ p + q @ q) + BIAS_L2 * (bu * bu + bi * bi), rel=1e-5)
    np.testing.assert_allclose(new.user_factors[2], p - LR * (2 * e * q + 2 * L2 * p), rtol=1e-5)
    np.testing.assert_allclose(new.item_factors[1], q - LR * (2 * e * p + 2 * L2 * q), rtol=1e-5)
    assert float(new.user_bias[2]) == pytest.approx(bu - LR * (2 * e + 2 * BIAS_L2 * bu), rel=1e-5)
    assert float(new.global_bias) == pytest.approx(mu - LR * 2 * e, rel=1e-5)
    np.testing.assert_array_equal(new.user_factors[0], params.user_factors[0])  # padding only: untouched


def test_fused_adagrad_step_by_hand():
    """One AdaGrad step on one example from zero accumulators: a = |g|^2 / P over the row's
    P = 4 columns (bias and 3 factors), then theta - lr g / (sqrt(a) + eps); twice, the
    second from the first's accumulators."""
    config, params = _params("bias")
    one = _batch([2, 0], [1, 0], [4.0, 9.0], [True, False])
    new, _ = _train("bias", config, params, [one, one], fused=True, optimizer="adagrad")
    p, q = np.asarray(params.user_factors[2], np.float64), np.asarray(params.item_factors[1], np.float64)
    bu, bi, mu = float(params.user_bias[2]), float(params.item_bias[1]), float(params.global_bias)
    acc_u = acc_i = acc_mu = 0.0
    for _ in range(2):
        e = mu + bu + bi + p @ q - 4.0
        gu = np.concatenate([[2 * e + 2 * BIAS_L2 * bu], 2 * e * q + 2 * L2 * p])
        gi = np.concatenate([[2 * e + 2 * BIAS_L2 * bi], 2 * e * p + 2 * L2 * q])
        acc_u, acc_i, acc_mu = acc_u + gu @ gu / 4, acc_i + gi @ gi / 4, acc_mu + (2 * e) ** 2
        gu, gi = LR * gu / (np.sqrt(acc_u) + 1e-10), LR * gi / (np.sqrt(acc_i) + 1e-10)
        bu, p, bi, q = bu - gu[0], p - gu[1:], bi - gi[0], q - gi[1:]
        mu -= LR * 2 * e / (np.sqrt(acc_mu) + 1e-10)
    np.testing.assert_allclose(new.user_factors[2], p, rtol=1e-5)
    np.testing.assert_allclose(new.item_factors[1], q, rtol=1e-5)
    assert float(new.user_bias[2]) == pytest.approx(bu, rel=1e-5)
    assert float(new.item_bias[1]) == pytest.approx(bi, rel=1e-5)
    assert float(new.global_bias) == pytest.approx(mu, rel=1e-5)
    np.testing.assert_array_equal(new.user_factors[0], params.user_factors[0])  # padding only: untouched


def test_fused_step_rejects_an_index_out_of_range():
    config, params = _params("bias")
    with pytest.raises(Exception, match="out of range"):
        _train("bias", config, params, [_batch([4], [0], [3.0], [True])], fused=True)


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "lazy_adam"])
def test_fit_with_the_kernel_matches_fit_without(optimizer):
    """The whole fit (padding in the last batch, several epochs): the engine's kernel path
    against XLA's step (the option off)."""
    train, _ = make_synthetic(jax.random.key(3), num_users=150, num_items=100, num_ratings=4500)  # > SORT_MAX: Feistel
    tc = TrainConfig(epochs=3, batch_size=1000, lr=0.05, schedule="constant", optimizer=optimizer, l2=1e-3,
                     bias_l2=1e-3)
    results = {}
    for setting in ("on", "off"):
        options = resolve_options(kernels=setting == "on")
        assert options.kernels == (setting == "on")
        results[setting] = fit("bias", train, train_config=tc, model_config=make_config("bias", embedding_dim=4),
                               progress=False, options=options)
    on, off = results["on"], results["off"]
    np.testing.assert_allclose(on.history["train_loss"], off.history["train_loss"], rtol=1e-5)
    for name in off.params._fields:
        np.testing.assert_allclose(getattr(on.params, name), getattr(off.params, name), rtol=1e-4, atol=1e-6)


def test_engine_names_its_kernel(monkeypatch):
    from recsys_jax.engine.build import RatingObjective

    config = make_config("bias", embedding_dim=4)
    apply = make_apply("bias", config)
    on = resolve_options(kernels=True)
    sgd, adagrad = TrainConfig(optimizer="sgd"), TrainConfig(optimizer="adagrad")
    assert make_engine("bias", apply, config, RatingObjective(mse), None, sgd, 3, options=on).kernel == "mf_sgd"
    assert make_engine("bias", apply, config, RatingObjective(mse), None, adagrad, 3, options=on).kernel == "mf_adagrad"
    lazy, dense = TrainConfig(optimizer="lazy_adam"), TrainConfig(optimizer="adam")
    assert make_engine("bias", apply, config, RatingObjective(mse), None, lazy, 3, options=on).kernel == "mf_lazy_adam"
    assert make_engine("bias", apply, config, RatingObjective(mse), None, dense, 3, options=on).kernel is None
    huber = TrainConfig(optimizer="sgd", loss="huber")
    from recsys_jax.objectives.losses import LOSSES

    assert make_engine("bias", apply, config, RatingObjective(LOSSES["huber"]), None, huber, 3,
                       options=on).kernel is None
    # Off: the option says so, not the environment at trace time.
    assert make_engine("bias", apply, config, RatingObjective(mse), None, sgd, 3).kernel is None  # the default
    assert make_engine("bias", apply, config, RatingObjective(mse), None, sgd, 3,
                       options=resolve_options(kernels=False)).kernel is None
    monkeypatch.setenv("RECSYS_JAX_KERNELS", "off")  # read where options are resolved, and only there
    assert not resolve_options().kernels
    assert make_engine("bias", apply, config, RatingObjective(mse), None, sgd, 3, options=on).kernel == "mf_sgd"
    monkeypatch.setenv("RECSYS_JAX_KERNELS", "on")
    assert resolve_options().kernels


@pytest.mark.parametrize("n,count", [(5000, None), (70001, None), (8192, 5000)])
def test_permutation_kernel_is_the_xla_permutation_bit_for_bit(n, count):
    keys = jax.random.split(jax.random.key(7), 3)
    count_arg = None if count is None else jnp.int32(count)
    got = jax.jit(jax.vmap(lambda k: shuffle.feistel_permutation(k, n, count_arg, kernels=True)))(keys)
    want = jax.jit(jax.vmap(lambda k: shuffle.feistel_permutation(k, n, count_arg)))(keys)
    np.testing.assert_array_equal(got, want)
    size = n if count is None else count
    for row in np.asarray(got):
        np.testing.assert_array_equal(np.sort(row[:size]), np.arange(size))


def test_blocked_permutation_kernel_is_the_xla_order():
    """Nine blocks of 2 to 6 ratings with padding after them, then blocks of sizes 3, 0 and
    2: the kernel's order equals XLA's element for element, under vmap too."""
    users, items = np.repeat(np.arange(7), 5)[:31], np.tile(np.arange(5), 7)[:31]
    _, blocks = shuffle.block_order(users, items, 3, np.random.default_rng(0))
    keys = jax.random.split(jax.random.key(3), 6)
    got = jax.jit(jax.vmap(lambda k: shuffle.blocked_permutation(k, blocks, 40, kernels=True)))(keys)
    want = jax.jit(jax.vmap(lambda k: shuffle.blocked_permutation(k, blocks, 40)))(keys)
    np.testing.assert_array_equal(got, want)
    for row in np.asarray(got):
        np.testing.assert_array_equal(np.sort(row[:31]), np.arange(31))
        np.testing.assert_array_equal(row[31:], 0)
    sizes = np.array([3, 0, 2], np.int32)
    manual = shuffle.Blocks(np.array([0, 3, 3], np.int32), sizes)
    order = np.asarray(jax.jit(lambda k: shuffle.blocked_permutation(k, manual, 6))(jax.random.key(0)))
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda k: shuffle.blocked_permutation(k, manual, 6, kernels=True))(
        jax.random.key(0))), order)


def test_the_library_is_kept_private_and_verified():
    """It was mode 0711 in a folder of any mode, and loaded from its path unchecked (items 2
    and 5): now the folder is 0700 and the entry 0644, with a header and a checksum."""
    from recsys_jax.data import cachefiles

    path = kernels.build()  # this session's, built already (tests/conftest.py)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    payload = cachefiles.read_entry(path, kernels.KIND, "library")
    assert payload[:4] == b"\x7fELF"


def _ials_problem(k, num_rows=40, num_other=70, seed=3):
    """Random positives (row 5 without any, row 0 with many) and random tables."""
    from recsys_jax.models import ials

    rng = np.random.default_rng(seed)
    own = rng.integers(0, num_rows, 600)
    other = rng.integers(0, num_other, 600)
    own[own == 5] = 6
    own[:60], other[:60] = 0, np.arange(60)
    codes = np.unique(own * num_other + other)
    own, other = (codes // num_other).astype(np.int32), (codes % num_other).astype(np.int32)
    p = jnp.asarray(0.3 * rng.standard_normal((num_rows, k)), jnp.float32)
    q = jnp.asarray(0.3 * rng.standard_normal((num_other, k)), jnp.float32)
    return ials, own, other, p, q


@pytest.mark.parametrize("k,steps", [(64, 3), (32, 2), (5, 4)])
def test_ials_cg_kernel_takes_the_xla_paths_steps(k, steps):
    """ials_cg.cc against ials' XLA conjugate-gradient chunks, at the compiled widths and
    any other, with an empty row (0) and a long one."""
    from recsys_jax.models.row_chunks import make_plan

    ials, own, other, p, q = _ials_problem(k)
    config = ials.Config(embedding_dim=k, solver="cg", cg_steps=steps, unobserved_weight=0.2, l2=0.03, nu=0.5)
    plan = make_plan(own, other, np.ones(len(own), np.float32), p.shape[0], q.shape[0])
    want = ials.solve_side(p, q, plan.user, config)
    got = ials.solve_side(p, q, ials.row_lists(own, other, p.shape[0]), config)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
    assert not np.any(np.asarray(got[5])) and np.any(np.asarray(got[0]))


def test_ials_fit_on_the_kernel_is_the_fit_on_xla_with_its_loss():
    """The same fit of solver="cg" with the kernels on and off: the same rows (to float
    rounding), and the loss the kernel sums in its item half is the objective."""
    from recsys_jax.engine.options import EngineOptions
    from recsys_jax.models import ials

    ratings, _ = make_synthetic(jax.random.key(2), 30, 20, 300, embedding_dim=4)
    config = ials.Config(embedding_dim=8, solver="cg", cg_steps=3, threshold=3.0)
    on = ials.fit_epochs(jax.random.key(1), ratings, config, options=EngineOptions(kernels=True))
    off = ials.fit_epochs(jax.random.key(1), ratings, config, options=EngineOptions(kernels=False))
    for _ in range(3):
        (a, loss_a), (b, loss_b) = next(on), next(off)
    np.testing.assert_allclose(a.user_factors, b.user_factors, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a.item_factors, b.item_factors, rtol=1e-4, atol=1e-5)
    users, items = ials.positives(ratings, config.threshold)
    assert loss_a == pytest.approx(ials.objective(a, users, items, config) / len(users), rel=1e-5)
    assert loss_a == pytest.approx(loss_b, rel=1e-4)


def test_ials_cg_kernel_rejects_an_index_out_of_range():
    ials, own, other, p, q = _ials_problem(4)
    lists = ials.row_lists(own, other, p.shape[0])
    bad = lists._replace(indices=lists.indices.at[3].set(q.shape[0]))
    with pytest.raises(Exception, match="out of range"):
        jax.block_until_ready(ials.solve_side(p, q, bad, ials.Config(embedding_dim=4, solver="cg")))
