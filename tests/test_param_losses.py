"""Losses with learned parameters: Gaussian NLL and the ordinal (cumulative-link) model.

Hand-computed values, numerical gradients, properties, joint training in `fit`, test
scoring in `run_experiment`, and the round trip through a checkpoint.
"""
from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from recsys_jax.use import checkpoint
from recsys_jax.eval import metrics
from recsys_jax.use.checkpoint import CheckpointError
from recsys_jax.data import Ratings, make_synthetic, random_split
from recsys_jax.data.split import Split
from recsys_jax.training.experiment import run_experiment
from recsys_jax.use.recommender import to_recommender
from recsys_jax.objectives.losses import (
    LOSSES,
    PARAM_LOSSES,
    GaussianParams,
    OrdinalParams,
    ParamLoss,
    gaussian_nll,
    get_loss,
    ordinal,
    ordinal_cut_points,
    ordinal_probs,
)
from recsys_jax.training.many import Member, fit_many
from recsys_jax.models import make_apply, make_config
from recsys_jax.eval.predict import predict_indices
from recsys_jax.engine.step import Batch, JointParams, make_objective
from recsys_jax.engine.config import TrainConfig
from recsys_jax.training.fit import fit

LEVELS = jnp.array([1.0, 2.0, 3.0, 4.0, 5.0])


def _inv_softplus(x):
    return math.log(math.expm1(x))


# theta = [-1, 0.5, 2, 2.5]: gaps 1.5, 1.5, 0.5
CUTS = np.array([-1.0, 0.5, 2.0, 2.5])
ORD = OrdinalParams(LEVELS, jnp.asarray(-1.0), jnp.asarray([_inv_softplus(1.5), _inv_softplus(1.5),
                                                               _inv_softplus(0.5)], jnp.float32))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _hand_probs(f):
    cdf = np.concatenate([[0.0], _sigmoid(CUTS - f), [1.0]])
    return np.diff(cdf)


# -- hand values ------------------------------------------------------------------------
def test_ordinal_cut_points_probabilities_and_expectation_by_hand():
    np.testing.assert_allclose(ordinal_cut_points(ORD), CUTS, rtol=1e-6)
    f = jnp.array([0.3, -4.0, 6.0])
    probs = np.asarray(ordinal_probs(ORD, f))
    assert probs.shape == (3, 5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    # f = 0.3: P(r <= k) = sigmoid([-1.3, 0.2, 1.7, 2.2])
    #        = [0.214165, 0.549834, 0.845535, 0.900250]
    np.testing.assert_allclose(probs[0], [0.214165, 0.335669, 0.295701, 0.054715, 0.099750], atol=2e-6)
    for row, x in zip(probs, [0.3, -4.0, 6.0]):
        np.testing.assert_allclose(row, _hand_probs(x), rtol=1e-5, atol=1e-7)
    expected = probs @ np.asarray(LEVELS)
    np.testing.assert_allclose(ordinal.predict(ORD, f), expected, rtol=1e-6)
    assert float(ordinal.predict(ORD, jnp.asarray(0.3))) == pytest.approx(
        1 * 0.214165 + 2 * 0.335669 + 3 * 0.295701 + 4 * 0.054715 + 5 * 0.099750, abs=1e-5)
    # the loss is -log of the observed level's probability
    targets = jnp.array([2.0, 1.0, 5.0])
    np.testing.assert_allclose(ordinal.loss(ORD, f, targets),
                               -np.log([probs[0, 1], probs[1, 0], probs[2, 4]]), rtol=1e-5)
    np.testing.assert_allclose(jax.jit(ordinal.loss)(ORD, f, targets), ordinal.loss(ORD, f, targets), rtol=1e-6)
    # a target between levels counts as the nearest level
    np.testing.assert_allclose(ordinal.loss(ORD, f, jnp.array([2.2, 0.0, 7.0])), ordinal.loss(ORD, f, targets))


def test_gaussian_nll_by_hand():
    p = GaussianParams(jnp.asarray(math.log(4.0)))
    got = gaussian_nll.loss(p, jnp.array([3.0, 1.0, 2.5]), jnp.array([3.0, 3.0, 2.0]))
    # 0.5 (log 4 + e^2 / 4) + 0.5 log 2 pi
    want = 0.5 * (math.log(4.0) + np.array([0.0, 4.0, 0.25]) / 4.0) + 0.5 * math.log(2 * math.pi)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # it is the log density of N(f, sigma^2) at r
    np.testing.assert_allclose(np.exp(-np.asarray(got)),
                               np.exp(-np.array([0.0, 4.0, 0.25]) / 8.0) / np.sqrt(2 * math.pi * 4.0), rtol=1e-6)
    np.testing.assert_array_equal(gaussian_nll.predict(p, jnp.array([3.25, 7.0])), [3.25, 7.0])


def test_init_from_the_training_ratings():
    r = Ratings.from_raw([1, 1, 2, 2, 3], [1, 2, 1, 3, 2], [1.0, 2.0, 2.0, 4.0, 4.0])
    g = gaussian_nll.init(r)
    assert float(g.log_variance) == pytest.approx(math.log(np.var([1.0, 2.0, 2.0, 4.0, 4.0])), rel=1e-6)
    o = ordinal.init(r)
    np.testing.assert_array_equal(o.levels, [1.0, 2.0, 4.0])  # the levels seen, not the whole scale
    # theta_k = mean + logit F_k with F = [1/5, 3/5]: a model predicting the mean predicts the data
    mean = 13.0 / 5.0
    np.testing.assert_allclose(ordinal_cut_points(o), [mean + math.log(1 / 4), mean + math.log(3 / 2)], rtol=1e-5)
    np.testing.assert_allclose(ordinal_probs(o, jnp.asarray(mean)), [0.2, 0.4, 0.4], rtol=1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        ordinal.init(Ratings.from_raw([1, 2], [1, 1], [3.0, 3.0]))
    with pytest.raises(ValueError, match="more than"):
        ordinal.init(Ratings.from_raw(np.arange(100), np.zeros(100), np.linspace(0, 1, 100)))
    with pytest.raises(ValueError, match="3 levels need"):
        ordinal_probs(o._replace(deltas=jnp.zeros(3)), jnp.asarray(0.0))


def test_registries_and_names():
    assert set(PARAM_LOSSES).isdisjoint(LOSSES)
    assert get_loss("ordinal") is ordinal and get_loss("gaussian_nll") is gaussian_nll
    assert all(isinstance(v, ParamLoss) for v in PARAM_LOSSES.values())
    with pytest.raises(ValueError, match="ordinal"):  # the error lists every known name
        get_loss("nope")


# -- gradients ----------------------------------------------------------------------------
def test_ordinal_gradients():
    f = np.array([0.3, -1.2, 2.2, 4.0, -3.0])
    targets = np.array([2.0, 1.0, 4.0, 5.0, 3.0])  # every kind of level: first, middle, last
    with jax.enable_x64(True):
        levels = jnp.asarray(LEVELS, jnp.float64)

        @jax.jit
        def loss(pred, first_cut, deltas):
            return ordinal.loss(OrdinalParams(levels, first_cut, deltas), pred, jnp.asarray(targets))

        check_grads(loss, (f, -1.0, np.array([0.8, 1.2, -0.5])), order=1, modes=["rev"], eps=1e-6)

        @jax.jit
        def expected(pred, first_cut, deltas):
            return ordinal.predict(OrdinalParams(levels, first_cut, deltas), pred)

        check_grads(expected, (f, -1.0, np.array([0.8, 1.2, -0.5])), order=1, modes=["rev"], eps=1e-6)
    # the levels are constants: no gradient reaches them
    f32, t32 = jnp.asarray(f, jnp.float32), jnp.asarray(targets, jnp.float32)
    g = jax.grad(lambda p: jnp.sum(ordinal.loss(p, f32, t32)))(ORD)
    np.testing.assert_array_equal(g.levels, 0.0)


def test_gaussian_gradients():
    f, r = np.array([3.0, 4.2, 1.0, 2.3]), np.array([4.0, 4.5, 3.5, 1.9])
    with jax.enable_x64(True):
        check_grads(lambda pred, s: gaussian_nll.loss(GaussianParams(s), pred, jnp.asarray(r)),
                    (f, 0.3), order=1, modes=["rev"], eps=1e-6)


# -- properties ---------------------------------------------------------------------------
PROPS = settings(max_examples=40, deadline=None)
SCORE = st.floats(-60.0, 60.0, allow_nan=False, width=32)
DELTA = st.floats(-6.0, 4.0, allow_nan=False, width=32)


@PROPS
@given(scores=st.lists(SCORE, min_size=8, max_size=8), first_cut=st.floats(-5.0, 5.0, width=32),
       deltas=st.lists(DELTA, min_size=3, max_size=3))
def test_ordinal_properties(scores, first_cut, deltas):
    p = OrdinalParams(LEVELS, jnp.asarray(first_cut, jnp.float32), jnp.asarray(deltas, jnp.float32))
    f = jnp.asarray(sorted(scores), jnp.float32)
    assert np.all(np.diff(np.asarray(ordinal_cut_points(p))) > 0)  # ordered, whatever the deltas
    probs = np.asarray(ordinal_probs(p, f))
    assert np.all(probs >= 0) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    for level in np.asarray(LEVELS):
        value = np.asarray(ordinal.loss(p, f, jnp.full(8, level)))
        assert np.all(np.isfinite(value)) and np.all(value >= 0)  # -log of a probability
    expected = np.asarray(ordinal.predict(p, f))
    assert np.all(expected >= 1.0 - 1e-5) and np.all(expected <= 5.0 + 1e-5)
    assert np.all(np.diff(expected) >= -1e-5)  # increasing in the score


@PROPS
@given(errors=st.lists(st.floats(-20.0, 20.0, allow_nan=False, width=32), min_size=8, max_size=8),
       s=st.floats(-5.0, 5.0, width=32))
def test_gaussian_properties(errors, s):
    e = jnp.asarray(errors, jnp.float32)
    p = GaussianParams(jnp.asarray(s, jnp.float32))
    zeros = jnp.zeros(8, jnp.float32)
    value = np.asarray(gaussian_nll.loss(p, e, zeros))
    np.testing.assert_array_equal(value, np.asarray(gaussian_nll.loss(p, zeros, e)))  # symmetric in the error
    at_target = np.asarray(gaussian_nll.loss(p, e, e))
    assert np.all(value >= at_target - 1e-6)  # smallest at the target
    # for fixed errors the best log-variance is log(mean e^2): the gradient in s is zero there
    msq = float(np.mean(np.square(np.asarray(e, np.float64))))
    if msq > 1e-3:
        with jax.enable_x64(True):
            grad = jax.grad(lambda t: jnp.mean(gaussian_nll.loss(GaussianParams(t), jnp.asarray(errors, jnp.float64),
                                                                  jnp.zeros(8))))(math.log(msq))
        assert abs(float(grad)) < 1e-9


def test_ordinal_is_stable_far_from_the_cut_points():
    f = jnp.array([-1e4, -80.0, 80.0, 1e4])
    for level in np.asarray(LEVELS):
        value = np.asarray(ordinal.loss(ORD, f, jnp.full(4, level)))
        assert np.all(np.isfinite(value)) and np.all(value >= 0)
        g = np.asarray(jax.grad(lambda x, level=level: jnp.sum(ordinal.loss(ORD, x, jnp.full(4, level))))(f))
        assert np.all(np.isfinite(g))
    # the first level at a very low score is certain; the last level there costs ~|f|
    np.testing.assert_allclose(ordinal.loss(ORD, f[:1], jnp.array([1.0])), 0.0, atol=1e-6)
    assert float(ordinal.loss(ORD, f[:1], jnp.array([5.0]))[0]) == pytest.approx(1e4, rel=1e-3)


# -- training -------------------------------------------------------------------------------
NOISE = 0.3
MODEL_CONFIG = make_config("bias", embedding_dim=8)
TC = TrainConfig(epochs=12, batch_size=256, lr=1e-2, l2=0.01)


@pytest.fixture(scope="module")
def planted():
    ratings, _ = make_synthetic(jax.random.key(0), 300, 200, 20_000, embedding_dim=4, noise_std=NOISE,
                                round_to_half=True)
    split = random_split(ratings, 0, 0.2)
    return ratings, split, ratings.take(split.train), ratings.take(split.test)


@pytest.fixture(scope="module")
def fits(planted):
    _, _, train, test = planted
    # The ordinal model needs a larger step: its scores must spread out to separate the
    # levels (a gradient in f bounded by 1, where the squared error's grows with e).
    return {loss: fit("bias", train, test, key=7, progress=False, model_config=MODEL_CONFIG,
                      train_config=TC._replace(loss=loss, lr=lr))
            for loss, lr in (("gaussian_nll", 1e-2), ("ordinal", 3e-2))}


# The floor: the noise and the rounding to half stars (uniform on +-1/4: variance 1/48).
FLOOR = math.sqrt(NOISE**2 + 1 / 48)


@pytest.mark.parametrize("loss", ["gaussian_nll", "ordinal"])
def test_fit_reaches_a_sensible_rmse(planted, fits, loss):
    _, _, _, test = planted
    result = fits[loss]
    best = min(result.history["val_rmse"])
    assert best < 1.2 * FLOOR, (loss, best)
    assert result.loss is PARAM_LOSSES[loss] and result.train_config.loss == loss
    assert isinstance(result.state.params, JointParams)
    assert type(result.loss_params) is PARAM_LOSSES[loss].Params
    # the returned params are the best epoch's: rescoring through predict gives the recorded RMSE
    apply_fn = make_apply("bias", result.model_config)
    pred = predict_indices(apply_fn, result.params, test.users, test.items, clip=test.rating_scale,
                           **result.predict_link())
    assert metrics.rmse(pred, test.ratings) == pytest.approx(best, abs=1e-6)
    assert result.history["train_loss"][-1] < result.history["train_loss"][0]


def test_learned_variance_is_the_residual_variance(planted, fits):
    result = fits["gaussian_nll"]
    sigma = math.exp(0.5 * float(result.loss_params.log_variance))
    train_rmse = metrics.rmse(predict_indices(make_apply("bias", result.model_config), result.params,
                                              planted[2].users, planted[2].items), planted[2].ratings)
    assert sigma == pytest.approx(train_rmse, rel=0.15)  # s -> log(mean e^2) on the training data


def test_ordinal_distribution_is_calibrated(planted, fits):
    """Averaged over the held-out pairs, the predicted star distribution matches the data's."""
    _, _, train, test = planted
    result = fits["ordinal"]
    scores = predict_indices(make_apply("bias", result.model_config), result.params, test.users, test.items)
    probs = np.asarray(ordinal_probs(result.loss_params, jnp.asarray(scores)))
    levels = np.asarray(result.loss_params.levels)
    np.testing.assert_array_equal(levels, np.unique(train.ratings))
    observed = np.array([np.mean(test.ratings == lv) for lv in levels])
    assert 0.5 * np.abs(probs.mean(axis=0) - observed).sum() < 0.05  # total variation
    assert np.all(np.diff(np.asarray(ordinal_cut_points(result.loss_params))) > 0)


@pytest.mark.slow  # 5 s: a whole experiment
def test_run_experiment_scores_test_with_predict(planted):
    """A ParamLoss object as loss_fn (not by name): trained jointly, test scored through predict."""
    ratings, split, _, _ = planted
    small = Split(split.train[:4000], split.test[:1000])
    record, result = run_experiment(ratings, small, "bias", seed=0, model_config=MODEL_CONFIG,
                                    train_config=TC._replace(epochs=2), loss_fn=ordinal)
    assert result.loss is ordinal and record["train_config"]["loss"] == "ordinal"  # the loss trained
    test = ratings.take(small.test)
    scores = predict_indices(make_apply("bias", result.model_config), result.params, test.users, test.items)
    pred = np.clip(np.asarray(ordinal.predict(result.loss_params, jnp.asarray(scores))), *ratings.rating_scale)
    assert record["test_rmse"] == pytest.approx(metrics.rmse(pred, test.ratings), abs=1e-6)


def test_penalty_reads_the_model_only(planted, fits):
    _, _, train, _ = planted
    result = fits["ordinal"]

    # A penalty that would dominate anything it sees: the loss parameters' gradient is unchanged.
    def huge(params, users, items, weight):
        return 1e6 * sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(params))

    params = JointParams(result.params, result.loss_params)
    apply_fn = make_apply("bias", result.model_config)
    batch = Batch(jnp.asarray(train.users[:64]), jnp.asarray(train.items[:64]), jnp.asarray(train.ratings[:64]),
                  jnp.ones(64, bool))
    g_plain = jax.jit(jax.grad(make_objective(apply_fn, ordinal)))(params, batch, jax.random.key(0))
    g_pen = jax.jit(jax.grad(make_objective(apply_fn, ordinal, huge)))(params, batch, jax.random.key(0))
    for a, b in zip(jax.tree.leaves(g_plain.loss), jax.tree.leaves(g_pen.loss)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert not np.allclose(g_plain.model.user_factors, g_pen.model.user_factors)


def test_resume_with_loss_params(planted, fits, tmp_path):
    """Killed after epoch 5 and resumed: the same state, loss parameters included, as straight through."""
    _, _, train, test = planted
    straight = fits["gaussian_nll"]

    class Stop(Exception):
        pass

    def stop_after_5(epoch, record):
        if epoch == 5:
            raise Stop

    kw = {"key": 7, "progress": False, "model_config": MODEL_CONFIG, "train_config": straight.train_config,
          "checkpoint_dir": str(tmp_path / "p")}
    with pytest.raises(Stop):
        fit("bias", train, test, on_epoch=stop_after_5, **kw)
    resumed = fit("bias", train, test, **kw)
    for a, b in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(straight.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(resumed.loss_params.log_variance, straight.loss_params.log_variance)
    assert resumed.best_epoch == straight.best_epoch


def test_fit_many_refuses_losses_with_parameters(planted):
    _, _, train, _ = planted
    with pytest.raises(ValueError, match="learned parameters"):
        fit_many("bias", train, None, [Member(loss="ordinal")], train_config=TC._replace(epochs=1))


# -- checkpoints -------------------------------------------------------------------------------
@pytest.mark.parametrize("loss", ["gaussian_nll", "ordinal"])
def test_round_trip_through_a_checkpoint(planted, fits, loss, tmp_path):
    ratings, _, _, test = planted
    rec = to_recommender(ratings, fits[loss])
    assert rec.loss == loss
    path = checkpoint.save(tmp_path / loss, rec)
    meta = json.loads((path / "meta.json").read_text())
    assert meta["loss"] == loss
    assert {k for k in meta["arrays"] if k.startswith("loss/")} == {f"loss/{f}" for f in rec.loss_params._fields}
    loaded = checkpoint.load(path)
    assert loaded.loss == loss and type(loaded.loss_params) is type(rec.loss_params)
    for a, b in zip(rec.loss_params, loaded.loss_params):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    users, items = ratings.user_ids[test.users[:300]], ratings.item_ids[test.items[:300]]
    pred = loaded.predict(users, items)
    np.testing.assert_array_equal(pred, rec.predict(users, items))
    # by raw id, the same as the loss's predict of the model's scores at the indices
    scores = predict_indices(make_apply("bias", rec.config), rec.params, test.users[:300], test.items[:300])
    want = np.clip(np.asarray(PARAM_LOSSES[loss].predict(rec.loss_params, jnp.asarray(scores))), 0.5, 5.0)
    np.testing.assert_allclose(pred, want, rtol=1e-6)
    # unknown ids fall back to mu + b_i (or mu + b_u, or mu), through the loss's predict too
    p = rec.params
    fb = loaded.predict([10_000, 10_000], [items[0], 10_000], unknown="fallback")
    i0 = int(test.items[0])
    raw = jnp.asarray([float(p.global_bias + p.item_bias[i0]), float(p.global_bias)], jnp.float32)
    np.testing.assert_allclose(fb, np.clip(PARAM_LOSSES[loss].predict(rec.loss_params, raw), 0.5, 5.0), rtol=1e-6)


def test_rating_distribution(planted, fits, tmp_path):
    ratings, _, _, test = planted
    rec = checkpoint.load(checkpoint.save(tmp_path / "o", to_recommender(ratings, fits["ordinal"])))
    users, items = ratings.user_ids[test.users[:50]], ratings.item_ids[test.items[:50]]
    levels, probs = rec.rating_distribution(users, items)
    np.testing.assert_array_equal(levels, np.arange(1, 11) / 2)
    assert probs.shape == (50, 10) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs @ levels, rec.predict(users, items), rtol=1e-5)
    gaussian = to_recommender(ratings, fits["gaussian_nll"])
    with pytest.raises(ValueError, match="ordinal"):
        gaussian.rating_distribution(users, items)


def test_damaged_loss_arrays_are_refused(planted, fits, tmp_path):
    ratings = planted[0]
    path = checkpoint.save(tmp_path / "o", to_recommender(ratings, fits["ordinal"]))

    def rewrite(mutate):
        with np.load(path / "arrays.npz") as f:
            arrays = {k: f[k] for k in f.files}
        meta = json.loads((path / "meta.json").read_text())
        mutate(arrays, meta)
        np.savez(path / "arrays.npz", **arrays)
        meta["arrays"] = {k: {"shape": list(a.shape), "dtype": str(a.dtype)} for k, a in arrays.items()}
        (path / "meta.json").write_text(json.dumps(meta))

    rewrite(lambda a, m: a.update({"loss/deltas": np.zeros(3, np.float32)}))  # 10 levels need 8 gaps
    with pytest.raises(CheckpointError, match="do not fit together"):
        checkpoint.load(path)
    rewrite(lambda a, m: a.pop("loss/deltas"))
    with pytest.raises(CheckpointError, match="loss/deltas"):
        checkpoint.load(path)
    rewrite(lambda a, m: m.update(loss="nope"))
    with pytest.raises(CheckpointError, match="nope"):
        checkpoint.load(path)
    # a checkpoint whose meta.json does not name a loss but that carries loss arrays is refused too
    rewrite(lambda a, m: (m.pop("loss"), a.update({"loss/deltas": np.zeros(8, np.float32)})))
    with pytest.raises(CheckpointError, match="arrays.npz"):
        checkpoint.load(path)
