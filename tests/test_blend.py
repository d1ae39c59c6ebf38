"""Linear blends: closed-form weights, the fit-on-a-slice-then-refit procedure, the CLI."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from conftest import run_cli

from recsys_jax.eval import metrics
from recsys_jax.training.blend import BlendMember, combine, fit_blend, fit_weights
from recsys_jax.data import make_synthetic, random_split
from recsys_jax.training.experiment import carve_validation, predict_result, refit_on
from recsys_jax.models import make_config
from recsys_jax.engine.config import TrainConfig
from recsys_jax.training.fit import fit

TC = TrainConfig(epochs=3, batch_size=128, lr=3e-2, l2=0.05)


def test_weights_are_least_squares_with_a_free_intercept():
    rng = np.random.default_rng(0)
    preds = rng.normal(3.5, 1.0, (3, 200))
    targets = 0.7 + preds.T @ np.array([0.5, 0.2, 0.1]) + rng.normal(0, 0.1, 200)
    w0, w = fit_weights(preds, targets, l2=0.0)
    design = np.column_stack([np.ones(200), preds.T])
    expected = np.linalg.lstsq(design, targets, rcond=None)[0]
    np.testing.assert_allclose([w0, *w], expected, rtol=1e-8, atol=1e-10)


def test_ridge_shrinks_the_weights_not_the_intercept():
    rng = np.random.default_rng(1)
    preds = rng.normal(3.5, 1.0, (2, 100))
    targets = rng.normal(3.0, 1.0, 100)
    # a huge penalty: w -> 0 and the intercept -> the mean of the targets
    w0, w = fit_weights(preds, targets, l2=1e9)
    assert np.abs(w).max() < 1e-8 and w0 == pytest.approx(targets.mean())
    # the normal equations of the penalised problem hold: Pc (t - w0 - P^T w) = l2 N w
    w0, w = fit_weights(preds, targets, l2=0.1)
    resid = targets - w0 - preds.T @ w
    pc = preds - preds.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(pc @ resid, 0.1 * 100 * w, atol=1e-9)
    assert resid.mean() == pytest.approx(0.0, abs=1e-12)


def test_combine_clips_to_the_scale():
    preds = np.array([[1.0, 5.0, 3.0], [2.0, 4.0, 3.0]])
    out = combine(preds, 0.5, np.array([1.0, 1.0]), (0.5, 5.0))
    np.testing.assert_allclose(out, [3.5, 5.0, 5.0])


@pytest.mark.parametrize("bad", [(np.ones((2, 3)), np.ones(4)), (np.ones(3), np.ones(3)), (np.ones((1, 1)), np.ones(1))])
def test_bad_shapes_are_named(bad):
    with pytest.raises(ValueError, match="fit_weights"):
        fit_weights(*bad)


@pytest.fixture(scope="module")
def data():
    ratings, _ = make_synthetic(jax.random.key(4), 150, 80, 4_000, embedding_dim=3, noise_std=0.4)
    split = random_split(ratings, 1, 0.2)
    return ratings.take(split.train), ratings.take(split.test)


@pytest.fixture(scope="module")
def blend(data):
    train_all, _ = data
    members = [BlendMember("bias", TC, make_config("bias", embedding_dim=4)),
               BlendMember("bias", TC._replace(l2=0.3), make_config("bias", embedding_dim=2), seed=9)]
    return fit_blend(train_all, members, seed=1)


def test_fit_blend_follows_its_four_steps(data, blend):
    """Weights from the selection fits' predictions of the slice; the models are then the
    refits on the whole training split (the same as refit_on gives)."""
    train_all, test = data
    train, val = carve_validation(train_all, 1, 0.1)
    sel = fit("bias", train, val, key=jax.random.key(9), model_config=make_config("bias", embedding_dim=2),
              train_config=TC._replace(l2=0.3), progress=False)
    assert blend.member_val_rmse[1] == pytest.approx(metrics.rmse(predict_result(sel, val, (0.5, 5.0)), val.ratings))
    refit = refit_on(train_all, sel, seed=9)
    for a, b in zip(jax.tree.leaves(refit.params), jax.tree.leaves(blend.members[1].params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert blend.labels == ["bias", "bias@9"]
    # the blend's slice RMSE is at most the best member's: least squares can pick that member alone
    assert blend.val_rmse <= min(blend.member_val_rmse) + 1e-6
    preds = blend.member_predictions(test)
    np.testing.assert_allclose(blend.predict(test), combine(preds, blend.intercept, blend.weights, (0.5, 5.0)))


def test_mean_blend_averages(data):
    train_all, test = data
    members = [BlendMember("bias", TC, make_config("bias", embedding_dim=2), seed=s) for s in (0, 1)]
    b = fit_blend(train_all, members, seed=1, mean=True, refit=False)
    np.testing.assert_allclose(b.weights, [0.5, 0.5])
    preds = b.member_predictions(test)
    np.testing.assert_allclose(b.predict(test), np.clip(preds.mean(axis=0), 0.5, 5.0), rtol=1e-6)


def test_fit_blend_rejects_bad_arguments(data):
    with pytest.raises(ValueError, match="no members"):
        fit_blend(data[0], [], seed=0)
    with pytest.raises(ValueError, match="val_frac"):
        fit_blend(data[0], [BlendMember("bias")], seed=0, val_frac=0.0)


@pytest.mark.slow  # 12 s: three CLI runs
def test_cli_blend(tmp_path):
    ratings, _ = make_synthetic(jax.random.key(6), 60, 30, 900, embedding_dim=2)
    lines = ["userId,movieId,rating,timestamp"] + [
        f"{ratings.user_ids[u]},{ratings.item_ids[i]},{r:.1f},{t}"
        for u, i, r, t in zip(ratings.users, ratings.items, ratings.ratings, ratings.timestamps)]
    (tmp_path / "r.csv").write_text("\n".join(lines) + "\n")
    code, out, err = run_cli(["blend", "--ratings", tmp_path / "r.csv", "--models", "bias", "bias@3", "--seed", "2",
                              "--json"])
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert [m["model"] for m in summary["members"]] == ["bias", "bias@3"]
    assert summary["num_test"] == 180 and summary["refit"] is True
    code, out, err = run_cli(["blend", "--ratings", tmp_path / "r.csv", "--models", "bias@x"])
    assert code == 2 and "seed after @" in err
    code, out, err = run_cli(["blend", "--ratings", tmp_path / "r.csv", "--models", "nosuch"])
    assert code == 2 and "unknown model" in err
