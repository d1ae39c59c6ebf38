"""The Python snippets of README and of the documentation's guides run, each alone, in a
fresh process (as a reader would paste them).

Each ```python block of README.md and of docs/guides/*.md is run by itself with
``python -c``: no snippet may lean on names an earlier one defined. (A fragment that is not
a whole program, such as the pieces of a module in the guide to adding a model, is written
with MyST's ``{code-block} python`` directive instead, and is not run.) They read the
genuine ml-latest-small from ``$RECSYS_JAX_DATA`` (or ``../shared/data``) and skip without
it; the cache is a temporary folder and the mirror a closed local port, so nothing is ever
downloaded.
"""
from __future__ import annotations

import ast
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import shared_data_dir

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
GUIDES = sorted((REPO / "docs" / "guides").glob("*.md"))
FENCE = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def snippets(path: Path) -> list[str]:
    return FENCE.findall(path.read_text(encoding="utf-8"))


# (where, code): "README.md #1", "docs/guides/training.md #2", ...
SNIPPETS = [(f"{path.relative_to(REPO).as_posix()} #{i + 1}", code)
            for path in [README, *GUIDES] for i, code in enumerate(snippets(path))]


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_readme_and_guides_have_the_snippets():
    assert snippets(README), "README keeps at least one Python snippet (the quickest one, from Python)"
    assert GUIDES, "docs/guides/ holds the guides"
    assert len(SNIPPETS) >= 6
    assert any("loss_fn=pinball" in code for _, code in SNIPPETS)  # the guide to adding a loss
    assert any("fit_many" in code for _, code in SNIPPETS)  # many models at once
    assert any("fold_in_user" in code for _, code in SNIPPETS)  # using a trained model


@pytest.mark.slow
@pytest.mark.parametrize("where, code", SNIPPETS, ids=[where for where, _ in SNIPPETS])
def test_snippet_runs_alone(where, code, tmp_path):
    data = shared_data_dir()
    if data is None:
        pytest.skip("genuine ml-latest-small not available (set RECSYS_JAX_DATA)")
    env = {**os.environ, "RECSYS_JAX_DATA": str(data), "RECSYS_JAX_CACHE": str(tmp_path / "cache"),
           "RECSYS_JAX_BASE_URL": closed_port_url()}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"snippet {where} failed alone:\n{code}\n{done.stderr[-3000:]}"
    assert not (tmp_path / "cache").exists()  # read from the shared copy, nothing downloaded
    # A printed training history must improve: the last epoch's score beats the first.
    for line in done.stdout.splitlines():
        if line.startswith("["):
            history = ast.literal_eval(line)
            assert history[-1] < history[0], f"snippet {where} prints a history that gets worse: {line}"
    if "loss_fn=pinball" in code:  # the custom loss: its validation MAE falls every epoch
        history = ast.literal_eval(done.stdout.splitlines()[-1])
        assert all(b < a for a, b in zip(history, history[1:])), history
