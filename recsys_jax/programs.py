"""Compiled programs kept on disk, so that a new process runs them without tracing.

JAX's persistent compilation cache (`recsys_jax.engine.enable_compile_cache`, on in the
CLI) spares a new process XLA's compilation, but not the tracing of the Python function
and its lowering, which it needs to find the cached entry: about 0.3 s for the bias
model's epoch on the 2-core CPU, a third of a whole CLI fit of ml-latest-small. Here the
compiled executable itself is saved (`jax.experimental.serialize_executable`), under a
key made of what fixes the program without tracing it:

- ``identity``: the caller's description of the function, a string that names every
  setting it was built from (model, configs, loss by name). A caller that cannot name
  its settings (a custom loss or penalty function) passes None: nothing is stored;
- the arguments: their tree structure, and each leaf's type (shape, dtype, weak type)
  and placement, plus the static arguments;
- the code and the machine: a digest of this package's sources (the C++ kernels'
  included), the jax, jaxlib and Optax versions, JAX's configuration, ``XLA_FLAGS``,
  whether the CPU kernels are on (`recsys_jax.kernels`), the backend, its devices and the
  CPU's feature flags.

A file that fails to load, for any reason, is compiled anew and written again
(atomically). Off until `enable` is called (the CLI does, beside the compilation cache,
and ``RECSYS_JAX_COMPILE_CACHE=off`` turns both off). Like JAX's own cache, the folder
must be trusted: loading an executable runs its code.
"""
from __future__ import annotations

import functools
import hashlib
import os
import pickle
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import jax

_DIR: list[Path | None] = [None]


def enable(path: str | os.PathLike) -> Path:
    """Stores and loads compiled programs in ``path`` from now on, in this process."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    _DIR[0] = path
    return path


def disable() -> None:
    _DIR[0] = None


def folder() -> Path | None:
    """The folder in use, or None when off."""
    return _DIR[0]


def cpu_flags() -> str:
    """The CPU's feature flags (Linux), or "" where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as fh:
            return next((line for line in fh if line.startswith(("flags", "Features"))), "")
    except OSError:
        return ""


@functools.lru_cache(maxsize=1)
def _code_and_machine() -> str:
    import jaxlib
    import optax

    sources = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for f in sorted([*root.rglob("*.py"), *root.rglob("*.cc")]):
        sources.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    cpu = cpu_flags()
    client = jax.devices()[0].client
    parts = (sources.hexdigest(), jax.__version__, jaxlib.__version__, optax.__version__,
             client.platform, client.platform_version, [str(d) for d in jax.devices()], platform.machine(), cpu)
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def _leaf_signature(x) -> str:
    return f"{jax.typeof(x)}@{getattr(x, 'sharding', None)}"


def key(identity: str, args: tuple, kwargs: dict, static: dict) -> str:
    """The file name of the program ``identity`` compiled for these arguments."""
    leaves, tree = jax.tree.flatten((args, kwargs))
    settings = sorted((k, repr(v)) for k, v in jax.config.values.items())  # read now: a test may change one
    from recsys_jax import kernels

    parts = (identity, str(tree), [_leaf_signature(x) for x in leaves], sorted(static.items()), _code_and_machine(),
             settings, os.environ.get("XLA_FLAGS", ""), kernels.enabled())  # a traced program may call a kernel
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def compile(jitted: Callable, args: tuple, kwargs: dict, identity: str | None, static: dict | None = None
            ) -> tuple[Any, float, str]:
    """``(compiled, seconds, how)``: ``jitted`` compiled for ``args``/``kwargs`` (``static``:
    its static keyword arguments), loaded from the folder when it holds it (``how ==
    "loaded"``), else lowered and compiled (``"compiled"``) and, with an ``identity``,
    saved there."""
    from jax.experimental import serialize_executable

    static = static or {}
    t0 = time.perf_counter()
    path = None
    if _DIR[0] is not None and identity is not None:
        path = _DIR[0] / f"{key(identity, args, kwargs, static)}.bin"
        from recsys_jax import kernels

        kernels.load()  # a stored program may call the CPU kernels: their targets must be registered first
        try:
            with open(path, "rb") as fh:
                blob, in_tree, out_tree = pickle.load(fh)
            return serialize_executable.deserialize_and_load(blob, in_tree, out_tree), time.perf_counter() - t0, "loaded"
        except Exception:  # absent, truncated, from another version: compile it again
            pass
    lowered = jitted.lower(*args, **kwargs, **static)
    if path is None:
        return lowered.compile(), time.perf_counter() - t0, "compiled"
    compiled, fresh = _fresh_compile(lowered)
    seconds = time.perf_counter() - t0
    if fresh:
        try:
            _write(path, pickle.dumps(serialize_executable.serialize(compiled)))
        except Exception:  # a program that cannot be serialised, a full disk: run it all the same
            pass
    return compiled, seconds, "compiled"


_CACHE_HITS = [0]  # JAX's persistent-cache hits so far in this process (jax.monitoring)


def _count_hit(event: str, **_) -> None:
    if event == "/jax/compilation_cache/cache_hits":
        _CACHE_HITS[0] += 1


@functools.lru_cache(maxsize=1)
def _listen() -> None:
    jax.monitoring.register_event_listener(_count_hit)


def _fresh_compile(lowered) -> tuple[Any, bool]:
    """``lowered`` compiled by XLA in this process, and whether it surely was (True).

    An executable that JAX's persistent cache supplied serialises without some of its
    functions (jax 0.10.2, CPU: the copy loaded later fails with "Function ... not found"),
    so what is saved must come from XLA itself. An option that only bounds one of XLA's
    debug listings gives the program another key in JAX's cache, under which
    nothing is ever written (entries are written only for compilations longer than the
    bound set here), so XLA compiles it; the result is kept only if JAX reported no
    cache hit meanwhile. (JAX leaves the dump options out of its key, so the option is
    the bound of a debug listing of buffers, which nothing prints either.)"""
    _listen()
    hits, bound = _CACHE_HITS[0], jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1e9)
    try:
        compiled = lowered.compile(compiler_options={"xla_debug_buffer_assignment_show_max": 7919})
    finally:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", bound)
    return compiled, _CACHE_HITS[0] == hits


def _write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
