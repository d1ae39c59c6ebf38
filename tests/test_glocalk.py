"""GLocal-K: the local kernel and the global convolution by hand, the objective against a dense
NumPy reference (unobserved entries hold garbage that must not count), its gradient against
finite differences, the factor form against the full reconstruction, the stages of fit_epochs,
determinism, and accuracy on planted synthetic data."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from recsys_jax.data import make_synthetic, random_split
from recsys_jax.models import glocalk
from recsys_jax.engine.config import TrainConfig
from recsys_jax.training.fit import fit

NUM_USERS, NUM_ITEMS = 6, 8
CONFIG = glocalk.Config(embedding_dim=4, kernel_dim=2, num_layers=2, weight_l2=0.3, kernel_l2=0.05,
                        mean_rating=3.0, steps_per_epoch=3, pretrain_epochs=2)


def tiny_data():
    rng = np.random.default_rng(0)
    pairs = [(u, i) for u in range(NUM_USERS) for i in range(NUM_ITEMS) if (u + 2 * i) % 3]
    users, items = np.array(pairs, np.int32).T
    ratings = (rng.integers(1, 11, len(users)) / 2).astype(np.float32)
    matrix = np.zeros((NUM_ITEMS, NUM_USERS), np.float32)
    matrix[items, users] = ratings
    return glocalk.TrainingData(jnp.asarray(items), jnp.asarray(users), jnp.asarray(ratings), jnp.asarray(matrix))


def spread_weights(config=CONFIG, scale=0.4):
    """Weights off the init: unit vectors spread so that some kernel entries are 0, some not."""
    w = glocalk.init_weights(jax.random.key(0), NUM_USERS, NUM_ITEMS, config)
    leaves, treedef = jax.tree.flatten(w)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    return jax.tree.unflatten(treedef, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


# -- the pieces by hand -----------------------------------------------------------------------
def test_local_kernel_by_hand():
    u = jnp.array([[0.0, 0.0], [1.0, 0.0]])
    v = jnp.array([[0.0, 0.5], [0.3, 0.4], [0.0, 0.0]])
    # |u - v|^2: row 0: .25, .25, 0; row 1: 1.25, .65, 1.0  ->  max(0, 1 - d^2)
    want = np.array([[0.75, 0.75, 1.0], [0.0, 0.35, 0.0]])
    np.testing.assert_allclose(glocalk.local_kernel(u, v), want, atol=1e-6)
    np.testing.assert_allclose(jax.jit(glocalk.local_kernel)(u, v), want, atol=1e-6)
    layer = glocalk.Layer(jnp.full((2, 3), 2.0), jnp.zeros(3), u, v)
    np.testing.assert_allclose(glocalk.kernelised(layer), 2.0 * want, atol=1e-6)


def test_global_conv_is_a_rectified_same_cross_correlation():
    rng = np.random.default_rng(3)
    r = rng.normal(size=(5, 4)).astype(np.float32)
    g = rng.normal(size=(3, 3)).astype(np.float32)
    padded = np.pad(r, 1)
    want = np.array([[np.sum(padded[i:i + 3, j:j + 3] * g) for j in range(4)] for i in range(5)])
    np.testing.assert_allclose(glocalk.global_conv(jnp.asarray(r), jnp.asarray(g)), np.maximum(want, 0), atol=1e-5)
    # the identity kernel leaves a non-negative matrix as it is
    eye = np.zeros((3, 3), np.float32)
    eye[1, 1] = 1.0
    np.testing.assert_allclose(glocalk.global_conv(jnp.abs(jnp.asarray(r)), jnp.asarray(eye)), np.abs(r), atol=1e-6)


@pytest.mark.slow  # 7 s
def test_identity_conv_makes_fine_tuning_start_at_the_pre_trained_model():
    data, w = tiny_data(), spread_weights()
    config = CONFIG._replace(dot_scale=0.5)
    w = w._replace(conv=glocalk.identity_conv(w, data, config))
    eye = np.zeros((3, 3))
    eye[1, 1] = 1.0
    np.testing.assert_allclose(glocalk.global_kernel(w.layers, w.conv, data, config), eye, atol=1e-5)
    np.testing.assert_allclose(glocalk.item_codes(w, data, config, True), glocalk.item_codes(w, data, config, False),
                               atol=1e-5)
    assert float(glocalk.objective(w, data, config=config, finetune=True)) == pytest.approx(
        float(glocalk.objective(w, data, config=config, finetune=False)), rel=1e-5)


# -- a dense NumPy reference of the objective ---------------------------------------------------
def numpy_objective(w, data, config, finetune, garbage):
    """J written densely: the whole [I, U] reconstruction, squared errors masked to the observed
    entries; ``garbage`` is what the target matrix holds where nothing was observed."""
    sig = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
    layers = [jax.tree.map(lambda x: np.asarray(x, np.float64), layer) for layer in w.layers]
    kern = [np.maximum(0.0, 1.0 - ((l.in_vectors[:, None, :] - l.out_vectors[None]) ** 2).sum(-1)) for l in layers]
    eff = [l.weight * k for l, k in zip(layers, kern)]
    matrix = np.asarray(data.matrix, np.float64)
    observed = matrix != 0

    def hidden(x):
        for e, l in zip(eff[:-1], layers[:-1]):
            x = sig(x @ e + l.bias)
        return x

    x = matrix
    if finetune:
        pooled = (hidden(matrix) @ eff[-1] + layers[-1].bias).mean(axis=1)  # [I]
        g = config.conv_size
        kernel = (config.dot_scale / NUM_ITEMS * pooled @ np.asarray(w.conv, np.float64)).reshape(g, g)
        padded = np.pad(matrix, g // 2)
        x = np.maximum(0.0, np.array([[np.sum(padded[i:i + g, j:j + g] * kernel) for j in range(NUM_USERS)]
                                      for i in range(NUM_ITEMS)]))
    pred = hidden(x) @ eff[-1] + layers[-1].bias
    targets = np.where(observed, matrix, garbage)
    sse = 0.5 * np.sum(np.where(observed, (pred - targets) ** 2, 0.0))
    reg = sum(0.5 * config.weight_l2 * np.sum(l.weight ** 2) + 0.5 * config.kernel_l2 * np.sum(k ** 2)
              for l, k in zip(layers, kern))
    return sse + reg, pred


@pytest.fixture(scope="module")
def objectives():
    """The objective of each stage, jitted once for the module."""
    return {ft: jax.jit(lambda w, d, ft=ft: glocalk.objective(w, d, config=CONFIG, finetune=ft))
            for ft in (False, True)}


@pytest.mark.parametrize("finetune", [False, True])
def test_objective_equals_the_dense_masked_reference(objectives, finetune):
    data, w = tiny_data(), spread_weights()
    garbage = np.random.default_rng(5).normal(100.0, 50.0, (NUM_ITEMS, NUM_USERS))  # must not count
    want, pred = numpy_objective(w, data, CONFIG, finetune, garbage)
    assert float(objectives[finetune](w, data)) == pytest.approx(want, rel=1e-5)
    # the factor form of the same weights is the full reconstruction, every pair
    params = glocalk.to_params(w.layers, glocalk.item_codes(w, data, CONFIG, finetune))
    np.testing.assert_allclose(glocalk.score_matrix(params).T, pred, rtol=1e-4, atol=1e-4)
    assert params.user_factors.shape == (NUM_USERS, 4) and params.item_factors.shape == (NUM_ITEMS, 4)
    assert params.user_bias.shape == (NUM_USERS,)


@pytest.mark.slow  # 9 s and more: float64 finite differences
@pytest.mark.parametrize("finetune", [False, True])
def test_objective_gradient_matches_finite_differences(finetune):
    data, w = tiny_data(), spread_weights(scale=0.2)
    with jax.enable_x64(True):
        w64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), w)
        d64 = data._replace(ratings=jnp.asarray(data.ratings, jnp.float64), matrix=jnp.asarray(data.matrix, jnp.float64))
        f = lambda w: glocalk.objective(jax.tree.map(jnp.asarray, w), d64, config=CONFIG, finetune=finetune)  # noqa: E731
        check_grads(f, (w64,), order=1, modes=["rev"], eps=1e-6)


@pytest.mark.slow  # 7 s
def test_an_unobserved_entry_gets_no_gradient_from_the_errors():
    """With the regulariser off, a user whose entries are all unobserved gets no gradient at its
    output unit, and an item with no ratings none at its first-layer weights in stage 1."""
    data = tiny_data()
    keep = np.asarray(data.users) != 2  # user 2 observed nowhere
    data = glocalk.TrainingData(data.items[keep], data.users[keep], data.ratings[keep],
                                data.matrix.at[:, 2].set(0.0))
    config = CONFIG._replace(weight_l2=0.0, kernel_l2=0.0)
    w = spread_weights()
    grads = jax.grad(lambda w: glocalk.objective(w, data, config=config, finetune=False))(w)
    out, first = grads.layers[-1], grads.layers[0]
    np.testing.assert_array_equal(out.weight[:, 2], 0.0)
    np.testing.assert_array_equal(out.bias[2], 0.0)
    np.testing.assert_array_equal(first.weight[2], 0.0)  # its input is 0 in every row
    assert np.all(np.abs(np.asarray(out.bias)[[0, 1, 3, 4, 5]]) > 0)  # the observed users do get one


# -- training -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic():
    ratings, _ = make_synthetic(jax.random.key(7), 60, 80, 2400, embedding_dim=2, noise_std=0.3)
    split = random_split(ratings, seed=0, test_frac=0.2)
    return ratings.take(split.train), ratings.take(split.test)


SMALL = glocalk.Config(embedding_dim=16, kernel_dim=3, weight_l2=1.0, kernel_l2=0.01, pretrain_epochs=3,
                       steps_per_epoch=20, solver="adam")


def run(train, key=0, epochs=5, config=SMALL, lr=3e-2):
    config = config._replace(mean_rating=float(np.mean(train.ratings)))
    return list(glocalk.fit_epochs(jax.random.key(key), train, config, TrainConfig(epochs=epochs, lr=lr)))


@pytest.fixture(scope="module")
def runs(synthetic):
    train, _ = synthetic
    return {"a": run(train), "again": run(train), "other": run(train, key=1), "short": run(train, epochs=2)}


def test_same_key_same_model_and_prefix_of_a_longer_run(runs):
    assert len(runs["a"]) == 5 and len(runs["short"]) == 2
    for (p, loss), (q, loss2) in zip(runs["a"], runs["again"]):
        for x, y in zip(p, q):
            np.testing.assert_array_equal(x, y)
        assert loss == loss2
    # a refit for fewer epochs repeats the same epochs (no schedule depends on the total)
    for (p, _), (q, _) in zip(runs["a"], runs["short"]):
        for x, y in zip(p, q):
            np.testing.assert_array_equal(x, y)
    assert not np.array_equal(runs["a"][-1][0].user_factors, runs["other"][-1][0].user_factors)


def test_objective_falls_within_each_stage(runs):
    losses = [loss for _, loss in runs["a"]]
    assert losses[2] < losses[0]  # pre-training, epochs 1-3
    assert losses[4] < losses[3]  # fine-tuning, epochs 4-5


def test_fine_tuning_starts_from_the_identity_kernel_with_fresh_moments_at_the_scaled_rate(synthetic, runs):
    # Stage 1 written out with the module's own pieces, then stage 2's first epoch from a fresh
    # Adam at lr * finetune_lr_scale: the run's fourth epoch, bit for bit. Carried moments, or
    # the unscaled rate, give another model.
    train, _ = synthetic
    config = SMALL._replace(mean_rating=float(np.mean(train.ratings)))
    static, lr = config._replace(mean_rating=0.0), 3e-2
    data = glocalk.training_data(train, config)
    weights = glocalk.init_weights(jax.random.key(0), train.num_users, train.num_items, config)
    optimizer, epoch = glocalk._stage_program(static, lr, False)
    state = optimizer.init(weights)
    for _ in range(config.pretrain_epochs):
        weights, state, _, _ = epoch(weights, state, data)
    weights = weights._replace(conv=glocalk.identity_conv(weights, data, static))
    fresh, tune = glocalk._stage_program(static, lr * config.finetune_lr_scale, True)
    _, _, params, loss = tune(weights, fresh.init(weights), data)
    expected, expected_loss = runs["a"][config.pretrain_epochs]
    for x, y in zip(params, expected):
        np.testing.assert_array_equal(x, y)
    assert float(loss) == expected_loss
    _, _, carried, _ = tune(weights, state, data)
    assert not np.array_equal(carried.user_factors, expected.user_factors)


def test_beats_the_global_mean_on_planted_data(synthetic):
    train, test = synthetic
    result = fit("glocalk", train, test, key=0, model_config=SMALL, train_config=TrainConfig(epochs=8, lr=3e-2),
                 progress=False)
    mean_rmse = float(np.sqrt(np.mean((test.ratings - np.mean(train.ratings)) ** 2)))
    best = min(result.history["val_rmse"])
    assert best < 0.9 * mean_rmse, (best, mean_rmse)
    pred = glocalk.apply(result.params, jnp.asarray(test.users), jnp.asarray(test.items), config=result.model_config)
    assert pred.shape == (len(test),) and pred.dtype == jnp.float32


@pytest.mark.slow  # 6 s
def test_lbfgs_runs_and_lowers_the_objective(synthetic):
    train, _ = synthetic
    losses = [loss for _, loss in run(train, epochs=2, config=SMALL._replace(solver="lbfgs", steps_per_epoch=5,
                                                                                pretrain_epochs=2))]
    assert np.all(np.isfinite(losses)) and losses[1] < losses[0]


def test_bad_settings_are_clear_errors(synthetic, monkeypatch):
    train, _ = synthetic
    with pytest.raises(ValueError, match="solver"):
        run(train, config=SMALL._replace(solver="rprop"))
    with pytest.raises(ValueError, match="conv_size"):
        run(train, config=SMALL._replace(conv_size=2))
    with pytest.raises(ValueError, match="finetune_lr_scale"):
        run(train, config=SMALL._replace(finetune_lr_scale=0.0))
    with pytest.raises(ValueError, match="loss"):
        list(glocalk.fit_epochs(jax.random.key(0), train, SMALL, TrainConfig(epochs=1, loss="mae")))
    monkeypatch.setattr(glocalk, "MAX_ENTRIES", 100)
    with pytest.raises(ValueError, match="MAX_ENTRIES"):
        run(train)
