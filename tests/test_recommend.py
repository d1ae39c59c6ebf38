"""Recommendations: a hand-made bias model ranked by hand (filters, users for a movie, scoring a
DataFrame), every model's whole-catalogue scores against its own per-pair predictions, the
checkpoint keeping the training pairs, genres and train config, ``recsys-jax recommend`` (a
known user, a new user from --rate, bad input) and scripts/recommend_for_me.py."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from conftest import configured_model, run_cli
from test_evaluate import movielens_folder

from recsys_jax.use import checkpoint
from recsys_jax.use.checkpoint import CheckpointError
from recsys_jax.data import UnknownIdError, make_synthetic
from recsys_jax.objectives.losses import PARAM_LOSSES
from recsys_jax.eval.metrics import make_score_fn, pairs_by_user, top_k
from recsys_jax.models import MODELS, bias
from recsys_jax.use.recommender import Recommender

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "recommend_for_me.py"


# -- a bias model ranked by hand -------------------------------------------------------------
def hand_rec() -> Recommender:
    r"""mu = 3, K = 1. Movies 10, 20, 30, 40: b_i = 0.5, 0.2, -0.1, 0.4 and q = 1, 0, 2, -1.
    Users 1 (p = 0.5, b_u = 0) and 2 (p = -1, b_u = 0.1). \hat r = mu + b_u + b_i + p q:

    user 1: 4.0, 3.2, 3.9, 2.9      user 2: 2.6, 3.3, 1.0, 4.5

    Rated in training: user 1 {10}, user 2 {40, 20}; so each movie has 1, 1, 0, 1 ratings.
    """
    params = bias.Params(jnp.float32(3.0), jnp.array([0.0, 0.1]), jnp.array([0.5, 0.2, -0.1, 0.4]),
                         jnp.array([[0.5], [-1.0]]), jnp.array([[1.0], [0.0], [2.0], [-1.0]]))
    indptr, items = pairs_by_user([0, 1, 1], [0, 3, 1], 2)
    return Recommender("bias", bias.Config(embedding_dim=1), params, np.array([1, 2]), np.array([10, 20, 30, 40]),
                       (0.5, 5.0), titles={10: "Ten", 20: "Twenty", 30: "Thirty", 40: "Forty"},
                       rated_indptr=indptr, rated_items=items,
                       genres={10: ("Comedy",), 20: ("Drama",), 30: ("Comedy", "Drama"), 40: ("Horror",)})


def ranked(table) -> list:
    return list(zip(table.movieId.tolist(), np.round(table.score, 5).tolist()))


def test_recommend_by_hand():
    rec = hand_rec()
    top = rec.recommend(1, 10)
    assert list(top.columns) == ["movieId", "title", "score"]
    assert ranked(top) == [(30, 3.9), (20, 3.2), (40, 2.9)]  # 10 was rated
    assert top.title.tolist() == ["Thirty", "Twenty", "Forty"]
    assert ranked(rec.recommend(1, 2)) == [(30, 3.9), (20, 3.2)]
    assert ranked(rec.recommend(1, 10, exclude_rated=False)) == [(10, 4.0), (30, 3.9), (20, 3.2), (40, 2.9)]
    assert ranked(rec.recommend(1, 10, min_ratings=1)) == [(20, 3.2), (40, 2.9)]  # 30 has no training rating
    assert ranked(rec.recommend(1, 10, genres="Comedy")) == [(30, 3.9)]
    assert ranked(rec.recommend(1, 10, genres=["Drama", "Horror"])) == [(30, 3.9), (20, 3.2), (40, 2.9)]
    assert ranked(rec.recommend(2, 10)) == [(10, 2.6), (30, 1.0)]
    many = rec.recommend_many([2, 1], 2)
    assert list(many.columns) == ["userId", "rank", "movieId", "title", "score"]
    assert list(zip(many.userId, many["rank"], many.movieId)) == [(2, 1, 10), (2, 2, 30), (1, 1, 30), (1, 2, 20)]
    # an untrained movie is never recommended
    untrained = rec._replace(trained_items=np.array([True, True, False, True]))
    assert ranked(untrained.recommend(1, 10)) == [(20, 3.2), (40, 2.9)]


def test_users_for_item_and_score_by_hand():
    rec = hand_rec()
    fans = rec.users_for_item(30, 5)  # nobody rated 30: user 1 (3.9) before user 2 (1.0)
    assert list(zip(fans.userId, np.round(fans.score, 5))) == [(1, 3.9), (2, 1.0)]
    assert rec.users_for_item(10, 5).userId.tolist() == [2]  # user 1 rated 10
    df = pd.DataFrame({"userId": [1, 2, 2], "movieId": [10, 40, 30], "note": ["a", "b", "c"]})
    scored = rec.score(df)
    assert scored.prediction.tolist() == pytest.approx([4.0, 4.5, 1.0])
    assert list(scored.columns) == ["userId", "movieId", "note", "prediction"] and "prediction" not in df
    with pytest.raises(ValueError, match="no movieId column"):
        rec.score(df.drop(columns="movieId"))


def test_bad_requests_are_clear_errors():
    rec = hand_rec()
    with pytest.raises(UnknownIdError, match="unknown user id 3"):
        rec.recommend(3)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        rec.recommend(1, 0)
    with pytest.raises(ValueError, match="unknown genre 'Comdy'; known genres: Comedy, Drama, Horror"):
        rec.recommend(1, genres="Comdy")
    with pytest.raises(ValueError, match="min_ratings must be a non-negative integer"):
        rec.recommend(1, min_ratings=-1)
    with pytest.raises(UnknownIdError, match="unknown item id 50"):
        rec.users_for_item(50)
    bare = rec._replace(rated_indptr=None, rated_items=None, genres=None)
    with pytest.raises(ValueError, match="does not record which movies each user rated"):
        bare.recommend(1)
    assert ranked(bare.recommend(1, 1, exclude_rated=False)) == [(10, 4.0)]
    with pytest.raises(ValueError, match="this model has no genres"):
        bare.recommend(1, genres="Comedy", exclude_rated=False)


# -- every model: whole-catalogue scores are the model's own predictions ----------------------------
@pytest.fixture(scope="module")
def tiny():
    ratings, _ = make_synthetic(jax.random.key(4), 24, 16, 150, embedding_dim=2)
    return ratings


def perturbed_rec(name: str, ratings, **kw) -> Recommender:
    module, config, aux = configured_model(name, ratings, embedding_dim=3)
    params = module.init(jax.random.key(0), ratings.num_users, ratings.num_items, config)
    rng = np.random.default_rng(2)
    params = jax.tree.map(lambda x: jnp.asarray(x + 0.3 * rng.standard_normal(x.shape), jnp.float32), params)
    indptr, items = pairs_by_user(ratings.users, ratings.items, ratings.num_users)
    return Recommender(name, config, params, ratings.user_ids, ratings.item_ids, ratings.rating_scale, aux=aux,
                       rated_indptr=indptr, rated_items=items, **kw)


@pytest.mark.parametrize("name", list(MODELS))
def test_catalogue_scores_are_the_models_predictions(name, tiny):
    rec = perturbed_rec(name, tiny)
    users = np.arange(5, dtype=np.int32)
    grid = np.asarray(rec._score_fn()(rec._score_inputs(), jnp.asarray(users)))  # [5, I]
    pairs_u, pairs_i = np.repeat(users, rec.num_items), np.tile(np.arange(rec.num_items), len(users))
    per_pair = rec._predict_indices(pairs_u, pairs_i).reshape(len(users), rec.num_items)
    np.testing.assert_allclose(grid, per_pair, rtol=2e-5, atol=2e-5)
    if MODELS[name].block_scores is not None:  # the matrix form equals the apply route
        apply_route = make_score_fn(name, rec.config, rec.num_items, dense=False)
        np.testing.assert_allclose(grid, apply_route(rec._score_inputs(), jnp.asarray(users)), rtol=2e-5, atol=2e-5)
    # recommend is the per-pair ranking with the rated movies removed
    top = rec.recommend(int(rec.user_ids[2]), 4)
    seen = set(rec.rated_items[rec.rated_indptr[2]:rec.rated_indptr[3]].tolist())
    want = [i for i in np.argsort(-per_pair[2], kind="stable") if i not in seen][:4]
    assert top.movieId.tolist() == rec.item_ids[want].tolist()
    np.testing.assert_allclose(top.score, per_pair[2, want], rtol=2e-5)


def test_a_loss_link_ranks_by_the_expected_rating(tiny):
    """The ordinal model's score is its expected rating: the link applied to the whole grid."""
    loss_params = PARAM_LOSSES["ordinal"].init(tiny)
    rec = perturbed_rec("bias", tiny, loss="ordinal", loss_params=loss_params)
    users = np.arange(4)
    grid = np.asarray(rec._score_fn()(rec._score_inputs(), jnp.asarray(users, jnp.int32)))
    per_pair = rec._predict_indices(np.repeat(users, rec.num_items), np.tile(np.arange(rec.num_items), 4))
    np.testing.assert_allclose(grid.ravel(), per_pair, rtol=1e-5, atol=1e-5)
    assert 0.5 <= grid.min() and grid.max() <= 5.0


def test_chunks_of_users_give_the_same_top_k(tiny):
    rec = perturbed_rec("mlp", tiny)
    users = np.arange(rec.num_users)
    exclude = (rec.rated_indptr, rec.rated_items)
    whole = top_k(rec._score_fn(), rec._score_inputs(), users, 5, num_items=rec.num_items, exclude=exclude)
    chunked = top_k(rec._score_fn(), rec._score_inputs(), users, 5, num_items=rec.num_items, exclude=exclude,
                    chunk_users=4)
    np.testing.assert_array_equal(whole[1], chunked[1])
    many = rec.recommend_many(rec.user_ids[[3, 0]], 5)
    assert many.movieId.tolist()[:5] == rec.item_ids[whole[1][3]].tolist()


# -- checkpoints keep what recommending needs --------------------------------------------------------
def test_checkpoint_keeps_pairs_genres_and_train_config(tmp_path):
    rec = hand_rec()._replace(train_config={"l2": 0.1, "bias_l2": 0.0, "loss": "mse", "penalty": "touched"})
    loaded = checkpoint.load(checkpoint.save(tmp_path / "ck", rec))
    np.testing.assert_array_equal(loaded.rated_indptr, rec.rated_indptr)
    np.testing.assert_array_equal(loaded.rated_items, rec.rated_items)
    assert loaded.genres == rec.genres and loaded.train_config == rec.train_config
    assert ranked(loaded.recommend(1, 3)) == ranked(rec.recommend(1, 3))
    # a checkpoint without them (saved before they were kept) loads; recommend says what is missing
    old = checkpoint.load(checkpoint.save(tmp_path / "old", rec._replace(rated_indptr=None, rated_items=None,
                                                                           genres=None, train_config=None)))
    assert old.rated_items is None and old.genres is None and old.train_config is None
    with pytest.raises(ValueError, match="does not record which movies each user rated"):
        old.recommend(1)
    # a CSR that does not fit the id maps is refused
    bad = rec._replace(rated_indptr=np.array([0, 1, 5]))
    with pytest.raises(CheckpointError, match="rated/indptr and rated/items must be the CSR"):
        checkpoint.load(checkpoint.save(tmp_path / "bad", bad))
    bad = rec._replace(rated_items=np.array([0, 3, 9], np.int32))
    with pytest.raises(CheckpointError, match="item index outside 0..3"):
        checkpoint.load(checkpoint.save(tmp_path / "bad2", bad))


# -- recsys-jax recommend ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny checkpoint trained by the CLI on a MovieLens-shaped folder (titles, genres)."""
    root = movielens_folder(tmp_path_factory.mktemp("ml"))
    ck = root / "ck"
    code, _, err = run_cli(["train", "--data-dir", root, "--no-download", "--model", "bias", "--epochs", "3",
                            "--embedding-dim", "4", "--batch-size", "128", "--seed", "1", "--out", ck])
    assert code == 0, err
    return root, ck


def test_recommend_for_a_known_user(trained):
    _, ck = trained
    rec = checkpoint.load(ck)
    user = int(rec.user_ids[5])
    code, out, err = run_cli(["recommend", "--checkpoint", ck, "--user", user, "-n", "4", "--json"])
    assert code == 0, err
    want = rec.recommend(user, 4)
    got = json.loads(out.strip().splitlines()[-1])
    assert [r["movieId"] for r in got] == want.movieId.tolist()
    assert [r["title"] for r in got] == want.title.tolist()
    assert [r["score"] for r in got] == pytest.approx(want.score.tolist())
    assert out.splitlines()[0] == (f"top 4 for user {user} by the bias model (movies it did not rate; "
                                   "score = predicted rating):")
    # the checkpoint knows the training pairs: none of the user's training movies comes back
    rated = rec.item_ids[rec.rated_items[rec.rated_indptr[5]:rec.rated_indptr[6]]]
    assert not set(rated.tolist()) & {r["movieId"] for r in got}
    code, out, err = run_cli(["recommend", "--checkpoint", ck, "--user", user, "-n", "50", "--genre", "Horror",
                              "--json"])
    assert code == 0, err
    horror = {int(m) for m, g in rec.genres.items() if "Horror" in g}
    assert {r["movieId"] for r in json.loads(out.strip().splitlines()[-1])} <= horror


def test_recommend_never_lists_a_movie_the_user_rated_anywhere(trained):
    """Issue 27: user 1's top 10 listed The Matrix, which user 1 rated in the test part:
    only training ratings were left out. Every user's whole ranked catalogue now leaves out
    the training and the held-out pairs; --include-held-out (evaluation only) lets the
    held-out ones back in, and some of them come back."""
    from recsys_jax.data import load_movielens

    root, ck = trained
    rec = checkpoint.load(ck)
    data = load_movielens("ml-latest-small", data_dir=root, download=False)
    rated = {}
    for u, i in zip(data.user_ids[data.users], data.item_ids[data.items]):
        rated.setdefault(int(u), set()).add(int(i))
    users = [int(u) for u in rec.user_ids[np.asarray(rec.trained_users)]]
    everything = rec.recommend_many(users, rec.num_items)
    listed = {}
    for u, i in zip(everything.userId, everything.movieId):
        listed.setdefault(int(u), set()).add(int(i))
    assert all(not listed[u] & rated[u] for u in users)
    held = np.diff(rec.held_out_indptr)
    assert held.sum() > 0
    back = rec.recommend_many(users, rec.num_items, include_held_out=True)
    assert sum(int(i) in rated[int(u)] for u, i in zip(back.userId, back.movieId)) == held[
        np.asarray(rec.trained_users)].sum()
    user = users[int(np.argmax(held[np.asarray(rec.trained_users)]))]
    code, out, err = run_cli(["recommend", "--checkpoint", ck, "--user", user, "-n", rec.num_items,
                              "--include-held-out", "--json"])
    assert code == 0, err and "held-out ones included" in out.splitlines()[0]
    assert {r["movieId"] for r in json.loads(out.strip().splitlines()[-1])} & rated[user]


def test_train_on_every_rating_for_use(trained, tmp_path):
    """``train --test-frac 0``: no test part; the epochs are still chosen on a validation
    slice, then the model is refit on every rating; recommend then leaves out every rating."""
    root, _ = trained
    ck = tmp_path / "all"
    code, out, err = run_cli(["train", "--data-dir", root, "--no-download", "--model", "bias", "--epochs", "3",
                              "--embedding-dim", "4", "--batch-size", "128", "--seed", "1", "--test-frac", "0",
                              "--out", ck, "--json"])
    assert code == 0, err
    record = json.loads(out.strip().splitlines()[-1])
    assert record["num_test"] == 0 and record["test_rmse"] is None and record["refit"]
    assert record["num_fit"] == record["num_ratings"]
    assert "no test part" in out
    rec = checkpoint.load(ck)
    assert len(rec.held_out_items) == 0 and len(rec.rated_items) == record["num_ratings"]
    assert len(rec.recommend(int(rec.user_ids[0]), 3)) == 3
    code, _, err = run_cli(["evaluate", "--checkpoint", ck, "--data-dir", root, "--no-download"])
    assert code == 2 and "no rating is left to evaluate it on" in err


def test_recommend_for_a_new_user(trained):
    _, ck = trained
    rec = checkpoint.load(ck)
    movies = rec.item_ids[[0, 3, 7]].tolist()
    rate = f"{movies[0]}=5, {movies[1]}=4.5,{movies[2]}=1"
    code, out, err = run_cli(["recommend", "--checkpoint", ck, "--rate", rate, "-n", "5", "--json"])
    assert code == 0, err
    me = rec.fold_in_user({movies[0]: 5.0, movies[1]: 4.5, movies[2]: 1.0})
    want = me.recommend(int(me.user_ids[-1]), 5)
    got = json.loads(out.strip().splitlines()[-1])
    assert [r["movieId"] for r in got] == want.movieId.tolist() and not set(movies) & {r["movieId"] for r in got}
    assert out.startswith("top 5 for a new user folded in from 3 ratings")


@pytest.mark.parametrize("args, message", [
    (["--rate", "10=x"], "--rate: '10=x' is not MOVIE=RATING"),
    (["--rate", "10=5,,20"], "--rate: '20' is not MOVIE=RATING"),
    (["--rate", "999999=4"], "--rate: unknown movie id 999999: not in the training data"),
    (["--rate", "10=6"], "--rate: rating 6 of movie 10 is outside the rating scale 0.5..5"),
    (["--rate", "10=4,10=5"], "--rate: movie 10 is rated twice"),
    (["--user", "99999"], "--user: unknown user id 99999: not in the training data"),
    (["--user", "1", "--genre", "Comdy"], "--genre: unknown genre 'Comdy'; known genres: Comedy, Drama, Horror, Romance, Thriller"),
    (["--user", "1", "-n", "0"], "-n must be >= 1"),
])
def test_recommend_bad_input(trained, args, message):
    _, ck = trained
    code, out, err = run_cli(["recommend", "--checkpoint", ck, *args])
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith("recsys-jax recommend: error: ") and message in lines[0], err


@pytest.mark.parametrize("command", ["recommend", "evaluate"])
def test_help(command):
    code, out, _ = run_cli([command, "--help"])
    assert code == 0 and "--checkpoint" in out and "--json" in out


# -- scripts/recommend_for_me.py ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("recommend_for_me", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_on_a_movielens_folder(script, trained, capsys):
    root, _ = trained
    assert script.main(["--data-dir", str(root), "--rate", "10=5,40=4.5,70=1", "-n", "3", "--epochs", "1",
                        "--min-ratings", "1"]) == 0
    text = capsys.readouterr().out
    assert "ml-latest-small: 900 ratings, 60 users, 40 movies" in text
    assert "  5.0  10  Movie 10 (1999)" in text
    recommended = text.split("recommended for you")[1].split("most similar")[0].splitlines()[1:]
    assert len(recommended) == 3 and all("(1999)" in line for line in recommended)
    assert "most similar to your favourite, 10 Movie 10 (1999):" in text


def test_script_without_the_data_uses_synthetic_ratings(script, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RECSYS_JAX_DATA", raising=False)
    monkeypatch.setenv("RECSYS_JAX_CACHE", str(tmp_path / "cache"))
    assert script.main(["--data-dir", str(tmp_path), "-n", "4", "--epochs", "1"]) == 0
    text = capsys.readouterr().out
    assert "using synthetic ratings" in text and "synthetic-30000: 30000 ratings, 600 users, 400 movies" in text
    assert len(text.split("recommended for you")[1].split("most similar")[0].splitlines()) == 1 + 4
