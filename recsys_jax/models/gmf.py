r"""Generalized matrix factorization (He et al., 2017, "Neural Collaborative Filtering").

.. math::

   \hat r_{ui} = c + h^\top (p_u \odot q_i)

=================  ==========================
symbol             argument
=================  ==========================
:math:`p_u, q_i`   ``params.user_factors[u]``, ``params.item_factors[i]``
:math:`h`          ``params.out_w`` (float32[K]): a learned weight per latent dimension
:math:`c`          ``params.out_b``: starts at the training mean
=================  ==========================

With :math:`h = \mathbf 1` and :math:`c = 0` this is the dot model: GMF only adds a
weighting of the latent dimensions. The paper trains it on implicit feedback with a
sigmoid and log loss; for explicit ratings the output is linear and the loss is MSE.

Trained on each rating :math:`(u, i)` with the regularised objective

.. math::

   \mathcal L(\hat r_{ui}, r_{ui}) + \lambda\,(\lVert p_u\rVert^2 + \lVert q_i\rVert^2),

:math:`\mathcal L` the loss (squared error by default), :math:`\lambda` = ``TrainConfig.l2``;
:math:`h` and :math:`c` are not penalised. The generic, name-based
`recsys_jax.objectives.penalties.touched_rows_penalty` is this sum over a batch.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from recsys_jax.models._common import batched, initial_offset, scaled_normal
from recsys_jax.models.spec import ModelSpec


class Config(NamedTuple):
    embedding_dim: int = 50
    init_scale: float = 0.1
    mean_rating: float = 3.5  # set by `fit`; initial output bias
    y_range: tuple[float, float] | None = None


class Params(NamedTuple):
    user_factors: Array  # float32[U, K]
    item_factors: Array  # float32[I, K]
    out_w: Array  # float32[K]
    out_b: Array  # float32[]


def init(key: Array, num_users: int, num_items: int, config: Config = Config()) -> Params:
    """Factors from N(0, init_scale^2), h = 1, c = the training mean."""
    ukey, ikey = jax.random.split(key)
    k, s = config.embedding_dim, config.init_scale
    return Params(
        user_factors=scaled_normal(ukey, (num_users, k), s),
        item_factors=scaled_normal(ikey, (num_items, k), s),
        out_w=jnp.ones((k,), jnp.float32),
        out_b=jnp.asarray(initial_offset(config), jnp.float32),
    )


def predict_one(
    params: Params, user: Array, item: Array, key: Array | None = None, *, config: Config = Config()
) -> Array:
    """r_ui = c + h . (p_u * q_i)"""
    return params.out_b + params.out_w @ (params.user_factors[user] * params.item_factors[item])


apply = batched(predict_one)


def block_scores(params: Params, users: Array, config: Config = Config(), aux=None, user_times=None) -> Array:
    """Every item for the users ``users[C]``, ``float32[C, I]``: one matrix product."""
    return params.out_b + (params.user_factors[users] * params.out_w) @ params.item_factors.T


# row_local: each user_*/item_* table is read only at the row of the pair's user/item, so
# row-sparse optimizers (recsys_jax.engine.sparse) can train it.
SPEC = ModelSpec("gmf", Config, Params, init, apply, predict_one=predict_one, block_scores=block_scores, row_local=True, doc=__doc__)
