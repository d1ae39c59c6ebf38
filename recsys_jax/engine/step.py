"""The step: an objective on a batch and one optimizer update of it.

- ``make_objective(apply_fn, loss_fn, penalty_fn) -> objective(params, batch, key)``: the
  masked mean over the batch of ``loss_fn(pred, rating)`` plus the penalty;
  ``make_update(objective, optimizer)`` turns it into one optimizer step
  (``make_train_step`` is that step, jitted).
- ``make_ranking_objective``: the same for a ranking loss of positive pairs against
  sampled items (`recsys_jax.objectives.ranking`).

A loss with learned parameters (`recsys_jax.objectives.losses.ParamLoss`: a noise variance,
ordinal cut-points) is trained jointly with the model: the trainable pytree is then
``JointParams(model, loss)``, one Adam over both; the penalty reads the model part only,
and predictions are the loss's ``predict`` of the model's output.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import Array

from recsys_jax.engine.config import TrainConfig
from recsys_jax.objectives.losses import ParamLoss
from recsys_jax.objectives.penalties import make_model_penalty, make_table_l2_penalty


class TrainState(NamedTuple):
    params: Any  # the model's Params pytree
    opt_state: Any  # optax state
    step: Array  # int32[]


class JointParams(NamedTuple):
    """The trainable pytree when the loss has parameters of its own (a `ParamLoss`)."""

    model: Any  # the model's Params
    loss: Any  # the loss's Params


class Batch(NamedTuple):
    users: Array  # int32[B]
    items: Array  # int32[B]
    ratings: Array  # float32[B]
    mask: Array  # bool[B]; False on the padding of the last batch
    times: Array | None = None  # float32[B] days since the epoch, for time-aware models


def make_train_step(
    apply_fn: Callable,
    loss_fn: Callable,
    optimizer: optax.GradientTransformation,
    penalty_fn: Callable | None = None,
) -> Callable:
    """A jitted ``train_step(state, batch, key) -> (state, loss)``.

    Args:
      apply_fn: ``apply(params, users[B], items[B], key=None) -> float32[B]``.
      loss_fn: element-wise ``loss(predictions, targets) -> float32[B]``, or a `ParamLoss`
        (then ``state.params`` is a `JointParams`).
      optimizer: an Optax transformation (e.g. `recsys_jax.optim.optimizers.make_optimizer`).
      penalty_fn: optional ``penalty(params, users, items, weight, *, times=None) -> float32[]``,
        the weighted sum of per-example penalties (see `recsys_jax.objectives.penalties`); ``times`` is
        passed (as a keyword) only when the batch has times, i.e. for time-aware models.

    The gradient of the embedding tables is left to autodiff (the transpose of the row
    gathers is a scatter-add into the tables); a hand-written "gather rows once, segment-sum
    back" variant was measured slower on CPU and dropped.
    """

    return jax.jit(make_update(make_objective(apply_fn, loss_fn, penalty_fn), optimizer))


def make_objective(apply_fn: Callable, loss_fn: Callable, penalty_fn: Callable | None = None) -> Callable:
    """``objective(params, batch, key) -> float32[]``: the masked mean of loss + penalty.

    With a `ParamLoss`, ``params`` is a `JointParams`: the model scores the batch with
    ``params.model``, the loss reads ``params.loss``, the penalty ``params.model`` only.
    """
    joint = isinstance(loss_fn, ParamLoss)

    def objective(params, batch: Batch, key: Array) -> Array:
        weight = batch.mask.astype(jnp.float32)
        kw = {} if batch.times is None else {"times": batch.times}
        model_params = params.model if joint else params
        pred = apply_fn(model_params, batch.users, batch.items, key, **kw)
        per_example = loss_fn.loss(params.loss, pred, batch.ratings) if joint else loss_fn(pred, batch.ratings)
        total = jnp.sum(per_example * weight)
        if penalty_fn is not None:
            total = total + penalty_fn(model_params, batch.users, batch.items, weight, **kw)
        return total / jnp.maximum(jnp.sum(weight), 1.0)

    return objective


def make_update(objective: Callable, optimizer: optax.GradientTransformation) -> Callable:
    """``update(state, batch, key) -> (state, loss)``: one optimizer step on ``objective``."""

    def update(state: TrainState, batch: Batch, key: Array) -> tuple[TrainState, Array]:
        loss, grads = jax.value_and_grad(objective)(state.params, batch, key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, opt_state, state.step + 1), loss

    return update


def make_penalty(tc: TrainConfig, spec=None, model_config=None, aux=None) -> Callable:
    """The penalty that ``tc`` names: L2 on the touched rows, or on whole tables (Keras).

    "touched" is the penalty of the objective written in the model's docstring
    (`recsys_jax.objectives.penalties.make_model_penalty`: the ``penalty`` of its ``spec`` if
    it has one).
    """
    if tc.penalty == "touched":
        return make_model_penalty(spec, model_config, aux, tc.l2, tc.bias_l2)
    if tc.penalty == "table":
        if tc.bias_l2:
            raise ValueError("penalty='table' is Keras' l2 on the factor tables; bias_l2 must be 0")
        return make_table_l2_penalty(tc.l2)
    raise ValueError(f"penalty must be 'touched' or 'table', got {tc.penalty!r}")


def make_ranking_objective(apply_fn: Callable, loss_fn: Callable, num_items: int, num_negatives: int,
                           penalty_fn: Callable | None = None) -> Callable:
    """``objective(params, batch, key) -> float32[]``: the masked mean of the ranking loss.

    ``batch.users``/``batch.items`` are positive pairs (``batch.ratings`` is ignored);
    ``key`` draws ``num_negatives`` items per pair uniformly from ``0..num_items-1`` (and
    the dropout masks of the positive and negative scores). The penalty, if any, sees the
    positive pairs.
    """

    def objective(params, batch: Batch, key: Array) -> Array:
        neg_key, pos_dropout, neg_dropout = jax.random.split(key, 3)
        weight = batch.mask.astype(jnp.float32)
        b = batch.users.shape[0]
        negatives = jax.random.randint(neg_key, (b, num_negatives), 0, num_items, jnp.int32)
        pos = apply_fn(params, batch.users, batch.items, pos_dropout)
        neg = apply_fn(params, jnp.repeat(batch.users, num_negatives), negatives.reshape(-1), neg_dropout)
        total = jnp.sum(loss_fn(pos, neg.reshape(b, num_negatives)) * weight)
        if penalty_fn is not None:
            total = total + penalty_fn(params, batch.users, batch.items, weight)
        return total / jnp.maximum(jnp.sum(weight), 1.0)

    return objective
