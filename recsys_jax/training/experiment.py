"""One experiment, the same way everywhere: split, carve validation, fit, score test once.

`run_experiment` is what ``recsys-jax train`` and ``benchmarks/accuracy.py`` both call, so
a number from the CLI and a number in the benchmark table come from the same procedure:

1. the test split is fixed by the caller (a `Split`, e.g. ``random_split(ratings, seed)``);
2. a validation slice (``val_frac`` of the training split, drawn from ``seed``) is carved
   off the training split; training sees only the rest;
3. `fit` scores the validation slice after every epoch and keeps the best epoch (early
   stopping, with a patience);
4. refit (``refit=True``, the default): the model is trained again, from the same key, on
   the whole training split (validation slice included) for the best epoch's number of
   epochs, the schedule spread over those epochs, and that model is the result. The
   validation slice chose the epoch count; it then counts as training data, as it would for
   any user of the model. With ``refit=False`` the model of step 3 is the result;
5. the test split is scored once, at the end, with predictions clipped to the scale (for a
   loss with parameters, the loss's ``predict`` of the model's scores: e.g. the expected
   rating of the ordinal model).

``fit_seconds`` is the wall time of steps 3-4, compilation included, data loading
excluded (``refit_seconds`` the part of it spent in step 4); ``compile_seconds`` is the
part spent compiling the training epoch (0 when this process, or JAX's persistent cache,
had it already).
"""
from __future__ import annotations

import platform
import time

import jax
import numpy as np

from recsys_jax.eval import metrics
from recsys_jax.data.ratings import Ratings, days
from recsys_jax.data.split import Split, random_split
from recsys_jax.models import get_model, make_apply
from recsys_jax.eval.predict import predict_indices
from recsys_jax.training.fit import FitResult, fit
from recsys_jax.engine.config import TrainConfig
from recsys_jax.engine.options import EngineOptions, resolve_options


def device_name() -> str:
    d = jax.devices()[0]
    kind = getattr(d, "device_kind", "") or ""
    return d.platform if kind in ("", d.platform) else f"{d.platform}:{kind}"


def carve_validation(train_all: Ratings, seed: int, val_frac: float = 0.1) -> tuple[Ratings, Ratings | None]:
    """Step 2: ``(train, val)`` with ``val`` a ``val_frac`` slice of ``train_all`` drawn from
    ``seed``; with ``val_frac == 0``, ``(train_all, None)`` (the last epoch is the result)."""
    if not 0.0 <= val_frac < 1.0:
        raise ValueError(f"val_frac must be in [0, 1) (0: no validation slice), got {val_frac}")
    if val_frac == 0:
        return train_all, None
    carve = random_split(len(train_all), np.random.default_rng([seed, 1]), val_frac)
    return train_all.take(carve.train), train_all.take(carve.test)


def split_parts(ratings: Ratings, split: Split, seed: int, val_frac: float = 0.1
                ) -> tuple[Ratings, Ratings | None, Ratings]:
    """Steps 1-2: ``(train, val, test)``, ``train`` being the rows the model is fit on (the
    training split less the validation slice). `run_experiment` calls it, so calling it
    again with the same arguments gives the same rows (e.g. for
    `recsys_jax.use.explore.item_stats` of the training ratings)."""
    train, val = carve_validation(ratings.take(split.train), seed, val_frac)
    return train, val, ratings.take(split.test)


def run_experiment(
    ratings: Ratings,
    split: Split,
    model: str,
    *,
    seed: int,
    train_config: TrainConfig,
    model_config=None,
    val_frac: float = 0.1,
    loss_fn=None,
    progress: bool = False,
    on_epoch=None,
    checkpoint_dir: str | None = None,
    refit: bool = True,
    predictions: dict | None = None,
    mesh=None,
    options: EngineOptions | None = None,
    score_test: bool = True,
) -> tuple[dict, FitResult]:
    """Runs steps 1-5 above; returns a flat record of the results and the `FitResult` (of
    the refit when there was one; the selection fit's history is the record's
    ``selection_history``). ``checkpoint_dir`` keeps the progress of step 3 there and of
    step 4 in its ``refit`` subfolder. A ``predictions`` dict is filled with the clipped
    predictions of the validation slice by the selection fit (``val``, beside the slice's
    ``val_ratings``) and of the test split by the result (``test``): what a blend
    (`recsys_jax.training.blend`) of several runs on the same split and seed is fitted and scored on.
    ``mesh`` (`recsys_jax.engine.sharding.make_mesh`) trains both fits on those devices;
    ``options`` (`recsys_jax.engine.options.EngineOptions`) are resolved once, here when None.
    ``score_test=False`` leaves the test metrics None (a test part of held-out users, scored
    after each is folded in: `recsys_jax.use.recommender.Recommender.evaluate_held_out_users`)."""
    options = resolve_options() if options is None else options
    if len(split.train) == 0:
        raise ValueError(f"the training split of {ratings.name or 'the ratings'} is empty ({len(ratings)} ratings)")
    train, val, test = split_parts(ratings, split, seed, val_frac)

    t0 = time.perf_counter()
    result = fit(
        model, train, val, key=jax.random.key(seed), model_config=model_config,
        train_config=train_config, loss_fn=loss_fn, progress=progress, on_epoch=on_epoch,
        checkpoint_dir=checkpoint_dir, mesh=mesh, options=options,
    )
    jax.block_until_ready(result.params)
    selection = result
    refit_seconds = None
    if refit and val is not None and result.stop_reason is None:
        t1 = time.perf_counter()
        result = refit_on(ratings.take(split.train), result, seed=seed, loss_fn=loss_fn, progress=progress,
                          checkpoint_dir=None if checkpoint_dir is None else f"{checkpoint_dir}/refit", mesh=mesh,
                          options=options)
        jax.block_until_ready(result.params)
        refit_seconds = time.perf_counter() - t1
    fit_seconds = time.perf_counter() - t0

    spec = get_model(model)
    scored = test if score_test else test.take(np.zeros(0, np.int64))
    ranked = ranking_scores(ratings, split, result) if spec.ranks and len(scored) else {}
    pred = None if spec.ranks else predict_result(result, scored, ratings.rating_scale)
    if predictions is not None and not spec.ranks:
        predictions["test"] = pred
        if val is not None:
            predictions["val"] = predict_result(selection, val, ratings.rating_scale)
            predictions["val_ratings"] = val.ratings
    val_scores = [v for v in selection.history["val_rmse"] if v is not None]
    record = {
        "model": model,
        "dataset": ratings.name,
        "seed": seed,
        # None without a test part (test_frac 0: a model trained on every rating, for use),
        # or for a model whose scores are not ratings (spec.ranks: ranked, below)
        "test_rmse": metrics.rmse(pred, scored.ratings) if len(scored) and pred is not None else None,
        "test_mae": metrics.mae(pred, scored.ratings) if len(scored) and pred is not None else None,
        **ranked,
        "val_rmse": min(val_scores) if val_scores else None,  # of the selection fit (step 3)
        "best_epoch": selection.best_epoch,
        "refit": refit_seconds is not None,
        "fit_seconds": fit_seconds,
        "refit_seconds": refit_seconds,  # part of fit_seconds: step 4
        "compile_seconds": selection.compile_seconds + (result.compile_seconds if refit_seconds else 0.0),
        "epochs": len(selection.history["epoch"]),
        "stop_reason": selection.stop_reason or result.stop_reason,
        "num_ratings": len(ratings),
        "num_train": len(train),  # the selection fit's rows (the training split less the validation slice)
        "num_fit": len(train) + (len(val) if refit_seconds is not None else 0),  # the rows the result was fit on
        "num_val": 0 if val is None else len(val),
        "num_test": len(test),
        "num_users": ratings.num_users,
        "num_items": ratings.num_items,
        "train_config": result.train_config._asdict(),  # names the loss trained when loss_fn is a ParamLoss
        "model_config": result.model_config._asdict(),
        "device": device_name(),
        "jax": jax.__version__,
        "python": platform.python_version(),
    }
    if refit_seconds is not None:
        record["selection_history"] = selection.history
    return record, result


RANKING_K, RANKING_THRESHOLD = 10, 4.0  # `recsys-jax evaluate`'s defaults (it reads them here)


def ranking_scores(ratings: Ratings, split: Split, result: FitResult, k: int = RANKING_K,
                   threshold: float = RANKING_THRESHOLD) -> dict:
    """The test part scored as `recsys-jax evaluate` scores it, for a model that ranks
    (``ModelSpec.ranks``): ``test_ndcg``, ``test_recall``, ``test_precision`` and
    ``test_hit_rate`` at ``k`` (test ratings of at least ``threshold`` relevant; the
    candidates every item the user did not rate in the training split), and the same for
    popularity (each item's number of training ratings), the baseline to beat."""
    from recsys_jax.models import static_config

    train = ratings.take(split.train)
    test = ratings.take(split.test)
    score_fn = metrics.make_score_fn(result.model, static_config(result.model_config), ratings.num_items)
    inputs = metrics.ScoreInputs(result.params, result.aux)
    model = metrics.ranking_report(score_fn, inputs, test, k=k, exclude=train, threshold=threshold)
    counts = np.bincount(train.items, minlength=ratings.num_items).astype(np.float32)
    popular = metrics.ranking_report(metrics.broadcast_scores, counts, test, k=k, exclude=train, threshold=threshold)
    out = {"ranking_k": model["k"], "ranking_threshold": threshold, "ranking_users": model["num_users"]}
    for name in ("ndcg", "recall", "precision", "hit_rate"):
        out[f"test_{name}"], out[f"popularity_{name}"] = model[name], popular[name]
    return out


def predict_result(result: FitResult, pairs: Ratings, clip: tuple[float, float] | None = None) -> np.ndarray:
    """float32[N]: ``result``'s predictions of ``pairs``' (user, item) indices (with their
    times for a time-aware model; through the loss's ``predict`` for a loss with parameters),
    clipped to ``clip``."""
    apply_fn = make_apply(result.model, result.model_config)
    times = days(pairs.timestamps) if get_model(result.model).uses_time else None
    return predict_indices(apply_fn, result.params, pairs.users, pairs.items, clip=clip, aux=result.aux,
                           times=times, **result.predict_link())


def refit_on(train_all: Ratings, selection: FitResult, *, seed: int, loss_fn=None, progress: bool = False,
             checkpoint_dir: str | None = None, mesh=None, options: EngineOptions | None = None) -> FitResult:
    """Step 4: ``selection``'s model and settings trained again on ``train_all`` (the whole
    training split) from the same key, for ``selection.best_epoch`` epochs, with no
    validation (the last epoch is the result).

    The schedule is spread over the refit's epochs (a one-cycle schedule completes its
    cycle), and each epoch has about ``1 / (1 - val_frac)`` times the steps of a selection
    epoch: the same number of passes over the data, which is what the epoch count measures.
    A piecewise schedule's phases are cut at ``best_epoch``.
    """
    tc = selection.train_config._replace(epochs=selection.best_epoch, patience=None)
    if tc.phases is not None:
        phases, left = [], tc.epochs
        for n, lr in tc.phases:
            if left > 0:
                phases.append((min(int(n), left), lr))
                left -= int(n)
        tc = tc._replace(phases=tuple(phases))
    # fit sets what the config takes from the data (mean_rating; a module's configure) from train_all.
    if selection.loss is not None and loss_fn is None:
        loss_fn = selection.loss
    return fit(selection.model, train_all, None, key=jax.random.key(seed), model_config=selection.model_config,
               train_config=tc, loss_fn=loss_fn, progress=progress, checkpoint_dir=checkpoint_dir, mesh=mesh,
               options=options)


