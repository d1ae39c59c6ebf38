r"""Regularisers for the train step: ``penalty(params, users[B], items[B], weight[B]) -> float32[]``.

A penalty returns the weighted *sum* over the batch of per-example penalties; the train
step adds it to the weighted sum of the losses and divides by the total weight (padding
has weight 0). The objective of a batch is then

.. math::

   \frac{1}{\sum_b w_b}\sum_b w_b \Big[\ell(\hat r_{u_b i_b}, r_b)
       + \lambda\,(\lVert p_{u_b}\rVert^2 + \lVert q_{i_b}\rVert^2)
       + \lambda_b\,(b_{u_b}^2 + b_{i_b}^2)\Big].

This is L2 on the embedding rows that the batch touches, weighted by how often each row
occurs: the classic regularised-SVD objective (Koren et al. 2009) and the notebook's
``l2(1e-4)`` on its embeddings.

How it is computed. Gathering the touched rows a second time (the model gathered them
already) doubles the scatter-add in the backward pass, which on CPU cost 45% of a step at
batch 8192. The same sum is

.. math::

   \sum_b w_b \lVert p_{u_b}\rVert^2 = \sum_u c_u \lVert p_u\rVert^2,
   \qquad c_u = \sum_{b:\,u_b = u} w_b,

so we scatter ``B`` scalar weights into per-row counts and take a dense weighted sum over
the table, whose gradient :math:`2\lambda c_u p_u` fuses into the (already dense) Adam
update. Rows are found by name: a ``Params`` field called ``user_*`` is indexed by
``users``, ``item_*`` by ``items``; ``*_bias`` fields take :math:`\lambda_b`, all others
:math:`\lambda`. Dense layers are not penalised here (use decoupled weight decay in
`recsys_jax.optim.make_optimizer`).
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import Array


def _weighted_row_sq_norms(params, users: Array, items: Array, weight: Array, *, bias: bool) -> Array:
    total = jnp.zeros((), jnp.float32)
    counts = {}
    for name, table in params._asdict().items():
        if name.endswith("_bias") != bias or not name.startswith(("user_", "item_")):
            continue
        side = name.split("_", 1)[0]
        if side not in counts:
            index = users if side == "user" else items
            counts[side] = jnp.zeros(table.shape[0], jnp.float32).at[index].add(weight)
        row_sq = jnp.square(table).reshape(table.shape[0], -1).sum(axis=1)
        total = total + jnp.sum(counts[side] * row_sq)
    return total


def make_l2_penalty(weight: float, bias_weight: float = 0.0):
    """L2 on the touched embedding rows (``weight``) and bias entries (``bias_weight``)."""

    def penalty(params, users: Array, items: Array, example_weight: Array) -> Array:
        out = weight * _weighted_row_sq_norms(params, users, items, example_weight, bias=False)
        if bias_weight:
            out = out + bias_weight * _weighted_row_sq_norms(params, users, items, example_weight, bias=True)
        return out

    return penalty
