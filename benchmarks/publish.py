"""Regenerates every published result from one clean commit, then the tables that show them.

    python -m benchmarks.publish                 # every step below, in order (hours on a CPU)
    python -m benchmarks.publish --dry-run       # print the commands, run nothing
    python -m benchmarks.publish --only many many-tuned

Refuses to start when the git tree is dirty (a tracked file differs from HEAD outside
``benchmarks/results/``, ``README.md`` and ``docs/benchmarks/results.md``, the files the
steps write), and stops when it
becomes dirty or HEAD moves between steps, so every record names the same clean commit.
Each step is a fresh process running a full benchmark with the arguments that produced
the published results; its files go to ``benchmarks/results/`` (the rule in
`benchmarks.common`). ``tune`` runs first because the ``tuned`` preset of the later steps
reads the ``benchmarks/results/tuned.json`` it writes. ``peers`` (Keras 3, Surprise, implicit and myFM on
the same splits) is a step only where the ``peers`` extra is installed. Last, ``benchmarks.report``
rewrites the README's headline and the docs' results page, and ``benchmarks.report --check``
confirms that both agree with the results and name one commit.
"""
from __future__ import annotations

import argparse
import importlib.util
import shlex
import subprocess
import sys
from pathlib import Path

if not __package__:  # run as a file (python benchmarks/X.py): make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, git_state


def peers_installed() -> bool:
    """Whether the ``peers`` extra (Keras, Surprise, implicit, myFM) is importable: only then is
    ``peers`` a step."""
    return all(importlib.util.find_spec(name) is not None for name in ("keras", "surprise", "implicit", "myfm"))


TUNED_MODELS = ["--models", "fm", "bias", "timesvd", "bpmf", "--seeds", "0", "1", "2", "3", "4"]
# (name, module, arguments), in the order they must run.
STEPS = [
    ("tune", "benchmarks.tune", TUNED_MODELS),
    ("accuracy", "benchmarks.accuracy", ["--datasets", "ml-latest-small", "--presets", "default", "notebook"]),
    *([("peers", "benchmarks.peers", [])] if peers_installed() else []),
    ("accuracy-nested", "benchmarks.accuracy", ["--datasets", "ml-latest-small", "--presets", "tuned", *TUNED_MODELS,
                                                "--json", "benchmarks/results/accuracy-nested.json"]),
    ("losses", "benchmarks.accuracy", ["--datasets", "ml-latest-small", "--models", "bias", "--presets", "default",
                                       "--losses", "mse", "mae", "huber", "pseudo_huber", "log_cosh", "gaussian_nll",
                                       "ordinal", "--json", "benchmarks/results/losses.json"]),
    ("time_to_accuracy", "benchmarks.time_to_accuracy", []),
    ("load", "benchmarks.load", []),
    ("throughput", "benchmarks.throughput", []),
    ("scaling", "benchmarks.scaling", []),
    ("many", "benchmarks.many", []),
    ("many-tuned", "benchmarks.many", ["--preset", "tuned"]),
    ("travel", "benchmarks.travel", []),
]
REPORT = [("report", "benchmarks.report", []), ("report --check", "benchmarks.report", ["--check"])]


def commands(only: list[str] | None = None) -> list[tuple[str, list[str]]]:
    """``(name, argv)`` for the chosen steps (all by default), in order, then the report."""
    chosen = [s for s in STEPS if only is None or s[0] in only]
    return [(name, ["python", "-m", module, *args]) for name, module, args in chosen + REPORT]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n")[5:]))
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--only", nargs="+", metavar="NAME", choices=[s[0] for s in STEPS],
                   help="run only these steps (the report still runs): " + ", ".join(s[0] for s in STEPS))
    args = p.parse_args(argv)
    steps = commands(args.only)
    commit, dirty = git_state()
    refusal = ("not a git checkout" if commit is None else
               f"the git tree is dirty ({', '.join(dirty)}): commit or stash first" if dirty else None)
    if args.dry_run:
        for _, cmd in steps:
            print(shlex.join(cmd))
        if refusal:
            print(f"[publish] a real run would refuse: {refusal}", file=sys.stderr)
        return 0
    if refusal:
        print(f"[publish] refusing: {refusal}", file=sys.stderr)
        return 1
    print(f"[publish] commit {commit}: {len(steps)} steps", flush=True)
    for name, cmd in steps:
        now, dirty = git_state()
        if now != commit or dirty:
            print(f"[publish] stopped before {name}: HEAD is {now} (started at {commit})"
                  + (f", dirty: {', '.join(dirty)}" if dirty else ""), file=sys.stderr)
            return 1
        print(f"[publish] {name}: {shlex.join(cmd)}", flush=True)
        rc = subprocess.run([sys.executable, *cmd[1:]], cwd=REPO).returncode
        if rc != 0:
            print(f"[publish] {name} failed (exit {rc}); rerun the rest with --only", file=sys.stderr)
            return rc
    print(f"[publish] done: benchmarks/results/, README.md and docs/benchmarks/results.md regenerated at {commit}; "
          "review and commit them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
