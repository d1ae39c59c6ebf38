"""EASE (recsys_jax.models.ease): its closed form against the constrained least squares
written out column by column, its scores against the formula, its item-count limit, and the
CLI path of a model that ranks."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from conftest import run_cli

from recsys_jax.data import make_synthetic
from recsys_jax.models import ease


@pytest.fixture(scope="module")
def data():
    ratings, _ = make_synthetic(jax.random.key(8), 40, 15, 200, embedding_dim=3)
    return ratings


def test_the_closed_form_is_the_constrained_least_squares(data):
    """Column i of B regresses item i on the other items (B_ii = 0 is the constraint):
    b = (X_-i^T X_-i + lambda I)^-1 X_-i^T x_i, solved here one column at a time."""
    config = ease.Config(l2=3.0)
    keep = data.ratings >= config.threshold
    users, items = data.users[keep], data.items[keep]
    active, b = ease.solve(users, items, config.l2, config.max_items)
    x = np.zeros((data.num_users, len(active)))
    x[users, np.searchsorted(active, items)] = 1.0
    for i in range(len(active)):
        others = np.delete(np.arange(len(active)), i)
        xo = x[:, others]
        want = np.linalg.solve(xo.T @ xo + config.l2 * np.eye(len(others)), xo.T @ x[:, i])
        np.testing.assert_allclose(b[others, i], want, rtol=1e-8, atol=1e-10)
        assert b[i, i] == 0.0


def test_scores_are_the_sum_over_liked_items(data):
    config = ease.Config(l2=3.0)
    aux = ease.prepare(data, config)
    params, _ = next(ease.fit_epochs(jax.random.key(0), data, config, None, aux))
    keep = data.ratings >= config.threshold
    x = np.zeros((data.num_users, data.num_items))
    x[data.users[keep], data.items[keep]] = 1.0
    b = np.zeros((data.num_items, data.num_items))
    slot = np.asarray(aux.item_slot)[:-1]
    w = np.asarray(params.weights, np.float64)
    b[:, :] = w[np.ix_(slot, slot)]
    want = x @ b
    users = np.repeat(np.arange(data.num_users), data.num_items)
    items = np.tile(np.arange(data.num_items), data.num_users)
    got = ease.apply(params, users, items, config=config, aux=aux).reshape(data.num_users, data.num_items)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ease.block_scores(params, np.arange(data.num_users), config, aux), want, rtol=1e-5,
                               atol=1e-6)
    assert not np.any(b[np.setdiff1d(np.arange(data.num_items), data.items[keep])])  # no positive: no weight


def test_the_item_count_limit_is_stated(data):
    with pytest.raises(ValueError, match="max_items=3"):
        next(ease.fit_epochs(jax.random.key(0), data, ease.Config(max_items=3)))


def test_the_cli_trains_and_evaluates_it(tmp_path):
    from test_evaluate import movielens_folder

    root = movielens_folder(tmp_path / "ml")
    ck = tmp_path / "ck"
    code, out, err = run_cli(["train", "--data-dir", root, "--no-download", "--model", "ease", "--out", ck, "--json"])
    assert code == 0, err
    record = json.loads(out.strip().splitlines()[-1])
    assert record["test_rmse"] is None and 0 <= record["test_ndcg"] <= 1
    code, out, err = run_cli(["evaluate", "--checkpoint", ck, "--data-dir", root, "--no-download", "--json"])
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["ndcg"] == pytest.approx(record["test_ndcg"])
