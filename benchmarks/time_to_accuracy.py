"""Time to accuracy: ``recsys-jax train --model bias`` in a new process, compile included.

    python -m benchmarks.time_to_accuracy            # 5 fresh processes
    python -m benchmarks.time_to_accuracy --quick    # 2

Each run is a new Python process (tracing and compiling anew, except that the CLI's
default persistent compilation cache, `recsys_jax.engine.enable_compile_cache`, lets every
process after the first load the compiled programs; run with
``RECSYS_JAX_COMPILE_CACHE=off`` to time first processes only) running the CLI's default
``train`` on ml-latest-small, random 80/20, split seed 0. Reported: the test RMSE (scored
once, at the end), ``fit_seconds`` (training wall time, compilation included, data
loading excluded: the CLI's own figure), and the wall time of the whole process
(interpreter start, imports, data loading, training, scoring), median over the runs.
Files: ``time_to_accuracy-<device>.{json,md}`` in benchmarks/results/ (full run, clean
commit) or runs/benchmarks/ (the rule in `benchmarks.common`).
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

import numpy as np

from benchmarks.common import (add_output_args, environment, markdown_table, print_written, resolve_outputs,
                               write_json, write_text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--model", default="bias")
    add_output_args(p)
    args = p.parse_args(argv)
    runs = 2 if args.quick else args.runs
    env = environment()
    tag = env["device"].split(":")[0]
    files = resolve_outputs("time_to_accuracy", f"time_to_accuracy-{tag}", args, p)
    cmd = [sys.executable, "-m", "recsys_jax.cli", "train", "--model", args.model, "--seed", "0", "--json", "--no-save"]
    records = []
    for r in range(runs):
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        wall = time.perf_counter() - t0
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return 1
        rec = json.loads(out.stdout.strip().splitlines()[-1])
        records.append({"bench": "time_to_accuracy", "model": args.model, "dataset": rec["dataset"], "run": r,
                        "test_rmse": rec["test_rmse"], "test_mae": rec["test_mae"], "fit_seconds": rec["fit_seconds"],
                        "process_seconds": wall, "epochs": rec["epochs"], **env,
                        "timed_command": "recsys-jax train --model %s --seed 0 --json --no-save" % args.model})
        print(f"[time_to_accuracy] run {r}: test rmse {rec['test_rmse']:.4f}, fit {rec['fit_seconds']:.2f} s, "
              f"process {wall:.2f} s", flush=True)
    json_path = write_json(files.json, records)
    fit_s = np.median([r["fit_seconds"] for r in records])
    proc_s = np.median([r["process_seconds"] for r in records])
    md = (f"### Time to accuracy: `recsys-jax train --model {args.model}` in a new process, persistent "
          f"compilation cache on, the CLI's default ({runs} runs)\n\n"
          + markdown_table(["test RMSE (seed 0)", "fit s, compile included (median)", "whole process s (median)"],
                           [[f"{records[0]['test_rmse']:.4f}", f"{fit_s:.2f}", f"{proc_s:.2f}"]])
          + f"\n\nDevice: {env['device']} ({env['cpu']}, {env['cpu_count']} cores); jax {env['jax']}; "
          f"commit {env['git_commit']}; `{env['command']}`.\n")
    write_text(files.md, md)
    print(md)
    print_written("time_to_accuracy", files, json_path, files.md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
