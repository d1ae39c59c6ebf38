"""benchmarks/peers.py: the Keras models are the notebook's, the regimens match the preset,
the table and verdicts say what the numbers say. Keras, Surprise and LIBMF are optional
(the ``peers`` extra): tests that need them skip without them."""
from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from benchmarks import peers
from recsys_jax.data import Ratings
from recsys_jax.models import get_model, make_config
from recsys_jax.training.presets import get_preset, model_options


@pytest.fixture(scope="module")
def keras():
    os.environ.setdefault("KERAS_BACKEND", "jax")  # before Keras is first imported
    pytest.importorskip("keras")
    return peers._keras()


def tiny_ratings(num_users=12, num_items=15, n=300, seed=0) -> Ratings:
    rng = np.random.default_rng(seed)
    return Ratings.from_raw(rng.integers(0, num_users, n), rng.integers(0, num_items, n),
                            rng.integers(1, 11, n) / 2, name="tiny")


def test_keras_regimens_are_the_notebook_presets():
    for model, (initial_lr, phases) in peers.KERAS_REGIMENS.items():
        tc = get_preset("notebook", model)
        assert tuple((e, lr) for e, lr, _ in phases) == tc.phases
        assert {b for _, _, b in phases} == {tc.batch_size}
        assert initial_lr == phases[0][1]  # NOTEBOOK.md: bias created at 1e-2, dot and NN at 1e-3
        assert tc.l2 == peers.L2 and tc.penalty == "table"


@pytest.mark.parametrize("model", peers.NOTEBOOK_MODELS)
def test_keras_parameter_counts(keras, model):
    U, I, K, H = 7, 11, peers.EMBEDDING_DIM, peers.HIDDEN
    expected = {"dot": (U + I) * K, "bias": (U + I) * (K + 1), "mlp": (U + I) * K + 2 * K * H + H + H + 1}[model]
    net = peers.build_keras_model(model, U, I)
    assert net.count_params() == expected
    # The same count as recsys_jax's notebook model (whose unused global bias is one scalar).
    params = get_model(model).init(jax.random.key(0), U, I, make_config(model, **model_options("notebook", model)))
    ours = sum(int(np.size(p)) for name, p in params._asdict().items() if name != "global_bias")
    assert ours == expected
    regularised = sorted(w.path.split("/")[0] for w in net.weights
                         if getattr(net.get_layer(w.path.split("/")[0]), "embeddings_regularizer", None))
    assert regularised == ["item_factors", "user_factors"]  # biases and dense layers unregularised


def test_keras_rate_changes_between_fits(keras):
    r = tiny_ratings()
    regimen = (1e-3, ((1, 1e-3, 64), (1, 1e-2, 64), (1, 3e-4, 64)))
    out = peers.keras_fit("bias", r.take(np.arange(240)), r.take(np.arange(240, 300)), seed=0, regimen=regimen)
    assert out["phase_rates"] == pytest.approx([1e-3, 1e-2, 3e-4], rel=1e-6)
    assert out["epochs"] == 3 and len(out["epoch_seconds"]) == 3 and np.isfinite(out["test_rmse"])


def test_surprise_fits_the_same_rows():
    pytest.importorskip("surprise")
    r = tiny_ratings(n=400)
    out = peers.surprise_fit("KNNBaseline", r.take(np.arange(320)), r.take(np.arange(320, 400)), seed=0)
    assert out["sim_options"] == {"name": "msd", "user_based": True}  # Surprise's true defaults
    assert 0 < out["test_rmse"] < 4.5


def test_libmf_throughput_counts_ratings_per_second():
    try:
        peers._libmf()
    except ImportError:
        with pytest.raises(ImportError, match="LIBMF is unavailable"):
            peers.libmf_throughput(tiny_ratings())
        return
    out = peers.libmf_throughput(tiny_ratings(n=2000), k=8, threads=1, epochs=2, repeats=3)
    assert out["num_ratings"] == 2000 and len(out["seconds_all"]) == 3
    assert out["ratings_per_second"] == pytest.approx(2000 * 2 / np.median(out["seconds_all"]))


def test_markdown_and_verdicts():
    recs = []
    for seed, (k_dot, j_dot, k_nn, j_nn) in enumerate([(1.18, 1.16, 0.86, 0.88), (1.20, 1.19, 0.87, 0.89)]):
        recs += [{"implementation": "keras", "model": "dot", "seed": seed, "test_rmse": k_dot, "fit_seconds": 9.0,
                  "seconds_per_epoch": 0.9},
                 {"implementation": "recsys_jax", "model": "dot", "seed": seed, "test_rmse": j_dot,
                  "fit_seconds": 5.0, "seconds_per_epoch": 0.5},
                 {"implementation": "keras", "model": "mlp", "seed": seed, "test_rmse": k_nn, "fit_seconds": 8.0,
                  "seconds_per_epoch": 0.5},
                 {"implementation": "recsys_jax", "model": "mlp", "seed": seed, "test_rmse": j_nn,
                  "fit_seconds": 4.0, "seconds_per_epoch": 0.3},
                 {"implementation": "surprise", "model": "SVD", "seed": seed, "test_rmse": 0.87, "fit_seconds": 3.0}]
    lines = peers.verdicts(recs)
    assert lines[0].startswith("- dot: recsys_jax 1.1750 vs Keras 1.1900, mean difference -0.0150")
    assert lines[0].endswith("within 0.03 of Keras.")
    assert "mean difference +0.0200" in lines[1] and "NOT within 0.01" in lines[1]
    text = peers.markdown(recs, {"keras": "3.x", "surprise": "1.1.5"})
    assert "| dot | recsys_jax `notebook` | 1.1750 ± 0.0212 | -0.0200, -0.0100 | 5.0 | 0.500 |  |" in text
    assert "| dot | Keras 3.x (JAX) | 1.1900 ± 0.0141 |  | 9.0 | 0.900 | 1.180 / 1.178 |" in text
    assert "| SVD | Surprise 1.1.5 | 0.8700 ± 0.0000 |  | 3.0 |  |  |" in text


def test_myfm_design_lays_out_the_groups_and_their_priors():
    """myFM's input from the relational features: one column per user, movie and training
    day, one RelationBlock per implicit set, one group size each (summing to myFM's columns);
    a test row reads its user's training set."""
    pytest.importorskip("myfm")
    from recsys_jax.data import random_split
    from recsys_jax.data.relational import build_features

    r = tiny_ratings()
    split = random_split(r, 0, 0.2)
    train, test = r.take(split.train), r.take(split.test)
    groups = peers.MYFM_FEATURES["ids, implicit user and item sets, day"]
    x, blocks, sizes = peers.myfm_design(build_features(train, test), groups)
    f = build_features(train, test)
    assert sizes == [r.num_users, r.num_items, f.num_days, r.num_items, r.num_users] and len(blocks) == 2
    assert x.shape == (len(test), r.num_users + r.num_items + f.num_days)
    dense = x.toarray()
    np.testing.assert_array_equal(dense[np.arange(len(test)), test.users], 1.0)
    np.testing.assert_array_equal(dense[:, :r.num_users].sum(axis=1), 1.0)
    assert dense[:, r.num_users + r.num_items:].sum() == np.sum(f.day >= 0)  # days unseen in training: none
