"""Training progress on disk, so a killed `fit` can resume where it stopped.

A progress folder holds ``progress.npz`` (every leaf of the `TrainState` — params, Adam's
moments, the step — and of the best parameters so far) and ``progress.json`` (the epoch
reached, the history, the best score and epoch, and a fingerprint of the run). It is
written atomically after an epoch (temporary folder, fsync, rename), so a kill at any
moment leaves either the previous progress or the new one, never a torn one.

Resuming restores the state bit for bit; because every epoch's shuffle, dropout and
batch keys are derived from ``(key, epoch)`` alone, the resumed run continues exactly as
the uninterrupted one would have. The fingerprint (model, configs, key, the training data:
its size and a sha256 of its users, items, ratings and timestamps; whether the CPU kernels
ran and on which machine) must match, so a folder is never resumed into a different run,
not even one on other data of the same size.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from recsys_jax.training.store import CheckpointError, write_folder

FORMAT = "recsys_jax.progress"
FORMAT_VERSION = 1


class Progress(NamedTuple):
    state: Any  # TrainState after `epoch`
    epoch: int
    history: dict
    best_score: float
    best_params: Any
    best_epoch: int


def _jsonable(x):
    if isinstance(x, tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    return x


def fingerprint(model: str, model_config, train_config, train, key, options=None) -> dict:
    """What must be equal for a progress folder to belong to this run.

    ``train`` is the training `Ratings` (anything with ``users``, ``items``, ``ratings``
    and optionally ``timestamps`` arrays): its content is hashed, not only its length.
    ``options`` (`recsys_jax.engine.options.EngineOptions`): whether the CPU kernels run the
    steps, and the machine (backend, CPU features), are recorded too, since either may change
    the float rounding: a run resumed with other ones would silently differ from the
    uninterrupted run.
    """
    if isinstance(train, (int, np.integer)):
        raise TypeError("fingerprint: pass the training Ratings (its content is hashed), not its length")
    return _jsonable({
        "model": model,
        "model_config": model_config._asdict(),
        "train_config": train_config._asdict(),
        "num_ratings": len(train.ratings),
        "data_sha256": data_hash(train),
        "key": np.asarray(jax.random.key_data(key)).tolist(),
        **({} if options is None else {"engine": {"kernels": bool(options.kernels), "machine": machine()}}),
    })


def machine() -> str:
    """A digest of what decides the float rounding besides the program: the backend, its
    devices, the CPU's architecture and feature flags."""
    import platform

    from recsys_jax.engine.kernels import cpu_flags

    parts = (jax.default_backend(), [d.device_kind for d in jax.devices()], platform.machine(), cpu_flags())
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def data_hash(train) -> str:
    """sha256 over the training arrays' dtypes, shapes and bytes (a pass over them all)."""
    digest = hashlib.sha256()
    for name in ("users", "items", "ratings", "timestamps"):
        array = getattr(train, name, None)
        if array is None:
            continue
        array = np.ascontiguousarray(np.asarray(array))
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def save_progress(path: str | os.PathLike, progress: Progress, fp: dict) -> None:
    arrays = {f"state/{i}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(progress.state))}
    arrays.update({f"best/{i}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(progress.best_params))})
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "fingerprint": fp, "epoch": progress.epoch,
        "history": progress.history, "best_score": progress.best_score, "best_epoch": progress.best_epoch,
    }
    write_folder(path, {"progress.npz": lambda f: np.savez(f, **arrays),
                        "progress.json": lambda f: f.write(json.dumps(meta).encode())})


def load_progress(path: str | os.PathLike, like_state, like_params, fp: dict) -> Progress | None:
    """The saved progress, shaped like ``like_state``; None when there is none yet."""
    path = Path(path)
    meta_path, arrays_path = path / "progress.json", path / "progress.npz"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        with np.load(arrays_path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise CheckpointError(f"{path}: unreadable training progress ({e})") from e
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{meta_path}: not training progress of format version {FORMAT_VERSION}")
    saved_fp = meta.get("fingerprint")
    if saved_fp != fp:
        differ = [k for k in fp if not isinstance(saved_fp, dict) or saved_fp.get(k) != fp[k]] or ["fingerprint"]
        raise CheckpointError(
            f"{path}: this progress belongs to a different run ({', '.join(differ)} differ); "
            "use another checkpoint folder or delete it"
        )

    def restore(prefix, like):
        leaves, treedef = jax.tree.flatten(like)
        out = []
        for i, leaf in enumerate(leaves):
            a = arrays.get(f"{prefix}/{i}")
            if a is None or a.shape != np.shape(leaf) or a.dtype != np.asarray(leaf).dtype:
                raise CheckpointError(f"{arrays_path}: {prefix}/{i} is missing or has the wrong shape or dtype")
            out.append(jnp.asarray(a))
        return jax.tree.unflatten(treedef, out)

    return Progress(restore("state", like_state), int(meta["epoch"]), meta["history"],
                    float(meta["best_score"]), restore("best", like_params), int(meta["best_epoch"]))
