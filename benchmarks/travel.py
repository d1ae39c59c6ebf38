"""Do the defaults travel? Each model's preset beside ``recsys-jax train --tune BUDGET`` on data
of other shapes than the ml-latest-small where the presets were chosen.

    python -m benchmarks.travel                 # the shapes, models and seeds below
    python -m benchmarks.travel --quick         # one shape, bias, seed 0, a 5 s budget

Shapes (each split at random 80/20 by the seed, as ``recsys-jax train`` splits):

- ``users-25%``: the ratings of a random quarter of ml-latest-small's users (drawn from seed 0),
  fewer ratings per movie;
- ``older-half``: ml-latest-small's ratings before their median timestamp;
- ``synthetic``: `recsys_jax.data.make_synthetic` (3,000 users, 1,500 movies, 150,000 ratings, a
  planted rank-8 model with biases and noise sd 0.5, half stars).

For each shape, model and seed, two runs score the test split once: the CLI's defaults
(``resolve``: the preset, its validation slice, the refit), and the same after
`recsys_jax.training.tune.search` chose the settings on the training split alone within
``--budget`` seconds (the preset's settings first, so the search can only change them where
another point validated better on the search-validation part). Test RMSE of both, their
difference, and what the search chose.

Files: ``travel.{json,md}`` in benchmarks/results/ for a full run from a clean commit, else
runs/benchmarks/ (the rule in `benchmarks.common`).
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

if not __package__:  # run as a file (python benchmarks/X.py): make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import numpy as np

from benchmarks.common import (add_output_args, environment, markdown_table, print_written, resolve_outputs,
                               write_json, write_text)
from recsys_jax.data import load_movielens, make_synthetic, random_split
from recsys_jax.training.experiment import run_experiment
from recsys_jax.training.presets import resolve
from recsys_jax.training.tune import search

SHAPES = ("users-25%", "older-half", "synthetic")
MODELS = ("bias", "autorec", "glocalk")


def make_shape(name: str, data_dir: str | None = None):
    """The ratings of shape ``name`` (module docstring)."""
    if name == "synthetic":
        ratings, _ = make_synthetic(jax.random.key(0), 3000, 1500, 150_000, embedding_dim=8)
        return ratings
    ratings = load_movielens("ml-latest-small", data_dir, download=False)
    if name == "users-25%":
        keep = np.random.default_rng(0).random(ratings.num_users) < 0.25
        return ratings.take(np.flatnonzero(keep[ratings.users]))
    if name == "older-half":
        return ratings.take(np.flatnonzero(ratings.timestamps < np.median(ratings.timestamps)))
    raise ValueError(f"unknown shape {name!r}; known: {', '.join(SHAPES)}")


def run(shape: str, ratings, model: str, seed: int, budget: float) -> dict:
    split = random_split(ratings, seed, 0.2)
    r = resolve("default", model)
    default, _ = run_experiment(ratings, split, model, seed=seed, train_config=r.train_config,
                                model_config=r.model_config, val_frac=r.val_frac)
    tuned = search(ratings.take(split.train), model, seed=seed, budget=budget, train_config=r.train_config,
                   model_config=r.model_config, val_frac=r.val_frac)
    after, _ = run_experiment(ratings, split, model, seed=seed, train_config=tuned.train_config,
                              model_config=tuned.model_config, val_frac=r.val_frac)
    return {"shape": shape, "model": model, "seed": seed, "num_ratings": len(ratings), "budget": budget,
            "default_rmse": default["test_rmse"], "tuned_rmse": after["test_rmse"], "choice": tuned.choice,
            "trials": len(tuned.trials), "candidates": tuned.num_candidates, "tune_seconds": tuned.seconds,
            "default_fit_seconds": default["fit_seconds"], "tuned_fit_seconds": after["fit_seconds"],
            "search": tuned.trials}


def markdown(records: list[dict], env: dict) -> str:
    by = defaultdict(list)
    for r in records:
        by[(r["shape"], r["model"])].append(r)
    rows = []
    for (shape, model), rs in by.items():
        d = np.array([r["default_rmse"] for r in rs])
        t = np.array([r["tuned_rmse"] for r in rs])
        choices = "; ".join(", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["choice"].items())
                            or "preset" for r in rs)
        rows.append([shape, f"{rs[0]['num_ratings']:,}", model, f"{d.mean():.4f}", f"{t.mean():.4f}",
                     f"{(t - d).mean():+.4f}", f"{int(np.sum(t < d))} of {len(rs)}",
                     f"{np.mean([r['trials'] for r in rs]):.0f} of {rs[0]['candidates']}",
                     f"{np.median([r['tune_seconds'] for r in rs]):.0f}", choices])
    out = [f"### Defaults against `--tune {records[0]['budget']:g}` on other shapes "
           f"(mean over {len({r['seed'] for r in records})} split seeds)\n",
           markdown_table(["shape", "ratings", "model", "default RMSE", "tuned RMSE", "tuned - default",
                           "tuned lower", "candidates run", "search s", "chosen (by seed)"], rows),
           "\nThe search reads the training split alone; both runs score the same test split once.",
           f"\nDevice: {env['device']} ({env['cpu']}, {env['cpu_count']} cores); jax {env['jax']}; "
           f"commit {env['git_commit']}; `{env['command']}`."]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="users-25%%, bias, seed 0, a 5 s budget")
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=SHAPES)
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--budget", type=float, default=60.0, help="seconds of search per run (default: %(default)s)")
    p.add_argument("--data-dir", default=None, help="where ml-latest-small is (default: $RECSYS_JAX_DATA, cache)")
    add_output_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.shapes, args.models, args.seeds, args.budget = ["users-25%"], ["bias"], [0], 5.0
    files = resolve_outputs("travel", "travel", args, p)
    env = environment()
    records = []
    for shape in args.shapes:
        ratings = make_shape(shape, args.data_dir)
        for model in args.models:
            for seed in args.seeds:
                rec = run(shape, ratings, model, seed, args.budget)
                records.append({**rec, **env})
                print(f"[travel] {shape} {model} seed {seed}: default {rec['default_rmse']:.4f}, tuned "
                      f"{rec['tuned_rmse']:.4f} ({rec['choice'] or 'preset'}; {rec['trials']} of "
                      f"{rec['candidates']} in {rec['tune_seconds']:.0f} s)", flush=True)
    path = write_json(files.json, records)
    text = markdown(records, env)
    write_text(files.md, text)
    print(text)
    print_written("travel", files, path, files.md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
