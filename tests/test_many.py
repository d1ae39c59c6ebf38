"""fit_many: K members in one vmapped program equal K separate fits."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from recsys_jax.data import make_synthetic, random_split
from recsys_jax.training import many as many_module
from recsys_jax.training.many import Member, ensemble_predict, fit_many, predict_many, random_search
from recsys_jax.engine.config import TrainConfig
from recsys_jax.training.fit import fit

TC = TrainConfig(epochs=3, batch_size=256, lr=1e-2, l2=0.01)


@pytest.fixture(scope="module")
def data():
    r, _ = make_synthetic(jax.random.key(0), 150, 100, 6000, embedding_dim=4, noise_std=0.3, round_to_half=False)
    split = random_split(r, 0, 0.2)
    return r.take(split.train), r.take(split.test)


@pytest.fixture(scope="module")
def many(data):
    train, val = data
    members = [Member(seed=0), Member(seed=1, lr=3e-3), Member(seed=2, l2=0.1, loss="huber"),
               Member(seed=3, embedding_dim=4)]
    return fit_many("bias", train, val, members, train_config=TC)


def _assert_same(a, b, tol=2e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=tol, rtol=1e-5)


@pytest.mark.parametrize("k, overrides", [(0, {}), (1, {"lr": 3e-3}), (2, {"l2": 0.1, "loss": "huber"})])
def test_members_equal_separate_fits(data, many, k, overrides):
    train, val = data
    single = fit("bias", train, val, key=k, train_config=TC._replace(**overrides), progress=False)
    _assert_same(single.params, many.member_params(k))
    np.testing.assert_allclose([h[k] for h in many.history["val_rmse"]], single.history["val_rmse"], rtol=1e-5)
    assert many.best_epoch[k] == single.best_epoch


def test_smaller_embedding_is_masked(data, many):
    p = many.member_params(3)
    assert many.members[3].embedding_dim == 4 and many.model_config.embedding_dim == 50
    assert np.all(np.asarray(p.user_factors)[:, 4:] == 0) and np.all(np.asarray(p.item_factors)[:, 4:] == 0)
    assert np.any(np.asarray(p.user_factors)[:, :4] != 0)
    # Its predictions only use the first 4 columns.
    train, val = data
    preds = predict_many(many, val.users, val.items)
    x = (p.global_bias + p.user_bias[val.users] + p.item_bias[val.items]
         + np.sum(np.asarray(p.user_factors)[val.users, :4] * np.asarray(p.item_factors)[val.items, :4], axis=1))
    np.testing.assert_allclose(preds[3], x, rtol=1e-5, atol=1e-5)


def test_ensemble_is_the_mean(data, many):
    _, val = data
    preds = predict_many(many, val.users, val.items)
    np.testing.assert_allclose(ensemble_predict(many, val.users, val.items), preds.mean(axis=0), rtol=1e-6)
    ens = ensemble_predict(many, val.users, val.items, clip=(0.5, 5.0), members=[0, 2])
    np.testing.assert_allclose(ens, np.clip(preds[[0, 2]].mean(axis=0), 0.5, 5.0), rtol=1e-6)


# Per epoch (rows) and member (columns): the validation RMSE a fit_many run would record.
# Member 1 is best (0.60, at epoch 2), although member 3 is best at the last epoch and
# member 0 at the first; member 2 diverged at once (NaN throughout) and must never win.
HAND_HISTORY = [
    [0.90, 0.95, np.nan, 0.97],
    [0.85, 0.60, np.nan, 0.80],
    [0.86, 0.75, np.nan, 0.70],
]


def fake_fit_many(history):
    def run(model, train, val, members, **kwargs):
        return many_module.ManyResult(None, {"val_rmse": [np.array(row) for row in history]},
                                      np.zeros(len(members), int), list(members), model, None, None)
    return run


def test_random_search_picks_the_best_epoch_of_the_best_member(monkeypatch):
    monkeypatch.setattr(many_module, "fit_many", fake_fit_many(HAND_HISTORY))
    best, result = random_search("bias", None, None, num_members=4, seed=3)
    assert best == result.members[1]
    # every member diverged: no member can be called best
    monkeypatch.setattr(many_module, "fit_many", fake_fit_many([[np.nan] * 3, [np.nan] * 3]))
    with pytest.raises(ValueError, match="no member has a finite validation RMSE"):
        random_search("bias", None, None, num_members=3, seed=3)


def test_random_search_samples_inside_the_ranges(data):
    train, val = data
    best, result = random_search("bias", train, val, num_members=4, seed=3, lr=(1e-3, 3e-2), l2=(0.5, 0.5),
                                 train_config=TC._replace(epochs=2))
    assert best in result.members and len(result.members) == 4
    assert len({m.lr for m in result.members}) == 4  # sampled, not repeated
    assert all(1e-3 <= m.lr <= 3e-2 and m.l2 == pytest.approx(0.5) for m in result.members)


def test_bad_members():
    r, _ = make_synthetic(jax.random.key(0), 20, 20, 100)
    with pytest.raises(ValueError, match="no members"):
        fit_many("bias", r, None, [])
    with pytest.raises(ValueError, match="unknown loss"):
        fit_many("bias", r, None, [Member(loss="nope")])
    with pytest.raises(ValueError, match="mask by size"):
        fit_many("neumf", r, None, [Member(embedding_dim=4), Member(embedding_dim=8)])


def test_predict_many_validates_indices(many):
    with pytest.raises(ValueError, match="out of range"):
        predict_many(many, [10**6], [0])
    with pytest.raises(ValueError, match="out of range"):
        ensemble_predict(many, [-1], [0])
    with pytest.raises(ValueError, match="users but"):
        predict_many(many, [0, 1], [0])


def test_models_with_training_set_data_are_refused_upfront():
    r, _ = make_synthetic(jax.random.key(0), 20, 20, 100)
    for name in ("svdpp", "timesvd", "fm"):
        with pytest.raises(ValueError, match="train it with fit"):
            fit_many(name, r, None, [Member()])
