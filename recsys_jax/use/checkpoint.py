"""Checkpoints: a folder of ``arrays.npz`` + ``meta.json`` (+ ``titles.json``), never pickle.

Layout of a checkpoint folder::

    meta.json     format name and version, model name, model config, array shapes and
                  dtypes, rating scale, and free-form ``extra`` (metrics, train config);
                  for a model trained with a loss that has parameters, ``loss`` (its name
                  in `recsys_jax.objectives.losses.PARAM_LOSSES`)
    arrays.npz    params as ``params/<field>``, the id maps ``user_ids``, ``item_ids``, for
                  models with ``prepare`` their constant data as ``aux/<field>``, and the
                  loss's parameters as ``loss/<field>``
    titles.json   optional: raw item id -> title
    genres.json   optional: raw item id -> list of genres (movies.csv)

Optional, for recommending and folding in (`recsys_jax.use.recommender`, `recsys_jax.use.foldin`):
``rated/indptr`` (int64[U+1]) and ``rated/items`` (int32[N]) in ``arrays.npz``, the training
split's (user, item) pairs as CSR by user (the validation slice included: those movies were
rated too), so that recommendations leave out what each user rated and the split's test
part is the data less these pairs; and ``meta.json``'s ``train_config`` (the `TrainConfig`
as a dict, whose loss and penalty fold-in continues; read from ``extra`` when absent).

Optional, for looking inside the model (`recsys_jax.use.explore`, ``recsys-jax inspect`` and
``plot``): ``meta.json``'s ``history``, the per-epoch record of the fit
(`recsys_jax.training.fit.FitResult.history`: lists ``epoch``, ``train_loss``, ``val_rmse``,
``val_mae``, ``seconds``; null where there was no validation slice), read by
`read_history`; and in ``arrays.npz`` ``train/item_count`` (int64[I]) and
``train/item_mean`` (float64[I], NaN where the count is 0), each item's rating count and
raw mean over the ratings the model was fit on, read by `read_item_stats`. They are stored
rather than recomputed because rebuilding the training rows would need the same data file,
split protocol, seeds and validation fraction again; two arrays of the catalogue's length
cost less than that and cannot drift from the data.

A checkpoint without ``loss`` (every one written before losses had parameters), or
without ``history`` or ``train/*`` (written before they were kept), loads as before;
`read_history` and `read_item_stats` then return None.

Loading uses ``np.load(..., allow_pickle=False)``, so an object array planted in the file
is refused instead of unpickled, and every array is checked against ``meta.json``, the
model's ``Params`` fields and the id maps before it is used: a truncated or mismatched
checkpoint gives a `CheckpointError` naming the file and what is wrong.

Saving is atomic: the folder is written beside the target under a temporary name, each
file fsynced, and renamed into place only when complete. Replacing an existing checkpoint
takes two renames (old folder aside, new folder in); if the second fails the old folder is
renamed back, so a failed save leaves the previous checkpoint as it was and no temporary
folder. (A crash of the whole process between the two renames leaves the previous
checkpoint complete under ``.<name>.old-*`` beside the target.)
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from recsys_jax.data.split import (PROTOCOLS, Split, held_out_users_split, load_split, random_split, temporal_split,
                                   user_split)
from recsys_jax.objectives.losses import get_param_loss
from recsys_jax.models import get_model, make_config
from recsys_jax.training.store import CheckpointError, write_folder
from recsys_jax.use.recommender import Recommender

FORMAT = "recsys_jax.use.checkpoint"
FORMAT_VERSION = 1


def save(path: str | os.PathLike, rec: Recommender, *, extra: dict | None = None, history: dict | None = None,
         item_stats=None) -> Path:
    """Writes ``rec`` to the folder ``path`` atomically; returns the path.

    ``history`` (`recsys_jax.training.fit.FitResult.history`) and ``item_stats``
    (`recsys_jax.use.explore.ItemStats` of the ratings the model was fit on) are optional; see
    the module docstring.
    """
    params = {f"params/{k}": np.asarray(v) for k, v in rec.params._asdict().items()}
    arrays = {**params, "user_ids": np.asarray(rec.user_ids, np.int64), "item_ids": np.asarray(rec.item_ids, np.int64)}
    if rec.aux is not None:
        arrays.update({f"aux/{k}": np.asarray(v) for k, v in rec.aux._asdict().items()})
    for name in ("trained_users", "trained_items"):
        if getattr(rec, name) is not None:
            arrays[name] = np.asarray(getattr(rec, name), np.bool_)
    if rec.loss is not None:
        get_param_loss(rec.loss)  # a clear error for a name that could not be loaded back
        arrays.update({f"loss/{k}": np.asarray(v) for k, v in rec.loss_params._asdict().items()})
    if rec.rated_indptr is not None:
        arrays["rated/indptr"] = np.asarray(rec.rated_indptr, np.int64)
        arrays["rated/items"] = np.asarray(rec.rated_items, np.int32)
    if rec.held_out_indptr is not None:
        arrays["held_out/indptr"] = np.asarray(rec.held_out_indptr, np.int64)
        arrays["held_out/items"] = np.asarray(rec.held_out_items, np.int32)
    if item_stats is not None:
        count, mean = np.asarray(item_stats.count), np.asarray(item_stats.mean)
        if count.shape != (rec.num_items,) or mean.shape != (rec.num_items,):
            raise ValueError(f"save: item_stats cover {count.shape} / {mean.shape} items, the model has {rec.num_items}")
        arrays["train/item_count"] = count.astype(np.int64)
        arrays["train/item_mean"] = mean.astype(np.float64)
    config = rec.config._asdict()
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": rec.model,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items()},
        "arrays": {k: {"shape": list(a.shape), "dtype": str(a.dtype)} for k, a in arrays.items()},
        "rating_scale": list(rec.rating_scale),
        "extra": extra or {},
    }
    if rec.loss is not None:
        meta["loss"] = rec.loss
    if history is not None:
        meta["history"] = _history_to_json(history)
    if rec.train_config is not None:
        meta["train_config"] = rec.train_config
    files = {"arrays.npz": lambda f: np.savez(f, **arrays)}
    if rec.titles is not None:
        titles = {str(k): v for k, v in rec.titles.items()}
        files["titles.json"] = lambda f: f.write(json.dumps(titles).encode())
    if rec.genres is not None:
        genres = {str(k): list(v) for k, v in rec.genres.items()}
        files["genres.json"] = lambda f: f.write(json.dumps(genres).encode())
    # meta.json last: a folder without it is never mistaken for a checkpoint.
    files["meta.json"] = lambda f: f.write(json.dumps(meta, indent=1).encode())
    return write_folder(path, files)


def load(path: str | os.PathLike) -> Recommender:
    """Reads a checkpoint folder written by `save`, checking every array before use."""
    path = Path(path)
    meta_path, arrays_path = path / "meta.json", path / "arrays.npz"
    if not meta_path.is_file():
        raise CheckpointError(f"{path}: not a checkpoint folder (no meta.json)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{meta_path}: unreadable ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: not a recsys_jax checkpoint")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{meta_path}: format version {meta.get('format_version')!r}, this recsys_jax "
            f"reads version {FORMAT_VERSION}"
        )
    try:
        spec = get_model(meta["model"])
        config = make_config(meta["model"], **meta["config"])
        rating_scale = tuple(float(v) for v in meta["rating_scale"])
        declared = meta["arrays"]
        if not isinstance(declared, dict) or not all(isinstance(v, dict) for v in declared.values()):
            raise ValueError("'arrays' must map each array name to {shape, dtype}")
        loss_name = meta.get("loss")
        param_loss = None if loss_name is None else get_param_loss(loss_name)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{meta_path}: bad metadata ({e})") from e

    try:
        with np.load(arrays_path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError as e:
        raise CheckpointError(f"{arrays_path}: missing") from e
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        # ValueError is also what allow_pickle=False raises for an object array.
        raise CheckpointError(f"{arrays_path}: unreadable or truncated ({e})") from e

    expected = {f"params/{f}" for f in spec.Params._fields} | {"user_ids", "item_ids"}
    expected |= {name for name in ("trained_users", "trained_items") if name in arrays}  # optional
    if any(name.startswith("train/") for name in arrays):  # optional, but both or neither
        expected |= set(ITEM_STATS_ARRAYS)
    if any(name.startswith("rated/") for name in arrays):  # optional, but both or neither
        expected |= set(RATED_ARRAYS)
    if any(name.startswith("held_out/") for name in arrays):  # optional, but both or neither
        expected |= set(HELD_OUT_ARRAYS)
    if spec.Aux is not None:
        expected |= {f"aux/{f}" for f in spec.Aux._fields}
    if param_loss is not None:
        expected |= {f"loss/{f}" for f in param_loss.Params._fields}
    if set(arrays) != expected or set(declared) != expected:
        raise CheckpointError(
            f"{arrays_path}: arrays {sorted(arrays)} do not match model {meta['model']!r} "
            f"(expected {sorted(expected)})"
        )
    for name, a in arrays.items():
        want = declared[name]
        if list(a.shape) != list(want.get("shape", [])) or str(a.dtype) != want.get("dtype"):
            raise CheckpointError(
                f"{arrays_path}: array {name!r} is {a.dtype}{list(a.shape)}, meta.json says "
                f"{want.get('dtype')}{want.get('shape')}"
            )
    user_ids, item_ids = arrays["user_ids"], arrays["item_ids"]
    for name, ids in (("user_ids", user_ids), ("item_ids", item_ids)):
        # ids[1:] > ids[:-1], not np.diff: a difference of two int64 ids can overflow
        if ids.ndim != 1 or (ids.size > 1 and not np.all(ids[1:] > ids[:-1])):
            raise CheckpointError(f"{arrays_path}: {name} must be a sorted 1-D array of unique ids")
    params = spec.Params(**{f: jnp.asarray(arrays[f"params/{f}"]) for f in spec.Params._fields})
    for field, a in params._asdict().items():
        rows = len(user_ids) if field.startswith("user_") else len(item_ids) if field.startswith("item_") else None
        if rows is not None and (a.ndim == 0 or a.shape[0] != rows):
            raise CheckpointError(
                f"{arrays_path}: {field} has shape {tuple(a.shape)} but the id map has {rows} entries"
            )
    fresh = jax.eval_shape(lambda: spec.init(jax.random.key(0), len(user_ids), len(item_ids), config))
    for field, a in params._asdict().items():
        if a.shape != getattr(fresh, field).shape:
            raise CheckpointError(
                f"{arrays_path}: {field} has shape {tuple(a.shape)}, the config implies "
                f"{tuple(getattr(fresh, field).shape)}"
            )

    extras = {}
    titles = None
    titles_path = path / "titles.json"
    if titles_path.is_file():
        try:
            titles = {int(k): str(v) for k, v in json.loads(titles_path.read_text()).items()}
        except (OSError, ValueError, AttributeError) as e:
            raise CheckpointError(f"{titles_path}: unreadable ({e})") from e
    aux = None
    if spec.Aux is not None:
        aux = spec.Aux(**{f: jnp.asarray(arrays[f"aux/{f}"]) for f in spec.Aux._fields})
    loss_params = None
    if param_loss is not None:
        loss_params = param_loss.Params(**{f: jnp.asarray(arrays[f"loss/{f}"]) for f in param_loss.Params._fields})
        try:  # the loss's arrays must fit together (e.g. K levels, K-2 cut-point gaps)
            out = jax.eval_shape(param_loss.predict, loss_params, jax.ShapeDtypeStruct((1,), jnp.float32))
            if out.shape != (1,):
                raise ValueError(f"predict gives shape {out.shape}")
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{arrays_path}: the {loss_name!r} loss arrays do not fit together ({e})") from e
    if "train/item_count" in arrays:
        _check_item_stats(arrays_path, arrays["train/item_count"], arrays["train/item_mean"], len(item_ids))
    if "rated/indptr" in arrays:
        _check_rated(arrays_path, arrays["rated/indptr"], arrays["rated/items"], len(user_ids), len(item_ids))
        extras["rated_indptr"], extras["rated_items"] = arrays["rated/indptr"], arrays["rated/items"]
    if "held_out/indptr" in arrays:
        _check_rated(arrays_path, arrays["held_out/indptr"], arrays["held_out/items"], len(user_ids), len(item_ids),
                     "held_out")
        extras["held_out_indptr"], extras["held_out_items"] = arrays["held_out/indptr"], arrays["held_out/items"]
    genres_path = path / "genres.json"
    if genres_path.is_file():
        try:
            extras["genres"] = {int(k): tuple(str(g) for g in v) for k, v in json.loads(genres_path.read_text()).items()}
        except (OSError, ValueError, AttributeError, TypeError) as e:
            raise CheckpointError(f"{genres_path}: unreadable ({e})") from e
    train_config = meta.get("train_config", (meta.get("extra") or {}).get("train_config"))
    if isinstance(train_config, dict):
        extras["train_config"] = train_config
    trained = {}
    for name, ids in (("trained_users", user_ids), ("trained_items", item_ids)):
        if name in arrays:
            a = arrays[name]
            if a.dtype != np.bool_ or a.shape != ids.shape:
                raise CheckpointError(f"{arrays_path}: {name} must be bool[{len(ids)}], got {a.dtype}{list(a.shape)}")
            trained[name] = a
    return Recommender(meta["model"], config, params, user_ids, item_ids, rating_scale, titles, aux,
                       loss_name, loss_params, **trained, **extras)


def read_meta(path: str | os.PathLike) -> dict:
    """The ``meta.json`` of a checkpoint (for its ``extra``: metrics, train config)."""
    return json.loads((Path(path) / "meta.json").read_text())


ITEM_STATS_ARRAYS = ("train/item_count", "train/item_mean")
RATED_ARRAYS = ("rated/indptr", "rated/items")
HELD_OUT_ARRAYS = ("held_out/indptr", "held_out/items")


def _check_rated(arrays_path: Path, indptr: np.ndarray, items: np.ndarray, num_users: int, num_items: int,
                 what: str = "rated") -> None:
    ok = (indptr.dtype == np.int64 and indptr.shape == (num_users + 1,) and items.dtype == np.int32
          and items.ndim == 1 and indptr[0] == 0 and indptr[-1] == len(items) and np.all(indptr[1:] >= indptr[:-1]))
    if not ok:
        raise CheckpointError(f"{arrays_path}: {what}/indptr and {what}/items must be the CSR int64[{num_users + 1}] "
                              f"and int32[N] of (user, item) pairs, got {indptr.dtype}{list(indptr.shape)} and "
                              f"{items.dtype}{list(items.shape)}")
    if items.size and (items.min() < 0 or items.max() >= num_items):
        raise CheckpointError(f"{arrays_path}: {what}/items holds an item index outside 0..{num_items - 1}")
HISTORY_KEYS = ("epoch", "train_loss", "val_rmse", "val_mae", "seconds")


def _history_to_json(history: dict) -> dict:
    """``history`` as JSON-ready lists (NumPy scalars to Python numbers); every list the
    same length; a non-finite number becomes null (JSON has no NaN)."""
    if not isinstance(history, dict) or "epoch" not in history:
        raise ValueError("save: history must be a dict of per-epoch lists with an 'epoch' list (FitResult.history)")
    n = len(history["epoch"])
    out = {}
    for key, values in history.items():
        values = list(values)
        if len(values) != n:
            raise ValueError(f"save: history[{key!r}] has {len(values)} entries, history['epoch'] has {n}")
        row = []
        for v in values:
            if v is None:
                row.append(None)
            else:
                v = float(np.asarray(v))
                row.append(int(v) if key == "epoch" else v if np.isfinite(v) else None)
        out[str(key)] = row
    return out


def read_history(path: str | os.PathLike) -> dict | None:
    """The per-epoch history saved with the checkpoint (lists ``epoch``, ``train_loss``,
    ``val_rmse``, ``val_mae``, ``seconds``; None entries where nothing was measured), or
    None for a checkpoint saved without one. A malformed one is a `CheckpointError`."""
    meta_path = Path(path) / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"{Path(path)}: not a checkpoint folder (no meta.json)") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{meta_path}: unreadable ({e})") from e
    history = meta.get("history") if isinstance(meta, dict) else None
    if history is None:
        return None
    ok = isinstance(history, dict) and isinstance(history.get("epoch"), list) and all(
        isinstance(v, list) and len(v) == len(history["epoch"])
        and all(x is None or (isinstance(x, (int, float)) and not isinstance(x, bool)) for x in v)
        for v in history.values())
    if not ok:
        raise CheckpointError(f"{meta_path}: 'history' must map names to per-epoch lists of numbers of one length")
    return history


def _check_item_stats(arrays_path: Path, count: np.ndarray, mean: np.ndarray, num_items: int) -> None:
    if count.dtype != np.int64 or count.shape != (num_items,) or mean.dtype != np.float64 or mean.shape != (num_items,):
        raise CheckpointError(f"{arrays_path}: train/item_count and train/item_mean must be int64[{num_items}] and "
                              f"float64[{num_items}], got {count.dtype}{list(count.shape)} and "
                              f"{mean.dtype}{list(mean.shape)}")
    if count.size and count.min() < 0:
        raise CheckpointError(f"{arrays_path}: train/item_count has a negative count")


def read_item_stats(path: str | os.PathLike):
    """Each item's training rating count and raw mean (`recsys_jax.use.explore.ItemStats`,
    indexed like the checkpoint's ``item_ids``), or None for a checkpoint saved without
    them. Checked like `load` checks every array."""
    from recsys_jax.use.explore import ItemStats

    path = Path(path)
    arrays_path = path / "arrays.npz"
    try:
        with np.load(arrays_path, allow_pickle=False) as npz:
            names = set(npz.files)
            if not names & set(ITEM_STATS_ARRAYS):
                return None
            if not set(ITEM_STATS_ARRAYS) <= names:
                raise CheckpointError(f"{arrays_path}: has only one of {', '.join(ITEM_STATS_ARRAYS)}")
            count, mean, item_ids = npz["train/item_count"], npz["train/item_mean"], npz["item_ids"]
    except FileNotFoundError as e:
        raise CheckpointError(f"{arrays_path}: missing") from e
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{arrays_path}: unreadable or truncated ({e})") from e
    _check_item_stats(arrays_path, count, mean, len(item_ids))
    return ItemStats(count, mean)


# -- the split a checkpoint was trained on ------------------------------------------------
# -- evaluate ----------------------------------------------------------------------------------
def _user_split_frac(ratings, num_test: int) -> float:
    """The ``test_frac`` of `user_split` that holds out ``num_test`` ratings (the per-user
    counts are the same for every such fraction: any step inside would change the total)."""
    counts = np.bincount(ratings.users)
    counts = counts[counts > 0]

    def total(f):
        return int(np.minimum(np.round(f * counts).astype(np.int64), counts - 1).sum())

    lo, hi = 1e-9, 1 - 1e-9
    for _ in range(100):
        mid = (lo + hi) / 2
        if total(mid) < num_test:
            lo = mid
        else:
            hi = mid
    if total(hi) != num_test:
        raise ValueError(f"no user split of these {len(ratings)} ratings holds out {num_test}: the data differ")
    return hi


def rebuild_split(extra: dict, ratings, *, split_file=None) -> Split:
    """The `Split` a checkpoint was trained on (to score its test part again), from what ``train`` recorded in its ``extra``
    (``split``: random, user, temporal or held-out-users (with ``test_frac``, its share of
    users); ``seed``; ``num_test``), checked against the data
    (``num_ratings``). `recsys_jax.data.random_split` holds out the first ``num_test`` of a
    seeded permutation, so the seed and the count fix it; for `user_split` the fraction is
    the one whose per-user counts add up to ``num_test``; for `temporal_split` the ``k``
    whose last-k counts do."""
    n = len(ratings)
    if extra.get("num_ratings") not in (None, n):
        raise ValueError(f"the data have {n} ratings, the checkpoint was trained on {extra['num_ratings']}: "
                         "not the same data (pass --data-dir or --ratings)")
    if split_file is not None:
        return load_split(split_file, num_ratings=n)
    protocol, seed, num_test = extra.get("split"), extra.get("seed"), extra.get("num_test")
    if protocol == "file":
        raise ValueError("the checkpoint was trained on a --split-file: pass the same file as --split-file")
    if protocol not in PROTOCOLS or num_test is None or (seed is None and protocol != "temporal"):
        raise ValueError("the checkpoint does not record its split protocol, seed and test size "
                         "(not written by recsys-jax train): pass --split-file")
    if protocol == "random":
        split = random_split(ratings, int(seed), num_test / n)
    elif protocol == "held-out-users":
        split = held_out_users_split(ratings, int(seed), float(extra.get("test_frac", 0.2)))
    elif protocol == "user":
        split = user_split(ratings, int(seed), _user_split_frac(ratings, num_test))
    else:
        counts = np.bincount(ratings.users)
        counts = counts[counts > 0]
        k = next((k for k in range(1, int(counts.max()) + 1) if np.minimum(k, counts - 1).sum() == num_test), None)
        if k is None:
            raise ValueError(f"no temporal split of these ratings holds out {num_test}: the data differ")
        split = temporal_split(ratings, k)
    if len(split.test) != num_test:
        raise ValueError(f"the rebuilt {protocol} split holds out {len(split.test)} ratings, the checkpoint "
                         f"{num_test}: the data differ")
    return split
