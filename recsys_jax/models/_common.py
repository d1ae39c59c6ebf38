"""What every model module shares: the batched face of `predict_one`."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import Array


def batched(predict_one, *, stochastic: bool = False, uses_aux: bool = False, uses_time: bool = False):
    """``apply(params, users[B], items[B], key=None, *, config, aux=None, times=None) -> float32[B]``.

    Built from ``predict_one(params, user, item, key, *, config[, aux][, time])``:
    parameters (and ``aux``, the constant data a model derives from the training split)
    are shared across the batch (``in_axes=None``); users, items and ``times`` are mapped.
    A key (for dropout) is split into one key per example so each pair draws its own mask;
    with no key the model runs in inference mode. ``config`` carries static
    hyperparameters; it is a hashable NamedTuple. Every model's ``apply`` takes the same
    arguments; a model ignores what it does not use (``uses_aux``, ``uses_time``), and a
    model that is not ``stochastic`` ignores the key (no per-example key splitting).
    """

    def apply(params, users: Array, items: Array, key: Array | None = None, *, config=None,
              aux=None, times: Array | None = None) -> Array:
        kw = {} if config is None else {"config": config}
        if uses_aux:
            if aux is None:
                raise ValueError(f"{predict_one.__module__}: this model needs aux (from its prepare())")
            kw["aux"] = aux
        mapped = [users, items]
        if uses_time:
            if times is None:
                raise ValueError(f"{predict_one.__module__}: this model needs times (days since the epoch)")
            mapped.append(times)

        def one(u, i, *rest, k=None):
            extra = {"time": rest[0]} if uses_time else {}
            return predict_one(params, u, i, k, **kw, **extra)

        if key is None or not stochastic:
            return jax.vmap(one)(*mapped)
        keys = jax.random.split(key, users.shape[0])
        return jax.vmap(lambda *xs: one(*xs[:-1], k=xs[-1]))(*mapped, keys)

    apply.__doc__ = f"Batched over (users[B], items[B]):\n\n    {predict_one.__doc__}"
    return apply


def embedding_init(key: Array, shape: tuple[int, ...], config) -> Array:
    """An embedding table: N(0, s^2) (``config.init == "normal"``) or U(-s, s) (``"uniform"``,
    Keras' default embedding initialiser), with ``s = config.init_scale``."""
    kind, s = getattr(config, "init", "normal"), config.init_scale
    if kind == "normal":
        return s * jax.random.normal(key, shape, jnp.float32)
    if kind == "uniform":
        return jax.random.uniform(key, shape, jnp.float32, -s, s)
    raise ValueError(f"init must be 'normal' or 'uniform', got {kind!r}")


def initial_offset(config) -> float:
    """The constant term that makes an untrained model predict the training mean.

    With a y-range ``(lo, hi)`` the output is squashed by a sigmoid, so the offset is the
    logit of where the mean sits in the range. A model configured with
    ``global_mean=False`` (the course notebook's models) starts at 0 instead.
    """
    if not getattr(config, "global_mean", True):
        return 0.0
    mean = config.mean_rating
    if getattr(config, "y_range", None) is None:
        return float(mean)
    lo, hi = config.y_range
    p = min(max((mean - lo) / (hi - lo), 1e-4), 1 - 1e-4)
    return math.log(p) - math.log1p(-p)
