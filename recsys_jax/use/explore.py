r"""Looking inside a trained model: learned item biases, a PCA of the movie factors, and plots.

The verbs, each on a `Recommender` (``rec``) and the ratings it was trained on:

- ``item_stats(ratings, item_ids) -> ItemStats``: each item's rating count and raw mean
  rating over ``ratings``, indexed like ``item_ids`` (the recommender's id map).
  ``recsys-jax train`` stores the stats of the ratings the model was fit on (the training
  split minus the validation slice) in the checkpoint, so that they need neither the data
  set nor the split to be rebuilt (`recsys_jax.use.checkpoint.read_item_stats`).
- ``bias_table(rec, ratings, n) -> DataFrame``: the ``n`` movies with the highest and the
  ``n`` with the lowest learned item bias :math:`b_i`, beside their raw mean rating and
  rating count, for models with an ``item_bias`` (`HAS_ITEM_BIAS`).
- ``pca(rec, ratings, min_ratings, components) -> PCA``: principal components of the
  item vectors (`Recommender.item_vectors`) of the movies with at least ``min_ratings``
  training ratings, by NumPy's SVD of the centered factors; ``pca_ends(result, n)``: the
  movies at both ends of each component.
- ``plot_learning_curve(history, path)`` and ``plot_pca_map(result, path)``: PNG files.
  matplotlib is the optional ``plot`` extra; it is imported only here, and its absence is
  a `MissingPlotExtra` (a ``ValueError``) saying how to install it.

The PCA, with :math:`Q \in \mathbb R^{n \times d}` the chosen movies' vectors and
:math:`\bar q` their mean:

.. math::

   Q - \mathbf 1 \bar q^\top = U S V^\top, \qquad
   \text{score}_{ik} = (q_i - \bar q)^\top v_k = U_{ik} S_k, \qquad
   \text{explained}_k = S_k^2 \Big/ \sum_j S_j^2 .

An SVD fixes each component only up to sign; here each component is oriented so that the
movie with the largest absolute score has a positive score (as scikit-learn's
``svd_flip``), which makes the output deterministic.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from recsys_jax.models import MODELS
from recsys_jax.use.recommender import Recommender

PLOT_INSTALL = 'pip install "recsys-jax[plot]"'
DEFAULT_MIN_RATINGS = 20  # the course's threshold for the movies whose factors it drew


# The models whose Params have an item_bias: bias, svdpp, timesvd, fm.
HAS_ITEM_BIAS = tuple(name for name, module in MODELS.items() if "item_bias" in module.Params._fields)


class MissingPlotExtra(ValueError):
    """matplotlib, the optional ``plot`` extra, is not installed."""


class ItemStats(NamedTuple):
    count: np.ndarray  # int64[I]: training ratings per item
    mean: np.ndarray  # float64[I]: raw mean training rating (NaN where count is 0)


class PCA(NamedTuple):
    scores: pd.DataFrame  # one row per movie: movieId, title, count, mean_rating, pc1..pcC
    #                       (count -1 and mean_rating NaN when no training ratings were given)
    explained_variance_ratio: np.ndarray  # float64[C]: each component's share of the total variance
    components: np.ndarray  # float64[C, D]: unit principal axes in the item-vector space
    mean: np.ndarray  # float64[D]: the mean vector subtracted before the SVD
    field: str  # which parameters the vectors are (e.g. "item_factors")


def has_item_bias(rec: Recommender) -> bool:
    return "item_bias" in rec.params._fields


def item_stats(ratings, item_ids: np.ndarray | None = None) -> ItemStats:
    """Per item: the number of ratings in ``ratings`` (a `recsys_jax.data.Ratings`) and their
    raw mean, indexed like ``item_ids`` (default: ``ratings.item_ids``). Items of
    ``item_ids`` without ratings get count 0 and mean NaN; a rated item missing from
    ``item_ids`` is an error."""
    if item_ids is None or np.array_equal(item_ids, ratings.item_ids):
        item_ids, index = ratings.item_ids, np.asarray(ratings.items, np.int64)
    else:
        item_ids = np.asarray(item_ids, np.int64)
        raw = np.asarray(ratings.item_ids)[ratings.items]
        index = np.searchsorted(item_ids, raw)
        clipped = np.minimum(index, len(item_ids) - 1)
        found = (index < len(item_ids)) & (item_ids[clipped] == raw) if len(item_ids) else np.zeros(raw.shape, bool)
        if not found.all():
            raise ValueError(f"item_stats: movie id {int(raw[np.argmin(found)])} is rated but not in the model's id map")
        index = clipped
    count = np.bincount(index, minlength=len(item_ids)).astype(np.int64)
    total = np.bincount(index, weights=np.asarray(ratings.ratings, np.float64), minlength=len(item_ids))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return ItemStats(count, mean)


def _stats(rec: Recommender, ratings, caller: str) -> ItemStats | None:
    if ratings is None:
        return None
    stats = ratings if isinstance(ratings, ItemStats) else item_stats(ratings, rec.item_ids)
    if stats.count.shape != (rec.num_items,) or stats.mean.shape != (rec.num_items,):
        raise ValueError(f"{caller}: item stats cover {stats.count.shape[0]} items, the model has {rec.num_items}")
    return stats


def _candidates(rec: Recommender, stats: ItemStats | None, min_ratings: int, caller: str) -> np.ndarray:
    """Indices of the items with at least ``min_ratings`` training ratings (and trained)."""
    if not isinstance(min_ratings, (int, np.integer)) or min_ratings < 0:
        raise ValueError(f"{caller}: min_ratings must be an integer >= 0, got {min_ratings!r}")
    keep = np.ones(rec.num_items, bool) if rec.trained_items is None else np.asarray(rec.trained_items, bool).copy()
    if stats is not None:
        keep &= stats.count >= max(int(min_ratings), 1)
    elif min_ratings > 0:
        raise ValueError(f"{caller}: min_ratings={min_ratings} needs the training ratings' counts; pass the "
                         "training Ratings or ItemStats (or min_ratings=0)")
    return np.flatnonzero(keep)


def bias_table(rec: Recommender, ratings, n: int = 10, *, min_ratings: int = DEFAULT_MIN_RATINGS) -> pd.DataFrame:
    r"""The ``n`` movies with the highest learned item bias :math:`b_i` and the ``n`` with the
    lowest, among those with at least ``min_ratings`` training ratings.

    Args:
      rec: a model with ``item_bias`` (bias, svdpp, timesvd, fm; timeSVD's is its static
        part, without the per-time-bin offsets).
      ratings: the training `Ratings`, or their `ItemStats` (from the checkpoint); gives
        each movie's raw mean rating and count.
      n: rows at each end.
      min_ratings: leave out movies with fewer training ratings.

    Returns:
      A DataFrame with ``end`` (``"highest"``, then ``"lowest"``), ``rank`` (1 = most
      extreme), ``movieId``, ``title``, ``bias``, ``mean_rating`` and ``count``: the highest
      in decreasing bias, the lowest in increasing bias. With fewer than ``2n`` candidates
      the two ends share movies.
    """
    if not has_item_bias(rec):
        raise ValueError(f"model {rec.model!r} has no item biases (its parameters: {', '.join(rec.params._fields)}); "
                         f"the bias table needs one of: {', '.join(HAS_ITEM_BIAS)}")
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"bias_table: n must be a positive integer, got {n!r}")
    stats = _stats(rec, ratings, "bias_table")
    if stats is None:
        raise ValueError("bias_table: needs the training ratings (Ratings or ItemStats) for the raw means and counts")
    idx = _candidates(rec, stats, min_ratings, "bias_table")
    if idx.size == 0:
        raise ValueError(f"bias_table: no movie has {min_ratings} or more training ratings")
    bias = np.asarray(rec.params.item_bias, np.float64)
    order = idx[np.argsort(-bias[idx], kind="stable")]
    k = min(int(n), idx.size)
    rows = []
    for end, chosen in (("highest", order[:k]), ("lowest", order[::-1][:k])):
        for rank, i in enumerate(chosen, 1):
            raw = int(rec.item_ids[i])
            rows.append({"end": end, "rank": rank, "movieId": raw, "title": rec.title(raw), "bias": bias[i],
                         "mean_rating": float(stats.mean[i]), "count": int(stats.count[i])})
    return pd.DataFrame(rows, columns=["end", "rank", "movieId", "title", "bias", "mean_rating", "count"])


def _vector_field(rec: Recommender) -> str:
    from recsys_jax.use.recommender import item_vector_fields

    return "+".join(item_vector_fields(rec.model, rec.params))


def pca(rec: Recommender, ratings=None, min_ratings: int = DEFAULT_MIN_RATINGS, components: int = 3) -> PCA:
    """Principal components of the item vectors of the movies with at least ``min_ratings``
    training ratings (see the module docstring for the formula and the sign convention).

    Args:
      rec: any model (`Recommender.item_vectors`: ``item_factors``, or NeuMF's GMF and MLP
        item tables side by side).
      ratings: the training `Ratings` or their `ItemStats`; None only with ``min_ratings=0``
        (then every trained movie).
      min_ratings: leave out movies with fewer training ratings (their vectors are mostly
        their initialisation and the regulariser).
      components: how many components to keep (at most the vector size and the number of
        movies kept).
    """
    stats = _stats(rec, ratings, "pca")
    idx = _candidates(rec, stats, min_ratings, "pca")
    vectors = np.asarray(rec.item_vectors(), np.float64)
    if not isinstance(components, (int, np.integer)) or components < 1:
        raise ValueError(f"pca: components must be a positive integer, got {components!r}")
    if components > vectors.shape[1]:
        raise ValueError(f"pca: {components} components asked, but the item vectors have {vectors.shape[1]} dimensions")
    if idx.size <= components:
        raise ValueError(f"pca: {idx.size} movies with {min_ratings} or more training ratings; need more than "
                         f"{components} (lower min_ratings)")
    q = vectors[idx]
    mean = q.mean(axis=0)
    u, s, vt = np.linalg.svd(q - mean, full_matrices=False)
    total = float(np.sum(s**2))
    if total == 0.0:
        raise ValueError("pca: the chosen movies all have the same vector (nothing varies)")
    scores = u[:, :components] * s[:components]
    # Orientation: the largest absolute score of each component is positive.
    signs = np.sign(scores[np.argmax(np.abs(scores), axis=0), np.arange(components)])
    signs[signs == 0] = 1.0
    scores, axes = scores * signs, vt[:components] * signs[:, None]
    ids = rec.item_ids[idx]
    table = pd.DataFrame({
        "movieId": ids.astype(np.int64),
        "title": [rec.title(int(i)) for i in ids],
        "count": stats.count[idx] if stats is not None else np.full(idx.size, -1, np.int64),
        "mean_rating": stats.mean[idx] if stats is not None else np.full(idx.size, np.nan),
    })
    for k in range(components):
        table[f"pc{k + 1}"] = scores[:, k]
    return PCA(table, s[:components] ** 2 / total, axes, mean, _vector_field(rec))


def pca_ends(result: PCA, n: int = 10) -> pd.DataFrame:
    """The ``n`` movies at each end of every component: ``component`` (1-based), ``end``
    (``"+"``: highest scores, decreasing; ``"-"``: lowest, increasing), ``rank``,
    ``movieId``, ``title``, ``score``."""
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"pca_ends: n must be a positive integer, got {n!r}")
    rows = []
    t = result.scores
    for k in range(len(result.explained_variance_ratio)):
        col = t[f"pc{k + 1}"].to_numpy()
        order = np.argsort(-col, kind="stable")
        for end, chosen in (("+", order[:n]), ("-", order[::-1][:n])):
            for rank, i in enumerate(chosen, 1):
                rows.append({"component": k + 1, "end": end, "rank": rank, "movieId": int(t.movieId.iat[i]),
                             "title": t.title.iat[i], "score": float(col[i])})
    return pd.DataFrame(rows, columns=["component", "end", "rank", "movieId", "title", "score"])


# -- plots ---------------------------------------------------------------------------------
def require_plot_extra():
    """matplotlib's ``Figure`` class (no pyplot, no global backend), or a `MissingPlotExtra`
    saying how to install the ``plot`` extra."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingPlotExtra(f"plotting needs matplotlib, the optional 'plot' extra: {PLOT_INSTALL} "
                               '(from a source checkout: pip install -e ".[plot]")') from None
    return Figure


def _figure(**kwargs):
    return require_plot_extra()(**kwargs)


def _save(fig, path, dpi: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def plot_learning_curve(history: dict | None, path, *, title: str | None = None, loss_name: str | None = None,
                        dpi: int = 100) -> Path:
    """Writes a PNG of ``history`` (`recsys_jax.training.fit.FitResult.history`): the training loss
    per epoch (left) and the validation RMSE and MAE (right, when there was a validation
    slice; the best epoch marked). The title gives the total seconds of the epochs."""
    if not history or not history.get("epoch"):
        raise ValueError("plot_learning_curve: no per-epoch history (a checkpoint written before recsys_jax saved "
                         "histories has none; retrain to get one)")
    epochs = np.asarray(history["epoch"])
    val = {k: [np.nan if v is None else v for v in history.get(k, [])] for k in ("val_rmse", "val_mae")}
    has_val = any(np.isfinite(val["val_rmse"])) if val["val_rmse"] else False
    fig = _figure(figsize=(9, 3.6), layout="constrained")
    ax_loss, ax_val = fig.subplots(1, 2)
    ax_loss.plot(epochs, history["train_loss"], "o-", color="tab:blue", ms=3)
    ax_loss.set(xlabel="epoch", ylabel=f"training loss ({loss_name or 'loss'} + penalty)",
                title="training objective, mean over batches")
    if has_val:
        rmse = np.asarray(val["val_rmse"], float)
        best = int(np.nanargmin(rmse))
        ax_val.plot(epochs, rmse, "o-", ms=3, label="RMSE", color="tab:orange")
        ax_val.plot(epochs, val["val_mae"], "s-", ms=3, label="MAE", color="tab:green")
        ax_val.axvline(epochs[best], color="0.6", ls="--", lw=1)
        ax_val.annotate(f"best epoch {epochs[best]}: RMSE {rmse[best]:.4f}", (epochs[best], rmse[best]),
                        xytext=(0.98, 0.95), textcoords="axes fraction", ha="right", va="top", fontsize=9)
        ax_val.set(xlabel="epoch", ylabel="rating error", title="validation slice")
        ax_val.legend(loc="center right", fontsize=9)
    else:
        ax_val.text(0.5, 0.5, "no validation slice", ha="center", va="center", transform=ax_val.transAxes)
        ax_val.set_axis_off()
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
        if len(epochs) <= 20:
            ax.set_xticks(epochs)
    seconds = float(np.sum(history.get("seconds", [])))
    fig.suptitle(f"{title + ': ' if title else ''}{len(epochs)} epochs, {seconds:.1f} s (compile excluded)",
                 fontsize=11)
    return _save(fig, path, dpi)


_ARTICLE = re.compile(r"^(.*), (The|A|An|Les|La|Le|L'|Il|Das|Der|Die|El) \((\d{4})\)$")


def short_title(title: str | None, movie_id: int, width: int = 30) -> str:
    """``"Matrix, The (1999)"`` -> ``"The Matrix (1999)"``, cut to ``width`` characters."""
    if not title:
        return str(movie_id)
    m = _ARTICLE.match(title.strip())
    if m:
        title = f"{m.group(2)}{'' if m.group(2).endswith(chr(39)) else ' '}{m.group(1)} ({m.group(3)})"
    return title if len(title) <= width else title[: width - 1].rstrip() + "…"


def _label_choice(x: np.ndarray, y: np.ndarray, count: np.ndarray, labels: int, directions: int = 32,
                  rings: int = 3) -> list[int]:
    """Rows worth labelling, most telling first: the outermost movie in each of
    ``directions`` directions (in units of each axis' spread), then the second outermost,
    up to ``rings`` deep, then the most rated."""
    sx, sy = np.std(x) or 1.0, np.std(y) or 1.0
    angles = np.linspace(0, 2 * np.pi, directions, endpoint=False)
    orders = [np.argsort(-(x / sx * np.cos(a) + y / sy * np.sin(a)), kind="stable") for a in angles]
    chosen: list[int] = []
    for ring in range(min(rings, len(x))):
        for order in orders:
            if int(order[ring]) not in chosen:
                chosen.append(int(order[ring]))
    for i in np.argsort(-count, kind="stable")[: 2 * labels]:
        if int(i) not in chosen:
            chosen.append(int(i))
    return chosen


def plot_pca_map(result: PCA, path, *, labels: int = 30, title: str | None = None, dpi: int = 100) -> Path:
    """Writes a PNG of the movies' first two principal components (PC1 across, PC2 up),
    coloured by raw mean training rating, with up to ``labels`` titles placed where they
    do not overlap (the outermost movies in every direction first, then the most rated)."""
    if len(result.explained_variance_ratio) < 2:
        raise ValueError("plot_pca_map: needs at least 2 components")
    t = result.scores
    x, y = t.pc1.to_numpy(), t.pc2.to_numpy()
    fig = _figure(figsize=(9, 7), layout="constrained")
    ax = fig.subplots()
    colour = t.mean_rating.to_numpy()
    if np.all(np.isfinite(colour)):
        points = ax.scatter(x, y, c=colour, cmap="coolwarm_r", s=9, alpha=0.7, linewidths=0)
        fig.colorbar(points, ax=ax, shrink=0.6, label="mean training rating")
    else:
        ax.scatter(x, y, s=9, alpha=0.6, color="tab:blue", linewidths=0)
    ax.axhline(0, color="0.8", lw=0.8, zorder=0)
    ax.axvline(0, color="0.8", lw=0.8, zorder=0)
    ev = result.explained_variance_ratio
    ax.set(xlabel=f"PC1 ({100 * ev[0]:.1f}% of the variance)", ylabel=f"PC2 ({100 * ev[1]:.1f}% of the variance)")
    ax.set_title(title or f"PCA of {len(t)} movies' {result.field}", fontsize=11)
    pad_x, pad_y = 0.08 * (x.max() - x.min() or 1.0), 0.05 * (y.max() - y.min() or 1.0)
    ax.set_xlim(x.min() - pad_x, x.max() + pad_x)
    ax.set_ylim(y.min() - pad_y, y.max() + pad_y)
    # Greedy placement: a label is kept only if its box (estimated in axes fractions from
    # its length) overlaps no label already kept, and stays inside the axes.
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    fx, fy = (x - x0) / (x1 - x0), (y - y0) / (y1 - y0)
    char_w, line_h = 0.0105, 0.028  # 8-point text on a 9 x 7 inch figure, in axes fractions
    boxes: list[tuple[float, float, float, float]] = []
    count = t["count"].to_numpy()
    for i in _label_choice(x, y, count, labels):
        if len(boxes) >= labels:
            break
        text = short_title(t.title.iat[i], int(t.movieId.iat[i]))
        w = char_w * len(text)
        left = fx[i] < 0.5  # text runs away from the centre
        bx0 = fx[i] + 0.008 if left else fx[i] - 0.008 - w
        by0 = fy[i] - line_h / 2
        box = (bx0, by0, bx0 + w, by0 + line_h)
        if box[0] < 0 or box[2] > 1 or box[1] < 0 or box[3] > 1:
            left = not left  # try the other side before giving up
            bx0 = fx[i] + 0.008 if left else fx[i] - 0.008 - w
            box = (bx0, by0, bx0 + w, by0 + line_h)
            if box[0] < 0 or box[2] > 1 or box[1] < 0 or box[3] > 1:
                continue
        if any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in boxes):
            continue
        boxes.append(box)
        ax.plot(x[i], y[i], "o", ms=4, mfc="none", mec="black", mew=0.8)
        ax.annotate(text, (x[i], y[i]), xytext=(4 if left else -4, 0), textcoords="offset points",
                    ha="left" if left else "right", va="center", fontsize=8)
    return _save(fig, path, dpi)

