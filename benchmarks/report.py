"""Writes the README's results section from the files in ``benchmarks/results/``.

    python -m benchmarks.report

The section between ``<!-- results:start -->`` and ``<!-- results:end -->`` is replaced by
the Markdown that the benchmark scripts wrote (accuracy, throughput, scaling), so the
README's numbers are never typed by hand.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from benchmarks.common import RESULTS

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def section() -> str:
    parts = ["Produced by the scripts in `benchmarks/` (each table names its command, device and "
             "commit); regenerate this section with `python -m benchmarks.report`.\n"]
    for name in ["accuracy.md", "accuracy-nested.md", "losses.md", "time_to_accuracy-cpu.md", "throughput-cpu.md", "scaling-cpu.md", "many-cpu.md", "many-tuned-cpu.md",
                 "throughput-gpu.md", "scaling-gpu.md", "many-gpu.md"]:
        path = RESULTS / name
        if path.is_file():
            text = path.read_text().strip()
            if name == "accuracy-nested.md":
                text = ("### Nested tuning: each split tuned on its own training split\n\n"
                        + text.replace("### ", "Protocol: ", 1))
            if name == "losses.md":
                text = "### Losses compared (the bias model, default preset)\n\n" + text.replace("### ", "Protocol: ", 1)
            parts.append(re.sub(r"^### ", "#### ", text, flags=re.M))
            png = path.with_suffix(".png")
            if png.is_file():
                parts.append(f"![{png.stem}](benchmarks/results/{png.name})")
    return "\n\n".join(parts)


def main() -> int:
    text = README.read_text()
    if START not in text or END not in text:
        print(f"{README}: no {START} ... {END} markers", file=sys.stderr)
        return 1
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{START}\n{section()}\n{END}{tail}")
    print(f"[report] rewrote the results section of {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
