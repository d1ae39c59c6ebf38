"""Batched prediction in bounded memory.

`predict_indices` runs a model's ``apply`` (already `jax.vmap`-batched) over any number
of (user, item) index pairs in fixed-size chunks: one compiled program per chunk size, the
last chunk padded, memory bounded by the chunk whatever the number of pairs.

JAX clamps out-of-range gather indices silently, so the indices are checked first, on
the host: 1-D integer arrays (floats only when integral; no bools or strings) of equal
length, each inside its table. The table sizes are read from the params: the first
dimension of the ``user_*`` and ``item_*`` fields (every model in `recsys_jax.models`
names its tables so). The check is one min/max per array; a bad input raises
`ValueError` before any device work.

Many pairs, small catalogue. When the model can score every pair at once (its apply
carries a ``score_matrix``: the dot-product family, `recsys_jax.models.make_apply`) and
the pairs number at least ``U * I / DENSE_RATIO`` (up to `DENSE_MAX` entries), the
predictions are read from the whole score matrix, one matrix product and one scalar
gather per pair, instead of gathering two embedding rows per pair. On ml-latest-small
(610 x 9,724) 1M pairs took much less time than on the row path, on the CPU (the
prediction table of the benchmark results, from `benchmarks.throughput`).
The two paths agree to float32 rounding (tested).

Sharded models. Parameters split over a device mesh (`recsys_jax.engine.sharding`: tables by
rows) are read where they live: the compiled block, given row-sharded tables and the
pairs on every device, reads each pair's rows on the device that owns them and sums the
partial rows over the mesh (an all-reduce of ``[block, K]``; no table is gathered). The
score-matrix path is not taken for them (a ``U x I`` product of two row-split tables would
move one of the tables).
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from recsys_jax.engine.sharding import is_sharded

# Pairs per inner block. Gathering [N, K] embedding rows for a large N writes them out to
# memory and reads them back; blocks of a few thousand pairs stay in cache. On the CPU
# this made the bias model's prediction of 1M pairs much faster than one jitted
# vmap over all pairs (see the prediction throughput table of the benchmark results).
BLOCK = 8192
DENSE_RATIO = 8  # the score matrix is used when num_users * num_items <= DENSE_RATIO * num_pairs
DENSE_MAX = 1 << 26  # entries (256 MB of float32) at most


@functools.lru_cache(maxsize=64)
def _jitted(apply_fn: Callable, with_aux: bool, with_times: bool, link: Callable | None = None) -> Callable:
    def predict(params, users, items, aux, times, link_params):
        kw = {}
        if with_aux:
            kw["aux"] = aux

        def block(xs):
            u, i, t = xs
            out = apply_fn(params, u, i, **kw, **({"times": t} if with_times else {}))
            return out if link is None else link(link_params, out)

        n = users.shape[0]
        b = min(BLOCK, n)  # n is a power of two (see predict_indices), so b divides it
        t = times if with_times else jnp.zeros_like(users, jnp.float32)
        blocks = (users.reshape(-1, b), items.reshape(-1, b), t.reshape(-1, b))
        return jax.lax.map(block, blocks).reshape(n)

    return jax.jit(predict)


@functools.lru_cache(maxsize=64)
def _jitted_matrix(score_matrix: Callable) -> Callable:
    return jax.jit(lambda params: score_matrix(params).reshape(-1))


@functools.lru_cache(maxsize=64)
def _jitted_lookup(num_items: int, link: Callable | None = None) -> Callable:
    def lookup(flat_scores, users, items, link_params):
        out = flat_scores[users * num_items + items]
        return out if link is None else link(link_params, out)

    return jax.jit(lookup)


def predict_indices(
    apply_fn: Callable,
    params,
    users,
    items,
    *,
    clip: tuple[float, float] | None = None,
    chunk_size: int = 1 << 20,
    aux=None,
    times=None,
    link: Callable | None = None,
    link_params=None,
) -> np.ndarray:
    """Predictions for index pairs, ``float32[N]``, optionally clipped to ``clip``.

    ``aux`` (the model's data from ``prepare``) and ``times`` (float32 days since the
    epoch, one per pair) are passed on to models that use them. ``link``, when given,
    turns the model's scores into ratings inside the same compiled block, as
    ``link(link_params, scores)``: a `recsys_jax.objectives.losses.ParamLoss`'s ``predict``.

    Raises `ValueError` for indices outside ``0 <= u < num_users``, ``0 <= i < num_items``
    (see the module docstring), mismatched lengths or non-integer values. Raw MovieLens
    ids go through `recsys_jax.use.recommender.Recommender.predict` instead.
    """
    num_users, num_items = table_sizes(params)
    users = _as_indices(users, "users", num_users)
    items = _as_indices(items, "items", num_items)
    if users.shape != items.shape:
        raise ValueError(f"predict_indices: {users.shape[0]} users but {items.shape[0]} items")
    n = users.shape[0]
    out = np.empty(n, np.float32)
    if n == 0:
        return out
    # Small inputs get a small power-of-two chunk, so a handful of shapes cover all sizes.
    if chunk_size < 1:
        raise ValueError(f"predict_indices: chunk_size must be >= 1, got {chunk_size}")
    size = min(1 << (chunk_size.bit_length() - 1), 1 << max(n - 1, 1).bit_length())  # powers of two
    if times is not None:
        times = np.asarray(times, np.float32)
        if times.shape != users.shape:
            raise ValueError(f"predict_indices: {users.shape[0]} pairs but {times.shape[0]} times")
    dense = getattr(apply_fn, "score_matrix", None)
    if dense is not None and is_sharded(params):
        dense = None
    if (dense is not None and aux is None and times is None and num_users and num_items
            and num_users * num_items <= min(DENSE_RATIO * n, DENSE_MAX)):
        flat = _jitted_matrix(dense)(params)  # once, whatever the number of chunks
        fn = _jitted_lookup(num_items, link)
        for start in range(0, n, size):
            u, i = users[start : start + size], items[start : start + size]
            m = u.shape[0]
            if m < size:
                u, i = np.pad(u, (0, size - m)), np.pad(i, (0, size - m))
            out[start : start + m] = np.asarray(fn(flat, jnp.asarray(u), jnp.asarray(i), link_params))[:m]
        if clip is not None:
            np.clip(out, clip[0], clip[1], out=out)
        return out
    fn = _jitted(apply_fn, aux is not None, times is not None, link)
    for start in range(0, n, size):
        u, i = users[start : start + size], items[start : start + size]
        t = None if times is None else times[start : start + size]
        m = u.shape[0]
        if m < size:
            u = np.pad(u, (0, size - m))
            i = np.pad(i, (0, size - m))
            t = None if t is None else np.pad(t, (0, size - m), mode="edge")
        out[start : start + m] = np.asarray(fn(params, jnp.asarray(u), jnp.asarray(i), aux,
                                               None if t is None else jnp.asarray(t), link_params))[:m]
    if clip is not None:
        np.clip(out, clip[0], clip[1], out=out)
    return out


def table_sizes(params) -> tuple[int | None, int | None]:
    """(num_users, num_items) from the params' ``user_*`` / ``item_*`` tables; None if none.

    Where several tables exist the smallest first dimension is taken, so an index that
    passes is valid for every table.
    """
    fields = params._asdict() if hasattr(params, "_asdict") else params if isinstance(params, dict) else {}
    sizes: dict[str, int | None] = {"user_": None, "item_": None}
    for name, value in fields.items():
        shape = getattr(value, "shape", ())
        for prefix, size in sizes.items():
            if isinstance(name, str) and name.startswith(prefix) and len(shape) >= 1:
                sizes[prefix] = shape[0] if size is None else min(size, shape[0])
    return sizes["user_"], sizes["item_"]


def _as_indices(x, what: str, size: int | None) -> np.ndarray:
    """A 1-D int32 array of indices in ``[0, size)``; `ValueError` otherwise."""
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"predict_indices: {what} must be 1-D, got shape {a.shape}")
    if a.size == 0:
        return np.zeros(0, np.int32)
    if a.dtype.kind == "f":
        if not (np.all(np.isfinite(a)) and np.all(a == np.round(a))):
            raise ValueError(
                f"predict_indices: {what} must be integers, got {a.dtype} values such as {a[:3].tolist()}"
            )
    elif a.dtype.kind not in "iu":
        raise ValueError(f"predict_indices: {what} must be integers, got dtype {a.dtype}")
    upper = size if size is not None else 2**31  # no table to read: int32 is the bound
    lo, hi = a.min(), a.max()
    if lo < 0 or hi >= upper:
        raise ValueError(
            f"predict_indices: {what} index {int(lo if lo < 0 else hi)} is out of range "
            f"0..{upper - 1}" + (" (the table size in params)" if size is not None else "")
        )
    return a.astype(np.int32, copy=False)
