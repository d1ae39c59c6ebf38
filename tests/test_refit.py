"""Refit: the epoch count chosen on the validation slice, then the whole training split."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from recsys_jax.data import make_synthetic, random_split
from recsys_jax.training.experiment import refit_on, run_experiment, split_parts
from recsys_jax.models import make_config
from recsys_jax.engine.config import TrainConfig
from recsys_jax.training.fit import fit

CONFIG = make_config("bias", embedding_dim=3)
TC = TrainConfig(epochs=6, batch_size=128, lr=3e-2, l2=0.05, patience=1)


@pytest.fixture(scope="module")
def data():
    ratings, _ = make_synthetic(jax.random.key(3), 120, 60, 2_000, embedding_dim=2, noise_std=0.4)
    return ratings, random_split(ratings, 2, 0.2)


@pytest.fixture(scope="module")
def runs(data):
    ratings, split = data
    kw = dict(seed=2, train_config=TC, model_config=CONFIG)
    return (run_experiment(ratings, split, "bias", refit=True, **kw),
            run_experiment(ratings, split, "bias", refit=False, **kw))


def test_refit_is_a_fit_on_the_whole_training_split_for_the_best_epoch_count(data, runs):
    ratings, split = data
    (rec, result), (rec0, selection) = runs
    # the selection is the same in both runs; its best epoch sets the refit's length
    assert rec["best_epoch"] == rec0["best_epoch"] == selection.best_epoch >= 1
    assert rec["val_rmse"] == rec0["val_rmse"]
    assert rec["refit"] and not rec0["refit"]
    assert rec["refit_seconds"] > 0 and rec0["refit_seconds"] is None
    assert result.train_config.epochs == selection.best_epoch and result.train_config.patience is None
    train_all = ratings.take(split.train)
    assert rec["num_fit"] == len(train_all) == rec["num_train"] + rec["num_val"]
    assert rec0["num_fit"] == rec0["num_train"]
    expected = fit("bias", train_all, None, key=jax.random.key(2), model_config=CONFIG,
                   train_config=TC._replace(epochs=selection.best_epoch, patience=None), progress=False)
    for a, b in zip(jax.tree.leaves(result.params), jax.tree.leaves(expected.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the refit's mean is the whole training split's
    assert result.model_config.mean_rating == pytest.approx(float(np.mean(train_all.ratings)))
    assert rec["selection_history"]["val_rmse"] == selection.history["val_rmse"]
    assert result.trained_items.sum() >= selection.trained_items.sum()


def test_early_stopping_cuts_the_refit(data):
    """With a patience the selection can stop before its last epoch; the refit then runs
    exactly the best epoch's number of epochs."""
    ratings, split = data
    train, val, _ = split_parts(ratings, split, 2)
    tc = TrainConfig(epochs=40, batch_size=128, lr=5e-2, l2=0.0, patience=2, schedule="constant")
    selection = fit("bias", train, val, key=2, model_config=make_config("bias", embedding_dim=8),
                    train_config=tc, progress=False)
    assert selection.best_epoch < len(selection.history["epoch"]) < tc.epochs  # it overfits and stops
    result = refit_on(ratings.take(split.train), selection, seed=2)
    assert len(result.history["epoch"]) == selection.best_epoch
    assert result.history["val_rmse"] == [None] * selection.best_epoch


def test_piecewise_phases_are_cut_at_the_best_epoch(data):
    ratings, split = data
    train, val, _ = split_parts(ratings, split, 2)
    tc = TrainConfig(epochs=5, batch_size=256, schedule="piecewise", phases=((2, 1e-2), (3, 1e-3)))
    selection = fit("bias", train, val, key=2, model_config=CONFIG, train_config=tc, progress=False)
    selection = selection._replace(best_epoch=3)
    result = refit_on(ratings.take(split.train), selection, seed=2)
    assert result.train_config.phases == ((2, 1e-2), (1, 1e-3)) and result.train_config.epochs == 3
