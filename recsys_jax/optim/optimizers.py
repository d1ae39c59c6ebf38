"""Adam with learning-rate schedules.

A schedule is a plain function ``step -> learning rate`` (an Optax schedule):

- ``constant``: ``lr`` throughout;
- ``piecewise``: a list of ``(epochs, lr)`` phases, the course notebook's hand annealing
  written down (e.g. ``[(1, 1e-3), (6, 1e-2), (10, 1e-3)]``);
- ``one_cycle``: Smith's one-cycle (cosine up to ``lr`` over the first 30%, then down);
- ``warmup_cosine``: linear warm-up over ``warmup_frac`` of the steps, then cosine decay
  to ``lr / 100``.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array

SCHEDULES = ("constant", "piecewise", "one_cycle", "warmup_cosine")


def piecewise_schedule(phases: Sequence[tuple[int, float]], steps_per_epoch: int) -> optax.Schedule:
    """``(epochs, lr)`` phases -> a step-indexed piecewise-constant schedule.

    Past the last phase the last learning rate holds.
    """
    runtime = _piecewise(phases)
    return functools.partial(runtime.fn, counts=jnp.asarray(runtime.counts_for(0, steps_per_epoch)))


def _piecewise(phases: Sequence[tuple[int, float]]) -> StepSchedule:
    """`piecewise_schedule` as a `StepSchedule`: the counts are the phases' step boundaries."""
    if not phases:
        raise ValueError("a piecewise schedule needs at least one (epochs, lr) phase")
    values = np.asarray([float(lr) for _, lr in phases], np.float32)

    def piecewise(step, counts):
        return jnp.asarray(values)[jnp.searchsorted(counts, step, side="right")]

    def boundaries(total, steps_per_epoch):
        return np.cumsum([int(e) * steps_per_epoch for e, _ in phases])[:-1].astype(np.int32)

    return StepSchedule(piecewise, boundaries)


def make_schedule(
    name: str,
    lr: float,
    total_steps: int,
    *,
    steps_per_epoch: int = 1,
    phases: Sequence[tuple[int, float]] | None = None,
    warmup_frac: float = 0.05,
) -> optax.Schedule:
    """The schedule called ``name`` (see the module docstring)."""
    if name == "constant":
        return optax.constant_schedule(lr)
    if name == "piecewise":
        return piecewise_schedule(phases or [(1, lr)], steps_per_epoch)
    if name == "one_cycle":
        return optax.cosine_onecycle_schedule(max(total_steps, 1), peak_value=lr)
    if name == "warmup_cosine":
        warmup = max(int(warmup_frac * total_steps), 1)
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=lr, warmup_steps=warmup,
            decay_steps=max(total_steps, warmup + 1), end_value=lr / 100,
        )
    raise ValueError(f"unknown schedule {name!r}; known schedules: {', '.join(SCHEDULES)}")


class StepSchedule(NamedTuple):
    """A schedule whose step counts are an argument: ``fn(step, counts) -> lr``, with
    ``counts = counts_for(total_steps, steps_per_epoch)`` (int32, computed on the host).

    The compiled epoch takes ``counts`` as data, so that fits of different lengths (a
    selection fit on 90% of the training split and the refit on all of it) run one compiled
    program. Everything else (the name, the learning rate, the phases' rates) is fixed in
    the program. For the same total, ``fn`` gives what `make_schedule`'s Optax schedule
    gives: the formulas are Optax's, written with the counts as arrays, and the two agree
    to float32 rounding (tested; XLA may fuse an expression differently around constants).
    """

    fn: Callable[[Array, Array], Array]
    counts_for: Callable[[int, int], np.ndarray]


def step_schedule(name: str, lr: float, *, phases: Sequence[tuple[int, float]] | None = None,
                  warmup_frac: float = 0.05) -> StepSchedule:
    """`make_schedule`'s ``name`` as a `StepSchedule`."""
    if name == "constant":
        return StepSchedule(lambda step, counts: jnp.asarray(lr, jnp.float32),
                            lambda total, spe: np.zeros(0, np.int32))
    if name == "piecewise":
        return _piecewise(phases or [(1, lr)])
    if name == "one_cycle":
        # optax.cosine_onecycle_schedule: cosine from lr/25 up to lr over 30% of the steps,
        # then down to lr/25/1e4, the piecewise-interpolated values accumulated in float32.
        values = np.cumprod(np.asarray([lr / 25.0, 25.0, 1.0 / (25.0 * 1e4)], np.float32))

        def one_cycle(count, counts):
            bounds = jnp.concatenate([jnp.zeros(1, jnp.int32), counts])
            vals = jnp.asarray(values)
            interval_sizes = jnp.maximum(bounds[1:] - bounds[:-1], 1)
            indicator = jnp.logical_and(bounds[:-1] <= count, count < bounds[1:])
            pct = (count - bounds[:-1]) / interval_sizes
            start, end = vals[:-1], vals[1:]
            interp = end + (start - end) / 2.0 * (jnp.cos(jnp.pi * pct) + 1)
            return indicator.dot(interp) + (bounds[-1] <= count) * vals[-1]

        def one_cycle_counts(total, spe):
            t = max(total, 1)
            return np.asarray([int(0.3 * t), int(t)], np.int32)

        return StepSchedule(one_cycle, one_cycle_counts)
    if name == "warmup_cosine":
        # optax.warmup_cosine_decay_schedule(0, lr, warmup, decay, lr / 100): linear warm-up,
        # then cosine decay over decay - warmup steps, joined at the warm-up's end.
        end_value = lr / 100
        alpha = 0.0 if lr == 0.0 else end_value / lr

        def warmup_cosine(step, counts):
            warmup, decay = counts[0], counts[1].astype(jnp.float32)
            count = jnp.clip(step, 0, warmup)
            frac = 1 - count / warmup
            up = (0.0 - lr) * frac + lr
            later = jnp.minimum(step - warmup, decay)
            down = lr * ((1 - alpha) * (0.5 * (1 + jnp.cos(jnp.pi * later / decay))) ** 1.0 + alpha)
            return jnp.where(step < warmup, up, down)

        def warmup_cosine_counts(total, spe):
            warmup = max(int(warmup_frac * total), 1)
            return np.asarray([warmup, max(total, warmup + 1) - warmup], np.int32)

        return StepSchedule(warmup_cosine, warmup_cosine_counts)
    raise ValueError(f"unknown schedule {name!r}; known schedules: {', '.join(SCHEDULES)}")


def make_optimizer(schedule: optax.Schedule | float, *, weight_decay: float = 0.0) -> optax.GradientTransformation:
    """Adam driven by ``schedule``; with ``weight_decay`` > 0, AdamW (decoupled decay).

    Decay is applied to matrices only (embedding tables, dense weights), not to biases.
    """
    if weight_decay:
        matrices_only = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
        return optax.adamw(schedule, weight_decay=weight_decay, mask=matrices_only)
    return optax.adam(schedule)
