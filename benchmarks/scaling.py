"""Scaling benchmark: seconds per epoch, ratings/s and peak memory against data size.

    python -m benchmarks.scaling                # 100k .. 25M synthetic ratings
    python -m benchmarks.scaling --quick        # 100k and 1M

Synthetic ratings (`recsys_jax.data.make_synthetic`) from 100k up to the ML-25M shape
(25,000,095 ratings, 162,541 users, 62,423 items); smaller sizes scale users and items
by the square root of the size ratio, keeping ML-25M's ratio of users to items (so
ratings per user grow with size, from about 10 at 100k to 154 at 25M). Each (size,
optimizer) runs in a fresh subprocess, so its peak RSS is its own. The model is ``bias``
(50 factors, L2 on touched rows) at one batch size, trained by the library's engine with
each of ``--optimizers`` (dense Adam, the row-sparse ones, `recsys_jax.engine.sparse`, and
alternating least squares, `recsys_jax.engine.als`, which ignores batch size and learning
rate); compilation is timed apart and the median epoch is reported (ALS builds its
per-training-set plan inside its first epoch, reported as ``plan_s``). A slice of the planted
ratings is held out and scored after the last epoch, so optimizers are compared at equal
epochs. At ``--libmf-sizes`` LIBMF (C++ SGD, the ``peers`` extra) runs on the same data.
Writes JSON, Markdown and a log-log PNG plot (matplotlib, the ``plot`` extra):
``scaling-<device>.*`` in benchmarks/results/ for a full run from a clean commit, else
runs/benchmarks/ (the rule in `benchmarks.common`).
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

if not __package__:  # run as a file (python benchmarks/X.py): make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (add_output_args, environment, markdown_table, peak_rss_mb, print_written,
                               resolve_outputs, write_json, write_text)

SIZES = [100_000, 1_000_000, 5_000_000, 25_000_095]
# Constant learning rate per optimizer (--lr overrides all). AdaGrad divides by the root of
# its accumulated squares, so its steps are far smaller than Adam's at the same rate: 0.1 was
# chosen at the 1M size (3 epochs, held-out RMSE 0.7719 / 0.7384 / 0.8593 at 0.03 / 0.1 / 0.3,
# commit 082c2ad), never at the sizes the targets are read at.
LEARNING_RATES = {"adagrad": 0.1}
DEFAULT_LR = 1e-2
ML25M = (162_541, 62_423, 25_000_095)


def learning_rate(optimizer: str, override: float | None = None) -> float:
    """The constant learning rate ``optimizer`` trains with here: ``override`` if given."""
    return override if override is not None else LEARNING_RATES.get(optimizer, DEFAULT_LR)


def shape_for(num_ratings: int) -> tuple[int, int]:
    """Users and items for ``num_ratings``: ML-25M's shape, scaled by sqrt of the size ratio."""
    f = (num_ratings / ML25M[2]) ** 0.5
    return max(int(ML25M[0] * f), 100), max(int(ML25M[1] * f), 100)


def one_size(num_ratings: int, batch_size: int, epochs: int, model: str, optimizer: str,
             val_frac: float = 0.0, lr: float = 1e-2, order: str = "auto") -> dict:
    """Runs in a child process: generate, train ``epochs`` epochs with ``optimizer``, report.

    With ``val_frac`` a slice of the planted data is held out and scored after the last
    epoch (RMSE), so optimizers can be compared at the same number of epochs.
    """
    import jax
    import numpy as np

    from benchmarks.throughput import build, kernels_in_use

    num_users, num_items = shape_for(num_ratings)
    t0 = time.perf_counter()
    from recsys_jax.eval import metrics
    from recsys_jax.data import make_synthetic
    from recsys_jax.training.experiment import carve_validation
    from recsys_jax.eval.predict import predict_indices

    ratings, _ = make_synthetic(jax.random.key(0), num_users, num_items, num_ratings)
    gen_s = time.perf_counter() - t0
    train, val = carve_validation(ratings, 0, val_frac) if val_frac else (ratings, None)
    # ALS minimises its objective exactly: with the SGD runs' L2 of 1e-4 it overfits (val RMSE
    # 0.93 at 5M against 0.67-0.76, commit 5004c97), where 3 SGD epochs stop far short of that
    # minimum. It takes the model's default preset L2 instead (chosen on ml-latest-small's
    # training split, never on these ratings).
    reg = {}
    if optimizer == "als":
        from recsys_jax.training.presets import get_preset

        preset = get_preset("default", model)
        reg = {"l2": preset.l2, "bias_l2": preset.bias_l2}
    engine, state, apply_fn, (users, items, vals), extra = build(model, train, batch_size, lr=lr,
                                                                 optimizer=optimizer, order=order, **reg)
    grid = math.isqrt(len(extra["blocks"].sizes)) if "blocks" in extra else 1
    compiled, compile_s = engine.compile(state, users, items, vals, jax.random.key(0), **extra)
    times = []
    for e in range(epochs):
        t0 = time.perf_counter()
        state, losses = compiled(state, users, items, vals, jax.random.key(e), **extra)
        jax.block_until_ready(losses)
        times.append(time.perf_counter() - t0)
    secs = float(np.median(times))
    val_rmse = None
    if val is not None:
        pred = predict_indices(apply_fn, state.params, val.users, val.items, clip=ratings.rating_scale, aux=extra["aux"])
        val_rmse = metrics.rmse(pred, val.ratings)
    return {"bench": "scaling", "model": model, "optimizer": optimizer, "dataset": f"synthetic-{num_ratings}",
            "num_ratings": num_ratings, "num_train": len(train), "num_users": num_users, "num_items": num_items,
            "batch_size": batch_size, "lr": lr, "epochs": epochs, "order": order, "grid": grid,
            "seconds_per_epoch": secs,
            "ratings_per_s": len(train) / secs, "compile_s": compile_s, "epoch_seconds": times,
            "val_rmse": val_rmse, "generate_s": gen_s, "peak_rss_mb": peak_rss_mb(),
            "plan_s": getattr(engine, "plan_seconds", None), "l2": reg.get("l2", 1e-4),
            "bias_l2": reg.get("bias_l2", 0.0), "kernels": kernels_in_use(engine, len(train), extra)}


def libmf_size(num_ratings: int, k: int, epochs: int) -> dict:
    """Runs in a child process: LIBMF (`benchmarks.peers.libmf_throughput`, 2 threads) on the
    same synthetic ratings."""
    import jax

    from benchmarks.peers import libmf_throughput
    from recsys_jax.data import make_synthetic

    num_users, num_items = shape_for(num_ratings)
    ratings, _ = make_synthetic(jax.random.key(0), num_users, num_items, num_ratings)
    out = libmf_throughput(ratings, k=k, threads=2, epochs=epochs)
    return {"bench": "scaling", "model": "LIBMF", "optimizer": f"SGD (k={k}, 2 threads)",
            "dataset": f"synthetic-{num_ratings}", "num_ratings": num_ratings, "num_train": num_ratings,
            "num_users": num_users, "num_items": num_items, "batch_size": None, "epochs": epochs,
            "seconds_per_epoch": out["seconds"] / epochs, "ratings_per_s": out["ratings_per_second"],
            "compile_s": None, "val_rmse": None, "peak_rss_mb": peak_rss_mb(), "libmf": out}


def plot(records: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[scaling] matplotlib not installed (pip install -e '.[plot]'): no plot", file=sys.stderr)
        return False
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    groups = {}
    for r in records:
        groups.setdefault(f"{r['model']} {r['optimizer']}", []).append(r)
    for label, rs in groups.items():
        n = [r["num_ratings"] for r in rs]
        for ax, key in zip(axes, ["seconds_per_epoch", "ratings_per_s", "peak_rss_mb"]):
            ax.loglog(n, [r[key] for r in rs], "o-", label=label)
    for ax, ylabel in zip(axes, ["seconds per epoch", "ratings / s", "peak RSS (MiB)"]):
        ax.set_xlabel("ratings")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(f"synthetic ratings, batch {records[0]['batch_size']}, {records[0]['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def order_label(record: dict) -> str:
    """The scaling table's order column: ``random``, ``blocked 8x8``, or empty (ALS, LIBMF)."""
    if record.get("grid") is None or record["optimizer"] == "als":
        return ""
    return "random" if record["grid"] == 1 else f"blocked {record['grid']}x{record['grid']}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--sizes", nargs="+", type=int, default=SIZES)
    p.add_argument("--batch-size", type=int, default=8192)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--model", default="bias")
    p.add_argument("--optimizers", nargs="+", default=["adam", "lazy_adam", "adagrad", "als"],
                   help="recsys_jax.engine.build optimizers, each size with each (default: %(default)s)")
    p.add_argument("--val-frac", type=float, default=0.02,
                   help="planted ratings held out and scored after the last epoch (default: %(default)s)")
    p.add_argument("--lr", type=float, default=None,
                   help=f"constant learning rate for every optimizer (default: {DEFAULT_LR:g}, adagrad "
                        f"{LEARNING_RATES['adagrad']:g})")
    p.add_argument("--order", default="auto", choices=["auto", "random", "blocked"],
                   help="the epoch's order of ratings (recsys_jax.engine.epoch.epoch_grid; default: %(default)s)")
    p.add_argument("--libmf-sizes", nargs="*", type=int, default=[5_000_000],
                   help="sizes at which LIBMF (the peers extra) runs too, k=64, 2 threads (default: 5M)")
    add_output_args(p, png=True)
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--child-optimizer", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        if args.child_optimizer == "libmf":
            print(json.dumps(libmf_size(args.child, 64, args.epochs)))
        else:
            print(json.dumps(one_size(args.child, args.batch_size, args.epochs, args.model, args.child_optimizer,
                                      args.val_frac, learning_rate(args.child_optimizer, args.lr), args.order)))
        return 0
    if args.quick:
        args.sizes, args.epochs, args.libmf_sizes = [100_000, 1_000_000], 2, []
    env = environment()
    tag = env["device"].split(":")[0]
    files = resolve_outputs("scaling", f"scaling-{tag}", args, p)
    records = []
    runs = [(n, opt) for n in args.sizes for opt in args.optimizers]
    runs += [(n, "libmf") for n in args.libmf_sizes if n in args.sizes]
    for n, opt in runs:
        cmd = [sys.executable, "-m", "benchmarks.scaling", "--child", str(n), "--child-optimizer", opt,
               "--batch-size", str(args.batch_size), "--epochs", str(args.epochs), "--model", args.model,
               "--val-frac", str(args.val_frac), "--lr", str(learning_rate(opt, args.lr)), "--order", args.order]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        if out.returncode != 0:
            print(f"[scaling] {n} ratings, {opt} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        rec = json.loads(out.stdout.strip().splitlines()[-1])
        rec.update(env)
        records.append(rec)
        print(f"[scaling] {n:>11,d} ratings, {opt:9s}: {rec['seconds_per_epoch']:8.3f} s/epoch, "
              f"{rec['ratings_per_s']:12,.0f} ratings/s, peak RSS {rec['peak_rss_mb']:7.0f} MiB"
              + (f", val RMSE {rec['val_rmse']:.4f}" if rec.get("val_rmse") is not None else ""), flush=True)
    written = [write_json(files.json, records)]
    md = ("### Scaling (synthetic, ML-25M shape at the top)\n\n" + markdown_table(
        ["ratings", "users", "items", "model", "optimizer", "CPU kernels", "order", "lr", "L2", "s/epoch",
         "ratings/s", "compile s",
         f"val RMSE after {args.epochs} epochs", "peak RSS MiB", "device"],
        [[f"{r['num_ratings']:,}", f"{r['num_users']:,}", f"{r['num_items']:,}", r["model"], r["optimizer"],
          r.get("kernels", ""), order_label(r),
          "" if r.get("lr") is None or r["optimizer"] == "als" else f"{r['lr']:g}",
          "" if r.get("l2") is None else f"{r['l2']:g}",
          f"{r['seconds_per_epoch']:.3f}", f"{r['ratings_per_s']:,.0f}",
          "" if r.get("compile_s") is None else f"{r['compile_s']:.2f}",
          "" if r.get("val_rmse") is None else f"{r['val_rmse']:.4f}", f"{r['peak_rss_mb']:.0f}",
          r.get("device", "")] for r in records])
        + f"\n\n{args.model}: batch {args.batch_size}, the lr column's learning rate (constant; AdaGrad's chosen at "
        "the 1M size, `benchmarks.scaling.LEARNING_RATES`), L2 1e-4 on the touched rows "
        "(als: the model's default preset L2, the L2 column, since it solves its objective exactly; no batches or "
        "learning rate; its first epoch also builds its plan, excluded by the median); order: the epoch's order "
        "of ratings, one shuffle of all of them (random) or g x g blocks of users by items visited one at a time "
        "(`recsys_jax.engine.epoch.epoch_grid`, chosen by size); "
        f"{args.epochs} epochs after compiling (compile s, apart), median s/epoch; ratings/s counts the training "
        f"part ({1 - args.val_frac:.0%}); {args.val_frac:.0%} of the planted ratings held out and scored after the "
        "last epoch. LIBMF: the PyPI binding's C++ SGD, k=64, 2 threads, all ratings, its own timer around "
        "training. Device: "
        f"{env['device']} ({env['cpu']}, {env['cpu_count']} cores); jax {env['jax']}; "
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
