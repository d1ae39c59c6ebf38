"""scripts/notebook.py: the notebook's story end to end on a small MovieLens-shaped folder."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "notebook.py"


@pytest.fixture(scope="module")
def notebook():
    spec = importlib.util.spec_from_file_location("notebook_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def small_movielens(tmp_path) -> Path:
    """``ml-latest-small/`` with ratings.csv (sorted by user, movies in shuffled order, as
    the real file) and movies.csv with titles: 30 users, 50 movies, 20 ratings each."""
    rng = np.random.default_rng(0)
    movie_ids = rng.permutation(np.arange(1, 51) * 7)  # raw ids whose first appearance is not sorted
    rows = []
    for user in range(1, 31):
        for movie in rng.permutation(movie_ids)[:20] if user > 1 else movie_ids[:20]:
            rows.append((user, int(movie), float(rng.integers(1, 11)) / 2, 964982703 + len(rows)))
    folder = tmp_path / "ml-latest-small"
    folder.mkdir()
    pd.DataFrame(rows, columns=["userId", "movieId", "rating", "timestamp"]).to_csv(folder / "ratings.csv",
                                                                                     index=False)
    pd.DataFrame({"movieId": np.sort(movie_ids), "title": [f"Movie {m} (1999)" for m in np.sort(movie_ids)],
                  "genres": "Drama"}).to_csv(folder / "movies.csv", index=False)
    return tmp_path


def test_first_appearance_is_the_notebooks_numbering(notebook):
    raw = np.array([30, 10, 30, 20, 10, 40])
    ids, index = np.unique(raw, return_inverse=True)  # recsys_jax: sorted
    order = notebook.first_appearance(index, len(ids))
    notebook_ids = pd.unique(pd.Series(raw))  # the notebook: ratings.movieId.unique()
    assert ids[order].tolist() == notebook_ids.tolist() == [30, 10, 20, 40]


def test_scaled_regimen_keeps_the_rates(notebook):
    from recsys_jax.training.presets import get_preset

    tc = notebook.scaled(get_preset("notebook", "bias"), 0.2)
    assert tc.phases == ((1, 1e-2), (1, 1e-2), (2, 1e-3)) and tc.epochs == 4
    assert notebook.epoch_rates(tc) == [1e-2, 1e-2, 1e-3, 1e-3]
    assert notebook.scaled(get_preset("notebook", "dot"), 1.0) == get_preset("notebook", "dot")


@pytest.mark.slow
def test_main_tells_the_whole_story(notebook, small_movielens, tmp_path, capsys):
    out = tmp_path / "checkpoints"
    assert notebook.main(["--data-dir", str(small_movielens), "--out", str(out), "--no-download",
                          "--epochs-scale", "0.2", "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert "600 ratings, 30 users, 50 movies" in text
    assert "agree for users and differ for movies" in text
    assert text.count("the loaded model predicts the same on all 120 test pairs") == 3
    assert {p.name for p in out.iterdir()} == {"dot", "bias", "mlp"}
    # The notebook's pairs: user index 3 -> userId 4 (users are sorted in the file), movie
    # index 6 -> the 7th distinct movieId in file order, with its title.
    ratings = pd.read_csv(small_movielens / "ml-latest-small" / "ratings.csv")
    movie = int(ratings.movieId.unique()[6])
    assert f"user index 3 (userId 4), movie index 6 (movieId {movie}, Movie {movie} (1999))" in text
    assert f"user index 4 (userId 5), movie index 6 (movieId {movie}, Movie {movie} (1999))" in text
    assert text.count("  epoch ") == 3 + 4 + 3  # dot 1+1+1 (at least 1 each), bias 1+1+2, NN 2+1
    assert "RMSE against RMSE" in text and "0.89" in text and "1.180" in text and "~0.891" in text
