"""Fold-in (recsys_jax.use.foldin): the closed form by hand and against NumPy's least squares,
the gradient route against the closed form and against the full model's own objective for
every model, the new user's (and movie's) recommendations, bad input; and, on the genuine
ml-latest-small, users held out of training folded in to within 0.02 RMSE of the same
users trained in."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from recsys_jax.use import foldin
from recsys_jax.data import UnknownIdError, make_synthetic
from recsys_jax.eval.metrics import pairs_by_user
from recsys_jax.models import MODELS, bias, dot
from recsys_jax.objectives.penalties import make_model_penalty
from recsys_jax.use.recommender import Recommender

from conftest import configured_model

TC = {"l2": 0.05, "bias_l2": 0.02, "loss": "mse", "penalty": "touched"}


# -- the closed form, by hand ---------------------------------------------------------------
def hand_rec(model: str, train_config: dict, rated=None) -> Recommender:
    """Two movies (ids 10, 20) with q = [1], [2]; for bias, mu = 3, b_i = 0, 0.5; one user (id 1)."""
    if model == "dot":
        params = dot.Params(jnp.zeros((1, 1)), jnp.array([[1.0], [2.0]]))
        config = dot.Config(embedding_dim=1)
    else:
        params = bias.Params(jnp.float32(3.0), jnp.zeros(1), jnp.array([0.0, 0.5]), jnp.zeros((1, 1)),
                             jnp.array([[1.0], [2.0]]))
        config = bias.Config(embedding_dim=1)
    indptr, items = rated if rated is not None else (np.array([0, 0]), np.zeros(0, np.int32))
    return Recommender(model, config, params, np.array([1]), np.array([10, 20]), (0.5, 5.0),
                       titles={10: "Ten (1990)", 20: "Twenty (1990)"}, rated_indptr=np.asarray(indptr, np.int64),
                       rated_items=np.asarray(items, np.int32), train_config=train_config)


def test_closed_form_dot_by_hand():
    # r = [1, 2] for q = [1, 2], n = 2, lambda = 0.5: (1 + 4 + n lambda) p = 1*1 + 2*2, p = 5/6
    rec = hand_rec("dot", {"l2": 0.5, "loss": "mse"})
    assert foldin.uses_closed_form(rec)
    new = rec.fold_in_user({10: 1.0, 20: 2.0})
    assert new.user_ids.tolist() == [1, 2]
    assert float(new.params.user_factors[1, 0]) == pytest.approx(5 / 6, rel=1e-6)
    # prediction p q: 5/6 and 10/6
    np.testing.assert_allclose(new.predict([2, 2], [10, 20]), [5 / 6, 10 / 6], rtol=1e-6)
    # lambda = 2: (5 + 2 * 2) p = 5, p = 5/9; a penalty given to fold-in replaces the training one
    rec = hand_rec("dot", {"l2": 2.0, "loss": "mse"})
    assert float(rec.fold_in_user({10: 1.0, 20: 2.0}).params.user_factors[1, 0]) == pytest.approx(5 / 9, rel=1e-6)
    new = rec.fold_in_user({10: 1.0, 20: 2.0}, penalty=foldin.Penalty(0.5))
    assert float(new.params.user_factors[1, 0]) == pytest.approx(5 / 6, rel=1e-6)
    # the whole-table penalty of the notebook presets: N lambda with N the recorded training
    # pairs (here 4 of user 1), biases free: lambda = 0.25 gives N lambda = 1 again
    rec = hand_rec("dot", {"l2": 0.25, "loss": "mse", "penalty": "table"},
                   rated=(np.array([0, 4]), np.array([0, 1, 0, 1])))
    assert foldin.penalty_of(rec) == foldin.Penalty(0.25, 0.0, 4)
    new = rec.fold_in_user({10: 1.0, 20: 2.0})
    assert float(new.params.user_factors[1, 0]) == pytest.approx(5 / 6, rel=1e-6)


def test_closed_form_bias_by_hand():
    # y = r - mu - b_i = [4 - 3 - 0, 5 - 3 - 0.5] = [1, 1.5]; X = [[1, 1], [2, 1]] ([q_i, 1]);
    # X'X + D = [[5, 3], [3, 2]] + diag(n lambda, n lambda_b) = [[6, 3], [3, 3]], X'y = [4, 2.5];
    # det 9: p = (3*4 - 3*2.5)/9 = 1/2, b_u = (6*2.5 - 3*4)/9 = 1/3
    rec = hand_rec("bias", {"l2": 0.5, "bias_l2": 0.5, "loss": "mse"})
    new = rec.fold_in_user(pd.DataFrame({"movieId": [10, 20], "rating": [4.0, 5.0]}))
    assert float(new.params.user_factors[1, 0]) == pytest.approx(0.5, rel=1e-6)
    assert float(new.params.user_bias[1]) == pytest.approx(1 / 3, rel=1e-6)
    # r_hat = 3 + 1/3 + b_i + q/2: 3.8333 and 4.8333
    np.testing.assert_allclose(new.predict([2, 2], [10, 20]), [3 + 1 / 3 + 0.5, 3 + 1 / 3 + 0.5 + 1.0], rtol=1e-6)
    # a new movie from user 1 (p = 1, b_u = 0.5 set by hand): x_u = [1, 1], y = 4 - 3 - 0.5 = 0.5,
    # n = 1: [[1 + 0.5, 1], [1, 1 + 0.5]] w = [0.5, 0.5]: q = b_i = 0.5 / 2.5 = 0.2
    rec = rec._replace(params=rec.params._replace(user_factors=jnp.ones((1, 1)), user_bias=jnp.array([0.5])))
    new = rec.fold_in_item({1: 4.0}, title="New (2024)", genres=["Drama"])
    assert new.item_ids.tolist() == [10, 20, 21] and new.title(21) == "New (2024)"
    assert float(new.params.item_factors[2, 0]) == pytest.approx(0.2, rel=1e-6)
    assert float(new.params.item_bias[2]) == pytest.approx(0.2, rel=1e-6)
    assert new.genres == {21: ("Drama",)}
    assert new.users_for_item(21, 5).empty  # the only user rated it


def test_ridge_rows_is_least_squares_on_the_augmented_system():
    """(X'X + D) w = X'y is the normal equation of [X; D^1/2] w = [y; 0]: NumPy's lstsq of that."""
    rng = np.random.default_rng(0)
    m, length, d = 3, 7, 4
    x = rng.normal(size=(m, length, d))
    offsets, r = rng.normal(size=(m, length)), rng.normal(size=(m, length))
    mask = np.ones((m, length), bool)
    mask[1, 5:] = False  # a shorter row: padding must not count
    diag = rng.uniform(0.1, 2.0, size=(m, d))
    got = foldin.ridge_rows(x, offsets, r, mask, diag)
    for j in range(m):
        keep = mask[j]
        a = np.vstack([x[j][keep], np.diag(np.sqrt(diag[j]))])
        b = np.concatenate([(r[j] - offsets[j])[keep], np.zeros(d)])
        np.testing.assert_allclose(got[j], np.linalg.lstsq(a, b, rcond=None)[0], rtol=1e-10, atol=1e-12)
    # lambda = 0 with fewer ratings than unknowns: the minimum-norm solution, not an error
    short = foldin.ridge_rows(x[:1, :2], offsets[:1, :2], r[:1, :2], mask[:1, :2], np.zeros((1, d)))
    np.testing.assert_allclose(short[0], np.linalg.lstsq(x[0, :2], (r - offsets)[0, :2], rcond=None)[0], atol=1e-10)


# -- every model: the gradient route against the full model's objective ----------------------
@pytest.fixture(scope="module")
def tiny():
    ratings, _ = make_synthetic(jax.random.key(3), 30, 20, 300, embedding_dim=2)
    return ratings


def model_rec(name: str, ratings, **train_config) -> Recommender:
    """A model with perturbed initial parameters (nothing trained: the checks hold for any
    parameters) that knows every training pair of ``ratings``."""
    module, config, aux = configured_model(name, ratings, embedding_dim=3)
    params = module.init(jax.random.key(0), ratings.num_users, ratings.num_items, config)
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda x: jnp.asarray(x + 0.2 * rng.standard_normal(x.shape), jnp.float32), params)
    indptr, items = pairs_by_user(ratings.users, ratings.items, ratings.num_users)
    return Recommender(name, config, params, ratings.user_ids, ratings.item_ids, ratings.rating_scale, aux=aux,
                       rated_indptr=indptr, rated_items=items, train_config={**TC, **train_config})


def full_objective(rec: Recommender, side: str, index: int, others, ratings, times) -> float:
    """The training objective's terms for one row, through the *full* model (not fold-in's
    one-row view): sum of squared errors plus the model's own penalty at weight 1 per rating
    (terms of other rows are constants here)."""
    n = len(others)
    fixed = np.full(n, index, np.int32)
    users, items = (fixed, np.asarray(others, np.int32)) if side == "user" else (np.asarray(others, np.int32), fixed)
    pred = rec._predict_indices(users, items, times=np.asarray(times, np.float32))
    pen = _penalty(rec.model, rec.config, rec.aux)(rec.params, jnp.asarray(users), jnp.asarray(items), jnp.ones(n),
                                                    jnp.asarray(times, jnp.float32))
    return float(np.sum((pred.astype(np.float64) - ratings) ** 2) + float(pen))


_PENALTIES: dict = {}


def _penalty(model, config, aux):
    """The model's own penalty (`make_model_penalty`), jitted once per model and aux."""
    key = (model, id(aux))
    if key not in _PENALTIES:
        module = MODELS[model]
        penalty = make_model_penalty(module, config, aux, TC["l2"], TC["bias_l2"])
        uses_time = module.uses_time
        _PENALTIES[key] = (aux, jax.jit(lambda p, u, i, w, t: penalty(p, u, i, w, **({"times": t} if uses_time else {}))))
    return _PENALTIES[key][1]


def with_row(rec: Recommender, side: str, index: int, rows: dict) -> Recommender:
    return rec._replace(params=rec.params._replace(**{
        f: jnp.asarray(getattr(rec.params, f)).at[index].set(v) for f, v in rows.items()}))


def check_near_minimum(rec, side, index, others, ratings, times, rows):
    """The solved row beats the zero row and every one of 6 seeded perturbations of it."""
    at = full_objective(rec, side, index, others, ratings, times)
    zero = full_objective(with_row(rec, side, index, {f: jnp.zeros_like(v) for f, v in rows.items()}), side, index,
                          others, ratings, times)
    assert at < zero
    rng = np.random.default_rng(0)
    for _ in range(6):
        moved = {f: jnp.asarray(v) + 0.03 * rng.standard_normal(np.shape(v)) for f, v in rows.items()}
        worse = full_objective(with_row(rec, side, index, moved), side, index, others, ratings, times)
        assert at <= worse + 1e-4 * abs(worse), (rec.model, at, worse)


def trains_itself(name, tiny) -> bool:
    """A model trained by its own fit_epochs (knn, the autoencoders, Gibbs sampling) has no
    objective over one row to minimise with the others fixed: fold-in refuses it, clearly,
    unless its spec says ``folds_in=True`` (autorec: a new user's decoder row against
    the fixed item codes is its training objective's row)."""
    if MODELS[name].fit_epochs is None or MODELS[name].folds_in:
        return False
    rec = model_rec(name, tiny)
    if MODELS[name].fold_in.solve_users is not None:  # its own exact user solve (tests/test_ials.py); no items
        with pytest.raises(ValueError, match="trains itself"):
            rec.fold_in_item({int(rec.user_ids[0]): 4.0})
        return True
    with pytest.raises(ValueError, match="trains itself"):
        rec.fold_in_user({int(rec.item_ids[0]): 4.0})
    with pytest.raises(ValueError, match="trains itself"):
        rec.fold_in_item({int(rec.user_ids[0]): 4.0})
    return True


@pytest.mark.parametrize("name", list(MODELS))
def test_fold_in_user_minimises_the_models_objective(name, tiny):
    if trains_itself(name, tiny):
        return
    rec = model_rec(name, tiny)
    movies = rec.item_ids[[0, 3, 5, 8, 13, 17]]
    values = np.array([5.0, 4.5, 1.0, 3.0, 2.5, 4.0], np.float32)
    stamp = 1_300_000_000  # a time inside the synthetic data's range, for timesvd
    new = rec.fold_in_user(dict(zip(movies.tolist(), values.tolist())), timestamps=stamp)
    u = rec.num_users
    assert new.num_users == u + 1 and new.user_ids[-1] == rec.user_ids.max() + 1
    assert all(getattr(new.params, f).shape[0] == u + 1 for f in new.params._fields if f.startswith("user_"))
    # the old users predict as before
    old_u, old_i = rec.user_ids[[0, 4, 9]], rec.item_ids[[1, 2, 3]]
    np.testing.assert_allclose(new.predict(old_u, old_i), rec.predict(old_u, old_i), rtol=1e-5)
    # the new row against the full model (its aux extended: SVD++'s N(u), timeSVD's mean day)
    rows = {f: getattr(new.params, f)[u] for f in foldin.solved_fields(name, rec.params, "user")}
    times = np.full(6, stamp / 86_400.0, np.float32)
    check_near_minimum(new, "user", u, np.searchsorted(rec.item_ids, movies), values, times, rows)
    # its recommendations leave out what it rated
    top = new.recommend(int(new.user_ids[-1]), 30)
    assert len(top) == rec.num_items - 6 and not set(top.movieId) & set(movies.tolist())


@pytest.mark.parametrize("name", list(MODELS))
def test_fold_in_item_minimises_the_models_objective(name, tiny):
    if trains_itself(name, tiny):
        return
    rec = model_rec(name, tiny)
    raters = rec.user_ids[[1, 2, 6, 7, 11, 20, 25]]
    values = np.array([4.0, 4.5, 2.0, 3.5, 5.0, 1.5, 3.0], np.float32)
    new = rec.fold_in_item(dict(zip(raters.tolist(), values.tolist())), title="New (2024)")
    i = rec.num_items
    assert new.num_items == i + 1 and new.title(int(new.item_ids[-1])) == "New (2024)"
    rows = {f: getattr(new.params, f)[i] for f in foldin.solved_fields(name, rec.params, "item")}
    users = np.searchsorted(rec.user_ids, raters)
    times = np.asarray(new.aux.user_mean_day)[users] if name == "timesvd" else np.zeros(len(users), np.float32)
    if name == "timesvd":  # fold-in placed undated ratings at the end of the period: score them there too
        times = foldin._days(rec, None, len(users))
    check_near_minimum(new, "item", i, users, values, times, rows)
    # the old items predict as before, the raters are not among the users it is recommended to
    np.testing.assert_allclose(new.predict(rec.user_ids[:3], rec.item_ids[:3]),
                               rec.predict(rec.user_ids[:3], rec.item_ids[:3]), rtol=1e-5)
    fans = new.users_for_item(int(new.item_ids[-1]), 100)
    assert len(fans) == rec.num_users - 7 and not set(fans.userId) & set(raters.tolist())


def test_gradient_route_reaches_the_closed_form(tiny):
    rec = model_rec("bias", tiny)
    others = [np.array([0, 3, 5, 8, 13, 17]), np.array([1, 2])]
    values = [np.array([5.0, 4.5, 1.0, 3.0, 2.5, 4.0]), np.array([2.0, 4.0])]
    times = [np.zeros(6, np.float32), np.zeros(2, np.float32)]
    exact = foldin.solve_rows(rec, "user", others, values, times, method="closed_form")
    adam = foldin.solve_rows(rec, "user", others, values, times, method="gradient")
    for f in exact:
        np.testing.assert_allclose(adam[f], exact[f], atol=2e-3)


def test_many_users_at_once_equal_one_at_a_time(tiny):
    rec = model_rec("mlp", tiny)
    tables = [{1: 4.0, 2: 3.0, 7: 5.0}, {3: 1.0, 4: 2.0}]
    both = foldin.fold_in_users(rec, tables, user_ids=[100, 200])
    assert both.user_ids[-2:].tolist() == [100, 200]
    one = rec.fold_in_user(tables[1], user_id=200)
    np.testing.assert_allclose(both.params.user_factors[-1], one.params.user_factors[-1], atol=1e-5)
    np.testing.assert_allclose(both.predict([200, 200], [5, 6]), one.predict([200, 200], [5, 6]), atol=1e-5)


def test_bad_input_is_a_clear_error(tiny):
    rec = model_rec("bias", tiny)
    with pytest.raises(UnknownIdError, match="unknown movie id 999"):
        rec.fold_in_user({999: 4.0})
    with pytest.raises(ValueError, match="rating 7 of movieId 3 is outside the rating scale 0.5..5"):
        rec.fold_in_user({1: 4.0, 3: 7.0})
    with pytest.raises(ValueError, match="no ratings"):
        rec.fold_in_user({})
    with pytest.raises(ValueError, match="movieId 2 is rated twice"):
        rec.fold_in_user(pd.DataFrame({"movieId": [2, 2], "rating": [3.0, 4.0]}))
    with pytest.raises(ValueError, match="no rating column"):
        rec.fold_in_user(pd.DataFrame({"movieId": [2]}))
    with pytest.raises(ValueError, match="larger than every known user id"):
        rec.fold_in_user({1: 4.0}, user_id=3)
    with pytest.raises(UnknownIdError, match="unknown user id 999"):
        rec.fold_in_item({999: 4.0})
    # unknown="skip" drops the movie without training ratings and solves from the rest
    skipped = rec.fold_in_user({1: 4.0, 999: 2.0}, unknown="skip")
    direct = rec.fold_in_user({1: 4.0})
    np.testing.assert_allclose(skipped.params.user_factors[-1], direct.params.user_factors[-1], rtol=1e-6)


# -- the genuine data: held-out users folded in -------------------------------------------------
@pytest.mark.slow
def test_folded_in_users_match_trained_in_users(data_dir):
    """50 users (seeded draw) held out of training entirely, folded in from their training
    ratings, against the same users trained in: mean per-user test RMSE within 0.02.
    Measured (bias, default preset, split seed 0): trained-in 0.8450, folded-in 0.8507,
    mu + b_i alone 0.9621."""
    from recsys_jax.data import load_movielens, random_split
    from recsys_jax.use.recommender import to_recommender
    from recsys_jax.training.presets import get_preset
    from recsys_jax.training.fit import fit

    ratings = load_movielens("ml-latest-small", data_dir=data_dir, download=False)
    split = random_split(ratings, 0, 0.2)
    train, test = ratings.take(split.train), ratings.take(split.test)
    n_train = np.bincount(train.users, minlength=ratings.num_users)
    n_test = np.bincount(test.users, minlength=ratings.num_users)
    held = np.sort(np.random.default_rng(0).choice(np.flatnonzero((n_train >= 5) & (n_test >= 1)), 50,
                                                   replace=False))
    train_without = train.take(~np.isin(train.users, held))
    tc = get_preset("default", "bias")
    trained_in = to_recommender(ratings, fit("bias", train, None, key=jax.random.key(0), train_config=tc),
                                train_split=train)
    without = to_recommender(ratings, fit("bias", train_without, None, key=jax.random.key(0), train_config=tc),
                             train_split=train_without)
    tables = []
    for u in held:
        rows = train.take(train.users == u)
        tables.append(dict(zip(ratings.item_ids[rows.items].tolist(), rows.ratings.tolist())))
    folded = foldin.fold_in_users(without, tables, unknown="skip")  # movies only they rated are unknown to it
    new_id = dict(zip(ratings.user_ids[held].tolist(), folded.user_ids[-50:].tolist()))
    held_test = test.take(np.isin(test.users, held))
    raw_users, raw_items = ratings.user_ids[held_test.users], ratings.item_ids[held_test.items]

    def per_user_rmse(pred):
        err = (pred - held_test.ratings) ** 2
        return np.array([np.sqrt(err[held_test.users == u].mean()) for u in held])

    a = per_user_rmse(trained_in.predict(raw_users, raw_items, unknown="fallback"))
    f = per_user_rmse(folded.predict([new_id[u] for u in raw_users.tolist()], raw_items, unknown="fallback"))
    baseline = per_user_rmse(without.predict(raw_users, raw_items, unknown="fallback"))  # mu + b_i
    assert abs(f.mean() - a.mean()) < 0.02, (f.mean(), a.mean())
    assert f.mean() < baseline.mean() - 0.05, (f.mean(), baseline.mean())
