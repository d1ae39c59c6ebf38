r"""Ranking from ratings turned implicit: positives, sampled negatives, BPR and sampled softmax.

The explicit ratings become implicit feedback by a threshold (`implicit`: a rating of at
least 4 stars is a positive). A model then learns to *rank*: each positive pair
:math:`(u, i)` is scored against :math:`N` items :math:`j_1..j_N` drawn uniformly from
the catalogue for that example, fresh in every batch. The model's ``apply`` gives the
scores :math:`s_{ui}`; a ranking loss is ``loss(pos_scores[B], neg_scores[B, N]) ->
per-example``, and the caller reduces (a masked mean, as in `recsys_jax.train`):

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

`fit_ranking` trains any model in `recsys_jax.models.MODELS` that needs no ``aux`` or
times this way, reusing the pieces of `recsys_jax.train`: Adam and its schedules, the L2
penalty (on the rows the positive pairs touch), and `recsys_jax.train.run_epoch` (the
O(n) on-device shuffle, one `jax.lax.scan` per epoch); the negatives are drawn with
`jax.random` from each step's key inside that scan. It keeps the epoch with the best
validation recall@k (`recsys_jax.metrics.ranking_metrics`: the full catalogue, the
user's training positives excluded). `popularity_scores` is the baseline to beat.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from recsys_jax import metrics
from recsys_jax.data.ratings import Ratings
from recsys_jax.engine import RankingObjective
from recsys_jax.models import get_model, init_params, make_apply, make_config, static_config
from recsys_jax.train import Batch, Best, EpochData, TrainConfig, get_engine, num_batches, run_loop


def implicit(ratings: Ratings, threshold: float = 4.0) -> Ratings:
    """The positives: the rows rated at least ``threshold``, with rating 1.0; id maps kept."""
    positives = ratings.take(np.flatnonzero(ratings.ratings >= threshold))
    return dataclasses.replace(positives, ratings=np.ones(len(positives), np.float32))


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


def popularity_scores(train_pos: Ratings) -> np.ndarray:
    """The non-personalised baseline: each item's number of training positives, float32[I].

    Score every user with it through `recsys_jax.metrics.broadcast_scores`.
    """
    return np.bincount(train_pos.items, minlength=train_pos.num_items).astype(np.float32)


def make_ranking_objective(apply_fn: Callable, loss_fn: Callable, num_items: int, num_negatives: int,
                           penalty_fn: Callable | None = None) -> Callable:
    """``objective(params, batch, key) -> float32[]``: the masked mean of the ranking loss.

    ``batch.users``/``batch.items`` are positive pairs (``batch.ratings`` is ignored);
    ``key`` draws ``num_negatives`` items per pair uniformly from ``0..num_items-1`` (and
    the dropout masks of the positive and negative scores). The penalty, if any, sees the
    positive pairs.
    """

    def objective(params, batch: Batch, key: Array) -> Array:
        neg_key, pos_dropout, neg_dropout = jax.random.split(key, 3)
        weight = batch.mask.astype(jnp.float32)
        b = batch.users.shape[0]
        negatives = jax.random.randint(neg_key, (b, num_negatives), 0, num_items, jnp.int32)
        pos = apply_fn(params, batch.users, batch.items, pos_dropout)
        neg = apply_fn(params, jnp.repeat(batch.users, num_negatives), negatives.reshape(-1), neg_dropout)
        total = jnp.sum(loss_fn(pos, neg.reshape(b, num_negatives)) * weight)
        if penalty_fn is not None:
            total = total + penalty_fn(params, batch.users, batch.items, weight)
        return total / jnp.maximum(jnp.sum(weight), 1.0)

    return objective


class RankingResult(NamedTuple):
    params: Any  # the best parameters (by validation recall@k when there is a validation set)
    history: dict  # lists per epoch: epoch, train_loss, val_recall, val_ndcg, seconds
    model: str
    model_config: Any
    train_config: TrainConfig
    best_epoch: int
    k: int  # the cut-off of the validation metrics
    state: Any = None  # the final TrainState
    stop_reason: str | None = None


def fit_ranking(
    model: str,
    train_pos: Ratings,
    val_pos: Ratings | None = None,
    *,
    key: Array | int = 0,
    loss: str = "bpr",
    num_negatives: int = 4,
    model_config=None,
    train_config: TrainConfig = TrainConfig(),
    k: int = 10,
    progress: bool = False,
) -> RankingResult:
    """Trains ``model`` to rank ``train_pos`` above uniformly sampled items.

    Args:
      model: a name in `recsys_jax.models.MODELS` whose ``apply`` needs no ``aux`` or times.
      train_pos, val_pos: positive pairs (e.g. from `implicit`), sharing id maps.
      key: a `jax.random` key or an int seed (initialisation, shuffles, negatives, dropout).
      loss: a name in `RANKING_LOSSES` (``train_config.loss`` is not read).
      num_negatives: negatives per positive pair, drawn afresh every step.
      model_config, train_config: as for `recsys_jax.train.fit` (epochs, batch size, lr,
        schedule, ``l2``/``bias_l2`` on the rows of the positive pairs, weight decay,
        patience in epochs without a better validation recall@k).
      k: the cut-off of the validation recall and NDCG.
      progress: show a tqdm bar over epochs.
    """
    if isinstance(key, (int, np.integer)):
        key = jax.random.key(int(key))
    tc = train_config
    if len(train_pos) == 0:
        raise ValueError("fit_ranking: no training positives")
    if num_negatives < 1:
        raise ValueError(f"fit_ranking: num_negatives must be >= 1, got {num_negatives}")
    if tc.epochs < 1 or tc.batch_size < 1:
        raise ValueError(f"fit_ranking: epochs and batch_size must be >= 1, got {tc.epochs}, {tc.batch_size}")
    if tc.order == "blocked":
        raise ValueError("fit_ranking: order='blocked' is not available here: positives are shuffled all together; "
                         "it is an order for rating fits (fit)")
    module = get_model(model)
    if hasattr(module, "prepare") or getattr(module, "USES_TIME", False):
        raise ValueError(f"fit_ranking: model {model!r} needs aux data or times; use one that scores from ids alone")
    loss_fn = get_ranking_loss(loss)
    model_config = model_config if model_config is not None else make_config(model)
    apply_fn = make_apply(model, model_config)
    objective = RankingObjective(loss_fn, train_pos.num_items, num_negatives)
    engine = get_engine(model, apply_fn, static_config(model_config), objective, None, tc,
                        num_batches(len(train_pos), tc.batch_size))
    score_fn = metrics.make_score_fn(model, model_config, train_pos.num_items)

    key, init_key = jax.random.split(key)
    state = engine.init(init_params(model, init_key, train_pos.num_users, train_pos.num_items, model_config))

    def evaluate(params) -> tuple[dict, float | None]:
        if val_pos is None or not len(val_pos):
            return {"val_recall": None, "val_ndcg": None}, None
        scores = metrics.ranking_metrics(score_fn, params, val_pos, k=k, exclude=train_pos)
        return {"val_recall": scores["recall"], "val_ndcg": scores["ndcg"]}, -scores["recall"]  # higher is better

    history: dict[str, list] = {k_: [] for k_ in ("epoch", "train_loss", "val_recall", "val_ndcg", "seconds")}
    data = EpochData(jnp.asarray(train_pos.users), jnp.asarray(train_pos.items), jnp.ones(len(train_pos), jnp.float32))
    state, best, stop_reason, _ = run_loop(
        engine, state, data, key, epochs=range(1, tc.epochs + 1), evaluate=evaluate, history=history,
        best=Best(math.inf, state.params, 0), patience=tc.patience,
        desc=f"fit_ranking {model} {loss}" if progress else None, caller="fit_ranking")
    best_params, best_epoch = best.params, best.epoch
    return RankingResult(best_params, history, model, model_config, tc, best_epoch, k, state, stop_reason)
