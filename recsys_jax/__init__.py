"""recsys_jax: collaborative filtering on MovieLens in JAX.

The stable face of the package (as ``optax.adam``): the names most programs need, each
defined in the layer that owns it. The layers, each importing only from those above it:

==============  ===============================================================================
``data``        MovieLens variants (download, verify, parse, cache), a user's ratings file,
                `Ratings`, splits, synthetic data
``optim``       optimizers and learning-rate schedules (Optax)
``models``      one module per model and the registry `MODELS`
``objectives``  element-wise losses, penalties, ranking losses
``engine``      the step, the compiled epoch, row-sparse updates, shuffles, CPU kernels, the
                program store, sharding, ALS
``eval``        batched prediction, rating and ranking metrics
``training``    `fit` (the loop), resume, presets, experiments, `fit_many`, blends, ranking
``use``         `Recommender`, fold-in, checkpoints, exploration and plots
``cli``         the ``recsys-jax`` command: parsing, then the calls above
==============  ===============================================================================

Importing ``recsys_jax`` loads none of them: each name below is imported on first use.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from recsys_jax._version import __version__

# name -> the module that defines it
_FACE = {
    "Ratings": "recsys_jax.data.ratings",
    "DataError": "recsys_jax.data.ratings",
    "UnknownIdError": "recsys_jax.data.ratings",
    "load_movielens": "recsys_jax.data.movielens",
    "load_ratings": "recsys_jax.data.files",
    "random_split": "recsys_jax.data.split",
    "user_split": "recsys_jax.data.split",
    "temporal_split": "recsys_jax.data.split",
    "kfold_split": "recsys_jax.data.split",
    "make_synthetic": "recsys_jax.data.synthetic",
    "MODELS": "recsys_jax.models",
    "make_config": "recsys_jax.models",
    "LOSSES": "recsys_jax.objectives.losses",
    "TrainConfig": "recsys_jax.engine.config",
    "fit": "recsys_jax.training.fit",
    "FitResult": "recsys_jax.training.fit",
    "fit_many": "recsys_jax.training.many",
    "get_preset": "recsys_jax.training.presets",
    "run_experiment": "recsys_jax.training.experiment",
    "Recommender": "recsys_jax.use.recommender",
    "to_recommender": "recsys_jax.use.recommender",
    "save_checkpoint": ("recsys_jax.use.checkpoint", "save"),
    "load_checkpoint": ("recsys_jax.use.checkpoint", "load"),
}

__all__ = [
    "__version__",
    "Ratings",
    "DataError",
    "UnknownIdError",
    "load_movielens",
    "load_ratings",
    "random_split",
    "user_split",
    "temporal_split",
    "kfold_split",
    "make_synthetic",
    "MODELS",
    "make_config",
    "LOSSES",
    "TrainConfig",
    "fit",
    "FitResult",
    "fit_many",
    "get_preset",
    "run_experiment",
    "Recommender",
    "to_recommender",
    "save_checkpoint",
    "load_checkpoint",
]


def __getattr__(name: str):
    where = _FACE.get(name)
    if where is None:
        raise AttributeError(f"module 'recsys_jax' has no attribute {name!r}")
    module, attr = where if isinstance(where, tuple) else (where, name)
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)


if TYPE_CHECKING:  # the same names, for readers and type checkers
    from recsys_jax.data.files import load_ratings
    from recsys_jax.data.movielens import load_movielens
    from recsys_jax.data.ratings import DataError, Ratings, UnknownIdError
    from recsys_jax.data.split import kfold_split, random_split, temporal_split, user_split
    from recsys_jax.data.synthetic import make_synthetic
    from recsys_jax.engine.config import TrainConfig
    from recsys_jax.models import MODELS, make_config
    from recsys_jax.objectives.losses import LOSSES
    from recsys_jax.training.experiment import run_experiment
    from recsys_jax.training.fit import FitResult, fit
    from recsys_jax.training.many import fit_many
    from recsys_jax.training.presets import get_preset
    from recsys_jax.use.checkpoint import load as load_checkpoint
    from recsys_jax.use.checkpoint import save as save_checkpoint
    from recsys_jax.use.recommender import Recommender, to_recommender
