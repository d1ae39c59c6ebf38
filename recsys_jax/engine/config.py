"""`TrainConfig`: how a model is trained (epochs, batch, optimizer and schedule, penalty, loss,
order of the ratings), read by the engine, the trainers and the presets."""
from __future__ import annotations

from typing import NamedTuple


class TrainConfig(NamedTuple):
    """How a model is trained: epochs, batch size, learning rate and schedule, optimizer,
    penalty, loss, early stopping and the order of the ratings in an epoch."""

    epochs: int = 20
    batch_size: int = 1024
    lr: float = 1e-2
    schedule: str = "one_cycle"  # see recsys_jax.optim.optimizers.SCHEDULES
    phases: tuple | None = None  # ((epochs, lr), ...) for schedule="piecewise"
    weight_decay: float = 0.0  # decoupled (AdamW), matrices only
    l2: float = 0.0  # L2 on embedding rows, per example (recsys_jax.objectives.penalties)
    bias_l2: float = 0.0  # the same on the touched bias entries
    penalty: str = "touched"  # "touched": rows the batch uses; "table": Keras' whole-table l2 per batch
    optimizer: str = "adam"  # "adam" (dense), row-sparse "lazy_adam", "adagrad", "sgd" (recsys_jax.engine.sparse), "als"
    loss: str = "mse"  # a name in recsys_jax.objectives.losses.LOSSES or PARAM_LOSSES
    patience: int | None = None  # stop after this many epochs without a better val RMSE
    order: str = "auto"  # the epoch's order of ratings: "random", "blocked" or "auto" (epoch_grid)
