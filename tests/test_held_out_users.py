"""The held-out-users protocol (strong generalisation) end to end: the split that holds users
out whole, the metrics of Liang et al. 2018 by hand, `Recommender.evaluate_held_out_users`
against the fold-in and ranking written out for ials and ease, and `train --split
held-out-users` then `evaluate` on the CLI."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from conftest import run_cli

from recsys_jax.data import make_split, make_synthetic
from recsys_jax.data.split import held_out_users, held_out_users_split
from recsys_jax.engine.config import TrainConfig
from recsys_jax.eval.metrics import held_out_report
from recsys_jax.training.fit import fit
from recsys_jax.use.recommender import to_recommender


@pytest.fixture(scope="module")
def ratings():
    return make_synthetic(jax.random.key(8), 100, 60, 2400, embedding_dim=3)[0]


def test_the_split_holds_the_users_of_the_protocol_out_whole(ratings):
    split = held_out_users_split(ratings, 2, users_frac=0.25)
    assert len(np.intersect1d(split.train, split.test)) == 0 and len(split.train) + len(split.test) == len(ratings)
    held = np.unique(ratings.users[split.test])
    assert not set(held) & set(ratings.users[split.train])  # no rating of a held-out user trains
    parts = held_out_users(ratings, 2, users_frac=0.25)
    np.testing.assert_array_equal(held, np.unique(ratings.users[parts.target]))
    # every part the protocol folds in or scores lies in the test part, every training positive in train
    assert set(parts.fold_in) | set(parts.target) <= set(split.test) and set(parts.train) <= set(split.train)
    again = make_split(ratings, "held-out-users", seed=2, test_frac=0.25)
    assert np.array_equal(again.test, split.test)
    with pytest.raises(ValueError, match="share of users"):
        make_split(ratings, "held-out-users", seed=2, test_frac=0.0)


def test_the_metrics_by_hand():
    """Two users: user 0 finds its targets {3, 9} at ranks 1 and 3, user 1 (target {5})
    at rank 2; cut-offs 2 and 3."""
    top = np.array([[3, 7, 9], [1, 5, -1]])
    got = held_out_report(top, [np.array([3, 9]), np.array([5])], cuts=(("recall", 2), ("ndcg", 3)))
    d = 1 / np.log2([2, 3, 4])
    assert got["recall@2"] == pytest.approx((1 / 2 + 1 / 1) / 2)  # min(2, |T|) = 2, then 1
    assert got["ndcg@3"] == pytest.approx(((d[0] + d[2]) / (d[0] + d[1]) + d[1] / d[0]) / 2)
    assert got["num_users"] == 2
    short = held_out_report(top, [np.array([3, 9]), np.array([5])], cuts=(("recall", 5),))  # 3 ranked: misses after
    assert short["recall@5"] == pytest.approx((2 / 2 + 1 / 1) / 2)


def _by_hand(scores, fold_in, targets, trained, depth=100):
    """Each user's best ``depth`` trained items not folded in, by a stable sort, against its
    trained targets (a user without one is not counted)."""
    scores = np.array(scores, np.float64)
    scores[:, ~trained] = -np.inf
    for j, items in enumerate(fold_in):
        scores[j, items] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :depth]
    order = np.where(np.take_along_axis(np.isfinite(scores), order, axis=1), order, -1)
    found = [t[trained[t]] for t in targets]
    keep = np.array([len(t) > 0 for t in found])
    return held_out_report(order[keep], [t for t in found if len(t)])


@pytest.mark.parametrize("model", ["ials", "ease"])
def test_evaluate_held_out_users_is_the_fold_in_and_ranking_written_out(ratings, model):
    from recsys_jax.models import ease, ials

    split = held_out_users_split(ratings, 1)
    parts = held_out_users(ratings, 1)
    train = ratings.take(split.train)
    config = ials.Config(embedding_dim=4) if model == "ials" else ease.Config(l2=5.0)
    result = fit(model, train, None, key=0, train_config=TrainConfig(epochs=3), model_config=config,
                 progress=False)
    rec = to_recommender(ratings, result, train_split=train)
    got = rec.evaluate_held_out_users(ratings.take(parts.fold_in), ratings.take(parts.target))

    held = np.unique(ratings.users[parts.target])
    fold_in = [ratings.items[parts.fold_in][ratings.users[parts.fold_in] == u] for u in held]
    targets = [ratings.items[parts.target][ratings.users[parts.target] == u] for u in held]
    trained = np.bincount(train.items, minlength=ratings.num_items) > 0
    usable = [i[trained[i]] for i in fold_in]
    if model == "ials":
        rows = ials.fold_in_users(result.params, result.model_config, usable)
        scores = rows @ np.asarray(result.params.item_factors).T
    else:  # x_u B: the weights of the liked items, summed (items outside B score 0)
        active, b = ease.solve(*ials.positives(train, 4.0), 5.0, 10 ** 6)
        full = np.zeros((ratings.num_items, ratings.num_items))
        full[np.ix_(active, active)] = b
        scores = np.stack([full[i].sum(axis=0) for i in usable])
    want = _by_hand(scores, fold_in, targets, trained)
    for key in ("recall@20", "recall@50", "ndcg@100"):
        assert got[key] == pytest.approx(want[key], abs=1e-9), key
    assert got["num_users"] == want["num_users"] and got["num_users"] + got["skipped_users"] == len(held)
    counts = np.bincount(train.items, minlength=ratings.num_items).astype(np.float64)
    popularity = _by_hand(np.tile(counts, (len(held), 1)), fold_in, targets, trained)
    assert got["popularity"]["ndcg@100"] == pytest.approx(popularity["ndcg@100"], abs=1e-9)


def test_a_trained_user_is_refused_as_a_held_out_one(ratings):
    train = ratings.take(np.arange(len(ratings)))
    result = fit("ials", train, None, key=0, train_config=TrainConfig(epochs=1), progress=False,
                 model_config=__import__("recsys_jax.models.ials", fromlist=["Config"]).Config(embedding_dim=2))
    rec = to_recommender(ratings, result, train_split=train)
    with pytest.raises(ValueError, match="has training ratings"):
        rec.evaluate_held_out_users(ratings.take(np.arange(5)), ratings.take(np.arange(5, 10)))


def test_train_then_evaluate_on_the_cli(tmp_path):
    from test_evaluate import movielens_folder

    root = movielens_folder(tmp_path / "ml")
    ck = tmp_path / "ck"
    code, out, err = run_cli(["train", "--data-dir", root, "--no-download", "--model", "ials", "--epochs", "3",
                              "--embedding-dim", "4", "--split", "held-out-users", "--test-frac", "0.3", "--out", ck,
                              "--json"])
    assert code == 0, err
    record = json.loads(out.strip().splitlines()[-1])
    assert "held-out users:" in out and record["split"] == "held-out-users"
    assert 0 <= record["test_ndcg@100"] <= 1 and record["test_rmse"] is None
    code, out, err = run_cli(["evaluate", "--checkpoint", ck, "--data-dir", root, "--no-download", "--json"])
    assert code == 0, err
    evaluated = json.loads(out.strip().splitlines()[-1])
    assert evaluated["ndcg@100"] == pytest.approx(record["test_ndcg@100"])
    assert evaluated["recall@20"] == pytest.approx(record["test_recall@20"])
    code, _, err = run_cli(["train", "--data-dir", root, "--no-download", "--model", "bpmf", "--split",
                            "held-out-users"])
    assert code == 2 and "cannot fold a new user in" in err


def test_cuts_must_be_given_and_positive():
    top = np.array([[1, 2]])
    for cuts in ((), (("recall", 0),)):
        with pytest.raises(ValueError, match="cut-off"):
            held_out_report(top, [np.array([1])], cuts=cuts)
