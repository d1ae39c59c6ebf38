"""recsys_jax.engine.programs: compiled epochs and inits kept on disk, loaded by a later process
without tracing, with the same results; a bad file is compiled again; unnamed settings
store nothing."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from recsys_jax.engine import programs
from recsys_jax.data.synthetic import make_synthetic
from recsys_jax.engine.build import RatingObjective, make_engine
from recsys_jax.objectives.losses import LOSSES
from recsys_jax.engine.build import init_params
from recsys_jax.models import make_apply, make_config, static_config
from recsys_jax.engine.config import TrainConfig
from recsys_jax.engine.options import resolve_options

ROOT = Path(__file__).resolve().parents[1]

# One fit, in a new process: which programs were loaded or compiled, and a digest of the result.
SCRIPT = r"""
import hashlib, json, sys
import jax, numpy as np
from recsys_jax.engine import programs
from recsys_jax.engine.options import resolve_options
from recsys_jax.data.synthetic import make_synthetic
from recsys_jax.engine.config import TrainConfig
from recsys_jax.training.fit import fit

store = programs.program_store(programs.enable_compile_cache(sys.argv[1]))
if sys.argv[2] == "jax-only":
    store = None
hows = []
compile_ = programs.compile
def spy(*args, **kwargs):
    out = compile_(*args, **kwargs)
    hows.append(out[2])
    return out
programs.compile = spy
ratings, _ = make_synthetic(jax.random.key(0), 80, 60, 2000, embedding_dim=3)
result = fit("bias", ratings, None, key=1, progress=False,
             train_config=TrainConfig(epochs=2, batch_size=256, optimizer="lazy_adam", l2=0.01),
             options=resolve_options(program_store=store))
digest = hashlib.sha256(b"".join(np.asarray(x).tobytes() for x in jax.tree.leaves(result.params))).hexdigest()
print(json.dumps({"hows": hows, "digest": digest, "files": len(list(store.glob("*.program"))) if store else 0}))
"""


def run_script(cache: Path, mode: str) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(cache), mode], capture_output=True, text=True,
                          env=env, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_later_process_loads_the_programs_and_gets_the_same_result(tmp_path):
    cache = tmp_path / "cache"
    # First, JAX's own cache alone holds the programs: an executable it supplies must not be
    # what is saved (it serialises incompletely), so the next process still compiles afresh.
    first = run_script(cache, "jax-only")
    assert first["hows"] == ["compiled"]  # the epoch (the init is compiled op-free, unstored)
    second = run_script(cache, "both")
    assert second["hows"] == ["compiled", "compiled"] and second["files"] == 2  # the init and the epoch
    third = run_script(cache, "both")
    assert third["hows"] == ["loaded", "loaded"]
    assert first["digest"] == second["digest"] == third["digest"]


@pytest.fixture
def store(tmp_path):
    return tmp_path / "programs"


@pytest.fixture(scope="module")
def small():
    ratings, _ = make_synthetic(jax.random.key(3), 40, 30, 500, embedding_dim=3)
    config = make_config("bias", embedding_dim=4)
    tc = TrainConfig(epochs=1, batch_size=128, optimizer="sgd", l2=0.01, schedule="constant")
    return ratings, config, tc


def new_engine(config, tc, loss=LOSSES["mse"], store=None):  # as a new process would build it (no lru cache)
    return make_engine.__wrapped__("bias", make_apply("bias", config), static_config(config), RatingObjective(loss),
                                   None, tc, 4, options=resolve_options(program_store=store))


def epoch_args(ratings, config, store=None):
    params = init_params("bias", jax.random.key(0), ratings.num_users, ratings.num_items, config, store=store)
    return params, tuple(jax.numpy.asarray(a) for a in (ratings.users, ratings.items, ratings.ratings))


def test_a_bad_file_is_compiled_again_and_replaced(store, small, monkeypatch):
    ratings, config, tc = small
    hows = []
    compile_ = programs.compile
    monkeypatch.setattr(programs, "compile", lambda *a, **k: hows.append((out := compile_(*a, **k))[2]) or out)
    params, data = epoch_args(ratings, config, store)
    engine = new_engine(config, tc, store=store)
    state = engine.init(params)
    fn, _ = engine.compile(state, *data, jax.random.key(1))
    want = jax.tree.leaves(fn(state, *data, jax.random.key(1), times=None, aux=None))
    files = sorted(store.glob("*.program"))
    assert len(files) == 2  # the init's and the epoch's
    for f in files:  # bytes flipped in the middle: once run as they were (wrong numbers, SIGILL; item 3)
        data_ = bytearray(f.read_bytes())
        data_[len(data_) // 2: len(data_) // 2 + 16] = bytes(b ^ 0xA5 for b in data_[len(data_) // 2: len(data_) // 2 + 16])
        f.write_bytes(bytes(data_))
    engine = new_engine(config, tc, store=store)
    fn, _ = engine.compile(state, *data, jax.random.key(1))
    assert hows[-1] == "compiled"
    from recsys_jax.data.cachefiles import _check

    # the epoch's, written again and whole; the init's untouched (it ran before, it is not read again)
    assert sum(_check(f.read_bytes(), programs.KIND) is None for f in files) == 1
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o644 for f in files)
    engine = new_engine(config, tc, store=store)
    fn, _ = engine.compile(state, *data, jax.random.key(1))
    assert hows[-2:] == ["compiled", "loaded"]
    got = jax.tree.leaves(fn(state, *data, jax.random.key(1), times=None, aux=None))
    assert all(np.array_equal(a, b) for a, b in zip(want, got))


def test_a_store_others_may_write_is_not_used(tmp_path, small, capsys):
    """Anyone who may write there could put a program of theirs in it (item 2): the program
    is compiled without the store, and a notice says why."""
    from recsys_jax.data import cachefiles

    ratings, config, tc = small
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    params, data = epoch_args(ratings, config)
    engine = new_engine(config, tc, store=shared)
    state = engine.init(params)
    cachefiles._said.clear()
    engine.compile(state, *data, jax.random.key(1))
    assert not list(shared.iterdir())
    assert "not using the program store" in capsys.readouterr().err


def test_settings_without_a_name_store_nothing(store, small):
    ratings, config, tc = small
    engine = new_engine(config, tc, loss=lambda p, r: (p - r) ** 2, store=store)  # a custom loss: no name to key
    assert engine.identity is None
    assert "'bias'" in new_engine(config, tc, store=store).identity
    params, data = epoch_args(ratings, config)
    before = set(store.glob("*.program"))
    engine.compile(engine.init(params), *data, jax.random.key(1))
    assert set(store.glob("*.program")) == before


def test_the_key_follows_the_settings_and_the_arguments():
    x, y = np.zeros(3, np.float32), np.zeros(4, np.float32)
    base = programs.key("a", (x,), {}, {})
    assert base == programs.key("a", (np.ones(3, np.float32),), {}, {})  # values are not part of it
    assert len({base, programs.key("b", (x,), {}, {}), programs.key("a", (y,), {}, {}),
                programs.key("a", (x.astype(np.int32),), {}, {}), programs.key("a", (x,), {"t": x}, {}),
                programs.key("a", (x,), {}, {"num_steps": 2})}) == 6


def test_an_xla_without_the_fresh_compile_option_still_compiles(store, small, monkeypatch):
    """The option that makes XLA compile afresh (programs.FRESH_OPTION) was outside any
    fallback: an XLA that dropped it turned every stored compile into an error. Now the
    program compiles as usual, runs, and nothing is stored; the global setting is put back."""
    ratings, config, tc = small
    monkeypatch.setattr(programs, "FRESH_OPTION", (("xla_no_such_option_for_recsys_jax", 1),))
    bound = jax.config.jax_persistent_cache_min_compile_time_secs
    params, data = epoch_args(ratings, config)
    engine = new_engine(config, tc, store=store)
    state = engine.init(params)
    fn, _ = engine.compile(state, *data, jax.random.key(1))
    new_state, losses = fn(state, *data, jax.random.key(1), times=None, aux=None)
    assert np.all(np.isfinite(np.asarray(losses)))
    assert not list(store.glob("*.program"))
    assert jax.config.jax_persistent_cache_min_compile_time_secs == bound


def _cli(args, env, cwd):
    proc = subprocess.run([sys.executable, "-m", "recsys_jax.cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=600, cwd=cwd)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.slow
def test_bytes_flipped_in_any_cache_file_change_nothing(tmp_path):
    """Issue 25's "done when": set-up builds the kernels; the first train says what it does
    and fills the caches; then the middle of every file under the kernel folder and the
    compilation cache (JAX's entries, the stored programs) is flipped, and the same train
    exits 0 with the identical test RMSE, having said what it replaced; after it, every
    entry verifies again and none is writable by group or others."""
    import pandas as pd

    from recsys_jax.data.cachefiles import _check

    ratings, _ = make_synthetic(jax.random.key(0), 120, 80, 3000, embedding_dim=3)
    csv = tmp_path / "ratings.csv"
    pd.DataFrame({"userId": ratings.users, "movieId": ratings.items, "rating": ratings.ratings,
                  "timestamp": ratings.timestamps}).to_csv(csv, index=False)
    cache, kernel_dir = tmp_path / "cache", tmp_path / "kernels"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT), "RECSYS_JAX_CACHE": str(cache),
           "RECSYS_JAX_KERNEL_CACHE": str(kernel_dir)}
    env.pop("RECSYS_JAX_COMPILE_CACHE", None)  # the CLI's own caches, in this test's folder
    env.pop("RECSYS_JAX_KERNELS", None)
    code, out, err = _cli(["info", "--build-kernels"], env, tmp_path)
    assert code == 0 and "CPU kernels built" in out, err
    train = ["train", "--ratings", str(csv), "--model", "bias", "--epochs", "3", "--json", "--overwrite",
             "--out", str(tmp_path / "ckpt")]
    code, out, err = _cli(train, env, tmp_path)
    assert code == 0, err
    assert "compiling the programs of this run" in err and "building" not in err
    first = json.loads(out.strip().splitlines()[-1])
    files = [p for p in [*cache.rglob("*"), *kernel_dir.rglob("*")] if p.is_file() and p.stat().st_size > 64]
    kinds = {p.suffix for p in files}
    assert {".kernels", ".program", ".xla"} <= kinds, kinds
    for p in files:
        data = bytearray(p.read_bytes())
        mid = len(data) // 2
        data[mid:mid + 16] = bytes(b ^ 0xA5 for b in data[mid:mid + 16])
        p.write_bytes(bytes(data))
    code, out, err = _cli(train, env, tmp_path)
    assert code == 0, err
    assert "damaged" in err and "Traceback" not in err
    again = json.loads(out.strip().splitlines()[-1])
    assert again["test_rmse"] == first["test_rmse"] and again["test_mae"] == first["test_mae"]
    code, out, err = _cli(train, env, tmp_path)
    assert code == 0 and "damaged" not in err and "compiling" not in err, err  # all replaced, all loaded
    assert json.loads(out.strip().splitlines()[-1])["test_rmse"] == first["test_rmse"]
    kinds = {".kernels": "kernels", ".program": "program", ".xla": "xla"}
    for p in [*cache.rglob("*"), *kernel_dir.rglob("*")]:
        assert not p.stat().st_mode & 0o022, p  # nothing group or others may write
        if p.suffix in kinds:
            assert _check(p.read_bytes(), kinds[p.suffix]) is None, p
    assert oct(stat.S_IMODE(kernel_dir.stat().st_mode)) == oct(0o700)
