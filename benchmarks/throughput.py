"""Throughput benchmark: training ratings/s, prediction pairs/s, compile time, memory.

    python -m benchmarks.throughput            # every model, full grid
    python -m benchmarks.throughput --quick    # bias only, fewer sizes and repeats

For each model in MODELS, on the genuine ml-latest-small ratings (or synthetic data of the
same shape when it is absent):

- training: one epoch of the library's engine (`recsys_jax.engine.build`: shuffle + `lax.scan`
  over the steps, as `fit` runs it) at batch sizes 64, 1024, 8192, 65536, with dense Adam
  for every model and, for the row-local ones in ``--sparse-models`` (bias by default),
  the row-sparse optimizers too (``lazy_adam``, ``adagrad``, ``sgd``); compile time is
  measured separately (`Engine.compile`) and excluded; each timed epoch ends with
  ``block_until_ready``; the median of several epochs is reported as ratings/s;
- models that train themselves (a module with ``fit_epochs``: knn, autorec, bpmf,
  glocalk) have no step or batch size to time: their whole `fit` with the default preset
  on the whole data set is timed instead, after one warm-up fit (which compiles what the
  process caches), the median of ``min(2, --repeats)`` fits, as ratings x epochs per second;
- prediction: `recsys_jax.eval.predict.predict_indices` (validation, fixed-size chunks, blocks
  inside one compiled program) on 1k to 1M random pairs, median of several calls;
- memory: peak RSS of the process (CPU) or the device's peak bytes in use (GPU).

Each training row names the CPU kernels its epoch called (`recsys_jax.engine.kernels`: the fused
SGD, AdaGrad or lazy Adam step, the shuffle's permutation); the rows of those optimizers
are also timed with ``RECSYS_JAX_KERNELS=off`` (kernels "none": XLA's step and shuffle),
in the same run.

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
from recsys_jax.objectives.losses import mse
from recsys_jax.engine.build import RatingObjective, make_engine
from recsys_jax.engine.options import resolve_options
from recsys_jax.models import MODELS, static_config
from recsys_jax.eval.predict import predict_indices
from recsys_jax.training.presets import get_preset
from recsys_jax.engine.sparse import FUSED
from recsys_jax.engine.config import TrainConfig
from recsys_jax.training.fit import fit, prepare_model
from recsys_jax.engine.epoch import group_by_block, num_batches


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


def build(model: str, ratings, batch_size: int, lr: float = 1e-3, optimizer: str = "adam", l2: float = 1e-4,
          bias_l2: float = 0.0, order: str = "auto", options=None):
    """What `fit` builds, through the same engine (`recsys_jax.engine.build.make_engine`):
    ``(engine, state, apply_fn, data, extra)`` with ``data`` the users, items and ratings on
    the device in the order `fit` gives them to the epoch (grouped by block for the blocked
    order, `recsys_jax.engine.epoch.group_by_block`) and ``extra`` the epoch's keyword arguments: the
    model's aux and times, and ``blocks`` for the blocked order. The objective is MSE with L2
    ``l2`` (default 1e-4) on the touched rows, at a constant learning rate. ``options``: the
    engine's (`recsys_jax.engine.options`), resolved as `fit` resolves them when None."""
    module, config, aux, apply_fn, times = prepare_model(model, ratings)
    tc = TrainConfig(epochs=1, batch_size=batch_size, lr=lr, schedule="constant", l2=l2, bias_l2=bias_l2,
                     optimizer=optimizer, order=order)
    engine = make_engine(model, apply_fn, static_config(config), RatingObjective(mse), None, tc,
                         num_batches(len(ratings), batch_size),
                         options=resolve_options() if options is None else options)
    state = engine.init(module.init(jax.random.key(0), ratings.num_users, ratings.num_items, config))
    columns, extra = group_by_block(tc, state.params, ratings, times, lambda: np.random.default_rng(0))
    extra.update(aux=aux, times=None if times is None else jnp.asarray(columns[3]))
    return engine, state, apply_fn, tuple(jnp.asarray(a) for a in columns[:3]), extra


def kernels_in_use(engine, num_ratings: int, extra: dict) -> str:
    """Which CPU kernels (`recsys_jax.engine.kernels`) an engine's epoch over ``num_ratings``
    calls: its step's, and the shuffle's where the epoch draws a Feistel permutation (a
    random order above `recsys_jax.engine.shuffle.SORT_MAX` ratings; not the blocked order, whose
    ``extra`` holds ``blocks``, nor ALS, which has no order); "none" where every part is XLA's."""
    from recsys_jax.engine.shuffle import SORT_MAX

    if not engine.options.kernels:
        return "none"
    shuffles = engine.optimizer != "als" and "blocks" not in extra and num_ratings > SORT_MAX
    parts = [engine.kernel] * bool(engine.kernel) + ["shuffle"] * shuffles
    return " + ".join(parts) or "none"


def bench_train(model: str, ratings, batch_size: int | None, repeats: int, optimizer: str = "adam",
                use_kernels: bool = True) -> list[dict]:
    """One epoch of the engine, timed; ``batch_size`` None for ALS (no batches; its plan is
    built before the timed epochs, reported as ``plan_s``). ``use_kernels=False``: the CPU
    kernels off (XLA's step and shuffle), for comparison."""
    options = resolve_options(kernels=None if use_kernels else False)
    engine, state, _, (users, items, vals), kw = build(model, ratings, batch_size or 1024, optimizer=optimizer,
                                                       options=options)
    n = len(ratings)
    key = jax.random.key(1)
    compiled, compile_s = engine.compile(state, users, items, vals, key, **kw)  # measured apart
    box = [state]

    def run_scan():
        box[0], losses = compiled(box[0], users, items, vals, key, **kw)
        jax.block_until_ready(losses)

    secs = median_time(run_scan, repeats=repeats)
    return [{"bench": "train_throughput", "model": model, "optimizer": optimizer, "path": "scan",
             "batch_size": batch_size, "num_ratings": n, "seconds_per_epoch": secs, "ratings_per_s": n / secs,
             "compile_s": compile_s, "plan_s": getattr(engine, "plan_seconds", None),
             "kernels": kernels_in_use(engine, n, kw)}]


def bench_own_fit(model: str, ratings, repeats: int) -> list[dict]:
    """The whole `fit` of a model that trains itself, default preset, no validation slice,
    after a warm-up fit."""
    tc = get_preset("default", model)

    def run():
        result = fit(model, ratings, None, key=0, train_config=tc, progress=False)
        jax.block_until_ready(result.params)

    secs = median_time(run, repeats=min(2, repeats), warmup=1)
    n = len(ratings)
    return [{"bench": "train_throughput", "model": model, "optimizer": "own (fit_epochs)", "path": "fit",
             "batch_size": None, "num_ratings": n, "epochs": tc.epochs, "seconds_per_epoch": secs / tc.epochs,
             "ratings_per_s": n * tc.epochs / secs, "compile_s": None, "fit_seconds": secs}]


def bench_predict(model: str, ratings, sizes: list[int], repeats: int) -> list[dict]:
    """`recsys_jax.eval.predict.predict_indices` (the library's path: validation, chunks of
    up to 2^20 pairs, blocks of 8,192 inside the compiled program) on random index pairs."""
    _, state, apply_fn, _, extra = build(model, ratings, 1024)
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
             markdown_table(["model", "optimizer", "CPU kernels", "batch", "ratings/s", "s/epoch", "compile s"],
                            [[r["model"], r.get("optimizer", "adam"), r.get("kernels", ""),
                              r["batch_size"] or ("its whole fit" if r.get("path") == "fit"
                                                  else "whole epoch (ALS)"),
                              f"{r['ratings_per_s']:,.0f}",
                              f"{r['seconds_per_epoch']:.4f}",
                              f"{r['compile_s']:.2f}" if r.get("compile_s") is not None else ""]
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
    # rating models (a model that ranks is timed by benchmarks.peers --implementations ranking)
    p.add_argument("--models", nargs="+", default=[m for m, spec in MODELS.items() if not spec.ranks])
    p.add_argument("--sparse-models", nargs="*", default=["bias"],
                   help="also time the row-sparse optimizers for these models (default: bias)")
    p.add_argument("--optimizers", nargs="+", default=["lazy_adam", "adagrad", "sgd", "als"],
                   help="the other optimizers timed for --sparse-models (als: once, it has no batches)")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[64, 1024, 8192, 65536])
    p.add_argument("--predict-sizes", nargs="+", type=int, default=[1_000, 10_000, 100_000, 1_000_000])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--no-xla-rows", action="store_true",
                   help="leave out the rows timed with RECSYS_JAX_KERNELS=off (XLA's step and shuffle)")
    add_output_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.batch_sizes, args.predict_sizes, args.repeats = ["bias"], [1024, 8192], [1_000_000], 3
    env = environment()
    tag = env["device"].split(":")[0]
    files = resolve_outputs("throughput", f"throughput-{tag}", args, p)
    ratings = load_data()
    records = []
    for model in args.models:
        if MODELS[model].fit_epochs is not None:
            for r in bench_own_fit(model, ratings, args.repeats):
                records.append(r)
                print(f"[throughput] {model:5s} its own fit: {r['ratings_per_s']:12,.0f} ratings x epochs/s "
                      f"({r['fit_seconds']:.1f} s a fit)", flush=True)
            for r in bench_predict(model, ratings, args.predict_sizes, args.repeats):
                records.append(r)
                print(f"[throughput] {model:5s} predict batch {r['batch_size']:8d}: {r['pairs_per_s']:14,.0f} pairs/s",
                      flush=True)
            continue
        runs = [(bs, opt, True) for bs in args.batch_sizes
                for opt in ["adam"] + (args.optimizers if model in args.sparse_models else []) if opt != "als"]
        # The steps that have a CPU kernel, with and without it, side by side
        runs += [(bs, opt, False) for bs, opt, _ in list(runs) if opt in FUSED and not args.no_xla_rows]
        if model in args.sparse_models and "als" in args.optimizers:
            runs.append((None, "als", True))
        for bs, opt, use_kernels in runs:
            for r in bench_train(model, ratings, bs, args.repeats, opt, use_kernels):
                records.append(r)
                print(f"[throughput] {model:5s} train {opt:9s} batch {str(bs or '-'):>6s} kernels {r['kernels']:>14s}: "
                      f"{r['ratings_per_s']:12,.0f} ratings/s (compile {r['compile_s']:.2f} s)", flush=True)
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
