r"""Ranking losses: a positive pair's score against sampled items (BPR, sampled softmax).

The explicit ratings become implicit feedback by a threshold (`implicit`: a rating of at
least 4 stars is a positive). A model then learns to *rank*: each positive pair
:math:`(u, i)` is scored against :math:`N` items :math:`j_1..j_N` drawn uniformly from
the catalogue for that example, fresh in every batch. The model's ``apply`` gives the
scores :math:`s_{ui}`; a ranking loss is ``loss(pos_scores[B], neg_scores[B, N]) ->
per-example``, and the caller reduces (a masked mean, `recsys_jax.engine.step.make_ranking_objective`):

=====================  =====================================================================
name                   per-example value, :math:`x = s_{ui}`, :math:`y_n = s_{uj_n}`
=====================  =====================================================================
``bpr``                :math:`\frac1N \sum_n -\log \sigma(x - y_n)`  (Rendle et al. 2009)
``sampled_softmax``    :math:`-x + \log\big(e^x + \sum_n e^{y_n}\big)`
=====================  =====================================================================

Both depend on the score differences only, so a constant added to every score (a global
bias) changes nothing. Uniform negatives may hit an item the user did rate (a "false
negative"); with a catalogue much larger than a user's positives that is rare and, as in
the BPR paper, left alone. Because the proposal is uniform, the sampled softmax needs no
:math:`\log Q` correction (it would add the same constant to every score).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import Array


def bpr(pos_scores: Array, neg_scores: Array) -> Array:
    r"""Bayesian personalised ranking: the mean over the negatives of :math:`-\log\sigma(x - y_n)`.

    .. math::

       \ell(x, y) = \frac1N \sum_{n=1}^N -\log \sigma(x - y_n)
                  = \frac1N \sum_{n=1}^N \operatorname{softplus}(y_n - x)

    =================  ====================================================
    symbol             argument
    =================  ====================================================
    :math:`x`          ``pos_scores`` float[B], the positive pair's score
    :math:`y_n`        ``neg_scores`` float[B, N], the sampled negatives'
    =================  ====================================================

    Non-negative; ``log 2`` when the scores are equal; decreasing in :math:`x`.

    References: Rendle, Freudenthaler, Gantner, Schmidt-Thieme, "BPR: Bayesian
    Personalized Ranking from Implicit Feedback", UAI 2009.

    >>> [round(float(v), 4) for v in bpr(jnp.array([0.0, 2.0]), jnp.array([[0.0, 0.0], [0.0, 2.0]]))]
    [0.6931, 0.41]
    """
    return jnp.mean(jax.nn.softplus(neg_scores - pos_scores[..., None]), axis=-1)


def sampled_softmax(pos_scores: Array, neg_scores: Array) -> Array:
    r"""Softmax cross-entropy of the positive among itself and the sampled negatives.

    .. math::

       \ell(x, y) = -x + \log\Big(e^{x} + \sum_{n=1}^N e^{y_n}\Big)
                  = -\log \frac{e^x}{e^x + \sum_n e^{y_n}}

    (symbols as in `bpr`). Computed with a log-sum-exp, so it neither overflows nor
    underflows. Non-negative (:math:`\log\sum \ge x`); :math:`\log(N + 1)` when all
    scores are equal; decreasing in :math:`x`.

    >>> [round(float(v), 4) for v in sampled_softmax(jnp.array([0.0, 2.0]), jnp.array([[0.0, 0.0], [0.0, 2.0]]))]
    [1.0986, 0.7586]
    """
    logits = jnp.concatenate([pos_scores[..., None], neg_scores], axis=-1)
    return jax.nn.logsumexp(logits, axis=-1) - pos_scores


RANKING_LOSSES = {
    "bpr": bpr,
    "sampled_softmax": sampled_softmax,
}


def get_ranking_loss(name: str) -> Callable:
    try:
        return RANKING_LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown ranking loss {name!r}; known: {', '.join(RANKING_LOSSES)}") from None
