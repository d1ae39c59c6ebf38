"""iALS at scale: seconds per epoch of recsys_jax's ``ials`` against implicit's CPU ALS on
implicit data of the ML-25M shape (162,541 users, 62,423 items, about 24M distinct
positives; ``--scale`` shrinks it, users and items by the square root), 64 factors.

    python -m benchmarks.ials_scale                   # the ML-25M shape, solver cg
    python -m benchmarks.ials_scale --scale 0.1 --solver cholesky

The positives are seeded: users uniform, items Pareto-skewed (a few popular items, a long
tail), duplicates removed. implicit (the ``peers`` extra) fits 1 and then 2 iterations; its
seconds per iteration is the difference. ``ials`` runs ``--epochs`` epochs: the first
(grouping the positives on the host, compiling) is reported apart, the median of the others
is its seconds per epoch. One process, one thread per core for both.

Files: ``ials_scale.{json,md}`` in runs/benchmarks/ (not a published step).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if not __package__:  # run as a file (python benchmarks/X.py): make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks.common import (add_output_args, environment, markdown_table, print_written, resolve_outputs,
                               write_json, write_text)

ML25M = (162_541, 62_423, 25_000_095)


def positives(scale: float, seed: int = 0):
    """``(users, items, num_users, num_items)`` of the seeded implicit data (see the module docstring)."""
    num_users, num_items = int(ML25M[0] * scale ** 0.5), int(ML25M[1] * scale ** 0.5)
    n = int(ML25M[2] * scale)
    rng = np.random.default_rng(seed)
    items = np.minimum((rng.pareto(1.2, n) * num_items / 50).astype(np.int64), num_items - 1)
    users = rng.integers(0, num_users, n)
    codes = np.unique(users * num_items + items)
    return (codes // num_items).astype(np.int32), (codes % num_items).astype(np.int32), num_users, num_items


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scale", type=float, default=1.0, help="share of the ML-25M shape's positives (default 1)")
    p.add_argument("--solver", default="cg", choices=["cg", "cholesky"])
    p.add_argument("--epochs", type=int, default=3, help="ials epochs (the first compiles; default 3)")
    p.add_argument("--kernels", default="on", choices=["on", "off"],
                   help="solver cg on the CPU kernel where it is built (on, the default) or on XLA (off)")
    add_output_args(p)
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error("--epochs must be >= 2: the first compiles")
    try:
        import implicit
        from scipy.sparse import csr_matrix
    except ImportError:
        print('[ials_scale] needs implicit: pip install -e ".[peers]"', file=sys.stderr)
        return 2
    import jax

    from recsys_jax.data import Ratings
    from recsys_jax.engine.options import resolve_options
    from recsys_jax.models import ials

    files = resolve_outputs("ials_scale", "ials_scale", args, p)
    env = {**environment(), "implicit": implicit.__version__}
    users, items, num_users, num_items = positives(args.scale)
    print(f"[ials_scale] {num_users} users, {num_items} items, {len(users)} positives", flush=True)
    matrix = csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=(num_users, num_items))
    seconds = {}
    for iterations in (1, 2):
        model = implicit.cpu.als.AlternatingLeastSquares(factors=64, iterations=iterations, random_state=0)
        t0 = time.perf_counter()
        model.fit(matrix, show_progress=False)
        seconds[iterations] = time.perf_counter() - t0
    implicit_iteration = seconds[2] - seconds[1]
    ratings = Ratings(users, items, np.full(len(users), 5.0, np.float32), np.zeros(len(users), np.int64),
                      np.arange(num_users, dtype=np.int64), np.arange(num_items, dtype=np.int64))
    options = resolve_options(kernels=args.kernels == "on")
    epochs = ials.fit_epochs(jax.random.key(0), ratings, ials.Config(solver=args.solver), options=options)
    times = []
    for _ in range(args.epochs):
        t0 = time.perf_counter()
        params, _ = next(epochs)
        jax.block_until_ready(params)
        times.append(time.perf_counter() - t0)
    record = {"bench": "ials_scale", "scale": args.scale, "num_users": num_users, "num_items": num_items,
              "positives": int(len(users)), "factors": 64, "solver": args.solver,
              "kernel": bool(options.kernels and args.solver == "cg"),
              "implicit_seconds_per_iteration": implicit_iteration, "implicit_first_iteration": seconds[1],
              "ials_first_epoch": times[0], "ials_seconds_per_epoch": float(np.median(times[1:])),
              "ials_epochs": times, **env}
    text = "\n".join([
        f"### iALS at {args.scale:g} x the ML-25M shape ({num_users} users, {num_items} items, {len(users)} "
        "positives, 64 factors)\n",
        markdown_table(["implementation", "s per iteration", "first (with set-up / compile) s"],
                       [["implicit ALS (CG)", f"{implicit_iteration:.2f}", f"{seconds[1]:.2f}"],
                        [f"recsys_jax ials ({args.solver}{', CPU kernel' if record['kernel'] else ', XLA'})",
                         f"{record['ials_seconds_per_epoch']:.2f}",
                         f"{times[0]:.2f}"]]),
        "",
        f"Device: {env['device']} ({env['cpu']}, {env['cpu_count']} cores); jax {env['jax']}, implicit "
        f"{env['implicit']}; commit {env['git_commit']}; `{env['command']}`.", ""])
    json_path = write_json(files.json, [record])
    write_text(files.md, text)
    print(text)
    print_written("ials_scale", files, json_path, files.md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
