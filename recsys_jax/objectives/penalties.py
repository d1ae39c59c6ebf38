r"""Regularisers for the train step:
``penalty(params, users[B], items[B], weight[B], *, times=None) -> float32[]``.

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
already) doubles the scatter-add in the backward pass, which on CPU cost a large share of
a step at batch 8192. The same sum is

.. math::

   \sum_b w_b \lVert p_{u_b}\rVert^2 = \sum_u c_u \lVert p_u\rVert^2,
   \qquad c_u = \sum_{b:\,u_b = u} w_b,

so we scatter ``B`` scalar weights into per-row counts and take a dense weighted sum over
the table, whose gradient :math:`2\lambda c_u p_u` fuses into the (already dense) Adam
update. Rows are found by name: a ``Params`` field called ``user_*`` is indexed by
``users``, ``item_*`` by ``items``; ``*_bias`` fields take :math:`\lambda_b`, all others
:math:`\lambda`. Dense layers are not penalised here (use decoupled weight decay in
`recsys_jax.optim.optimizers.make_optimizer`).

A model whose objective penalises more than the rows of the pair itself defines its own
``penalty(params, users, items, weight, *, l2, bias_l2, config, aux=None, times=None)``
in its module, the weighted sum over the batch of the per-example terms its docstring
writes: SVD++ penalises :math:`y_j` for every :math:`j \in N(u)`, timeSVD the one time-bin
bias :math:`b_{i,\mathrm{Bin}(t)}` and the drift :math:`\alpha_u`, the factorization machine
the pair's side features. `make_model_penalty` returns the model's own penalty with ``l2``,
``bias_l2``, ``config`` and ``aux`` bound, and the name-based `touched_rows_penalty` for
the row-local models (dot, bias, mlp, gmf, neumf). ``times`` (float32[B] days) reaches
every penalty as a keyword for time-aware models; the others accept and ignore it.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import Array

from recsys_jax.models._common import row_weights, weighted_sq_norm


def _weighted_row_sq_norms(params, users: Array, items: Array, weight: Array, *, bias: bool) -> Array:
    total = jnp.zeros((), jnp.float32)
    counts = {}
    for name, table in params._asdict().items():
        if name.endswith("_bias") != bias or not name.startswith(("user_", "item_")):
            continue
        side = name.split("_", 1)[0]
        if side not in counts:
            counts[side] = row_weights(users if side == "user" else items, weight, table.shape[0])
        total = total + weighted_sq_norm(table, counts[side])
    return total


def touched_rows_penalty(params, users: Array, items: Array, weight: Array, *, l2: float, bias_l2: float = 0.0,
                         config=None, aux=None, times: Array | None = None) -> Array:
    r"""The name-based penalty of the row-local models:
    :math:`\sum_b w_b\,[\lambda \sum \lVert\text{row}\rVert^2 + \lambda_b \sum \text{bias}^2]` over the
    ``user_*`` rows of :math:`u_b` and the ``item_*`` rows of :math:`i_b` (``*_bias``: :math:`\lambda_b`)."""
    out = l2 * _weighted_row_sq_norms(params, users, items, weight, bias=False)
    if bias_l2:
        out = out + bias_l2 * _weighted_row_sq_norms(params, users, items, weight, bias=True)
    return out


def make_l2_penalty(weight: float, bias_weight: float = 0.0):
    """L2 on the touched embedding rows (``weight``) and bias entries (``bias_weight``), by name."""

    def penalty(params, users: Array, items: Array, example_weight: Array, *, times: Array | None = None) -> Array:
        return touched_rows_penalty(params, users, items, example_weight, l2=weight, bias_l2=bias_weight)

    return penalty


def make_model_penalty(spec=None, config=None, aux=None, l2: float = 0.0, bias_l2: float = 0.0):
    """The penalty of the objective written in the model's docstring, with ``l2`` (factors)
    and ``bias_l2`` (biases): the ``penalty`` of its `recsys_jax.models.spec.ModelSpec` if it
    has one (its ``config`` and ``aux`` bound), else `touched_rows_penalty`
    (``make_l2_penalty(l2, bias_l2)``).

    Returns ``penalty(params, users[B], items[B], weight[B], *, times=None) -> float32[]``.
    """
    own = None if spec is None else spec.penalty
    if own is None:
        return make_l2_penalty(l2, bias_l2)

    def penalty(params, users: Array, items: Array, weight: Array, *, times: Array | None = None) -> Array:
        return own(params, users, items, weight, l2=l2, bias_l2=bias_l2, config=config, aux=aux, times=times)

    return penalty


def make_table_l2_penalty(weight: float):
    r"""Keras' ``l2(weight)`` on whole tables: :math:`\lambda\,(\lVert P\rVert_F^2 + \lVert Q\rVert_F^2)`
    added to the loss of every mini-batch, however few rows the batch touches.

    This is the course notebook's ``W_regularizer=l2(1e-4)`` on the user and item factor
    tables (every ``user_*`` / ``item_*`` field that is not a ``*_bias``); its gradient
    :math:`2\lambda W` reaches every row at every step. The train step divides the sum of
    per-example terms by the batch weight, so the penalty is returned as that weight times
    the table norm, and the objective of a batch is exactly
    :math:`\frac{1}{\sum_b w_b}\sum_b w_b\,\ell_b + \lambda(\lVert P\rVert_F^2 + \lVert Q\rVert_F^2)`.
    """

    def penalty(params, users: Array, items: Array, example_weight: Array, *, times: Array | None = None) -> Array:
        norms = sum(jnp.sum(jnp.square(t)) for name, t in params._asdict().items()
                    if name.startswith(("user_", "item_")) and not name.endswith("_bias"))
        return weight * jnp.sum(example_weight) * norms

    return penalty
