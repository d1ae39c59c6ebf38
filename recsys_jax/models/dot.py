r"""Dot-product latent factors: the course notebook's first model.

.. math::

   \hat r_{ui} = p_u^\top q_i

=================  ==========================
symbol             argument
=================  ==========================
:math:`p_u`        ``params.user_factors[u]``
:math:`q_i`        ``params.item_factors[i]``
=================  ==========================

Trained on each rating :math:`(u, i)` with the regularised objective

.. math::

   \mathcal L(\hat r_{ui}, r_{ui}) + \lambda\,(\lVert p_u\rVert^2 + \lVert q_i\rVert^2),

:math:`\mathcal L` the loss (squared error by default), :math:`\lambda` = ``TrainConfig.l2``.
The generic, name-based `recsys_jax.objectives.penalties.touched_rows_penalty` is this sum over a batch.

With no biases the factors must also carry each user's and item's mean, which is why
the notebook's second model adds them. L2 on the rows a batch touches (the notebook's
``l2(1e-4)``) comes from `recsys_jax.objectives.penalties`.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
from jax import Array

from recsys_jax.models._common import batched, embedding_init, users_rows
from recsys_jax.models.spec import ModelSpec


class Config(NamedTuple):
    embedding_dim: int = 50
    init_scale: float = 0.1  # std of the normal init (half-width for init="uniform")
    init: str = "normal"  # or "uniform": U(-init_scale, init_scale), Keras' embedding default
    mean_rating: float = 3.5  # unused: kept so every model takes the same fields
    y_range: tuple[float, float] | None = None  # optional sigmoid squash (models.make_apply)


class Params(NamedTuple):
    user_factors: Array  # float32[U, K]
    item_factors: Array  # float32[I, K]


def init(key: Array, num_users: int, num_items: int, config: Config = Config()) -> Params:
    """Factors drawn from N(0, init_scale^2), or U(-init_scale, init_scale) with init="uniform"."""
    ukey, ikey = jax.random.split(key)
    k = config.embedding_dim
    return Params(
        user_factors=embedding_init(ukey, (num_users, k), config),
        item_factors=embedding_init(ikey, (num_items, k), config),
    )


def predict_one(
    params: Params, user: Array, item: Array, key: Array | None = None, *, config: Config = Config()
) -> Array:
    """r_ui = p_u . q_i"""
    return params.user_factors[user] @ params.item_factors[item]


def score_matrix(params: Params, *, config: Config = Config()) -> Array:
    """Every (user, item) pair at once, ``float32[U, I]``: :math:`P Q^\top` (one matrix product)."""
    return params.user_factors @ params.item_factors.T


apply = batched(predict_one)


def block_scores(params: Params, users: Array, config: Config = Config(), aux=None, user_times=None) -> Array:
    """Every item for the users ``users[C]``, ``float32[C, I]`` (`score_matrix` of their rows)."""
    return score_matrix(users_rows(params, users), config=config)


# row_local: each user_*/item_* table is read only at the row of the pair's user/item, so
# row-sparse optimizers (recsys_jax.engine.sparse) can train it.
SPEC = ModelSpec("dot", Config, Params, init, apply, predict_one=predict_one, score_matrix=score_matrix, block_scores=block_scores,
                 row_local=True, factorization="dot", doc=__doc__)
