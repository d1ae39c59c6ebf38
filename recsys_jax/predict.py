"""Batched prediction in bounded memory.

`predict_indices` runs a model's ``apply`` (already `jax.vmap`-batched) over any number
of (user, item) index pairs in fixed-size chunks: one compiled program per chunk size, the
last chunk padded, memory bounded by the chunk whatever the number of pairs.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=64)
def _jitted(apply_fn: Callable) -> Callable:
    return jax.jit(lambda params, users, items: apply_fn(params, users, items))


def predict_indices(
    apply_fn: Callable,
    params,
    users,
    items,
    *,
    clip: tuple[float, float] | None = None,
    chunk_size: int = 65_536,
) -> np.ndarray:
    """Predictions for index pairs, ``float32[N]``, optionally clipped to ``clip``.

    Indices must already be valid (``0 <= u < num_users``): JAX clamps out-of-range
    gathers silently, so the raw-id API in `recsys_jax.recommender` validates first.
    """
    users = np.asarray(users, np.int32)
    items = np.asarray(items, np.int32)
    n = users.shape[0]
    out = np.empty(n, np.float32)
    if n == 0:
        return out
    # Small inputs get a small power-of-two chunk, so a handful of shapes cover all sizes.
    size = min(chunk_size, 1 << max(n - 1, 1).bit_length())
    fn = _jitted(apply_fn)
    for start in range(0, n, size):
        u, i = users[start : start + size], items[start : start + size]
        m = u.shape[0]
        if m < size:
            u = np.pad(u, (0, size - m))
            i = np.pad(i, (0, size - m))
        out[start : start + m] = np.asarray(fn(params, jnp.asarray(u), jnp.asarray(i)))[:m]
    if clip is not None:
        np.clip(out, clip[0], clip[1], out=out)
    return out
