"""A binary cache of parsed ratings files, so that a large file is parsed once.

Contract:

* An entry holds the arrays that `load_ratings` built from one file with one set of
  options (the contiguous indices, ratings, timestamps and id maps) in one file
  ``<cache>/parsed/<file name>-<digest>.arrays``; ``<digest>`` hashes the file's absolute
  path and the options, ``<cache>`` is the ``cache_dir`` argument, else
  ``$RECSYS_JAX_CACHE``, else ``~/.cache/recsys_jax`` (the download cache's root).
* The entry records the source's size, modification time (ns) and inode and the
  `FORMAT_VERSION`; any difference (the file was touched, edited or replaced) means a miss,
  and the file is parsed again and the entry overwritten.
* The folder is created with mode 0700 and entries are written 0644; an entry or folder
  that is not this user's, or that group or others may write, is not read (a notice says
  so: anyone who may write there could change the ratings it returns), and a folder like
  that is not written to (`recsys_jax.data.cachefiles`).
* An entry is written to a temporary file in the same folder and renamed into place, so a
  reader sees a whole entry or none. It is not fsync'ed: after a crash a half-written file
  fails the checks below like any damaged one.
* Every read checks the magic bytes, the header's CRC-32, the file's exact length, every
  array's dtype, shape and CRC-32; any failure is a miss (never an exception, never wrong
  data), and the caller parses the source again.
* The arrays are mapped copy-on-write from the entry (``mmap`` with ``ACCESS_COPY``): no
  second copy in memory, and writing to one changes neither the entry nor other loads.
  Entries are only ever replaced, never changed in place, so a mapping stays valid; an
  entry cut short by hand while a process has it mapped would crash that process (SIGBUS).
* `enabled`: ``cache=False`` turns the cache off, ``cache=True`` on; ``None`` (the default)
  uses it for files of at least `MIN_BYTES` unless ``$RECSYS_JAX_PARSE_CACHE`` is ``0``,
  ``off``, ``false`` or ``no``. Small files parse faster than an entry is checked.
* An entry takes 20 bytes a rating (int32 user and item, float32 rating, int64
  timestamp): 0.64 GB for 32M ratings. Entries of files since deleted stay until
  ``<cache>/parsed/`` is removed; removing it at any time is safe.
"""
from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
import tempfile
import warnings
import zlib
from pathlib import Path

import numpy as np

import recsys_jax.data.cachefiles as cachefiles

FORMAT_VERSION = 1  # bump when the layout or the meaning of an entry changes
MIN_BYTES = 16 << 20  # default: files below 16 MiB (ml-latest-small 2.4 MB, ml-100k 2 MB; they
# parse in a fraction of a second) are not cached; ml-1m (24 MB) and larger are
ENV_SWITCH = "RECSYS_JAX_PARSE_CACHE"
_OFF = ("0", "off", "false", "no")
_MAGIC = b"RSJXARR\0"
_PREAMBLE = struct.Struct("<8sQI4x")  # magic, header length, header CRC-32, padding
_ALIGN = 64


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$RECSYS_JAX_CACHE``, else ``~/.cache/recsys_jax``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("RECSYS_JAX_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "recsys_jax"


def enabled(cache: bool | None, size: int) -> bool:
    """Whether a source of ``size`` bytes goes through the cache; see the module docstring."""
    if cache is not None:
        if not isinstance(cache, bool):
            raise ValueError(f"cache must be True, False or None, got {cache!r}")
        return cache
    if os.environ.get(ENV_SWITCH, "").strip().lower() in _OFF:
        return False
    return size >= MIN_BYTES


def stamp(path: Path) -> dict:
    """What identifies one version of a file: absolute path, size, mtime (ns), inode."""
    st = os.stat(path)
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "inode": st.st_ino}


def entry_path(source: Path, options: dict, cache_dir: str | os.PathLike | None = None) -> Path:
    """The entry for ``source`` read with ``options`` (JSON-serialisable)."""
    key = json.dumps({"path": str(source.resolve()), "options": options}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return cache_root(cache_dir) / "parsed" / f"{source.name}-{digest}.arrays"


def read(entry: Path, source_stamp: dict, options: dict) -> tuple[dict[str, np.ndarray], dict] | None:
    """``(arrays, meta)`` of a valid entry for this version of the source, else None."""
    try:
        with open(entry, "rb") as fh:
            st = os.fstat(fh.fileno())
            why = cachefiles.why_untrusted(st) or cachefiles.why_untrusted(os.stat(entry.parent))
            if why is not None:
                cachefiles.notice(f"not using the parsed-ratings cache entry {entry}: {why}")
                return None
            size = st.st_size
            magic, header_len, header_crc = _PREAMBLE.unpack(fh.read(_PREAMBLE.size))
            if magic != _MAGIC or header_len > size:
                return None
            raw = fh.read(header_len)
            if len(raw) != header_len or zlib.crc32(raw) != header_crc:
                return None
            header = json.loads(raw)
            if (header.get("version") != FORMAT_VERSION or header.get("stamp") != source_stamp
                    or header.get("options") != options or header.get("total") != size):
                return None
            mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
        arrays = {}
        for spec in header["arrays"]:
            dtype = np.dtype(spec["dtype"])
            count = int(np.prod(spec["shape"], dtype=np.int64))
            if spec["offset"] + count * dtype.itemsize > size:
                return None
            array = np.frombuffer(mapped, dtype, count, spec["offset"]).reshape(spec["shape"])
            if zlib.crc32(array) != spec["crc32"]:
                return None
            arrays[spec["name"]] = array
        return arrays, header["meta"]
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        # OSError: no entry, unreadable; the rest: a damaged header (json's errors are ValueErrors)
        return None


def write(entry: Path, source_stamp: dict, options: dict, arrays: dict[str, np.ndarray], meta: dict) -> bool:
    """Writes an entry atomically; False (with a warning) when it cannot be written."""
    specs, offset = [], 0
    for name, array in arrays.items():
        array = np.ascontiguousarray(array)
        arrays[name] = array
        specs.append({"name": name, "dtype": array.dtype.str, "shape": list(array.shape),
                      "offset": offset, "crc32": zlib.crc32(array)})
        offset += _aligned(array.nbytes)
    def header_bytes(start: int) -> bytes:
        header = {"version": FORMAT_VERSION, "stamp": source_stamp, "options": options, "meta": meta,
                  "arrays": [{**s, "offset": s["offset"] + start} for s in specs],
                  "total": start + offset}
        return json.dumps(header, sort_keys=True).encode()

    # The data starts after the header, whose length depends on the offsets' digits: leave
    # room for the digits that adding the start may give them.
    start = _aligned(_PREAMBLE.size + len(header_bytes(0)) + 16 * (len(specs) + 1))
    raw = header_bytes(start)
    assert _PREAMBLE.size + len(raw) <= start
    raw = raw.ljust(start - _PREAMBLE.size)  # spaces after the JSON keep it valid
    tmp = None
    try:
        entry.parent.parent.mkdir(parents=True, exist_ok=True)  # fails (and warns, below) where it is a file
        if cachefiles.private_folder(entry.parent, "parsed-ratings cache") is None:
            return False  # refused, and said why
        fd, tmp = tempfile.mkstemp(prefix=f"{cachefiles.TMP_PREFIX}{entry.name}.", suffix=".tmp", dir=entry.parent)
        os.fchmod(fd, cachefiles.FILE_MODE)
        with os.fdopen(fd, "wb") as out:
            out.write(_PREAMBLE.pack(_MAGIC, len(raw), zlib.crc32(raw)))
            out.write(raw)
            for array in arrays.values():
                out.write(memoryview(array).cast("B"))
                out.write(b"\0" * (_aligned(array.nbytes) - array.nbytes))
        os.replace(tmp, entry)
        return True
    except OSError as e:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        warnings.warn(f"could not write the parse cache entry {entry}: {e.strerror or e}; "
                      f"the file will be parsed again next time", RuntimeWarning, stacklevel=3)
        return False


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN
