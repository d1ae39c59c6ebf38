"""The settings search on the training split (recsys_jax.training.tune, ``train --tune``)."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from recsys_jax.data import make_synthetic
from recsys_jax.training import tune
from recsys_jax.training.presets import resolve


@pytest.fixture(scope="module")
def train_all():
    ratings, _ = make_synthetic(jax.random.key(4), 100, 80, 3000, embedding_dim=2, noise_std=0.3)
    return ratings


@pytest.fixture(scope="module")
def searched(train_all):
    r = resolve("default", "bias", epochs=2)
    seen = []
    out = tune.search(train_all, "bias", seed=0, budget=1e9, train_config=r.train_config, model_config=r.model_config,
                      val_frac=r.val_frac, report=seen.append, fixed={"epochs", "l2"})
    return r, out, seen


def test_the_preset_runs_first_then_every_point_once_and_the_lowest_search_val_rmse_wins(searched):
    r, out, seen = searched
    assert seen == out.trials and len(out.trials) == out.num_candidates
    assert "lr" not in out.trials[0]  # the preset's own settings, first
    # epochs and l2 were fixed by the caller: lr alone searched, the preset's 1e-2 not twice
    assert sorted(t["lr"] for t in out.trials[1:]) == [3e-3, 3e-2]
    assert all(set(t) == {"lr", "search_val_rmse", "seconds"} for t in out.trials[1:])
    best = min(out.trials, key=lambda t: t["search_val_rmse"])
    assert best["search_val_rmse"] == pytest.approx(min(t["search_val_rmse"] for t in out.trials))
    assert out.choice == {k: v for k, v in best.items() if k == "lr"}
    assert out.train_config == r.train_config._replace(**out.choice) and out.train_config.epochs == 2


def test_a_spent_budget_keeps_the_preset(train_all):
    r = resolve("default", "bias", epochs=2)
    out = tune.search(train_all, "bias", seed=0, budget=1e-9, train_config=r.train_config,
                      model_config=r.model_config, val_frac=r.val_frac)
    assert len(out.trials) == 1 and out.choice == {} and out.train_config == r.train_config


def test_the_search_split_and_order_come_from_the_seed():
    a, b = tune.search_split(1000, 3), tune.search_split(1000, 3)
    np.testing.assert_array_equal(a.test, b.test)
    assert len(a.test) == 100 and not set(a.test) & set(a.train)
    assert tune.candidates(tune.ENGINE_SPACE, 1) == tune.candidates(tune.ENGINE_SPACE, 1)
    assert tune.candidates(tune.ENGINE_SPACE, 1) != tune.candidates(tune.ENGINE_SPACE, 2)
    assert len(tune.candidates(tune.ENGINE_SPACE, 1)) == 18


def test_what_cannot_be_searched_is_a_clear_error(train_all):
    r = resolve("default", "bias")
    with pytest.raises(ValueError, match="ranks items"):
        tune.space_for("ials")
    with pytest.raises(ValueError, match="positive number of seconds"):
        tune.search(train_all, "bias", seed=0, budget=0, train_config=r.train_config, model_config=r.model_config)
    with pytest.raises(ValueError, match="at least 20 ratings"):
        tune.search(train_all.take(np.arange(10)), "bias", seed=0, budget=5, train_config=r.train_config,
                    model_config=r.model_config)
    for model, space in tune.SEARCH_SPACE.items():  # every named setting exists
        from recsys_jax.models import get_model
        from recsys_jax.engine.config import TrainConfig

        assert set(space["model"]) <= set(get_model(model).Config._fields), model
        assert set(space["train"]) <= set(TrainConfig._fields), model


def test_train_tune_searches_the_training_split_then_trains_the_choice(tmp_path):
    import json

    from conftest import run_cli
    from test_evaluate import movielens_folder

    root = movielens_folder(tmp_path / "ml")
    code, out, err = run_cli(["train", "--data-dir", root, "--no-download", "--model", "bias", "--epochs", "2",
                              "--l2", "0.1", "--tune", "1e-9", "--no-save", "--json"])
    assert code == 0, err
    record = json.loads(out.strip().splitlines()[-1])
    tuned = record["tuned"]
    # a spent budget: the preset's own settings alone, the given epochs and l2 kept out of the search
    assert tuned["choice"] == {} and len(tuned["trials"]) == 1 and tuned["candidates"] == 3
    assert "tune  chose the preset" in out and record["train_config"]["l2"] == 0.1
    code, out, err = run_cli(["train", "--data-dir", root, "--no-download", "--model", "ials", "--tune", "5",
                              "--no-save"])
    assert code != 0 and "ranks items" in err


def test_a_searched_rate_replaces_a_piecewise_schedule_as_lr_does():
    nb = resolve("notebook", "bias").train_config
    assert nb.schedule == "piecewise"
    assert tune.settled(nb, {"lr": 3e-2}).schedule == "constant"
    assert tune.settled(nb, {"l2": 0.3}) == nb._replace(l2=0.3)  # the phases still set the rates


def test_tune_and_resume_dir_together_are_refused(tmp_path):
    from conftest import run_cli
    from test_evaluate import movielens_folder

    root = movielens_folder(tmp_path / "ml")
    code, _, err = run_cli(["train", "--data-dir", root, "--no-download", "--model", "bias", "--tune", "5",
                            "--resume-dir", tmp_path / "r", "--no-save"])
    assert code != 0 and "--resume-dir" in err and not (tmp_path / "r").exists()
