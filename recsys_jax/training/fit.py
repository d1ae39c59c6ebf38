"""Training: `fit`.

``fit(model, train, val, ...)`` initialises, runs the loop every trainer shares
(`recsys_jax.training.loop.run_loop`: the engine's compiled epoch, or the model's own
``fit_epochs``) with RMSE/MAE on the validation ratings after each epoch, and returns the
best parameters with a history.

The step and the epoch it runs are the engine's (`recsys_jax.engine.step`,
`recsys_jax.engine.epoch`, `recsys_jax.engine.build.make_engine`).
"""
from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from recsys_jax.data.ratings import Ratings, days
from recsys_jax.engine import sharding
from recsys_jax.engine.build import RatingObjective, init_params, make_engine
from recsys_jax.engine.config import TrainConfig
from recsys_jax.engine.options import EngineOptions, resolve_options
from recsys_jax.engine.epoch import ORDERS, group_by_block, num_batches, padded_size
from recsys_jax.engine.step import JointParams
from recsys_jax.eval import metrics
from recsys_jax.eval.predict import predict_indices
from recsys_jax.models import get_model, make_apply, make_config, static_config
from recsys_jax.objectives.losses import ParamLoss, get_loss, param_loss_name
from recsys_jax.optim.optimizers import step_schedule
from recsys_jax.training import resume
from recsys_jax.training.loop import Best, EpochData, engine_trainer, first_best, generator_trainer, run_loop


def prepare_model(model: str, train: Ratings, model_config=None):
    """What training a model on ``train`` needs before the first step.

    Returns ``(spec, config, aux, apply_fn, times)``: the model's `ModelSpec`, the config with
    ``mean_rating`` set to the training mean (and completed by the spec's ``configure``), the spec's
    ``prepare(train)`` data (or None: it is passed to ``apply_fn`` as ``aux=``),
    ``apply_fn`` with the config bound, and the training ratings' times in days for
    time-aware models (else None).
    """
    spec = get_model(model)
    base = model_config if model_config is not None else make_config(model)
    model_config = base._replace(mean_rating=float(np.mean(train.ratings)))
    aux = spec.prepare(train, model_config) if spec.prepare is not None else None
    if spec.configure is not None:
        model_config = spec.configure(model_config, aux)
    apply_fn = make_apply(model, model_config)
    times = jnp.asarray(days(train.timestamps)) if spec.uses_time else None
    return spec, model_config, aux, apply_fn, times


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
        """Keyword arguments for `recsys_jax.eval.predict.predict_indices`: the loss's ``predict``."""
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
    options: EngineOptions | None = None,
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
        `recsys_jax.objectives.losses.ParamLoss` (trained jointly: its ``init(train)`` parameters are
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
      mesh: a one-axis `jax.sharding.Mesh` (`recsys_jax.engine.sharding.make_mesh`) to train on:
        the embedding tables and their optimizer state split by rows over its devices,
        each batch by examples, the rest replicated (`recsys_jax.engine.sharding`). The returned
        parameters stay on the mesh (unpadded); checkpoints hold plain arrays and load with
        any device count. None: the default device, the unchanged one-device program.
      options: the engine's `recsys_jax.engine.options.EngineOptions` (the CPU kernels, the
        program store); None resolves them here, once (`resolve_options`: the kernels on
        unless ``RECSYS_JAX_KERNELS=off``, no program store).

    A non-finite loss or parameter stops training: the result carries the last finite
    state and a ``stop_reason`` naming the epoch and step, and a warning is issued.
    """
    if isinstance(key, (int, np.integer)):
        key = jax.random.key(int(key))
    tc = train_config
    if options is None:
        options = resolve_options()
    if len(train) == 0:
        raise ValueError("fit: the training set is empty")
    if tc.epochs < 1 or tc.batch_size < 1:
        raise ValueError(f"fit: epochs and batch_size must be >= 1, got {tc.epochs}, {tc.batch_size}")
    if tc.order not in ORDERS:
        raise ValueError(f"fit: unknown order {tc.order!r}; known orders: {', '.join(ORDERS)}")
    spec, model_config, aux, apply_fn, times = prepare_model(model, train, model_config)
    val_times = days(val.timestamps) if times is not None and val is not None else None
    plan = sharding.as_plan(mesh)
    if plan is not None and tc.order == "blocked":
        raise ValueError("fit: order='blocked' trains on one device; use order 'random' or 'auto' on a mesh")
    if plan is not None and tc.batch_size % plan.size:
        raise ValueError(f"fit: batch_size ({tc.batch_size}) must be a multiple of the number of devices in "
                         f"the mesh ({plan.size}): each device takes the same share of every batch")
    if spec.fit_epochs is not None:
        if plan is not None:
            raise ValueError(f"fit: model {model!r} trains itself (its spec's fit_epochs) on one device; "
                             "it takes no mesh")
        if loss_fn is not None or penalty_fn is not None or (checkpoint_dir is not None and spec.initial_carry is None):
            raise ValueError(f"fit: model {model!r} trains itself (its spec's fit_epochs); it takes no custom "
                             "loss_fn or penalty_fn" + ("" if spec.initial_carry else " and no checkpoint_dir"))
        return _fit_self(spec, model, train, val, key, model_config, tc, aux, apply_fn, progress, on_epoch, options,
                         checkpoint_dir)

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
                            *(() if plan is None else (plan,)), options=options)
    else:
        engine = get_engine(model, apply_fn, static_config(model_config), objective, penalty_fn,
                            tc._replace(epochs=1, patience=None), 0, param_loss is not None, shared=True,
                            options=options)

    run_key = key
    key, init_key = jax.random.split(key)
    # One compiled program per table sizes, the training mean its argument (init_params).
    params = init_params(model, init_key, train.num_users, train.num_items, model_config,
                         store=options.program_store)
    if param_loss is not None:
        params = JointParams(params, param_loss.init(train))
    if plan is not None and spec.row_local:
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
    best, start, after_epoch = first_best(state.params), 1, None
    if checkpoint_dir is not None:
        fp = resume.fingerprint(model, model_config, tc, train, run_key, options)
        saved = resume.load_progress(checkpoint_dir, unpad(state), unpad(state.params), fp)
        if saved is not None:
            state, history, start = saved.state, saved.history, saved.epoch + 1
            best = Best(saved.best_score, saved.best_params, saved.best_epoch)
            if plan is not None:
                pad = plan.pad if spec.row_local else (lambda tree: tree)
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
        engine_trainer(engine, data, "fit"), state, key, epochs=range(start, tc.epochs + 1), evaluate=evaluate,
        history=history, best=best, patience=tc.patience, on_epoch=on_epoch, after_epoch=after_epoch,
        desc=f"fit {model}" if progress else None)
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


SELF_SAVE_SECONDS = 10.0  # a model that trains itself saves its progress at most this often (and at the end)


def _fit_self(spec, model, train, val, key, model_config, tc, aux, apply_fn, progress, on_epoch, options,
              checkpoint_dir=None) -> FitResult:
    """`fit` for a model that trains itself: its ``fit_epochs`` yields ``(params, train_loss)``
    after each epoch (a Gibbs sweep, a closed-form solve, an epoch of its own optimiser),
    driven by the same loop as the engine (`recsys_jax.training.loop.generator_trainer`).
    With ``checkpoint_dir`` (a model with ``initial_carry``), its carry is saved there after
    an epoch at most every `SELF_SAVE_SECONDS` and after the last (a chain's epochs take
    milliseconds and its store megabytes), and a run with the same folder resumes from it."""
    history: dict[str, list] = {k: [] for k in ("epoch", "train_loss", "val_rmse", "val_mae", "seconds")}
    best, start, after_epoch, resumed = first_best(None), 1, None, {}
    if checkpoint_dir is not None:
        fp = resume.fingerprint(model, model_config, tc, train, key, options)
        like = spec.initial_carry(key, train, model_config, aux)
        like_params = spec.init(key, train.num_users, train.num_items, model_config)
        saved = resume.load_progress(checkpoint_dir, like, like_params, fp)
        resumed["start"] = like  # the chain before its first epoch: the generator need not build it again
        if saved is not None:
            resumed["start"], history, start = saved.state, saved.history, saved.epoch + 1
            best = Best(saved.best_score, saved.best_params, saved.best_epoch)
        last_save = [time.perf_counter()]

        def after_epoch(epoch, state, history, best):
            if epoch == tc.epochs or time.perf_counter() - last_save[0] >= SELF_SAVE_SECONDS:
                resume.save_progress(checkpoint_dir, resume.Progress(state, epoch, history, best.score, best.params,
                                                                     best.epoch), fp)
                last_save[0] = time.perf_counter()

        resumed["carry"] = True
    trainer = generator_trainer(spec.fit_epochs(key, train, model_config, tc, aux, options, **resumed))

    def evaluate(params):
        if spec.ranks:  # its scores are not ratings: no RMSE to choose by, the last epoch is kept
            return {"val_rmse": None, "val_mae": None}, None
        return val_scores(apply_fn, params, val, train.rating_scale, aux)

    _, best, _, _ = run_loop(
        trainer, None, key, epochs=range(start, tc.epochs + 1), evaluate=evaluate, history=history,
        best=best, patience=tc.patience, on_epoch=on_epoch, after_epoch=after_epoch,
        desc=f"fit {model}" if progress else None)
    if best.epoch == 0:
        raise ValueError(f"fit: model {model!r} yielded no epoch")
    seen = {"trained_users": np.bincount(train.users, minlength=train.num_users) > 0,
            "trained_items": np.bincount(train.items, minlength=train.num_items) > 0}
    return FitResult(best.params, history, model, model_config, tc, best.epoch, None, None, aux, **seen)


def get_engine(*key, **kw):
    """`recsys_jax.engine.build.make_engine`, cached when the settings are hashable."""
    try:
        hash(key)
    except TypeError:  # e.g. a custom loss object that defines __eq__ without __hash__
        return make_engine.__wrapped__(*key, **kw)
    return make_engine(*key, **kw)


