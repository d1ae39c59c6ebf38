r"""Regularisers for the train step: ``penalty(params, users[B], items[B]) -> float32[B]``.

A penalty is per example, like a loss, and is added to it before the masked mean, so the
objective of a batch is

.. math::

   \frac{1}{B}\sum_{(u,i,r)\in\text{batch}} \Big[\ell(\hat r_{ui}, r)
       + \lambda\,(\lVert p_u\rVert^2 + \lVert q_i\rVert^2)
       + \lambda_b\,(b_u^2 + b_i^2)\Big].

This is L2 on the embedding rows that the batch touches, weighted by how often each row
occurs: the classic regularised-SVD objective (Koren et al. 2009) and the notebook's
``l2(1e-4)`` on its embeddings. Rows are found by name: a ``Params`` field called
``user_*`` is indexed by ``users``, ``item_*`` by ``items``; ``*_bias`` fields take
:math:`\lambda_b`, all others :math:`\lambda`. Dense layers are not penalised here (use
decoupled weight decay in `recsys_jax.optim.make_optimizer`).
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import Array


def _row_sq_norms(params, users: Array, items: Array, *, bias: bool) -> Array:
    total = jnp.zeros(users.shape, jnp.float32)
    for name, table in params._asdict().items():
        if name.endswith("_bias") != bias:
            continue
        if name.startswith("user_"):
            rows = table[users]
        elif name.startswith("item_"):
            rows = table[items]
        else:
            continue
        total = total + jnp.square(rows).reshape(rows.shape[0], -1).sum(axis=1)
    return total


def make_l2_penalty(weight: float, bias_weight: float = 0.0):
    """L2 on the touched embedding rows (``weight``) and bias entries (``bias_weight``)."""

    def penalty(params, users: Array, items: Array) -> Array:
        out = weight * _row_sq_norms(params, users, items, bias=False)
        if bias_weight:
            out = out + bias_weight * _row_sq_norms(params, users, items, bias=True)
        return out

    return penalty
