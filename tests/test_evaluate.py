"""Evaluation: each ranking metric on hand-ranked cases, the split rebuilt from what train
recorded (random, user, temporal), and ``recsys-jax evaluate`` against an independent
computation on a tiny checkpoint."""
from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

from recsys_jax.use import checkpoint
from recsys_jax.use.checkpoint import rebuild_split
from recsys_jax.data import Ratings, load_movielens, make_synthetic, random_split, temporal_split, user_split
from recsys_jax.eval.metrics import broadcast_scores, make_score_fn, matrix_scores, rank_metrics, ranking_report, top_k

L2, L3, L4 = math.log2(2), math.log2(3), math.log2(4)  # DCG discounts of ranks 1, 2, 3


# -- the metrics, by hand ---------------------------------------------------------------------
def test_rank_metrics_by_hand():
    # user 0: hits at ranks 1 and 3 of 3, |T| = 2; user 1: no hit, |T| = 1; user 2: a hit at rank 2, |T| = 3
    hits = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0]], bool)
    got = rank_metrics(hits, [2, 1, 3])
    np.testing.assert_allclose(got["precision"], [2 / 3, 0, 1 / 3])
    np.testing.assert_allclose(got["recall"], [2 / 2, 0, 1 / 3])
    np.testing.assert_allclose(got["hit"], [1, 0, 1])
    # NDCG: DCG / ideal DCG over min(k, |T|) ranks
    np.testing.assert_allclose(got["ndcg"], [(1 / L2 + 1 / L4) / (1 / L2 + 1 / L3), 0,
                                             (1 / L3) / (1 / L2 + 1 / L3 + 1 / L4)])
    # AP: sum of precision@j at the hits / min(k, |T|): (1/1 + 2/3) / 2; 0; (1/2) / 3
    np.testing.assert_allclose(got["ap"], [(1 + 2 / 3) / 2, 0, 0.5 / 3])
    with pytest.raises(ValueError, match="at least one relevant"):
        rank_metrics(hits, [2, 0, 3])


def _pairs(users, items, ratings, num_users=2, num_items=5) -> Ratings:
    n = len(users)
    return Ratings(np.asarray(users, np.int32), np.asarray(items, np.int32), np.asarray(ratings, np.float32),
                   np.zeros(n, np.int64), np.arange(num_users, dtype=np.int64), np.arange(num_items, dtype=np.int64))


S = jnp.array([[0.9, 0.1, 0.8, 0.3, 0.5],
               [0.2, 0.7, 0.6, 0.9, 0.4]])
TRAIN = _pairs([0, 1], [0, 3], [4.0, 4.0])
# user 0: item 2 (5 stars), 1 (2), 4 (4); user 1: item 0 (4.5), 1 (3)
TEST = _pairs([0, 0, 0, 1, 1], [2, 1, 4, 0, 1], [5.0, 2.0, 4.0, 4.5, 3.0])


def test_ranking_report_by_hand():
    # user 0 without its training item 0 ranks 2, 4, 3, 1; user 1 without item 3 ranks 1, 2, 4, 0.
    # Relevant (>= 4): user 0 {2, 4}, user 1 {0}. At k = 2: user 0 hits both, user 1 neither.
    got = ranking_report(matrix_scores, S, TEST, k=2, exclude=TRAIN, threshold=4.0)
    assert got == pytest.approx({"precision": 0.5, "recall": 0.5, "ndcg": 0.5, "map": 0.5, "hit_rate": 0.5,
                                 "coverage": 3 / 5, "num_users": 2, "k": 2})  # top-2s cover {2, 4, 1}
    # every test item relevant: user 0 {1, 2, 4} (hits [1, 1]), user 1 {0, 1} (hits [1, 0])
    got = ranking_report(matrix_scores, S, TEST, k=2, exclude=TRAIN)
    assert got["precision"] == pytest.approx((1 + 0.5) / 2)
    assert got["recall"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert got["ndcg"] == pytest.approx((1 + (1 / L2) / (1 / L2 + 1 / L3)) / 2)
    assert got["map"] == pytest.approx((1 + 0.5) / 2)  # user 0: (1/1 + 2/2) / 2; user 1: (1/1) / 2
    assert got["hit_rate"] == 1.0
    # item 2 removed from the catalogue: user 0 ranks 4, 3 (a hit at rank 1), user 1 ranks 1, 4
    got = ranking_report(matrix_scores, S, TEST, k=2, exclude=TRAIN, threshold=4.0,
                         item_mask=np.array([True, True, False, True, True]))
    assert got == pytest.approx({"precision": 0.25, "recall": 0.25, "ndcg": 0.5 * (1 / L2) / (1 / L2 + 1 / L3),
                                 "map": 0.25, "hit_rate": 0.5, "coverage": 3 / 4, "num_users": 2, "k": 2})


def test_top_k_marks_the_tail_beyond_the_candidates():
    # user 0 has 4 candidates: a top 5 ends with its excluded item at -inf
    scores, items = top_k(matrix_scores, S, [0], 5, num_items=5, exclude=TRAIN)
    assert items[0].tolist() == [2, 4, 3, 1, 0]
    assert np.isfinite(scores[0, :4]).all() and scores[0, 4] == -np.inf
    got = ranking_report(matrix_scores, S, TEST, k=5, exclude=TRAIN, threshold=4.0)
    assert got["precision"] == pytest.approx((2 / 5 + 1 / 5) / 2)  # user 1's item 0 is 4th of its 4


# -- the split, rebuilt -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic():
    ratings, _ = make_synthetic(jax.random.key(5), 80, 50, 1600)
    return ratings


@pytest.mark.parametrize("protocol", ["random", "user", "temporal"])
def test_rebuild_split_from_the_recorded_protocol(synthetic, protocol):
    made = {"random": random_split(synthetic, 7, 0.3), "user": user_split(synthetic, 7, 0.3),
            "temporal": temporal_split(synthetic, 2)}[protocol]
    extra = {"split": protocol, "seed": 7, "num_test": len(made.test), "num_ratings": len(synthetic)}
    again = rebuild_split(extra, synthetic)
    np.testing.assert_array_equal(again.test, made.test)
    np.testing.assert_array_equal(again.train, made.train)
    with pytest.raises(ValueError, match="1599 ratings, the checkpoint was trained on 1600"):
        rebuild_split(extra, synthetic.take(np.arange(1599)))
    with pytest.raises(ValueError, match="pass the same file as --split-file"):
        rebuild_split({**extra, "split": "file"}, synthetic)


# -- recsys-jax evaluate on a tiny checkpoint ------------------------------------------------------
def movielens_folder(root: Path, seed: int = 11) -> Path:
    """``root/ml-latest-small/`` with ratings.csv and movies.csv (titles, genres) from
    make_synthetic: 60 users, 40 movies, 900 ratings."""
    ratings, _ = make_synthetic(jax.random.key(seed), 60, 40, 900, embedding_dim=3)
    folder = root / "ml-latest-small"
    folder.mkdir(parents=True)
    pd.DataFrame({"userId": ratings.user_ids[ratings.users], "movieId": ratings.item_ids[ratings.items] * 10,
                  "rating": ratings.ratings, "timestamp": ratings.timestamps}).to_csv(folder / "ratings.csv",
                                                                                     index=False)
    genres = ["Comedy", "Drama", "Comedy|Romance", "Horror", "Drama|Thriller"]
    movies = ratings.item_ids * 10
    pd.DataFrame({"movieId": movies, "title": [f"Movie {m} (1999)" for m in movies],
                  "genres": [genres[j % len(genres)] for j in range(len(movies))]}).to_csv(folder / "movies.csv",
                                                                                        index=False)
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = movielens_folder(tmp_path_factory.mktemp("ml"))
    ck = root / "ck"
    code, _, err = run_cli(["train", "--data-dir", root, "--no-download", "--model", "bias", "--epochs", "3",
                            "--embedding-dim", "4", "--batch-size", "128", "--seed", "3", "--out", ck])
    assert code == 0, err
    return root, ck


def test_evaluate_agrees_with_an_independent_computation(trained):
    root, ck = trained
    code, out, err = run_cli(["evaluate", "--checkpoint", ck, "--data-dir", root, "--no-download", "-k", "5",
                              "--json"])
    assert code == 0, err
    got = json.loads(out.strip().splitlines()[-1])
    extra = checkpoint.read_meta(ck)["extra"]
    assert got["rmse"] == pytest.approx(extra["test_rmse"], rel=1e-6)  # what train scored on its test split
    assert got["mae"] == pytest.approx(extra["test_mae"], rel=1e-6)
    # the same split drawn here (random 80/20, seed 3), the saved model, the metrics module
    ratings = load_movielens("ml-latest-small", data_dir=root, download=False)
    split = random_split(ratings, 3, 0.2)
    train, test = ratings.take(split.train), ratings.take(split.test)
    assert got["num_test"] == len(test)
    rec = checkpoint.load(ck)
    score_fn = make_score_fn("bias", rec.config, ratings.num_items)
    want = ranking_report(score_fn, rec.params, test, k=5, exclude=train, threshold=4.0)
    assert {m: got[m] for m in want} == pytest.approx(want)
    counts = jnp.asarray(np.bincount(train.items, minlength=ratings.num_items), jnp.float32)
    popularity = ranking_report(broadcast_scores, counts, test, k=5, exclude=train, threshold=4.0)
    assert got["popularity"] == pytest.approx(popularity)
    assert got["candidates"] == "every item the user did not rate in the training split"
    assert f"rmse {got['rmse']:.4f}" in out and "popularity" in out


def test_evaluate_refuses_other_data_and_bad_flags(trained, tmp_path):
    root, ck = trained
    other = movielens_folder(tmp_path / "other", seed=12)  # same shape, other ratings
    code, _, err = run_cli(["evaluate", "--checkpoint", ck, "--data-dir", other, "--no-download"])
    assert code == 2 and "differs from the training pairs the checkpoint kept" in err
    code, _, err = run_cli(["evaluate", "--checkpoint", ck, "--data-dir", root, "--no-download", "-k", "0"])
    assert code == 2 and "-k must be >= 1" in err
    code, _, err = run_cli(["evaluate", "--checkpoint", ck, "--data-dir", root, "--no-download",
                            "--threshold", "9"])
    assert code == 2 and "--threshold 9 is outside the rating scale 0.5..5" in err


# -- benchmarks/accuracy.py's ranking table ---------------------------------------------------------
def test_accuracy_benchmark_summarises_ranking_beside_popularity():
    from benchmarks import accuracy

    def record(model, seed, ndcg, pop_ndcg):
        metrics = {m: ndcg for m in accuracy.RANKING}
        return {"dataset": "d", "protocol": "p", "model": model, "preset": "default", "loss": "mse", "seed": seed,
                "test_rmse": 0.9, "test_mae": 0.7, "fit_seconds": 1.0, "epochs": 1,
                "ranking": {**metrics, "num_users": 5, "k": 10},
                "popularity_ranking": {**{m: pop_ndcg for m in accuracy.RANKING}, "num_users": 5, "k": 10}}

    records = [record("bias", 0, 0.1, 0.3), record("bias", 1, 0.2, 0.5), record("dot", 0, 0.4, 0.3),
               record("dot", 1, 0.0, 0.5)]
    rows = {r["model"]: r for r in accuracy.summarise_ranking(records)}
    assert rows["bias"]["ndcg"] == pytest.approx(0.15) and rows["dot"]["ndcg"] == pytest.approx(0.2)
    assert rows["popularity"]["ndcg"] == pytest.approx(0.4) and rows["popularity"]["runs"] == 2  # once per split
    env = {"device": "cpu", "cpu": "x", "cpu_count": 2, "jax": "0", "optax": "0", "git_commit": "c", "command": "c"}
    text = accuracy.markdown(accuracy.summarise(records), env, records)
    assert "#### Ranking at k = 10 (d, p" in text
    assert "| popularity | - | - | 0.4000 | 0.4000 | 0.4000 | 0.4000 | 0.4000 | 0.4000 |" in text
    old = [{k: v for k, v in r.items() if "ranking" not in k} for r in records]  # records from before
    assert "Ranking at k" not in accuracy.markdown(accuracy.summarise(old), env, old)
