"""The project's own cache files that a later process runs: the CPU kernels' library
(`recsys_jax.engine.kernels`) and the stored compiled programs (`recsys_jax.engine.programs`).
Loading either runs its code, so each is trusted only as far as this module checks it.

* **Private folders.** `private_folder` creates a cache folder with mode 0700. A folder that
  exists is used only if this user owns it and neither group nor others may write to it;
  otherwise the caller is told why (one notice on stderr) and does the work without it.
* **Entries with a header.** `write_entry` writes ``magic, format version, kind, payload
  length, SHA-256 of the payload`` before the payload, to a temporary file in the same
  folder that is renamed into place (a reader sees a whole entry or none), with mode 0644
  (owner writes; nobody else). `read_entry` opens the file without following a link,
  checks its owner and mode on the open file, then the header and the checksum: a file of
  someone else's, or one that group or others may write, is refused; a damaged one
  (flipped bytes, cut short, another format or kind) is removed and reported, and the
  caller compiles or builds anew, so damage changes time, never results.
* **Growth.** `prune` keeps a set of folders under a size cap (``$RECSYS_JAX_CACHE_MAX_MB``,
  default `DEFAULT_CAP_MB`), removing the least recently used files first (a stored
  program is touched each time it is loaded), and removes what killed processes left
  behind (temporary files and build folders older than `STALE_SECONDS`).
* **Said once.** `notice` prints a line to stderr once per process and message
  (``$RECSYS_JAX_QUIET=1`` silences it).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

FORMAT_VERSION = 1
MAGIC = b"RSJXENT\0"
_HEADER = struct.Struct("<8sI8sQ32s")  # magic, format version, kind, payload length, SHA-256 of the payload
TMP_PREFIX = ".tmp-"  # temporary files and folders; those older than STALE_SECONDS are left by killed processes
STALE_SECONDS = 3600
DEFAULT_CAP_MB = 2048
FILE_MODE = 0o644

_said: set[str] = set()
_said_lock = threading.Lock()


def notice(message: str, key: str | None = None) -> None:
    """``message`` on stderr as one line, once per process and ``key`` (default: the message
    itself); ``$RECSYS_JAX_QUIET=1``: never."""
    key = message if key is None else key
    with _said_lock:
        if key in _said:
            return
        _said.add(key)
    if os.environ.get("RECSYS_JAX_QUIET", "").strip().lower() not in ("", "0", "off", "false", "no"):
        return
    print(f"recsys_jax: {message}", file=sys.stderr, flush=True)


def _owner() -> int | None:
    return os.getuid() if hasattr(os, "getuid") else None


def why_untrusted(st: os.stat_result, *, check_mode: bool = True) -> str | None:
    """Why a file or folder with this ``stat`` must not be trusted, or None: owned by
    another user, or (``check_mode``) writable by group or others."""
    me = _owner()
    if me is not None and st.st_uid != me:
        return f"it is owned by user {st.st_uid}, not by this user ({me})"
    if check_mode and st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"group or others may write to it (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def private_folder(path: str | os.PathLike, what: str) -> Path | None:
    """``path``, created with mode 0700 if absent, or None (with a notice naming ``what``
    and why) where it cannot be trusted: not a folder, a link, owned by another user, or
    writable by group or others."""
    path = Path(path).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        st = os.lstat(path)
    except OSError as error:
        notice(f"not using the {what} {path}: {error}")
        return None
    if not stat.S_ISDIR(st.st_mode):
        why = "it is not a folder (a link or a file)"
    else:
        why = why_untrusted(st)
    if why is not None:
        notice(f"not using the {what} {path}: {why}; the work is done without it "
               f"(fix: chmod go-w, or point the setting at a folder of your own)")
        return None
    return path


def _kind(kind: str) -> bytes:
    raw = kind.encode()
    if len(raw) > 8:
        raise ValueError(f"kind {kind!r} is longer than 8 bytes")
    return raw.ljust(8, b"\0")


def write_entry(path: str | os.PathLike, kind: str, payload: bytes, mode: int = FILE_MODE) -> Path:
    """Writes ``payload`` with its header to ``path`` atomically, with ``mode``."""
    path = Path(path)
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, _kind(kind), len(payload), hashlib.sha256(payload).digest())
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX)
    try:
        os.fchmod(fd, mode & ~(stat.S_IWGRP | stat.S_IWOTH))
        with os.fdopen(fd, "wb") as fh:
            fh.write(header)
            fh.write(payload)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_entry(path: str | os.PathLike, kind: str, what: str) -> bytes | None:
    """The payload of the entry at ``path``, verified; None where there is none, where it
    is refused (not this user's, writable by group or others, a link: a notice says so) or
    damaged (removed, with a notice). ``what`` names the entry in the notices."""
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as error:  # a link (ELOOP), no permission
        notice(f"not loading the {what} {path}: {error}")
        return None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        why = why_untrusted(st) if stat.S_ISREG(st.st_mode) else "it is not a regular file"
        if why is not None:
            notice(f"not loading the {what} {path}: {why}")
            return None
        data = fh.read()
    problem = _check(data, kind)
    if problem is None:
        return data[_HEADER.size:]
    # said once per folder: a damaged folder would otherwise give a line per entry
    notice(f"the {what} {path} is damaged ({problem}): removed, and made anew (any other damaged one "
           f"in that folder too)", key=f"damaged {what} {path.parent}")
    try:
        path.unlink()
    except OSError:
        pass
    return None


def _check(data: bytes, kind: str) -> str | None:
    if len(data) < _HEADER.size:
        return "shorter than its header"
    magic, version, got_kind, length, digest = _HEADER.unpack_from(data)
    if magic != MAGIC:
        return "not an entry of recsys_jax"
    if version != FORMAT_VERSION:
        return f"format version {version}, expected {FORMAT_VERSION}"
    if got_kind != _kind(kind):
        return f"kind {got_kind.rstrip(bytes(1)).decode(errors='replace')!r}, expected {kind!r}"
    if len(data) - _HEADER.size != length:
        return f"{len(data) - _HEADER.size} bytes of payload, the header says {length}"
    if hashlib.sha256(memoryview(data)[_HEADER.size:]).digest() != digest:
        return "its checksum does not match"
    return None


def touch(path: str | os.PathLike) -> None:
    """Marks ``path`` as used now (what `prune` evicts last)."""
    try:
        os.utime(path)
    except OSError:
        pass


def cap_bytes() -> int:
    """The caches' size cap: ``$RECSYS_JAX_CACHE_MAX_MB`` (MiB), default `DEFAULT_CAP_MB`."""
    raw = os.environ.get("RECSYS_JAX_CACHE_MAX_MB", "").strip()
    if not raw:
        return DEFAULT_CAP_MB << 20
    try:
        mb = float(raw)
    except ValueError:
        raise ValueError(f"RECSYS_JAX_CACHE_MAX_MB must be a number of MiB, got {raw!r}") from None
    if mb < 0:
        raise ValueError(f"RECSYS_JAX_CACHE_MAX_MB must be >= 0, got {raw!r}")
    return int(mb * (1 << 20))


def usage(folder: str | os.PathLike) -> tuple[int, int]:
    """``(files, bytes)`` under ``folder`` (0, 0 where it does not exist)."""
    files = size = 0
    for _, st in _files(Path(folder)):
        files += 1
        size += st.st_size
    return files, size


def _files(folder: Path):
    for root, _dirs, names in os.walk(folder):
        for name in names:
            p = Path(root) / name
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                yield p, st


def remove_leftovers(folder: str | os.PathLike, older_than: float = STALE_SECONDS) -> int:
    """Removes temporary files and folders (named ``.tmp-*``) under ``folder`` that are older
    than ``older_than`` seconds: what processes killed while writing left. Returns how many."""
    now, removed = time.time(), 0
    for root, dirs, names in os.walk(folder):
        for name in [*names, *dirs]:
            if not name.startswith(TMP_PREFIX):
                continue
            p = Path(root) / name
            try:
                if now - os.lstat(p).st_mtime < older_than:
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
                removed += 1
            except OSError:
                pass
        dirs[:] = [d for d in dirs if not d.startswith(TMP_PREFIX)]
    return removed


def prune(folders, cap: int | None = None) -> tuple[int, int]:
    """Keeps the files under ``folders`` within ``cap`` bytes (default `cap_bytes`) together,
    removing the least recently used first (last use: the later of access and modification
    times), after removing killed processes' leftovers. Lock files are kept. Returns
    ``(files removed, bytes freed)``."""
    cap = cap_bytes() if cap is None else cap
    entries, total = [], 0
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        remove_leftovers(folder)
        for p, st in _files(folder):
            if p.name.endswith(".lock") or p.name == ".lockfile":
                continue
            entries.append((max(st.st_atime, st.st_mtime), p, st.st_size))
            total += st.st_size
    removed = freed = 0
    for _, p, size in sorted(entries):
        if total <= cap:
            break
        try:
            p.unlink()
        except OSError:
            continue
        total -= size
        removed += 1
        freed += size
    return removed, freed


def clear(folder: str | os.PathLike) -> tuple[int, int]:
    """Removes ``folder`` and everything in it; ``(files, bytes)`` it held."""
    folder = Path(folder)
    held = usage(folder)
    if folder.is_symlink():
        folder.unlink()
    elif folder.exists():
        shutil.rmtree(folder)
    return held
