"""Time to accuracy: ``recsys-jax train --model bias`` in a new process, compile included.

    python -m benchmarks.time_to_accuracy            # 5 fresh processes
    python -m benchmarks.time_to_accuracy --quick    # 2

Each run is a new Python process running the CLI's default ``train`` on ml-latest-small,
random 80/20, split seed 0, with the CLI's default caches (JAX's persistent compilation
cache and the compiled programs of `recsys_jax.engine.programs`, `recsys_jax.engine.programs.enable_compile_cache`)
in a folder of this benchmark's own that starts empty (``--cache-dir`` to give one). So the
first process compiles everything and stores it, and every later one loads it: the two are
reported apart. Reported: the test RMSE (scored once, at the end), ``fit_seconds``
(training wall time, compilation or loading included, data loading excluded: the CLI's own
figure) and ``compile_seconds`` (the part of it spent compiling or loading programs), and
the wall time of the whole process (interpreter start, imports, data loading, training,
scoring); for the later processes, the median over them.
Files: ``time_to_accuracy-<device>.{json,md}`` in benchmarks/results/ (full run, clean
commit) or runs/benchmarks/ (the rule in `benchmarks.common`).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # run as a file (python benchmarks/X.py): make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks.common import (add_output_args, environment, markdown_table, print_written, resolve_outputs,
                               write_json, write_text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--model", default="bias")
    p.add_argument("--cache-dir", help="the caches' folder (default: a new, empty temporary one)")
    add_output_args(p)
    args = p.parse_args(argv)
    runs = 2 if args.quick else args.runs
    if runs < 2:
        p.error("--runs must be >= 2: the first process and at least one later one")
    with tempfile.TemporaryDirectory(prefix="recsys-jax-tta-") as tmp:
        return _run(args, runs, args.cache_dir or tmp, p)


def _run(args, runs: int, cache_dir: str, p) -> int:
    env = environment()
    tag = env["device"].split(":")[0]
    files = resolve_outputs("time_to_accuracy", f"time_to_accuracy-{tag}", args, p)
    cmd = [sys.executable, "-m", "recsys_jax.cli.main", "train", "--model", args.model, "--seed", "0", "--json", "--no-save"]
    records = []
    for r in range(runs):
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
                             env={**os.environ, "RECSYS_JAX_COMPILE_CACHE": str(cache_dir)})
        wall = time.perf_counter() - t0
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return 1
        rec = json.loads(out.stdout.strip().splitlines()[-1])
        records.append({"bench": "time_to_accuracy", "model": args.model, "dataset": rec["dataset"], "run": r,
                        "test_rmse": rec["test_rmse"], "test_mae": rec["test_mae"], "fit_seconds": rec["fit_seconds"],
                        "compile_seconds": rec["compile_seconds"], "process_seconds": wall, "epochs": rec["epochs"],
                        "process": "first" if r == 0 else "later", **env,
                        "timed_command": "recsys-jax train --model %s --seed 0 --json --no-save" % args.model})
        print(f"[time_to_accuracy] run {r}: test rmse {rec['test_rmse']:.4f}, fit {rec['fit_seconds']:.2f} s "
              f"(compile {rec['compile_seconds']:.2f} s), process {wall:.2f} s", flush=True)
    json_path = write_json(files.json, records)
    first, later = records[0], records[1:]

    def row(what, recs):
        return [what, f"{recs[0]['test_rmse']:.4f}", f"{np.median([r['fit_seconds'] for r in recs]):.2f}",
                f"{np.median([r['compile_seconds'] for r in recs]):.2f}",
                f"{np.median([r['process_seconds'] for r in recs]):.2f}"]

    md = (f"### Time to accuracy: `recsys-jax train --model {args.model}` in a new process, the CLI's "
          f"caches on (its default), starting empty\n\n"
          + markdown_table(["process", "test RMSE (seed 0)", "fit s, compile included", "of which compile s",
                            "whole process s"],
                           [row("first (empty caches: compiles and stores)", [first]),
                            row(f"later (loads; median of {len(later)})", later)])
          + f"\n\nDevice: {env['device']} ({env['cpu']}, {env['cpu_count']} cores); jax {env['jax']}; "
          f"commit {env['git_commit']}; `{env['command']}`.\n")
    write_text(files.md, md)
    print(md)
    print_written("time_to_accuracy", files, json_path, files.md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
