r"""Element-wise losses: ``loss(predictions, targets, *, hyper=...) -> per-example``.

The caller reduces (the train step takes a masked mean). Any function with this
signature can be passed to `recsys_jax.train.fit` as ``loss_fn``; `LOSSES` lists the
built-in ones by name for the CLI and the benchmarks.

===========  =====================================================================
name         per-example value, with :math:`e = \hat r - r`
===========  =====================================================================
``mse``      :math:`e^2`
``mae``      :math:`|e|`
``huber``    :math:`\tfrac12 e^2` if :math:`|e| \le \delta`, else :math:`\delta(|e| - \tfrac12\delta)`
===========  =====================================================================
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import Array


def mse(predictions: Array, targets: Array) -> Array:
    r"""Squared error :math:`(\hat r - r)^2`; its mean is the MSE, its root the RMSE.

    >>> float(mse(jnp.array([3.0]), jnp.array([4.5]))[0])
    2.25
    """
    return jnp.square(predictions - targets)


def mae(predictions: Array, targets: Array) -> Array:
    r"""Absolute error :math:`|\hat r - r|` (its minimiser is the conditional median).

    >>> float(mae(jnp.array([3.0]), jnp.array([4.5]))[0])
    1.5
    """
    return jnp.abs(predictions - targets)


def huber(predictions: Array, targets: Array, *, delta: float = 1.0) -> Array:
    r"""Huber loss: quadratic within :math:`\delta` of the target, linear beyond.

    .. math::

       \ell_\delta(e) = \begin{cases} \tfrac12 e^2 & |e| \le \delta \\
                        \delta\,(|e| - \tfrac12\delta) & |e| > \delta \end{cases}

    >>> [float(x) for x in huber(jnp.array([3.5, 6.0]), jnp.array([3.0, 3.0]))]
    [0.125, 2.5]
    """
    abs_err = jnp.abs(predictions - targets)
    quadratic = jnp.minimum(abs_err, delta)
    return 0.5 * jnp.square(quadratic) + delta * (abs_err - quadratic)


LOSSES = {
    "mse": mse,
    "mae": mae,
    "huber": huber,
}


def get_loss(name: str):
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(LOSSES)}") from None
