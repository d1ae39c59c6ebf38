"""Hyperparameter search on a validation slice of the training split (never the test split).

    python -m benchmarks.tune                  # every model, the grid below
    python -m benchmarks.tune --quick          # bias only, a smaller grid

For split seed 0 of ml-latest-small (random 80/20), the *training* split is cut again into
90% search-train and 10% search-validation (seed 0); every grid point is trained on the
search-train part (with its own early-stopping slice, as in every run) and scored on the
search-validation part. The test split of the benchmark is never loaded here. The grid
point with the lowest search-validation RMSE is written, with the whole grid, to
``benchmarks/results/tuned.json``; ``benchmarks.accuracy --presets tuned`` trains with it.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys

import numpy as np

from benchmarks.common import RESULTS, environment, write_json
from recsys_jax.data import load_movielens, random_split
from recsys_jax.experiment import run_experiment
from recsys_jax.models import MODELS
from recsys_jax.presets import get_preset

GRID = {
    "lr": [3e-3, 1e-2, 3e-2],
    "l2": [0.03, 0.1, 0.3],
    "epochs": [5, 10],
}
QUICK_GRID = {"lr": [1e-2], "l2": [0.03, 0.1], "epochs": [5]}


def search_split(ratings, seed: int = 0):
    """The training split of the benchmark's split ``seed``, cut 90/10 for the search."""
    train = ratings.take(random_split(ratings, seed, 0.2).train)
    return train, random_split(len(train), np.random.default_rng([seed, 2]), 0.1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--json", default=None, help="default: benchmarks/results/tuned.json")
    args = p.parse_args(argv)
    grid = QUICK_GRID if args.quick else GRID
    models = ["bias"] if args.quick else args.models
    env = environment()
    ratings = load_movielens("ml-latest-small")
    train, split = search_split(ratings)
    out = {"protocol": "ml-latest-small, training split of random 80/20 seed 0, cut 90/10 (seed 0)",
           "grid": grid, "env": env, "models": {}}
    for model in models:
        base = get_preset("default", model)
        trials = []
        for values in itertools.product(*grid.values()):
            tc = base._replace(**dict(zip(grid, values)))
            rec, _ = run_experiment(train, split, model, seed=0, train_config=tc)
            trials.append({**dict(zip(grid, values)), "search_val_rmse": rec["test_rmse"], "fit_seconds": rec["fit_seconds"]})
            print(f"[tune] {model:5s} {dict(zip(grid, values))}: search-val rmse {rec['test_rmse']:.4f}", flush=True)
        best = min(trials, key=lambda t: t["search_val_rmse"])
        out["models"][model] = {"best": {k: best[k] for k in grid}, "search_val_rmse": best["search_val_rmse"],
                                "base_preset": base._asdict(), "trials": trials}
        print(f"[tune] {model}: best {out['models'][model]['best']} ({best['search_val_rmse']:.4f})", flush=True)
    path = args.json or RESULTS / "tuned.json"
    write_json(path, [out])
    print(json.dumps({m: v["best"] for m, v in out["models"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
