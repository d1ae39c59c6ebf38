"""Hand-written CPU kernels for the hottest step and the epoch's shuffle, called from
compiled JAX programs.

XLA's CPU backend writes every intermediate of the row-sparse SGD step to memory and reads
it back (gathered rows, residuals, gradient rows, scatters: about 1.6 MB each at batch
8192); `mf_sgd.cc` does the same step in two passes over the batch, on both cores. It is an
`XLA FFI <https://docs.jax.dev/en/latest/ffi.html>`_ custom call, so the epoch stays one
compiled program (a `jax.lax.scan` whose body calls it), and it computes what the XLA step
computes (tested against it to float rounding): plain SGD, row-wise AdaGrad or lazy Adam
for the ``bias`` and ``dot`` models, squared error, L2 on the touched rows
(`recsys_jax.engine.build.make_engine` decides where it applies;
`recsys_jax.engine.sparse.make_fused_update` calls it). `shuffle.cc` computes
`recsys_jax.engine.shuffle.feistel_permutation` bit for bit in one sequential pass, where XLA
needs a prefix sum and a scatter over :math:`2^m` elements, and the blocked order's
`recsys_jax.engine.shuffle.blocked_permutation`, where XLA searches for each position's block.

The kernel is C++ source shipped with the package and built on first use with the
machine's C++ compiler (``$CXX``, else ``g++`` or ``c++``) against the FFI headers that
jaxlib ships (`jax.ffi.include_dir`), with ``-O3 -march=native -fno-math-errno``, into
``<cache>/kernels/<digest>.so`` (``$RECSYS_JAX_KERNEL_CACHE`` instead of that folder
where set; ``<cache>``: ``$RECSYS_JAX_CACHE`` or ``~/.cache/recsys_jax``; the digest
covers the source, the compiler's version, jaxlib's version and the CPU's flags). Later processes load the built file. Where there is no
compiler, the build fails or the backend is not the CPU, `load` returns None and the engine
uses the XLA step: the same results, slower. Whether the engine calls them is an option,
`recsys_jax.engine.options.EngineOptions.kernels`, resolved once where a fit starts (on
unless ``RECSYS_JAX_KERNELS=off``, and only where they load).
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

SOURCES = ("mf_sgd.cc", "shuffle.cc")
# FFI target name -> exported symbol
TARGETS = {"recsys_mf_sgd_step": "RecsysMfSgdStep", "recsys_feistel_permutation": "RecsysFeistelPermutation",
           "recsys_blocked_permutation": "RecsysBlockedPermutation"}
# -fno-math-errno: sqrt in a loop vectorises (with errno it calls sqrtf element by element)
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fopenmp-simd", "-std=c++17", "-shared", "-fPIC", "-pthread",
         "-w")

_lock = threading.Lock()
_why_not: list[str] = []


def requested() -> bool:
    """Whether ``$RECSYS_JAX_KERNELS`` asks for the kernels (it does unless it is off, 0,
    false or no). Read only where options are resolved
    (`recsys_jax.engine.options.resolve_options`), never while tracing."""
    return os.environ.get("RECSYS_JAX_KERNELS", "").strip().lower() not in ("off", "0", "false", "no")


def compiler() -> str | None:
    """The C++ compiler to build with: ``$CXX``, else ``g++`` or ``c++`` on the path."""
    if os.environ.get("CXX"):
        return os.environ["CXX"]
    return shutil.which("g++") or shutil.which("c++")


def build_dir() -> Path:
    """``$RECSYS_JAX_KERNEL_CACHE``, else ``<cache>/kernels``."""
    from recsys_jax.data.cache import cache_root

    if os.environ.get("RECSYS_JAX_KERNEL_CACHE"):
        return Path(os.environ["RECSYS_JAX_KERNEL_CACHE"]).expanduser()
    return cache_root() / "kernels"


def _digest(cxx: str) -> str:
    import jaxlib


    here = Path(__file__).resolve().parent
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    parts = [(name, (here / name).read_bytes()) for name in SOURCES]
    parts += [cxx, version, jaxlib.__version__, FLAGS, cpu_flags()]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:24]


def build(folder: str | os.PathLike | None = None) -> Path:
    """The built library (building it now unless ``folder`` already holds it): raises
    RuntimeError, naming the compiler and its message, when it cannot be built."""
    import jax

    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX, or install g++)")
    folder = Path(folder) if folder is not None else build_dir()
    target = folder / f"recsys_kernels-{_digest(cxx)}.so"
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    here = Path(__file__).resolve().parent
    fd, partial = tempfile.mkstemp(dir=folder, suffix=".so.partial")
    os.close(fd)
    try:
        command = [cxx, *FLAGS, f"-I{jax.ffi.include_dir()}", *(str(here / s) for s in SOURCES), "-o", partial]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"building the CPU kernels with {cxx} failed:\n{done.stderr.strip()[-2000:]}")
        # readable by all (another user sharing the cache loads it instead of finding a file
        # it cannot open and running without the kernels), writable by the owner only
        os.chmod(partial, 0o755)
        os.replace(partial, target)  # atomic: another process never loads half a file
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


@functools.lru_cache(maxsize=1)
def _load() -> ctypes.CDLL | None:
    import jax

    try:
        library = ctypes.CDLL(str(build()))
        for name, symbol in TARGETS.items():
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
        return library
    except (RuntimeError, OSError, subprocess.SubprocessError, AttributeError) as error:
        _why_not.append(str(error))
        return None


def load() -> ctypes.CDLL | None:
    """The kernels, built and registered with XLA on first use; None where they cannot be
    used (`why_not` says why): no compiler, a failed build, or another backend than the
    CPU. Whether to use them is an option (`recsys_jax.engine.options.EngineOptions`)."""
    import jax

    if jax.default_backend() != "cpu":
        return None
    with _lock:
        return _load()


def why_not() -> str | None:
    """Why `load` returned None, or None."""
    import jax

    if jax.default_backend() != "cpu":
        return f"the kernels are for the CPU, and the backend is {jax.default_backend()!r}"
    return _why_not[-1] if _why_not else None


def cpu_flags() -> str:
    """The CPU's feature flags (Linux), or "" where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as fh:
            return next((line for line in fh if line.startswith(("flags", "Features"))), "")
    except OSError:
        return ""
