"""scripts/explore_embeddings.py and scripts/custom_loss.py run quickly on synthetic data
(and on the genuine ml-latest-small when it is there) and show what they claim."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_script", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def explore_script():
    return load("explore_embeddings")


@pytest.fixture(scope="module")
def custom_loss():
    return load("custom_loss")


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


@pytest.mark.slow  # 4 s: the example script end to end
def test_explore_embeddings_on_synthetic_data(explore_script, tmp_path, capsys):
    assert explore_script.main(["--quick", "--synthetic", "-n", "3", "--json"]
                               + (["--png", str(tmp_path)] if importlib.util.find_spec("matplotlib") else [])) == 0
    text = capsys.readouterr().out
    figures = last_json(text)
    assert text.startswith("data: synthetic, 9,000 ratings, 300 users, 120 movies (planted model")
    # Two epochs already learn biases that follow the planted ones and the raw means.
    assert figures["bias_vs_planted"] > 0.7 and figures["bias_vs_raw_mean"] > 0.7
    ev = figures["explained_variance_ratio"]
    assert ev[0] >= ev[1] >= ev[2] > 0 and sum(ev) < 1
    for heading in ("highest learned movie bias", "lowest learned movie bias"):
        block = text.split(heading)[1].split("\n\n")[0].splitlines()
        assert len([line for line in block if "Synthetic movie" in line]) == 3
    assert text.count("PC1 +: ") == 1 and text.count("PC3 -: ") == 1
    if importlib.util.find_spec("matplotlib"):
        for name in ("learning_curve.png", "pca_map.png"):
            assert (tmp_path / name).read_bytes().startswith(b"\x89PNG") and (tmp_path / name).stat().st_size > 5000


def test_explore_embeddings_png_without_matplotlib_fails_before_training(explore_script, monkeypatch, capsys,
                                                                         tmp_path):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(SystemExit) as e:
        explore_script.main(["--quick", "--synthetic", "--png", str(tmp_path / "png")])
    assert e.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and 'pip install "recsys-jax[plot]"' in captured.err


def test_explore_embeddings_on_movielens(explore_script, data_dir, capsys):
    assert explore_script.main(["--quick", "--data-dir", str(data_dir), "-n", "3", "--json"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("data: ml-latest-small, 100,836 ratings, 610 users, 9,724 movies\n")
    figures = last_json(text)
    assert figures["dataset"] == "ml-latest-small" and "bias_vs_planted" not in figures
    assert figures["bias_vs_raw_mean"] > 0.5 and figures["test_rmse"] < 1.0
    assert "(1994)" in text or "(1995)" in text  # titles, not ids


def test_asymmetric_loss_is_elementwise_and_weights_over_predictions(custom_loss):
    pred = jnp.array([4.0, 2.0, 3.5, 3.0])
    target = jnp.array([3.0, 3.0, 3.0, 3.0])
    want = [3.0 * 1.0, 1.0, 3.0 * 0.25, 0.0]  # over=3: errors +1, -1, +0.5, 0
    np.testing.assert_allclose(custom_loss.asymmetric_squared(pred, target), want)
    np.testing.assert_allclose(jax.jit(custom_loss.asymmetric_squared)(pred, target), want)
    np.testing.assert_allclose(custom_loss.asymmetric_squared(pred, target, over=1.0), [1.0, 1.0, 0.25, 0.0])
    check_grads(lambda p: custom_loss.asymmetric_squared(p, target).sum(), (jnp.array([4.0, 2.0, 3.5, 2.9]),),
                order=1, modes=["rev"])
    # Its minimiser over ratings {1, 5} with equal weight is the expectile tau = 1/4:
    # over * (p - 1) = (5 - p)  ->  p = 2 for over = 3.
    grid = jnp.linspace(1.0, 5.0, 401)
    total = jax.vmap(lambda p: custom_loss.asymmetric_squared(jnp.full(2, p), jnp.array([1.0, 5.0])).sum())(grid)
    assert float(grid[jnp.argmin(total)]) == pytest.approx(2.0)


def test_custom_loss_predicts_lower_than_mse(custom_loss, capsys):
    assert custom_loss.main(["--quick", "--synthetic", "--json"]) == 0
    text = capsys.readouterr().out
    figures = last_json(text)
    mse, asym = figures["mse"], figures["asymmetric (over 3)"]
    assert asym["mean_error"] < mse["mean_error"] - 0.05  # it learned to predict lower
    assert asym["over_by_1"] < mse["over_by_1"]  # and over-predicts by a star less often
    assert set(figures) == {"mse", "huber (delta 0.5)", "asymmetric (over 3)"}
    assert "asymmetric (over 3)" in text and "over by >= 1" in text
    with pytest.raises(SystemExit):
        custom_loss.main(["--over", "0"])
