"""Throughput benchmark: training ratings/s, prediction pairs/s, compile time, memory.

    python -m benchmarks.throughput            # every model, full grid
    python -m benchmarks.throughput --quick    # bias only, fewer sizes and repeats

For each model in MODELS, on the genuine ml-latest-small ratings (or synthetic data of the
same shape when it is absent):

- training: one epoch (shuffle + `lax.scan` over jitted Adam steps) at batch sizes 64,
  1024, 8192, 65536; compile time is measured separately (``jit(...).lower().compile()``)
  and excluded; each timed epoch ends with ``block_until_ready``; the median of several
  epochs is reported as ratings/s;
- the same epoch as a Python loop over the jitted step (data already on the device), so
  the gain of the scan is visible;
- prediction: `recsys_jax.predict.predict_indices` (validation, fixed-size chunks, blocks
  inside one compiled program) on 1k to 1M random pairs, median of several calls;
- memory: peak RSS of the process (CPU) or the device's peak bytes in use (GPU).

Files: ``throughput-<device>.{json,md}`` in benchmarks/results/ for a full run from a clean
commit, else runs/benchmarks/ (the rule in `benchmarks.common`).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if not __package__:  # run as a file (python benchmarks/X.py): make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import (add_output_args, environment, markdown_table, median_time, peak_rss_mb,
                               print_written, resolve_outputs, write_json, write_text)
from recsys_jax.data import DataError, load_movielens, make_synthetic
from recsys_jax.losses import mse
from recsys_jax.models import MODELS
from recsys_jax.optim import make_optimizer
from recsys_jax.penalties import make_l2_penalty
from recsys_jax.predict import predict_indices
from recsys_jax.train import Batch, TrainState, make_train_epoch, make_train_step, num_batches, prepare_model


def load_data(seed: int = 0):
    try:
        return load_movielens("ml-latest-small", download=False)
    except DataError:
        r, _ = make_synthetic(jax.random.key(seed), 610, 9724, 100_836)
        return r


def device_peak_mb() -> float | None:
    stats = jax.devices()[0].memory_stats() if hasattr(jax.devices()[0], "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20
    return None


def build(model: str, ratings, batch_size: int, lr: float = 1e-3):
    """The pieces `fit` builds: (train_step, train_epoch, state, apply_fn, extra) where
    ``extra`` holds the model's aux and times (for `predict_indices` / the epoch)."""
    module, config, aux, apply_fn, train_apply, times = prepare_model(model, ratings)
    optimizer = make_optimizer(lr)
    step = make_train_step(train_apply, mse, optimizer, make_l2_penalty(1e-4))
    params = module.init(jax.random.key(0), ratings.num_users, ratings.num_items, config)
    state = TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))
    return step, make_train_epoch(step, batch_size), state, apply_fn, {"aux": aux, "times": times}


def bench_train(model: str, ratings, batch_size: int, repeats: int, loop: bool) -> list[dict]:
    step, epoch, state, _, extra = build(model, ratings, batch_size)
    users, items, vals = (jnp.asarray(a) for a in (ratings.users, ratings.items, ratings.ratings))
    times = extra["times"]
    n = len(ratings)
    key = jax.random.key(1)
    t0 = time.perf_counter()
    compiled = epoch.lower(state, users, items, vals, key, times=times).compile()
    compile_s = time.perf_counter() - t0
    box = [state]

    def run_scan():
        box[0], losses = compiled(box[0], users, items, vals, key, times=times)
        jax.block_until_ready(losses)

    secs = median_time(run_scan, repeats=repeats)
    out = [{"bench": "train_throughput", "model": model, "path": "scan", "batch_size": batch_size,
            "num_ratings": n, "seconds_per_epoch": secs, "ratings_per_s": n / secs, "compile_s": compile_s}]
    if loop:
        nb = num_batches(n, batch_size)
        order = jnp.concatenate([jax.random.permutation(key, n), jnp.zeros(nb * batch_size - n, jnp.int32)])
        order = order.reshape(nb, batch_size)
        mask = (jnp.arange(nb * batch_size) < n).reshape(nb, batch_size)
        keys = jax.random.split(key, nb)
        batches = [Batch(users[order[b]], items[order[b]], vals[order[b]], mask[b],
                         None if times is None else times[order[b]]) for b in range(nb)]

        def run_loop():
            s = box[0]
            for b in range(nb):
                s, loss = step(s, batches[b], keys[b])
            jax.block_until_ready(loss)
            box[0] = s

        secs_loop = median_time(run_loop, repeats=max(2, repeats // 2))
        out.append({"bench": "train_throughput", "model": model, "path": "python loop", "batch_size": batch_size,
                    "num_ratings": n, "seconds_per_epoch": secs_loop, "ratings_per_s": n / secs_loop})
    return out


def bench_predict(model: str, ratings, sizes: list[int], repeats: int) -> list[dict]:
    """`recsys_jax.predict.predict_indices` (the library's path: validation, chunks of
    up to 2^20 pairs, blocks of 8,192 inside the compiled program) on random index pairs."""
    _, _, state, apply_fn, extra = build(model, ratings, 1024)
    rng = np.random.default_rng(0)
    out = []
    for size in sizes:
        u = rng.integers(0, ratings.num_users, size).astype(np.int32)
        i = rng.integers(0, ratings.num_items, size).astype(np.int32)
        t = np.full(size, 17_000.0, np.float32) if extra["times"] is not None else None  # a day in 2016

        def run():
            return predict_indices(apply_fn, state.params, u, i, aux=extra["aux"], times=t)

        t0 = time.perf_counter()
        run()  # compiles (one program per chunk size)
        compile_s = time.perf_counter() - t0
        secs = median_time(run, repeats=repeats)  # predict_indices returns NumPy: already synchronised
        out.append({"bench": "predict_throughput", "model": model, "batch_size": size, "seconds": secs,
                    "pairs_per_s": size / secs, "first_call_s": compile_s})
    return out


def markdown(records: list[dict], env: dict) -> str:
    train = [r for r in records if r["bench"] == "train_throughput"]
    pred = [r for r in records if r["bench"] == "predict_throughput"]
    parts = ["### Training throughput (ratings/s, one epoch, compile excluded, median)\n",
             markdown_table(["model", "path", "batch", "ratings/s", "s/epoch", "compile s"],
                            [[r["model"], r["path"], r["batch_size"], f"{r['ratings_per_s']:,.0f}",
                              f"{r['seconds_per_epoch']:.4f}", f"{r['compile_s']:.2f}" if "compile_s" in r else ""]
                             for r in train]),
             "\n### Prediction throughput (pairs/s, `predict_indices`, median)\n",
             markdown_table(["model", "batch", "pairs/s", "s/call"],
                            [[r["model"], f"{r['batch_size']:,}", f"{r['pairs_per_s']:,.0f}", f"{r['seconds']:.5f}"]
                             for r in pred]),
             f"\nPeak memory: {records[-1]['peak_rss_mb']:.0f} MiB RSS"
             + (f", {records[-1]['device_peak_mb']:.0f} MiB on the device" if records[-1].get("device_peak_mb") else "")
             + f". Device: {env['device']} ({env['cpu']}, {env['cpu_count']} cores); jax {env['jax']}; "
             f"commit {env['git_commit']}; `{env['command']}`.\n"]
    return "\n".join(parts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[64, 1024, 8192, 65536])
    p.add_argument("--predict-sizes", nargs="+", type=int, default=[1_000, 10_000, 100_000, 1_000_000])
    p.add_argument("--repeats", type=int, default=7)
    add_output_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.batch_sizes, args.predict_sizes, args.repeats = ["bias"], [1024, 8192], [1_000_000], 3
    env = environment()
    tag = env["device"].split(":")[0]
    files = resolve_outputs("throughput", f"throughput-{tag}", args)
    ratings = load_data()
    records = []
    for model in args.models:
        for bs in args.batch_sizes:
            for r in bench_train(model, ratings, bs, args.repeats, loop=bs in (1024, 8192)):
                records.append(r)
                print(f"[throughput] {model:5s} train {r['path']:11s} batch {bs:6d}: {r['ratings_per_s']:12,.0f} ratings/s",
                      flush=True)
        for r in bench_predict(model, ratings, args.predict_sizes, args.repeats):
            records.append(r)
            print(f"[throughput] {model:5s} predict batch {r['batch_size']:8d}: {r['pairs_per_s']:14,.0f} pairs/s", flush=True)
    for r in records:
        r.update(dataset=ratings.name, peak_rss_mb=peak_rss_mb(), device_peak_mb=device_peak_mb(), **env)
    json_path = write_json(files.json, records)
    write_text(files.md, markdown(records, env))
    print(markdown(records, env))
    print_written("throughput", files, json_path, files.md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
