"""Alternating least squares (`recsys_jax.engine.als`): the plan holds every rating once, a side
step equals each row's closed-form ridge solution (NumPy), the objective it reports is
the objective and never increases, and `fit(optimizer="als")` trains end to end."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recsys_jax.engine import als
from recsys_jax.models import row_chunks
from recsys_jax.data import make_synthetic
from recsys_jax.training.experiment import carve_validation
from recsys_jax.models import get_model, make_config
from recsys_jax.engine.config import TrainConfig
from recsys_jax.training.fit import fit

L2, BIAS_L2 = 0.3, 0.1


@pytest.fixture(scope="module")
def data():
    ratings, _ = make_synthetic(jax.random.key(0), 40, 30, 600, embedding_dim=3)
    return ratings


def init(model, ratings, dim=4):
    config = make_config(model, embedding_dim=dim)
    if hasattr(config, "mean_rating"):
        config = config._replace(mean_rating=float(np.mean(ratings.ratings)))
    return get_model(model).init(jax.random.key(1), ratings.num_users, ratings.num_items, config)


def triples(side: als.SidePlan, num_other: int) -> list:
    out = []
    for rows, piece_row, other, vals in zip(side.rows, side.piece_row, side.other, side.ratings):
        rows, piece_row, other, vals = (np.asarray(a) for a in (rows, piece_row, other, vals))
        for g in range(len(piece_row)):
            if piece_row[g] == len(piece_row):
                assert np.all(other[g] == num_other)  # a padding piece points at the zero row only
                continue
            for o, v in zip(other[g], vals[g]):
                if o < num_other:
                    out.append((int(rows[piece_row[g]]), int(o), float(v)))
    return sorted(out)


def test_plan_holds_every_rating_once_even_across_chunks(data, monkeypatch):
    # Chunks of 2 pieces of 16: rows longer than 32 ratings force a larger chunk, and most
    # rows do not fit beside the previous one, so packing is exercised.
    monkeypatch.setattr(row_chunks, "CHUNK_PIECES", 2)
    plan = als.make_plan(data.users, data.items, data.ratings, data.num_users, data.num_items)
    expect_u = sorted(zip(data.users.tolist(), data.items.tolist(), np.float32(data.ratings).tolist()))
    expect_i = sorted(zip(data.items.tolist(), data.users.tolist(), np.float32(data.ratings).tolist()))
    assert triples(plan.user, data.num_items) == expect_u
    assert triples(plan.item, data.num_users) == expect_i
    np.testing.assert_array_equal(np.asarray(plan.user.counts), np.bincount(data.users, minlength=data.num_users))
    longest = np.bincount(data.users).max()
    assert plan.user.rows[0].shape[0] >= -(-longest // als.PIECE)


def ridge_rows(own, other, ratings, n_own, other_z, offset, reg):
    """Each row's ridge solution by NumPy: (sum z z^T + n Lambda) x = sum t z."""
    out = np.zeros((n_own, other_z.shape[1]))
    for row in range(n_own):
        sel = own == row
        z = other_z[other[sel]]
        t = ratings[sel] - offset[other[sel]]
        a = z.T @ z + sel.sum() * np.diag(reg)
        out[row] = np.linalg.solve(a, z.T @ t)
    return out


@pytest.mark.parametrize("model", ["bias", "dot"])
def test_a_side_step_is_each_rows_ridge_solution(data, model):
    params = init(model, data)
    biases = model == "bias"
    d = params.user_factors.shape[1]
    reg = np.array([L2] * d + ([BIAS_L2] if biases else []))
    plan = als.make_plan(data.users, data.items, data.ratings, data.num_users, data.num_items)
    users_t, items_t = als._tables(params, biases)
    mu = float(params.global_bias) if biases else 0.0
    # CG reaches the exact solution in at most W steps (float32: a few more to settle).
    new_users, _, _ = als._solve_side(plan.user, users_t, items_t, jnp.float32(mu), jnp.asarray(reg, jnp.float32),
                                      biases, cg_steps=3 * len(reg))
    items64 = np.asarray(items_t, np.float64)
    z = np.concatenate([items64[:, :d], np.ones((data.num_items, 1))], 1) if biases else items64
    offset = mu + (items64[:, d] if biases else np.zeros(data.num_items))
    expect = ridge_rows(data.users, data.items, data.ratings.astype(np.float64), data.num_users, z, offset, reg)
    rated = np.bincount(data.users, minlength=data.num_users) > 0
    np.testing.assert_allclose(np.asarray(new_users)[rated], expect[rated], rtol=2e-3, atol=2e-4)
    np.testing.assert_array_equal(np.asarray(new_users)[~rated], np.asarray(users_t)[~rated])


def objective(params, ratings, biases):
    """The ALS objective / |Omega| (module docstring), in float64."""
    p, q = np.asarray(params.user_factors, np.float64), np.asarray(params.item_factors, np.float64)
    u, i, r = ratings.users, ratings.items, ratings.ratings.astype(np.float64)
    pred = np.sum(p[u] * q[i], 1)
    pen = L2 * (np.sum(p[u] ** 2) + np.sum(q[i] ** 2))
    if biases:
        bu, bi = np.asarray(params.user_bias, np.float64), np.asarray(params.item_bias, np.float64)
        pred = pred + float(params.global_bias) + bu[u] + bi[i]
        pen += BIAS_L2 * (np.sum(bu[u] ** 2) + np.sum(bi[i] ** 2))
    return (np.sum((pred - r) ** 2) + pen) / len(r)


@pytest.mark.parametrize("model", ["bias", "dot"])
def test_reported_loss_is_the_objective_and_never_increases(data, model):
    params = init(model, data)
    biases = model == "bias"
    plan = als.make_plan(data.users, data.items, data.ratings, data.num_users, data.num_items)
    losses, after = [], []
    for _ in range(6):
        params, loss = als.epoch(params, plan, l2=L2, bias_l2=BIAS_L2, biases=biases, global_mean=True)
        losses.append(float(loss))
        after.append(objective(params, data, biases))
    # the reported loss is taken before mu moves; mu's closed form can only lower it
    assert all(a <= lo + 1e-6 for a, lo in zip(after, losses))
    assert all(b <= a + 1e-5 for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < losses[0]
    if not biases:  # no mu: the reported loss is exactly the objective
        np.testing.assert_allclose(losses, after, rtol=1e-4)


def test_mu_is_the_mean_residual(data):
    params = init("bias", data)
    plan = als.make_plan(data.users, data.items, data.ratings, data.num_users, data.num_items)
    params, _ = als.epoch(params, plan, l2=L2, bias_l2=BIAS_L2, biases=True, global_mean=True)
    p, q = np.asarray(params.user_factors, np.float64), np.asarray(params.item_factors, np.float64)
    u, i = data.users, data.items
    rest = np.asarray(params.user_bias)[u] + np.asarray(params.item_bias)[i] + np.sum(p[u] * q[i], 1)
    # after the epoch mu = mean(r - b_u - b_i - p.q) (up to the float32 sums)
    assert float(params.global_bias) == pytest.approx(np.mean(data.ratings - rest), abs=2e-4)


@pytest.fixture(scope="module")
def fitted(data):
    train, val = carve_validation(data, 0, 0.2)
    tc = TrainConfig(epochs=4, optimizer="als", l2=L2, bias_l2=BIAS_L2)
    return train, val, tc, fit("bias", train, val, train_config=tc, progress=False)


def test_fit_trains_and_reuses_the_compiled_solvers(fitted):
    train, val, tc, result = fitted
    rmse = result.history["val_rmse"]
    baseline = float(np.sqrt(np.mean((val.ratings - np.mean(train.ratings)) ** 2)))
    assert min(rmse) < baseline
    assert result.history["train_loss"] == sorted(result.history["train_loss"], reverse=True)
    again = fit("bias", train, val, train_config=tc, progress=False)
    assert again.compile_seconds == 0.0
    # the Engine face, options included (benchmarks.throughput reads engine.options and engine.kernel)
    from recsys_jax.engine.build import RatingObjective, make_engine
    from recsys_jax.engine.options import EngineOptions
    from recsys_jax.models import make_apply, make_config
    from recsys_jax.objectives.losses import mse

    config = make_config("bias")
    engine = make_engine("bias", make_apply("bias", config), config, RatingObjective(mse), None, tc, 1,
                         options=EngineOptions(kernels=True))
    assert engine.optimizer == "als" and engine.kernel is None and engine.options == EngineOptions(kernels=True)
    np.testing.assert_array_equal(np.asarray(again.params.user_factors), np.asarray(result.params.user_factors))


@pytest.mark.parametrize("model, changes, words", [
    ("mlp", {}, "dot-product models"),
    ("bias", {"l2": 0.0}, "l2 must be > 0"),
    ("bias", {"loss": "huber"}, "squared error"),
    ("bias", {"penalty": "table"}, "penalty='touched'"),
])
def test_clear_errors(data, model, changes, words):
    tc = TrainConfig(epochs=1, optimizer="als", l2=0.1)._replace(**changes)
    with pytest.raises(ValueError, match=words):
        fit(model, data, train_config=tc, progress=False)


def test_y_range_is_refused(data):
    with pytest.raises(ValueError, match="y-range"):
        fit("bias", data, model_config=make_config("bias", y_range=(0.5, 5.0)),
            train_config=TrainConfig(epochs=1, optimizer="als", l2=0.1), progress=False)


def test_fit_many_refuses_other_optimizers(data):
    from recsys_jax.training.many import Member, fit_many

    with pytest.raises(ValueError, match="dense Adam"):
        fit_many("bias", data, None, [Member()], train_config=TrainConfig(optimizer="als", l2=0.1))
