"""A model defined outside the package (scripts/custom_model.py), registered through
`recsys_jax.models.register`, goes through the public API like a built-in one: it trains,
predicts what its formula says, recommends, folds in a new user, saves and loads."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import jax
import numpy as np
import pytest

import recsys_jax
from recsys_jax.models import MODELS, ModelSpec, register

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "custom_model.py"


def load_script():
    spec = importlib.util.spec_from_file_location("custom_model_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def custom():
    module = load_script()
    register(module.SPEC)
    yield module
    MODELS.pop(module.SPEC.name, None)


@pytest.fixture(scope="module")
def trained(custom):
    ratings, _ = recsys_jax.make_synthetic(jax.random.key(0), 120, 80, 4000, embedding_dim=3, noise_std=0.3)
    split = recsys_jax.random_split(ratings, 0, 0.2)
    train, val = ratings.take(split.train), ratings.take(split.test)
    tc = recsys_jax.TrainConfig(epochs=4, batch_size=128, lr=0.02, l2=1e-3, schedule="constant")
    result = recsys_jax.fit("tanh_mf", train, val, key=0, model_config=custom.Config(embedding_dim=3),
                            train_config=tc, progress=False)
    return ratings, train, val, result


def test_registered_and_refused_twice(custom):
    assert recsys_jax.MODELS["tanh_mf"] is custom.SPEC
    assert register(custom.SPEC) is custom.SPEC  # the same spec again: nothing changes
    with pytest.raises(ValueError, match="already registered"):
        register(custom.SPEC._replace(doc="another"))
    with pytest.raises(ValueError, match="already registered"):
        register(ModelSpec("bias", custom.Config, custom.Params, custom.init, custom.apply))
    with pytest.raises(TypeError, match="ModelSpec"):
        register(custom)


def test_fit_learns(trained):
    _, _, _, result = trained
    rmse = result.history["val_rmse"]
    assert result.model == "tanh_mf" and len(rmse) == 4
    assert rmse[-1] < rmse[0]  # training helps on held-out ratings
    assert float(result.params.global_bias) == pytest.approx(3.0, abs=1.0)  # started at the training mean


def test_prediction_is_the_formula(custom, trained):
    ratings, train, _, result = trained
    rec = recsys_jax.to_recommender(ratings, result, train_split=train)
    users, items = train.users[:5], train.items[:5]
    p = result.params
    want = (np.asarray(p.global_bias) + np.asarray(p.user_bias)[users] + np.asarray(p.item_bias)[items]
            + result.model_config.scale * np.tanh(np.sum(np.asarray(p.user_factors)[users]
                                                         * np.asarray(p.item_factors)[items], axis=1)))
    got = rec.predict(rec.user_ids[users], rec.item_ids[items])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_recommend_ranks_unrated_items_by_the_model(trained):
    ratings, train, _, result = trained
    rec = recsys_jax.to_recommender(ratings, result, train_split=train)
    user = int(rec.user_ids[3])
    top = rec.recommend(user, 5)
    seen = set(rec.item_ids[rec.rated_items[rec.rated_indptr[3]:rec.rated_indptr[4]]].tolist())
    assert len(top) == 5 and not seen & set(top.movieId.tolist())
    trained = rec.item_ids[np.asarray(rec.trained_items, bool)]
    candidates = np.array([i for i in trained if i not in seen])
    scores = rec.predict(np.full(len(candidates), user), candidates)
    best = candidates[np.argsort(-scores, kind="stable")[:5]]
    assert top.movieId.tolist() == best.tolist()


def test_fold_in_a_new_user_lowers_their_error(trained):
    ratings, train, _, result = trained
    rec = recsys_jax.to_recommender(ratings, result, train_split=train)
    items = rec.item_ids[:12]
    stars = np.where(np.arange(12) % 2 == 0, 5.0, 1.0)  # a user who loves every other movie
    new = rec.fold_in_user({int(m): float(s) for m, s in zip(items, stars)}, steps=200)
    user = int(new.user_ids[-1])
    folded = new.predict(np.full(12, user), items)
    baseline = float(np.mean(rec.predict(np.full(12, int(rec.user_ids[0])), items)))
    assert np.sqrt(np.mean((folded - stars) ** 2)) < np.sqrt(np.mean((baseline - stars) ** 2))
    np.testing.assert_array_equal(new.predict(rec.user_ids[:3], items[:3]), rec.predict(rec.user_ids[:3], items[:3]))


def test_save_and_load(trained, tmp_path):
    ratings, train, _, result = trained
    rec = recsys_jax.to_recommender(ratings, result, train_split=train)
    path = recsys_jax.save_checkpoint(tmp_path / "tanh", rec)
    again = recsys_jax.load_checkpoint(path)
    assert again.model == "tanh_mf" and again.config == rec.config
    users, items = rec.user_ids[:6], rec.item_ids[:6]
    np.testing.assert_array_equal(again.predict(users, items), rec.predict(users, items))
    for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(rec.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_spec_that_cannot_work_is_refused(custom):
    with pytest.raises(TypeError, match="NamedTuple"):
        register(ModelSpec("broken", dict, custom.Params, custom.init, custom.apply))
    with pytest.raises(ValueError, match="factorization"):
        register(custom.SPEC._replace(name="broken2", factorization="svd"))
    assert "broken" not in MODELS and "broken2" not in MODELS


def test_the_script_runs_quickly(custom, capsys):
    assert custom.main(["--quick"]) == 0  # registering the same spec again changes nothing
    out = capsys.readouterr().out
    assert "tanh_mf: best epoch" in out and "reloaded: tanh_mf" in out
