"""Folders written atomically (checkpoints, training progress), and the error for one that
cannot be read back."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the problem."""


def _write_file(path: Path, write) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_folder(path: str | os.PathLike, files: dict) -> Path:
    """Writes the folder ``path`` atomically: ``files`` maps a file name to ``write(f)``.

    The files are written, in order and each fsynced, into a temporary folder beside
    ``path``, which is then renamed into place; an existing ``path`` is moved aside first
    and deleted only once the new folder is in place, or put back if anything fails. A
    crash leaves either the old folder or the new one (or, between the two renames, the old
    one under ``.<name>.old-*``), never a torn one. Used by checkpoints
    (`recsys_jax.use.checkpoint`) and by training progress (`recsys_jax.training.resume`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    old = None
    try:
        for name, write in files.items():
            _write_file(tmp / name, write)
        _fsync_dir(tmp)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.rmdir(old)
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists():
            if path.exists():  # the new folder is in place; only the final fsync failed
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(old, path)  # put the previous folder back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path
