r"""SVD++ (Koren, 2008): the bias model plus implicit feedback from what each user rated.

.. math::

   \hat r_{ui} = \mu + b_u + b_i + q_i^\top\Big(p_u + |N(u)|^{-\frac12}\sum_{j\in N(u)} y_j\Big)

=====================  ==============================================================
symbol                 argument
=====================  ==============================================================
:math:`\mu, b_u, b_i`  ``params.global_bias``, ``params.user_bias[u]``, ``params.item_bias[i]``
:math:`p_u, q_i`       ``params.user_factors[u]``, ``params.item_factors[i]``
:math:`y_j`            ``params.item_implicit[j]``: what having rated item j says about u
:math:`N(u)`           the items u rated in the *training split*: ``aux`` (from `prepare`)
=====================  ==============================================================

Trained on each rating :math:`(u, i)` with the regularised objective of Koren (2008)

.. math::

   \mathcal L(\hat r_{ui}, r_{ui})
   + \lambda\Big(\lVert p_u\rVert^2 + \lVert q_i\rVert^2 + \sum_{j\in N(u)} \lVert y_j\rVert^2\Big)
   + \lambda_b\,(b_u^2 + b_i^2),

:math:`\mathcal L` the loss (squared error by default), :math:`\lambda` = ``TrainConfig.l2``,
:math:`\lambda_b` = ``TrainConfig.bias_l2``; :math:`\mu` is
not penalised. `penalty` is the weighted sum of these terms over a batch.

``prepare(train, config)`` builds the implicit-feedback lists once from the training
ratings. ``predict_one`` reads like the formula (a masked sum over the list, O(N) per
pair: for tests and single predictions); ``apply`` is the batched form: it sums
:math:`|N(u)|^{-1/2}\sum_j y_j` for every user once per batch with one
`jax.ops.segment_sum` over the training pairs, then gathers the batch's users. Its cost
per step is O(N_train K), so larger batches make an epoch cheaper. `penalty` never lists
:math:`N(u)` per example either: with :math:`c_u = \sum_{b: u_b = u} w_b` the batch weight of
user u, :math:`\sum_b w_b \sum_{j\in N(u_b)} \lVert y_j\rVert^2 = \sum_j d_j \lVert y_j\rVert^2`
where :math:`d_j = \sum_{u:\, j\in N(u)} c_u` is one scalar segment sum over the training pairs.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from recsys_jax.models._common import biased_product, initial_offset, row_weights, scaled_normal, weighted_sq_norm
from recsys_jax.models.spec import FoldIn, ModelSpec


class Config(NamedTuple):
    embedding_dim: int = 50
    init_scale: float = 0.01
    mean_rating: float = 3.5  # set by `fit` to the training mean
    y_range: tuple[float, float] | None = None


class Params(NamedTuple):
    global_bias: Array  # float32[]
    user_bias: Array  # float32[U]
    item_bias: Array  # float32[I]
    user_factors: Array  # float32[U, K]
    item_factors: Array  # float32[I, K]
    item_implicit: Array  # float32[I, K]


class Aux(NamedTuple):
    rated_users: Array  # int32[N]: user of each training pair (N(u) as a flat list)
    rated_items: Array  # int32[N]: the rated item j
    norm: Array  # float32[U]: |N(u)|^-1/2, 0 for a user with no training ratings


def prepare(train, config: Config = Config()) -> Aux:
    """N(u) from the training ratings (a `Ratings`): every (u, j) pair, and the norms."""
    counts = np.bincount(train.users, minlength=train.num_users).astype(np.float32)
    norm = np.where(counts > 0, 1.0 / np.sqrt(np.maximum(counts, 1.0)), 0.0).astype(np.float32)
    order = np.argsort(train.users, kind="stable")
    return Aux(jnp.asarray(train.users[order], jnp.int32), jnp.asarray(train.items[order], jnp.int32),
               jnp.asarray(norm))


def init(key: Array, num_users: int, num_items: int, config: Config = Config()) -> Params:
    """Zero biases, factors from N(0, init_scale^2), mu at the mean, and zero implicit factors.

    With :math:`y = 0` an untrained SVD++ is the bias model's init, and :math:`y_j` grows
    only as far as the data pull it against its penalty (random :math:`y` is noise that the
    heavy penalty on :math:`y` must first remove: zero scored better on the validation slice).
    """
    ukey, ikey, _ = jax.random.split(key, 3)  # the third key drew y before; p and q keep theirs
    k, s = config.embedding_dim, config.init_scale
    return Params(
        global_bias=jnp.asarray(initial_offset(config), jnp.float32),
        user_bias=jnp.zeros((num_users,), jnp.float32),
        item_bias=jnp.zeros((num_items,), jnp.float32),
        user_factors=scaled_normal(ukey, (num_users, k), s),
        item_factors=scaled_normal(ikey, (num_items, k), s),
        item_implicit=jnp.zeros((num_items, k), jnp.float32),
    )


def predict_one(
    params: Params, user: Array, item: Array, key: Array | None = None, *, config: Config = Config(), aux: Aux
) -> Array:
    """``r_ui = mu + b_u + b_i + q_i . (p_u + |N(u)|^-1/2 sum_{j in N(u)} y_j)``"""
    in_nu = (aux.rated_users == user)[:, None]
    implicit = aux.norm[user] * jnp.sum(jnp.where(in_nu, params.item_implicit[aux.rated_items], 0.0), axis=0)
    return (
        params.global_bias
        + params.user_bias[user]
        + params.item_bias[item]
        + params.item_factors[item] @ (params.user_factors[user] + implicit)
    )


def implicit_user_vectors(params: Params, aux: Aux) -> Array:
    """``|N(u)|^-1/2 sum_{j in N(u)} y_j`` for every user: ``float32[U, K]``, one segment sum."""
    num_users = params.user_factors.shape[0]
    sums = jax.ops.segment_sum(params.item_implicit[aux.rated_items], aux.rated_users,
                               num_segments=num_users, indices_are_sorted=True)
    return aux.norm[:, None] * sums


def apply(params: Params, users: Array, items: Array, key: Array | None = None, *,
          config: Config = Config(), aux: Aux | None = None, times: Array | None = None) -> Array:
    """Batched `predict_one`: the implicit user vectors are computed once per batch."""
    if aux is None:
        raise ValueError("svdpp: apply needs aux = svdpp.prepare(train_ratings)")
    z = params.user_factors[users] + implicit_user_vectors(params, aux)[users]
    return (params.global_bias + params.user_bias[users] + params.item_bias[items]
            + jnp.sum(params.item_factors[items] * z, axis=-1))


def penalty(params: Params, users: Array, items: Array, weight: Array, *, l2: float, bias_l2: float = 0.0,
            config: Config = Config(), aux: Aux | None = None, times: Array | None = None) -> Array:
    """``sum_b w_b [l2 (|p_u|^2 + |q_i|^2 + sum_{j in N(u)} |y_j|^2) + bias_l2 (b_u^2 + b_i^2)]``"""
    if aux is None:
        raise ValueError("svdpp: penalty needs aux = svdpp.prepare(train_ratings)")
    num_users, num_items = params.user_factors.shape[0], params.item_factors.shape[0]
    c_user, c_item = row_weights(users, weight, num_users), row_weights(items, weight, num_items)
    # d_j = sum of c_u over the users u with j in N(u): how often y_j is penalised in this batch.
    d_implicit = jax.ops.segment_sum(c_user[aux.rated_users], aux.rated_items, num_segments=num_items)
    factors = (weighted_sq_norm(params.user_factors, c_user) + weighted_sq_norm(params.item_factors, c_item)
               + weighted_sq_norm(params.item_implicit, d_implicit))
    biases = weighted_sq_norm(params.user_bias, c_user) + weighted_sq_norm(params.item_bias, c_item)
    return l2 * factors + bias_l2 * biases


def block_scores(params: Params, users: Array, config: Config = Config(), aux: Aux = None, user_times=None) -> Array:
    r"""Every item for the users ``users[C]``, ``float32[C, I]``: one matrix product with
    :math:`z_u = p_u + |N(u)|^{-1/2} \sum_{j \in N(u)} y_j`."""
    z = params.user_factors[users] + implicit_user_vectors(params, aux)[users]
    return biased_product(z, params.item_factors, params.global_bias + params.user_bias[users], params.item_bias)


# -- fold-in (recsys_jax.use.foldin): N(u) of a new user is the items just rated ----------
def fold_in_user_view(params: Params, aux: Aux, others, mask, day):
    """The model as ``M`` new users see it: each one's :math:`N(u)` is its rated items."""
    m = others.shape[0]
    n = np.maximum(mask.sum(axis=1), 1).astype(np.float32)
    view = Aux(jnp.asarray(np.where(mask, 0, 1), jnp.int32), jnp.asarray(others, jnp.int32),
               jnp.asarray((n ** -0.5).reshape(m, 1)))
    return params, view, 0


def fold_in_item_view(params: Params, aux: Aux, others, mask, day):
    """The users' :math:`N(u)` stay as trained: a table of their implicit vectors stands in
    for :math:`y`, read once per user (a new movie's :math:`y_j` stays 0)."""
    num_users = params.user_factors.shape[0]
    z = implicit_user_vectors(params, aux)
    index = jnp.arange(num_users, dtype=jnp.int32)
    return params._replace(item_implicit=z), Aux(index, index, jnp.ones(num_users, jnp.float32)), None


def append_user_aux(aux: Aux, items_per_user, day, first_index: int, ratings_per_user=None, config=None) -> Aux:
    """``aux`` with the new users' :math:`N(u)` after the trained users'."""
    users = np.concatenate([np.full(len(it), first_index + m, np.int32) for m, it in enumerate(items_per_user)])
    items = np.concatenate([np.asarray(it, np.int32) for it in items_per_user])
    norm = np.array([len(it) ** -0.5 for it in items_per_user], np.float32)
    return Aux(jnp.concatenate([aux.rated_users, jnp.asarray(users)]),
               jnp.concatenate([aux.rated_items, jnp.asarray(items)]), jnp.concatenate([aux.norm, norm]))


SPEC = ModelSpec("svdpp", Config, Params, init, apply, predict_one=predict_one, Aux=Aux, prepare=prepare, penalty=penalty,
                 block_scores=block_scores,
                 # y of a new movie is read only through the users' N(u), which fold-in leaves as trained
                 fold_in=FoldIn(fold_in_user_view, fold_in_item_view, append_user_aux,
                                fixed_item_fields=("item_implicit",)),
                 doc=__doc__)
