"""Hyperparameter search on a validation slice of the training split (never the test split).

    python -m benchmarks.tune                  # every model, the grid below
    python -m benchmarks.tune --quick          # bias only, a smaller grid

For each split seed S of ml-latest-small (random 80/20; ``--seeds``, default 0), the
*training* split of S is cut again into 90% search-train and 10% search-validation; every
grid point is trained on the search-train part (with its own early-stopping slice, as in
every run) and scored on the search-validation part. The search skips the refit on the
whole search-train part (``refit=False``): it would double the cost of every grid point for
a choice of learning rate, L2 and epochs that the refit does not change; the accuracy runs
that use the choice refit as usual. The test split of S is never loaded.
Models that train themselves search their own model options instead (`MODEL_GRIDS`: BPMF's
K). The grid point with the lowest search-validation RMSE is written per seed, with the whole
grid, to ``benchmarks/results/tuned.json`` for a full run from a clean commit, else to
``runs/benchmarks/tuned.json`` (``--json`` names it); ``benchmarks.accuracy --presets
tuned`` trains split S with the choice made on S's own training split (nested tuning),
read from ``benchmarks/results/tuned.json`` unless ``--tuned PATH``.
A choice made on one seed is not used for another: the test rows of another random split
overlap the first split's training data.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

if not __package__:  # run as a file (python benchmarks/X.py): make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks.common import add_output_args, environment, print_written, resolve_outputs, write_json
from recsys_jax.data import load_movielens, random_split
from recsys_jax.training.experiment import run_experiment
from recsys_jax.models import MODELS, make_config
from recsys_jax.training.presets import get_preset

GRID = {
    "lr": [3e-3, 1e-2, 3e-2],
    "l2": [0.03, 0.1, 0.3],
    "epochs": [5, 10],
}
QUICK_GRID = {"lr": [1e-2], "l2": [0.03, 0.1], "epochs": [5]}
# Models that train themselves (no learning rate or L2) search their own model options
# instead; the choice is stored as ``best_model`` beside an empty ``best``. BPMF's samples
# do not overfit as K grows: on the validation slices of seeds 0-2, K=32 scored 0.0030-0.0039
# below the default K=10 at 100 sweeps, at about 6x the time (too slow for its default).
MODEL_GRIDS = {"bpmf": {"embedding_dim": [10, 32]}}


def search_split(ratings, seed: int):
    """The training split of the benchmark's split ``seed``, cut 90/10 for the search."""
    train = ratings.take(random_split(ratings, seed, 0.2).train)
    return train, random_split(len(train), np.random.default_rng([seed, 2]), 0.1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    # rating models only: a model that ranks (ModelSpec.ranks) has no RMSE; benchmarks.peers ranks it
    p.add_argument("--models", nargs="+", default=[m for m, spec in MODELS.items() if not spec.ranks])
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="split seeds, each tuned on its own training split")
    add_output_args(p, md=False)
    args = p.parse_args(argv)
    grid = QUICK_GRID if args.quick else GRID
    models = ["bias"] if args.quick else args.models
    env = environment()
    files = resolve_outputs("tune", "tuned", args, p)
    ratings = load_movielens("ml-latest-small")
    out = {"protocol": "ml-latest-small, random 80/20; per split seed, its training split cut 90/10",
           "grid": grid, "model_grids": {m: MODEL_GRIDS[m] for m in models if m in MODEL_GRIDS},
           "env": env, "models": {}}
    for seed in args.seeds:
        train, split = search_split(ratings, seed)
        for model in models:
            base = get_preset("default", model)
            train_grid, model_grid = ({}, MODEL_GRIDS[model]) if model in MODEL_GRIDS else (grid, {})
            both = {**train_grid, **model_grid}
            trials = []
            for values in itertools.product(*both.values()):
                point = dict(zip(both, values))
                tc = base._replace(**{k: point[k] for k in train_grid})
                config = make_config(model, **{k: point[k] for k in model_grid})
                rec, _ = run_experiment(train, split, model, seed=seed, train_config=tc, model_config=config,
                                        refit=False)
                trials.append({**point, "search_val_rmse": rec["test_rmse"], "fit_seconds": rec["fit_seconds"]})
                print(f"[tune] seed {seed} {model:5s} {point}: search-val rmse {rec['test_rmse']:.4f}", flush=True)
            best = min(trials, key=lambda t: t["search_val_rmse"])
            entry = out["models"].setdefault(model, {"base_preset": base._asdict(), "per_seed": {}})
            entry["per_seed"][str(seed)] = {"best": {k: best[k] for k in train_grid},
                                            "best_model": {k: best[k] for k in model_grid},
                                            "search_val_rmse": best["search_val_rmse"], "trials": trials}
            print(f"[tune] seed {seed} {model}: best {({k: best[k] for k in both})} "
                  f"({best['search_val_rmse']:.4f})", flush=True)
    path = write_json(files.json, [out])
    print(json.dumps({m: {s_: {**v["best"], **v["best_model"]} for s_, v in e["per_seed"].items()}
                      for m, e in out["models"].items()}))
    print_written("tune", files, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
