"""iALS (recsys_jax.models.ials) against a float64 reference of its updates, its objective,
and the CLI path of a model that ranks: train reports ranking metrics beside popularity,
evaluate has no rating metrics, predict refuses, recommend says what its score is."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from conftest import run_cli

from recsys_jax.data import make_synthetic
from recsys_jax.models import ials

CONFIG = ials.Config(embedding_dim=3, unobserved_weight=0.3, l2=0.05, nu=0.7, threshold=3.5, init_scale=1.0,
                     solver="cholesky")


@pytest.fixture(scope="module")
def data():
    ratings, _ = make_synthetic(jax.random.key(4), 25, 15, 160, embedding_dim=3)
    return ratings


def reference(train, config, p, q, epochs):
    """The alternation written out in float64: each row's normal equations solved densely."""
    users, items = ials.positives(train, config.threshold)
    pos = np.zeros((train.num_users, train.num_items))
    pos[users, items] = 1.0
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    k = p.shape[1]
    for _ in range(epochs):
        for table, other, s in ((p, q, pos), (q, p, pos.T)):
            gram = other.T @ other
            for r in range(table.shape[0]):
                n = s[r].sum()
                if n == 0:
                    table[r] = 0.0
                    continue
                lam = config.l2 * (n + config.unobserved_weight * other.shape[0]) ** config.nu
                a = config.unobserved_weight * gram + other.T @ np.diag(s[r]) @ other + lam * np.eye(k)
                table[r] = np.linalg.solve(a, other.T @ s[r])
    return p, q


def objective64(train, config, p, q):
    users, items = ials.positives(train, config.threshold)
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    scores = p @ q.T
    n_u = np.bincount(users, minlength=p.shape[0])
    n_i = np.bincount(items, minlength=q.shape[0])
    reg = (config.l2 * (n_u + config.unobserved_weight * q.shape[0]) ** config.nu * (p * p).sum(1)).sum()
    reg += (config.l2 * (n_i + config.unobserved_weight * p.shape[0]) ** config.nu * (q * q).sum(1)).sum()
    return ((scores[users, items] - 1) ** 2).sum() + config.unobserved_weight * (scores ** 2).sum() + reg


def test_the_updates_are_the_float64_reference(data):
    start = ials.init(jax.random.key(7), data.num_users, data.num_items, CONFIG)
    gen = ials.fit_epochs(jax.random.key(7), data, CONFIG)  # the same key: the same start
    got = [next(gen) for _ in range(3)]
    p, q = reference(data, CONFIG, start.user_factors, start.item_factors, 3)
    np.testing.assert_allclose(got[-1][0].user_factors, p, rtol=2e-4, atol=1e-5)
    np.testing.assert_allclose(got[-1][0].item_factors, q, rtol=2e-4, atol=1e-5)
    users, _ = ials.positives(data, CONFIG.threshold)
    assert got[-1][1] == pytest.approx(objective64(data, CONFIG, p, q) / len(users), rel=1e-4)


def test_the_objective_never_increases_and_each_half_step_is_a_minimum(data):
    gen = ials.fit_epochs(jax.random.key(1), data, CONFIG)
    losses = [next(gen)[1] for _ in range(6)]
    assert all(b <= a * (1 + 1e-5) for a, b in zip(losses, losses[1:]))
    params = next(gen)[0]
    p, q = np.asarray(params.user_factors, np.float64), np.asarray(params.item_factors, np.float64)
    base = objective64(data, CONFIG, p, q)
    rng = np.random.default_rng(0)
    for _ in range(5):  # the item side was solved last: no small move of Q lowers L
        step = 1e-3 * rng.standard_normal(q.shape)
        assert objective64(data, CONFIG, p, q + step) >= base - 1e-9


def test_bad_settings_are_refused(data):
    with pytest.raises(ValueError, match="unobserved_weight"):
        next(ials.fit_epochs(jax.random.key(0), data, CONFIG._replace(unobserved_weight=0.0)))
    with pytest.raises(ValueError, match="threshold"):
        next(ials.fit_epochs(jax.random.key(0), data, CONFIG._replace(threshold=99.0)))


def test_the_cli_trains_ranks_and_refuses_to_predict_ratings(tmp_path):
    from test_evaluate import movielens_folder

    root = movielens_folder(tmp_path / "ml")
    ck = tmp_path / "ck"
    code, out, err = run_cli(["train", "--data-dir", root, "--no-download", "--model", "ials", "--epochs", "4",
                              "--embedding-dim", "4", "--out", ck, "--json"])
    assert code == 0, err
    record = json.loads(out.strip().splitlines()[-1])
    assert record["test_rmse"] is None and 0 <= record["test_ndcg"] <= 1 and 0 <= record["popularity_ndcg"] <= 1
    assert not record["refit"] and record["num_val"] == 0 and record["best_epoch"] == 4  # the last one
    assert "popularity: ndcg@10" in out
    code, out, err = run_cli(["evaluate", "--checkpoint", ck, "--data-dir", root, "--no-download", "--json"])
    assert code == 0, err
    evaluated = json.loads(out.strip().splitlines()[-1])
    assert evaluated["rmse"] is None and evaluated["ndcg"] == pytest.approx(record["test_ndcg"])
    code, _, err = run_cli(["predict", "--checkpoint", ck, "--user", "1", "--movie", "1"])
    assert code == 2 and "not ratings" in err
    code, out, err = run_cli(["recommend", "--checkpoint", ck, "--user", "1", "-n", "3"])
    assert code == 0 and "score = preference, not a rating" in out.splitlines()[0], err


def test_folding_in_a_user_is_the_user_step(data):
    """A user folded in from its positives, every item fixed, is the row the user step
    solves: the same solve (strong generalisation's fold-in)."""
    from recsys_jax.models.row_chunks import make_plan

    gen = ials.fit_epochs(jax.random.key(2), data, CONFIG)
    params = next(gen)[0]
    users, items = ials.positives(data, CONFIG.threshold)
    plan = make_plan(users, items, np.ones(len(users), np.float32), data.num_users, data.num_items)
    solved = ials.solve_side(params.user_factors, params.item_factors, plan.user, CONFIG)
    lists = [items[users == u] for u in range(data.num_users)]
    np.testing.assert_allclose(ials.fold_in_users(params, CONFIG, lists), solved, rtol=1e-4, atol=1e-5)


def test_a_new_user_folds_in_by_one_solve(data):
    """`Recommender.fold_in_user` (recommend --rate) on an ials model: the new user's row is
    `ials.fold_in_users` of its ratings at or above the threshold."""
    from recsys_jax import fit
    from recsys_jax.engine.config import TrainConfig
    from recsys_jax.use.recommender import to_recommender

    result = fit("ials", data, None, key=0, progress=False, train_config=TrainConfig(epochs=2), model_config=CONFIG)
    rec = to_recommender(data, result, train_split=data)
    ids = [int(i) for i in data.item_ids[:4]]
    new = rec.fold_in_user({ids[0]: 5.0, ids[1]: 4.0, ids[2]: 1.0, ids[3]: 3.5})
    want = ials.fold_in_users(result.params, result.model_config, [np.array([0, 1, 3])])  # 1.0 < 3.5: not liked
    np.testing.assert_allclose(new.params.user_factors[-1], want[0], rtol=1e-6)
    assert len(new.recommend(int(new.user_ids[-1]), 3)) == 3


def test_conjugate_gradient_converges_to_the_exact_rows_and_never_raises_the_objective(data):
    """solver="cg": with k steps on a k-dimensional system it is the exact solve (to
    rounding); with fewer it still lowers each row's quadratic, so L never increases."""
    exact = ials.fit_epochs(jax.random.key(5), data, CONFIG)
    many = ials.fit_epochs(jax.random.key(5), data, CONFIG._replace(solver="cg", cg_steps=12))
    for _ in range(2):
        (a, _), (b, _) = next(exact), next(many)
    np.testing.assert_allclose(b.user_factors, a.user_factors, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(b.item_factors, a.item_factors, rtol=1e-3, atol=1e-5)
    few = ials.fit_epochs(jax.random.key(5), data, CONFIG._replace(solver="cg", cg_steps=1))
    losses = [next(few)[1] for _ in range(6)]
    assert all(y <= x * (1 + 1e-5) for x, y in zip(losses, losses[1:]))
