r"""Metrics: accuracy for explicit ratings, and top-k ranking over the whole catalogue.

Accuracy (NumPy in, Python float out): `rmse`, `mae`.

Ranking. Every metric ranks the *full* catalogue for every user who has a relevant
held-out item, after removing the items in that user's training pairs (``exclude``) and
any item outside ``item_mask``: the *candidates* of user :math:`u` are every item it did
not rate in training. With :math:`T_u` the user's relevant held-out items,
:math:`i_1, \dots, i_k` its top :math:`k` candidates, :math:`h_j = [i_j \in T_u]` and
:math:`m = \min(k, |T_u|)`,

.. math::

   \mathrm{precision@}k(u) &= \frac1k \sum_{j=1}^{k} h_j, \qquad
   \mathrm{recall@}k(u) = \frac{1}{|T_u|}\sum_{j=1}^{k} h_j, \qquad
   \mathrm{hit@}k(u) = \max_j h_j, \\
   \mathrm{NDCG@}k(u) &= \frac{\sum_{j=1}^{k} h_j / \log_2(j + 1)}{\sum_{j=1}^{m} 1 / \log_2(j + 1)}, \qquad
   \mathrm{AP@}k(u) = \frac1m \sum_{j=1}^{k} h_j\,\mathrm{precision@}j(u),

each averaged over those users (MAP is the mean of AP); *catalogue coverage* is the share
of the candidate items (``item_mask``, default all) that appear in at least one of those
users' top :math:`k`. `rank_metrics` computes the per-user values from a hit matrix
(pure NumPy, vectorised over users); `ranking_report` ranks and reports them all;
`ranking_metrics` (recall and NDCG only) is what `recsys_jax.training.ranking` validates with.

Scores come from a *score function* ``score_fn(inputs, users[C]) -> float32[C, I]``
(every item's score for each user): `make_score_fn` builds one for any registered model
(the spec's ``block_scores`` where the model has them, else the model's ``apply`` over the
user-by-catalogue grid in blocks), where ``inputs`` is the model's ``Params`` or, for a
model that reads ``aux``, times or a loss's link, a `ScoreInputs`; `broadcast_scores`
gives every user the same item scores (the popularity baseline) and `matrix_scores`
reads a given score matrix. Users go through in chunks: one jitted program scores a
chunk, masks the excluded items to :math:`-\infty` and takes `jax.lax.top_k`, so memory
is bounded by ``chunk_users * num_items`` scores.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from recsys_jax.models import get_model, make_apply

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
class ScoreInputs(NamedTuple):
    """What a model's scores read besides the user indices (a pytree: jitted callers take it whole)."""

    params: Any  # the model's Params
    aux: Any = None  # the model's prepare() data, for models that have one
    user_times: Any = None  # float32[U]: the day each user is scored at (time-aware models)
    link_params: Any = None  # the loss's Params, when make_score_fn was given its link


def matrix_scores(score_matrix, users):
    """``score_matrix[users]``: a given float[U, I] score matrix as a score function."""
    return score_matrix[users]


def broadcast_scores(item_scores, users):
    """The same float[I] item scores for every user (a non-personalised baseline)."""
    return jnp.broadcast_to(item_scores[None, :], (users.shape[0], item_scores.shape[0]))


@functools.lru_cache(maxsize=64)
def make_score_fn(model: str, config, num_items: int, *, dense: bool = True, link: Callable | None = None
                  ) -> Callable:
    """``score_fn(inputs, users[C]) -> float32[C, num_items]`` for a registered model.

    ``inputs`` is the model's ``Params``, or a `ScoreInputs` for a model that reads
    ``aux`` (svdpp, timesvd, fm), times (timesvd: each user is scored at
    ``user_times[u]``) or a link. ``link(link_params, scores)`` (a
    `recsys_jax.objectives.losses.ParamLoss`'s ``predict``) turns the model's scores into ratings.

    Cached per arguments so jitted callers compile once. Models whose spec has
    ``block_scores`` (scores for a block of users: a matrix product for the factor models)
    use them (then the y-range squash, if any) unless ``dense=False``; the
    others call ``apply`` on ``(u, i)`` for every item, in blocks of about `APPLY_BLOCK`
    pairs.
    """
    apply_fn = make_apply(model, config)
    dense_fn = get_model(model).block_scores if dense else None
    y_range = getattr(config, "y_range", None)
    uses_time = get_model(model).uses_time
    all_items = jnp.arange(num_items, dtype=jnp.int32)

    def raw_scores(inputs: ScoreInputs, users):
        if dense_fn is not None:
            x = dense_fn(inputs.params, users, config, inputs.aux, inputs.user_times)
            if y_range is None:
                return x
            lo, hi = y_range
            return lo + (hi - lo) * jax.nn.sigmoid(x)

        def one(u):
            timed = uses_time and inputs.user_times is not None  # (bfm scores without a day when it has none)
            times = jnp.full((num_items,), inputs.user_times[u]) if timed else None
            return apply_fn(inputs.params, jnp.full((num_items,), u, jnp.int32), all_items, aux=inputs.aux,
                            times=times)

        return jax.lax.map(one, users, batch_size=max(1, min(users.shape[0], APPLY_BLOCK // num_items)))

    def score_fn(inputs, users):
        if not isinstance(inputs, ScoreInputs):
            inputs = ScoreInputs(inputs)
        x = raw_scores(inputs, users)
        if link is None:
            return x
        return link(inputs.link_params, x.reshape(-1)).reshape(x.shape)

    return score_fn


# -- top-k over the catalogue ----------------------------------------------------------
@functools.lru_cache(maxsize=64)
def _top_k_program(score_fn: Callable, k: int) -> Callable:
    @jax.jit
    def top(params, users, rows, cols, item_mask):
        scores = score_fn(params, users)
        scores = jnp.where(item_mask[None, :], scores, -jnp.inf)
        scores = scores.at[rows, cols].set(-jnp.inf, mode="drop")  # padding rows are out of range
        return jax.lax.top_k(scores, k)

    return top


def pairs_by_user(users, items, num_users: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR of (user, item) pairs: ``indptr`` int64[U+1] and the items int32[N] sorted by
    user (stable), so user u's items are ``items[indptr[u]:indptr[u + 1]]``."""
    users = np.asarray(users, np.int64)
    order = np.argsort(users, kind="stable")
    indptr = np.zeros(num_users + 1, np.int64)
    np.cumsum(np.bincount(users, minlength=num_users), out=indptr[1:])
    return indptr, np.asarray(items, np.int32)[order]


def merge_pairs(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], num_users: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """The union of two CSRs of (user, item) pairs (`pairs_by_user`), as one CSR over
    ``num_users`` users (a CSR shorter than that has no pairs for the users beyond it);
    each user's items from ``a`` first, then from ``b``."""
    users, items = [], []
    for indptr, its in (a, b):
        indptr = np.asarray(indptr, np.int64)
        users.append(np.repeat(np.arange(len(indptr) - 1), np.diff(indptr)))
        items.append(np.asarray(its, np.int32)[:indptr[-1]])
    return pairs_by_user(np.concatenate(users), np.concatenate(items), num_users)


def _exclusion_csr(exclude, num_users: int) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(exclude, tuple):  # (indptr, items) already
        indptr, items = exclude
        if len(indptr) < num_users + 1:  # users beyond the table exclude nothing
            indptr = np.concatenate([indptr, np.full(num_users + 1 - len(indptr), indptr[-1], np.int64)])
        return np.asarray(indptr, np.int64), np.asarray(items, np.int32)
    return pairs_by_user(exclude.users, exclude.items, max(int(exclude.num_users), num_users))


def top_k(score_fn: Callable, params, users, k: int, *, num_items: int, exclude=None, item_mask=None,
          chunk_users: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    r"""The ``k`` best-scored items for each of ``users``, best first: ``(scores float32[len(users), k],
    items int32[len(users), k])``.

    ``exclude`` lists (user, item) pairs that are never recommended: a `Ratings` (e.g. the
    training pairs) or a CSR ``(indptr, items)`` (`pairs_by_user`); ``item_mask``
    (bool[num_items]) removes items for every user. Removed items score :math:`-\infty`
    before the top-k, so with fewer than ``k`` candidates left the tail is removed items
    with score :math:`-\infty`. Ties go to the lower item index.
    """
    users = np.asarray(users)
    if users.ndim != 1 or (users.size and (users.dtype.kind not in "iu" or users.min() < 0)):
        raise ValueError("top_k_items: users must be a 1-D array of non-negative integer indices")
    from recsys_jax.eval.predict import table_sizes

    inner = params.params if isinstance(params, ScoreInputs) else params
    num_user_rows = table_sizes(inner)[0] if hasattr(inner, "_fields") else None
    if num_user_rows is not None and users.size and users.max() >= num_user_rows:
        raise ValueError(f"top_k_items: user index {int(users.max())} is out of range 0..{num_user_rows - 1}")
    users = users.astype(np.int32)
    k = min(int(k), num_items)
    if chunk_users is None:
        chunk_users = max(1, min(4096, SCORE_BUDGET // max(num_items, 1)))
    chunk_users = 1 << (max(int(chunk_users), 1).bit_length() - 1)  # a power of two: few shapes
    chunk_users = min(chunk_users, 1 << max(len(users) - 1, 0).bit_length())
    if exclude is not None:
        indptr, excluded_items = _exclusion_csr(exclude, int(users.max(initial=-1)) + 1)
    mask = jnp.ones(num_items, bool) if item_mask is None else jnp.asarray(np.asarray(item_mask, bool))
    top = _top_k_program(score_fn, k)
    out_scores = np.empty((len(users), k), np.float32)
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
        s, i = top(params, jnp.asarray(padded), jnp.asarray(rows), jnp.asarray(cols), mask)
        out_scores[start:start + m], out[start:start + m] = np.asarray(s)[:m], np.asarray(i)[:m]
    return out_scores, out


def top_k_items(score_fn: Callable, params, users, k: int, *, num_items: int, exclude=None, item_mask=None,
                chunk_users: int | None = None) -> np.ndarray:
    """The items of `top_k` only: int32[len(users), k], best first."""
    return top_k(score_fn, params, users, k, num_items=num_items, exclude=exclude, item_mask=item_mask,
                 chunk_users=chunk_users)[1]


# -- ranking metrics ---------------------------------------------------------------------
def rank_metrics(hits, num_relevant) -> dict[str, np.ndarray]:
    """Per-user ranking metrics from ``hits`` (bool[U, k]: is the j-th recommendation of
    user u relevant) and ``num_relevant`` (int[U] >= 1: :math:`|T_u|`): float64[U] arrays
    ``precision``, ``recall``, ``ndcg``, ``ap`` and ``hit`` (see the module docstring)."""
    hits = np.asarray(hits, bool)
    num_relevant = np.asarray(num_relevant, np.int64)
    if hits.ndim != 2 or num_relevant.shape != hits.shape[:1]:
        raise ValueError(f"rank_metrics: hits must be [U, k] and num_relevant [U], got {hits.shape}, "
                         f"{num_relevant.shape}")
    if num_relevant.size and num_relevant.min() < 1:
        raise ValueError("rank_metrics: every user needs at least one relevant item")
    k = hits.shape[1]
    found = np.cumsum(hits, axis=1)  # hits among the first j
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    m = np.minimum(num_relevant, k)
    ideal = np.cumsum(discount)[m - 1] if k else np.ones(len(m))
    precision_at_j = found / np.arange(1, k + 1)
    return {
        "precision": found[:, -1] / k if k else np.zeros(len(m)),
        "recall": found[:, -1] / num_relevant if k else np.zeros(len(m)),
        "ndcg": (hits * discount).sum(axis=1) / ideal,
        "ap": (hits * precision_at_j).sum(axis=1) / m if k else np.zeros(len(m)),
        "hit": hits.any(axis=1).astype(np.float64),
    }


def _relevant_by_user(test, threshold):
    """(users int64[U'], their relevant-pair codes user * I + item, counts) of ``test``."""
    num_items = int(test.num_items)
    keep = np.ones(len(test), bool) if threshold is None else np.asarray(test.ratings) >= threshold
    codes = np.unique(test.users[keep].astype(np.int64) * num_items + test.items[keep])
    users, num_relevant = np.unique(codes // num_items, return_counts=True)
    return users, codes, num_relevant


def ranking_report(score_fn: Callable, params, test, *, k: int = 10, exclude=None, item_mask=None,
                   threshold: float | None = None, chunk_users: int | None = None) -> dict:
    """Every ranking metric of ``score_fn`` at ``k`` on the held-out pairs ``test`` (a `Ratings`).

    Relevant items are the ``test`` pairs rated at least ``threshold`` (None: all of
    them); users without one are not counted. Candidates: every item except the user's
    ``exclude`` pairs (the training pairs) and the items outside ``item_mask``. Returns
    ``{"precision", "recall", "ndcg", "map", "hit_rate", "coverage", "num_users", "k"}``
    (means over the counted users; see the module docstring).
    """
    num_items = int(test.num_items)
    users, codes, num_relevant = _relevant_by_user(test, threshold)
    keys = ("precision", "recall", "ndcg", "map", "hit_rate", "coverage")
    if len(users) == 0:
        return {**{name: float("nan") for name in keys}, "num_users": 0, "k": min(int(k), num_items)}
    scores, top = top_k(score_fn, params, users, k, num_items=num_items, exclude=exclude, item_mask=item_mask,
                        chunk_users=chunk_users)
    real = np.isfinite(scores)  # the tail of a user with fewer than k candidates is not a recommendation
    hits = real & np.isin(users[:, None] * num_items + top, codes)
    per_user = rank_metrics(hits, num_relevant)
    num_candidates = num_items if item_mask is None else int(np.sum(item_mask))
    coverage = len(np.unique(top[real])) / max(num_candidates, 1)
    return {"precision": float(per_user["precision"].mean()), "recall": float(per_user["recall"].mean()),
            "ndcg": float(per_user["ndcg"].mean()), "map": float(per_user["ap"].mean()),
            "hit_rate": float(per_user["hit"].mean()), "coverage": float(coverage), "num_users": len(users),
            "k": int(top.shape[1])}


def ranking_metrics(score_fn: Callable, params, test, *, k: int = 10, exclude=None,
                    chunk_users: int | None = None) -> dict:
    """Recall@k and NDCG@k of ``score_fn`` on the held-out pairs ``test`` (see the module docstring).

    Returns ``{"recall": float, "ndcg": float, "num_users": int}``, averaged over the users
    with at least one pair in ``test``; ``exclude`` (a `Ratings`) removes each user's known
    positives from the ranking. `ranking_report` gives every metric.
    """
    report = ranking_report(score_fn, params, test, k=k, exclude=exclude, chunk_users=chunk_users)
    return {"recall": report["recall"], "ndcg": report["ndcg"], "num_users": report["num_users"]}


def recall_at_k(score_fn: Callable, params, test, *, k: int = 10, exclude=None,
                chunk_users: int | None = None) -> float:
    """Mean recall@k over the users in ``test`` (`ranking_metrics`)."""
    return ranking_metrics(score_fn, params, test, k=k, exclude=exclude, chunk_users=chunk_users)["recall"]


def ndcg_at_k(score_fn: Callable, params, test, *, k: int = 10, exclude=None,
              chunk_users: int | None = None) -> float:
    """Mean NDCG@k over the users in ``test`` (`ranking_metrics`)."""
    return ranking_metrics(score_fn, params, test, k=k, exclude=exclude, chunk_users=chunk_users)["ndcg"]


# -- strong generalisation (held-out users) ----------------------------------------------
HELD_OUT_CUTS = (("recall", 20), ("recall", 50), ("ndcg", 100))  # Liang et al. 2018's table


def held_out_report(top, targets, cuts=HELD_OUT_CUTS) -> dict:
    r"""The strong-generalisation metrics of Liang et al. 2018 (and Rendle et al. 2021) from
    ranked lists: ``top`` (int[m, K], each held-out user's best candidates, best first; -1
    or anything outside ``targets`` is a miss; a list shorter than a cut-off misses the
    rest) and ``targets`` (m arrays: each user's items to find, :math:`T_u`, at least one). With :math:`h_j = [i_j \in T_u]`,

    .. math::

       \mathrm{Recall@}k(u) = \frac{\sum_{j \le k} h_j}{\min(k, |T_u|)}, \qquad
       \mathrm{NDCG@}k(u) = \frac{\sum_{j \le k} h_j / \log_2(j + 1)}{\sum_{j \le \min(k, |T_u|)} 1 / \log_2(j + 1)}

    (this recall is normalised by :math:`\min(k, |T_u|)`, as in those papers, so that 1 is
    reachable; `rank_metrics`' divides by :math:`|T_u|`). Returns ``{"recall@20": mean, ...,
    "num_users": m}`` for ``cuts`` (pairs of ``"recall"`` or ``"ndcg"`` and a cut-off k)."""
    top = np.asarray(top)
    if not cuts or any(int(k) < 1 for _, k in cuts):
        raise ValueError(f"held_out_report: cuts must name at least one cut-off, each >= 1; got {cuts!r}")
    if top.ndim != 2 or len(targets) != top.shape[0]:
        raise ValueError(f"held_out_report: top must be [m, K] with one target list per row, got {top.shape} and "
                         f"{len(targets)} lists")
    sizes = np.array([len(np.unique(t)) for t in targets], np.int64)
    if sizes.size and sizes.min() < 1:
        raise ValueError("held_out_report: every user needs at least one target")
    depth = max((k for _, k in cuts), default=0)
    if depth > top.shape[1]:  # fewer candidates than the cut-off: the missing ranks are misses
        top = np.pad(top, ((0, 0), (0, depth - top.shape[1])), constant_values=-1)
    hits = np.stack([np.isin(row, t) for row, t in zip(top, targets)]) if len(targets) else np.zeros(top.shape, bool)
    discount = 1.0 / np.log2(np.arange(2, top.shape[1] + 2))
    out = {}
    for name, k in cuts:
        m = np.minimum(sizes, k)
        if name == "recall":
            values = hits[:, :k].sum(axis=1) / m
        elif name == "ndcg":
            values = (hits[:, :k] * discount[:k]).sum(axis=1) / np.cumsum(discount)[m - 1]
        else:
            raise ValueError(f"held_out_report: unknown metric {name!r} (recall or ndcg)")
        out[f"{name}@{k}"] = float(values.mean()) if len(values) else float("nan")
    return {**out, "num_users": int(len(targets))}
