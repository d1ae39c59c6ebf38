"""Training regimens per model: ``default`` (tuned here) and ``notebook`` (the course's).

``default`` for dot, bias and mlp was chosen by a small search on a validation slice (10%)
carved from the training split of ml-latest-small (random 80/20, split seed 0); the test
split of seed 0 was not looked at. The test rows of other split seeds overlap seed 0's
training data, so for them these defaults are not strictly held out; the accuracy
benchmark's ``tuned`` rows are (nested: each split tuned on its own training split). The
later models start from the bias model's regimen; SVD++'s (10 epochs, ``l2=0.12``) was
chosen on the same validation slice of split seed 0, with Koren's penalty on y_j for
every j in N(u) and y starting at 0. ``python -m benchmarks.tune`` runs the
documented grid for every model on a slice of the training split and the accuracy
benchmark reports its choice as ``tuned``.
Regularisation is the L2 term of each model's written objective, per example
(`recsys_jax.objectives.penalties.make_model_penalty`); the schedule is one-cycle; the optimizer is dense
Adam, except for bias: lazy Adam, as accurate there and faster (see its entry).

``notebook`` is the course notebook as `NOTEBOOK.md` states it, cell by cell: Adam
(epsilon 1e-8), mean squared error, Keras' ``l2(1e-4)`` on the whole user and item factor
tables added to every mini-batch (``penalty="table"``), embeddings (bias tables included)
initialised U(-0.05, 0.05), no global mean, trained on the whole training part with the
last epoch as the result (no validation slice, no early stopping), and the regimen of
successive ``fit`` calls as a piecewise schedule of ``(epochs, lr)`` phases:

- dot: 1 epoch at 1e-3, 3 at 1e-2, 6 at 1e-3 (batch 64);
- bias: 1 epoch at 1e-2, 6 at 1e-2, 10 at 1e-3 (batch 64);
- mlp: 10 + 5 epochs at 1e-3 (batch 128).

``notebook_as_run`` is the same, at the rate each model's optimizer was created with
throughout: the notebook changed rates with ``model.optimizer.lr = x``, which under
Keras 1 never reached the compiled training function, so as executed it did not anneal.

Besides a `TrainConfig` a preset may fix model options (`model_options`) and the share of
the training split carved off for validation (`val_frac`; 0 for the notebook presets).
"""
from __future__ import annotations

from typing import Any, NamedTuple

from recsys_jax.engine.config import TrainConfig

PRESETS: dict[str, dict[str, TrainConfig]] = {
    "default": {
        "dot": TrainConfig(epochs=10, batch_size=1024, lr=1e-2, schedule="one_cycle", l2=0.1),
        # Lazy Adam (recsys_jax.engine.sparse: only the rows a batch touches) at Adam's settings: on the
        # validation slice of seed 0's training split (benchmarks.tune's protocol) as accurate as dense
        # Adam, and faster (5 epochs, on the CPU). AdaGrad (lr 0.03, 0.1, 0.3) and SGD fell clearly short
        # at this size; dot and gmf lost accuracy with lazy Adam: they keep dense Adam.
        "bias": TrainConfig(epochs=5, batch_size=1024, lr=1e-2, schedule="one_cycle", l2=0.1, optimizer="lazy_adam"),
        "mlp": TrainConfig(epochs=8, batch_size=1024, lr=3e-3, schedule="one_cycle"),
        "gmf": TrainConfig(epochs=10, batch_size=1024, lr=1e-2, schedule="one_cycle", l2=0.1),
        "neumf": TrainConfig(epochs=8, batch_size=1024, lr=3e-3, schedule="one_cycle", l2=0.01),
        # Chosen on the validation slice of seed 0's training split (benchmarks.tune's protocol),
        # where it validates better than bias; batch 4096 (cheaper steps) validated worse at best.
        "svdpp": TrainConfig(epochs=10, batch_size=1024, lr=1e-2, schedule="one_cycle", l2=0.12),
        "timesvd": TrainConfig(epochs=5, batch_size=1024, lr=1e-2, schedule="one_cycle", l2=0.1),
        "fm": TrainConfig(epochs=5, batch_size=1024, lr=1e-2, schedule="one_cycle", l2=0.1),
        # GLocal-K trains itself (recsys_jax.models.glocalk): an epoch is 10 full-batch Adam steps;
        # glocalk.Config.pretrain_epochs = 8 pre-train and the rest fine-tune (fresh Adam at lr / 5); l2 is only fold-in's
        # ridge (the autoencoder's lambdas are glocalk.Config's, the paper's ML-100K values). Chosen on the
        # validation slice of seed 0's training split (val RMSE, best epoch): lr 5e-3 over 1e-2;
        # weight_l2 20 over 10, 30, 40, 60; kernel_l2 0.006 over 0.03; 2 hidden layers over 1; 100 hidden
        # units over 200 (which validated a hair better, but made the fit with the refit much longer);
        # uncentred inputs over centred; Adam over L-BFGS (far longer to compile).
        # The 100 epochs are a cap; the patience ends the run. With a cap of 14 (before), planted data
        # of ML-100K's size (943 x 1,682, 100,000 ratings, split seed 0) stopped at the cap with the
        # validation RMSE still falling (0.7787; test 0.7771); with 100 its fine-tuning runs to epoch 90
        # (best 87: validation 0.6780, test 0.6521). On ml-latest-small the patience stops every split
        # seed by epoch 15 (best epochs 12, 9, 7, 9, 9), so the cap changes none of them.
        "glocalk": TrainConfig(epochs=100, lr=5e-3, l2=0.1, patience=3),
        # knn fits itself in one "epoch" (baselines, then neighbour lists) and reads no TrainConfig
        # field; its settings are knn.Config's (see recsys_jax/models/knn.py for how they were chosen).
        "knn": TrainConfig(epochs=1),
        # AutoRec trains itself (recsys_jax.models.autorec): batch_size counts items, l2 is the paper's
        # lambda on the summed squared error. Chosen with the model defaults (k=100, input_dropout=0.5,
        # kept_weight=0.3) by a small search on the validation slice of seed 0's training split:
        # k in {50, 100, 200, 500}, lambda in {1.5, 5, 15, 30, 60, 100}, dropout 0-0.8, kept weight
        # {0, 0.1, 0.3, 1}, batches of 128 or 256 items; the choice validates better than bias there.
        "autorec": TrainConfig(epochs=20, batch_size=128, lr=3e-3, schedule="one_cycle", l2=5.0),
        # BPMF samples itself (recsys_jax.models.bpmf): an epoch is one Gibbs sweep; no other field applies.
        # Chosen with bpmf.Config's defaults on the validation slice of seed 0's training split (val RMSE
        # of the posterior mean, all better than bias): at 60 sweeps biases with alpha = 2 about as good as
        # no biases, alpha sampled worse; 120 sweeps (100 slots), alpha 1.5 and K = 20 (a longer
        # run) a little better still; init_scale 0.3 over 0.1 (fewer sweeps to leave 0) and 0.5.
        "bpmf": TrainConfig(epochs=100),
        # The Bayesian FM samples itself (recsys_jax.models.bfm): an epoch is one Gibbs sweep, 256 as
        # Rendle et al. 2019 and myFM's examples run it; its priors are the usual vague ones
        # (bfm.PRIOR), and nothing was tuned on ml-latest-small.
        "bfm": TrainConfig(epochs=256),
        # iALS solves itself (recsys_jax.models.ials): an epoch is one alternation (3 CG steps a row);
        # 15 as Hu et al. and the implicit library run it; no other field applies. Its settings
        # are ials.Config's (chosen there, on the validation slice of seed 0's training split).
        "ials": TrainConfig(epochs=15),
        # EASE is a closed form (recsys_jax.models.ease): one epoch; its l2 is ease.Config's.
        "ease": TrainConfig(epochs=1),
    },
    "notebook": {
        "dot": TrainConfig(epochs=10, batch_size=64, schedule="piecewise", l2=1e-4, penalty="table",
                           phases=((1, 1e-3), (3, 1e-2), (6, 1e-3))),
        "bias": TrainConfig(epochs=17, batch_size=64, schedule="piecewise", l2=1e-4, penalty="table",
                            phases=((1, 1e-2), (6, 1e-2), (10, 1e-3))),
        "mlp": TrainConfig(epochs=15, batch_size=128, schedule="piecewise", l2=1e-4, penalty="table",
                           phases=((10, 1e-3), (5, 1e-3))),
    },
    "notebook_as_run": {
        "dot": TrainConfig(epochs=10, batch_size=64, schedule="constant", lr=1e-3, l2=1e-4, penalty="table"),
        "bias": TrainConfig(epochs=17, batch_size=64, schedule="constant", lr=1e-2, l2=1e-4, penalty="table"),
        "mlp": TrainConfig(epochs=15, batch_size=128, schedule="constant", lr=1e-3, l2=1e-4, penalty="table"),
    },
}

# Keras' Embedding initialiser U(-0.05, 0.05) and no global mean (the raw output is the rating).
_KERAS = {"init": "uniform", "init_scale": 0.05}
MODEL_OPTIONS: dict[str, dict[str, dict]] = {
    "notebook": {"dot": _KERAS, "bias": {**_KERAS, "global_mean": False}, "mlp": {**_KERAS, "global_mean": False}},
    # AutoRec's budget in Adam steps, not in passes over the catalogue: 76 steps an epoch is one pass
    # over ml-latest-small's 9,724 movies in batches of 128 (where its settings were chosen), and
    # stays 76 on a smaller or larger catalogue (recsys_jax.models.autorec, "The budget").
    "default": {"autorec": {"steps_per_epoch": 76}},
}
MODEL_OPTIONS["notebook_as_run"] = MODEL_OPTIONS["notebook"]
VAL_FRAC = {"notebook": 0.0, "notebook_as_run": 0.0}  # the notebook keeps its last epoch
DEFAULT_VAL_FRAC = 0.1

# `recsys-jax train --tune` (recsys_jax.training.tune): per model, the values searched, TrainConfig
# fields (``train``) and model options (``model``). The engine's models search the learning
# rate, the L2 weight and the epoch count (the schedule spans the epochs), the grid
# `benchmarks.tune` runs; models that train themselves search what their module names as their
# regularisation or size.
ENGINE_SPACE = {"train": {"lr": [3e-3, 1e-2, 3e-2], "l2": [0.03, 0.1, 0.3], "epochs": [5, 10]}, "model": {}}
SEARCH_SPACE: dict[str, dict[str, dict[str, list]]] = {
    "autorec": {"train": {"l2": [1.5, 5.0, 15.0, 30.0], "lr": [1e-3, 3e-3]}, "model": {"embedding_dim": [100, 200]}},
    "glocalk": {"train": {"lr": [2e-3, 5e-3]}, "model": {"weight_l2": [10.0, 20.0, 40.0], "pretrain_epochs": [6, 8, 10]}},
    "bpmf": {"train": {}, "model": {"embedding_dim": [10, 20, 32]}},
    "bfm": {"train": {}, "model": {"embedding_dim": [8, 10, 16]}},
    "knn": {"train": {}, "model": {"k": [20, 40, 80], "shrinkage": [25.0, 100.0]}},
}


def get_preset(preset: str, model: str) -> TrainConfig:
    """The ``TrainConfig`` of ``preset`` for ``model``; a clear error for unknown names."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
    if model not in PRESETS[preset]:
        raise ValueError(f"the {preset!r} preset has no regimen for {model!r}; it has: {', '.join(PRESETS[preset])}")
    return PRESETS[preset][model]


def settle_optimizer(tc: TrainConfig, model: str) -> TrainConfig:
    """``tc``, with dense Adam in place of a row-sparse optimizer that cannot train it: a loss
    with learned parameters, a whole-table penalty or weight decay moves every row at every
    step (`recsys_jax.engine.build.row_sparse_obstacle`). For a preset's optimizer: the CLI applies it
    only when ``--optimizer`` is not given, so a named optimizer still fails with the reason."""
    from recsys_jax.engine.build import row_sparse_obstacle
    from recsys_jax.objectives.losses import ParamLoss, get_loss
    from recsys_jax.engine.sparse import ROW_OPTIMIZERS

    if tc.optimizer not in ROW_OPTIMIZERS:  # adam, als, or an unknown name that fit reports
        return tc
    if row_sparse_obstacle(model, tc, joint=isinstance(get_loss(tc.loss), ParamLoss)):
        return tc._replace(optimizer="adam")
    return tc


def model_options(preset: str, model: str) -> dict:
    """Model options (`recsys_jax.models.make_config` overrides) that ``preset`` fixes."""
    get_preset(preset, model)
    return dict(MODEL_OPTIONS.get(preset, {}).get(model, {}))


def val_frac(preset: str) -> float:
    """The share of the training split carved off for validation under ``preset``."""
    return VAL_FRAC.get(preset, DEFAULT_VAL_FRAC)


_preset_val_frac = val_frac  # `resolve`'s argument of the same name shadows it there


class Resolved(NamedTuple):
    """What a preset resolves to for one model, overrides applied (`resolve`)."""

    train_config: TrainConfig
    model_config: Any  # the model's Config
    val_frac: float


def resolve(preset: str, model: str, *, model_overrides: dict | None = None, val_frac: float | None = None,
            **train_overrides) -> Resolved:
    """``preset``'s regimen for ``model`` with overrides: the one policy that `recsys-jax
    train` and Python callers share.

    ``train_overrides`` are `TrainConfig` fields (a value of None is no override);
    ``model_overrides`` are model options (`recsys_jax.models.make_config`), over those
    the preset fixes; ``val_frac`` replaces the preset's validation share. Three rules:

    - without an ``optimizer`` override, the preset's row-sparse optimizer gives way to
      dense Adam where it cannot train these settings (`settle_optimizer`); a named one
      is kept, and fails at fit with the reason;
    - an ``lr`` override replaces a piecewise schedule's annealing by a constant rate
      (its phases set the rates); asking for both ``lr`` and ``schedule="piecewise"`` is
      an error;
    - a preset whose epochs are a cap that its patience ends (glocalk's) needs the
      validation slice: ``val_frac=0`` without an ``epochs`` override is an error, not
      a silent run to the cap.
    """
    from recsys_jax.models import get_model, make_config

    tc = preset_tc = get_preset(preset, model)
    unknown = set(train_overrides) - set(TrainConfig._fields)
    if unknown:
        raise ValueError(f"resolve: TrainConfig has no field(s) {sorted(unknown)}")
    given = {k: v for k, v in train_overrides.items() if v is not None}
    tc = tc._replace(**given)
    if "optimizer" not in given:
        tc = settle_optimizer(tc, model)
    if "lr" in given and tc.schedule == "piecewise":
        if given.get("schedule") == "piecewise":
            raise ValueError("--lr has no effect on a piecewise schedule: its phases set the learning rates")
        tc = tc._replace(schedule="constant")
    spec = get_model(model)
    options = {**model_options(preset, model), **(model_overrides or {})}
    if tc.loss == "ordinal" and "ordinal" in spec.Config._fields:
        options.setdefault("ordinal", True)  # a model with its own ordinal likelihood (bfm's probit)
    model_config = make_config(model, **options)
    if val_frac is None:
        # A model that ranks keeps its last epoch (no rating to validate on), and so does a
        # sampler whose mean improves with every sweep (keeps_last): a validation slice would
        # only be left out of a fit, then refit on.
        val_frac = 0.0 if spec.ranks or spec.keeps_last else _preset_val_frac(preset)
    if not val_frac and preset_tc.patience is not None and "epochs" not in given:
        raise ValueError(f"the {preset!r} preset trains {model!r} until the validation RMSE stops improving "
                         f"(patience {preset_tc.patience}, at most {preset_tc.epochs} epochs); with no validation slice "
                         f"(val_frac 0) give the epochs (--epochs)")
    return Resolved(tc, model_config, float(val_frac))
