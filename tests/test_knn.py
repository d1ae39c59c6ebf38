"""Item-based k-NN with baselines (recsys_jax.models.knn): a similarity by hand, the baseline
sweeps by hand, the whole estimator against a NumPy reference (exact and with the top-M
truncation), the blocked similarity loop, the binary search, the dense forms (apply's
residual table, the whole-catalogue scores) against the search, Surprise's KNNBaseline where
it is installed, and bad input."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recsys_jax.data import Ratings, make_synthetic
from recsys_jax.models import knn, make_apply, make_config
from recsys_jax.eval.predict import predict_indices
from recsys_jax.engine.config import TrainConfig
from recsys_jax.training.fit import fit


# -- a NumPy reference, written from the formulas with loops ----------------------------------------
def reference_baselines(users, items, ratings, num_users, num_items, *, epochs, reg_user, reg_item):
    mu = float(np.mean(ratings.astype(np.float64)))
    b_user, b_item = np.zeros(num_users), np.zeros(num_items)
    for _ in range(epochs):
        for i in range(num_items):
            rows = items == i
            b_item[i] = np.sum(ratings[rows] - mu - b_user[users[rows]]) / (reg_item + rows.sum())
        for u in range(num_users):
            rows = users == u
            b_user[u] = np.sum(ratings[rows] - mu - b_item[items[rows]]) / (reg_user + rows.sum())
    return mu, b_user, b_item


def reference_similarities(users, items, residuals, num_items, *, shrinkage, min_support):
    """s_ij for every pair, float64[I, I], zero diagonal."""
    by_item = [{} for _ in range(num_items)]
    for u, i, e in zip(users, items, residuals):
        by_item[i][int(u)] = float(e)
    sims = np.zeros((num_items, num_items))
    for i in range(num_items):
        for j in range(num_items):
            common = sorted(set(by_item[i]) & set(by_item[j]))
            n = len(common)
            if i == j or n < min_support:
                continue
            ei = np.array([by_item[i][v] for v in common])
            ej = np.array([by_item[j][v] for v in common])
            denom = math.sqrt(np.sum(ei**2) * np.sum(ej**2))
            if denom > 0:
                sims[i, j] = np.sum(ei * ej) / denom * n / (n + shrinkage)
    return sims


def reference_predict(train: Ratings, config, pairs):
    users, items, ratings = train.users, train.items, train.ratings.astype(np.float64)
    mu, b_user, b_item = reference_baselines(users, items, ratings, train.num_users, train.num_items,
                                             epochs=config.baseline_epochs, reg_user=config.reg_user,
                                             reg_item=config.reg_item)
    residuals = ratings - mu - b_user[users] - b_item[items]
    sims = reference_similarities(users, items, residuals, train.num_items, shrinkage=config.shrinkage,
                                  min_support=config.min_support)
    rated = {(int(u), int(i)): r for u, i, r in zip(users, items, ratings)}
    out = []
    for u, i in pairs:
        # i's top-M positive neighbours, then the k most similar of those that u rated
        candidates = [j for j in np.argsort(-sims[i], kind="stable")[: config.max_neighbors] if sims[i, j] > 0]
        mine = [j for j in candidates if (u, j) in rated][: config.k]
        base = mu + b_user[u] + b_item[i]
        if mine:
            w = np.array([sims[i, j] for j in mine])
            e = np.array([rated[(u, j)] - mu - b_user[u] - b_item[j] for j in mine])
            base += np.sum(w * e) / np.sum(w)
        out.append(base)
    return np.array(out), sims


# -- fixtures ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def problem():
    """A small random problem: 30 users, 18 items, 220 ratings; the pairs not rated are scored."""
    ratings, _ = make_synthetic(jax.random.key(7), 30, 18, 220, embedding_dim=2)
    rated = set(zip(ratings.users.tolist(), ratings.items.tolist()))
    every = [(u, i) for u in range(ratings.num_users) for i in range(ratings.num_items)]
    unseen = np.array([p for p in every if p not in rated])
    return ratings, unseen, np.array(every)


def fitted(train, **options):
    result = fit("knn", train, None, key=0, model_config=make_config("knn", **options),
                 train_config=TrainConfig(epochs=1), progress=False)
    return result


def predict(result, pairs):
    return predict_indices(make_apply("knn", result.model_config), result.params, pairs[:, 0], pairs[:, 1],
                           aux=result.aux)


EXACT = {"k": 5, "max_neighbors": 17, "shrinkage": 10.0, "baseline_epochs": 3}  # M = I - 1: no truncation
# min_support 2: one common rater gives s = +-1/(1 + shrinkage) for many pairs, ties that rounding breaks
TRUNCATED = {"k": 3, "max_neighbors": 4, "shrinkage": 10.0, "baseline_epochs": 3}


@pytest.fixture(scope="module")
def exact(problem):
    return fitted(problem[0], **EXACT)


@pytest.fixture(scope="module")
def truncated(problem):
    return fitted(problem[0], **TRUNCATED)


# -- by hand -------------------------------------------------------------------------------------------
def test_similarity_by_hand():
    """Residuals given: item 0 rated by users 0-3 (e = 1, -1, 2, 5), item 1 by users 0-2
    (e = 2, 0, 1), item 2 by users 0 and 4 (e = -0.5, 3), item 3 by users 1, 2 (e = 0, 0)."""
    users = np.array([0, 1, 2, 3, 0, 1, 2, 0, 4, 1, 2])
    items = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 3])
    resid = np.array([1, -1, 2, 5, 2, 0, 1, -0.5, 3, 0, 0], np.float32)
    config = knn.Config(max_neighbors=3, shrinkage=1.0, min_support=2)
    ids, sims = knn.neighbor_lists(users, items, resid, 5, 4, config)
    # common raters of 0 and 1: users 0, 1, 2; user 3's e = 5 is not in item 0's sum of squares
    s01 = (1 * 2 + -1 * 0 + 2 * 1) / math.sqrt((1 + 1 + 4) * (4 + 0 + 1)) * 3 / (3 + 1.0)  # = 3 / sqrt(30)
    assert s01 == pytest.approx(3 / math.sqrt(30))
    # 0-2 and 1-2 share one rater (< min_support); item 3's residuals are all 0: no similarity
    np.testing.assert_array_equal(ids, [[1, -1, -1], [0, -1, -1], [-1, -1, -1], [-1, -1, -1]])
    np.testing.assert_allclose(sims, [[s01, 0, 0], [s01, 0, 0], [0, 0, 0], [0, 0, 0]], rtol=1e-6)
    # with min_support 1 the single common rater gives +-1 / (1 + shrinkage): 0-2 is -1/2 (dropped),
    # 1-2 is -1/2 (dropped) too
    ids1, _ = knn.neighbor_lists(users, items, resid, 5, 4, config._replace(min_support=1))
    np.testing.assert_array_equal(ids1, ids)
    # flip item 2's residual for user 0: now positively correlated with items 0 and 1 (weight 1/2),
    # ranked below s01 = 0.548 for both
    resid2 = resid.copy()
    resid2[7] = 0.5
    ids2, sims2 = knn.neighbor_lists(users, items, resid2, 5, 4, config._replace(min_support=1))
    np.testing.assert_array_equal(ids2, [[1, 2, -1], [0, 2, -1], [0, 1, -1], [-1, -1, -1]])
    np.testing.assert_allclose(sims2[:3, :2], [[s01, 0.5], [s01, 0.5], [0.5, 0.5]], rtol=1e-6)


def test_baselines_by_hand_one_sweep():
    """One sweep from zero: b_i = sum(r - mu) / (reg_i + n_i), then b_u = sum(r - mu - b_i) / (reg_u + n_u)."""
    users = jnp.array([0, 0, 1, 1, 1], jnp.int32)
    items = jnp.array([0, 1, 0, 1, 2], jnp.int32)
    ratings = jnp.array([5.0, 3.0, 4.0, 1.0, 2.0])
    mu = 3.0
    b_user, b_item = knn.fit_baselines(users, items, ratings, jnp.float32(mu), num_users=2, num_items=3, epochs=1,
                                       reg_user=1.0, reg_item=2.0)
    want_item = np.array([(2 + 1) / (2 + 2), (0 - 2) / (2 + 2), (-1) / (2 + 1)])
    want_user = np.array([(2 - want_item[0] + 0 - want_item[1]) / (1 + 2),
                          (1 - want_item[0] - 2 - want_item[1] - 1 - want_item[2]) / (1 + 3)])
    np.testing.assert_allclose(b_item, want_item, rtol=1e-6)
    np.testing.assert_allclose(b_user, want_user, rtol=1e-6)


def test_prediction_by_hand():
    """Two neighbours of item 0 rated by user 0, k = 1 keeps the more similar one."""
    params = knn.Params(
        global_bias=jnp.float32(3.0), user_bias=jnp.array([0.5]), item_bias=jnp.array([0.25, -0.5, 1.0, 0.0]),
        item_neighbors=jnp.array([[2.0, 1.0, 3.0], [-1, -1, -1], [-1, -1, -1], [-1, -1, -1]]),
        item_neighbor_sims=jnp.array([[0.6, 0.3, 0.2], [0, 0, 0], [0, 0, 0], [0, 0, 0]]))
    aux = knn.Aux(jnp.array([0, 2], jnp.int32), jnp.array([1, 2], jnp.int32), jnp.array([4.0, 5.0]))
    config = knn.Config(k=2, max_neighbors=3)
    e1, e2 = 4.0 - (3.0 + 0.5 - 0.5), 5.0 - (3.0 + 0.5 + 1.0)  # 1.0, 0.5; item 3 is not rated by user 0
    want = 3.0 + 0.5 + 0.25 + (0.6 * e2 + 0.3 * e1) / 0.9
    one = jax.jit(knn.predict_one, static_argnames="config")
    assert float(one(params, 0, 0, config=config, aux=aux)) == pytest.approx(want, rel=1e-6)
    assert float(one(params, 0, 0, config=config._replace(k=1), aux=aux)) == pytest.approx(3.75 + e2, rel=1e-6)
    # no rated neighbour: the baseline
    assert float(one(params, 0, 1, config=config, aux=aux)) == pytest.approx(3.0)
    found = jax.jit(knn.num_neighbors_found, static_argnames="config")
    np.testing.assert_array_equal(found(params, jnp.array([0, 0]), jnp.array([0, 1]), config=config, aux=aux), [2, 0])


def test_lower_bound():
    items = jnp.array([9, 1, 4, 4, 7, 0, 2], jnp.int32)  # segment [1, 5) is 1 4 4 7
    targets = jnp.array([0, 1, 2, 4, 5, 7, 8, 9])
    got = knn._lower_bound(items, 1, 5, targets, 3)
    np.testing.assert_array_equal(got, [1, 1, 2, 2, 4, 4, 5, 5])
    np.testing.assert_array_equal(knn._lower_bound(items, 3, 3, targets, 31), np.full(8, 3))  # empty segment


# -- against the reference --------------------------------------------------------------------------
def test_baselines_match_the_reference(problem, exact):
    train = problem[0]
    mu, b_user, b_item = reference_baselines(train.users, train.items, train.ratings.astype(np.float64),
                                             train.num_users, train.num_items, epochs=3, reg_user=15.0, reg_item=10.0)
    assert float(exact.params.global_bias) == pytest.approx(mu, rel=1e-6)
    np.testing.assert_allclose(exact.params.user_bias, b_user, atol=1e-5)
    np.testing.assert_allclose(exact.params.item_bias, b_item, atol=1e-5)


@pytest.mark.parametrize("options", [EXACT, TRUNCATED], ids=["exact", "top-M"])
def test_predictions_match_the_reference(problem, exact, truncated, options):
    train, unseen, every = problem
    result = exact if options is EXACT else truncated
    want, sims = reference_predict(train, result.model_config, [tuple(p) for p in every])
    np.testing.assert_allclose(predict(result, every), want, rtol=1e-5, atol=1e-5)
    # the neighbour lists are each row's top M positive similarities, best first
    m = result.model_config.max_neighbors
    ids = np.round(np.asarray(result.params.item_neighbors)).astype(int)
    for i in range(train.num_items):
        top = [j for j in np.argsort(-sims[i], kind="stable")[:m] if sims[i, j] > 0]
        assert ids[i, : len(top)].tolist() == top and np.all(ids[i, len(top):] == -1)
        np.testing.assert_allclose(result.params.item_neighbor_sims[i, : len(top)], sims[i, top], rtol=1e-5)
    if options is EXACT:
        # some predictions use neighbours, some fall back to the baseline
        used = knn.num_neighbors_found(result.params, jnp.asarray(unseen[:, 0]), jnp.asarray(unseen[:, 1]),
                                       config=result.model_config, aux=result.aux)
        assert np.any(np.asarray(used) >= 2) and np.any(np.asarray(used) == 0)


def test_truncation_changes_predictions(problem, exact):
    """M matters: the same settings with M = 2 give other predictions for some pairs."""
    train, unseen, _ = problem
    small = fitted(train, **{**EXACT, "max_neighbors": 2})
    a, b = predict(exact, unseen), predict(small, unseen)
    assert np.max(np.abs(a - b)) > 1e-3


def test_blocks_of_items_give_the_same_lists(problem, exact, monkeypatch):
    """Blocks of a few items (the last one padded) give the lists of one block."""
    train = problem[0]
    monkeypatch.setattr(knn, "SLAB", 50)  # 50 // A items per block: several blocks, the last one padded
    blocked = fitted(train, **EXACT)
    np.testing.assert_array_equal(blocked.params.item_neighbors, exact.params.item_neighbors)
    np.testing.assert_allclose(blocked.params.item_neighbor_sims, exact.params.item_neighbor_sims, rtol=1e-6)


def test_search_steps_from_configure(problem, exact):
    """configure sets the binary search to the longest list's bit length; 0 (31 steps) agrees."""
    train, _, every = problem
    longest = int(np.bincount(train.users).max())
    assert exact.model_config.search_steps == longest.bit_length()
    search = jax.jit(knn.apply_search, static_argnames="config")
    u, i = jnp.asarray(every[:, 0]), jnp.asarray(every[:, 1])
    fast = search(exact.params, u, i, config=exact.model_config, aux=exact.aux)
    slow = search(exact.params, u, i, config=exact.model_config._replace(search_steps=0), aux=exact.aux)
    np.testing.assert_allclose(slow, fast, rtol=1e-6)


# -- the dense forms: apply's residual table and the whole-catalogue scores ---------------------------
@pytest.mark.slow
@pytest.mark.parametrize("options", [EXACT, TRUNCATED], ids=["exact", "top-M"])
def test_table_and_search_agree_with_the_reference(problem, exact, truncated, options):
    """apply_table, apply_search and dense_scores (users in one chunk, in another order, one
    repeated) give the reference's predictions for every pair, including pairs where u rated
    fewer than k (or none) of i's neighbours, and items with no neighbours at all."""
    train, _, every = problem
    result = exact if options is EXACT else truncated
    config, params, aux = result.model_config, result.params, result.aux
    want, _ = reference_predict(train, config, [tuple(p) for p in every])
    u, i = jnp.asarray(every[:, 0]), jnp.asarray(every[:, 1])
    table = jax.jit(knn.apply_table, static_argnames="config")(params, u, i, config=config, aux=aux)
    search = jax.jit(knn.apply_search, static_argnames="config")(params, u, i, config=config, aux=aux)
    np.testing.assert_allclose(table, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(table, search, rtol=1e-6, atol=1e-6)
    users = np.concatenate([np.arange(train.num_users)[::-1], [3]])
    grid = jax.jit(knn.dense_scores, static_argnames="config")(params, jnp.asarray(users), config, aux)
    by_pair = np.asarray(search).reshape(train.num_users, train.num_items)
    np.testing.assert_allclose(grid, by_pair[users], rtol=1e-6, atol=1e-6)
    # the cases named above occur
    used = np.asarray(knn.num_neighbors_found(params, u, i, config=config, aux=aux))
    assert np.any(used == 0) and np.any((used > 0) & (used < config.k)) and np.any(used == config.k)
    # items with no neighbours (fit gives every item some here): item 0's list blanked, item 1's cut to one
    ids = np.asarray(params.item_neighbors).copy()
    sims = np.asarray(params.item_neighbor_sims).copy()
    ids[0], sims[0], ids[1, 1:], sims[1, 1:] = -1, 0, -1, 0
    cut = params._replace(item_neighbors=jnp.asarray(ids), item_neighbor_sims=jnp.asarray(sims))
    search = knn.apply_search(cut, u, i, config=config, aux=aux)
    np.testing.assert_allclose(knn.apply_table(cut, u, i, config=config, aux=aux), search, rtol=1e-6, atol=1e-6)
    grid = knn.dense_scores(cut, jnp.arange(train.num_users), config, aux)
    np.testing.assert_allclose(grid, np.asarray(search).reshape(grid.shape), rtol=1e-6, atol=1e-6)
    base = cut.global_bias + cut.user_bias[:, None] + cut.item_bias[None, :]
    np.testing.assert_allclose(grid[:, 0], base[:, 0], rtol=1e-6)


@pytest.mark.slow  # 5 s
def test_dense_scores_by_hand():
    """test_prediction_by_hand's model: user 0 rated items 1 and 2; user 1 rated nothing (the
    baseline everywhere); items 1-3 have no neighbours."""
    params = knn.Params(
        global_bias=jnp.float32(3.0), user_bias=jnp.array([0.5, -0.25]), item_bias=jnp.array([0.25, -0.5, 1.0, 0.0]),
        item_neighbors=jnp.array([[2.0, 1.0, 3.0], [-1, -1, -1], [-1, -1, -1], [-1, -1, -1]]),
        item_neighbor_sims=jnp.array([[0.6, 0.3, 0.2], [0, 0, 0], [0, 0, 0], [0, 0, 0]]))
    aux = knn.Aux(jnp.array([0, 2, 2], jnp.int32), jnp.array([1, 2], jnp.int32), jnp.array([4.0, 5.0]))
    e1, e2 = 4.0 - (3.0 + 0.5 - 0.5), 5.0 - (3.0 + 0.5 + 1.0)
    base = 3.0 + np.array([[0.5], [-0.25]]) + np.array([0.25, -0.5, 1.0, 0.0])
    scores = jax.jit(knn.dense_scores, static_argnames="config")
    for k, offset in [(2, (0.6 * e2 + 0.3 * e1) / 0.9), (1, e2)]:
        config = knn.Config(k=k, max_neighbors=3, search_steps=2)
        want = base.copy()
        want[0, 0] += offset
        np.testing.assert_allclose(scores(params, jnp.array([0, 1]), config, aux), want, rtol=1e-6)
        np.testing.assert_allclose(knn.apply_table(params, jnp.array([0, 0, 1]), jnp.array([0, 1, 0]), config=config,
                                                   aux=aux), [want[0, 0], want[0, 1], want[1, 0]], rtol=1e-6)
    np.testing.assert_array_equal(np.isnan(knn.residual_table(params, aux)),
                                  [[True, False, False, True], [True] * 4])
    np.testing.assert_array_equal(knn.residual_rows(params, jnp.array([1, 0, 0]), config, aux),
                                  np.asarray(knn.residual_table(params, aux))[[1, 0, 0]])


def test_whole_catalogue_ranking_uses_the_dense_form(problem, truncated):
    """metrics.make_score_fn's knn route (the spec's block_scores) equals the apply route over the grid."""
    from recsys_jax.eval.metrics import ScoreInputs, make_score_fn

    train = problem[0]
    assert knn.SPEC.block_scores is not None
    inputs = ScoreInputs(truncated.params, truncated.aux)
    users = jnp.arange(train.num_users, dtype=jnp.int32)
    dense = make_score_fn("knn", truncated.model_config, train.num_items)(inputs, users)
    per_pair = make_score_fn("knn", truncated.model_config, train.num_items, dense=False)(inputs, users)
    np.testing.assert_allclose(dense, per_pair, rtol=1e-6, atol=1e-6)


def test_fit_yields_one_epoch_and_beats_the_baseline():
    """Through recsys_jax.training.fit.fit with a validation split: one epoch (whatever
    TrainConfig.epochs), and the neighbours improve on the baseline alone (the same params with
    every similarity zeroed)."""
    ratings, _ = make_synthetic(jax.random.key(3), 200, 120, 6000, embedding_dim=3, noise_std=0.3)
    perm = np.random.default_rng(0).permutation(len(ratings))
    train, val = ratings.take(perm[:5000]), ratings.take(perm[5000:])
    result = fit("knn", train, val, key=1, model_config=make_config("knn", max_neighbors=50),
                 train_config=TrainConfig(epochs=5), progress=False)
    assert result.history["epoch"] == [1] and result.best_epoch == 1
    baseline = result.params._replace(item_neighbor_sims=jnp.zeros_like(result.params.item_neighbor_sims))
    base = predict_indices(make_apply("knn", result.model_config), baseline, val.users, val.items, aux=result.aux)
    base_rmse = float(np.sqrt(np.mean((np.clip(base, 0.5, 5) - val.ratings) ** 2)))
    assert result.history["val_rmse"][0] < base_rmse - 0.02
    assert 0 < result.history["train_loss"][0] < 1


# -- Surprise ------------------------------------------------------------------------------------------
def test_matches_surprise_knnbaseline(problem, exact):
    """Surprise's KNNBaseline (item-based, pearson_baseline, als baselines) predicts the same.

    Surprise shrinks by (n - 1) / (n - 1 + shrinkage) and Koren by n / (n + shrinkage), so the
    exact comparison is at shrinkage 0, where both are 1 (Surprise also needs n >= 2, our
    min_support)."""
    surprise = pytest.importorskip("surprise")
    import pandas as pd

    train, unseen, _ = problem
    frame = pd.DataFrame({"u": train.users, "i": train.items, "r": train.ratings.astype(np.float64)})
    trainset = surprise.Dataset.load_from_df(frame, surprise.Reader(rating_scale=(0.5, 5.0))).build_full_trainset()
    algo = surprise.KNNBaseline(k=5, min_k=1, sim_options={"name": "pearson_baseline", "user_based": False,
                                                           "shrinkage": 0},
                                bsl_options={"method": "als", "n_epochs": 3, "reg_u": 15, "reg_i": 10}, verbose=False)
    algo.fit(trainset)
    known = [(u, i) for u, i in unseen if trainset.knows_user(trainset.to_inner_uid(u)) and i in set(train.items)]
    want = np.array([algo.predict(int(u), int(i), clip=False).est for u, i in known])
    ours = fitted(train, **{**EXACT, "shrinkage": 0.0})
    np.testing.assert_allclose(predict(ours, np.array(known)), want, rtol=1e-5, atol=1e-5)
    inner = [trainset.to_inner_iid(i) for i in range(train.num_items) if i in set(train.items)]
    np.testing.assert_allclose(np.asarray(ours.params.item_bias)[[trainset.to_raw_iid(j) for j in inner]],
                               algo.bi[inner], atol=1e-5)


# -- bad input ---------------------------------------------------------------------------------------------
def test_bad_input_is_a_clear_error(problem):
    train = problem[0]
    twice = Ratings.from_raw([1, 1, 2], [5, 5, 6], [4.0, 3.0, 2.0])
    with pytest.raises(ValueError, match=r"knn: train has the \(user, item\) pair \(0, 0\) more than once"):
        knn.prepare(twice)
    for option, value in [("k", 0), ("max_neighbors", 0), ("shrinkage", -1.0), ("min_support", 0),
                          ("reg_item", -1.0), ("baseline_epochs", -1)]:
        with pytest.raises(ValueError, match=f"knn: {option}"):
            fitted(train, **{option: value})
    with pytest.raises(ValueError, match="knn: y_range is not supported"):
        fitted(train, y_range=(0.5, 5.0))
    with pytest.raises(ValueError, match="knn: apply needs aux"):
        knn.apply(knn.init(None, 2, 3, knn.Config(max_neighbors=2)), jnp.array([0]), jnp.array([1]))


def test_init_is_the_baseline_with_no_neighbours():
    config = knn.Config(max_neighbors=3, mean_rating=3.25)
    params = knn.init(jax.random.key(0), 4, 5, config)
    assert params.item_neighbors.shape == params.item_neighbor_sims.shape == (5, 3)
    np.testing.assert_array_equal(params.item_neighbors, -1)
    aux = knn.Aux(jnp.array([0, 1, 1, 2, 2], jnp.int32), jnp.array([3, 0], jnp.int32), jnp.array([4.0, 2.0]))
    apply = jax.jit(knn.apply, static_argnames="config")
    np.testing.assert_allclose(apply(params, jnp.arange(4), jnp.arange(4), config=config, aux=aux), 3.25)
