"""The one training loop: every trainer brings its epoch, the loop owns the rest.

A trainer is a function ``run(state, epoch, key) -> Epoch | None``: one epoch from
``state`` (None: it has no more epochs). What it returns, `Epoch`, carries the new state,
the model parameters in it, the training loss, the seconds spent compiling, and, when the
epoch diverged, why (its state is then the last finite one). Three trainers:

- `engine_trainer`: the gradient engine's compiled epoch (`recsys_jax.engine.build`,
  ALS's engine too), with divergence replayed up to the last finite step;
- `generator_trainer`: a model that trains itself (its spec's ``fit_epochs``: Gibbs
  sweeps, closed-form solves, an autoencoder's own optimiser);
- `recsys_jax.training.many`'s members trained at once, in one program.

`run_loop` drives any of them: the key of each epoch, evaluation, the history, the best
epoch (`keep_best`; `keep_each_best` for many models at once), early stopping after
``patience`` epochs without a better score, the checkpoint hook (resume:
`recsys_jax.training.resume`), the stop on divergence and the progress bar.
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
from jax import Array


class Epoch(NamedTuple):
    """What one epoch of a trainer gives the loop."""

    state: Any  # the trainer's state after the epoch (the last finite one if it diverged)
    params: Any  # the model parameters in it: what is evaluated and kept
    train_loss: Any  # float, or float[K] for K models trained at once
    compile_seconds: float = 0.0  # of the epoch's time, spent compiling or loading programs
    stop_reason: str | None = None  # the epoch diverged: why; the loop stops


class Best(NamedTuple):
    """The best epoch so far: its score (lower is better), parameters and number (0: none)."""

    score: Any
    params: Any
    epoch: Any


class Keep(NamedTuple):
    """How the loop keeps the best epoch.

    ``update(best, params, score, epoch) -> Best`` (``score`` None: no validation, the last
    epoch wins); ``last(best) -> int``: the epoch that last improved, for early stopping."""

    update: Callable
    last: Callable


def _update_one(best: Best, params, score, epoch: int) -> Best:
    score = -epoch if score is None else score
    return Best(score, params, epoch) if score < best.score else best


keep_best = Keep(_update_one, lambda best: best.epoch)


def _update_each(best: Best, params, score, epoch: int) -> Best:
    improved = np.ones(np.shape(best.score), bool) if score is None else np.asarray(score) < best.score
    sel = jnp.asarray(improved)
    kept = jax.tree.map(lambda new, old: jnp.where(sel.reshape((-1,) + (1,) * (new.ndim - 1)), new, old),
                        params, best.params)
    score = np.full(np.shape(best.score), np.nan) if score is None else np.asarray(score)
    return Best(np.where(improved, score, best.score), kept, np.where(improved, epoch, best.epoch))


# K models trained at once (stacked parameters, a leading member axis): each keeps its own best.
keep_each_best = Keep(_update_each, lambda best: int(np.max(best.epoch)))


def first_best(params, members: int | None = None) -> Best:
    """The best before any epoch: ``params`` at epoch 0 (``members``: one per member)."""
    if members is None:
        return Best(math.inf, params, 0)
    return Best(np.full(members, np.inf), params, np.zeros(members, np.int64))


def run_loop(trainer: Callable, state, key: Array, *, epochs: range, evaluate: Callable, history: dict,
             best: Best, patience: int | None = None, on_epoch: Callable | None = None,
             after_epoch: Callable | None = None, desc: str | None = None,
             keep: Keep = keep_best) -> tuple[Any, Best, str | None, float]:
    """The epoch loop of every trainer (see the module docstring).

    Each epoch: ``trainer(state, epoch, fold_in(key, epoch))``; if it diverged, a warning
    names where, the last finite state is kept and the loop stops; otherwise
    ``evaluate(params) -> (metrics, score)`` (score None: the last epoch wins), a record
    ``{epoch, train_loss, **metrics, seconds}`` appended to ``history``, the best kept
    (``keep``), ``after_epoch(epoch, state, history, best)`` (checkpointing) and
    ``on_epoch(epoch, record)`` called, and early stopping after ``patience`` epochs
    without a better score. ``desc`` shows a tqdm bar. ``seconds`` in the history is the
    epoch's and its evaluation's, compilation excluded.

    Returns ``(state, best, stop_reason, compile_seconds)``.
    """
    stop_reason, compile_seconds = None, 0.0
    bar = None
    if desc is not None:
        from tqdm.auto import tqdm

        bar = epochs = tqdm(epochs, desc=desc, unit="epoch", leave=False)
    for epoch in epochs:
        if patience is not None and keep.last(best) and epoch - 1 - keep.last(best) >= patience:
            break  # a resumed run that had already stopped early
        t0 = time.perf_counter()
        done = trainer(state, epoch, jax.random.fold_in(key, epoch))
        if done is None:  # the trainer has no more epochs
            break
        compile_seconds += done.compile_seconds
        state = done.state
        if done.stop_reason is not None:
            stop_reason = done.stop_reason
            warnings.warn(stop_reason, RuntimeWarning, stacklevel=3)
            if keep.last(best) == 0:
                best = best._replace(params=done.params)
            break
        scores, score = evaluate(done.params)
        loss = done.train_loss
        record = {"epoch": epoch, "train_loss": float(loss) if np.ndim(loss) == 0 else np.asarray(loss), **scores,
                  "seconds": time.perf_counter() - t0 - done.compile_seconds}
        for k, v in record.items():
            history[k].append(v)
        best = keep.update(best, done.params, score, epoch)
        if after_epoch is not None:
            after_epoch(epoch, state, history, best)
        if bar is not None and np.ndim(loss) == 0:
            bar.set_postfix(loss=f"{record['train_loss']:.4f}", **{k: v for k, v in scores.items() if v is not None})
        if on_epoch is not None:
            on_epoch(epoch, record)
        if patience is not None and epoch - keep.last(best) >= patience:
            break
    if bar is not None:
        bar.close()
    return state, best, stop_reason, compile_seconds


# -- the trainers ---------------------------------------------------------------------------
class EpochData(NamedTuple):
    """What the engine's compiled epoch reads besides the state and the key."""

    users: Array  # int32[N]
    items: Array  # int32[N]
    ratings: Array  # float32[N] (ignored by ranking objectives)
    times: Array | None = None  # float32[N] days, for time-aware models
    aux: Any = None  # the model's constant data from its prepare(train)
    # For an engine made with shared=True: {"count", "counts"} (the ratings among the
    # padded arrays, the schedule's step counts), and the steps an epoch runs.
    shared: dict | None = None
    steps: int | None = None


def engine_trainer(engine, data: EpochData, caller: str = "fit") -> Callable:
    """The trainer of an engine (`recsys_jax.engine.build.Engine`, or ALS's): its compiled
    epoch over ``data``. On a non-finite loss or parameter the epoch is replayed up to its
    last finite step, and that state comes back with the reason (``caller`` names it)."""
    args = (data.users, data.items, data.ratings)
    shared = data.shared or {}

    def run(state, epoch: int, epoch_key) -> Epoch:
        compiled, seconds = engine.compile(state, *args, epoch_key, times=data.times, aux=data.aux, **shared)
        new_state, losses = compiled(state, *args, epoch_key, times=data.times, aux=data.aux, **shared)
        losses = np.asarray(losses)[: data.steps]  # waits for the epoch to finish
        if not (np.all(np.isfinite(losses)) and _all_finite(new_state.params)):
            replay = functools.partial(engine.run, aux=data.aux, **shared)
            state, reason = _last_finite(replay, state, args, epoch_key, losses, epoch, data.times, caller)
            return Epoch(state, state.params, None, seconds, reason)
        return Epoch(new_state, new_state.params, float(np.mean(losses)), seconds)

    return run


def generator_trainer(epochs) -> Callable:
    """The trainer of a model that trains itself: ``epochs`` is its ``fit_epochs`` generator
    of ``(params, train_loss)``, or ``(params, train_loss, carry)`` (a model that can resume);
    the state is the carry, else the parameters, and the key is its own."""

    def run(state, epoch: int, epoch_key) -> Epoch | None:
        try:
            params, train_loss, *carry = next(epochs)
        except StopIteration:
            return None
        return Epoch(carry[0] if carry else params, params, float(train_loss))

    return run


def _all_finite(tree) -> bool:
    return bool(_finite(tree))


@jax.jit
def _finite(tree) -> Array:
    """Whether every floating-point leaf of ``tree`` is finite: one compiled reduction."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _last_finite(train_epoch, state, data, epoch_key, losses, epoch, times=None, caller: str = "fit"):
    """Replays the epoch from ``state`` up to the last step whose result is finite:
    ``(state, reason)``."""
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
