r"""Metrics: accuracy for explicit ratings, and top-k ranking for implicit feedback.

Accuracy (NumPy in, Python float out): `rmse`, `mae`.

Ranking: `recall_at_k` and `ndcg_at_k` (both from `ranking_metrics`) rank the *full*
catalogue for every user who has a held-out positive, after removing the items in that
user's training positives (``exclude``); with :math:`T_u` the user's held-out items and
:math:`i_1, \dots, i_k` the top :math:`k`,

.. math::

   \mathrm{recall@}k(u) = \frac{|\{i_1..i_k\} \cap T_u|}{|T_u|}, \qquad
   \mathrm{NDCG@}k(u) = \frac{\sum_{j=1}^{k} [i_j \in T_u] / \log_2(j + 1)}
                             {\sum_{j=1}^{\min(k, |T_u|)} 1 / \log_2(j + 1)},

averaged over those users. Scores come from a *score function*
``score_fn(params, users[C]) -> float32[C, I]`` (every item's score for each user):
`make_score_fn` builds one for a registered model (a dense matrix product for the dot
family, else the model's ``apply`` over the user-by-catalogue grid in blocks),
`broadcast_scores` gives every user the same item scores (the popularity baseline) and
`matrix_scores` reads a given score matrix. Users go through in chunks: one jitted
program scores a chunk, masks the excluded items to :math:`-\infty` and takes
`jax.lax.top_k`, so memory is bounded by ``chunk_users * num_items`` scores.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from recsys_jax.models import make_apply

# Scores held at once: chunk_users * num_items (16 MB of float32).
SCORE_BUDGET = 1 << 22
# Pairs per block in the apply route (gathered embedding rows stay small).
APPLY_BLOCK = 1 << 15


def rmse(predictions, targets) -> float:
    """Root mean squared error."""
    e = np.asarray(predictions, np.float64) - np.asarray(targets, np.float64)
    return float(np.sqrt(np.mean(e * e)))


def mae(predictions, targets) -> float:
    """Mean absolute error."""
    e = np.asarray(predictions, np.float64) - np.asarray(targets, np.float64)
    return float(np.mean(np.abs(e)))


# -- score functions -------------------------------------------------------------------
def matrix_scores(score_matrix, users):
    """``score_matrix[users]``: a given float[U, I] score matrix as a score function."""
    return score_matrix[users]


def broadcast_scores(item_scores, users):
    """The same float[I] item scores for every user (a non-personalised baseline)."""
    return jnp.broadcast_to(item_scores[None, :], (users.shape[0], item_scores.shape[0]))


def _dot_scores(params, users):
    return params.user_factors[users] @ params.item_factors.T


def _bias_scores(params, users):
    return (params.global_bias + params.user_bias[users][:, None] + params.item_bias[None, :]
            + params.user_factors[users] @ params.item_factors.T)


# The dot-product family: all items for a user are one matrix product, not I gathers.
DENSE_SCORES = {"dot": _dot_scores, "bias": _bias_scores}


@functools.lru_cache(maxsize=64)
def make_score_fn(model: str, config, num_items: int, *, dense: bool = True) -> Callable:
    """``score_fn(params, users[C]) -> float32[C, num_items]`` for a registered model.

    Cached per arguments so jitted callers compile once. Models in `DENSE_SCORES` use
    their matrix form (then the y-range squash, if any) unless ``dense=False``; the
    others call ``apply`` on ``(u, i)`` for every item, in blocks of about `APPLY_BLOCK`
    pairs. Models that need ``aux`` or times are not supported.
    """
    apply_fn = make_apply(model, config)
    dense = DENSE_SCORES.get(model) if dense else None
    y_range = getattr(config, "y_range", None)
    if dense is not None:
        def score_fn(params, users):
            x = dense(params, users)
            if y_range is None:
                return x
            lo, hi = y_range
            return lo + (hi - lo) * jax.nn.sigmoid(x)

        return score_fn
    all_items = jnp.arange(num_items, dtype=jnp.int32)

    def score_fn(params, users):
        def one(u):
            return apply_fn(params, jnp.full((num_items,), u, jnp.int32), all_items)

        return jax.lax.map(one, users, batch_size=max(1, min(users.shape[0], APPLY_BLOCK // num_items)))

    return score_fn


# -- top-k over the catalogue ----------------------------------------------------------
@functools.lru_cache(maxsize=64)
def _top_k_program(score_fn: Callable, k: int) -> Callable:
    @jax.jit
    def top(params, users, rows, cols):
        scores = score_fn(params, users)
        scores = scores.at[rows, cols].set(-jnp.inf, mode="drop")  # padding rows are out of range
        return jax.lax.top_k(scores, k)[1]

    return top


def _pairs_by_user(ratings, num_users: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR of the (user, item) pairs: ``indptr`` int64[U+1] and items sorted by user."""
    order = np.argsort(ratings.users, kind="stable")
    indptr = np.zeros(num_users + 1, np.int64)
    np.cumsum(np.bincount(ratings.users, minlength=num_users), out=indptr[1:])
    return indptr, np.asarray(ratings.items)[order]


def top_k_items(score_fn: Callable, params, users, k: int, *, num_items: int, exclude=None,
                chunk_users: int | None = None) -> np.ndarray:
    r"""The ``k`` best-scored items for each of ``users``, int32[len(users), k], best first.

    ``exclude`` (a `Ratings`, e.g. the training positives) lists pairs that are never
    recommended: their scores are set to :math:`-\infty` before the top-k (so with fewer
    than ``k`` items left, the tail is excluded items). Ties go to the lower item index.
    """
    users = np.asarray(users)
    if users.ndim != 1 or (users.size and (users.dtype.kind not in "iu" or users.min() < 0)):
        raise ValueError("top_k_items: users must be a 1-D array of non-negative integer indices")
    from recsys_jax.predict import table_sizes

    num_user_rows = table_sizes(params)[0] if hasattr(params, "_fields") else None
    if num_user_rows is not None and users.size and users.max() >= num_user_rows:
        raise ValueError(f"top_k_items: user index {int(users.max())} is out of range 0..{num_user_rows - 1}")
    users = users.astype(np.int32)
    k = min(int(k), num_items)
    if chunk_users is None:
        chunk_users = max(1, min(4096, SCORE_BUDGET // max(num_items, 1)))
    chunk_users = 1 << (max(int(chunk_users), 1).bit_length() - 1)  # a power of two: few shapes
    chunk_users = min(chunk_users, 1 << max(len(users) - 1, 0).bit_length())
    if exclude is not None:
        num_users = max(int(exclude.num_users), int(users.max(initial=-1)) + 1)
        indptr, excluded_items = _pairs_by_user(exclude, num_users)
    top = _top_k_program(score_fn, k)
    out = np.empty((len(users), k), np.int32)
    for start in range(0, len(users), chunk_users):
        chunk = users[start:start + chunk_users]
        m = len(chunk)
        padded = np.pad(chunk, (0, chunk_users - m))
        if exclude is None:
            rows = cols = np.zeros(0, np.int32)
        else:
            lo, hi = indptr[chunk], indptr[chunk + 1]
            counts = hi - lo
            rows = np.repeat(np.arange(m, dtype=np.int32), counts)
            cols = excluded_items[np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())]
        size = max(256, 1 << max(len(rows) - 1, 0).bit_length())  # padded to a power of two: few shapes
        rows = np.pad(rows.astype(np.int32), (0, size - len(rows)), constant_values=chunk_users)
        cols = np.pad(np.asarray(cols, np.int32), (0, size - len(cols)))
        out[start:start + m] = np.asarray(top(params, jnp.asarray(padded), jnp.asarray(rows), jnp.asarray(cols)))[:m]
    return out


def ranking_metrics(score_fn: Callable, params, test, *, k: int = 10, exclude=None,
                    chunk_users: int | None = None) -> dict:
    """Recall@k and NDCG@k of ``score_fn`` on the held-out pairs ``test`` (see the module docstring).

    Returns ``{"recall": float, "ndcg": float, "num_users": int}``, averaged over the users
    with at least one pair in ``test``; ``exclude`` (a `Ratings`) removes each user's known
    positives from the ranking.
    """
    num_items = int(test.num_items)
    codes = np.unique(test.users.astype(np.int64) * num_items + test.items)
    users_all = codes // num_items
    users, num_relevant = np.unique(users_all, return_counts=True)
    if len(users) == 0:
        return {"recall": float("nan"), "ndcg": float("nan"), "num_users": 0}
    top = top_k_items(score_fn, params, users, k, num_items=num_items, exclude=exclude, chunk_users=chunk_users)
    hits = np.isin(users[:, None].astype(np.int64) * num_items + top, codes)  # bool[U', k]
    discount = 1.0 / np.log2(np.arange(2, top.shape[1] + 2))
    ideal = np.cumsum(discount)[np.minimum(num_relevant, top.shape[1]) - 1]
    recall = hits.sum(axis=1) / num_relevant
    ndcg = (hits * discount).sum(axis=1) / ideal
    return {"recall": float(recall.mean()), "ndcg": float(ndcg.mean()), "num_users": len(users)}


def recall_at_k(score_fn: Callable, params, test, *, k: int = 10, exclude=None,
                chunk_users: int | None = None) -> float:
    """Mean recall@k over the users in ``test`` (`ranking_metrics`)."""
    return ranking_metrics(score_fn, params, test, k=k, exclude=exclude, chunk_users=chunk_users)["recall"]


def ndcg_at_k(score_fn: Callable, params, test, *, k: int = 10, exclude=None,
              chunk_users: int | None = None) -> float:
    """Mean NDCG@k over the users in ``test`` (`ranking_metrics`)."""
    return ranking_metrics(score_fn, params, test, k=k, exclude=exclude, chunk_users=chunk_users)["ndcg"]
