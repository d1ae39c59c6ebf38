"""Ranking: BPR and sampled softmax, recall@k / NDCG@k over the catalogue, fit_ranking."""
from __future__ import annotations

import doctest
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from recsys_jax.eval import metrics
from recsys_jax.training import ranking
from recsys_jax.data import Ratings, make_synthetic, random_split
from recsys_jax.eval.metrics import broadcast_scores, make_score_fn, matrix_scores, ranking_metrics, top_k_items
from recsys_jax.models import dot, make_apply, make_config
from recsys_jax.objectives.ranking import RANKING_LOSSES, bpr, sampled_softmax
from recsys_jax.training.ranking import fit_ranking, implicit, popularity_scores
from recsys_jax.engine.step import make_ranking_objective
from recsys_jax.engine.step import Batch

POS = jnp.array([1.0, 0.0, -2.0])
NEG = jnp.array([[0.0, 1.0], [0.0, 0.0], [3.0, -2.0]])


def _softplus(x):
    return np.log1p(np.exp(x))


# -- losses ------------------------------------------------------------------------------
def test_hand_values():
    # bpr: mean_n softplus(y_n - x)
    want = [(_softplus(-1.0) + _softplus(0.0)) / 2, _softplus(0.0), (_softplus(5.0) + _softplus(0.0)) / 2]
    np.testing.assert_allclose(bpr(POS, NEG), want, rtol=1e-6)
    # sampled softmax: log(e^x + sum e^y) - x
    want = [np.log(np.e + 1 + np.e) - 1, np.log(3.0), np.log(np.exp(-2) + np.exp(3) + np.exp(-2)) + 2]
    np.testing.assert_allclose(sampled_softmax(POS, NEG), want, rtol=1e-6)
    assert doctest.testmod(ranking).failed == 0


@pytest.mark.parametrize("name", list(RANKING_LOSSES))
def test_jit_shape_and_gradients(name):
    loss = RANKING_LOSSES[name]
    assert loss(POS, NEG).shape == (3,)
    np.testing.assert_allclose(jax.jit(loss)(POS, NEG), loss(POS, NEG), rtol=1e-6)
    with jax.enable_x64(True):
        check_grads(loss, (np.asarray(POS, np.float64), np.asarray(NEG, np.float64)), order=1, modes=["rev"],
                    eps=1e-6)


SCORE = st.floats(-30.0, 30.0, allow_nan=False, width=32)


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(sorted(RANKING_LOSSES)), pos=st.lists(SCORE, min_size=4, max_size=4),
       neg=st.lists(SCORE, min_size=12, max_size=12), shift=st.floats(-10.0, 10.0, width=32))
def test_properties(name, pos, neg, shift):
    loss = RANKING_LOSSES[name]
    x, y = jnp.asarray(pos, jnp.float32), jnp.asarray(neg, jnp.float32).reshape(4, 3)
    value = np.asarray(loss(x, y))
    assert np.all(np.isfinite(value)) and np.all(value >= 0)
    # a constant added to every score changes nothing (only differences count)
    np.testing.assert_allclose(loss(x + shift, y + shift), value, rtol=1e-4, atol=1e-4)
    # raising the positive's score lowers the loss
    grad = np.asarray(jax.grad(lambda p: jnp.sum(loss(p, y)))(x))
    assert np.all(grad <= 0)
    # equal scores: log 2 (bpr) and log(N + 1) (softmax over the positive and N = 3 negatives)
    tie = np.asarray(loss(x, jnp.broadcast_to(x[:, None], (4, 3))))
    np.testing.assert_allclose(tie, math.log(2.0) if name == "bpr" else math.log(4.0), rtol=1e-6)


def test_implicit_and_popularity():
    r = Ratings.from_raw([1, 1, 2, 2, 3, 3], [10, 20, 10, 30, 10, 20], [4.0, 3.5, 5.0, 4.0, 2.0, 4.5])
    pos = implicit(r)
    np.testing.assert_array_equal(pos.users, [0, 1, 1, 2])
    np.testing.assert_array_equal(pos.items, [0, 0, 2, 1])
    np.testing.assert_array_equal(pos.ratings, 1.0)
    assert pos.num_items == 3 and pos.num_users == 3  # the id maps are kept
    assert len(implicit(r, threshold=4.5)) == 2
    np.testing.assert_array_equal(popularity_scores(pos), [2.0, 1.0, 1.0])


# -- metrics on a tiny, hand-ranked example ------------------------------------------------
S = jnp.array([
    [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
    [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
    [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],
])


def _pairs(users, items) -> Ratings:
    n = len(users)
    return Ratings(np.asarray(users, np.int32), np.asarray(items, np.int32), np.ones(n, np.float32),
                   np.zeros(n, np.int64), np.arange(3, dtype=np.int64), np.arange(6, dtype=np.int64))


TRAIN = _pairs([0, 1, 1, 2], [0, 5, 4, 1])  # excluded from the ranking
TEST = _pairs([0, 0, 1], [2, 5, 3])  # user 2 has no held-out item: not counted


def test_recall_and_ndcg_by_hand():
    # user 0, train item 0 removed: ranking 1, 2, 3, 4, 5; held out {2, 5}
    # user 1, train items 4, 5 removed: ranking 3, 2, 1, 0; held out {3}
    top = top_k_items(matrix_scores, S, [0, 1], 3, num_items=6, exclude=TRAIN)
    np.testing.assert_array_equal(top, [[1, 2, 3], [3, 2, 1]])
    got = ranking_metrics(matrix_scores, S, TEST, k=3, exclude=TRAIN)
    # recall: (1/2 + 1/1) / 2; NDCG: user 0 (1/log2 3) / (1 + 1/log2 3), user 1: 1
    ndcg0 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert got == pytest.approx({"recall": 0.75, "ndcg": (ndcg0 + 1.0) / 2, "num_users": 2})
    assert metrics.recall_at_k(matrix_scores, S, TEST, k=1, exclude=TRAIN) == pytest.approx(0.5)
    assert metrics.ndcg_at_k(matrix_scores, S, TEST, k=1, exclude=TRAIN) == pytest.approx(0.5)
    # without the exclusion the training items take the top places
    got = ranking_metrics(matrix_scores, S, TEST, k=3)
    assert got["recall"] == pytest.approx(0.75)  # user 0: 2 at rank 3; user 1: 3 at rank 3
    assert got["ndcg"] == pytest.approx((0.5 / (1 + 1 / math.log2(3)) + 0.5) / 2)
    # k beyond the catalogue is the whole catalogue
    assert ranking_metrics(matrix_scores, S, TEST, k=50, exclude=TRAIN)["recall"] == 1.0


@pytest.fixture(scope="module")
def planted():
    r, _ = make_synthetic(jax.random.key(0), 300, 200, 25_000, embedding_dim=4, noise_std=0.3,
                          interaction_std=1.0, zipf=0.5)
    split = random_split(r, 0, 0.2)
    return implicit(r.take(split.train)), implicit(r.take(split.test))


@pytest.mark.slow  # 5 s
def test_chunks_and_routes_agree(planted):
    train, test = planted
    config = make_config("bias", embedding_dim=4, init_scale=0.5)
    from recsys_jax.models import bias

    params = bias.init(jax.random.key(1), train.num_users, train.num_items, config)
    params = params._replace(item_bias=jax.random.normal(jax.random.key(2), (train.num_items,)))
    dense, grid = make_score_fn("bias", config, train.num_items), make_score_fn("bias", config, train.num_items,
                                                                              dense=False)
    users = jnp.arange(7, dtype=jnp.int32)
    np.testing.assert_allclose(dense(params, users), grid(params, users), rtol=1e-5, atol=1e-5)
    apply_fn = make_apply("bias", config)
    np.testing.assert_allclose(dense(params, users)[3, 17], apply_fn(params, jnp.array([3]), jnp.array([17]))[0],
                               rtol=1e-6)
    whole = ranking_metrics(dense, params, test, exclude=train)
    assert ranking_metrics(dense, params, test, exclude=train, chunk_users=8) == whole
    assert ranking_metrics(grid, params, test, exclude=train, chunk_users=32) == pytest.approx(whole)
    # no excluded item is ever recommended
    top = top_k_items(dense, params, np.arange(train.num_users), 10, num_items=train.num_items, exclude=train,
                      chunk_users=16)
    seen = set(zip(train.users.tolist(), train.items.tolist()))
    assert not any((u, int(i)) in seen for u in range(train.num_users) for i in top[u])


# -- training ----------------------------------------------------------------------------
def test_objective_draws_uniform_negatives_from_the_key():
    params = dot.Params(jnp.array([[1.0, 0.0], [0.0, 1.0]]), jnp.array([[1.0, 1.0], [2.0, 0.0], [0.0, -1.0]]))
    batch = Batch(jnp.array([0, 1, 1]), jnp.array([1, 0, 2]), jnp.ones(3), jnp.array([True, True, False]))
    key = jax.random.key(3)
    objective = make_ranking_objective(dot.apply, bpr, 3, 5)
    negatives = jax.random.randint(jax.random.split(key, 3)[0], (3, 5), 0, 3, jnp.int32)
    scores = params.user_factors @ params.item_factors.T  # [[1, 2, 0], [1, 0, -1]]
    pos = scores[batch.users, batch.items]
    neg = scores[batch.users[:, None], negatives]
    want = np.mean(np.asarray(bpr(pos, neg))[:2])  # the masked example does not count
    assert float(jax.jit(objective)(params, batch, key)) == pytest.approx(want, rel=1e-6)
    many = jax.random.randint(jax.random.split(key, 3)[0], (4000, 5), 0, 3)
    assert set(np.unique(np.asarray(many)).tolist()) == {0, 1, 2}


@pytest.fixture(scope="module")
def bpr_fit(planted):
    train, _ = planted
    return fit_ranking("bias", train, None, key=0, loss="bpr", model_config=make_config("bias", embedding_dim=8),
                       train_config=ranking.TrainConfig(epochs=10, batch_size=256, lr=1e-2, l2=1e-3))


def test_bpr_beats_popularity(planted, bpr_fit):
    train, test = planted
    pop = ranking_metrics(broadcast_scores, jnp.asarray(popularity_scores(train)), test, exclude=train)
    score_fn = make_score_fn("bias", bpr_fit.model_config, train.num_items)
    got = ranking_metrics(score_fn, bpr_fit.params, test, exclude=train)
    assert got["recall"] > pop["recall"] + 0.04, (got, pop)
    assert got["ndcg"] > pop["ndcg"] + 0.04, (got, pop)
    assert bpr_fit.history["train_loss"][-1] < 0.8 * bpr_fit.history["train_loss"][0]
    assert bpr_fit.best_epoch == 10  # no validation set: the last epoch


def test_sampled_softmax_and_validation(planted):
    train, test = planted
    val = test.take(np.arange(0, len(test), 2))
    result = fit_ranking("dot", train, val, key=1, loss="sampled_softmax", num_negatives=8,
                         model_config=make_config("dot", embedding_dim=8),
                         train_config=ranking.TrainConfig(epochs=4, batch_size=512, lr=2e-2, l2=1e-3))
    recall = result.history["val_recall"]
    assert len(recall) == 4 and recall[-1] > recall[0]
    assert result.best_epoch == int(np.argmax(recall)) + 1
    score_fn = make_score_fn("dot", result.model_config, train.num_items)
    again = ranking_metrics(score_fn, result.params, val, exclude=train, k=result.k)
    assert again["recall"] == pytest.approx(max(recall))


def test_bad_arguments(planted):
    train, _ = planted
    with pytest.raises(ValueError, match="aux"):
        fit_ranking("svdpp", train)
    with pytest.raises(ValueError, match="unknown ranking loss"):
        fit_ranking("dot", train, loss="hinge")
    with pytest.raises(ValueError, match="num_negatives"):
        fit_ranking("dot", train, num_negatives=0)
    with pytest.raises(ValueError, match="no training positives"):
        fit_ranking("dot", train.take(np.array([], np.int64)))
