"""How the CPU kernels are built, kept and refused (recsys_jax.engine.kernels; issue 25, items 2,
5 and 7), with a stand-in compiler so that these run everywhere, with or without g++: a failed
build says why and is not retried by every process, two builds at once compile once,
``CXX`` is split like a shell command, what a killed build left is removed, a folder that
cannot be trusted is refused, and the x86-only pause is guarded."""
from __future__ import annotations

import os
import re
import shlex
import sys
import threading
import time
from pathlib import Path

import pytest

from recsys_jax.data import cachefiles
from recsys_jax.engine import kernels

FAKE = r"""
import os, sys, time
args = sys.argv[1:]
with open(os.environ["FAKE_CXX_LOG"], "a") as fh:
    fh.write(" ".join(args) + "\n")
if args == ["--version"]:
    print("fakecxx 1.0")
    sys.exit(0)
if os.environ.get("FAKE_CXX_FAIL"):
    print("fakecxx: error: no luck today", file=sys.stderr)
    sys.exit(1)
time.sleep(float(os.environ.get("FAKE_CXX_SLEEP", "0")))
out = args[args.index("-o") + 1]
with open(out, "wb") as fh:
    fh.write(b"compiled by fakecxx: " + " ".join(a for a in args if a.endswith((".cc", ".o"))).encode())
"""


@pytest.fixture
def fake_cxx(tmp_path, monkeypatch):
    """``CXX`` set to a stand-in compiler (python running a script: two words, as
    ``ccache g++`` is); returns the log of its calls."""
    script = tmp_path / "fakecxx.py"
    script.write_text(FAKE)
    log = tmp_path / "calls.log"
    log.write_text("")
    monkeypatch.setenv("CXX", f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}")
    monkeypatch.setenv("FAKE_CXX_LOG", str(log))
    monkeypatch.setattr(cachefiles, "_said", set())
    return log


def _compiles(log: Path) -> int:
    return sum(" -c " in f" {line} " for line in log.read_text().splitlines())


def test_cxx_is_split_like_a_shell_command(fake_cxx, tmp_path):
    path = kernels.build(tmp_path / "k")
    assert _compiles(fake_cxx) == len(kernels.SOURCES)  # each source on its own, then one link
    payload = cachefiles.read_entry(path, kernels.KIND, "test library")
    assert payload.startswith(b"compiled by fakecxx: ") and payload.count(b".o") == len(kernels.SOURCES)
    assert kernels.build(tmp_path / "k") == path and _compiles(fake_cxx) == len(kernels.SOURCES)  # kept


def test_a_failed_build_names_the_compiler(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", "false")
    with pytest.raises(RuntimeError, match="false"):
        kernels.build(tmp_path)
    assert not list(tmp_path.glob("*.kernels"))  # nothing half-written is left to load
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(cachefiles.TMP_PREFIX)]


def test_a_failed_build_is_said_once_and_not_retried(fake_cxx, tmp_path, monkeypatch, capsys):
    """It was retried by every process (10-17 s each, silently); now the failure is kept
    beside the library's name until the compiler, the sources or jaxlib change, or a build
    is asked for again."""
    monkeypatch.setenv("FAKE_CXX_FAIL", "1")
    with pytest.raises(RuntimeError, match="no luck today"):
        kernels.build(tmp_path)
    tried = _compiles(fake_cxx)
    assert tried >= 1
    with pytest.raises(RuntimeError, match="an earlier build.*--build-kernels"):
        kernels.build(tmp_path)
    assert _compiles(fake_cxx) == tried  # not tried again
    assert kernels.status()["state"] == "not built"  # another folder: the default one is untouched
    monkeypatch.setenv("RECSYS_JAX_KERNEL_CACHE", str(tmp_path))
    state = kernels.status()
    assert state["state"] == "failed" and "no luck today" in state["why"]
    monkeypatch.delenv("FAKE_CXX_FAIL")
    path = kernels.build(tmp_path, retry=True)  # `recsys-jax info --build-kernels`
    assert _compiles(fake_cxx) == tried + len(kernels.SOURCES) and path.exists()
    assert kernels.status()["state"] == "built"
    err = capsys.readouterr().err
    assert err.count("building the CPU kernels") == 1  # once per process


def test_two_builds_at_once_compile_once(fake_cxx, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_CXX_SLEEP", "0.5")
    paths, errors = [], []

    def build():
        try:
            paths.append(kernels.build(tmp_path))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(paths)) == 1
    assert _compiles(fake_cxx) == len(kernels.SOURCES)


def test_a_build_removes_what_a_killed_build_left(fake_cxx, tmp_path):
    folder = cachefiles.private_folder(tmp_path / "k", "test folder")
    stale = folder / f"{cachefiles.TMP_PREFIX}build-killed"
    stale.mkdir()
    (stale / "mf_sgd.o").write_bytes(b"half")
    old = time.time() - 2 * cachefiles.STALE_SECONDS
    os.utime(stale, (old, old))
    kernels.build(folder)
    assert not stale.exists()


@pytest.mark.parametrize("mode", [0o770, 0o757])
def test_a_folder_others_may_write_is_refused(fake_cxx, tmp_path, mode, capsys):
    """Anyone who may write there could put a library of theirs in it (item 2); the kernels
    are then off, and a notice says why (item 7)."""
    folder = tmp_path / "shared"
    folder.mkdir()
    os.chmod(folder, mode)
    with pytest.raises(RuntimeError, match="refused"):
        kernels.build(folder)
    assert _compiles(fake_cxx) == 0 and not list(folder.iterdir())
    assert "group or others may write" in capsys.readouterr().err


def test_the_x86_only_pause_is_guarded():
    """``__builtin_ia32_pause`` exists on x86 only: an aarch64 build must not see it."""
    for name in kernels.SOURCES + kernels.HEADERS:
        text = (Path(kernels.__file__).parent / name).read_text()
        for match in re.finditer(r"__builtin_ia32_\w+", text):
            before = text[:match.start()]
            assert before.rfind("#if defined(__x86_64__)") > before.rfind("#endif"), (name, match.group())
