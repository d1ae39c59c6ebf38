"""Training: the step, the epoch as one compiled loop, the shared loop, and `fit`.

The verbs, from the inside out:

- ``make_objective(apply_fn, loss_fn, penalty_fn) -> objective(params, batch, key)``: the
  masked mean over the batch of ``loss_fn(pred, rating)`` plus the penalty;
  ``make_update(objective, optimizer)`` turns it into one optimizer step
  (``make_train_step`` is that step, jitted).
- ``run_epoch(step, batch_size, state, users, items, ratings, key)``: shuffles the training
  arrays on the device (`recsys_jax.shuffle.permutation`), cuts them into batches (the last
  partial batch is padded and masked, not dropped) and scans ``step`` over them: one
  compiled program per epoch, no Python in the loop. `recsys_jax.engine.make_engine`
  compiles it once per (model, settings, shapes), with the dense or a row-sparse step.
  With ``count`` the arrays are padded (`padded_size`) and the epoch loops over the
  steps the first ``count`` ratings fill: one program for every size that pads alike.
- ``run_loop(engine, state, data, key, ...)``: the loop every trainer shares (divergence
  replay, evaluation, best epoch, early stopping, checkpoint hook, progress bar).
- ``fit(model, train, val, ...)``: initialises, runs that loop with RMSE/MAE on the
  validation ratings after each epoch, and returns the best parameters with a history.

A loss with learned parameters (`recsys_jax.losses.ParamLoss`: a noise variance, ordinal
cut-points) is trained jointly with the model: the trainable pytree is then
``JointParams(model, loss)``, one Adam over both; the penalty reads the model part only,
and predictions are the loss's ``predict`` of the model's output.
"""
from __future__ import annotations

import functools
import math
import time
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array

from recsys_jax import metrics, resume, sharding, sparse
from recsys_jax.data.ratings import Ratings, days
from recsys_jax.engine import RatingObjective, make_engine
from recsys_jax.losses import ParamLoss, get_loss, param_loss_name
from recsys_jax.models import get_model, init_params, make_apply, make_config, static_config
from recsys_jax.optim import step_schedule
from recsys_jax.penalties import make_model_penalty, make_table_l2_penalty
from recsys_jax.predict import predict_indices
from recsys_jax.shuffle import SORT_MAX, Blocks, block_order, blocked_permutation, feistel_permutation, permutation


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


class TrainConfig(NamedTuple):
    epochs: int = 20
    batch_size: int = 1024
    lr: float = 1e-2
    schedule: str = "one_cycle"  # see recsys_jax.optim.SCHEDULES
    phases: tuple | None = None  # ((epochs, lr), ...) for schedule="piecewise"
    weight_decay: float = 0.0  # decoupled (AdamW), matrices only
    l2: float = 0.0  # L2 on embedding rows, per example (recsys_jax.penalties)
    bias_l2: float = 0.0  # the same on the touched bias entries
    penalty: str = "touched"  # "touched": rows the batch uses; "table": Keras' whole-table l2 per batch
    optimizer: str = "adam"  # "adam" (dense), row-sparse "lazy_adam", "adagrad", "sgd" (recsys_jax.sparse), "als"
    loss: str = "mse"  # a name in recsys_jax.losses.LOSSES or PARAM_LOSSES
    patience: int | None = None  # stop after this many epochs without a better val RMSE
    order: str = "auto"  # the epoch's order of ratings: "random", "blocked" or "auto" (epoch_grid)


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
      optimizer: an Optax transformation (e.g. `recsys_jax.optim.make_optimizer`).
      penalty_fn: optional ``penalty(params, users, items, weight, *, times=None) -> float32[]``,
        the weighted sum of per-example penalties (see `recsys_jax.penalties`); ``times`` is
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


def num_batches(num_ratings: int, batch_size: int) -> int:
    return max(math.ceil(num_ratings / batch_size), 1)


def padded_size(num_ratings: int, batch_size: int) -> int | None:
    """The size that `fit` pads ``num_ratings`` ratings to, so that every number of ratings
    in ``(size/2, size]`` trains with one compiled epoch (`recsys_jax.engine.make_engine`'s
    ``shared``); None: the epoch is compiled for the exact number.

    The size is the next power of two, the domain of `recsys_jax.shuffle`'s cipher, so the
    shuffle, and with it the whole epoch, is the exact number's. Not for up to
    `recsys_jax.shuffle.SORT_MAX` ratings (their uniform shuffle sorts a fixed number of
    keys), nor for epochs of 1,000 steps or more, whose fixed-length loop is unrolled
    twice (`run_epoch`): 12% of the notebook's batch-64 epoch.
    """
    if num_ratings <= SORT_MAX or num_batches(num_ratings, batch_size) >= 1000:
        return None
    return 1 << (num_ratings - 1).bit_length()


ORDERS = ("auto", "random", "blocked")
BLOCKED_TABLE_BYTES = 8 << 20  # "auto": the blocked order above this many bytes of user and item tables
MAX_GRID = 8


def epoch_grid(train_config: TrainConfig, params, num_ratings: int) -> int:
    """Blocks per side, ``g``, of the epoch's order (`recsys_jax.shuffle.block_order`); 1: a
    shuffle of all the ratings.

    ``g`` is the largest number up to `MAX_GRID` whose ``g x g`` blocks hold at least 8
    batches each, and at least 2. ``order="auto"`` takes the blocked order for the
    row-sparse optimizers when the model's user and item tables hold more than
    `BLOCKED_TABLE_BYTES` (8 MiB; ml-latest-small's bias tables are 2 MiB, a 5M-rating
    synthetic set's 20 MiB), where their rows no longer stay in the cache: at 5M ratings
    AdaGrad's epoch ran 1.5x faster in blocks of 8 x 8 (6.0-6.1M against 3.9-4.0M ratings/s,
    interleaved `benchmarks.scaling --order` runs on the 2-core CPU, with the first version
    of the order, a cipher per block; the rotation of `recsys_jax.shuffle` is faster still),
    at validation RMSE 0.6053 against 0.5997 after 3 epochs. More blocks cost accuracy: 16 x 16 was 0.02 worse
    than 8 x 8, the batches reading too few rows.
    """
    order = train_config.order
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; known orders: {', '.join(ORDERS)}")
    grid = min(MAX_GRID, math.isqrt(num_ratings // (8 * train_config.batch_size)))
    if order == "blocked":
        return max(grid, 2)
    if order == "random" or train_config.optimizer not in sparse.ROW_OPTIMIZERS:
        return 1
    table_bytes = sum(int(np.prod(v.shape)) * v.dtype.itemsize for name, v in params._asdict().items()
                      if name.split("_", 1)[0] in sparse.SIDES)
    return grid if table_bytes > BLOCKED_TABLE_BYTES and grid >= 2 else 1


def group_by_block(train_config: TrainConfig, params, train: Ratings, times,
                   make_rng: Callable[[], np.random.Generator]) -> tuple[tuple, dict]:
    """The epoch's columns ``(users, items, ratings, times)`` and its extra arguments, in the
    order ``train_config`` names (`epoch_grid`): grouped by block (`recsys_jax.shuffle.block_order`,
    with ``make_rng()``'s random order within each block, each batch-sized run of it then
    sorted by user) and ``{"blocks": ...}`` for the blocked order; as given and ``{}``
    otherwise (ALS has no epoch order)."""
    columns = (train.users, train.items, train.ratings, times)
    grid = 1 if train_config.optimizer == "als" else epoch_grid(train_config, params, len(train))
    if grid == 1:
        return columns, {}
    order, blocks = block_order(train.users, train.items, grid, make_rng(), chunk=train_config.batch_size)
    return tuple(None if a is None else np.asarray(a)[order] for a in columns), {"blocks": blocks}


def make_train_epoch(train_step: Callable, batch_size: int) -> Callable:
    """A jitted ``train_epoch(state, users, items, ratings, key, num_steps=None)``.

    Returns ``(state, losses[num_batches])``. The arrays stay on the device; each epoch
    draws a fresh permutation from ``key``. ``num_steps`` (static) stops after that many
    batches of the same epoch plan: `fit` uses it to replay an epoch up to the last
    finite step.
    """

    @functools.partial(jax.jit, static_argnames="num_steps")
    def train_epoch(state: TrainState, users: Array, items: Array, ratings: Array, key: Array,
                    num_steps: int | None = None, times: Array | None = None):
        return run_epoch(train_step, batch_size, state, users, items, ratings, key, num_steps, times)

    return train_epoch


def run_epoch(train_step: Callable, batch_size: int, state: TrainState, users: Array, items: Array,
              ratings: Array, key: Array, num_steps: int | None = None, times: Array | None = None, *,
              plan=None, count: Array | None = None, blocks: Blocks | None = None):
    """One epoch, traceable: the body of `make_train_epoch` (and of `recsys_jax.many`).

    ``plan`` (a `recsys_jax.sharding.MeshPlan`) splits each batch's examples over the mesh
    and keeps the carried state placed as the plan says after every step; None: one device.

    ``count`` (a traced int32 scalar; see `padded_size`): only the first ``count`` examples
    of the arrays are ratings, the rest padding. The epoch is then exactly the epoch of
    those ``count`` examples alone (the same shuffle, batches, keys and steps), run as a
    loop of ``ceil(count / batch_size)`` steps, so one compiled program trains any number
    of ratings that pads to the same size. The losses of the steps not run are 0.

    ``blocks`` (a `recsys_jax.shuffle.Blocks` over arrays grouped by `recsys_jax.shuffle.block_order`):
    the epoch's order is `recsys_jax.shuffle.blocked_permutation`'s, block after block,
    instead of a shuffle of all the ratings (`epoch_grid`).
    """
    n = users.shape[0]
    nb = num_batches(n, batch_size)
    perm_key, step_key = jax.random.split(key)
    # An O(n) keyed shuffle: jax.random.permutation sorts, and XLA's CPU sort cost more
    # than the epoch itself (see recsys_jax.shuffle).
    if blocks is not None:
        perm = blocked_permutation(perm_key, blocks, n)
    else:
        perm = permutation(perm_key, n) if count is None else feistel_permutation(perm_key, n, count)
    order = jnp.concatenate([perm, jnp.zeros(nb * batch_size - n, jnp.int32)])
    order = order.reshape(nb, batch_size)
    mask = (jnp.arange(nb * batch_size) < (n if count is None else count)).reshape(nb, batch_size)
    keys = jax.random.split(step_key, nb)  # the first k of them are split(step_key, k)'s
    if num_steps is not None:
        order, mask, keys = order[:num_steps], mask[:num_steps], keys[:num_steps]
    batches = Batch(users[order], items[order], ratings[order], mask,  # one gather per epoch
                    None if times is None else times[order])
    if plan is not None:
        batches = plan.constrain_batches(batches)
    if count is not None:
        steps = (count + batch_size - 1) // batch_size
        if num_steps is not None:
            steps = jnp.minimum(steps, num_steps)

        def step(i, carry):
            state, losses = carry
            batch = jax.tree.map(lambda a: a[i], batches)
            state, loss = train_step(state, batch, keys[i])
            return (state if plan is None else plan.constrain(state)), losses.at[i].set(loss)

        return jax.lax.fori_loop(0, steps, step, (state, jnp.zeros(order.shape[0], jnp.float32)))

    def body(state, xs):
        batch, k = xs
        if plan is None:
            return train_step(state, batch, k)
        state, loss = train_step(state, batch, k)
        return plan.constrain(state), loss

    # Many small steps: unrolling the loop twice saved 12% of the notebook's batch-64 epoch
    # (measured on the 2-core CPU); with few steps it only costs compile time.
    return jax.lax.scan(body, state, (batches, keys), unroll=2 if order.shape[0] >= 1000 else 1)


def _all_finite(tree) -> bool:
    return bool(_finite(tree))


@jax.jit
def _finite(tree) -> Array:
    """Whether every floating-point leaf of ``tree`` is finite: one compiled reduction."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def prepare_model(model: str, train: Ratings, model_config=None):
    """What training a model on ``train`` needs before the first step.

    Returns ``(module, config, aux, apply_fn, times)``: the config with ``mean_rating`` set
    to the training mean (and completed by the module's ``configure``), the module's
    ``prepare(train)`` data (or None: it is passed to ``apply_fn`` as ``aux=``),
    ``apply_fn`` with the config bound, and the training ratings' times in days for
    time-aware models (else None).
    """
    module = get_model(model)
    base = model_config if model_config is not None else make_config(model)
    model_config = base._replace(mean_rating=float(np.mean(train.ratings)))
    aux = module.prepare(train, model_config) if hasattr(module, "prepare") else None
    if hasattr(module, "configure"):
        model_config = module.configure(model_config, aux)
    apply_fn = make_apply(model, model_config)
    times = jnp.asarray(days(train.timestamps)) if getattr(module, "USES_TIME", False) else None
    return module, model_config, aux, apply_fn, times


def make_penalty(tc: TrainConfig, module=None, model_config=None, aux=None) -> Callable:
    """The penalty that ``tc`` names: L2 on the touched rows, or on whole tables (Keras).

    "touched" is the penalty of the objective written in ``module``'s docstring
    (`recsys_jax.penalties.make_model_penalty`: the module's own ``penalty`` if it has one).
    """
    if tc.penalty == "touched":
        return make_model_penalty(module, model_config, aux, tc.l2, tc.bias_l2)
    if tc.penalty == "table":
        if tc.bias_l2:
            raise ValueError("penalty='table' is Keras' l2 on the factor tables; bias_l2 must be 0")
        return make_table_l2_penalty(tc.l2)
    raise ValueError(f"penalty must be 'touched' or 'table', got {tc.penalty!r}")


class FitResult(NamedTuple):
    params: Any  # the best parameters (by validation RMSE when there is a validation set)
    history: dict  # lists per epoch: epoch, train_loss, val_rmse, val_mae, seconds
    model: str
    model_config: Any
    train_config: TrainConfig
    best_epoch: int
    state: Any = None  # the final TrainState (the last finite one if training diverged)
    stop_reason: str | None = None  # why training ended early, e.g. a non-finite loss
    aux: Any = None  # the model's constant data from its prepare(train), if it has one
    loss_params: Any = None  # the best epoch's loss parameters, when the loss is a ParamLoss
    loss: ParamLoss | None = None  # that ParamLoss: ratings are loss.predict(loss_params, apply(params, ...))
    trained_users: np.ndarray | None = None  # bool[U]: users with at least one training rating
    trained_items: np.ndarray | None = None  # bool[I]: items with at least one training rating
    compile_seconds: float = 0.0  # spent compiling the epoch in this fit (0 when it was compiled already)

    def predict_link(self) -> dict:
        """Keyword arguments for `recsys_jax.predict.predict_indices`: the loss's ``predict``."""
        return {} if self.loss is None else {"link": self.loss.predict, "link_params": self.loss_params}


def fit(
    model: str,
    train: Ratings,
    val: Ratings | None = None,
    *,
    key: Array | int = 0,
    model_config=None,
    train_config: TrainConfig = TrainConfig(),
    loss_fn: Callable | None = None,
    penalty_fn: Callable | None = None,
    progress: bool = True,
    on_epoch: Callable[[int, dict], None] | None = None,
    checkpoint_dir: str | None = None,
    checkpoint_every: int = 1,
    mesh=None,
) -> FitResult:
    """Trains the model registered as ``model`` on ``train``.

    Args:
      model: a name in `recsys_jax.models.MODELS`.
      train: training ratings (the id maps fix the table sizes).
      val: optional validation ratings, scored after every epoch (RMSE, MAE, predictions
        clipped to the rating scale); the best epoch's parameters are returned, and with
        ``train_config.patience`` training stops once it has not improved for that long.
      key: a `jax.random` key or an int seed: it fixes the initialisation, the shuffles
        and the dropout masks, so the same key gives the same parameters.
      model_config: the model's ``Config``; ``mean_rating`` is set to the training mean.
      train_config: epochs, batch size, learning rate and schedule, regularisation, loss.
      loss_fn: a custom element-wise loss ``(predictions, targets) -> per-example``, or a
        `recsys_jax.losses.ParamLoss` (trained jointly: its ``init(train)`` parameters are
        returned as ``loss_params``, its ``predict`` turns scores into the validation
        predictions); overrides ``train_config.loss``, which may also name a ParamLoss.
      penalty_fn: a custom ``penalty(params, users, items, weight) -> scalar`` (the
        weighted sum over the batch; for time-aware models it is also passed ``times=``);
        overrides ``train_config.l2`` / ``bias_l2``.
      progress: show a tqdm bar over epochs.
      on_epoch: called as ``on_epoch(epoch, record)`` after every epoch.
      checkpoint_dir: if set, the training progress is saved there (atomically) every
        ``checkpoint_every`` epochs, and a run started with the same folder, data, configs
        and key resumes from it, ending with the same parameters as an uninterrupted run.
      mesh: a one-axis `jax.sharding.Mesh` (`recsys_jax.sharding.make_mesh`) to train on:
        the embedding tables and their optimizer state split by rows over its devices,
        each batch by examples, the rest replicated (`recsys_jax.sharding`). The returned
        parameters stay on the mesh (unpadded); checkpoints hold plain arrays and load with
        any device count. None: the default device, the unchanged one-device program.

    A non-finite loss or parameter stops training: the result carries the last finite
    state and a ``stop_reason`` naming the epoch and step, and a warning is issued.
    """
    if isinstance(key, (int, np.integer)):
        key = jax.random.key(int(key))
    tc = train_config
    if len(train) == 0:
        raise ValueError("fit: the training set is empty")
    if tc.epochs < 1 or tc.batch_size < 1:
        raise ValueError(f"fit: epochs and batch_size must be >= 1, got {tc.epochs}, {tc.batch_size}")
    if tc.order not in ORDERS:
        raise ValueError(f"fit: unknown order {tc.order!r}; known orders: {', '.join(ORDERS)}")
    module, model_config, aux, apply_fn, times = prepare_model(model, train, model_config)
    val_times = days(val.timestamps) if times is not None and val is not None else None
    plan = sharding.as_plan(mesh)
    if plan is not None and tc.order == "blocked":
        raise ValueError("fit: order='blocked' trains on one device; use order 'random' or 'auto' on a mesh")
    if plan is not None and tc.batch_size % plan.size:
        raise ValueError(f"fit: batch_size ({tc.batch_size}) must be a multiple of the number of devices in "
                         f"the mesh ({plan.size}): each device takes the same share of every batch")
    if hasattr(module, "fit_epochs"):
        if plan is not None:
            raise ValueError(f"fit: model {model!r} trains itself (its module's fit_epochs) on one device; "
                             "it takes no mesh")
        if loss_fn is not None or penalty_fn is not None or checkpoint_dir is not None:
            raise ValueError(f"fit: model {model!r} trains itself (its module's fit_epochs); it takes no custom "
                             "loss_fn or penalty_fn and no checkpoint_dir")
        return _fit_self(module, model, train, val, key, model_config, tc, aux, apply_fn, progress, on_epoch)

    loss_fn = loss_fn if loss_fn is not None else get_loss(tc.loss)
    param_loss = loss_fn if isinstance(loss_fn, ParamLoss) else None
    if param_loss is not None and param_loss_name(param_loss) is not None:
        tc = tc._replace(loss=param_loss_name(param_loss))  # record the loss actually trained
    # One engine per (model, settings, data size), cached: a second fit of the same shapes
    # compiles nothing. A custom penalty is part of the key; the named one is built inside.
    # Where the ratings pad to a shared size (padded_size), the number of ratings and the
    # schedule's step counts are arguments of the compiled epoch instead, and the epoch
    # count is left out of the key: fits of 72k and of 81k ratings, for 5 epochs or for 3,
    # run one program.
    capacity = padded_size(len(train), tc.batch_size) if plan is None and tc.optimizer != "als" else None
    objective = RatingObjective(loss_fn)
    if capacity is None:
        engine = get_engine(model, apply_fn, static_config(model_config), objective, penalty_fn, tc,
                            num_batches(len(train), tc.batch_size), param_loss is not None,
                            *(() if plan is None else (plan,)))
    else:
        engine = get_engine(model, apply_fn, static_config(model_config), objective, penalty_fn,
                            tc._replace(epochs=1, patience=None), 0, param_loss is not None, shared=True)

    run_key = key
    key, init_key = jax.random.split(key)
    # One compiled program per table sizes, the training mean its argument (init_params).
    params = init_params(model, init_key, train.num_users, train.num_items, model_config)
    if param_loss is not None:
        params = JointParams(params, param_loss.init(train))
    if plan is not None and getattr(module, "ROW_LOCAL", False):
        # Zero rows up to a multiple of the device count, so that every table can be split:
        # a row-local model never reads them and they stay zero. Other models may relate a
        # table's size to their data (SVD++'s implicit lists): their uneven tables are replicated.
        params = plan.pad(params)
    state = engine.init(params)
    if plan is not None:
        state = plan.put(state)

    def unpad(tree):  # what leaves fit (result, progress on disk): the tables' true sizes
        return tree if plan is None else sharding.unpad_rows(tree, train.num_users, train.num_items)

    def evaluate(params) -> tuple[dict, float | None]:
        if param_loss is None:
            return val_scores(apply_fn, params, val, train.rating_scale, aux, val_times)
        link = {"link": param_loss.predict, "link_params": params.loss}
        return val_scores(apply_fn, params.model, val, train.rating_scale, aux, val_times, **link)

    history: dict[str, list] = {k: [] for k in ("epoch", "train_loss", "val_rmse", "val_mae", "seconds")}
    best, start, after_epoch = Best(math.inf, state.params, 0), 1, None
    if checkpoint_dir is not None:
        fp = resume.fingerprint(model, model_config, tc, train, run_key)
        saved = resume.load_progress(checkpoint_dir, unpad(state), unpad(state.params), fp)
        if saved is not None:
            state, history, start = saved.state, saved.history, saved.epoch + 1
            best = Best(saved.best_score, saved.best_params, saved.best_epoch)
            if plan is not None:
                pad = plan.pad if getattr(module, "ROW_LOCAL", False) else (lambda tree: tree)
                state, best = plan.put(pad(state)), best._replace(params=plan.put(pad(best.params)))

        def after_epoch(epoch, state, history, best):
            if epoch % checkpoint_every == 0 or epoch == tc.epochs:
                progress = resume.Progress(unpad(state), epoch, history, best.score, unpad(best.params), best.epoch)
                resume.save_progress(checkpoint_dir, progress, fp)

    columns, extra = (train.users, train.items, train.ratings, times), {}
    if plan is None:  # grouped by block once for the blocked order; each epoch runs through the blocks
        columns, extra = group_by_block(tc, params, train, times, lambda: np.random.default_rng(
            np.asarray(jax.random.key_data(jax.random.fold_in(init_key, 1)))))
    if capacity is None:
        data = EpochData(*(jnp.asarray(a) for a in columns[:3]), None if times is None else jnp.asarray(columns[3]),
                         aux, extra or None)
    else:  # zeros after the ratings, which the epoch never reads
        def padded(a):
            return jnp.asarray(np.pad(np.asarray(a), (0, capacity - len(train))))

        steps = num_batches(len(train), tc.batch_size)
        counts = step_schedule(tc.schedule, tc.lr, phases=tc.phases).counts_for(tc.epochs * steps, steps)
        data = EpochData(*(padded(a) for a in columns[:3]), None if times is None else padded(columns[3]), aux,
                         {"count": np.int32(len(train)), "counts": counts, **extra}, steps)
    if plan is not None:  # read once per epoch to cut the batches: on every device
        data = EpochData(*sharding.put_replicated(plan, (train.users, train.items, train.ratings)),
                         *sharding.put_replicated(plan, (times, aux)))
    state, best, stop_reason, compile_seconds = run_loop(
        engine, state, data, key, epochs=range(start, tc.epochs + 1), evaluate=evaluate, history=history,
        best=best, patience=tc.patience, on_epoch=on_epoch, after_epoch=after_epoch,
        desc=f"fit {model}" if progress else None, caller="fit")
    best_params, best_epoch, state = unpad(best.params), best.epoch, unpad(state)
    seen = {"trained_users": np.bincount(train.users, minlength=train.num_users) > 0,
            "trained_items": np.bincount(train.items, minlength=train.num_items) > 0}
    seen["compile_seconds"] = compile_seconds
    if param_loss is None:
        return FitResult(best_params, history, model, model_config, tc, best_epoch, state, stop_reason, aux, **seen)
    return FitResult(best_params.model, history, model, model_config, tc, best_epoch, state, stop_reason, aux,
                     best_params.loss, param_loss, **seen)


def val_scores(apply_fn, params, val: Ratings | None, scale, aux=None, times=None, **link
               ) -> tuple[dict, float | None]:
    """``({"val_rmse", "val_mae"}, rmse)`` of ``params`` on ``val``, predictions clipped to
    ``scale``; ``({... None}, None)`` without validation ratings."""
    if val is None or not len(val):
        return {"val_rmse": None, "val_mae": None}, None
    pred = predict_indices(apply_fn, params, val.users, val.items, clip=scale, aux=aux, times=times, **link)
    rmse = metrics.rmse(pred, val.ratings)
    return {"val_rmse": rmse, "val_mae": metrics.mae(pred, val.ratings)}, rmse


def _fit_self(module, model, train, val, key, model_config, tc, aux, apply_fn, progress, on_epoch) -> FitResult:
    """`fit` for a model that trains itself: its ``fit_epochs`` yields ``(params, train_loss)``
    after each epoch (a Gibbs sweep, a closed-form solve, an epoch of its own optimiser);
    validation, the best epoch, early stopping and progress are the same as for the engine."""
    history: dict[str, list] = {k: [] for k in ("epoch", "train_loss", "val_rmse", "val_mae", "seconds")}
    best = Best(math.inf, None, 0)
    epochs = module.fit_epochs(key, train, model_config, tc, aux)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=tc.epochs, desc=f"fit {model}", unit="epoch", leave=False)
    t0 = time.perf_counter()
    for epoch, (params, train_loss) in enumerate(epochs, start=1):
        scores, score = val_scores(apply_fn, params, val, train.rating_scale, aux)
        record = {"epoch": epoch, "train_loss": float(train_loss), **scores, "seconds": time.perf_counter() - t0}
        score = -epoch if score is None else score  # no validation: the last epoch wins
        for k, v in record.items():
            history[k].append(v)
        if score < best.score:
            best = Best(score, params, epoch)
        if bar is not None:
            bar.update()
        if on_epoch is not None:
            on_epoch(epoch, record)
        if epoch >= tc.epochs or (tc.patience is not None and epoch - best.epoch >= tc.patience):
            break
        t0 = time.perf_counter()
    if bar is not None:
        bar.close()
    if best.epoch == 0:
        raise ValueError(f"fit: model {model!r} yielded no epoch")
    seen = {"trained_users": np.bincount(train.users, minlength=train.num_users) > 0,
            "trained_items": np.bincount(train.items, minlength=train.num_items) > 0}
    return FitResult(best.params, history, model, model_config, tc, best.epoch, None, None, aux, **seen)


class Best(NamedTuple):
    """The best epoch so far: its score (lower is better), parameters and number (0: none)."""

    score: float
    params: Any
    epoch: int


class EpochData(NamedTuple):
    """What the compiled epoch reads besides the state and the key."""

    users: Array  # int32[N]
    items: Array  # int32[N]
    ratings: Array  # float32[N] (ignored by ranking objectives)
    times: Array | None = None  # float32[N] days, for time-aware models
    aux: Any = None  # the model's constant data from its prepare(train)
    # For an engine made with shared=True: {"count", "counts"} (the ratings among the
    # padded arrays, the schedule's step counts), and the steps an epoch runs.
    shared: dict | None = None
    steps: int | None = None


def run_loop(engine, state: TrainState, data: EpochData, key: Array, *, epochs: range, evaluate: Callable,
             history: dict, best: Best, patience: int | None = None, on_epoch: Callable | None = None,
             after_epoch: Callable | None = None, desc: str | None = None,
             caller: str = "fit") -> tuple[TrainState, Best, str | None, float]:
    """The epoch loop that every trainer shares (`fit`, `recsys_jax.ranking.fit_ranking`).

    Each epoch: the engine's compiled epoch with key ``fold_in(key, epoch)``; on a
    non-finite loss or parameter, the epoch is replayed up to its last finite step and the
    loop stops (a warning names the step); otherwise ``evaluate(params) -> (metrics, score)``
    (score None: the last epoch wins), a record ``{epoch, train_loss, **metrics, seconds}``
    appended to ``history``, the best kept, ``after_epoch(epoch, state, history, best)``
    (checkpointing) and ``on_epoch(epoch, record)`` called, and early stopping after
    ``patience`` epochs without a better score. ``desc`` shows a tqdm bar.

    Returns ``(state, best, stop_reason, compile_seconds)``; ``seconds`` in the history
    excludes compilation.
    """
    stop_reason, compile_seconds = None, 0.0
    bar = None
    if desc is not None:
        from tqdm.auto import tqdm

        bar = epochs = tqdm(epochs, desc=desc, unit="epoch", leave=False)
    args = (data.users, data.items, data.ratings)
    shared = data.shared or {}
    for epoch in epochs:
        if patience is not None and best.epoch and epoch - 1 - best.epoch >= patience:
            break  # a resumed run that had already stopped early
        epoch_key = jax.random.fold_in(key, epoch)
        compiled, seconds = engine.compile(state, *args, epoch_key, times=data.times, aux=data.aux, **shared)
        compile_seconds += seconds
        t0 = time.perf_counter()
        new_state, losses = compiled(state, *args, epoch_key, times=data.times, aux=data.aux, **shared)
        losses = np.asarray(losses)[: data.steps]  # waits for the epoch to finish
        if not (np.all(np.isfinite(losses)) and _all_finite(new_state.params)):
            replay = functools.partial(engine.run, aux=data.aux, **shared)
            state, stop_reason = _last_finite(replay, state, args, epoch_key, losses, epoch, data.times, caller)
            warnings.warn(stop_reason, RuntimeWarning, stacklevel=3)
            if best.epoch == 0:
                best = best._replace(params=state.params)
            break
        state = new_state
        scores, score = evaluate(state.params)
        record = {"epoch": epoch, "train_loss": float(np.mean(losses)), **scores,
                  "seconds": time.perf_counter() - t0}
        for k, v in record.items():
            history[k].append(v)
        score = -epoch if score is None else score
        if score < best.score:
            best = Best(score, state.params, epoch)
        if after_epoch is not None:
            after_epoch(epoch, state, history, best)
        if bar is not None:
            bar.set_postfix(loss=f"{record['train_loss']:.4f}", **{k: v for k, v in scores.items() if v is not None})
        if on_epoch is not None:
            on_epoch(epoch, record)
        if patience is not None and epoch - best.epoch >= patience:
            break
    if bar is not None:
        bar.close()
    return state, best, stop_reason, compile_seconds


def get_engine(*key, **options):
    """`recsys_jax.engine.make_engine`, cached when the settings are hashable."""
    try:
        hash(key)
    except TypeError:  # e.g. a custom loss object that defines __eq__ without __hash__
        return make_engine.__wrapped__(*key, **options)
    return make_engine(*key, **options)


def _last_finite(train_epoch, state, data, epoch_key, losses, epoch, times=None,
                 caller: str = "fit") -> tuple[TrainState, str]:
    """Replays the epoch from ``state`` up to the last step whose result is finite."""
    bad = int(np.argmin(np.isfinite(losses))) if not np.all(np.isfinite(losses)) else len(losses)
    steps = bad
    while steps > 0:
        replayed, _ = train_epoch(state, *data, epoch_key, num_steps=steps, times=times)
        if _all_finite(replayed.params):
            state = replayed
            break
        steps -= 1
    what = f"loss {losses[bad]}" if bad < len(losses) else "parameters"
    reason = (f"{caller}: non-finite {what} in epoch {epoch}, step {steps + 1} of {len(losses)} (global step "
              f"{int(state.step) + 1}); training stopped with the last finite state. Lower the learning "
              "rate or raise the regularisation.")
    return state, reason
