"""What every benchmark script shares: the environment record, timing, and output files.

Every figure is written with the device, the library versions, the exact command and the
git commit that produced it, so a number in ``benchmarks/results/`` can be reproduced.

Where the files go (`output_paths`, the one rule every script follows):

- ``--json PATH`` writes the records there, and the Markdown (and the PNG, for scaling)
  beside it with the same stem unless ``--md`` (``--png``) names its own path;
- otherwise a full run from a clean commit writes ``benchmarks/results/<stem>.*`` (the
  published results), and a ``--quick`` run, any run whose git tree is dirty, and any run
  whose arguments are not those ``python -m benchmarks.publish`` gives the script (fewer
  models or seeds, other sizes: it would replace a published table by a part of it) writes
  ``runs/benchmarks/<stem>.*`` (git-ignored); a run sent there says why on stderr.

"Dirty" means a tracked file differs from HEAD outside the files the benchmarks write
themselves (``benchmarks/results/``, ``README.md``), so the steps of
``python -m benchmarks.publish`` all count as runs of the same clean commit.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import functools
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"  # published: full runs from a clean commit only
RUNS = REPO / "runs" / "benchmarks"  # everything else (git-ignored)
GENERATED = ("benchmarks/results", "README.md", "docs/benchmarks/results.md")  # written by the benchmarks: not "dirty"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_state(cwd: str | os.PathLike = REPO) -> tuple[str | None, list[str]]:
    """``(short commit, dirty paths)`` of the checkout at ``cwd``; ``(None, [])`` outside git.

    Dirty paths are tracked files that differ from HEAD, except under `GENERATED`."""
    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=cwd, timeout=10)

    try:
        head = git("rev-parse", "--short", "HEAD")
        if head.returncode != 0:
            return None, []
        status = git("status", "--porcelain", "--untracked-files=no", "--", ".",
                     *(f":(top,exclude){g}" for g in GENERATED))
    except (OSError, subprocess.SubprocessError):
        return None, []
    return head.stdout.strip(), [line[3:] for line in status.stdout.splitlines() if line.strip()]


@functools.lru_cache(maxsize=None)
def _repo_state() -> tuple[str | None, tuple[str, ...]]:
    commit, dirty = git_state()
    return commit, tuple(dirty)


def _git_commit() -> str | None:
    commit, dirty = _repo_state()
    if commit is None:  # a copy without .git (e.g. sent to a GPU machine): the sender names it
        return os.environ.get("RECSYS_JAX_BENCH_COMMIT")
    return commit + ("+dirty" if dirty else "")


def command_line() -> str:
    """The command that started this process, as typed from the repository root:
    ``python -m benchmarks.X ...`` or ``python benchmarks/X.py ...``."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name not in ("__main__", ""):
        head = ["python", "-m", spec.name]
    else:
        script = Path(sys.argv[0]).resolve()
        head = ["python", script.relative_to(REPO).as_posix() if script.is_relative_to(REPO) else sys.argv[0]]
    return " ".join(shlex.quote(a) for a in head + sys.argv[1:])


class Outputs(NamedTuple):
    """Where one run's files go, and why not to `RESULTS` (None when they do, or were named)."""

    json: Path
    md: Path
    png: Path
    reason: str | None


def output_paths(stem: str, *, quick: bool, json: str | os.PathLike | None = None,
                 md: str | os.PathLike | None = None, png: str | os.PathLike | None = None,
                 state: tuple[str | None, list[str] | tuple[str, ...]] | None = None,
                 unpublished: str | None = None) -> Outputs:
    """The rule in this module's docstring. ``state`` is `git_state()` (read once by default);
    ``unpublished`` says how the arguments differ from the published run's (None: they do not)."""
    reason = None
    if json is None:
        commit, dirty = _repo_state() if state is None else state
        if quick:
            reason = "a --quick run"
        elif commit is None:
            reason = "no git commit to record"
        elif dirty:
            shown = ", ".join(list(dirty)[:5]) + (f" and {len(dirty) - 5} more" if len(dirty) > 5 else "")
            reason = f"the git tree is dirty ({shown})"
        elif unpublished:
            reason = unpublished
        json = (RESULTS if reason is None else RUNS) / f"{stem}.json"
    json = Path(json)
    md = Path(md) if md is not None else json.with_suffix(".md")
    png = Path(png) if png is not None else md.with_suffix(".png")
    return Outputs(json, md, png, reason)


def add_output_args(parser: argparse.ArgumentParser, *, md: bool = True, png: bool = False) -> None:
    """``--json`` (and ``--md``, ``--png``) with the rule of `output_paths` as their help."""
    parser.add_argument("--json", metavar="PATH", default=None,
                        help="records (default: benchmarks/results/ for a full run from a clean commit, "
                             "runs/benchmarks/ for --quick or a dirty tree)")
    if md:
        parser.add_argument("--md", metavar="PATH", default=None, help="summary (default: beside the JSON)")
    if png:
        parser.add_argument("--png", metavar="PATH", default=None, help="plot (default: beside the Markdown)")


def resolve_outputs(tag: str, stem: str, args: argparse.Namespace,
                    parser: argparse.ArgumentParser | None = None) -> Outputs:
    """`output_paths` for a script's parsed ``args``; says on stderr when a full run is sent
    to runs/ instead of benchmarks/results/. With the script's ``parser``, a run whose
    arguments are not one of ``benchmarks.publish``'s steps for ``benchmarks.<tag>`` is sent
    to runs/ too (`unpublished_arguments`)."""
    unpublished = None if parser is None else unpublished_arguments(tag, args, parser)
    out = output_paths(stem, quick=getattr(args, "quick", False), json=args.json,
                       md=getattr(args, "md", None), png=getattr(args, "png", None), unpublished=unpublished)
    if out.reason and not getattr(args, "quick", False):
        print(f"[{tag}] writing to {_shown(out.json.parent)}/, not benchmarks/results/: {out.reason}. "
              "Commit, then rerun (or `python -m benchmarks.publish`) to publish.", file=sys.stderr)
    return out


def unpublished_arguments(tag: str, args: argparse.Namespace, parser: argparse.ArgumentParser) -> str | None:
    """None when ``args`` are those of a ``benchmarks.publish`` step that runs ``benchmarks.<tag>``
    (output paths aside); else why the run is not a published one."""
    from benchmarks.publish import STEPS  # publish imports this module: read it when asked

    def settings(ns):
        return {k: v for k, v in vars(ns).items() if k not in ("json", "md", "png")}

    published = [step for _, module, step in STEPS if module == f"benchmarks.{tag}"]
    if any(settings(parser.parse_args(step)) == settings(args) for step in published):
        return None
    shown = " or ".join(f"`{shlex.join(['python', '-m', f'benchmarks.{tag}', *step])}`" for step in published)
    return f"not the published run's arguments ({shown or 'no publish step'})"


def print_written(tag: str, out: Outputs, *paths: Path) -> None:
    """One line per file written; for a full run kept out of benchmarks/results/, why (stderr)."""
    for path in paths:
        print(f"[{tag}] wrote {_shown(path)}", flush=True)
    if out.reason and out.reason != "a --quick run":
        print(f"[{tag}] wrote to {_shown(out.json.parent)}/ instead of benchmarks/results/: {out.reason}",
              file=sys.stderr)


def _shown(path: Path) -> str:
    path = Path(path).resolve()
    return path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else str(path)


def environment() -> dict:
    """Device, versions, machine and command: stored beside every figure."""
    import jax
    import optax

    d = jax.devices()[0]
    return {
        "device": d.platform if getattr(d, "device_kind", d.platform) in ("", d.platform) else f"{d.platform}:{d.device_kind}",
        "num_devices": jax.device_count(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "jaxlib": getattr(jax.lib, "__version__", None) or jax.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "command": command_line(),
        "git_commit": _git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def median_time(fn, *, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs.

    ``fn`` must block until its device work is done (call ``block_until_ready``).
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def write_json(path: str | os.PathLike, records: list[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=1, default=_jsonable) + "\n")
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _jsonable(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, tuple):
        return list(x)
    raise TypeError(f"not JSON serialisable: {type(x)}")


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
