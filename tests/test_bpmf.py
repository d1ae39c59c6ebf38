"""Bayesian PMF by Gibbs sampling (`recsys_jax.models.bpmf`).

The samplers against closed-form moments (many draws, tolerances from the standard error
of a mean of that many draws), the batched per-row conditional means against a NumPy solve,
the sample store against the mean of the samples it holds, reproducibility from the key,
and the posterior-mean predictor against the bias model on planted data.

Tolerances: a mean of ``n`` independent draws of variance ``v`` has standard error
``sqrt(v / n)``; a check at ``Z = 5`` standard errors fails by chance with probability
below 1e-6 per entry, while the errors it guards against (a wrong degree of freedom, a
transposed factor, a covariance instead of a precision) move the moments by 5-50 %, which
at ``n = 20000`` is 20-200 standard errors. The draws come from fixed keys, so the tests
are deterministic.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recsys_jax.models import row_chunks
from recsys_jax.data import make_synthetic, random_split
from recsys_jax.training.experiment import carve_validation
from recsys_jax.models import bpmf, make_apply, make_config
from recsys_jax.eval.predict import predict_indices
from recsys_jax.training.presets import get_preset
from recsys_jax.training.fit import fit

N_DRAWS, Z = 20_000, 5.0
SPD = np.array([[1.0, 0.3, -0.2], [0.3, 0.8, 0.1], [-0.2, 0.1, 0.5]])


def spd(k, seed):
    a = np.random.default_rng(seed).normal(size=(k, k))
    return a @ a.T + k * np.eye(k)


def test_cholesky_and_triangular_solves_match_numpy():
    a = spd(5, 0)
    b = np.random.default_rng(1).normal(size=(5, 3))
    low = np.asarray(jax.jit(bpmf.cholesky)(jnp.asarray(a, jnp.float32)))
    np.testing.assert_allclose(low, np.linalg.cholesky(a), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bpmf.solve_lower(jnp.asarray(low), jnp.asarray(b, jnp.float32)),
                               np.linalg.solve(low, b), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bpmf.solve_lower_t(jnp.asarray(low), jnp.asarray(b[:, 0], jnp.float32)),
                               np.linalg.solve(low.T, b[:, 0]), rtol=1e-4, atol=1e-5)


def test_wishart_draws_have_the_closed_form_mean_and_variance():
    df = 6.5
    inv_scale = np.linalg.inv(SPD)
    keys = jax.random.split(jax.random.key(0), N_DRAWS)
    draws = np.asarray(jax.jit(jax.vmap(bpmf.sample_wishart, in_axes=(0, None, None)))(
        keys, jnp.asarray(inv_scale, jnp.float32), df), np.float64)
    mean = df * SPD  # E[Lambda] = nu W
    var = df * (SPD ** 2 + np.outer(np.diag(SPD), np.diag(SPD)))  # Var(Lambda_ij) = nu (W_ij^2 + W_ii W_jj)
    np.testing.assert_array_less(np.abs(draws.mean(0) - mean), Z * np.sqrt(var / N_DRAWS))
    np.testing.assert_allclose(draws.var(0), var, rtol=0.1)  # a variance of 2e4 draws: ~3% error
    assert np.all(np.linalg.eigvalsh(draws[:100]) > 0)


def test_normal_wishart_posterior_is_the_closed_form():
    rng = np.random.default_rng(0)
    rows = rng.normal(0.5, 1.0, size=(8, 3))
    mask = np.array([1, 1, 0, 1, 1, 1, 0, 1], np.float32)  # rows without ratings drop out
    post = bpmf.normal_wishart_posterior(jnp.asarray(rows, jnp.float32), jnp.asarray(mask), prior_beta=2.0)
    x = rows[mask > 0]
    n, k, beta0 = len(x), 3, 2.0
    xbar = x.mean(0)
    scatter = (x - xbar).T @ (x - xbar)
    np.testing.assert_allclose(post.mean, n * xbar / (beta0 + n), rtol=1e-5)
    np.testing.assert_allclose(post.beta, beta0 + n)
    np.testing.assert_allclose(post.df, k + n)
    np.testing.assert_allclose(post.inv_scale, np.eye(k) + scatter + beta0 * n / (beta0 + n) * np.outer(xbar, xbar),
                               rtol=1e-5, atol=1e-6)


def test_normal_wishart_draws_have_the_closed_form_moments():
    k, beta, df = 3, 9.0, 10.0
    mean = np.array([0.4, -0.3, 1.0])
    inv_scale = np.linalg.inv(SPD)
    post = bpmf.NormalWishart(*(jnp.asarray(a, jnp.float32) for a in (mean, beta, inv_scale, df)))
    keys = jax.random.split(jax.random.key(1), N_DRAWS)
    mus, lams = jax.jit(jax.vmap(bpmf.sample_normal_wishart, in_axes=(0, None)))(keys, post)
    mus, lams = np.asarray(mus, np.float64), np.asarray(lams, np.float64)
    # Lambda ~ W(W, nu); mu | Lambda ~ N(mu*, (beta Lambda)^-1), so Cov(mu) = E[Lambda^-1] / beta
    # = W^-1 / (beta (nu - K - 1)).
    lam_var = df * (SPD ** 2 + np.outer(np.diag(SPD), np.diag(SPD)))
    np.testing.assert_array_less(np.abs(lams.mean(0) - df * SPD), Z * np.sqrt(lam_var / N_DRAWS))
    cov = inv_scale / (beta * (df - k - 1))
    np.testing.assert_array_less(np.abs(mus.mean(0) - mean), Z * np.sqrt(np.diag(cov) / N_DRAWS))
    # mu is Student-t with nu - K + 1 = 8 degrees of freedom (excess kurtosis 1.5): the
    # sample covariance's standard error is about sqrt((c_aa c_bb + c_ab^2) (1 + 1.5/2) / n).
    se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov ** 2) * 1.75 / N_DRAWS)
    np.testing.assert_array_less(np.abs(np.cov(mus.T) - cov), Z * se)


def test_row_conditional_is_the_gaussian_conditional():
    k = 3
    rng = np.random.default_rng(2)
    v = rng.normal(size=(6, k))
    y = rng.normal(size=6)
    lam, mu, alpha = SPD, np.array([0.1, -0.2, 0.3]), 1.5
    gram, rhs = v.T @ v, v.T @ y
    prec = lam + alpha * gram
    want_mean = np.linalg.solve(prec, lam @ mu + alpha * rhs)
    want_cov = np.linalg.inv(prec)
    args = [jnp.asarray(a, jnp.float32) for a in (gram, rhs, lam, lam @ mu)] + [jnp.float32(alpha)]
    draw = jax.jit(jax.vmap(bpmf.row_conditional, in_axes=(None,) * 5 + (0,)))
    np.testing.assert_allclose(draw(*args, jnp.zeros((1, k)))[0], want_mean, rtol=1e-5, atol=1e-6)
    z = jax.random.normal(jax.random.key(3), (N_DRAWS, k))
    x = np.asarray(draw(*args, z), np.float64)
    np.testing.assert_array_less(np.abs(x.mean(0) - want_mean), Z * np.sqrt(np.diag(want_cov) / N_DRAWS))
    se = np.sqrt((np.outer(np.diag(want_cov), np.diag(want_cov)) + want_cov ** 2) / N_DRAWS)  # Gaussian
    np.testing.assert_array_less(np.abs(np.cov(x.T) - want_cov), Z * se)


# -- the batched side step --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small():
    ratings, _ = make_synthetic(jax.random.key(0), 40, 30, 500, embedding_dim=3)
    return ratings


def test_side_means_equal_numpy_solves_across_chunks(small, monkeypatch):
    # chunks of 2 pieces of 16 slots: many chunks, rows packed beside each other and split
    # into several pieces (row_chunks.make_plan's packing, tested in test_als)
    monkeypatch.setattr(row_chunks, "CHUNK_PIECES", 2)
    r = small
    keep = r.users != 7  # user 7 has no ratings: its mean is the prior mean
    users, items, ratings = r.users[keep], r.items[keep], r.ratings[keep].astype(np.float64)
    plan = row_chunks.make_plan(users, items, ratings, r.num_users, r.num_items)
    assert len(plan.user.rows) > 3
    k, mu, alpha = 4, 3.4, 1.7
    rng = np.random.default_rng(5)
    item_table = rng.normal(size=(r.num_items, k))
    lam, mu_vec = spd(k, 6), rng.normal(size=k)
    table, sse = bpmf.sample_side(jax.random.key(0), jnp.asarray(item_table, jnp.float32), plan.user, r.num_users,
                                  jnp.asarray(mu_vec, jnp.float32), jnp.asarray(lam, jnp.float32),
                                  jnp.float32(alpha), jnp.float32(mu), noise=0.0)
    want = np.empty((r.num_users, k))
    for u in range(r.num_users):
        mine = users == u
        v, y = item_table[items[mine]], ratings[mine] - mu
        want[u] = np.linalg.solve(lam + alpha * v.T @ v, lam @ mu_vec + alpha * v.T @ y)
    np.testing.assert_allclose(table, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(table[7], mu_vec, rtol=1e-5)
    resid = ratings - mu - np.sum(want[users] * item_table[items], axis=1)
    assert float(sse) == pytest.approx(np.sum(resid ** 2), rel=1e-4)
    # with biases the last column is the bias: design [q_i, 1], target r - mu - b_i
    table, sse = bpmf.sample_side(jax.random.key(0), jnp.asarray(item_table, jnp.float32), plan.user, r.num_users,
                                  jnp.asarray(mu_vec, jnp.float32), jnp.asarray(lam, jnp.float32),
                                  jnp.float32(alpha), jnp.float32(mu), noise=0.0, biases=True)
    design = np.concatenate([item_table[:, :-1], np.ones((r.num_items, 1))], axis=1)
    for u in range(r.num_users):
        mine = users == u
        x, y = design[items[mine]], ratings[mine] - mu - item_table[items[mine], -1]
        want[u] = np.linalg.solve(lam + alpha * x.T @ x, lam @ mu_vec + alpha * x.T @ y)
    np.testing.assert_allclose(table, want, rtol=1e-4, atol=1e-4)
    resid = ratings - mu - item_table[items, -1] - np.sum(want[users] * design[items], axis=1)
    assert float(sse) == pytest.approx(np.sum(resid ** 2), rel=1e-4)


# -- the chain --------------------------------------------------------------------------------------
def run(ratings, key, epochs, **options):
    config = make_config("bpmf", mean_rating=float(np.mean(ratings.ratings)), **options)
    gen = bpmf.fit_epochs(jax.random.key(key), ratings, config)
    return [next(gen) for _ in range(epochs)], config


@pytest.fixture(scope="module")
def chain(small):
    return run(small, 0, 6, embedding_dim=3, burn_in=2, num_samples=3)


def test_store_averages_the_last_samples(small, chain):
    steps, config = chain
    k = 3
    users, items = small.users[:50], small.items[:50]
    for t, (params, loss) in enumerate(steps, start=1):
        kept = max(t - config.burn_in, 0)
        held = min(max(kept, 1), config.num_samples)
        assert float(params.sample_weight) == pytest.approx(1.0 / held)
        # the samples the store should hold: the current one during burn-in, else the last `held`
        recent = [p for p, _ in steps[max(t - held, 0):t]]
        want = np.mean([np.sum(np.asarray(p.user_factors)[users] * np.asarray(p.item_factors)[items], axis=1)
                        + np.asarray(p.user_bias)[users] + np.asarray(p.item_bias)[items]
                        for p in recent], axis=0) + float(params.global_bias)
        got = bpmf.apply(params, jnp.asarray(users), jnp.asarray(items), config=config)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert np.isfinite(loss) and loss > 0
    last = steps[-1][0]
    assert last.user_samples.shape == (small.num_users, config.num_samples * (k + 2))
    assert np.any(np.asarray(last.user_bias) != 0) and np.any(np.asarray(last.item_bias) != 0)
    np.testing.assert_allclose(bpmf.score_matrix(last, config=config)[users, items],
                               bpmf.apply(last, jnp.asarray(users), jnp.asarray(items), config=config), rtol=1e-5)


def test_same_key_same_chain_other_key_another(small, chain):
    steps, _ = chain
    again, _ = run(small, 0, 6, embedding_dim=3, burn_in=2, num_samples=3)
    for (a, la), (b, lb) in zip(steps, again):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
        assert la == lb
    other, _ = run(small, 1, 1, embedding_dim=3, burn_in=2, num_samples=3)
    assert not np.array_equal(other[0][0].user_factors, steps[0][0].user_factors)


def test_bad_options_are_clear_errors(small):
    for option, value in (("burn_in", -1), ("num_samples", 0), ("noise_precision", 0.0), ("prior_beta", -1.0)):
        with pytest.raises(ValueError, match=option):
            bpmf.init(jax.random.key(0), 3, 4, make_config("bpmf", **{option: value}))
    with pytest.raises(ValueError, match="y_range"):
        next(bpmf.fit_epochs(jax.random.key(0), small, make_config("bpmf", y_range=(0.5, 5.0))))


@pytest.mark.slow
def test_posterior_mean_beats_the_bias_model_on_planted_data():
    ratings, _ = make_synthetic(jax.random.key(7), 300, 200, 12_000, embedding_dim=3)
    split = random_split(ratings, 0)
    train, val = carve_validation(ratings.take(split.train), 0)
    test = ratings.take(split.test)
    rmse = {}
    for name in ("bias", "bpmf"):
        result = fit(name, train, val, key=0, train_config=get_preset("default", name), progress=False)
        pred = predict_indices(make_apply(name, result.model_config), result.params, test.users, test.items,
                               clip=train.rating_scale)
        rmse[name] = float(np.sqrt(np.mean((np.asarray(pred) - test.ratings) ** 2)))
    assert rmse["bpmf"] < rmse["bias"] - 0.01, rmse

