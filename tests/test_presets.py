"""The one policy that `recsys-jax train` and Python callers share: a preset resolved with
overrides (`recsys_jax.training.presets.resolve`), and a split made by protocol
(`recsys_jax.data.make_split`)."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from recsys_jax.data import make_split, make_synthetic, random_split, temporal_split, user_split
from recsys_jax.training.presets import DEFAULT_VAL_FRAC, get_preset, resolve


def test_no_overrides_is_the_preset():
    tc, config, val_frac = resolve("default", "bias")
    assert tc == get_preset("default", "bias") and tc.optimizer == "lazy_adam"
    assert config.embedding_dim == type(config)().embedding_dim and val_frac == DEFAULT_VAL_FRAC


def test_overrides_replace_fields_and_none_is_no_override():
    tc, _, _ = resolve("default", "bias", epochs=3, batch_size=None, l2=0.5)
    want = get_preset("default", "bias")
    assert (tc.epochs, tc.batch_size, tc.l2) == (3, want.batch_size, 0.5)


def test_a_row_sparse_preset_gives_way_to_adam_only_when_not_asked_for():
    # a loss with learned parameters moves every row at every step: lazy Adam cannot train it
    assert resolve("default", "bias", loss="ordinal").train_config.optimizer == "adam"
    assert resolve("default", "bias", loss="huber").train_config.optimizer == "lazy_adam"  # element-wise: kept
    named = resolve("default", "bias", loss="ordinal", optimizer="lazy_adam").train_config
    assert named.optimizer == "lazy_adam"  # asked for by name: kept, and fit says why it cannot


def test_lr_replaces_a_piecewise_schedule():
    notebook = get_preset("notebook", "bias")
    assert notebook.schedule == "piecewise"
    tc, config, val_frac = resolve("notebook", "bias", lr=0.003)
    assert (tc.schedule, tc.lr) == ("constant", 0.003)
    assert val_frac == 0.0 and config.init == "uniform" and not config.global_mean  # the preset's model options
    with pytest.raises(ValueError, match="piecewise"):
        resolve("notebook", "bias", lr=0.003, schedule="piecewise")


def test_model_overrides_go_over_the_presets_options_and_val_frac_over_its_share():
    _, config, val_frac = resolve("notebook", "bias", model_overrides={"embedding_dim": 8}, val_frac=0.25)
    assert (config.embedding_dim, config.init, config.init_scale) == (8, "uniform", 0.05)
    assert val_frac == 0.25


def test_a_cap_that_the_patience_ends_needs_the_validation_slice():
    cap = get_preset("default", "glocalk")
    assert cap.patience is not None and cap.epochs > 50  # epochs are a cap; the patience ends the run
    assert resolve("default", "glocalk").val_frac > 0
    with pytest.raises(ValueError, match=r"patience 3, at most 100 epochs.*val_frac 0.*--epochs"):
        resolve("default", "glocalk", val_frac=0.0)
    tc, _, val_frac = resolve("default", "glocalk", val_frac=0.0, epochs=12)
    assert (tc.epochs, val_frac) == (12, 0.0)
    # a patience asked for on a preset without one leaves its epochs as they are
    assert resolve("default", "bias", val_frac=0.0, patience=2).train_config.epochs == get_preset("default", "bias").epochs


def test_bad_names_are_clear_errors():
    with pytest.raises(ValueError, match="no field"):
        resolve("default", "bias", learning_rate=0.1)
    with pytest.raises(ValueError, match="unknown preset"):
        resolve("nope", "bias")
    with pytest.raises(ValueError, match="no option"):
        resolve("default", "bias", model_overrides={"depth": 3})


@pytest.fixture(scope="module")
def ratings():
    return make_synthetic(jax.random.key(0), 30, 20, 200, embedding_dim=2)[0]


def test_make_split_is_each_protocols_split(ratings):
    pairs = [(make_split(ratings, "random", seed=3, test_frac=0.3), random_split(ratings, 3, 0.3)),
             (make_split(ratings, "user", seed=3, test_frac=0.3), user_split(ratings, 3, 0.3)),
             (make_split(ratings, "temporal", last_k=2), temporal_split(ratings, k=2))]
    for got, want in pairs:
        np.testing.assert_array_equal(got.train, want.train)
        np.testing.assert_array_equal(got.test, want.test)
    with pytest.raises(ValueError, match="unknown split protocol"):
        make_split(ratings, "kfold")
