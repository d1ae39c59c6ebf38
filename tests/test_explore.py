"""Looking inside a model: the bias table and the PCA against hand-built recommenders with
known parameters (closed-form scores and explained variance), on every model; the history
and item stats round-trip through checkpoints (old ones still load); ``recsys-jax inspect``
and ``plot``, including the message when matplotlib is missing."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from conftest import configured_model
from recsys_jax.use import checkpoint, explore
from recsys_jax.use.checkpoint import CheckpointError
from recsys_jax.cli.main import main
from recsys_jax.data import Ratings, make_synthetic
from recsys_jax.models import MODELS, bias, dot, make_config
from recsys_jax.use.recommender import Recommender

ITEM_IDS = np.array([10, 20, 30, 40, 50, 60], np.int64)
USER_IDS = np.array([1, 2, 3], np.int64)
TITLES = {int(i): f"Film {i} (19{i})" for i in ITEM_IDS}
ITEM_BIAS = np.array([0.5, -1.0, 2.0, 0.0, -0.3, 1.0], np.float32)
# Training ratings per item (index): 10: 4, 5; 20: 1; 30: 5, 5, 4; 40: 3, 3; 50: none; 60: 4, 2.
RATED = {0: [4, 5], 1: [1], 2: [5, 5, 4], 3: [3, 3], 5: [4, 2]}
COUNT = np.array([2, 1, 3, 2, 0, 2])
MEAN = np.array([4.5, 1.0, 14 / 3, 3.0, np.nan, 3.0])
HISTORY = {"epoch": [1, 2, 3], "train_loss": [1.2, 0.9, 0.8], "val_rmse": [1.0, 0.95, 0.97],
           "val_mae": [0.8, 0.75, 0.76], "seconds": [0.5, 0.25, 0.25]}


def training_ratings() -> Ratings:
    items = np.array([i for i, rs in RATED.items() for _ in rs], np.int32)
    ratings = np.array([r for rs in RATED.values() for r in rs], np.float32)
    users = (np.arange(len(items)) % 3).astype(np.int32)
    return Ratings(users, items, ratings, np.zeros(len(items), np.int64), USER_IDS, ITEM_IDS)


def bias_rec(item_factors=None, **kw) -> Recommender:
    """A bias model with the biases above and, by default, factors on one axis."""
    factors = np.zeros((6, 4), np.float32) if item_factors is None else np.asarray(item_factors, np.float32)
    config = make_config("bias", embedding_dim=factors.shape[1])
    params = bias.Params(jnp.float32(3.5), jnp.zeros(3), jnp.asarray(ITEM_BIAS), jnp.zeros((3, factors.shape[1])),
                         jnp.asarray(factors))
    return Recommender("bias", config, params, USER_IDS, ITEM_IDS, (0.5, 5.0), TITLES,
                       trained_items=COUNT > 0, **kw)


# -- item stats and the bias table ---------------------------------------------------------
def test_item_stats_are_counts_and_raw_means():
    stats = explore.item_stats(training_ratings())
    np.testing.assert_array_equal(stats.count, COUNT)
    np.testing.assert_allclose(stats.mean, MEAN, equal_nan=True)
    # Ratings with their own id map (no movie 50) are mapped onto the model's by raw id.
    r = training_ratings()
    own = Ratings.from_raw(USER_IDS[r.users], ITEM_IDS[r.items], r.ratings)
    assert own.item_ids.tolist() == [10, 20, 30, 40, 60]
    remapped = explore.item_stats(own, ITEM_IDS)
    np.testing.assert_array_equal(remapped.count, COUNT)
    np.testing.assert_allclose(remapped.mean, MEAN, equal_nan=True)
    with pytest.raises(ValueError, match="movie id 60 is rated but not in the model's id map"):
        explore.item_stats(own, ITEM_IDS[:4])


def test_bias_table_ranks_by_learned_bias_beside_raw_means():
    table = explore.bias_table(bias_rec(), training_ratings(), n=2, min_ratings=1)
    assert table.columns.tolist() == ["end", "rank", "movieId", "title", "bias", "mean_rating", "count"]
    # Movie 50 (bias -0.3) has no training ratings: never a candidate.
    assert table.movieId.tolist() == [30, 60, 20, 40]
    assert table.end.tolist() == ["highest", "highest", "lowest", "lowest"] and table["rank"].tolist() == [1, 2, 1, 2]
    np.testing.assert_allclose(table.bias, [2.0, 1.0, -1.0, 0.0])
    np.testing.assert_allclose(table.mean_rating, [14 / 3, 3.0, 1.0, 3.0])
    assert table["count"].tolist() == [3, 2, 1, 2]
    assert table.title.tolist() == ["Film 30 (1930)", "Film 60 (1960)", "Film 20 (1920)", "Film 40 (1940)"]
    # min_ratings=2 drops movie 20 (one rating): the lowest become 40 (0.0) and 10 (0.5).
    table2 = explore.bias_table(bias_rec(), explore.item_stats(training_ratings()), n=2, min_ratings=2)
    assert table2.movieId.tolist() == [30, 60, 40, 10]
    # n beyond the candidates: every candidate at each end.
    assert explore.bias_table(bias_rec(), training_ratings(), n=9, min_ratings=3).movieId.tolist() == [30, 30]


def test_bias_table_refuses_models_without_biases_and_bad_arguments():
    rec = bias_rec()
    d = rec._replace(model="dot", config=make_config("dot", embedding_dim=4),
                     params=dot.Params(jnp.zeros((3, 4)), jnp.zeros((6, 4))))
    with pytest.raises(ValueError, match=r"model 'dot' has no item biases .*one of: bias, svdpp, timesvd, fm"):
        explore.bias_table(d, training_ratings())
    with pytest.raises(ValueError, match="n must be a positive integer"):
        explore.bias_table(rec, training_ratings(), n=0)
    with pytest.raises(ValueError, match="no movie has 4 or more training ratings"):
        explore.bias_table(rec, training_ratings(), min_ratings=4)
    with pytest.raises(ValueError, match="needs the training ratings"):
        explore.bias_table(rec, None)


# -- PCA -----------------------------------------------------------------------------------
def test_pca_of_factors_on_one_axis_recovers_the_axis():
    values = np.array([3.0, -2.0, -1.0, 0.5, 7.0, -0.5])  # movie 50 (untrained) is left out
    factors = np.zeros((6, 4))
    factors[:, 2] = values
    result = explore.pca(bias_rec(factors), training_ratings(), min_ratings=1, components=2)
    kept = [0, 1, 2, 3, 5]
    centered = values[kept] - values[kept].mean()  # mean 0 here: the scores are the values
    np.testing.assert_allclose(result.scores.pc1, centered, atol=1e-6)
    np.testing.assert_allclose(result.explained_variance_ratio, [1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(result.components[0], [0, 0, 1, 0], atol=1e-6)
    assert result.scores.movieId.tolist() == [10, 20, 30, 40, 60] and result.field == "item_factors"
    np.testing.assert_array_equal(result.scores["count"], COUNT[kept])
    ends = explore.pca_ends(result, n=2)
    pc1 = ends[ends.component == 1]
    assert pc1.movieId.tolist() == [10, 40, 20, 30]  # + end: 3, 0.5; - end: -2, -1
    np.testing.assert_allclose(pc1.score, [3.0, 0.5, -2.0, -1.0], atol=1e-6)
    # Negated factors give the same scores: the largest absolute score (3) is made positive.
    flipped = explore.pca(bias_rec(-factors), training_ratings(), min_ratings=1, components=1)
    np.testing.assert_allclose(flipped.scores.pc1, centered, atol=1e-6)
    np.testing.assert_allclose(flipped.components[0], [0, 0, -1, 0], atol=1e-6)


def test_pca_closed_form_explained_variance_in_a_rotated_space():
    # Five trained movies at (3,0), (-2,0), (-1,0), (0,1), (0,-1), shifted by c and rotated
    # into 5-d by a seeded orthogonal R: sums of squares 14 and 2, so 14/16 and 2/16.
    z = np.zeros((6, 5))
    z[[0, 1, 2, 3, 5], :2] = [[3, 0], [-2, 0], [-1, 0], [0, 1], [0, -1]]
    rot, _ = np.linalg.qr(np.random.default_rng(7).normal(size=(5, 5)))
    c = np.array([0.3, -0.2, 0.1, 0.5, -0.4])
    factors = c + z @ rot.T
    result = explore.pca(bias_rec(factors), training_ratings(), min_ratings=1, components=3)
    np.testing.assert_allclose(result.explained_variance_ratio, [14 / 16, 2 / 16, 0.0], atol=1e-6)
    np.testing.assert_allclose(result.scores.pc1, [3, -2, -1, 0, 0], atol=1e-5)
    np.testing.assert_allclose(result.scores.pc2, [0, 0, 0, 1, -1], atol=1e-5)  # tie: the first is positive
    np.testing.assert_allclose(result.components[0], rot[:, 0], atol=1e-5)
    np.testing.assert_allclose(result.components[1], rot[:, 1], atol=1e-5)
    np.testing.assert_allclose(result.mean, c, atol=1e-6)
    # min_ratings=2 keeps 10, 30, 40, 60: (3,0), (-1,0), (0,1), (0,-1); mean (0.5, 0):
    # sums of squares 6.25 + 2.25 + 0.25 + 0.25 = 9 along PC1 and 2 along PC2.
    kept = explore.pca(bias_rec(factors), training_ratings(), min_ratings=2, components=2)
    assert kept.scores.movieId.tolist() == [10, 30, 40, 60]
    np.testing.assert_allclose(kept.explained_variance_ratio, [9 / 11, 2 / 11], atol=1e-6)


def test_pca_clear_errors():
    rec = bias_rec(np.random.default_rng(0).normal(size=(6, 4)))
    with pytest.raises(ValueError, match="5 components asked, but the item vectors have 4 dimensions"):
        explore.pca(rec, training_ratings(), min_ratings=1, components=5)
    with pytest.raises(ValueError, match="1 movies with 3 or more training ratings; need more than 2"):
        explore.pca(rec, training_ratings(), min_ratings=3, components=2)
    with pytest.raises(ValueError, match="min_ratings=20 needs the training ratings' counts"):
        explore.pca(rec, None)
    with pytest.raises(ValueError, match="nothing varies"):
        explore.pca(bias_rec(np.ones((6, 4))), training_ratings(), min_ratings=1, components=1)
    assert len(explore.pca(rec, None, min_ratings=0).scores) == 5  # trained movies only


def tiny_train(num_items=7):
    rng = np.random.default_rng(0)
    pairs = [(u, i) for u in range(5) for i in range(num_items) if (u + 2 * i) % 3]
    users, items = np.array(pairs).T
    movies = pd.DataFrame({"title": [f"Film {i}" for i in range(num_items)],
                           "genres": ["Drama|Comedy", "Action", "Drama", "Sci-Fi", "Comedy", "Horror", "Drama"]},
                          index=pd.Index(np.arange(num_items), name="movieId"))
    return Ratings.from_raw(users, items, rng.integers(1, 11, len(users)) / 2,
                            rng.integers(8e8, 1.4e9, len(users)), movies=movies)


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_pca_and_bias_table(name):
    train = tiny_train()
    module, config, aux = configured_model(name, train, embedding_dim=3)
    params = module.init(jax.random.key(0), train.num_users, train.num_items, config)
    rng = np.random.default_rng(1)  # move off the init (zero biases) so every table matters
    params = jax.tree.map(lambda x: np.asarray(x, np.float32) + np.float32(0.3) * rng.normal(size=x.shape).astype(
        np.float32), params)
    rec = Recommender(name, config, params, train.user_ids, train.item_ids, (0.5, 5.0), aux=aux)
    if module.item_vectors == ():  # e.g. knn: neighbour lists, no vectors
        with pytest.raises(ValueError, match="no item factors"):
            explore.pca(rec, train, min_ratings=1, components=2)
        return
    result = explore.pca(rec, train, min_ratings=1, components=2)
    q = rec.item_vectors().astype(np.float64)
    # The scores are the centered vectors projected on orthonormal axes, best first.
    np.testing.assert_allclose(result.scores[["pc1", "pc2"]].to_numpy(), (q - q.mean(0)) @ result.components.T,
                               atol=1e-5)
    np.testing.assert_allclose(result.components @ result.components.T, np.eye(2), atol=1e-6)
    ev = result.explained_variance_ratio
    assert ev[0] >= ev[1] >= 0 and ev.sum() <= 1 + 1e-9
    if name in explore.HAS_ITEM_BIAS:
        table = explore.bias_table(rec, train, n=1, min_ratings=1)
        b = np.asarray(params.item_bias)
        assert table.movieId.tolist() == [int(train.item_ids[b.argmax()]), int(train.item_ids[b.argmin()])]
    else:
        with pytest.raises(ValueError, match=f"model '{name}' has no item biases"):
            explore.bias_table(rec, train)


def test_short_title_moves_the_article():
    assert explore.short_title("Matrix, The (1999)", 2571) == "The Matrix (1999)"
    assert explore.short_title(None, 7) == "7"
    assert explore.short_title("A" * 40, 1, width=10) == "A" * 9 + "…"


# -- checkpoints keep the history and the item stats ---------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    rec = bias_rec(np.random.default_rng(3).normal(size=(6, 4)))
    return checkpoint.save(tmp_path_factory.mktemp("explore") / "bias", rec, extra={"dataset": "toy"},
                           history=HISTORY, item_stats=explore.item_stats(training_ratings()))


def test_history_and_item_stats_round_trip(saved):
    assert checkpoint.read_history(saved) == HISTORY
    stats = checkpoint.read_item_stats(saved)
    np.testing.assert_array_equal(stats.count, COUNT)
    np.testing.assert_array_equal(stats.mean, MEAN)  # float64, NaN where unrated
    assert checkpoint.load(saved).num_items == 6  # the extra arrays pass load's checks


def test_old_checkpoints_load_without_history_or_stats(tmp_path):
    path = checkpoint.save(tmp_path / "old", bias_rec())
    meta = json.loads((path / "meta.json").read_text())
    assert "history" not in meta and not any(k.startswith("train/") for k in meta["arrays"])
    assert checkpoint.load(path).model == "bias"
    assert checkpoint.read_history(path) is None and checkpoint.read_item_stats(path) is None


def test_history_is_json_ready(tmp_path):
    history = {"epoch": [np.int64(1), 2], "train_loss": [np.float32(0.5), float("nan")],
               "val_rmse": [None, None], "val_mae": [None, None], "seconds": [0.1, 0.2]}
    path = checkpoint.save(tmp_path / "h", bias_rec(), history=history)
    assert checkpoint.read_history(path) == {"epoch": [1, 2], "train_loss": [0.5, None], "val_rmse": [None, None],
                                             "val_mae": [None, None], "seconds": [0.1, 0.2]}
    with pytest.raises(ValueError, match=r"history\['seconds'\] has 1 entries, history\['epoch'\] has 2"):
        checkpoint.save(tmp_path / "bad", bias_rec(), history={**history, "seconds": [0.1]})


def test_damaged_history_and_stats_are_refused(saved, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in saved.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    meta = json.loads((bad / "meta.json").read_text())
    (bad / "meta.json").write_text(json.dumps({**meta, "history": {"epoch": [1, 2], "train_loss": [0.1]}}))
    with pytest.raises(CheckpointError, match="'history' must map names to per-epoch lists"):
        checkpoint.read_history(bad)
    with np.load(bad / "arrays.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["train/item_count"] = arrays["train/item_count"][:5]
    np.savez(bad / "arrays.npz", **arrays)
    meta["arrays"]["train/item_count"]["shape"] = [5]
    (bad / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"train/item_count and train/item_mean must be int64\[6\]"):
        checkpoint.read_item_stats(bad)
    with pytest.raises(CheckpointError, match=r"train/item_count and train/item_mean must be int64\[6\]"):
        checkpoint.load(bad)
    del arrays["train/item_mean"], meta["arrays"]["train/item_mean"]
    arrays["train/item_count"] = COUNT.astype(np.int64)
    meta["arrays"]["train/item_count"]["shape"] = [6]
    np.savez(bad / "arrays.npz", **arrays)
    (bad / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="has only one of train/item_count, train/item_mean"):
        checkpoint.read_item_stats(bad)
    with pytest.raises(CheckpointError, match="do not match model"):
        checkpoint.load(bad)


# -- plots ---------------------------------------------------------------------------------
PNG = b"\x89PNG\r\n\x1a\n"


def test_plots_write_png_files(saved, tmp_path):
    pytest.importorskip("matplotlib")
    curve = explore.plot_learning_curve(HISTORY, tmp_path / "a" / "curve.png", title="toy", loss_name="mse", dpi=40)
    no_val = explore.plot_learning_curve({**HISTORY, "val_rmse": [None] * 3, "val_mae": [None] * 3},
                                         tmp_path / "b.png", dpi=40)
    result = explore.pca(checkpoint.load(saved), checkpoint.read_item_stats(saved), min_ratings=1, components=2)
    pca_map = explore.plot_pca_map(result, tmp_path / "map.png", labels=3, dpi=40)
    for path in (curve, no_val, pca_map):
        data = path.read_bytes()
        assert data.startswith(PNG) and len(data) > 2000, path
    with pytest.raises(ValueError, match="no per-epoch history"):
        explore.plot_learning_curve(None, tmp_path / "c.png")


def hide_matplotlib(monkeypatch):
    """Makes ``import matplotlib`` (and its submodules) fail as if it were not installed."""
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)


def test_missing_matplotlib_says_how_to_install(monkeypatch, tmp_path):
    hide_matplotlib(monkeypatch)
    with pytest.raises(explore.MissingPlotExtra, match=r'pip install "recsys-jax\[plot\]"'):
        explore.plot_learning_curve(HISTORY, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


# -- the CLI -------------------------------------------------------------------------------
def run(capsys, argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", ["inspect", "plot"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--checkpoint DIR" in out and "--min-ratings" in out
    assert ("--json" in out and "--what" in out) if command == "inspect" else ('recsys-jax[plot]' in out)


def test_inspect_json_matches_the_library(saved, capsys):
    code, out, err = run(capsys, ["inspect", "--checkpoint", saved, "-n", "2", "--min-ratings", "1",
                                  "--components", "2", "--json"])
    assert code == 0, err
    got = json.loads(out.strip().splitlines()[-1])
    rec, stats = checkpoint.load(saved), checkpoint.read_item_stats(saved)
    want = explore.bias_table(rec, stats, 2, min_ratings=1)
    assert [r["movieId"] for r in got["bias"]] == want.movieId.tolist() == [30, 60, 20, 40]
    assert got["bias"][0] == {"end": "highest", "rank": 1, "movieId": 30, "title": "Film 30 (1930)", "bias": 2.0,
                              "mean_rating": pytest.approx(14 / 3), "count": 3}
    result = explore.pca(rec, stats, min_ratings=1, components=2)
    np.testing.assert_allclose(got["pca"]["explained_variance_ratio"], result.explained_variance_ratio)
    ends = explore.pca_ends(result, 2)
    assert [(e["component"], e["end"], e["movieId"]) for e in got["pca"]["ends"]] == list(
        zip(ends.component, ends.end, ends.movieId))
    assert got["pca"]["num_movies"] == 5 and got["pca"]["field"] == "item_factors"
    assert "highest bias:" in out and "+2.000   4.67      3       30  Film 30 (1930)" in out
    assert "PC1 highest scores:" in out and "PC2 lowest scores:" in out


def test_inspect_user_errors(saved, tmp_path, capsys):
    rec = bias_rec()
    d = rec._replace(model="dot", config=make_config("dot", embedding_dim=4),
                     params=dot.Params(jnp.zeros((3, 4)), jnp.asarray(np.random.default_rng(1).normal(size=(6, 4)))))
    dot_path = checkpoint.save(tmp_path / "dot", d, item_stats=explore.item_stats(training_ratings()))
    code, out, err = run(capsys, ["inspect", "--checkpoint", dot_path, "--what", "bias"])
    assert code == 2 and "Traceback" not in err and "model 'dot' has no item biases" in err
    code, out, err = run(capsys, ["inspect", "--checkpoint", dot_path, "--min-ratings", "1", "-n", "1",
                                  "--components", "2", "--json"])
    assert code == 0 and out.startswith("no bias table: model 'dot' has no item biases")
    assert json.loads(out.strip().splitlines()[-1])["bias"] is None
    old = checkpoint.save(tmp_path / "old", bias_rec(np.random.default_rng(2).normal(size=(6, 4))))
    code, out, err = run(capsys, ["inspect", "--checkpoint", old])
    assert code == 2 and "has no training rating counts" in err and "retrain it" in err
    code, out, err = run(capsys, ["inspect", "--checkpoint", old, "--what", "pca", "--min-ratings", "0",
                                  "--components", "1"])
    assert code == 0 and "5 movies with >= 0 training ratings" in out
    code, out, err = run(capsys, ["inspect", "--checkpoint", saved, "-n", "0"])
    assert code == 2 and "-n must be >= 1, got 0" in err
    code, out, err = run(capsys, ["inspect", "--checkpoint", tmp_path / "nothing"])
    assert code == 2 and "not a checkpoint folder" in err


def test_plot_writes_both_pngs_and_prints_their_paths(saved, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    code, out, err = run(capsys, ["plot", "--checkpoint", saved, "--out", tmp_path / "png", "--min-ratings", "1",
                                  "--dpi", "40"])
    assert code == 0, err
    paths = [Path(p) for p in out.split()]
    assert paths == [tmp_path / "png" / "learning_curve.png", tmp_path / "png" / "pca_map.png"]
    assert all(p.read_bytes().startswith(PNG) for p in paths)


def test_plot_without_matplotlib_is_a_usage_error(saved, tmp_path, capsys, monkeypatch):
    hide_matplotlib(monkeypatch)
    code, out, err = run(capsys, ["plot", "--checkpoint", saved, "--out", tmp_path / "png"])
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.strip() == ("recsys-jax plot: error: plotting needs matplotlib, the optional 'plot' extra: "
                           'pip install "recsys-jax[plot]" (from a source checkout: pip install -e ".[plot]")')
    assert not (tmp_path / "png").exists()


@pytest.mark.parametrize("refit", [True, False])
def test_train_keeps_history_and_training_counts(tmp_path, capsys, refit):
    """`recsys-jax train` saves the history it printed (the selection fit's, with validation
    scores) and each movie's count and mean over exactly the rows the saved model was fit
    on: the whole training split after the default refit, less the validation slice with
    --no-refit."""
    from recsys_jax.data import load_ratings, random_split
    from recsys_jax.training.experiment import split_parts

    ratings, _ = make_synthetic(jax.random.key(5), 60, 30, 900, embedding_dim=2)
    lines = ["userId,movieId,rating,timestamp"] + [
        f"{ratings.user_ids[u]},{ratings.item_ids[i]},{r:.1f},{t}"
        for u, i, r, t in zip(ratings.users, ratings.items, ratings.ratings, ratings.timestamps)]
    (tmp_path / "r.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "ck"
    code, text, err = run(capsys, ["train", "--ratings", tmp_path / "r.csv", "--model", "bias", "--epochs", "2",
                                   "--embedding-dim", "2", "--batch-size", "128", "--seed", "4", "--out", out,
                                   "--json"] + ([] if refit else ["--no-refit"]))
    assert code == 0, err
    summary = json.loads(text.strip().splitlines()[-1])
    assert summary["refit"] is refit
    history = checkpoint.read_history(out)
    assert history["epoch"] == [1, 2] and min(history["val_rmse"]) == pytest.approx(summary["val_rmse"])
    loaded = load_ratings(tmp_path / "r.csv")
    split = random_split(loaded, 4, 0.2)
    train, val, _ = split_parts(loaded, split, 4, 0.1)
    assert summary["num_train"] == len(train) and summary["num_val"] == len(val)
    fit_rows = loaded.take(split.train) if refit else train
    stats = checkpoint.read_item_stats(out)
    assert stats.count.sum() == summary["num_fit"] == len(fit_rows)
    np.testing.assert_array_equal(stats.count, np.bincount(fit_rows.items, minlength=loaded.num_items))
    np.testing.assert_array_equal(stats.count > 0, checkpoint.load(out).trained_items)
    i = int(np.argmax(stats.count))
    assert stats.mean[i] == pytest.approx(float(fit_rows.ratings[fit_rows.items == i].mean()))


def test_plot_on_an_old_checkpoint(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    old = checkpoint.save(tmp_path / "old", bias_rec(np.random.default_rng(4).normal(size=(6, 4))))
    code, out, err = run(capsys, ["plot", "--checkpoint", old, "--out", tmp_path / "a"])
    assert code == 2 and "has no training rating counts" in err and "--min-ratings 0" in err
    assert not (tmp_path / "a").exists()  # nothing half-written
    code, out, err = run(capsys, ["plot", "--checkpoint", old, "--out", tmp_path / "b", "--min-ratings", "0",
                                  "--dpi", "40"])
    assert code == 0 and out.split() == [str(tmp_path / "b" / "pca_map.png")]
    assert "no learning curve" in err and "no per-epoch history" in err
