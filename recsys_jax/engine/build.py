"""The training engine: one compiled epoch per (model, configuration, shapes), reused.

`make_engine` builds, once per key and cached for the process, what `recsys_jax.training.fit.fit`
runs: ``init(params) -> TrainState`` and a jitted ``epoch(state, data, key)`` (shuffle on
the device, one compiled loop over the steps). Everything derived from the data is an
*argument* of the compiled epoch, never a constant baked into it: the ratings, the model's
``aux`` (SVD++'s implicit lists, timeSVD's per-user mean day), the rating times. The
training mean only sets the initial parameters (`recsys_jax.models.make_apply` drops it
from the config that the compiled functions see), so a second split of the same size
reuses the compiled program. Nor need the size match: on one device `fit` pads the
ratings to the next power of two (`recsys_jax.engine.epoch.padded_size`) and passes their number
and the schedule's step counts (`recsys_jax.optim.optimizers.StepSchedule`) as arguments
(``shared=True``), so an experiment's selection fit (90% of the training split) and its
refit (all of it, for the best epoch count) run one program; the epoch is then a loop of
exactly the steps the ratings fill, the same epoch as the exact size's (tested).
For tables larger than the cache, `fit` groups the ratings into blocks of users by items
once and passes the blocks (`recsys_jax.engine.shuffle.Blocks`) to the epoch, which then runs
through them one at a time (`recsys_jax.engine.epoch.epoch_grid`).
`Engine.compile` compiles ahead of time and reports how long
that took, so fit times are reported with and without compilation; with JAX's persistent
compilation cache (`recsys_jax.engine.programs.enable_compile_cache`, on by default in the CLI)
a new process loads the compiled program from disk instead of compiling it, and with a program
store (`recsys_jax.engine.options.EngineOptions.program_store`, the CLI's beside that cache)
it loads the executable without tracing the epoch at all.

The step is either

- dense (``optimizer="adam"``): Optax Adam (AdamW with ``weight_decay``) on the whole
  parameter pytree, the gradient of each table a scatter-add of the batch's rows; or
- row-sparse (``"lazy_adam"``, ``"adagrad"``, ``"sgd"``): `recsys_jax.engine.sparse`, touching only
  the rows the batch uses, for models whose spec is ``row_local``;

or, with ``optimizer="als"``, no step at all: `recsys_jax.engine.als.AlsEngine` (same face)
solves every user's and item's row in closed form each epoch (dot, bias; squared error).
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from recsys_jax.engine import als, kernels, programs, sparse
from recsys_jax.engine.epoch import run_epoch
from recsys_jax.engine.options import EngineOptions
from recsys_jax.engine.sharding import SIDES, take_rows
from recsys_jax.engine.step import (
    JointParams,
    TrainState,
    make_objective,
    make_penalty,
    make_ranking_objective,
    make_update,
)
from recsys_jax.models import get_model, make_apply, static_config
from recsys_jax.models._common import Local, Offset, initial_offset
from recsys_jax.objectives.losses import LOSSES, PARAM_LOSSES, mse
from recsys_jax.optim.optimizers import make_optimizer, make_schedule, step_schedule

OPTIMIZERS = ("adam", "lazy_adam", "adagrad", "sgd", "als")


class Engine(NamedTuple):
    init: Callable  # params -> TrainState
    # jitted (state, users, items, ratings, key, num_steps=None, times=None, aux=None, count=None,
    # counts=None, blocks=None); count and counts only for an engine made with shared=True;
    # blocks (recsys_jax.engine.shuffle.Blocks): the blocked order, recsys_jax.engine.epoch.run_epoch
    epoch: Callable
    compiled: dict  # (num_steps, argument shapes) -> compiled epoch
    optimizer: str
    # What make_engine was built from, named (recsys_jax.engine.programs: the compiled epoch is kept
    # on disk under it); None when a setting has no name (a custom loss or penalty function).
    identity: str | None = None
    # The hand-written CPU kernel the step calls (recsys_jax.engine.kernels), or None: XLA's own step.
    kernel: str | None = None
    # What it was built with (recsys_jax.engine.options): the kernels, the program store.
    options: EngineOptions = EngineOptions()

    def compile(self, state, users, items, ratings, key, *, num_steps=None, times=None, aux=None, **shared):
        """``(compiled_epoch, seconds)``: the epoch compiled for these argument shapes
        (0 seconds when it already was, in this process). ``shared``: ``count`` and
        ``counts`` for an engine made with ``shared=True`` (`make_engine`), ``blocks``
        for the blocked order (`recsys_jax.engine.epoch.run_epoch`)."""
        args = (state, users, items, ratings, key, times, aux, shared)
        # The placement is part of the signature: the same shapes on a mesh are another program.
        sig = (num_steps, jax.tree.structure(args),
               tuple((tuple(x.shape), str(x.dtype), getattr(x, "sharding", None)) for x in jax.tree.leaves(args)))
        if sig in self.compiled:
            return self.compiled[sig], 0.0
        fn, seconds, _ = programs.compile(self.epoch, (state, users, items, ratings, key),
                                          {"times": times, "aux": aux, **shared}, self.identity,
                                          {"num_steps": num_steps}, store=self.options.program_store,
                                          kernels=self.options.kernels)
        self.compiled[sig] = fn
        return fn, seconds

    def run(self, state, users, items, ratings, key, *, num_steps=None, times=None, aux=None, **shared):
        """One epoch: ``(state, losses[num_batches])``, compiling first if needed."""
        fn, _ = self.compile(state, users, items, ratings, key, num_steps=num_steps, times=times, aux=aux,
                             **shared)
        return fn(state, users, items, ratings, key, times=times, aux=aux, **shared)


def row_sparse_obstacle(model: str, train_config, *, joint: bool = False) -> str | None:
    """Why a row-sparse optimizer cannot train ``model`` with ``train_config`` (None: it can)."""
    if not get_model(model).row_local:
        return f"model {model!r} reads table rows other than its user's and item's"
    if train_config.penalty == "table":
        return "a whole-table penalty (penalty='table') touches every row at every step"
    if train_config.weight_decay:
        return "decoupled weight decay shrinks every row at every step"
    if joint:
        return "losses with learned parameters train with the dense optimizer"
    return None


def check_optimizer(name: str, model: str, train_config, *, joint: bool = False) -> None:
    """A clear error when ``name`` cannot train ``model`` with ``train_config``."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; known optimizers: {', '.join(OPTIMIZERS)}")
    if name in ("adam", "als"):
        return  # als: recsys_jax.engine.als.check, which also needs the loss
    what = row_sparse_obstacle(model, train_config, joint=joint)
    if what:
        raise ValueError(f"optimizer {name!r} updates only the rows a batch touches, but {what}: "
                         "use optimizer 'adam'")


class RatingObjective(NamedTuple):
    """An element-wise loss on the rated pairs (`recsys_jax.engine.step.make_objective`)."""

    loss_fn: Callable  # (predictions, targets) -> per-example, or a ParamLoss

    def build(self, apply_fn: Callable, penalty_fn: Callable | None) -> Callable:
        return make_objective(apply_fn, self.loss_fn, penalty_fn)


class RankingObjective(NamedTuple):
    """A ranking loss of positive pairs against sampled items (`recsys_jax.training.ranking`)."""

    loss_fn: Callable  # (pos_scores[B], neg_scores[B, M]) -> per-example
    num_items: int
    num_negatives: int

    def build(self, apply_fn: Callable, penalty_fn: Callable | None) -> Callable:
        return make_ranking_objective(apply_fn, self.loss_fn, self.num_items, self.num_negatives, penalty_fn)


@functools.lru_cache(maxsize=64)
def make_engine(model: str, apply_fn: Callable, model_config, objective, penalty_fn: Callable | None,
                train_config, steps_per_epoch: int, joint: bool = False, plan=None, *,
                shared: bool = False, options: EngineOptions = EngineOptions()) -> Engine:
    """The engine for these (hashable) settings; the same object for the same settings.

    ``shared=True``: the epoch also takes ``count`` (int32: the ratings among the padded
    arrays, `recsys_jax.engine.epoch.run_epoch`) and ``counts`` (the schedule's step counts,
    `recsys_jax.optim.optimizers.StepSchedule`) as arguments, so that one compiled program trains
    any number of ratings that pads to the same size, for any number of epochs: the
    selection fit and the refit of `recsys_jax.training.experiment` share it. ``steps_per_epoch``
    and ``train_config.epochs`` are then unused (pass 0 and any value; `fit` passes 1, so
    that the cache key does not depend on them). One device, gradient optimizers only.

    ``plan`` (a `recsys_jax.engine.sharding.MeshPlan`, or None for one device) places the epoch
    on a mesh: the state is constrained to its placement (tables by rows) where the epoch
    starts, at every step and where it ends, and the batches are split by examples. With
    None nothing of this is traced: the one-device program is unchanged.

    ``apply_fn`` is `recsys_jax.models.make_apply`'s (no aux bound); ``model_config`` the
    config it was made with; ``objective`` a `RatingObjective` or `RankingObjective`.
    ``penalty_fn`` is a custom penalty, or None for the one that ``train_config`` names
    (`recsys_jax.engine.step.make_penalty`), built inside the compiled epoch so that it reads the
    model's ``aux`` as an argument.

    ``options`` (`recsys_jax.engine.options.EngineOptions`, resolved by the caller): whether
    the epoch calls the CPU kernels (the fused step where it applies, the shuffles), and
    where compiled epochs are stored. Nothing here reads the environment.
    """
    tc = train_config
    check_optimizer(tc.optimizer, model, tc, joint=joint)
    if options.kernels:  # registered with XLA before any program that calls them is traced
        if kernels.load() is None:
            raise ValueError(f"make_engine: options ask for the CPU kernels, which are unavailable "
                             f"({kernels.why_not()}); resolve the options with resolve_options()")
    if tc.optimizer == "als":
        if plan is not None:
            raise ValueError("optimizer 'als' trains on one device; use a gradient optimizer on a mesh")

        if not isinstance(objective, RatingObjective):
            raise ValueError("optimizer 'als' trains rating objectives only; use optimizer 'adam'")
        als.check(model, model_config, tc, objective.loss_fn, penalty_fn, joint)
        return als.AlsEngine(model, model_config, tc, options)
    if tc.optimizer != "adam" and not isinstance(objective, RatingObjective):
        raise ValueError(f"optimizer {tc.optimizer!r} trains rating objectives only: a ranking objective "
                         "also scores sampled items, whose rows it does not gather; use optimizer 'adam'")
    if shared and plan is not None:
        raise ValueError("make_engine: shared=True trains on one device")
    spec = get_model(model)
    # shared: the schedule's step counts are an argument of the epoch; else fixed in it
    runtime_schedule = step_schedule(tc.schedule, tc.lr, phases=tc.phases) if shared else None
    fixed_schedule = make_schedule(tc.schedule, tc.lr, tc.epochs * steps_per_epoch, steps_per_epoch=steps_per_epoch,
                                   phases=tc.phases)

    def optimizers(schedule):
        if tc.optimizer == "adam":
            return make_optimizer(schedule, weight_decay=tc.weight_decay), None, None
        make_rows, make_dense = sparse.ROW_OPTIMIZERS[tc.optimizer]
        return None, make_rows(), make_dense(schedule)

    optimizer, row_tx, dense_tx = optimizers(fixed_schedule)  # init reads no schedule: any will do
    fused = _fused_kernel(model, apply_fn, model_config, objective, penalty_fn, tc, joint, plan, options)

    def objective_for(aux):
        apply = apply_fn if aux is None else functools.partial(apply_fn, aux=aux)
        penalty = penalty_fn
        if penalty is None and (tc.l2 or tc.bias_l2):
            penalty = make_penalty(tc, spec, model_config, aux)
        return objective.build(apply, penalty)

    # On a mesh, dense Adam reads the batch's rows with explicit collectives (as the sparse
    # step does) where the objective reads only the batch's rows: a row-local model, the
    # touched-rows penalty, a rating objective. Otherwise XLA's partitioner decides.
    gather_rows = (plan is not None and spec.row_local and penalty_fn is None
                   and tc.penalty == "touched" and isinstance(objective, RatingObjective))

    @jax.jit  # one compiled program, not one per optimizer-state leaf
    def init(params):
        if tc.optimizer == "adam":
            opt_state = optimizer.init(params)
        else:
            opt_state = sparse.init_opt_state(params, row_tx, dense_tx)
        return TrainState(params, opt_state, jnp.zeros((), jnp.int32))

    @functools.partial(jax.jit, static_argnames="num_steps")
    def epoch(state, users, items, ratings, key, num_steps=None, times=None, aux=None, count=None, counts=None,
              blocks=None):
        objective = objective_for(aux)
        place = {} if plan is None else {"plan": plan}
        if blocks is not None:
            if plan is not None:
                raise ValueError("the blocked order trains on one device")
            place["blocks"] = blocks
        schedule = fixed_schedule
        if shared:
            place["count"] = count
            schedule = functools.partial(runtime_schedule.fn, counts=counts)
        optimizer, row_tx, dense_tx = optimizers(schedule)
        if plan is not None:
            state = plan.constrain(state)
        if tc.optimizer == "adam":
            step = make_update(rows_objective(objective, plan) if gather_rows else objective, optimizer)
            state, losses = run_epoch(step, tc.batch_size, state, users, items, ratings, key, num_steps, times,
                                      kernels=options.kernels, **place)
        else:
            lay = sparse.layout(state.params)
            if fused and sparse.fused_layout(lay) is not None:
                step = sparse.make_fused_update(tc.optimizer, dense_tx, schedule, lay, l2=tc.l2, bias_l2=tc.bias_l2,
                                                global_mean=getattr(model_config, "global_mean", True))
            else:
                step = sparse.make_sparse_update(objective, row_tx, dense_tx, schedule, lay, state.params, plan)
            carry = sparse.pack(state, lay)
            carry, losses = run_epoch(step, tc.batch_size, carry if plan is None else plan.constrain(carry),
                                      users, items, ratings, key, num_steps, times, kernels=options.kernels,
                                      **place)
            state = sparse.unpack(carry, lay, state.params, TrainState)
        return (state if plan is None else plan.constrain(state)), losses

    return Engine(init, epoch, {}, tc.optimizer,
                  _identity(model, apply_fn, model_config, objective, penalty_fn, tc, steps_per_epoch, joint, plan,
                            shared, fused, options.kernels),
                  fused, options)


def _fused_kernel(model, apply_fn, model_config, objective, penalty_fn, tc, joint, plan, options) -> str | None:
    """The CPU kernel that does the ``sgd``, ``adagrad`` or ``lazy_adam`` step
    (`recsys_jax.engine.kernels`, `recsys_jax.engine.sparse.make_fused_update`), ``"mf_<optimizer>"``,
    where it applies: the bias or dot model as `recsys_jax.models.make_apply` makes it (no y-range),
    squared error, the touched-rows penalty that ``tc`` names, one device, and the kernels
    on (``options.kernels``). Else None."""
    if tc.optimizer not in sparse.FUSED or get_model(model).factorization is None or plan is not None or joint:
        return None
    if penalty_fn is not None or tc.penalty != "touched" or not isinstance(objective, RatingObjective):
        return None
    if objective.loss_fn is not mse or getattr(model_config, "y_range", None) is not None:
        return None
    if apply_fn is not make_apply(model, model_config) or not options.kernels:
        return None
    return f"mf_{tc.optimizer}"


def _identity(model, apply_fn, model_config, objective, penalty_fn, tc, steps_per_epoch, joint, plan, shared,
              fused=None, kernels=False):
    """`Engine.identity`: the engine's settings by name, or None where one has no name."""
    named_loss = isinstance(objective, RatingObjective) and (
        LOSSES.get(tc.loss) is objective.loss_fn or PARAM_LOSSES.get(tc.loss) is objective.loss_fn)
    if not named_loss or penalty_fn is not None or plan is not None or apply_fn is not make_apply(model, model_config):
        return None
    # kernels: a traced epoch may call the shuffle's kernel even where its step is XLA's
    return repr(("epoch", model, model_config, tc, steps_per_epoch, joint, shared) + ((fused,) if fused else ())
                + (("kernels",) if kernels else ()))


def rows_objective(objective: Callable, plan) -> Callable:
    """``objective(params, batch, key)`` run on the batch's rows of each side table, read
    with `recsys_jax.engine.sharding.take_rows` (tables split by rows, the batch by examples), and
    a batch whose users and items are `recsys_jax.models._common.Local` (row b is example
    b's): the same value, and gradients that are scatter-adds into the sharded tables (the
    transpose of the explicit exchange)."""
    def local(model, batch):
        index = {"user": batch.users, "item": batch.items}
        return model._replace(**{name: take_rows(plan, getattr(model, name), index[name.split("_", 1)[0]])
                                 for name in model._fields if name.split("_", 1)[0] in SIDES})

    def wrapped(params, batch, key):
        here = Local(batch.users.shape[0])  # the local tables' row b is example b's
        if isinstance(params, JointParams):
            params = params._replace(model=local(params.model, batch))
        else:
            params = local(params, batch)
        return objective(params, batch._replace(users=here, items=here), key)

    return wrapped


def init_params(name: str, key, num_users: int, num_items: int, config, *, store: str | None = None):
    """``get_model(name).init(key, num_users, num_items, config)`` as one compiled program.

    The program is made once per (model, table sizes, ``static_config(config)``); the
    training mean enters as its argument (the initial offset, `initial_offset` of
    ``config`` computed on the host as the module's own init does), so the same numbers
    come out as from the module's init run op by op, and a fit of another split of the
    same size reuses the program. Op by op, a new process loaded a dozen small programs
    from the compilation cache for the draws alone, a sizeable part of a short CLI fit
    (`benchmarks.time_to_accuracy` times whole CLI fits). With a
    program ``store`` (`recsys_jax.engine.options.EngineOptions.program_store`) the
    executable comes from disk, untraced, where it was stored before."""
    offset = np.float32(initial_offset(config))
    static = static_config(config)
    program = _init_program(name, int(num_users), int(num_items), static)
    if store is not None:  # the executable from disk, untraced (recsys_jax.engine.programs)
        identity = repr(("init", name, int(num_users), int(num_items), static))
        program = _loaded(program, identity, key, offset, store)
    return program(key, offset)


_LOADED: dict = {}


def _loaded(program, identity, key, offset, store):
    sig = (identity, store, programs.key(identity, (key, offset), {}, {}))
    if sig not in _LOADED:
        _LOADED[sig] = programs.compile(program, (key, offset), {}, identity, store=store)[0]
    return _LOADED[sig]


@functools.lru_cache(maxsize=64)
def _init_program(name: str, num_users: int, num_items: int, config):
    init = get_model(name).init

    def program(key, offset):
        if "mean_rating" not in config._fields:
            return init(key, num_users, num_items, config)
        return init(key, num_users, num_items, config._replace(mean_rating=Offset(offset)))

    return jax.jit(program)
