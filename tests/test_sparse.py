"""Row-sparse optimizers (recsys_jax.engine.sparse) against dense Optax and hand-written updates,
and the engine's compile-once cache (recsys_jax.engine.build)."""
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from recsys_jax.engine import sparse
from recsys_jax.data import make_synthetic
from recsys_jax.engine.build import check_optimizer
from recsys_jax.objectives.losses import mse
from recsys_jax.models import bias, make_apply, make_config
from recsys_jax.objectives.penalties import make_l2_penalty
from recsys_jax.engine.step import Batch, TrainState, make_objective, make_update
from recsys_jax.engine.config import TrainConfig
from recsys_jax.training.fit import fit

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


def _example_grads(p, batch):
    """Each live example's own gradient: its term of the batch objective (loss and touched
    penalty, divided by the batch's total weight), the other examples masked out."""
    live = np.flatnonzero(np.asarray(batch.mask))
    total = float(len(live))
    out = []
    for b in live:
        only = batch._replace(mask=jnp.arange(batch.mask.shape[0]) == b)
        out.append((b, jax.tree.map(lambda x: np.asarray(x) / total, jax.grad(OBJECTIVE)(p, only, None))))
    return out


def _hand_adagrad(p0, batches, lr, eps=1e-10):
    """Row-wise AdaGrad as recsys_jax.engine.sparse documents it, in NumPy: per row, the
    accumulator adds each example's mean squared gradient row, and the row moves by the
    sum of its examples' gradients over the root of the new accumulator."""
    p = jax.tree.map(np.asarray, p0)
    acc = {"user": np.zeros(U), "item": np.zeros(I), "global": 0.0}
    for batch in batches:
        jp = jax.tree.map(jnp.asarray, p)
        per_example = _example_grads(jp, batch)
        g = jax.tree.map(np.asarray, jax.grad(OBJECTIVE)(jp, batch, None))  # the sum of per_example
        new = p._asdict()
        for side, index in (("user", batch.users), ("item", batch.items)):
            step = {name: np.zeros_like(getattr(p, name)) for name in (f"{side}_bias", f"{side}_factors")}
            for b, gb in per_example:
                r = int(index[b])
                row = np.concatenate([[getattr(gb, f"{side}_bias")[r]], getattr(gb, f"{side}_factors")[r]])
                acc[side][r] += np.mean(row**2)
                for name in step:
                    step[name][r] += getattr(gb, name)[r]
            scale = lr / (np.sqrt(acc[side]) + eps)
            for name in step:
                new[name] = getattr(p, name) - scale.reshape((-1,) + (1,) * (step[name].ndim - 1)) * step[name]
        # the global bias is dense: element-wise AdaGrad (optax.scale_by_rss, eps inside the root)
        acc["global"] += float(g.global_bias) ** 2
        new["global_bias"] = p.global_bias - lr * g.global_bias / np.sqrt(acc["global"] + eps)
        p = type(p)(**new)
    return p


def test_rowwise_adagrad_matches_hand_update():
    p0 = _params(3)
    got = _sparse_steps(p0, [DUP, DUP], "adagrad", 0.1).params
    want = _hand_adagrad(p0, [DUP, DUP], 0.1)
    for name in ("user_factors", "item_factors", "user_bias", "item_bias", "global_bias"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-5, atol=1e-7)
    # untouched rows (user 3, item 4) and the padding example's rows (user 0, item 0) stay put
    for name, rows in (("user_factors", [0, 3]), ("item_factors", [0, 4])):
        np.testing.assert_array_equal(np.asarray(getattr(got, name))[rows], np.asarray(getattr(p0, name))[rows])


def test_rowwise_adagrad_without_duplicates_is_textbook_adagrad():
    """With every row used once per batch, the accumulator adds the square of the row's
    (merged) gradient: Duchi et al.'s diagonal AdaGrad, one accumulator shared per row."""
    once = _batch([0, 1, 2], [3, 1, 0], [4.0, 2.0, 5.0])
    p0, lr, eps = _params(4), 0.1, 1e-10
    got = _sparse_steps(p0, [once, once], "adagrad", lr).params
    p = jax.tree.map(np.asarray, p0)
    acc = {"user": np.zeros(U), "item": np.zeros(I), "global": 0.0}
    for _ in range(2):
        g = jax.tree.map(np.asarray, jax.grad(OBJECTIVE)(jax.tree.map(jnp.asarray, p), once, None))
        new = p._asdict()
        for side in ("user", "item"):
            merged = np.concatenate([getattr(g, f"{side}_bias")[:, None], getattr(g, f"{side}_factors")], 1)
            acc[side] += np.mean(merged**2, axis=1)
            scale = lr / (np.sqrt(acc[side]) + eps)
            new[f"{side}_bias"] = p._asdict()[f"{side}_bias"] - scale * getattr(g, f"{side}_bias")
            new[f"{side}_factors"] = p._asdict()[f"{side}_factors"] - scale[:, None] * getattr(g, f"{side}_factors")
        acc["global"] += float(g.global_bias) ** 2
        new["global_bias"] = p.global_bias - lr * g.global_bias / np.sqrt(acc["global"] + eps)
        p = type(p)(**new)
    for name in ("user_factors", "item_factors", "user_bias", "item_bias"):
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
def test_second_fit_of_the_same_shapes_compiles_nothing(two_splits, optimizer, caplog):
    a, b = two_splits
    assert np.mean(a.ratings) != np.mean(b.ratings)  # different data, same shapes
    tc = TrainConfig(epochs=2, batch_size=256, lr=1e-2, l2=0.01, optimizer=optimizer)
    first = fit("bias", a, key=0, train_config=tc, progress=False)
    with jax.log_compiles(True), caplog.at_level(logging.DEBUG):
        second = fit("bias", b, key=1, train_config=tc, progress=False)
    assert first.compile_seconds > 0 and second.compile_seconds == 0.0
    # Nothing else compiles either (a jitted init once baked the training mean into its program).
    compiled = [r.getMessage() for r in caplog.records if "Compiling" in r.getMessage()]
    assert not compiled, compiled
    # and the second fit really trained on its own data: its mean sets mu's start
    assert float(second.params.global_bias) != pytest.approx(float(first.params.global_bias), abs=1e-6)
    assert np.all(np.isfinite(second.history["train_loss"]))


@pytest.mark.parametrize("model", ["bias", "dot", "gmf", "mlp", "neumf"])
def test_local_rows_equal_indexing_the_gathered_rows(model):
    """`Local` (each example reads row b of the local tables, no second gather) gives the
    objective and gradients of indexing those local tables with 0..B-1, dropout included."""
    from recsys_jax.models import get_model
    from recsys_jax.models._common import Local

    config = make_config(model, embedding_dim=4, mean_rating=3.0)
    apply = make_apply(model, config)
    objective = make_objective(apply, mse, make_l2_penalty(0.1, 0.05))
    params = get_model(model).init(jax.random.key(0), U, I, config)
    users, items = jnp.array([1, 2, 1, 0], jnp.int32), jnp.array([2, 2, 3, 4], jnp.int32)
    local = params._replace(**{name: getattr(params, name)[users if name.startswith("user_") else items]
                               for name in params._fields if name.startswith(("user_", "item_"))})
    batch = _batch(users, items, [4.0, 3.0, 5.0, 1.0], [True, True, True, False])
    iota = jnp.arange(4, dtype=jnp.int32)
    key = jax.random.key(7)
    want, want_g = jax.value_and_grad(objective)(local, batch._replace(users=iota, items=iota), key)
    got, got_g = jax.value_and_grad(objective)(local, batch._replace(users=Local(4), items=Local(4)), key)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for g, w in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)
    assert float(want) > 0
