"""The Bayesian factorization machine (recsys_jax.models.bfm): a Gibbs sweep against the same
draws written out coordinate by coordinate in float64 on the expanded design matrix, the
store's per-user and per-movie folding against the model's own formula, and a fit that
learns planted structure."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from recsys_jax.data import Ratings
from recsys_jax.data.ratings import days
from recsys_jax.models import bfm

K = 3


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(5)
    num_users, num_items, n = 7, 6, 30
    codes = rng.choice(num_users * num_items, n, replace=False)
    users, items = (codes // num_items).astype(np.int32), (codes % num_items).astype(np.int32)
    ratings = np.clip(np.round(2 * (3.0 + 0.8 * rng.standard_normal(n))) / 2, 0.5, 5.0).astype(np.float32)
    stamps = (rng.integers(0, 4, n) * 86_400 + 1_000_000_000).astype(np.int64)
    # genres for the genre group (movie 6 lists none); the five-group chain does not read them
    movies = pd.DataFrame({"title": [f"m{i}" for i in range(1, 7)],
                           "genres": ["Drama", "Comedy|Drama", "Action|Comedy|Drama", "(no genres listed)",
                                      "Action", "Comedy"]}, index=pd.Index(np.arange(1, 7), name="movieId"))
    train = Ratings(users, items, ratings, stamps, np.arange(num_users, dtype=np.int64) + 1,
                    np.arange(num_items, dtype=np.int64) + 1, movies=movies)
    config = bfm.Config(embedding_dim=K, mean_rating=float(ratings.mean()), init_scale=0.5, genres="off")
    aux = bfm.prepare(train, config)
    sizes = (num_users, num_items, int(aux.day_vocab.shape[0]), num_items, num_users)
    assert bfm.group_sizes(num_users, num_items, bfm.configure(config, aux)) == sizes
    return train, config, aux, sizes, bfm.make_design(train, aux)


@pytest.fixture(scope="module")
def small_genres(small):
    """The same ratings with the genres as a sixth group (3 genres: Action, Comedy, Drama)."""
    train, config, _, _, _ = small
    config = config._replace(genres="on")
    aux = bfm.prepare(train, config)
    sizes = bfm.group_sizes(train.num_users, train.num_items, bfm.configure(config, aux))
    assert sizes[5:] == (3,)
    return train, config, aux, sizes, bfm.make_design(train, aux)


def design_matrix(train, aux, sizes) -> np.ndarray:
    """X [N, F]: one-hot user, movie, day; the rated set N(u) and the raters N(i), 1/sqrt(size);
    with a sixth group, the movie's genres, 1/sqrt(count), from the movies table by hand."""
    n = len(train)
    x = np.zeros((n, sum(sizes)))
    off = np.cumsum([0, *sizes])
    u, i = np.asarray(train.users), np.asarray(train.items)
    day = np.searchsorted(np.asarray(aux.day_vocab), np.floor(np.asarray(train.timestamps) / 86_400))
    x[np.arange(n), off[0] + u] = 1
    x[np.arange(n), off[1] + i] = 1
    x[np.arange(n), off[2] + day] = 1
    for row in range(n):
        mine = i[u == u[row]]
        x[row, off[3] + mine] = len(mine) ** -0.5
        theirs = u[i == i[row]]
        x[row, off[4] + theirs] = len(theirs) ** -0.5
        if len(sizes) > 5:
            listed = train.movies["genres"][int(train.item_ids[i[row]])]
            names = [] if listed == "(no genres listed)" else listed.split("|")
            for name in names:
                x[row, off[5] + ["Action", "Comedy", "Drama"].index(name)] = len(names) ** -0.5
    return x


def reference_sweep(r, state, x, y, sizes):
    """The sweep written out: every coordinate one after another, residuals recomputed, float64."""
    p = bfm.PRIOR
    off = np.cumsum([0, *sizes])
    w0 = float(state.w0)
    w = np.concatenate([np.asarray(a, np.float64) for a in state.w])
    v = np.concatenate([np.asarray(a, np.float64) for a in state.v])
    mu_w, lam_w = np.asarray(state.mu_w, np.float64).copy(), np.asarray(state.lam_w, np.float64).copy()
    mu_v, lam_v = np.asarray(state.mu_v, np.float64).copy(), np.asarray(state.lam_v, np.float64).copy()
    r = jax.tree.map(lambda a: np.asarray(a, np.float64), r)

    def yhat():
        q = x @ v
        return w0 + x @ w + 0.5 * np.sum(q * q - (x * x) @ (v * v), axis=1)

    def draw(h, theta, lam, mu, z):
        e = y - yhat()
        precision = alpha * np.sum(h * h) + lam
        return (alpha * np.sum(h * (e + theta * h)) + lam * mu) / precision + z / np.sqrt(precision)

    e = y - yhat()
    alpha = r.g_alpha / (p["b0"] + 0.5 * np.sum(e * e))
    for g in range(len(sizes)):
        sl, m = slice(off[g], off[g + 1]), sizes[g]
        sw = np.sum((w[sl] - mu_w[g]) ** 2) + p["gamma0"] * (mu_w[g] - p["mu0"]) ** 2
        lam_w[g] = r.g_lam_w[g] / (p["b0"] + 0.5 * sw)
        mu_w[g] = np.sum(w[sl]) / (m + 1) + r.z_mu_w[g] / np.sqrt((m + 1) * lam_w[g])
        sv = np.sum((v[sl] - mu_v[g]) ** 2, axis=0) + p["gamma0"] * (mu_v[g] - p["mu0"]) ** 2
        lam_v[g] = r.g_lam_v[g] / (p["b0"] + 0.5 * sv)
        mu_v[g] = np.sum(v[sl], axis=0) / (m + 1) + r.z_mu_v[g] / np.sqrt((m + 1) * lam_v[g])
    e = y - yhat()
    precision = alpha * len(y) + p["lambda0"]
    w0 = alpha * np.sum(e + w0) / precision + r.z_w0 / np.sqrt(precision)
    for g in range(len(sizes)):
        for j in range(sizes[g]):
            c = off[g] + j
            w[c] = draw(x[:, c], w[c], lam_w[g], mu_w[g], r.z_w[g][j])
    for f in range(v.shape[1]):
        for g in range(len(sizes)):
            for j in range(sizes[g]):
                c = off[g] + j
                h = x[:, c] * (x @ v[:, f] - v[c, f] * x[:, c])
                v[c, f] = draw(h, v[c, f], lam_v[g, f], mu_v[g, f], r.z_v[g][j, f])
    return w0, w, v, alpha, lam_w, mu_w, lam_v, mu_v, yhat()


_SWEEP = jax.jit(bfm.sweep_with, static_argnames=("sizes", "use_day", "use_implicit", "kernel"))


def _chain(case):
    """Two sweeps from one state with known draws (one compiled program per group layout)."""
    train, config, aux, sizes, d = case
    states, draws, mses = [bfm.initial_state(jax.random.key(1), sizes, config)], [], []
    for t in range(2):
        draws.append(bfm.draws(jax.random.key(10 + t), len(train), sizes, K))
        state, mse = _SWEEP(draws[-1], states[-1], d, sizes, True, True)
        states.append(state)
        mses.append(mse)
    return states, draws, mses


@pytest.fixture(scope="module")
def chain(small):
    return _chain(small)


@pytest.fixture(scope="module")
def genre_chain(small_genres):
    return _chain(small_genres)


@pytest.mark.parametrize("case", ["five groups", "with genres"])
def test_a_sweep_is_the_coordinate_sampler_in_float64(case, request):
    small = request.getfixturevalue("small" if case == "five groups" else "small_genres")
    train, config, aux, sizes, d = small
    states, draws, mses = request.getfixturevalue("chain" if case == "five groups" else "genre_chain")
    x = design_matrix(train, aux, sizes)
    y = np.asarray(train.ratings, np.float64)
    for t in range(2):
        want = reference_sweep(draws[t], states[t], x, y, sizes)
        state = states[t + 1]
        np.testing.assert_allclose(float(state.w0), want[0], rtol=1e-4)
        np.testing.assert_allclose(np.concatenate(state.w), want[1], rtol=2e-3, atol=2e-4)
        np.testing.assert_allclose(np.concatenate(state.v), want[2], rtol=2e-3, atol=2e-4)
        np.testing.assert_allclose(float(state.alpha), want[3], rtol=1e-4)
        np.testing.assert_allclose(state.lam_v, want[6], rtol=1e-4)
        np.testing.assert_allclose(float(mses[t]), np.mean((y - want[8]) ** 2), rtol=1e-3)


def test_the_store_folds_a_sample_into_users_movies_and_days(small, chain):
    """One stored sample predicts the training rows as the sampler does (whose predictions
    the float64 test checks), and the spread of one sample is its noise alone."""
    train, config, aux, sizes, d = small
    state = chain[0][-1]
    params = bfm.init(None, sizes[0], sizes[1], bfm.configure(config, aux))
    params = bfm._store(params, state, jnp.zeros((0,), jnp.float32), d, jnp.asarray(0, jnp.int32), sizes)
    got = bfm.apply(params, train.users, train.items, config=config, aux=aux, times=days(train.timestamps))
    np.testing.assert_allclose(got, bfm.predictions(state, d, sizes), rtol=1e-5, atol=1e-5)
    std = bfm.predict_std(params, train.users, train.items, aux=aux, times=days(train.timestamps))
    np.testing.assert_allclose(std, np.sqrt(1.0 / float(state.alpha)), rtol=1e-5)
    # a day outside the training days has no feature: the day's terms drop out
    unknown = bfm.apply(params, train.users[:1], train.items[:1], config=config, aux=aux,
                        times=jnp.asarray([10.0], jnp.float32))
    slot = int(bfm.day_slots(aux, days(train.timestamps[:1]))[0])
    a, b, c = params.user_vector[train.users[0], 0], params.item_vector[train.items[0], 0], params.day_vector[slot, 0]
    np.testing.assert_allclose(unknown[0], got[0] - params.day_scalar[slot, 0] - jnp.dot(a + b, c), rtol=1e-5)


@pytest.mark.slow
def test_the_fit_learns_planted_structure():
    """Ratings from a planted rank-2 model with user and movie effects: the posterior mean
    predicts held-out rows far better than the training mean."""
    from recsys_jax.data import make_synthetic, random_split
    from recsys_jax.engine.config import TrainConfig

    ratings, _ = make_synthetic(jax.random.key(0), 60, 40, 1100, embedding_dim=2, noise_std=0.2)
    split = random_split(ratings, 0, 0.2)
    train, test = ratings.take(split.train), ratings.take(split.test)
    config = bfm.Config(embedding_dim=2, burn_in=5, num_samples=8, mean_rating=float(np.mean(train.ratings)))
    gen = bfm.fit_epochs(jax.random.key(0), train, config, TrainConfig(epochs=25))
    for _ in range(25):
        params, _ = next(gen)
    aux = bfm.prepare(train, config)
    pred = np.asarray(bfm.apply(params, test.users, test.items, config=config, aux=aux, times=days(test.timestamps)))
    baseline = np.sqrt(np.mean((test.ratings - train.ratings.mean()) ** 2))
    assert np.sqrt(np.mean((pred - test.ratings) ** 2)) < 0.8 * baseline
    # 20 sweeps after burn-in, thinned by ceil(20 / 8) = 3, counted back from the last: 7, 10, ..., 25
    assert float(params.sample_mask.sum()) == 7


@pytest.mark.slow
@pytest.mark.parametrize("case", ["five groups", "with genres"])
def test_the_kernel_takes_the_jax_loops_draws(case, request):
    """bfm_gibbs.cc against the JAX loop: two sweeps from the same state and draws agree to
    float rounding (skipped where the kernels cannot be built, failed under
    RECSYS_JAX_REQUIRE_KERNELS=1, as in tests/test_kernels.py)."""
    from recsys_jax.engine import kernels

    if kernels.load() is None:
        if os.environ.get("RECSYS_JAX_REQUIRE_KERNELS", "").strip() not in ("", "0"):
            pytest.fail(f"CPU kernels required (RECSYS_JAX_REQUIRE_KERNELS) but unavailable: {kernels.why_not()}")
        pytest.skip(f"CPU kernels unavailable: {kernels.why_not()}")
    train, config, aux, sizes, d = request.getfixturevalue("small" if case == "five groups" else "small_genres")
    states, draws, mses = request.getfixturevalue("chain" if case == "five groups" else "genre_chain")  # JAX's
    b = states[0]
    for t in range(2):
        b, mse_b = _SWEEP(draws[t], b, d, sizes, True, True, kernel=True)
    for x, y in zip(jax.tree.leaves(states[-1]), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
    assert float(mses[-1]) == pytest.approx(float(mse_b), rel=1e-4)


@pytest.mark.slow
def test_the_cli_trains_bfm_and_predict_shows_the_posterior_spread(tmp_path):
    """With the genres, which the data's movies.csv has: they come back with the checkpoint."""
    import json

    from conftest import run_cli
    from test_evaluate import movielens_folder

    root = movielens_folder(tmp_path / "ml")
    ck = tmp_path / "ck"
    code, out, err = run_cli(["train", "--data-dir", root, "--no-download", "--model", "bfm", "--epochs", "6",
                              "--embedding-dim", "2", "--out", ck, "--json"])
    assert code == 0, err
    record = json.loads(out.strip().splitlines()[-1])
    assert record["num_val"] == 0 and record["best_epoch"] == 6 and 0 < record["test_rmse"] < 2
    from recsys_jax.use import checkpoint

    rec = checkpoint.load(ck)  # the data has genres: the default adds them; they come back with the checkpoint
    assert rec.config.genres == "auto" and rec.config.num_genres == 5 and rec.aux.genres_ids.shape[0] > 0
    code, out, err = run_cli(["predict", "--checkpoint", ck, "--user", "1", "--movie", "10", "20", "--json"])
    assert code == 0, err
    rows = json.loads(out.strip().splitlines()[-1])
    assert all(row["std"] > 0 for row in rows) and "posterior predictive sd" in out


def test_the_kernel_refuses_an_index_out_of_range(small):
    from recsys_jax.engine import kernels

    if kernels.load() is None:
        pytest.skip(f"CPU kernels unavailable: {kernels.why_not()}")
    train, config, aux, sizes, d = small
    n = len(train)
    bad = d.user.at[0].set(sizes[0])  # a rating whose block row is past the users
    with pytest.raises(Exception, match="out of range"):
        jax.block_until_ready(bfm._block_update(d, "rated", bad, sizes[0], jnp.zeros(n), jnp.zeros(n),
                                                jnp.zeros(sizes[3]), jnp.zeros(sizes[3]), 1.0, 0.0, 1.0,
                                                factor=True, kernel=True))


def test_the_genre_group_is_there_where_asked_and_the_data_has_it(small):
    """``auto`` adds the genres where the movies table lists any, ``on`` requires them, ``off``
    leaves them out; the group's size comes from the table (3 genres here)."""
    import dataclasses

    train = small[0]
    bare = dataclasses.replace(train, movies=None)
    for data, mode, groups in ((train, "auto", 6), (train, "on", 6), (train, "off", 5), (bare, "auto", 5)):
        config = bfm.configure(bfm.Config(genres=mode), bfm.prepare(data, bfm.Config(genres=mode)))
        assert len(bfm.group_sizes(data.num_users, data.num_items, config)) == groups, (mode, groups)
    with pytest.raises(ValueError, match="no movies table with genres"):
        bfm.prepare(bare, bfm.Config(genres="on"))
    with pytest.raises(ValueError, match="genres must be one of auto, on, off"):
        bfm.prepare(train, bfm.Config(genres="yes"))


def test_the_kept_sweeps_end_at_the_last_one():
    """The ring keeps the last samples: 256 sweeps, burn-in 16, 64 slots keep 60 sweeps,
    20, 24, ..., 256; one slot keeps the last sweep alone; an explicit thin counts back too."""
    first, thin = bfm.kept_sweeps(bfm.Config(), 256)
    kept = list(range(first, 257, thin))
    assert (first, thin, len(kept), kept[-1]) == (20, 4, 60, 256)
    assert bfm.kept_sweeps(bfm.Config(num_samples=1, burn_in=5), 20) == (20, 15)
    assert bfm.kept_sweeps(bfm.Config(thin=3, burn_in=5), 20) == (8, 3)  # 8, 11, 14, 17, 20
    assert bfm.kept_sweeps(bfm.Config(burn_in=5), None) == (6, 1)  # sweeps unknown: every one after burn-in
