r"""Neural matrix factorization, NeuMF (He et al., 2017): GMF and an MLP side by side.

.. math::

   g &= p^G_u \odot q^G_i \\
   m_0 &= [p^M_u;\, q^M_i], \quad m_{l} = \operatorname{relu}(W_l m_{l-1} + c_l),\ l = 1, 2, 3 \\
   \hat r_{ui} &= w^\top [g;\, m_3] + c

=======================  ==============================================
symbol                   argument
=======================  ==============================================
:math:`p^G_u, q^G_i`     ``params.user_gmf[u]``, ``params.item_gmf[i]`` (K)
:math:`p^M_u, q^M_i`     ``params.user_mlp[u]``, ``params.item_mlp[i]`` (H1 / 2)
:math:`W_l, c_l`         ``params.w1, b1, w2, b2, w3, b3`` (tower H1 -> H2 -> H3)
:math:`w, c`             ``params.out_w`` (float32[K + H3]), ``params.out_b``
=======================  ==============================================

Trained on each rating :math:`(u, i)` with the regularised objective

.. math::

   \mathcal L(\hat r_{ui}, r_{ui}) + \lambda\,\big(\lVert p^G_u\rVert^2 + \lVert q^G_i\rVert^2
   + \lVert p^M_u\rVert^2 + \lVert q^M_i\rVert^2\big),

:math:`\mathcal L` the loss (squared error by default), :math:`\lambda` = ``TrainConfig.l2``; the
tower and the output layer are not in it (``TrainConfig.weight_decay`` decays the matrices).
The generic, name-based `recsys_jax.objectives.penalties.touched_rows_penalty` is this sum over a batch.

The GMF and MLP paths have separate embeddings, as in the paper. Explicit ratings: a
linear output with MSE, the output bias starting at the training mean. Rendle et al.
(2020) showed that a tuned dot product beats this learned similarity; the accuracy
benchmark puts the two side by side on these data.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from recsys_jax.models._common import batched, initial_offset, scaled_normal
from recsys_jax.models.spec import ModelSpec


class Config(NamedTuple):
    embedding_dim: int = 32  # GMF factors K
    hidden: tuple[int, int, int] = (64, 32, 16)  # MLP tower; MLP embeddings are hidden[0] / 2
    init_scale: float = 0.05
    mean_rating: float = 3.5  # set by `fit`; initial output bias
    y_range: tuple[float, float] | None = None


class Params(NamedTuple):
    user_gmf: Array  # float32[U, K]
    item_gmf: Array  # float32[I, K]
    user_mlp: Array  # float32[U, H1/2]
    item_mlp: Array  # float32[I, H1/2]
    w1: Array  # float32[H1, H1]
    b1: Array  # float32[H1]
    w2: Array  # float32[H1, H2]
    b2: Array  # float32[H2]
    w3: Array  # float32[H2, H3]
    b3: Array  # float32[H3]
    out_w: Array  # float32[K + H3]
    out_b: Array  # float32[]


def init(key: Array, num_users: int, num_items: int, config: Config = Config()) -> Params:
    """Embeddings from N(0, init_scale^2); dense layers Glorot-uniform."""
    keys = jax.random.split(key, 8)
    k, (h1, h2, h3), s = config.embedding_dim, config.hidden, config.init_scale
    if h1 % 2:
        raise ValueError(f"neumf: hidden[0] must be even (it is two MLP embeddings), got {h1}")
    glorot = jax.nn.initializers.glorot_uniform()
    return Params(
        user_gmf=scaled_normal(keys[0], (num_users, k), s),
        item_gmf=scaled_normal(keys[1], (num_items, k), s),
        user_mlp=scaled_normal(keys[2], (num_users, h1 // 2), s),
        item_mlp=scaled_normal(keys[3], (num_items, h1 // 2), s),
        w1=glorot(keys[4], (h1, h1), jnp.float32),
        b1=jnp.zeros((h1,), jnp.float32),
        w2=glorot(keys[5], (h1, h2), jnp.float32),
        b2=jnp.zeros((h2,), jnp.float32),
        w3=glorot(keys[6], (h2, h3), jnp.float32),
        b3=jnp.zeros((h3,), jnp.float32),
        out_w=glorot(keys[7], (k + h3, 1), jnp.float32)[:, 0],
        out_b=jnp.asarray(initial_offset(config), jnp.float32),
    )


def predict_one(
    params: Params, user: Array, item: Array, key: Array | None = None, *, config: Config = Config()
) -> Array:
    """r_ui = w . [p^G_u * q^G_i ; MLP([p^M_u ; q^M_i])] + c"""
    g = params.user_gmf[user] * params.item_gmf[item]
    m = jnp.concatenate([params.user_mlp[user], params.item_mlp[item]])
    m = jax.nn.relu(m @ params.w1 + params.b1)
    m = jax.nn.relu(m @ params.w2 + params.b2)
    m = jax.nn.relu(m @ params.w3 + params.b3)
    return params.out_w @ jnp.concatenate([g, m]) + params.out_b


apply = batched(predict_one)


# row_local: each user_*/item_* table is read only at the row of the pair's user/item, so
# row-sparse optimizers (recsys_jax.engine.sparse) can train it.
SPEC = ModelSpec("neumf", Config, Params, init, apply, predict_one=predict_one, row_local=True, doc=__doc__)
