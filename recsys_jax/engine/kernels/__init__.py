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
`ials_cg.cc` takes iALS's conjugate-gradient steps row by row (`recsys_jax.models.ials`,
``solver="cg"``), each row's positives read from the cache between steps, where XLA
gathers them into padded chunks and scatters the sums back. `bfm_gibbs.cc` takes the
Bayesian factorization machine's draws (`recsys_jax.models.bfm`): a relational block's
features one after another, each a few operations per entry, where XLA's loop pays a
dispatch per feature, and a one-hot group's all at once, in two passes over the ratings
where XLA scatters.

**Where they are built.** The kernels are C++ source shipped with the package, built for
the machine that runs them (``-O3 -march=native``) with its C++ compiler (``$CXX``, split
like a shell command, so ``CXX="ccache g++"`` works; else ``g++`` or ``c++``) against the FFI
headers of the jaxlib installed (`jax.ffi.include_dir`). They are built once per
environment, at set-up (``recsys-jax info --build-kernels``, which README's set-up command
runs), or else at the first fit that wants them (a notice says so; about 10 s on two
cores). Not at install time: a wheel cannot be built with ``-march=native`` for the
machine that will run it, the library must match the jaxlib that loads it (a build
environment's jaxlib may differ), and where no compiler exists the engine needs the XLA
path anyway. The library is kept in `build_dir`: ``$RECSYS_JAX_KERNEL_CACHE`` where set,
else ``<virtual environment>/share/recsys_jax/kernels`` (the library belongs to the
environment's jaxlib), else ``<cache>/kernels`` (``<cache>``: ``$RECSYS_JAX_CACHE`` or
``~/.cache/recsys_jax``), as ``recsys_kernels-<digest>.kernels``; the digest covers the
sources, the compiler and its version, the flags, jaxlib's version and the CPU's flags.

**Trust.** The folder must be private (`recsys_jax.data.cachefiles.private_folder`); the
library is stored as an entry with a header and a SHA-256 checksum, verified before it is
loaded, and loaded from that verified copy in memory (``memfd``), never from a path that
could change in between. A damaged library is removed and built again. Two processes never
build at once (a lock in the folder), and a failed build is recorded beside it
(``.failed``): later processes do not retry it until the compiler, the sources or jaxlib
change, or ``recsys-jax info --build-kernels`` asks again.

**Unavailable.** Where there is no compiler, the build fails, the folder is refused or the
backend is not the CPU, `load` returns None (`why_not` says why, and a one-line notice
says it once on the CPU) and the engine uses the XLA step: the same results to float
rounding, slower. Whether the engine calls them is an option,
`recsys_jax.engine.options.EngineOptions.kernels`, resolved once where a fit starts (on
unless ``RECSYS_JAX_KERNELS=off``, and only where they load).
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from recsys_jax.data import cachefiles

SOURCES = ("mf_sgd.cc", "shuffle.cc", "ials_cg.cc", "bfm_gibbs.cc")
HEADERS = ("spin.h",)  # included by the sources: in the digest too
# FFI target name -> exported symbol
TARGETS = {"recsys_mf_sgd_step": "RecsysMfSgdStep", "recsys_feistel_permutation": "RecsysFeistelPermutation",
           "recsys_blocked_permutation": "RecsysBlockedPermutation", "recsys_ials_cg": "RecsysIalsCg",
           "recsys_bfm_block": "RecsysBfmBlock",
           "recsys_bfm_onehot": "RecsysBfmOnehot"}
# -fno-math-errno: sqrt in a loop vectorises (with errno it calls sqrtf element by element)
COMPILE_FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fopenmp-simd", "-std=c++17", "-fPIC", "-pthread", "-w")
LINK_FLAGS = ("-shared", "-pthread")
KIND = "kernels"  # the entry's kind (recsys_jax.data.cachefiles)
WHAT = "CPU kernel library"
HOW_TO = "`recsys-jax info` says more; RECSYS_JAX_KERNELS=off silences this"

_lock = threading.Lock()
_why_not: list[str] = []
_keep_open: list[int] = []  # the memfds the loaded libraries came from


def requested() -> bool:
    """Whether ``$RECSYS_JAX_KERNELS`` asks for the kernels (it does unless it is off, 0,
    false or no). Read only where options are resolved
    (`recsys_jax.engine.options.resolve_options`), never while tracing."""
    return os.environ.get("RECSYS_JAX_KERNELS", "").strip().lower() not in ("off", "0", "false", "no")


def compiler() -> list[str] | None:
    """The C++ compiler's command: ``$CXX`` split like a shell command (``ccache g++``),
    else ``g++`` or ``c++`` on the path; None where there is none."""
    if os.environ.get("CXX", "").strip():
        return shlex.split(os.environ["CXX"])
    found = shutil.which("g++") or shutil.which("c++")
    return [found] if found else None


def build_dir() -> Path:
    """``$RECSYS_JAX_KERNEL_CACHE``, else ``<virtual environment>/share/recsys_jax/kernels``
    in a virtual environment of this user's, else ``<cache>/kernels``."""
    from recsys_jax.data.cache import cache_root

    if os.environ.get("RECSYS_JAX_KERNEL_CACHE"):
        return Path(os.environ["RECSYS_JAX_KERNEL_CACHE"]).expanduser()
    if sys.prefix != sys.base_prefix:
        try:
            if os.stat(sys.prefix).st_uid == (os.getuid() if hasattr(os, "getuid") else None):
                return Path(sys.prefix) / "share" / "recsys_jax" / "kernels"
        except OSError:
            pass
    return cache_root() / "kernels"


@functools.lru_cache(maxsize=8)
def _digest(cxx: tuple[str, ...]) -> str:
    import jaxlib

    here = Path(__file__).resolve().parent
    try:
        version = subprocess.run([*cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    except OSError as error:
        raise RuntimeError(f"the C++ compiler {shlex.join(cxx)!r} cannot be run: {error}") from None
    parts = [(name, (here / name).read_bytes()) for name in SOURCES + HEADERS]
    parts += [cxx, version, jaxlib.__version__, COMPILE_FLAGS, LINK_FLAGS, cpu_flags(), platform.machine()]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:24]


def _paths(folder: Path, cxx: list[str]) -> tuple[Path, Path]:
    stem = f"recsys_kernels-{_digest(tuple(cxx))}"
    return folder / f"{stem}.kernels", folder / f"{stem}.failed"


@contextlib.contextmanager
def _build_lock(folder: Path):
    """Holds ``folder/build.lock`` (exclusive; POSIX): one build at a time, across processes."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    fd = os.open(folder / "build.lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def build(folder: str | os.PathLike | None = None, *, retry: bool = False) -> Path:
    """The built library's entry (building it now unless ``folder``, default `build_dir`,
    already holds it). Raises RuntimeError, naming the compiler and its message, when it
    cannot be built, or when a build with the same digest failed before (``retry=True``
    tries again)."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (install g++, or set CXX)")
    where = folder if folder is not None else build_dir()
    folder = cachefiles.private_folder(where, "kernel folder")
    if folder is None:
        raise RuntimeError(f"the kernel folder {Path(where).expanduser()} is refused (see the notice above)")
    target, failed = _paths(folder, cxx)
    with _build_lock(folder):
        if target.exists():
            return target
        if failed.exists() and not retry:
            said = cachefiles.read_entry(failed, "failed", "record of a failed kernel build")
            if said is not None:
                raise RuntimeError(f"{said.decode(errors='replace')} (an earlier build; "
                                   "`recsys-jax info --build-kernels` tries again)")
        cachefiles.remove_leftovers(folder)
        cachefiles.notice(f"building the CPU kernels for this machine into {folder} (once per environment, "
                          "about 10 s; `recsys-jax info --build-kernels` does it at set-up)")
        try:
            library = _compile(cxx, folder)
        except RuntimeError as error:
            cachefiles.write_entry(failed, "failed", str(error).encode())
            raise
        cachefiles.write_entry(target, KIND, library, mode=0o644)
        failed.unlink(missing_ok=True)
    return target


def _compile(cxx: list[str], folder: Path) -> bytes:
    """The shared library's bytes: the sources compiled side by side, then linked, in a
    temporary folder inside ``folder`` (removed after; a killed build's is removed by a
    later one, `recsys_jax.data.cachefiles.remove_leftovers`)."""
    import jax

    here = Path(__file__).resolve().parent
    work = Path(tempfile.mkdtemp(dir=folder, prefix=cachefiles.TMP_PREFIX + "build-"))
    name = shlex.join(cxx)
    try:
        include = f"-I{jax.ffi.include_dir()}"
        objects = [work / f"{Path(s).stem}.o" for s in SOURCES]
        try:
            running = [subprocess.Popen([*cxx, *COMPILE_FLAGS, include, "-c", str(here / s), "-o", str(o)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                       for s, o in zip(SOURCES, objects)]
            errors = [p.communicate(timeout=300)[1] for p in running]
            codes = [p.returncode for p in running]
            if all(c == 0 for c in codes):
                link = subprocess.run([*cxx, *LINK_FLAGS, *map(str, objects), "-o", str(work / "lib.so")],
                                      capture_output=True, text=True, timeout=300)
                codes, errors = [link.returncode], [link.stderr]
        except (OSError, subprocess.SubprocessError) as error:
            raise RuntimeError(f"building the CPU kernels with {name} failed: {error}") from None
        if any(c != 0 for c in codes):
            message = "\n".join(e.strip() for e, c in zip(errors, codes) if c != 0)[-2000:]
            raise RuntimeError(f"building the CPU kernels with {name} failed:\n{message}")
        return (work / "lib.so").read_bytes()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _dlopen(payload: bytes, folder: Path) -> ctypes.CDLL:
    """The library from its verified bytes: through an anonymous in-memory file where the
    system has them (Linux), so what is loaded is what was checked; else from a private
    temporary file, removed once loaded."""
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create("recsys_kernels", 0)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
            library = ctypes.CDLL(f"/proc/self/fd/{fd}")
        except BaseException:
            os.close(fd)
            raise
        _keep_open.append(fd)
        return library
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=cachefiles.TMP_PREFIX, suffix=".so")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        return ctypes.CDLL(tmp)
    finally:
        os.unlink(tmp)


@functools.lru_cache(maxsize=1)
def _load() -> ctypes.CDLL | None:
    import jax

    try:
        path = build()
        payload = cachefiles.read_entry(path, KIND, WHAT)
        if payload is None:  # damaged (removed, said so) or refused: build it again
            payload = cachefiles.read_entry(build(), KIND, WHAT)
            if payload is None:
                raise RuntimeError(f"the {WHAT} in {path.parent} cannot be verified (see the notice above)")
        library = _dlopen(payload, path.parent)
        for name, symbol in TARGETS.items():
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
        return library
    except (RuntimeError, OSError, subprocess.SubprocessError, AttributeError) as error:
        _why_not.append(str(error).splitlines()[0])
        cachefiles.notice(f"the CPU kernels are unavailable ({_why_not[-1]}); training uses XLA's step instead "
                          f"(the same results to float rounding, slower). {HOW_TO}")
        return None


def load() -> ctypes.CDLL | None:
    """The kernels, built if need be, verified, loaded and registered with XLA on first
    use; None where they cannot be used (`why_not` says why): no compiler, a failed build,
    a refused folder, or another backend than the CPU. Whether to use them is an option
    (`recsys_jax.engine.options.EngineOptions`)."""
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


def status() -> dict:
    """What `recsys-jax info` shows, without building or loading anything: whether the
    kernels are asked for, the compiler, the folder, and the state of the library there
    (``built``, ``not built``, ``failed`` with the compiler's message, or ``unavailable``
    with why)."""
    import jax

    out = {"requested": requested(), "backend": jax.default_backend(), "folder": str(build_dir())}
    cxx = compiler()
    out["compiler"] = shlex.join(cxx) if cxx else None
    if cxx is None:
        return {**out, "state": "unavailable", "why": "no C++ compiler found (install g++, or set CXX)"}
    try:
        target, failed = _paths(Path(out["folder"]), cxx)
    except RuntimeError as error:
        return {**out, "state": "unavailable", "why": str(error)}
    out["library"] = str(target)
    if target.exists():
        return {**out, "state": "built", "bytes": target.stat().st_size}
    if failed.exists():
        said = cachefiles.read_entry(failed, "failed", "record of a failed kernel build")
        return {**out, "state": "failed", "why": (said or b"").decode(errors="replace").strip()}
    return {**out, "state": "not built"}


def cpu_flags() -> str:
    """The CPU's feature flags (Linux), or "" where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as fh:
            return next((line for line in fh if line.startswith(("flags", "Features"))), "")
    except OSError:
        return ""
