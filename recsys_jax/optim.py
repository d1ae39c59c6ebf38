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

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

SCHEDULES = ("constant", "piecewise", "one_cycle", "warmup_cosine")


def piecewise_schedule(phases: Sequence[tuple[int, float]], steps_per_epoch: int) -> optax.Schedule:
    """``(epochs, lr)`` phases -> a step-indexed piecewise-constant schedule.

    Past the last phase the last learning rate holds.
    """
    if not phases:
        raise ValueError("a piecewise schedule needs at least one (epochs, lr) phase")
    boundaries = jnp.asarray(np.cumsum([int(e) * steps_per_epoch for e, _ in phases])[:-1], jnp.int32)
    values = jnp.asarray([float(lr) for _, lr in phases], jnp.float32)

    def schedule(step):
        return values[jnp.searchsorted(boundaries, step, side="right")]

    return schedule


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


def make_optimizer(schedule: optax.Schedule | float, *, weight_decay: float = 0.0) -> optax.GradientTransformation:
    """Adam driven by ``schedule``; with ``weight_decay`` > 0, AdamW (decoupled decay).

    Decay is applied to matrices only (embedding tables, dense weights), not to biases.
    """
    if weight_decay:
        matrices_only = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
        return optax.adamw(schedule, weight_decay=weight_decay, mask=matrices_only)
    return optax.adam(schedule)
