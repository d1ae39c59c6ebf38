"""Scaling benchmark: seconds per epoch, ratings/s and peak memory against data size.

    python -m benchmarks.scaling                # 100k .. 25M synthetic ratings
    python -m benchmarks.scaling --quick        # 100k and 1M

Synthetic ratings (`recsys_jax.data.make_synthetic`) from 100k up to the ML-25M shape
(25,000,095 ratings, 162,541 users, 62,423 items); smaller sizes scale users and items
by the square root of the size ratio, keeping ML-25M's ratio of users to items (so
ratings per user grow with size, from about 10 at 100k to 154 at 25M). Each size runs in a fresh subprocess, so its peak RSS is its
own. The model is ``bias`` (50 factors, Adam, L2 on touched rows) at one batch size; the
first epoch (compile) is excluded and the median of the following epochs is reported.
Writes JSON, Markdown and a log-log PNG plot (matplotlib, the ``plot`` extra):
``scaling-<device>.*`` in benchmarks/results/ for a full run from a clean commit, else
runs/benchmarks/ (the rule in `benchmarks.common`).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

if not __package__:  # run as a file (python benchmarks/X.py): make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (add_output_args, environment, markdown_table, peak_rss_mb, print_written,
                               resolve_outputs, write_json, write_text)

SIZES = [100_000, 1_000_000, 5_000_000, 25_000_095]
ML25M = (162_541, 62_423, 25_000_095)


def shape_for(num_ratings: int) -> tuple[int, int]:
    """Users and items for ``num_ratings``: ML-25M's shape, scaled by sqrt of the size ratio."""
    f = (num_ratings / ML25M[2]) ** 0.5
    return max(int(ML25M[0] * f), 100), max(int(ML25M[1] * f), 100)


def one_size(num_ratings: int, batch_size: int, epochs: int, model: str) -> dict:
    """Runs in a child process: generate, train ``epochs`` epochs, report."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks.throughput import build

    num_users, num_items = shape_for(num_ratings)
    t0 = time.perf_counter()
    from recsys_jax.data import make_synthetic

    ratings, _ = make_synthetic(jax.random.key(0), num_users, num_items, num_ratings)
    gen_s = time.perf_counter() - t0
    _, epoch, state, _, extra = build(model, ratings, batch_size)
    users, items, vals = (jnp.asarray(a) for a in (ratings.users, ratings.items, ratings.ratings))
    times = []
    for e in range(epochs + 1):  # epoch 0 compiles
        t0 = time.perf_counter()
        state, losses = epoch(state, users, items, vals, jax.random.key(e), times=extra["times"])
        jax.block_until_ready(losses)
        times.append(time.perf_counter() - t0)
    secs = float(np.median(times[1:]))
    return {"bench": "scaling", "model": model, "dataset": f"synthetic-{num_ratings}", "num_ratings": num_ratings,
            "num_users": num_users, "num_items": num_items, "batch_size": batch_size,
            "seconds_per_epoch": secs, "ratings_per_s": num_ratings / secs, "first_epoch_s": times[0],
            "generate_s": gen_s, "peak_rss_mb": peak_rss_mb()}


def plot(records: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[scaling] matplotlib not installed (pip install -e '.[plot]'): no plot", file=sys.stderr)
        return False
    n = [r["num_ratings"] for r in records]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key, label in zip(axes, ["seconds_per_epoch", "ratings_per_s", "peak_rss_mb"],
                              ["seconds per epoch", "ratings / s", "peak RSS (MiB)"]):
        ax.loglog(n, [r[key] for r in records], "o-")
        ax.set_xlabel("ratings")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    if len(n) > 1:  # a linear-cost guide through the first point
        axes[0].loglog(n, [records[0]["seconds_per_epoch"] * x / n[0] for x in n], "--", color="gray", label="linear")
        axes[0].legend()
    fig.suptitle(f"bias model, batch {records[0]['batch_size']}, {records[0]['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--sizes", nargs="+", type=int, default=SIZES)
    p.add_argument("--batch-size", type=int, default=8192)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--model", default="bias")
    add_output_args(p, png=True)
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(one_size(args.child, args.batch_size, args.epochs, args.model)))
        return 0
    if args.quick:
        args.sizes, args.epochs = [100_000, 1_000_000], 2
    env = environment()
    tag = env["device"].split(":")[0]
    files = resolve_outputs("scaling", f"scaling-{tag}", args)
    records = []
    for n in args.sizes:
        cmd = [sys.executable, "-m", "benchmarks.scaling", "--child", str(n), "--batch-size", str(args.batch_size),
               "--epochs", str(args.epochs), "--model", args.model]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        if out.returncode != 0:
            print(f"[scaling] {n} ratings failed:\n{out.stderr[-2000:]}", file=sys.stderr)
            break
        rec = json.loads(out.stdout.strip().splitlines()[-1])
        rec.update(env)
        records.append(rec)
        print(f"[scaling] {n:>11,d} ratings: {rec['seconds_per_epoch']:8.3f} s/epoch, "
              f"{rec['ratings_per_s']:12,.0f} ratings/s, peak RSS {rec['peak_rss_mb']:7.0f} MiB", flush=True)
    written = [write_json(files.json, records)]
    md = ("### Scaling (synthetic, ML-25M shape at the top)\n\n" + markdown_table(
        ["ratings", "users", "items", "s/epoch", "ratings/s", "peak RSS MiB"],
        [[f"{r['num_ratings']:,}", f"{r['num_users']:,}", f"{r['num_items']:,}", f"{r['seconds_per_epoch']:.3f}",
          f"{r['ratings_per_s']:,.0f}", f"{r['peak_rss_mb']:.0f}"] for r in records])
        + f"\n\nModel {args.model}, batch {args.batch_size}, median of {args.epochs} epochs after the compile epoch. "
        f"Device: {env['device']} ({env['cpu']}, {env['cpu_count']} cores); jax {env['jax']}; "
        f"commit {env['git_commit']}; `{env['command']}`.\n")
    written.append(write_text(files.md, md))
    files.png.parent.mkdir(parents=True, exist_ok=True)
    if records and plot(records, files.png):
        written.append(files.png)
    print(md)
    print_written("scaling", files, *written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
