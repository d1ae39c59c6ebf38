r"""The course notebook's neural net on the concatenated embeddings.

.. math::

   h_0 &= \operatorname{drop}_{0.3}\big([p_u;\, q_i]\big) \\
   h_1 &= \operatorname{drop}_{0.75}\big(\operatorname{relu}(W_1 h_0 + c_1)\big) \\
   \hat r_{ui} &= w_2^\top h_1 + c_2

=======================  ====================================
symbol                   argument
=======================  ====================================
:math:`p_u, q_i`         ``params.user_factors[u]``, ``params.item_factors[i]``
:math:`W_1, c_1`         ``params.hidden_w`` (float32[2K, H]), ``params.hidden_b``
:math:`w_2, c_2`         ``params.out_w`` (float32[H]), ``params.out_b``
drop rates               ``config.input_dropout``, ``config.hidden_dropout``
=======================  ====================================

Trained on each rating :math:`(u, i)` with the regularised objective

.. math::

   \mathcal L(\hat r_{ui}, r_{ui}) + \lambda\,(\lVert p_u\rVert^2 + \lVert q_i\rVert^2),

:math:`\mathcal L` the loss (squared error by default), :math:`\lambda` = ``TrainConfig.l2``; the
dense layers are not in it (``TrainConfig.weight_decay`` decays their matrices, decoupled).
The generic, name-based `recsys_jax.objectives.penalties.touched_rows_penalty` is this sum over a batch.

Dropout is inverted (kept units scaled by 1/(1-rate)) and happens only when a key is
passed; with no key the net is deterministic (inference). The notebook used K=50, H=70.
The output bias starts at the training mean so the net does not spend its first epoch
learning the offset 3.5 (``global_mean=False``: at 0, as the notebook's Keras net did).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from recsys_jax.models._common import batched, embedding_init, initial_offset
from recsys_jax.models.spec import ModelSpec


class Config(NamedTuple):
    embedding_dim: int = 50
    hidden: int = 70
    input_dropout: float = 0.3
    hidden_dropout: float = 0.75
    init_scale: float = 0.05  # std of N(0, s^2); half-width with init="uniform"
    mean_rating: float = 3.5  # set by `fit`; initial output bias
    init: str = "normal"  # or "uniform": U(-s, s), Keras' embedding default (the notebook)
    global_mean: bool = True  # False: the output bias starts at 0 (Keras' zero bias), not the mean
    y_range: tuple[float, float] | None = None


class Params(NamedTuple):
    user_factors: Array  # float32[U, K]
    item_factors: Array  # float32[I, K]
    hidden_w: Array  # float32[2K, H]
    hidden_b: Array  # float32[H]
    out_w: Array  # float32[H]
    out_b: Array  # float32[]


def init(key: Array, num_users: int, num_items: int, config: Config = Config()) -> Params:
    """Embeddings from N(0, init_scale^2) (or U(-s, s)); dense layers Glorot-uniform, as in Keras."""
    ukey, ikey, hkey, okey = jax.random.split(key, 4)
    k, h = config.embedding_dim, config.hidden
    glorot = jax.nn.initializers.glorot_uniform()
    return Params(
        user_factors=embedding_init(ukey, (num_users, k), config),
        item_factors=embedding_init(ikey, (num_items, k), config),
        hidden_w=glorot(hkey, (2 * k, h), jnp.float32),
        hidden_b=jnp.zeros((h,), jnp.float32),
        out_w=glorot(okey, (h, 1), jnp.float32)[:, 0],
        out_b=jnp.asarray(initial_offset(config), jnp.float32),
    )


def _dropout(key: Array | None, rate: float, x: Array) -> Array:
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def predict_one(
    params: Params, user: Array, item: Array, key: Array | None = None, *, config: Config = Config()
) -> Array:
    """r_ui = w2 . drop(relu(W1 drop([p_u; q_i]) + c1)) + c2"""
    k0, k1 = (None, None) if key is None else jax.random.split(key)
    h0 = _dropout(k0, config.input_dropout, jnp.concatenate([params.user_factors[user], params.item_factors[item]]))
    h1 = _dropout(k1, config.hidden_dropout, jax.nn.relu(h0 @ params.hidden_w + params.hidden_b))
    return h1 @ params.out_w + params.out_b


apply = batched(predict_one, stochastic=True)


# row_local: each user_*/item_* table is read only at the row of the pair's user/item, so
# row-sparse optimizers (recsys_jax.engine.sparse) can train it.
SPEC = ModelSpec("mlp", Config, Params, init, apply, predict_one=predict_one, row_local=True, doc=__doc__)
