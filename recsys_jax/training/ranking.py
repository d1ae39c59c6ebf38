r"""Ranking from ratings turned implicit: positives, sampled negatives, a ranking loss.

The explicit ratings become implicit feedback by a threshold (`implicit`: a rating of at
least 4 stars is a positive). A model then learns to *rank* each positive pair against
items drawn uniformly from the catalogue, with a loss of `recsys_jax.objectives.ranking`.

`fit_ranking` trains any model in `recsys_jax.models.MODELS` that needs no ``aux`` or
times this way, reusing the pieces of `recsys_jax.training.fit`: Adam and its schedules, the L2
penalty (on the rows the positive pairs touch), and `recsys_jax.engine.epoch.run_epoch` (the
O(n) on-device shuffle, one `jax.lax.scan` per epoch); the negatives are drawn with
`jax.random` from each step's key inside that scan. It keeps the epoch with the best
validation recall@k (`recsys_jax.eval.metrics.ranking_metrics`: the full catalogue, the
user's training positives excluded). `popularity_scores` is the baseline to beat.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from recsys_jax.eval import metrics
from recsys_jax.data.ratings import Ratings
from recsys_jax.engine.build import RankingObjective
from recsys_jax.models import get_model, make_apply, make_config, static_config
from recsys_jax.engine.build import init_params
from recsys_jax.engine.options import EngineOptions, resolve_options
from recsys_jax.training.fit import get_engine
from recsys_jax.training.loop import EpochData, engine_trainer, first_best, run_loop
from recsys_jax.engine.config import TrainConfig
from recsys_jax.engine.epoch import num_batches
from recsys_jax.objectives.ranking import get_ranking_loss


def implicit(ratings: Ratings, threshold: float = 4.0) -> Ratings:
    """The positives: the rows rated at least ``threshold``, with rating 1.0; id maps kept."""
    positives = ratings.take(np.flatnonzero(ratings.ratings >= threshold))
    return dataclasses.replace(positives, ratings=np.ones(len(positives), np.float32))


def popularity_scores(train_pos: Ratings) -> np.ndarray:
    """The non-personalised baseline: each item's number of training positives, float32[I].

    Score every user with it through `recsys_jax.eval.metrics.broadcast_scores`.
    """
    return np.bincount(train_pos.items, minlength=train_pos.num_items).astype(np.float32)


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
    options: EngineOptions | None = None,
) -> RankingResult:
    """Trains ``model`` to rank ``train_pos`` above uniformly sampled items.

    Args:
      model: a name in `recsys_jax.models.MODELS` whose ``apply`` needs no ``aux`` or times.
      train_pos, val_pos: positive pairs (e.g. from `implicit`), sharing id maps.
      key: a `jax.random` key or an int seed (initialisation, shuffles, negatives, dropout).
      loss: a name in `RANKING_LOSSES` (``train_config.loss`` is not read).
      num_negatives: negatives per positive pair, drawn afresh every step.
      model_config, train_config: as for `recsys_jax.training.fit.fit` (epochs, batch size, lr,
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
    spec = get_model(model)
    if spec.prepare is not None or spec.uses_time:
        raise ValueError(f"fit_ranking: model {model!r} needs aux data or times; use one that scores from ids alone")
    loss_fn = get_ranking_loss(loss)
    model_config = model_config if model_config is not None else make_config(model)
    apply_fn = make_apply(model, model_config)
    objective = RankingObjective(loss_fn, train_pos.num_items, num_negatives)
    options = resolve_options() if options is None else options
    engine = get_engine(model, apply_fn, static_config(model_config), objective, None, tc,
                        num_batches(len(train_pos), tc.batch_size), options=options)
    score_fn = metrics.make_score_fn(model, model_config, train_pos.num_items)

    key, init_key = jax.random.split(key)
    state = engine.init(init_params(model, init_key, train_pos.num_users, train_pos.num_items, model_config,
                                    store=options.program_store))

    def evaluate(params) -> tuple[dict, float | None]:
        if val_pos is None or not len(val_pos):
            return {"val_recall": None, "val_ndcg": None}, None
        scores = metrics.ranking_metrics(score_fn, params, val_pos, k=k, exclude=train_pos)
        return {"val_recall": scores["recall"], "val_ndcg": scores["ndcg"]}, -scores["recall"]  # higher is better

    history: dict[str, list] = {k_: [] for k_ in ("epoch", "train_loss", "val_recall", "val_ndcg", "seconds")}
    data = EpochData(jnp.asarray(train_pos.users), jnp.asarray(train_pos.items), jnp.ones(len(train_pos), jnp.float32))
    state, best, stop_reason, _ = run_loop(
        engine_trainer(engine, data, "fit_ranking"), state, key, epochs=range(1, tc.epochs + 1), evaluate=evaluate,
        history=history, best=first_best(state.params), patience=tc.patience,
        desc=f"fit_ranking {model} {loss}" if progress else None)
    best_params, best_epoch = best.params, best.epoch
    return RankingResult(best_params, history, model, model_config, tc, best_epoch, k, state, stop_reason)
