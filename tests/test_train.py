"""The train step, the scanned epoch and fit."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from recsys_jax.eval import metrics
from recsys_jax.data import make_synthetic, random_split
from recsys_jax.objectives.losses import mse
from recsys_jax.models import bias, make_apply, make_config
from recsys_jax.eval.predict import predict_indices
from recsys_jax.engine.step import Batch, TrainState, make_train_step
from recsys_jax.engine.config import TrainConfig
from recsys_jax.training.fit import fit
from recsys_jax.engine.epoch import make_train_epoch

NOISE = 0.3


@pytest.fixture(scope="module")
def planted():
    ratings, truth = make_synthetic(
        jax.random.key(0), 300, 200, 20_000, embedding_dim=4, noise_std=NOISE, round_to_half=False
    )
    split = random_split(ratings, 0, 0.2)
    return ratings.take(split.train), ratings.take(split.test)


PLANTED_CONFIG = dict(model_config=make_config("bias", embedding_dim=8),
                      train_config=TrainConfig(epochs=15, batch_size=256, lr=1e-2, l2=0.01))


@pytest.fixture(scope="module")
def planted_fit(planted):
    train, test = planted
    return fit("bias", train, test, key=7, progress=False, **PLANTED_CONFIG)


def _tiny_bias_params():
    return bias.Params(
        global_bias=jnp.array(3.0),
        user_bias=jnp.array([0.5, -0.5]),
        item_bias=jnp.array([0.0, 1.0, -1.0]),
        user_factors=jnp.array([[1.0, 0.0], [0.0, 2.0]]),
        item_factors=jnp.array([[0.5, 0.5], [1.0, -1.0], [0.0, 0.0]]),
    )


def test_train_step_is_one_sgd_step_on_the_hand_gradient():
    params = _tiny_bias_params()
    users, items = jnp.array([0, 1, 0]), jnp.array([0, 1, 2])
    ratings = jnp.array([4.0, 2.0, 3.0])
    # predictions: 3 + .5 + 0 + .5 = 4.0; 3 - .5 + 1 - 2 = 1.5; 3 + .5 - 1 + 0 = 2.5
    err = np.array([4.0, 1.5, 2.5]) - np.array(ratings)  # [0, -0.5, -0.5]
    g = 2 * err / 3  # d mean(e^2) / d pred
    lr = 0.1
    step = make_train_step(bias.apply, mse, optax.sgd(lr))
    state = TrainState(params, optax.sgd(lr).init(params), jnp.zeros((), jnp.int32))
    new, loss = step(state, Batch(users, items, ratings, jnp.ones(3, bool)), jax.random.key(0))
    assert float(loss) == pytest.approx(np.mean(err**2))
    assert float(new.params.global_bias) == pytest.approx(3.0 - lr * g.sum())
    np.testing.assert_allclose(new.params.user_bias, [0.5 - lr * (g[0] + g[2]), -0.5 - lr * g[1]], rtol=1e-6)
    np.testing.assert_allclose(new.params.item_bias, [0.0 - lr * g[0], 1.0 - lr * g[1], -1.0 - lr * g[2]], rtol=1e-6)
    # d/dp_0 = g0 q_0 + g2 q_2 ; d/dq_1 = g1 p_1
    np.testing.assert_allclose(new.params.user_factors[0], [1.0, 0.0] - lr * (g[0] * np.array([0.5, 0.5])), rtol=1e-6)
    np.testing.assert_allclose(new.params.item_factors[1], [1.0, -1.0] - lr * g[1] * np.array([0.0, 2.0]), rtol=1e-6)
    assert int(new.step) == 1


def test_padding_is_masked():
    params = _tiny_bias_params()
    opt = optax.adam(0.05)
    step = make_train_step(bias.apply, mse, opt)
    state = TrainState(params, opt.init(params), jnp.zeros((), jnp.int32))
    exact = Batch(jnp.array([0, 1]), jnp.array([0, 1]), jnp.array([4.0, 2.0]), jnp.ones(2, bool))
    padded = Batch(jnp.array([0, 1, 1, 0]), jnp.array([0, 1, 2, 2]), jnp.array([4.0, 2.0, 5.0, 0.5]),
                   jnp.array([True, True, False, False]))
    a, la = step(state, exact, jax.random.key(0))
    b, lb = step(state, padded, jax.random.key(0))
    assert float(la) == pytest.approx(float(lb))
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_epoch_visits_every_rating_once():
    # With loss = target (independent of params), each batch's loss is the masked mean of
    # its ratings; weighting by batch sizes must recover the sum of all ratings exactly once.
    n, batch_size = 23, 5
    ratings = jnp.arange(1, n + 1, dtype=jnp.float32) ** 2
    users = jnp.zeros(n, jnp.int32)
    items = jnp.zeros(n, jnp.int32)
    params = _tiny_bias_params()
    opt = optax.sgd(0.0)
    step = make_train_step(bias.apply, lambda p, t: t + 0.0 * p, opt)
    epoch = make_train_epoch(step, batch_size)
    state = TrainState(params, opt.init(params), jnp.zeros((), jnp.int32))
    state, losses = epoch(state, users, items, ratings, jax.random.key(1))
    sizes = np.array([5, 5, 5, 5, 3])
    assert losses.shape == (5,)
    assert float(np.sum(np.asarray(losses) * sizes)) == pytest.approx(float(ratings.sum()), rel=1e-6)
    assert int(state.step) == 5
    _, losses2 = epoch(state, users, items, ratings, jax.random.key(2))
    assert not np.allclose(losses, losses2)  # a different shuffle


def test_fit_recovers_planted_structure(planted, planted_fit):
    train, test = planted
    best = min(planted_fit.history["val_rmse"])
    assert best < 1.2 * NOISE
    # The planted interaction carries real signal: biases alone are far worse.
    only_bias = fit("bias", train, test, key=7, progress=False,
                    model_config=make_config("bias", embedding_dim=8),
                    train_config=TrainConfig(epochs=15, batch_size=256, lr=1e-2, l2=10.0))
    assert min(only_bias.history["val_rmse"]) > best + 0.1
    # The returned params are the best epoch's: rescoring gives the recorded RMSE.
    apply_fn = make_apply("bias", planted_fit.model_config)
    pred = predict_indices(apply_fn, planted_fit.params, test.users, test.items, clip=test.rating_scale)
    assert metrics.rmse(pred, test.ratings) == pytest.approx(best, abs=1e-6)


def test_same_seed_same_params(planted, planted_fit):
    train, test = planted
    again = fit("bias", train, test, key=7, progress=False, **PLANTED_CONFIG)
    for a, b in zip(jax.tree.leaves(planted_fit.params), jax.tree.leaves(again.params)):
        np.testing.assert_array_equal(a, b)
    other = fit("bias", train, test, key=8, progress=False, **PLANTED_CONFIG)
    assert not np.array_equal(other.params.user_factors, again.params.user_factors)


def test_custom_loss_needs_no_library_change(planted):
    train, test = planted

    def pinball(predictions, targets, *, tau=0.5):  # quantile loss; tau=0.5 is half the MAE
        e = targets - predictions
        return jnp.maximum(tau * e, (tau - 1.0) * e)

    seen = []
    result = fit("bias", train, test, key=0, progress=False, loss_fn=pinball,
                 on_epoch=lambda epoch, rec: seen.append(epoch), **PLANTED_CONFIG)
    assert seen == list(range(1, 16))
    assert min(result.history["val_mae"]) < 0.35
    assert result.history["train_loss"][-1] < result.history["train_loss"][0]


def test_early_stopping_and_bad_input(planted):
    train, test = planted
    # A wide, unregularised model at a constant rate overfits within a few epochs.
    tc = TrainConfig(epochs=50, batch_size=256, lr=0.02, schedule="constant", patience=3)
    result = fit("bias", train, test, key=0, progress=False, train_config=tc,
                 model_config=make_config("bias", embedding_dim=64))
    rmse = result.history["val_rmse"]
    # Replay the rule on the recorded scores: the best epoch is the last strict improvement,
    # and training stops once `patience` epochs pass without one.
    best, best_score, stopped = 0, float("inf"), None
    for epoch, score in enumerate(rmse, start=1):
        if score < best_score:
            best, best_score = epoch, score
        if epoch - best >= 3:
            stopped = epoch
            break
    assert stopped == len(rmse) < 50 and result.best_epoch == best > 1
    # The parameters returned are those after the best epoch: a run of exactly that many
    # epochs (constant rate, keys derived from (key, epoch)) ends with the same ones.
    short = fit("bias", train, test, key=0, progress=False, train_config=tc._replace(epochs=best, patience=None),
                model_config=make_config("bias", embedding_dim=64))
    assert short.history["val_rmse"][-1] == pytest.approx(rmse[best - 1], rel=1e-6)
    for a, b in zip(jax.tree.leaves(result.params), jax.tree.leaves(short.state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="empty"):
        fit("bias", train.take(np.array([], np.int64)), None, progress=False)


def test_divergence_stops_with_the_last_finite_state(planted):
    train, _ = planted
    # Adam's first step moves every touched parameter by ~lr = 1e30; the next prediction
    # (a dot product of 1e30-sized factors) overflows float32, so the loss of step 2 is
    # the first non-finite one and the last finite state is the one after step 1.
    tc = TrainConfig(epochs=3, batch_size=256, lr=1e30, schedule="constant")
    seen = []
    with pytest.warns(RuntimeWarning, match="non-finite"):
        result = fit("bias", train, None, key=0, progress=False, train_config=tc,
                     on_epoch=lambda e, r: seen.append(e))
    assert "epoch 1, step 2 of" in result.stop_reason
    assert int(result.state.step) == 1
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(result.state.params))
    assert np.abs(np.asarray(result.state.params.global_bias)) > 1e29  # it did take step 1
    assert seen == [] and result.history["epoch"] == []
