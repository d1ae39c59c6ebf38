"""Search a model's settings on its training split, within a time budget (``recsys-jax train
--tune SECONDS``).

The presets were chosen on ml-latest-small; on data of another size or density other
settings may do better. `search` chooses among the preset's own settings and the points of
the model's `SEARCH_SPACE`, on the training split alone:

1. the training split is cut again, 90% search-train and 10% search-validation (drawn from
   the seed, `search_split`); the test split is never read;
2. each candidate is trained on search-train by the usual procedure (its own early-stopping
   slice carved from search-train, no refit) and scored once on search-validation (RMSE of
   the clipped predictions);
3. the preset's settings run first, then the space's points in a random order drawn from the
   seed (random search: within a budget it covers every axis early, Bergstra & Bengio 2012),
   until the budget is spent (a candidate that starts inside the budget runs to its end) or
   the space is exhausted;
4. the candidate with the lowest search-validation RMSE is the choice: the caller trains it
   on the whole training split as usual (``recsys-jax train`` does), so the default is kept
   unless another point validated better.

Models that rank (``ials``, ``ease``) have no RMSE to search by and are refused.
"""
from __future__ import annotations

import itertools
import time
from typing import Any, NamedTuple

import numpy as np

from recsys_jax.data.ratings import Ratings
from recsys_jax.data.split import Split, random_split
from recsys_jax.engine.config import TrainConfig

from recsys_jax.training.presets import ENGINE_SPACE, SEARCH_SPACE  # the spaces live with the presets

class Tuned(NamedTuple):
    """What `search` chose and how."""

    train_config: TrainConfig  # the choice's
    model_config: Any
    choice: dict  # the settings that differ from the preset's ({} when the preset's own won)
    trials: list  # one dict per candidate run: its settings, search-val RMSE, seconds
    seconds: float  # wall time of the search
    num_candidates: int  # the candidates there were (the preset's and the space's)


def space_for(model: str) -> dict[str, dict[str, list]]:
    """The search space of ``model`` (`SEARCH_SPACE`, or the engine's grid for the models it trains)."""
    from recsys_jax.models import get_model

    spec = get_model(model)
    if spec.ranks:
        raise ValueError(f"--tune: {model!r} ranks items from implicit feedback; the search scores ratings (RMSE) "
                         "and has nothing to choose by for it")
    if model in SEARCH_SPACE:
        return SEARCH_SPACE[model]
    if spec.fit_epochs is not None:
        raise ValueError(f"--tune: no search space for {model!r}, which trains itself")
    return ENGINE_SPACE


def search_split(train_all: Ratings | int, seed: int, frac: float = 0.1) -> Split:
    """Search-train and search-validation rows (``frac``) of the training split, from the seed."""
    n = train_all if isinstance(train_all, (int, np.integer)) else len(train_all)
    return random_split(n, np.random.default_rng([seed, 2]), frac)


def candidates(space: dict[str, dict[str, list]], seed: int) -> list[tuple[dict, dict]]:
    """``(train settings, model settings)`` of every point of ``space``, in a random order from
    ``seed``."""
    axes = [("train", k, v) for k, v in space["train"].items()] + [("model", k, v) for k, v in space["model"].items()]
    points = []
    for values in itertools.product(*(v for _, _, v in axes)):
        point = ({}, {})
        for (kind, name, _), value in zip(axes, values):
            point[0 if kind == "train" else 1][name] = value
        points.append(point)
    order = np.random.default_rng([seed, 3]).permutation(len(points))
    return [points[i] for i in order]


def settled(train_config: TrainConfig, train_set: dict) -> TrainConfig:
    """``train_config`` with the point's settings; a searched rate replaces a piecewise
    schedule's annealing by a constant rate (its phases set the rates), as ``--lr`` does."""
    tc = train_config._replace(**train_set)
    return tc._replace(schedule="constant") if "lr" in train_set and tc.schedule == "piecewise" else tc


def search(train_all: Ratings, model: str, *, seed: int, budget: float, train_config: TrainConfig, model_config,
           val_frac: float = 0.1, options=None, report=None, fixed=frozenset()) -> Tuned:
    """Steps 1-4 of the module docstring on ``train_all`` (the training split), starting from
    ``train_config`` and ``model_config`` (the preset's, with the caller's overrides) and
    stopping when ``budget`` seconds have passed. The settings named in ``fixed`` are not
    searched (the caller chose them). ``report(trial)`` is called after each run."""
    from recsys_jax.training.experiment import run_experiment

    if not budget > 0:
        raise ValueError(f"--tune: the budget must be a positive number of seconds, got {budget}")
    space = {kind: {k: v for k, v in axes.items() if k not in fixed} for kind, axes in space_for(model).items()}
    if len(train_all) < 20:
        raise ValueError(f"--tune: the training split has {len(train_all)} ratings; the search needs a "
                         "search-validation part cut from it (at least 20 ratings)")
    split = search_split(train_all, seed)
    base = ({}, {})
    points = [base] + [p for p in candidates(space, seed)
                       if any(getattr(train_config, k) != v for k, v in p[0].items())
                       or any(getattr(model_config, k) != v for k, v in p[1].items())]
    t0 = time.perf_counter()
    trials = []
    for train_set, model_set in points:
        if trials and time.perf_counter() - t0 >= budget:
            break
        tc = settled(train_config, train_set)
        config = model_config._replace(**model_set)
        rec, _ = run_experiment(train_all, split, model, seed=seed, train_config=tc, model_config=config,
                                val_frac=val_frac, refit=False, options=options)
        trial = {**train_set, **model_set, "search_val_rmse": rec["test_rmse"], "seconds": rec["fit_seconds"]}
        trials.append(trial)
        if report is not None:
            report(trial)
    best = min(range(len(trials)), key=lambda i: (np.nan_to_num(trials[i]["search_val_rmse"], nan=np.inf), i))
    train_set, model_set = points[best]
    changed = {**{k: v for k, v in train_set.items() if getattr(train_config, k) != v},
               **{k: v for k, v in model_set.items() if getattr(model_config, k) != v}}
    return Tuned(settled(train_config, train_set), model_config._replace(**model_set), changed,
                 trials, time.perf_counter() - t0, len(points))
