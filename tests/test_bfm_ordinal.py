"""bfm's ordinal probit (``Config.ordinal``, ``--loss ordinal``): the interval probabilities and
the truncated normal against float64 closed forms, the cut-points' Metropolis moves against
the maximum-likelihood cut-points, and the prediction from a stored sample worked out by hand."""
from __future__ import annotations

import dataclasses
import functools
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recsys_jax.data import Ratings
from recsys_jax.data.ratings import days
from recsys_jax.engine.config import TrainConfig
from recsys_jax.models import bfm


def phi_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def phi_pdf(x: float) -> float:
    return 0.0 if math.isinf(x) else math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def upper_tail(x: float) -> float:  # 1 - Phi(x), without cancellation
    return 0.5 * math.erfc(x / math.sqrt(2.0))


INTERVALS = [(-math.inf, 0.0), (1.0, 2.0), (-0.3, 0.4), (8.0, 9.0), (-9.0, -8.0), (-1.0, math.inf), (5.0, math.inf)]


def test_log_interval_is_the_float64_log_probability_out_in_the_tails():
    a, b = (jnp.asarray([x[i] for x in INTERVALS], jnp.float32) for i in (0, 1))
    got = np.asarray(bfm.log_interval(a, b))
    for (lo, hi), g in zip(INTERVALS, got):
        # on the positive side, as differences of upper tails (no cancellation in float64 either)
        want = upper_tail(lo) - upper_tail(hi) if lo > 0 else phi_cdf(hi) - phi_cdf(lo)
        assert g == pytest.approx(math.log(want), rel=2e-5, abs=2e-6), (lo, hi)


def test_the_truncated_normal_has_its_closed_form_quantiles_and_mean():
    m = 20_000
    u = (np.arange(m) + 0.5) / m  # a quadrature grid over U(0, 1): the sample mean is the integral
    for lo, hi in [(0.5, 2.0), (3.0, math.inf), (-math.inf, -4.0), (-1.0, 1.0)]:
        z = np.asarray(bfm.truncated_normal(jnp.asarray(u, jnp.float32), jnp.float32(lo), jnp.float32(hi)),
                       np.float64)
        assert np.all((z >= lo) & (z <= hi))
        mass = (upper_tail(lo) - upper_tail(hi)) if lo > 0 else (phi_cdf(hi) - phi_cdf(lo))
        mean = (phi_pdf(lo) - phi_pdf(hi)) / mass
        assert z.mean() == pytest.approx(mean, abs=2e-3), (lo, hi)
        assert np.all(np.diff(z) >= 0)  # monotone in u: the inverse CDF
    # never infinite: u = 0 on an open lower end, the largest u below 1 on an open upper end,
    # and an interval so far out that Phi(hi) underflows to 0 (the draw is then its end)
    edge = np.asarray(bfm.truncated_normal(jnp.asarray([0.0, np.nextafter(np.float32(1), np.float32(0)), 0.0]),
                                           jnp.asarray([-np.inf, 0.2, -np.inf], jnp.float32),
                                           jnp.asarray([0.3, np.inf, -14.0], jnp.float32)))
    assert np.all(np.isfinite(edge)) and edge[0] <= 0.3 and edge[1] >= 0.2 and edge[2] == -14.0
    # u = 1/2 is the median: Phi(median) halfway between Phi(lo) and Phi(hi)
    med = float(bfm.truncated_normal(jnp.float32(0.5), jnp.float32(0.5), jnp.float32(2.0)))
    assert phi_cdf(med) == pytest.approx(0.5 * (phi_cdf(0.5) + phi_cdf(2.0)), rel=1e-5)


def test_the_cut_point_moves_settle_on_the_maximum_likelihood_cut_points():
    """With every score 0 the likelihood is maximised at gamma_c = Phi^-1(F_c) (F the share
    at or below level c) and the posterior sd is about 0.01 at N = 20,000: the chain's mean
    sits there, and every sample is ordered."""
    rng = np.random.default_rng(0)
    n, truth = 20_000, np.array([-0.8, 0.1, 1.2])
    classes = np.searchsorted(truth, rng.standard_normal(n)).astype(np.int32)
    counts = np.bincount(classes, minlength=4)
    train = types.SimpleNamespace(ratings=(classes + 1).astype(np.float32))  # all ordinal_data reads
    aux = bfm.Aux(*([jnp.zeros(1, jnp.int32)] * len(bfm.Aux._fields)))._replace(
        levels=jnp.asarray([1.0, 2.0, 3.0, 4.0], jnp.float32))
    od, bounds = bfm.ordinal_data(train, aux)
    mle = np.array([math.sqrt(2.0) * _erfinv(2.0 * f - 1.0) for f in np.cumsum(counts)[:-1] / n])

    @functools.partial(jax.jit, static_argnames=("steps",))
    def chain(key, cuts, steps):
        def step(cuts, k):
            kz, ku = jax.random.split(k)
            cuts = bfm.move_cutpoints(jax.random.normal(kz, (4,)), jax.random.uniform(ku, (4,)), cuts,
                                      jnp.zeros(n, jnp.float32), od, bounds)
            return cuts, cuts
        return jax.lax.scan(step, cuts, jax.random.split(key, steps))[1]

    samples = np.asarray(chain(jax.random.key(1), jnp.asarray(mle + [0.3, -0.2, 0.25], jnp.float32), 600))
    assert np.all(np.diff(samples, axis=1) > 0)
    kept = samples[200:]
    np.testing.assert_allclose(kept.mean(0), mle, atol=0.01)
    assert 0.002 < kept.std(0).min() and kept.std(0).max() < 0.03  # it moves, at the posterior's scale
    assert len(np.unique(kept[:, 0])) > 100  # proposals are accepted


def _erfinv(y: float) -> float:
    """float64 inverse erf by bisection (the test's own, independent of the library)."""
    lo, hi = -6.0, 6.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if math.erf(mid) < y else (lo, mid)
    return 0.5 * (lo + hi)


def test_an_ordinal_store_predicts_the_expected_level_and_its_spread_by_hand():
    """Two samples, one user, one movie, no day: scores 0.3 and -0.5 (w_0 + s_u + s_i + a.b),
    cut-points per sample; level probabilities Phi differences averaged over the samples."""
    levels = jnp.asarray([1.0, 2.0, 3.0], jnp.float32)
    cuts = np.array([[-0.5, 0.7], [-1.0, 0.2]], np.float32)
    config = bfm.Config(embedding_dim=1, num_samples=2, num_levels=3, ordinal=True)
    p = bfm.init(None, 1, 1, config)
    p = p._replace(sample_mask=jnp.ones(2), global_bias=jnp.asarray([0.1, -0.2]), user_scalar=jnp.asarray([[0.2, 0.0]]),
                   item_scalar=jnp.asarray([[-0.2, -0.5]]), user_vector=jnp.asarray([[[0.5], [1.0]]]),
                   item_vector=jnp.asarray([[[0.4], [0.2]]]), cutpoints=jnp.asarray(cuts))
    aux = bfm.Aux(*([jnp.zeros(1, jnp.int32)] * len(bfm.Aux._fields)))._replace(levels=levels)
    scores = [0.1 + 0.2 - 0.2 + 0.5 * 0.4, -0.2 + 0.0 - 0.5 + 1.0 * 0.2]  # 0.3, -0.5
    probs = np.zeros(3)
    for s, c in zip(scores, cuts):
        cdf = [phi_cdf(float(x) - s) for x in c]
        probs += np.array([cdf[0], cdf[1] - cdf[0], 1.0 - cdf[1]]) / 2
    users = items = jnp.zeros(1, jnp.int32)
    np.testing.assert_allclose(bfm.level_probs(p, users, items, aux=aux)[0], probs, rtol=1e-5)
    mean = float(probs @ [1.0, 2.0, 3.0])
    assert float(bfm.apply(p, users, items, aux=aux)[0]) == pytest.approx(mean, rel=1e-5)
    sd = math.sqrt(float(probs @ [1.0, 4.0, 9.0]) - mean ** 2)
    assert float(bfm.predict_std(p, users, items, aux=aux)[0]) == pytest.approx(sd, rel=1e-4)


def small_ratings(seed=3, num_users=8, num_items=7, n=40):
    rng = np.random.default_rng(seed)
    codes = rng.choice(num_users * num_items, n, replace=False)
    users, items = (codes // num_items).astype(np.int32), (codes % num_items).astype(np.int32)
    ratings = rng.choice(np.array([1.0, 2.0, 3.0, 4.0, 5.0], np.float32), n)
    stamps = (rng.integers(0, 3, n) * 86_400 + 1_000_000_000).astype(np.int64)
    return Ratings(users, items, ratings, stamps, np.arange(num_users, dtype=np.int64) + 1,
                   np.arange(num_items, dtype=np.int64) + 1)


def test_the_likelihood_and_the_loss_must_agree():
    train = small_ratings()
    with pytest.raises(ValueError, match="ordinal probit"):
        next(bfm.fit_epochs(jax.random.key(0), train, bfm.Config(), TrainConfig(epochs=2, loss="ordinal")))
    with pytest.raises(ValueError, match="ordinal probit"):
        next(bfm.fit_epochs(jax.random.key(0), train, bfm.Config(), TrainConfig(epochs=2, loss="huber")))
    one = dataclasses.replace(train, ratings=np.full(len(train), 3.0, np.float32))
    with pytest.raises(ValueError, match="distinct training ratings"):
        bfm.prepare(one, bfm.Config(ordinal=True))
    from recsys_jax.training.presets import resolve

    assert resolve("default", "bfm", loss="ordinal").model_config.ordinal
    assert not resolve("default", "bfm").model_config.ordinal


def test_an_ordinal_chain_keeps_w0_at_0_ordered_cut_points_and_predictions_inside_the_levels():
    train = small_ratings()
    config = bfm.Config(embedding_dim=2, burn_in=2, num_samples=4, ordinal=True)
    aux = bfm.prepare(train, config)
    config = bfm.configure(config, aux)
    from recsys_jax.engine.options import resolve_options

    # the engine's options, as fit passes them: the same compiled sweep as the resume test's
    gen = bfm.fit_epochs(jax.random.key(0), train, config, TrainConfig(epochs=8, loss="ordinal"), aux,
                         resolve_options())
    for _ in range(8):
        params, mse = next(gen)
    assert np.isfinite(mse) and config.num_levels == 5
    filled = np.asarray(params.sample_mask) > 0
    first, thin = bfm.kept_sweeps(config, 8)  # burn-in 2, 4 slots over 6 sweeps: thin 2, sweeps 4, 6, 8
    assert filled.sum() == len(range(first, 9, thin)) == 3
    assert np.all(np.asarray(params.global_bias)[filled] == 0.0)
    assert np.all(np.diff(np.asarray(params.cutpoints)[filled], axis=1) > 0)
    pred = np.asarray(bfm.apply(params, train.users, train.items, aux=aux, times=days(train.timestamps)))
    assert np.all((pred > 1.0) & (pred < 5.0))
    probs = np.asarray(bfm.level_probs(params, train.users, train.items, aux=aux, times=days(train.timestamps)))
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_the_cli_trains_the_ordinal_probit_and_predict_shows_the_level_distribution(tmp_path):
    import json

    from conftest import run_cli
    from test_evaluate import movielens_folder

    root = movielens_folder(tmp_path / "ml")
    ck = tmp_path / "ck"
    code, out, err = run_cli(["train", "--data-dir", root, "--no-download", "--model", "bfm", "--loss", "ordinal",
                              "--epochs", "6", "--embedding-dim", "2", "--out", ck, "--json"])
    assert code == 0, err
    record = json.loads(out.strip().splitlines()[-1])
    assert record["model_config"]["ordinal"] and record["train_config"]["loss"] == "ordinal"
    assert 0 < record["test_rmse"] < 2
    code, out, err = run_cli(["predict", "--checkpoint", ck, "--user", "1", "--movie", "10", "20", "--distribution",
                              "--json"])
    assert code == 0, err
    rows = json.loads(out.strip().splitlines()[-1])
    for row in rows:
        probs = np.array(list(row["distribution"].values()))
        levels = np.array([float(k) for k in row["distribution"]])
        assert probs.sum() == pytest.approx(1.0, abs=1e-3)
        assert row["rating"] == pytest.approx(float(probs @ levels), abs=1e-2) and row["std"] > 0


def test_a_chain_stopped_after_a_save_resumes_to_the_uninterrupted_chain(tmp_path, monkeypatch):
    """fit with a checkpoint folder: stopped after sweep 3 (its progress saved), then rerun with
    the same folder, it sweeps 4-6 only and ends with the straight run's store bit for bit; the
    ordinal chain's cut-points are carried too."""
    from recsys_jax.training import fit as fit_module

    monkeypatch.setattr(fit_module, "SELF_SAVE_SECONDS", 0.0)  # save after every sweep
    train = small_ratings()
    tc = TrainConfig(epochs=6, loss="ordinal")
    config = bfm.Config(embedding_dim=2, burn_in=2, num_samples=4, ordinal=True)

    class Stop(Exception):
        pass

    def stop_at_3(epoch, record):
        if epoch == 3:
            raise Stop

    ck = str(tmp_path / "progress")
    with pytest.raises(Stop):
        fit_module.fit("bfm", train, None, key=0, model_config=config, train_config=tc, progress=False,
                       checkpoint_dir=ck, on_epoch=stop_at_3)
    seen = []
    resumed = fit_module.fit("bfm", train, None, key=0, model_config=config, train_config=tc, progress=False,
                             checkpoint_dir=ck, on_epoch=lambda e, r: seen.append(e))
    assert seen == [4, 5, 6] and resumed.history["epoch"] == [1, 2, 3, 4, 5, 6]
    straight = fit_module.fit("bfm", train, None, key=0, model_config=config, train_config=tc, progress=False)
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(straight.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert resumed.history["train_loss"] == straight.history["train_loss"]
    with pytest.raises(ValueError, match="no checkpoint_dir"):
        fit_module.fit("glocalk", train, None, key=0, train_config=TrainConfig(epochs=1), checkpoint_dir=ck)
