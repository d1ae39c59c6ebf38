"""Compiled programs kept on disk, so that a new process runs them without tracing.

JAX's persistent compilation cache (`recsys_jax.engine.programs.enable_compile_cache`, on in the
CLI) spares a new process XLA's compilation, but not the tracing of the Python function
and its lowering, which it needs to find the cached entry: for the bias model's epoch a
sizeable part of a whole CLI fit of ml-latest-small (`benchmarks.time_to_accuracy` times
such fits in new processes; see its table in the benchmark results). Here the
compiled executable itself is saved (`jax.experimental.serialize_executable`), under a
key made of what fixes the program without tracing it:

- ``identity``: the caller's description of the function, a string that names every
  setting it was built from (model, configs, loss by name). A caller that cannot name
  its settings (a custom loss or penalty function) passes None: nothing is stored;
- the arguments: their tree structure, and each leaf's type (shape, dtype, weak type)
  and placement, plus the static arguments;
- the code and the machine: a digest of this package's sources (the C++ kernels'
  included), the jax, jaxlib and Optax versions, JAX's configuration, ``XLA_FLAGS``, the
  backend, its devices and the CPU's feature flags. (Whether the program calls the CPU
  kernels is part of its identity: `recsys_jax.engine.build.make_engine` names it.)

Each program is an entry of `recsys_jax.data.cachefiles`: a header with a format version
and a SHA-256 checksum, verified before anything is unpickled, written atomically with
mode 0644 into a folder of mode 0700 that this user owns (a folder or file that is not
this user's, or that group or others may write, is refused with a notice, and the
program is compiled without the store). A damaged file is removed, compiled anew and
written again; one that verifies but fails to load, for any reason, is compiled anew too.
Loading a program touches its file, so that `prune_caches` (a size cap, the least recently
used first; ``recsys-jax info --prune``) keeps the programs in use. The store is an option,
`recsys_jax.engine.options.EngineOptions.program_store` (None: off), which the CLI sets to
the ``programs`` folder of its compilation cache (``RECSYS_JAX_COMPILE_CACHE=off`` turns
both off). JAX's own cache entries are compressed with a checksum (zlib's Adler-32, and
a damaged one is never replaced), so `enable_compile_cache` stores them as entries of
`recsys_jax.data.cachefiles` too; its folder must be this user's and private.
"""
from __future__ import annotations

import functools
import hashlib
import os
import pickle
import platform
import threading
import time
from pathlib import Path
from typing import Any, Callable

import jax

from recsys_jax.data import cachefiles
from recsys_jax.engine.kernels import cpu_flags
from recsys_jax.engine.kernels import load as load_kernels

KIND = "program"  # the entries' kind (recsys_jax.data.cachefiles)
SUFFIX = ".program"


@functools.lru_cache(maxsize=1)
def _code_and_machine() -> str:
    import jaxlib
    import optax

    sources = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]  # the whole package: recsys_jax/
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
    parts = (identity, str(tree), [_leaf_signature(x) for x in leaves], sorted(static.items()), _code_and_machine(),
             settings, os.environ.get("XLA_FLAGS", ""))
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def compile(jitted: Callable, args: tuple, kwargs: dict, identity: str | None, static: dict | None = None, *,
            store: str | os.PathLike | None = None, kernels: bool = False) -> tuple[Any, float, str]:
    """``(compiled, seconds, how)``: ``jitted`` compiled for ``args``/``kwargs`` (``static``:
    its static keyword arguments), loaded from the folder ``store`` when it holds it (``how
    == "loaded"``), else lowered and compiled (``"compiled"``) and, with an ``identity``,
    saved there. ``kernels``: the program may call the CPU kernels, whose targets are
    registered before a stored one is loaded."""
    from jax.experimental import serialize_executable

    static = static or {}
    t0 = time.perf_counter()
    path = None
    folder = cachefiles.private_folder(store, "program store") if store is not None and identity is not None else None
    if folder is not None:
        path = folder / f"{key(identity, args, kwargs, static)}{SUFFIX}"
        if kernels:  # a stored program may call the CPU kernels: their targets must be registered first
            load_kernels()
        payload = cachefiles.read_entry(path, KIND, "stored program")
        if payload is not None:
            try:
                blob, in_tree, out_tree = pickle.loads(payload)
                loaded = serialize_executable.deserialize_and_load(blob, in_tree, out_tree)
                cachefiles.touch(path)
                return loaded, time.perf_counter() - t0, "loaded"
            except Exception:  # verified, yet from another jaxlib or machine: compile it again
                pass
        cachefiles.notice(f"compiling the programs of this run; later runs load them from {folder}")
    lowered = jitted.lower(*args, **kwargs, **static)
    if path is None:
        return lowered.compile(), time.perf_counter() - t0, "compiled"
    compiled, fresh = _fresh_compile(lowered)
    seconds = time.perf_counter() - t0
    if fresh:
        try:
            cachefiles.write_entry(path, KIND, pickle.dumps(serialize_executable.serialize(compiled)))
        except Exception:  # a program that cannot be serialised, a full disk: run it all the same
            pass
    return compiled, seconds, "compiled"


_CACHE_HITS = [0]  # JAX's persistent-cache hits so far in this process (jax.monitoring)
_SETTING_LOCK = threading.Lock()  # _fresh_compile changes a global JAX setting for a moment
# An option of XLA's that changes no program (see _fresh_compile)
FRESH_OPTION = (("xla_debug_buffer_assignment_show_max", 7919),)


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
    the bound of a debug listing of buffers, which nothing prints either.) An XLA that does
    not know the option compiles the program as usual, and it is not stored (False). The
    global setting is changed under a lock and put back, whatever happens."""
    _listen()
    with _SETTING_LOCK:
        hits, bound = _CACHE_HITS[0], jax.config.jax_persistent_cache_min_compile_time_secs
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1e9)
        try:
            compiled = lowered.compile(compiler_options=dict(FRESH_OPTION))
        except Exception:  # an XLA without the option: an ordinary compilation, not stored
            compiled, hits = None, None
        finally:
            jax.config.update("jax_persistent_cache_min_compile_time_secs", bound)
    if compiled is None:
        return lowered.compile(), False
    return compiled, _CACHE_HITS[0] == hits


def compile_cache_dir() -> Path | None:
    """Where the CLI keeps JAX's persistent compilation cache: ``$RECSYS_JAX_COMPILE_CACHE``,
    else ``<cache>/jax-compile`` with ``<cache>`` = ``$RECSYS_JAX_CACHE`` or ``~/.cache/recsys_jax``;
    None where ``$RECSYS_JAX_COMPILE_CACHE`` is ``off``."""
    if os.environ.get("RECSYS_JAX_COMPILE_CACHE") == "off":
        return None
    if os.environ.get("RECSYS_JAX_COMPILE_CACHE"):
        return Path(os.environ["RECSYS_JAX_COMPILE_CACHE"]).expanduser()
    from recsys_jax.data.cache import cache_root

    return cache_root() / "jax-compile"


def enable_compile_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Turns on JAX's persistent compilation cache in ``path`` (default `compile_cache_dir`)
    and returns the folder: a later process with the same programs loads them instead of
    compiling. Every program is cached, however quick its compilation. Its ``programs``
    subfolder (`program_store`) is where the CLI keeps the compiled epochs and inits
    themselves, so that a later process loads those without tracing them: pass it as
    ``resolve_options(program_store=...)`` (`recsys_jax.engine.options`).

    The folder is created with mode 0700. One that is not this user's, that group or
    others may write, or that holds a file of another user's is refused: a notice says
    why, nothing is turned on, and None is returned."""
    where = Path(path) if path is not None else compile_cache_dir()
    if where is None:  # RECSYS_JAX_COMPILE_CACHE=off
        return None
    folder = cachefiles.private_folder(where, "compilation cache")
    if folder is None:
        return None
    for entry in os.scandir(folder):
        why = cachefiles.why_untrusted(entry.stat(follow_symlinks=False), check_mode=False)
        if why is not None:
            cachefiles.notice(f"not using the compilation cache {folder}: {entry.name} in it is not this user's "
                              f"({why}); the work is done without it")
            return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    _use_verified_entries(folder)
    return folder


class _VerifiedEntries:
    """JAX's persistent cache with this module's entries (`recsys_jax.data.cachefiles`): a
    header and a checksum, atomic writes, damaged entries removed (and so written again by
    the next compilation), each touched when used. JAX's own entries rely on zlib's
    Adler-32 alone, and a damaged one is never replaced: every later process warns and
    compiles it again."""

    KIND, SUFFIX = "xla", ".xla"

    def __init__(self, folder: Path):
        self._path = folder

    def get(self, key: str) -> bytes | None:
        path = self._path / f"{key}{self.SUFFIX}"
        payload = cachefiles.read_entry(path, self.KIND, "compilation cache entry")
        if payload is not None:
            cachefiles.touch(path)
        return payload

    def put(self, key: str, value: bytes) -> None:
        path = self._path / f"{key}{self.SUFFIX}"
        if not path.exists():
            try:
                cachefiles.write_entry(path, self.KIND, value)
            except OSError:  # a full disk: the program runs all the same
                pass


def _use_verified_entries(folder: Path) -> bool:
    """Puts `_VerifiedEntries` in the place of JAX's file cache (through JAX's internal
    module, as its own ``VerificationCache`` is put there); where that module differs (another
    JAX), JAX's own cache stays, and False is returned."""
    try:
        from jax._src import compilation_cache as cc

        with cc._cache_initialized_mutex:
            cc._cache = _VerifiedEntries(folder)
            cc._cache_initialized = True
        return True
    except (ImportError, AttributeError):
        return False


def program_store(cache_path: str | os.PathLike) -> Path:
    """The store of compiled programs that goes with the compilation cache ``cache_path``."""
    return Path(cache_path) / "programs"


def prune_caches(cap: int | None = None) -> tuple[int, int]:
    """Keeps the CLI's compilation cache (JAX's entries and the program store together)
    within ``cap`` bytes (default `recsys_jax.data.cachefiles.cap_bytes`), the least
    recently used files first; ``(files removed, bytes freed)``."""
    folder = compile_cache_dir()
    return (0, 0) if folder is None else cachefiles.prune([folder], cap)
