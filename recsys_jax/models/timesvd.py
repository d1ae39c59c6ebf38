r"""Time-aware biases (the bias part of Koren's timeSVD, 2009) with latent factors.

.. math::

   \hat r_{ui}(t) = \mu + b_u + \alpha_u\,\mathrm{dev}_u(t) + b_i + b_{i,\mathrm{Bin}(t)}
                    + p_u^\top q_i,
   \qquad \mathrm{dev}_u(t) = \operatorname{sign}(t - \bar t_u)\,
                              \frac{|t - \bar t_u|^{\beta}}{s}

=============================  ===============================================================
symbol                         argument
=============================  ===============================================================
:math:`t`                      the rating's time in days since the epoch (``time``)
:math:`\bar t_u`               the mean day of u's training ratings: ``aux.user_mean_day[u]``
:math:`\alpha_u`               ``params.user_drift_bias[u]``: u's linear-ish drift
:math:`b_{i,\mathrm{Bin}(t)}`  ``params.item_bin_bias[i, bin]``: item bias per time bin
:math:`\beta, s`               ``config.beta`` (0.4, Koren's value) and ``aux.dev_scale``
=============================  ===============================================================

The training time range is cut into ``config.num_bins`` equal bins (``aux.first_day``,
``aux.bin_days``); times outside it fall into the first or last bin. :math:`s` is the mean
of :math:`|t - \bar t_u|^\beta` over the training ratings, so that :math:`\mathrm{dev}` is of
order one and :math:`\alpha_u` trains at the same learning rate as the other biases.

Trained on each rating :math:`(u, i, t)` with the regularised objective (Koren 2009, the
time-aware baseline: every bias parameter the rating uses is penalised, :math:`\alpha_u`
included, and of the item's time-bin biases only the one of :math:`t`'s bin)

.. math::

   \mathcal L(\hat r_{ui}(t), r_{ui})
   + \lambda\,(\lVert p_u\rVert^2 + \lVert q_i\rVert^2)
   + \lambda_b\,(b_u^2 + \alpha_u^2 + b_i^2 + b_{i,\mathrm{Bin}(t)}^2),

:math:`\mathcal L` the loss (squared error by default), :math:`\lambda` = ``TrainConfig.l2``,
:math:`\lambda_b` = ``TrainConfig.bias_l2``; :math:`\mu` is
not penalised. `penalty` is the weighted sum of these terms over a batch.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from recsys_jax.models._common import batched, initial_offset, row_weights, scaled_normal, weighted_sq_norm
from recsys_jax.models.spec import FoldIn, ModelSpec

class Config(NamedTuple):
    embedding_dim: int = 50
    init_scale: float = 0.01
    mean_rating: float = 3.5  # set by `fit` to the training mean
    y_range: tuple[float, float] | None = None
    num_bins: int = 30
    beta: float = 0.4


class Params(NamedTuple):
    global_bias: Array  # float32[]
    user_bias: Array  # float32[U]
    user_drift_bias: Array  # float32[U]
    item_bias: Array  # float32[I]
    item_bin_bias: Array  # float32[I, num_bins]
    user_factors: Array  # float32[U, K]
    item_factors: Array  # float32[I, K]


class Aux(NamedTuple):
    user_mean_day: Array  # float32[U]
    first_day: Array  # float32[]
    bin_days: Array  # float32[]
    dev_scale: Array  # float32[]


def prepare(train, config: Config = Config()) -> Aux:
    """Per-user mean day, the bins and the drift scale from the training ratings."""
    t = np.asarray(train.timestamps, np.float64) / 86_400.0
    counts = np.bincount(train.users, minlength=train.num_users)
    mean_day = np.bincount(train.users, weights=t, minlength=train.num_users) / np.maximum(counts, 1)
    mean_day = np.where(counts > 0, mean_day, t.mean() if len(t) else 0.0)
    first, last = (float(t.min()), float(t.max())) if len(t) else (0.0, 1.0)
    dev = np.abs(t - mean_day[train.users]) ** config.beta
    scale = float(dev.mean()) if len(dev) and dev.mean() > 0 else 1.0
    return Aux(jnp.asarray(mean_day, jnp.float32), jnp.asarray(first, jnp.float32),
               jnp.asarray(max((last - first) / config.num_bins, 1e-6), jnp.float32), jnp.asarray(scale, jnp.float32))


def init(key: Array, num_users: int, num_items: int, config: Config = Config()) -> Params:
    """Zero biases and drifts, factors from N(0, init_scale^2), mu at the mean."""
    ukey, ikey = jax.random.split(key)
    k, s = config.embedding_dim, config.init_scale
    return Params(
        global_bias=jnp.asarray(initial_offset(config), jnp.float32),
        user_bias=jnp.zeros((num_users,), jnp.float32),
        user_drift_bias=jnp.zeros((num_users,), jnp.float32),
        item_bias=jnp.zeros((num_items,), jnp.float32),
        item_bin_bias=jnp.zeros((num_items, config.num_bins), jnp.float32),
        user_factors=scaled_normal(ukey, (num_users, k), s),
        item_factors=scaled_normal(ikey, (num_items, k), s),
    )


def time_bin(time: Array, aux: Aux, config: Config = Config()) -> Array:
    """Bin(t): the index of t's bin, clipped to the training range: int32 of ``time``'s shape."""
    bin_ = jnp.floor((time - aux.first_day) / aux.bin_days)
    return jnp.clip(bin_, 0, config.num_bins - 1).astype(jnp.int32)


def predict_one(
    params: Params, user: Array, item: Array, key: Array | None = None, *, config: Config = Config(),
    aux: Aux, time: Array,
) -> Array:
    """r_ui(t) = mu + b_u + alpha_u dev_u(t) + b_i + b_{i,Bin(t)} + p_u . q_i"""
    delta = time - aux.user_mean_day[user]
    dev = jnp.sign(delta) * jnp.abs(delta) ** config.beta / aux.dev_scale
    bin_ = time_bin(time, aux, config)
    return (
        params.global_bias
        + params.user_bias[user]
        + params.user_drift_bias[user] * dev
        + params.item_bias[item]
        + params.item_bin_bias[item, bin_]
        + params.user_factors[user] @ params.item_factors[item]
    )


apply = batched(predict_one, uses_aux=True, uses_time=True)


def penalty(params: Params, users: Array, items: Array, weight: Array, *, l2: float, bias_l2: float = 0.0,
            config: Config = Config(), aux: Aux | None = None, times: Array | None = None) -> Array:
    """``sum_b w_b [l2 (|p_u|^2 + |q_i|^2) + bias_l2 (b_u^2 + alpha_u^2 + b_i^2 + b_{i,Bin(t)}^2)]``"""
    if aux is None or times is None:
        raise ValueError("timesvd: penalty needs aux (timesvd.prepare) and times (days since the epoch)")
    num_users, num_items = params.user_factors.shape[0], params.item_factors.shape[0]
    c_user, c_item = row_weights(users, weight, num_users), row_weights(items, weight, num_items)
    c_item_bin = jnp.zeros(params.item_bin_bias.shape, jnp.float32).at[items, time_bin(times, aux, config)].add(weight)
    factors = weighted_sq_norm(params.user_factors, c_user) + weighted_sq_norm(params.item_factors, c_item)
    biases = (weighted_sq_norm(params.user_bias, c_user) + weighted_sq_norm(params.user_drift_bias, c_user)
              + weighted_sq_norm(params.item_bias, c_item) + jnp.sum(c_item_bin * jnp.square(params.item_bin_bias)))
    return l2 * factors + bias_l2 * biases


def block_scores(params: Params, users: Array, config: Config = Config(), aux: Aux = None,
                 user_times: Array = None) -> Array:
    """Every item for the users ``users[C]``, each scored at its day ``user_times[u]``,
    ``float32[C, I]``."""
    t = user_times[users]  # one day per user: every item is scored at it
    delta = t - aux.user_mean_day[users]
    dev = jnp.sign(delta) * jnp.abs(delta) ** config.beta / aux.dev_scale
    user_part = params.global_bias + params.user_bias[users] + params.user_drift_bias[users] * dev
    return (user_part[:, None] + params.item_bias[None, :] + params.item_bin_bias.T[time_bin(t, aux, config)]
            + params.user_factors[users] @ params.item_factors.T)


# -- fold-in (recsys_jax.use.foldin): a new user's mean day is that of its ratings --------
def fold_in_user_view(params: Params, aux: Aux, others, mask, day):
    """The model as ``M`` new users see it: each one's mean day ``day[m]``."""
    view = aux._replace(user_mean_day=jnp.asarray(day, jnp.float32)[:, None])
    return params, view, Aux(0, None, None, None)


def append_user_aux(aux: Aux, items_per_user, day, first_index: int, ratings_per_user=None, config=None) -> Aux:
    """``aux`` with the new users' mean days after the trained users'."""
    return aux._replace(user_mean_day=jnp.concatenate([aux.user_mean_day, jnp.asarray(day, jnp.float32)]))


# uses_time: predict_one reads the time of each rating (float32 days since the epoch).
SPEC = ModelSpec("timesvd", Config, Params, init, apply, predict_one=predict_one, Aux=Aux, prepare=prepare, penalty=penalty,
                 block_scores=block_scores, fold_in=FoldIn(fold_in_user_view, None, append_user_aux),
                 uses_time=True, doc=__doc__)
