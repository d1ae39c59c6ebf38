"""``recsys-jax info``: versions, devices, the kernels' state, the cache folders with their
sizes, and the ways to prune and clear them (issue 25, items 7 and 9)."""
from __future__ import annotations

import json
import os
import time

from conftest import run_cli

from recsys_jax.data import cachefiles


def _setup(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("RECSYS_JAX_CACHE", str(cache))
    monkeypatch.setenv("RECSYS_JAX_COMPILE_CACHE", str(cache / "jax-compile"))
    programs = cachefiles.private_folder(cache / "jax-compile" / "programs", "test")
    for i, age in enumerate((300, 200, 100)):
        p = cachefiles.write_entry(programs / f"{i}.program", "program", bytes(1000))
        os.utime(p, (time.time() - age,) * 2)
    (cache / "parsed").mkdir()
    (cache / "parsed" / "r.arrays").write_bytes(bytes(500))
    return cache


def test_info_reports_versions_devices_kernels_and_folders(tmp_path, monkeypatch):
    cache = _setup(tmp_path, monkeypatch)
    code, out, err = run_cli(["info", "--json"])
    assert code == 0, err
    info = json.loads(out)
    assert info["versions"]["jax"] and info["versions"]["recsys_jax"] and info["devices"]
    assert info["kernels"]["state"] in ("built", "not built", "failed", "unavailable")
    assert info["kernels"]["folder"] == os.environ["RECSYS_JAX_KERNEL_CACHE"]
    header = 60  # each entry's header
    assert info["folders"]["compile"] == {"folder": str(cache / "jax-compile"), "files": 3,
                                          "bytes": 3 * (1000 + header)}
    assert info["folders"]["parsed"]["files"] == 1 and info["folders"]["root"]["files"] == 4
    code, text, _ = run_cli(["info"])
    assert code == 0 and "kernels" in text and str(cache / "parsed") in text


def test_info_prunes_oldest_first_and_clears(tmp_path, monkeypatch):
    cache = _setup(tmp_path, monkeypatch)
    monkeypatch.setenv("RECSYS_JAX_CACHE_MAX_MB", str(1500 / (1 << 20)))  # room for one entry
    code, out, err = run_cli(["info", "--prune"])
    assert code == 0, err
    assert "2 files" in out.splitlines()[0]
    assert sorted(p.name for p in (cache / "jax-compile" / "programs").iterdir()) == ["2.program"]  # the newest
    code, out, err = run_cli(["info", "--clear", "compile"])
    assert code == 0 and not (cache / "jax-compile").exists() and (cache / "parsed" / "r.arrays").exists()


def test_building_kernels_that_are_switched_off_is_refused(monkeypatch):
    monkeypatch.setenv("RECSYS_JAX_KERNELS", "off")
    code, _, err = run_cli(["info", "--build-kernels"])
    assert code == 2 and "RECSYS_JAX_KERNELS is off" in err and "Traceback" not in err
