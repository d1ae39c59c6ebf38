"""Writes the README's results section from the files in ``benchmarks/results/``.

    python -m benchmarks.report                  # rewrite the section
    python -m benchmarks.report --check          # exit 1 if README or the results are stale

The section between ``<!-- results:start -->`` and ``<!-- results:end -->`` is replaced by
the Markdown that the benchmark scripts wrote (accuracy, throughput, scaling), so the
README's numbers are never typed by hand.

``--check`` writes nothing. It fails (exit 1) when the README's section differs from what
the results produce (the unified diff is printed), or when the published JSON records
(``benchmarks/results/*.json``) name more than one git commit, or a commit ending in
``+dirty`` (the files are listed by commit); ``--allow-mixed-commits`` reports the
commits without failing on them. ``python -m benchmarks.publish`` regenerates every
result from one clean commit.
"""
from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import sys
from collections import defaultdict
from pathlib import Path

if not __package__:  # run as a file (python benchmarks/X.py): make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, RESULTS

README = REPO / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def section(results: Path = RESULTS, readme: Path = README) -> str:
    parts = ["Produced by the scripts in `benchmarks/` (each table names its command, device and "
             "commit); regenerate this section with `python -m benchmarks.report`.\n"]
    for name in ["accuracy-nested.md", "accuracy.md", "peers.md", "losses.md", "time_to_accuracy-cpu.md",
                 "throughput-cpu.md", "scaling-cpu.md", "load-cpu.md", "many-cpu.md", "many-tuned-cpu.md",
                 "throughput-gpu.md", "scaling-gpu.md", "many-gpu.md"]:
        path = Path(results) / name
        if path.is_file():
            text = path.read_text().strip()
            if name == "accuracy-nested.md":
                text = ("### Headline, strictly held out: nested tuning, each split tuned on its own training "
                        "split\n\nEvery number in this table is held out: each split seed's hyperparameters were "
                        "chosen by `benchmarks.tune` on a validation slice of that seed's own training split, and "
                        "its test split was scored once. (The next table, the presets on 5 seeds, is not strictly "
                        "held out for dot, bias and mlp: their `default` preset was chosen on split seed 0's "
                        "training split, which overlaps the test rows of seeds 1-4; the `notebook` rows are the "
                        "course's own settings, chosen on no data here.)\n\n"
                        + text.replace("### ", "Protocol: ", 1))
            if name == "accuracy.md":
                text = "### Presets on 5 seeds (see the caveat above)\n\n" + text.replace("### ", "Protocol: ", 1)
            if name == "losses.md":
                text = "### Losses compared (the bias model, default preset)\n\n" + text.replace("### ", "Protocol: ", 1)
            if name.endswith("-gpu.md"):  # the same tables as the CPU's: say whose they are
                text = re.sub(r"^### ", "### GPU: ", text, flags=re.M)
            parts.append(re.sub(r"^### ", "#### ", text, flags=re.M))
            png = path.with_suffix(".png")
            if png.is_file():
                link = Path(os.path.relpath(png.resolve(), Path(readme).resolve().parent)).as_posix()
                parts.append(f"![{png.stem}]({link})")
    return "\n\n".join(parts)


def render(text: str, results: Path = RESULTS, readme: Path = README) -> str:
    """``text`` (a README) with its results section regenerated from ``results``."""
    if START not in text or END not in text:
        raise ValueError(f"no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{section(results, readme)}\n{END}{tail}"


def commits(results: Path = RESULTS) -> dict[str, list[str]]:
    """The git commit(s) each published JSON file's records name: ``{commit: [file, ...]}``
    (``"none"`` for a file whose records name none)."""
    by = defaultdict(list)
    for path in sorted(Path(results).glob("*.json")):
        records = json.loads(path.read_text())
        records = records if isinstance(records, list) else [records]
        named = {(r.get("git_commit") or r.get("env", {}).get("git_commit") or "none") for r in records} or {"none"}
        for c in sorted(named):
            by[c].append(path.name)
    return dict(by)


def commit_problems(by: dict[str, list[str]]) -> list[str]:
    """Why these results are not one run of one clean commit (empty when they are)."""
    bad = [c for c in by if c == "none" or c.endswith("+dirty")]
    if len(by) <= 1 and not bad:
        return []
    lines = [f"the published results name {len(by)} git commit(s)"
             + (f", {len(bad)} of them not a clean commit ({', '.join(bad)})" if bad else "") + ":"]
    lines += [f"  {c}: {', '.join(files)}" for c, files in sorted(by.items())]
    lines.append("  regenerate them from one clean commit: python -m benchmarks.publish")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n")[5:]))
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 if the README is stale or the results mix commits")
    p.add_argument("--allow-mixed-commits", action="store_true",
                   help="with --check: list the commits the results name, but do not fail on them")
    p.add_argument("--readme", type=Path, default=README, help="default: %(default)s")
    p.add_argument("--results", type=Path, default=RESULTS, help="default: %(default)s")
    args = p.parse_args(argv)
    text = args.readme.read_text()
    try:
        new = render(text, args.results, args.readme)
    except ValueError as e:
        print(f"{args.readme}: {e}", file=sys.stderr)
        return 1
    problems = commit_problems(commits(args.results))
    if not args.check:
        args.readme.write_text(new)
        print(f"[report] rewrote the results section of {args.readme}")
        for line in problems:
            print(f"[report] {line}", file=sys.stderr)
        return 0
    status = 0
    if new != text:
        sys.stdout.writelines(difflib.unified_diff(text.splitlines(keepends=True), new.splitlines(keepends=True),
                                                   f"{args.readme} (now)", f"{args.readme} (from {args.results})"))
        print(f"[report] {args.readme} is stale: run `python -m benchmarks.report`", file=sys.stderr)
        status = 1
    else:
        print(f"[report] {args.readme} matches {args.results}")
    for line in problems:
        print(f"[report] {line}", file=sys.stderr)
    if problems and not args.allow_mixed_commits:
        status = 1
    elif problems:
        print("[report] (--allow-mixed-commits: not a failure)", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
