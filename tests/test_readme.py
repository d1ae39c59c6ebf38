"""README's Python snippets run, each alone, in a fresh process (as a reader would paste them).

Each ```python block is run by itself with ``python -c``: no snippet may lean on names an
earlier one defined. They read the genuine ml-latest-small from ``$RECSYS_JAX_DATA`` (or
``../shared/data``) and skip without it; the cache is a temporary folder and the mirror a
closed local port, so nothing is ever downloaded.
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

README = Path(__file__).resolve().parents[1] / "README.md"
SNIPPETS = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_readme_has_the_snippets():
    assert len(SNIPPETS) >= 3
    assert any("loss_fn=pinball" in code for code in SNIPPETS)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_snippet_runs_alone(index, tmp_path):
    data = shared_data_dir()
    if data is None:
        pytest.skip("genuine ml-latest-small not available (set RECSYS_JAX_DATA)")
    env = {**os.environ, "RECSYS_JAX_DATA": str(data), "RECSYS_JAX_CACHE": str(tmp_path / "cache"),
           "RECSYS_JAX_BASE_URL": closed_port_url()}
    code = SNIPPETS[index]
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"README snippet {index + 1} failed alone:\n{code}\n{done.stderr[-3000:]}"
    assert not (tmp_path / "cache").exists()  # read from the shared copy, nothing downloaded
    # A printed training history must improve: the last epoch's score beats the first.
    for line in done.stdout.splitlines():
        if line.startswith("["):
            history = ast.literal_eval(line)
            assert history[-1] < history[0], f"snippet {index + 1} prints a history that gets worse: {line}"
    if "loss_fn=pinball" in code:  # the custom loss: its validation MAE falls every epoch
        history = ast.literal_eval(done.stdout.splitlines()[-1])
        assert all(b < a for a, b in zip(history, history[1:])), history
