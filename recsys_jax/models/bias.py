r"""Latent factors with a global mean and user and item biases (the notebook's second model).

.. math::

   x_{ui} = \mu + b_u + b_i + p_u^\top q_i, \qquad
   \hat r_{ui} = \begin{cases}
       x_{ui} & \text{no y-range} \\
       \ell + (h - \ell)\,\sigma(x_{ui}) & \text{y-range } (\ell, h)
   \end{cases}

=================  ==========================
symbol             argument
=================  ==========================
:math:`\mu`        ``params.global_bias``
:math:`b_u`        ``params.user_bias[u]``
:math:`b_i`        ``params.item_bias[i]``
:math:`p_u, q_i`   ``params.user_factors[u]``, ``params.item_factors[i]``
:math:`(\ell, h)`  ``config.y_range`` (fastai's sigmoid squash)
=================  ==========================

:math:`\mu` starts at the training mean (mapped through the inverse sigmoid when a
y-range is set) and is learned with the rest. ``predict_one`` computes :math:`x_{ui}`; the
squash is a link applied by `recsys_jax.models.make_apply` from ``config.y_range``, so that
the parameters stay a pytree of trainable arrays only.

Trained on each rating :math:`(u, i)` with the regularised objective

.. math::

   \mathcal L(\hat r_{ui}, r_{ui}) + \lambda\,(\lVert p_u\rVert^2 + \lVert q_i\rVert^2)
   + \lambda_b\,(b_u^2 + b_i^2),

:math:`\mathcal L` the loss (squared error by default), :math:`\lambda` = ``TrainConfig.l2``,
:math:`\lambda_b` = ``TrainConfig.bias_l2``; :math:`\mu` is not penalised.
The generic, name-based `recsys_jax.objectives.penalties.touched_rows_penalty` is this sum over a batch.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from recsys_jax.models._common import batched, biased_product, embedding_init, initial_offset, users_rows
from recsys_jax.models.spec import ModelSpec


class Config(NamedTuple):
    embedding_dim: int = 50
    init_scale: float = 0.01  # small: the biases explain most of the variance at first
    mean_rating: float = 3.5  # set by `fit` to the training mean
    init: str = "normal"  # "normal": zero biases, N(0, s^2) factors; "uniform": every table U(-s, s) (Keras)
    global_mean: bool = True  # False: no mu at all (the course notebook); global_bias stays 0, unused
    y_range: tuple[float, float] | None = None


class Params(NamedTuple):
    global_bias: Array  # float32[]
    user_bias: Array  # float32[U]
    item_bias: Array  # float32[I]
    user_factors: Array  # float32[U, K]
    item_factors: Array  # float32[I, K]


def init(key: Array, num_users: int, num_items: int, config: Config = Config()) -> Params:
    """Zero biases, factors from N(0, init_scale^2), mu at the training mean.

    With ``init="uniform"`` the bias tables too are drawn from U(-init_scale, init_scale):
    the notebook's biases are 1-d Keras embeddings. With ``global_mean=False`` mu is 0.
    """
    ukey, ikey, bukey, bikey = jax.random.split(key, 4)
    k = config.embedding_dim
    if config.init == "uniform":
        user_bias = embedding_init(bukey, (num_users,), config)
        item_bias = embedding_init(bikey, (num_items,), config)
    else:
        user_bias, item_bias = jnp.zeros((num_users,), jnp.float32), jnp.zeros((num_items,), jnp.float32)
    return Params(
        global_bias=jnp.asarray(initial_offset(config), jnp.float32),
        user_bias=user_bias,
        item_bias=item_bias,
        user_factors=embedding_init(ukey, (num_users, k), config),
        item_factors=embedding_init(ikey, (num_items, k), config),
    )


def predict_one(
    params: Params, user: Array, item: Array, key: Array | None = None, *, config: Config = Config()
) -> Array:
    """x_ui = mu + b_u + b_i + p_u . q_i  (`recsys_jax.models.make_apply` adds the y-range squash)"""
    mu = params.global_bias if config.global_mean else 0.0
    return (
        mu
        + params.user_bias[user]
        + params.item_bias[item]
        + params.user_factors[user] @ params.item_factors[item]
    )


def score_matrix(params: Params, *, config: Config = Config()) -> Array:
    r"""Every (user, item) pair at once, ``float32[U, I]``: :math:`\mu + b_u + b_i + P Q^\top`."""
    mu = params.global_bias if config.global_mean else 0.0
    return biased_product(params.user_factors, params.item_factors, mu + params.user_bias, params.item_bias)


apply = batched(predict_one)


def block_scores(params: Params, users: Array, config: Config = Config(), aux=None, user_times=None) -> Array:
    """Every item for the users ``users[C]``, ``float32[C, I]`` (`score_matrix` of their rows)."""
    return score_matrix(users_rows(params, users), config=config)


# row_local: each user_*/item_* table is read only at the row of the pair's user/item, so
# row-sparse optimizers (recsys_jax.engine.sparse) can train it.
SPEC = ModelSpec("bias", Config, Params, init, apply, predict_one=predict_one, score_matrix=score_matrix, block_scores=block_scores,
                 row_local=True, factorization="biased", doc=__doc__)
