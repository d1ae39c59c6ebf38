"""fit_many benchmark: K seeds as one vmapped program vs K sequential fits; ensembles.

    python -m benchmarks.many                 # bias, K=8, split seeds 0 1 2
    python -m benchmarks.many --quick         # split seed 0 only

For each split seed of ml-latest-small (random 80/20) the training split is carved as in
every run (`recsys_jax.training.experiment`: 10% validation slice, seed-derived), then

- ``sequential``: K calls of `fit` with seeds 0..K-1 (``--preset``: default, or tuned, the
  nested choice made on that split's own training split), one after another, sharing one
  compiled epoch (`recsys_jax.engine.build` caches it: only the first fit compiles);
- ``fit_many``: the same K members in one `recsys_jax.training.many.fit_many` call;

both with dense Adam (fit_many's optimizer) whatever optimizer the preset names, so that
they run the same algorithm and their parameters can be compared.

Both are timed wall-clock end to end (compilation included), and the largest parameter
difference between the two is recorded. The K members' mean prediction (the ensemble)
is scored on the test split once, beside the members' mean single-model RMSE.

Files: ``many-<device>`` (``many-<preset>-<device>`` for another preset) ``.json`` and
``.md``, in benchmarks/results/ for a full run from a clean commit, else runs/benchmarks/
(the rule in `benchmarks.common`).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if not __package__:  # run as a file (python benchmarks/X.py): make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import numpy as np

from benchmarks.accuracy import train_config
from benchmarks.common import (add_output_args, environment, markdown_table, print_written, resolve_outputs,
                               write_json, write_text)
from recsys_jax.eval import metrics
from recsys_jax.data import load_movielens, random_split
from recsys_jax.training.experiment import carve_validation
from recsys_jax.training.many import Member, ensemble_predict, fit_many, predict_many
from recsys_jax.training.fit import fit


def run(model: str, ratings, seed: int, k: int, preset: str = "default", tuned: str | None = None) -> dict:
    split = random_split(ratings, seed, 0.2)
    train_all, test = ratings.take(split.train), ratings.take(split.test)
    train, val = carve_validation(train_all, seed, 0.1)
    tc = train_config(preset, model, seed, tuned)
    if tc is None:
        raise SystemExit(f"{tuned or 'benchmarks/results/tuned.json'} has no choice for {model} on split seed {seed}")
    # fit_many's members train with dense Adam; so do the sequential fits (module docstring).
    tc = tc._replace(optimizer="adam")

    t0 = time.perf_counter()
    singles = [fit(model, train, val, key=s, train_config=tc, progress=False) for s in range(k)]
    jax.block_until_ready(singles[-1].params)
    sequential_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    many = fit_many(model, train, val, [Member(seed=s) for s in range(k)], train_config=tc)
    jax.block_until_ready(many.params)
    many_s = time.perf_counter() - t0

    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
               for s in range(k) for a, b in zip(jax.tree.leaves(singles[s].params),
                                                 jax.tree.leaves(many.member_params(s))))
    preds = predict_many(many, test.users, test.items, clip=ratings.rating_scale)
    member_rmse = [metrics.rmse(p, test.ratings) for p in preds]
    ens = ensemble_predict(many, test.users, test.items, clip=ratings.rating_scale)
    return {"bench": "fit_many", "model": model, "preset": preset, "train_config": tc._asdict(),
            "dataset": ratings.name, "split_seed": seed, "k": k,
            "sequential_seconds": sequential_s, "fit_many_seconds": many_s, "speedup": sequential_s / many_s,
            "max_param_diff": diff, "member_test_rmse_mean": float(np.mean(member_rmse)),
            "member_test_rmse_std": float(np.std(member_rmse, ddof=1)), "ensemble_test_rmse": metrics.rmse(ens, test.ratings),
            "ensemble_test_mae": metrics.mae(ens, test.ratings), "epochs": tc.epochs, "batch_size": tc.batch_size}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--model", default="bias")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--preset", default="default",
                   help="default, or tuned: the nested choice for each split seed (from --tuned)")
    p.add_argument("--tuned", metavar="PATH", default=None,
                   help="the tune choices for the tuned preset (default: benchmarks/results/tuned.json)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    add_output_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.seeds = [0]
    env = environment()
    tag = env["device"].split(":")[0]
    files = resolve_outputs("many", "many-" + ("" if args.preset == "default" else f"{args.preset}-") + tag, args, p)
    ratings = load_movielens("ml-latest-small")
    records = []
    for seed in args.seeds:
        rec = run(args.model, ratings, seed, args.k, args.preset, args.tuned)
        rec.update(env)
        records.append(rec)
        print(f"[many] split {seed}: sequential {rec['sequential_seconds']:.2f} s, fit_many {rec['fit_many_seconds']:.2f} s "
              f"(x{rec['speedup']:.2f}), max |diff| {rec['max_param_diff']:.1e}; members {rec['member_test_rmse_mean']:.4f}, "
              f"ensemble {rec['ensemble_test_rmse']:.4f}", flush=True)
    json_path = write_json(files.json, records)
    md = (f"### fit_many: {args.k} seeds of `{args.model}` ({args.preset} preset) as one program vs "
          f"{args.k} sequential fits\n\n"
          + markdown_table(["split seed", "sequential s", "fit_many s", "speed-up", "max param diff",
                            "member test RMSE", "ensemble test RMSE"],
                           [[r["split_seed"], f"{r['sequential_seconds']:.2f}", f"{r['fit_many_seconds']:.2f}",
                             f"{r['speedup']:.2f}x", f"{r['max_param_diff']:.1e}",
                             f"{r['member_test_rmse_mean']:.4f} ± {r['member_test_rmse_std']:.4f}",
                             f"{r['ensemble_test_rmse']:.4f}"] for r in records])
          + "\n\nBoth with dense Adam, fit_many's optimizer (the preset's other settings), so that they run the "
          "same algorithm. Wall time, compilation included."
          + f" Device: {env['device']} ({env['cpu']}, {env['cpu_count']} cores); "
          f"jax {env['jax']}; commit {env['git_commit']}; `{env['command']}`.\n")
    write_text(files.md, md)
    print(md)
    print_written("many", files, json_path, files.md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
