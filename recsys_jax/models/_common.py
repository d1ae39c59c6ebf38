"""What every model module shares: the batched face of `predict_one`."""
from __future__ import annotations

import math

import jax
from jax import Array


def batched(predict_one, *, stochastic: bool = False):
    """``apply(params, users[B], items[B], key=None, *, config) -> float32[B]``.

    Built from ``predict_one(params, user, item, key, *, config)``: parameters are shared
    across the batch (``in_axes=None``), users and items are mapped. A key (for dropout)
    is split into one key per example so each pair draws its own mask; with no key the
    model runs in inference mode. ``config`` carries static hyperparameters (dropout
    rates); it is a NamedTuple, hashable, so it can be closed over under `jax.jit`.
    A model that is not ``stochastic`` ignores the key (no per-example key splitting).
    """

    def apply(params, users: Array, items: Array, key: Array | None = None, **kw) -> Array:
        if key is None or not stochastic:
            return jax.vmap(lambda u, i: predict_one(params, u, i, None, **kw))(users, items)
        keys = jax.random.split(key, users.shape[0])
        return jax.vmap(lambda u, i, k: predict_one(params, u, i, k, **kw))(users, items, keys)

    apply.__doc__ = f"Batched over (users[B], items[B]):\n\n    {predict_one.__doc__}"
    return apply


def initial_offset(config) -> float:
    """The constant term that makes an untrained model predict the training mean.

    With a y-range ``(lo, hi)`` the output is squashed by a sigmoid, so the offset is the
    logit of where the mean sits in the range.
    """
    mean = config.mean_rating
    if getattr(config, "y_range", None) is None:
        return float(mean)
    lo, hi = config.y_range
    p = min(max((mean - lo) / (hi - lo), 1e-4), 1 - 1e-4)
    return math.log(p) - math.log1p(-p)
