"""I-AutoRec: the formula by hand, the objective and codes against NumPy, the per-row penalty,
the training matrix, and training through `fit` on synthetic data."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from recsys_jax.data import Ratings
from recsys_jax.data.synthetic import make_synthetic
from recsys_jax.models import autorec, make_apply, make_config
from recsys_jax.engine.config import TrainConfig
from recsys_jax.training.fit import fit


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def hand_params() -> autorec.Params:
    # U = 3 users, K = 2 hidden units, I = 2 items
    return autorec.Params(
        user_encoder=jnp.array([[0.5, -1.0], [2.0, 0.0], [-0.5, 1.0]]),  # V^T
        user_decoder=jnp.array([[1.0, 2.0], [0.0, -1.0], [3.0, 0.5]]),  # W
        user_bias=jnp.array([3.0, 3.5, 2.0]),
        hidden_bias=jnp.array([0.0, 0.25]),
        item_code=jnp.array([[0.5, 0.25], [1.0, 0.0]]),
    )


def test_predict_by_hand():
    p = hand_params()
    got = autorec.apply(p, jnp.array([0, 1, 2, 2]), jnp.array([0, 0, 1, 0]))
    want = [3.0 + 1.0 * 0.5 + 2.0 * 0.25, 3.5 - 0.25, 2.0 + 3.0, 2.0 + 1.5 + 0.125]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(autorec.score_matrix(p), np.array([[4.0, 4.0], [3.25, 3.5], [3.625, 5.0]]),
                               rtol=1e-6)


def test_encode_by_hand():
    p = hand_params()
    r = jnp.array([[1.0, 0.0, -2.0]])  # user 0 rated +1, user 2 rated -2 (centred), user 1 unobserved
    # V r + mu = 1 * [0.5, -1] - 2 * [-0.5, 1] + [0, 0.25] = [1.5, -2.75]
    np.testing.assert_allclose(autorec.encode(p, r), sigmoid(np.array([[1.5, -2.75]])), rtol=1e-6)


def tiny_ratings() -> Ratings:
    users = np.array([0, 0, 1, 2, 2, 3])
    items = np.array([0, 2, 2, 1, 2, 0])
    ratings = np.array([4.0, 2.5, 5.0, 1.0, 3.0, 4.5])
    return Ratings.from_raw(users, items, ratings, np.zeros(6, np.int64))


def test_training_matrix_layout_and_size_limit(monkeypatch):
    train = tiny_ratings()
    config = make_config("autorec", mean_rating=3.0)
    x, m = autorec.training_matrix(train, config)
    assert x.shape == (3, 4) and m.shape == (3, 4) and x.dtype == np.float32
    want = np.zeros((3, 4), np.float32)
    want[0, 0], want[2, 0], want[2, 1], want[1, 2], want[2, 2], want[0, 3] = 1.0, -0.5, 2.0, -2.0, 0.0, 1.5
    np.testing.assert_allclose(x, want)
    assert m.sum() == 6 and m[2, 2] and not m[1, 0]  # a rating equal to the mean is still observed
    raw, _ = autorec.training_matrix(train, config._replace(center=False))
    assert raw[2, 1] == 5.0 and raw[1, 0] == 0.0
    monkeypatch.setattr(autorec, "MAX_ENTRIES", 11)
    with pytest.raises(ValueError, match="3 items x 4 users = 12 entries.*MAX_ENTRIES"):
        autorec.training_matrix(train, config)


def numpy_objective(p, inputs, observed, mean, l2, bias_l2, keep=None, dropout=0.0, kept_weight=1.0):
    """The paper's objective, one observed entry at a time; with ``keep``, the input entries
    not kept are zeroed (the kept ones scaled by 1 / (1 - dropout)) and the squared errors of
    the kept entries weigh ``kept_weight``."""
    V, W = np.asarray(p.user_encoder, np.float64).T, np.asarray(p.user_decoder, np.float64)
    b, mu = np.asarray(p.user_bias, np.float64), np.asarray(p.hidden_bias, np.float64)
    total = 0.0
    for i in range(inputs.shape[0]):
        x = inputs[i] if keep is None else np.where(keep[i], inputs[i] / (1.0 - dropout), 0.0)
        z = sigmoid(V @ x + mu)
        for u in range(inputs.shape[1]):
            if observed[i, u]:
                w = kept_weight if keep is not None and keep[i, u] else 1.0
                total += w * (inputs[i, u] + mean - (W[u] @ z + b[u])) ** 2
    return total + 0.5 * l2 * (np.sum(W ** 2) + np.sum(V ** 2)) + 0.5 * bias_l2 * np.sum(b ** 2)


@pytest.fixture(scope="module")
def random_case():
    config = make_config("autorec", embedding_dim=3, mean_rating=3.0)
    train = tiny_ratings()
    x, m = autorec.training_matrix(train, config)
    p = autorec.init(jax.random.key(0), 4, 3, config)
    rng = np.random.default_rng(0)
    p = jax.tree.map(lambda a: jnp.asarray(a + 0.5 * rng.standard_normal(a.shape), jnp.float32), p)
    return config, x, m, p


def test_objective_equals_numpy_reference(random_case):
    config, x, m, p = random_case
    want = numpy_objective(p, x, m, 3.0, 0.7, 0.2)
    f = jax.jit(lambda w: autorec.objective(w, x, m, config=config, l2=0.7, bias_l2=0.2))
    assert float(f(p)) == pytest.approx(want, rel=1e-5)
    # the item code plays no part in the objective (it is recomputed, not trained)
    assert float(f(p._replace(item_code=p.item_code + 1.0))) == pytest.approx(want, rel=1e-5)


def test_denoising_objective_equals_numpy_reference(random_case):
    config, x, m, p = random_case
    keep = np.array([[True, False, True, True], [False, True, True, False], [True, True, False, False]])
    want = numpy_objective(p, x, m, 3.0, 0.7, 0.0, keep, config.input_dropout, config.kept_weight)
    got = jax.jit(lambda w: autorec.objective(w, x, m, config=config, l2=0.7, keep=keep))(p)
    assert float(got) == pytest.approx(want, rel=1e-5)
    assert config.input_dropout == 0.5 and config.kept_weight == 0.3  # the defaults, checked here
    # an all-kept mask with kept_weight 1 is the paper's objective on inputs scaled by 1 / (1 - p)
    plain = config._replace(kept_weight=1.0, input_dropout=0.0)
    np.testing.assert_allclose(float(autorec.objective(p, x, m, config=plain, l2=0.7, keep=np.ones_like(keep))),
                               numpy_objective(p, x, m, 3.0, 0.7, 0.0), rtol=1e-5)


def test_objective_gradient_matches_finite_differences(random_case):
    config, x, m, p = random_case
    with jax.enable_x64(True):
        w = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), p._replace(item_code=None))
        f = lambda w: autorec.objective(jax.tree.map(jnp.asarray, w), jnp.asarray(x, jnp.float64), m,
                                        config=config, l2=0.7, bias_l2=0.2)
        check_grads(f, (w,), order=1, modes=["rev"], eps=1e-6)


def test_item_codes_in_blocks_equal_encode(random_case):
    _, x, _, p = random_case
    want = sigmoid(x.astype(np.float64) @ np.asarray(p.user_encoder, np.float64) + np.asarray(p.hidden_bias))
    np.testing.assert_allclose(autorec.item_codes(p, jnp.asarray(x), block=2), want, rtol=1e-5)


def test_penalty_counts_each_touched_user_once(random_case):
    config, _, _, p = random_case
    users = jnp.array([1, 1, 3, 0, 2])
    weight = jnp.array([1.0, 2.5, 0.5, 1.0, 0.0])  # user 2 is padding (weight 0)
    got = autorec.penalty(p, users, jnp.zeros(5, jnp.int32), weight, l2=0.6, bias_l2=0.1)
    enc, dec, b = (np.asarray(a, np.float64) for a in (p.user_encoder, p.user_decoder, p.user_bias))
    want = sum(0.3 * (np.sum(enc[u] ** 2) + np.sum(dec[u] ** 2)) + 0.05 * b[u] ** 2 for u in (0, 1, 3))
    assert float(got) == pytest.approx(want, rel=1e-5)
    # over every user it is the objective's penalty term
    every = autorec.penalty(p, jnp.arange(4), jnp.zeros(4, jnp.int32), jnp.ones(4), l2=0.6, bias_l2=0.1)
    assert float(every) == pytest.approx(float(autorec.objective(
        p, np.zeros((3, 4), np.float32), np.zeros((3, 4), bool), config=config, l2=0.6, bias_l2=0.1)), rel=1e-6)


# -- training ---------------------------------------------------------------------------------
TC = TrainConfig(epochs=15, batch_size=16, lr=1e-2, schedule="constant", l2=1.0)


@pytest.fixture(scope="module")
def synthetic():
    ratings, _ = make_synthetic(jax.random.key(1), 80, 60, 2400, embedding_dim=3, noise_std=0.3)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(ratings))
    return ratings.take(order[:2000]), ratings.take(order[2000:])


@pytest.fixture(scope="module")
def trained(synthetic):
    train, val = synthetic
    config = make_config("autorec", embedding_dim=16)
    return fit("autorec", train, val, key=jax.random.key(0), model_config=config, train_config=TC, progress=False)


def test_fit_learns_beyond_the_mean(synthetic, trained):
    train, val = synthetic
    losses, rmse = trained.history["train_loss"], trained.history["val_rmse"]
    assert len(losses) == TC.epochs and losses[-1] < 0.7 * losses[0]
    baseline = float(np.sqrt(np.mean((val.ratings - train.ratings.mean()) ** 2)))
    assert min(rmse) < 0.8 * baseline  # 0.60 against 0.84 when written


def test_codes_are_the_encoded_training_ratings(synthetic, trained):
    train, _ = synthetic
    x, _ = autorec.training_matrix(train, trained.model_config)
    p = trained.params
    want = sigmoid(x.astype(np.float64) @ np.asarray(p.user_encoder, np.float64) + np.asarray(p.hidden_bias))
    np.testing.assert_allclose(p.item_code, want, rtol=1e-4, atol=1e-6)
    # and prediction is the reconstruction's entry u: b_u + W_u . g(V r_i + mu)
    users, items = np.asarray(train.users[:50]), np.asarray(train.items[:50])
    recon = np.asarray(autorec.decode(p, jnp.asarray(want, jnp.float32)))
    np.testing.assert_allclose(make_apply("autorec", trained.model_config)(p, users, items), recon[items, users],
                               rtol=1e-5)


def test_fit_is_deterministic_per_key(synthetic, trained):
    train, _ = synthetic
    again = fit("autorec", train, None, key=jax.random.key(0), model_config=trained.model_config,
                train_config=TC._replace(epochs=trained.best_epoch), progress=False)
    # same key, same first epochs: the selection fit's best epoch is reproduced (no validation here)
    assert again.history["train_loss"] == pytest.approx(trained.history["train_loss"][:trained.best_epoch])


def test_full_batch_adam_lowers_the_objective_every_epoch(synthetic):
    train, _ = synthetic
    # the paper's model (no input dropout): a deterministic full-batch objective
    config = make_config("autorec", embedding_dim=8, mean_rating=float(train.ratings.mean()), input_dropout=0.0)
    tc = TrainConfig(epochs=5, batch_size=10_000, lr=3e-3, schedule="constant", l2=1.0)
    losses = [loss for _, loss in autorec.fit_epochs(jax.random.key(2), train, config, tc)]
    assert np.all(np.diff(losses) < 0)


def test_y_range_trains_and_predicts_inside_the_range(synthetic):
    train, val = synthetic
    config = make_config("autorec", embedding_dim=8, y_range=(0.5, 5.0))
    result = fit("autorec", train, val, key=jax.random.key(0), model_config=config,
                 train_config=TC._replace(epochs=3), progress=False)
    pred = make_apply("autorec", result.model_config)(result.params, val.users, val.items)
    assert np.all((pred > 0.5) & (pred < 5.0))
    assert min(result.history["val_rmse"]) < float(np.std(val.ratings)) * 1.05


def test_bad_settings_are_clear_errors(synthetic):
    train, _ = synthetic
    config = make_config("autorec", embedding_dim=4)
    for tc, message in [(TC._replace(loss="mae"), "loss must be 'mse'"),
                        (TC._replace(optimizer="sgd"), "optimizer must be 'adam'")]:
        with pytest.raises(ValueError, match=message):
            next(autorec.fit_epochs(jax.random.key(0), train, config, tc))


def _adam_count(opt_state) -> int:
    return int(next(leaf for path, leaf in jax.tree_util.tree_leaves_with_path(opt_state)
                    if "count" in jax.tree_util.keystr(path)))


@pytest.mark.parametrize("steps", [3, 10])
def test_an_epoch_is_its_step_budget_whatever_the_catalogue(synthetic, steps):
    """steps_per_epoch fixes the Adam steps of an epoch (the budget in steps, not passes):
    60 movies in batches of 16 are 4 batches a pass, and an epoch takes 3 or 10 of them,
    the passes continuing."""
    train, _ = synthetic
    config = make_config("autorec", embedding_dim=4, mean_rating=3.5, steps_per_epoch=steps)
    assert autorec.epoch_steps(config, train.num_items, 16) == steps
    assert autorec.epoch_steps(config._replace(steps_per_epoch=0), train.num_items, 16) == 4
    optimizer, epoch = autorec._epoch_program(config, TC, train.num_items, 16, 4, steps)
    weights = autorec.init(jax.random.key(0), train.num_users, train.num_items, config)._replace(item_code=None)
    inputs, observed = (jnp.asarray(a) for a in autorec.training_matrix(train, config))
    _, opt_state, _ = epoch(weights, optimizer.init(weights), inputs, observed, len(train), jax.random.key(1))
    assert _adam_count(opt_state) == steps


def test_a_budget_of_one_pass_is_the_one_pass_epoch(synthetic):
    """steps_per_epoch equal to the batches of a pass trains exactly as one pass (0)."""
    train, _ = synthetic
    config = make_config("autorec", embedding_dim=4, mean_rating=float(train.ratings.mean()))
    tc = TC._replace(epochs=2)
    a = [p for p, _ in autorec.fit_epochs(jax.random.key(3), train, config, tc)]
    b = [p for p, _ in autorec.fit_epochs(jax.random.key(3), train, config._replace(steps_per_epoch=4), tc)]
    for x, y in zip(jax.tree.leaves(a[-1]), jax.tree.leaves(b[-1])):
        np.testing.assert_array_equal(x, y)
