r"""Element-wise losses: ``loss(predictions, targets, *, hyper=...) -> per-example``.

The caller reduces (the train step takes a masked mean). Any function with this
signature can be passed to `recsys_jax.training.fit.fit` as ``loss_fn``; `LOSSES` lists the
built-in ones by name for the CLI and the benchmarks.

================  ===============================================================================
name              per-example value, with :math:`e = \hat r - r`
================  ===============================================================================
``mse``           :math:`e^2`
``mae``           :math:`|e|`
``huber``         :math:`\tfrac12 e^2` if :math:`|e| \le \delta`, else :math:`\delta(|e| - \tfrac12\delta)`
``pseudo_huber``  :math:`\delta^2\big(\sqrt{1 + (e/\delta)^2} - 1\big)`
``log_cosh``      :math:`\log\cosh e`
================  ===============================================================================

Losses with learned parameters. A `ParamLoss` is a loss that owns parameters trained
jointly with the model: a noise scale, or the cut-points of an ordinal model. The model's
output :math:`f` is then a *score* that the loss turns into a rating with ``predict``:

- ``init(train: Ratings) -> loss_params`` (a NamedTuple of arrays, the ``Params`` class),
- ``loss(loss_params, predictions, targets) -> per-example``,
- ``predict(loss_params, predictions) -> ratings`` (the point prediction).

`PARAM_LOSSES` lists them by name; `get_loss` finds a name in either registry, so
``TrainConfig(loss="ordinal")`` (and ``recsys-jax train --loss ordinal``) trains one.

================  ===============================================================================
name              per-example value; prediction
================  ===============================================================================
``gaussian_nll``  :math:`\tfrac12\big(s + e^2 e^{-s} + \log 2\pi\big)`, learned :math:`s = \log\sigma^2`;
                  :math:`\hat r = f`
``ordinal``       :math:`-\log P(r = \text{observed level})`, cumulative logit over the rating
                  levels; :math:`\hat r = \sum_k \ell_k P(r = \ell_k)`
================  ===============================================================================
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from recsys_jax.data.ratings import MAX_LEVELS


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


def pseudo_huber(predictions: Array, targets: Array, *, delta: float = 1.0) -> Array:
    r"""Pseudo-Huber loss: a smooth Huber, :math:`\tfrac12 e^2` near 0, :math:`\delta|e|` far out.

    .. math::

       \ell_\delta(e) = \delta^2\Big(\sqrt{1 + (e/\delta)^2} - 1\Big)
                      = \frac{e^2}{\sqrt{1 + (e/\delta)^2} + 1}

    The second form is what is computed: it has no cancellation for small :math:`e` and is
    exactly 0 at the target. Every derivative exists (Huber's second derivative jumps at
    :math:`|e| = \delta`).

    =================  ============================
    symbol             argument
    =================  ============================
    :math:`e`          ``predictions - targets``
    :math:`\delta`     ``delta`` (the scale where the loss turns from quadratic to linear)
    =================  ============================

    >>> [round(float(x), 6) for x in pseudo_huber(jnp.array([3.0, 3.0]), jnp.array([3.0, 5.0]))]
    [0.0, 1.236068]
    """
    e = predictions - targets
    return jnp.square(e) / (jnp.sqrt(1.0 + jnp.square(e / delta)) + 1.0)


_LOG2 = math.log(2.0)


def log_cosh(predictions: Array, targets: Array) -> Array:
    r"""Log-cosh loss: :math:`\tfrac12 e^2` near 0, :math:`|e| - \log 2` far out.

    .. math::

       \ell(e) = \log\cosh e = \begin{cases}
           \log\!\big(1 + 2\sinh^2(e/2)\big) & |e| < 1 \\
           |e| + \log\!\big(1 + e^{-2|e|}\big) - \log 2 & |e| \ge 1 \end{cases}

    Both forms are exact identities (:math:`\cosh e = 1 + 2\sinh^2(e/2)
    = \tfrac12 e^{|e|}(1 + e^{-2|e|})`). The first is accurate near 0 (no cancellation,
    exactly 0 at the target); the second never overflows (``cosh`` itself overflows float32
    past :math:`|e| \approx 89`). Its gradient is :math:`\tanh e`, bounded like MAE's.

    >>> [round(float(x), 6) for x in log_cosh(jnp.array([3.0, 3.0, 3.0]), jnp.array([3.0, 4.0, 103.0]))]
    [0.0, 0.433781, 99.306854]
    """
    a = jnp.abs(predictions - targets)
    near_side = a < 1.0
    small = jnp.where(near_side, a, 0.0)  # each branch sees only inputs where it is accurate and finite
    large = jnp.where(near_side, 1.0, a)  # (where, not maximum: maximum halves the gradient at a tie)
    near = jnp.log1p(2.0 * jnp.square(jnp.sinh(0.5 * small)))
    far = large + jnp.log1p(jnp.exp(-2.0 * large)) - _LOG2
    return jnp.where(near_side, near, far)


#: Each element-wise loss's name (``TrainConfig.loss``) mapped to its function.
LOSSES = {
    "mse": mse,
    "mae": mae,
    "huber": huber,
    "pseudo_huber": pseudo_huber,
    "log_cosh": log_cosh,
}


# -- losses with learned parameters ----------------------------------------------------
class ParamLoss(NamedTuple):
    """A loss with its own parameters, trained jointly with the model (see the module docstring)."""

    init: Callable  # init(train: Ratings) -> Params
    loss: Callable  # loss(loss_params, predictions[B], targets[B]) -> float32[B]
    predict: Callable  # predict(loss_params, predictions[B]) -> float32[B] ratings
    Params: Any  # the NamedTuple class of loss_params (checkpoints save its fields by name)


class GaussianParams(NamedTuple):
    log_variance: Array  # float32[]: s = log sigma^2


def _gaussian_init(train) -> GaussianParams:
    """s starts at the log-variance of the training ratings (the residual of predicting the mean)."""
    var = float(np.var(np.asarray(train.ratings, np.float64)))
    return GaussianParams(jnp.asarray(math.log(max(var, 1e-4)), jnp.float32))


_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _gaussian_loss(loss_params: GaussianParams, predictions: Array, targets: Array) -> Array:
    r"""Gaussian negative log-likelihood with a learned, global variance.

    .. math::

       -\log \mathcal N(r \mid f, \sigma^2) = \tfrac12\big(s + e^2 e^{-s}\big)
           + \tfrac12\log 2\pi, \qquad s = \log\sigma^2,\ e = f - r

    =================  ==============================
    symbol             argument
    =================  ==============================
    :math:`f`          ``predictions`` (the mean)
    :math:`r`          ``targets``
    :math:`s`          ``loss_params.log_variance``
    =================  ==============================

    The constant :math:`\tfrac12\log 2\pi` makes the mean a true NLL (in nats per
    rating); it changes no gradient. For a fixed model the best :math:`s` is the log of
    the mean squared error, so the model's gradient is the MSE's divided by
    :math:`2\sigma^2`: the variance acts as a learned, shared loss scale. The value is not
    bounded below by 0 (a density can exceed 1) and, for :math:`s` fixed, is smallest at
    the target and symmetric in :math:`e`.

    >>> p = GaussianParams(jnp.asarray(0.0))
    >>> [round(float(x), 6) for x in gaussian_nll.loss(p, jnp.array([3.0, 5.0]), jnp.array([3.0, 3.0]))]
    [0.918939, 2.918939]
    """
    s = loss_params.log_variance
    return 0.5 * (s + jnp.square(predictions - targets) * jnp.exp(-s)) + _HALF_LOG_2PI


def _identity_predict(loss_params, predictions: Array) -> Array:
    """The mean of the Gaussian: the model's output itself."""
    return predictions


gaussian_nll = ParamLoss(_gaussian_init, _gaussian_loss, _identity_predict, GaussianParams)


class OrdinalParams(NamedTuple):
    levels: Array  # float32[K] the sorted rating levels (constant: never receives a gradient)
    first_cut: Array  # float32[]: theta_1
    deltas: Array  # float32[K-2]: theta_{k+1} - theta_k = softplus(deltas_k)




def _inverse_softplus(x: np.ndarray) -> np.ndarray:
    return np.where(x > 20.0, x, np.log(np.expm1(np.minimum(x, 20.0))))


def _ordinal_init(train) -> OrdinalParams:
    r"""Levels: the sorted distinct training ratings. Cut-points: the training distribution.

    With :math:`\theta_k = \bar r + \operatorname{logit} F_k` (:math:`F_k` the fraction of
    training ratings at or below level :math:`k`, :math:`\bar r` their mean), a model that
    outputs :math:`f = \bar r` (every model with a global bias does at initialisation)
    predicts the training distribution of stars: the ordinal analogue of starting the
    global bias at the mean.
    """
    r = np.asarray(train.ratings, np.float64)
    levels, counts = np.unique(r, return_counts=True)
    if len(levels) < 2:
        raise ValueError(f"ordinal: the training ratings take {len(levels)} distinct value(s); at least 2 are needed")
    if len(levels) > MAX_LEVELS:
        raise ValueError(f"ordinal: the training ratings take {len(levels)} distinct values (more than "
                         f"{MAX_LEVELS}); the ordinal loss is for a small set of rating levels")
    cdf = np.cumsum(counts)[:-1] / counts.sum()  # F_1 .. F_{K-1}, strictly increasing, in (0, 1)
    theta = float(np.mean(r)) + np.log(cdf) - np.log1p(-cdf)
    return OrdinalParams(
        levels=jnp.asarray(levels, jnp.float32),
        first_cut=jnp.asarray(theta[0], jnp.float32),
        deltas=jnp.asarray(_inverse_softplus(np.diff(theta)), jnp.float32),
    )


def ordinal_cut_points(loss_params: OrdinalParams) -> Array:
    r"""The ordered cut-points :math:`\theta_1 < \dots < \theta_{K-1}`, float32[K-1].

    .. math::

       \theta_1 = \texttt{first\_cut}, \qquad
       \theta_{k+1} = \theta_k + \operatorname{softplus}(\texttt{deltas}_k)
    """
    num_levels, num_gaps = jnp.shape(loss_params.levels)[0], jnp.shape(loss_params.deltas)[0]
    if jnp.ndim(loss_params.first_cut) != 0 or num_gaps != num_levels - 2:
        raise ValueError(f"ordinal: {num_levels} levels need a scalar first_cut and {num_levels - 2} deltas, "
                         f"got first_cut of shape {jnp.shape(loss_params.first_cut)} and {num_gaps} deltas")
    gaps = jax.nn.softplus(loss_params.deltas)
    return loss_params.first_cut + jnp.concatenate([jnp.zeros(1, gaps.dtype), jnp.cumsum(gaps)])


def ordinal_probs(loss_params: OrdinalParams, predictions: Array) -> Array:
    r"""The distribution over the rating levels, float32[..., K] (rows sum to 1).

    .. math::

       P(r \le \ell_k \mid f) = \sigma(\theta_k - f), \qquad
       P(r = \ell_k \mid f) = \sigma(\theta_k - f) - \sigma(\theta_{k-1} - f)

    with :math:`\theta_0 = -\infty`, :math:`\theta_K = +\infty`; level :math:`k` is
    ``loss_params.levels[k - 1]``.

    >>> p = OrdinalParams(jnp.array([1.0, 2.0, 3.0]), jnp.asarray(0.0), jnp.array([0.0]))
    >>> [round(float(x), 4) for x in ordinal_probs(p, jnp.asarray(0.0))]  # theta = [0, log 2]
    [0.5, 0.1667, 0.3333]
    """
    f = jnp.asarray(predictions)[..., None]
    cdf = jax.nn.sigmoid(ordinal_cut_points(loss_params) - f)  # [..., K-1]
    ones = jnp.ones(cdf.shape[:-1] + (1,), cdf.dtype)
    return jnp.diff(jnp.concatenate([0.0 * ones, cdf, ones], axis=-1), axis=-1)


def ordinal_level_index(loss_params: OrdinalParams, targets: Array) -> Array:
    """The index of the level nearest each target, int32[...] (ratings sit on the levels)."""
    levels = jax.lax.stop_gradient(loss_params.levels)
    return jnp.argmin(jnp.abs(jnp.asarray(targets)[..., None] - levels), axis=-1).astype(jnp.int32)


def _ordinal_loss(loss_params: OrdinalParams, predictions: Array, targets: Array) -> Array:
    r"""Cumulative-link (ordered logit) negative log-likelihood of the observed level.

    .. math::

       -\log P(r = \ell_k \mid f) = \operatorname{softplus}(\theta_{k-1} - f)
           + \operatorname{softplus}(f - \theta_k)
           - \log\!\big(1 - e^{-(\theta_k - \theta_{k-1})}\big)

    from :math:`\sigma(b) - \sigma(a) = \sigma(b)\,\sigma(-a)\,(1 - e^{a - b})` with
    :math:`a = \theta_{k-1} - f`, :math:`b = \theta_k - f`; the terms with
    :math:`\theta_0 = -\infty` or :math:`\theta_K = +\infty` vanish. Every term is a
    softplus or a log of a gap, so nothing cancels or overflows for any :math:`f`.

    =================  ======================================================
    symbol             argument
    =================  ======================================================
    :math:`f`          ``predictions`` (a latent score, not a rating)
    :math:`\ell_k`     the level of ``targets`` (``loss_params.levels``, nearest)
    :math:`\theta_k`   `ordinal_cut_points` of ``loss_params``
    =================  ======================================================

    Non-negative (the negative log of a probability).

    >>> p = OrdinalParams(jnp.array([1.0, 2.0, 3.0]), jnp.asarray(0.0), jnp.array([0.0]))
    >>> [round(float(x), 4) for x in ordinal.loss(p, jnp.zeros(3), jnp.array([1.0, 2.0, 3.0]))]
    [0.6931, 1.7918, 1.0986]
    """
    theta = ordinal_cut_points(loss_params)  # [K-1]
    num_cuts = theta.shape[0]
    k = ordinal_level_index(loss_params, targets)  # 0-based level index
    f = jnp.asarray(predictions)
    has_lower, has_upper = k > 0, k < num_cuts
    lower = theta[jnp.maximum(k - 1, 0)]  # clamped indices: every branch stays finite
    upper = theta[jnp.minimum(k, num_cuts - 1)]
    out = jnp.where(has_lower, jax.nn.softplus(lower - f), 0.0)
    out = out + jnp.where(has_upper, jax.nn.softplus(f - upper), 0.0)
    gap = jnp.where(has_lower & has_upper, upper - lower, 1.0)
    return out - jnp.where(has_lower & has_upper, jnp.log(-jnp.expm1(-gap)), 0.0)


def _ordinal_predict(loss_params: OrdinalParams, predictions: Array) -> Array:
    r"""The expected rating :math:`\sum_k \ell_k P(r = \ell_k \mid f)`.

    Computed as :math:`\ell_1 + \sum_{k<K} (\ell_{k+1} - \ell_k)\,\sigma(f - \theta_k)`
    (summation by parts: :math:`P(r > \ell_k) = \sigma(f - \theta_k)`), which is
    increasing in :math:`f`.
    """
    levels = loss_params.levels
    above = jax.nn.sigmoid(jnp.asarray(predictions)[..., None] - ordinal_cut_points(loss_params))
    return levels[0] + jnp.sum(jnp.diff(levels) * above, axis=-1)


ordinal = ParamLoss(_ordinal_init, _ordinal_loss, _ordinal_predict, OrdinalParams)


#: The name (``TrainConfig.loss``) of each loss with learned parameters mapped to its `ParamLoss`.
PARAM_LOSSES = {
    "gaussian_nll": gaussian_nll,
    "ordinal": ordinal,
}


def get_loss(name: str):
    """The loss registered as ``name``: an element-wise function (`LOSSES`) or a `ParamLoss`."""
    if name in LOSSES:
        return LOSSES[name]
    if name in PARAM_LOSSES:
        return PARAM_LOSSES[name]
    raise ValueError(f"unknown loss {name!r}; known losses: {', '.join([*LOSSES, *PARAM_LOSSES])}")


def get_param_loss(name: str) -> ParamLoss:
    """The `ParamLoss` registered as ``name`` in `PARAM_LOSSES`."""
    try:
        return PARAM_LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss with parameters {name!r}; known: {', '.join(PARAM_LOSSES)}") from None


def param_loss_name(loss: ParamLoss) -> str | None:
    """The name under which ``loss`` is registered in `PARAM_LOSSES`, or None."""
    return next((name for name, v in PARAM_LOSSES.items() if v is loss), None)
