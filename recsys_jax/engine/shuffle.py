r"""An O(n) shuffle on the device: a keyed Feistel bijection, restricted by compaction.

`jax.random.permutation` sorts random keys; XLA's sort on CPU made that cost more than a
whole training epoch at 100k ratings. Above `SORT_MAX` elements
the permutation is therefore a bijection computed element-wise, with no sort:

1. Take the :math:`m` bits with :math:`n \le 2^m < 2n` and split :math:`x` into a high
   part of :math:`m - s` bits and a low part of :math:`s = \lfloor m/2 \rfloor` bits.
2. Apply four Feistel rounds: the high part is XORed with :math:`F_k` of the low part
   (:math:`F` a murmur3-style integer mix, :math:`k` a round key drawn from the JAX key),
   then the parts swap places, so the next round changes the other part (an unbalanced
   Feistel network when :math:`m` is odd). Each round is a bijection on
   :math:`[0, 2^m)`, whatever :math:`F` is, so their composition :math:`\pi` is one too.
3. Compaction: the permutation is :math:`\pi(0), \pi(1), \dots` with the values
   :math:`\ge n` left out. Each of :math:`0..n-1` is the image of exactly one :math:`x`,
   so it appears exactly once: a bijection on :math:`[0, n)`. This costs one pass over
   fewer than :math:`2n` elements (a prefix sum and a scatter), where cycle walking
   (applying :math:`\pi` again to the values that fall outside) needed as many passes as
   the longest walk and took longer (with compaction, most of XLA's time is its CPU prefix sum).
   On the CPU the whole permutation is a C++ kernel (`recsys_jax.engine.kernels`, ``shuffle.cc``):
   the same rounds and compaction, bit for bit (tested), with the compaction as one
   sequential pass, much faster than XLA's.

The result is a pseudo-random permutation (a keyed cipher on indices), not a uniform
draw over all :math:`n!` orders; for shuffling minibatches that is what matters: every
rating once per epoch, in an order that changes with the key and is unrelated to the
input order. For small :math:`n` it is visibly not uniform (four rounds over a few bits
cannot reach every order), so up to `SORT_MAX` elements, where a sort costs next to
nothing, `permutation` is `jax.random.permutation`, a uniform draw. Deterministic given
the key, on any backend; ``n`` is static, so the choice is made once, at trace time.

**Blocked order** (`block_order`, `blocked_permutation`). For tables too large for the
cache, a uniformly shuffled batch reads rows from all over them, and at 5M ratings the
row gathers and scatters of the row-sparse step waited on memory. LIBMF's remedy is to cut
the rating matrix into a grid of blocks (users by row, items by column) and work through
one block at a time. Here the ratings are grouped once per fit into ``g x g`` blocks,
block :math:`(u \bmod g,\ i \bmod g)`, in a random order within each block, and each
epoch visits the blocks in a random order (a uniform permutation of the :math:`g^2`
blocks), reading every block from a random starting point (a rotation of its ratings).
Every rating still comes once per epoch; a batch then holds the ratings of one block (two
where a block ends), which read :math:`1/g` of the users' rows and :math:`1/g` of the
items'. Where it differs from a shuffle: ratings of the same block that were neighbours in
one epoch are neighbours in the next (the batches are windows of one sequence that move
with the rotation), as in LIBMF, whose blocks keep their order; it needs no cipher or
compaction per epoch and reads the ratings nearly in sequence (at 5M ratings an epoch
was faster than with a cipher per block, at the same validation RMSE; `benchmarks.scaling`
times the blocked order, in the scaling table of the benchmark results).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array


ROUNDS = 4
SORT_MAX = 4096  # up to here, jax.random.permutation (uniform; its sort is cheap at this size)


def _mix(x: Array) -> Array:
    """murmur3's 32-bit finaliser: a cheap, well-avalanching integer hash."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def permutation(key: Array, n: int, *, kernels: bool = False) -> Array:
    """A random permutation of ``0..n-1`` (int32[n]) from ``key``: uniform up to `SORT_MAX`
    elements, a keyed Feistel bijection in O(n) above (``kernels``: `feistel_permutation`'s)."""
    if n <= 1:
        return jnp.arange(n, dtype=jnp.int32)
    if n <= SORT_MAX:
        return jax.random.permutation(key, n).astype(jnp.int32)
    return feistel_permutation(key, n, kernels=kernels)


def feistel_permutation(key: Array, n: int, count: Array | None = None, *, kernels: bool = False) -> Array:
    """The Feistel bijection restricted to ``[0, n)`` (see the module docstring), int32[n], O(n).

    With ``count`` (a traced int32 scalar, ``n / 2 < count <= n`` with ``n`` a power of two)
    the bijection is restricted to ``[0, count)`` instead: the first ``count`` entries are
    ``feistel_permutation(key, count)`` exactly (the same bits :math:`m`, so the same
    cipher), the rest 0. One compiled program then shuffles any number of ratings in
    ``(n/2, n]``.

    ``kernels``: computed by the CPU kernel (`recsys_jax.engine.kernels`, loaded: see
    `recsys_jax.engine.options`), the same permutation bit for bit in one pass.
    """
    if n <= 1:
        return jnp.arange(n, dtype=jnp.int32)
    m = max(int(n - 1).bit_length(), 2)
    round_keys = jax.random.bits(key, (ROUNDS,), jnp.uint32)
    if kernels:  # the same permutation, bit for bit, in one pass (recsys_jax.engine.kernels)
        limit = jnp.asarray(n if count is None else count, jnp.int32)
        out = jax.ShapeDtypeStruct((n,), jnp.int32)
        return jax.ffi.ffi_call("recsys_feistel_permutation", out, vmap_method="sequential")(round_keys, limit,
                                                                                            bits=np.int32(m))
    x = jnp.arange(1 << m, dtype=jnp.uint32)
    low_bits = m // 2
    for r in range(ROUNDS):
        high_bits = m - low_bits
        low, high = x & jnp.uint32((1 << low_bits) - 1), x >> low_bits
        high = high ^ (_mix(low ^ round_keys[r]) & jnp.uint32((1 << high_bits) - 1))
        x = (low << high_bits) | high  # swap: the changed part is the next round's input
        low_bits = high_bits
    keep = x < (n if count is None else count)
    position = jnp.cumsum(keep, dtype=jnp.int32) - 1
    out = jnp.zeros(n, jnp.int32)
    return out.at[jnp.where(keep, position, n)].set(x.astype(jnp.int32), mode="drop", unique_indices=True)


class Blocks(NamedTuple):
    """Ratings grouped into blocks of consecutive indices (`block_order`): block ``k`` is
    ``[starts[k], starts[k] + sizes[k])``."""

    starts: Array  # int32[K]
    sizes: Array  # int32[K]


def block_order(users, items, grid: int, rng: np.random.Generator | None = None,
                chunk: int | None = None) -> tuple[np.ndarray, Blocks]:
    r"""``(order, blocks)``: the ratings indexed by ``order`` are grouped by block
    :math:`(u \bmod g)\,g + (i \bmod g)`: within a block in a random order drawn from
    ``rng``, or in their given order without one (host-side NumPy, once per fit: a stable
    radix sort of 16-bit block numbers).

    With ``chunk`` (the batch size), each run of ``chunk`` consecutive ratings of a block,
    counted from the block's start, is then sorted by user (stably): the runs hold the
    same ratings, and a batch, a window of ``chunk`` ratings that spans at most two runs,
    reads and writes its users' rows in two ascending sweeps instead of at random."""
    if not 1 <= grid <= 255:
        raise ValueError(f"block_order: grid must be in 1..255, got {grid}")
    if chunk is not None and chunk < 1:
        raise ValueError(f"block_order: chunk must be >= 1, got {chunk}")
    users, items = np.asarray(users), np.asarray(items)
    block = ((users % grid) * grid + items % grid).astype(np.uint16)
    first = np.arange(len(block)) if rng is None else rng.permutation(len(block))
    order = first[np.argsort(block[first], kind="stable")].astype(np.int32)
    sizes = np.bincount(block, minlength=grid * grid).astype(np.int32)
    starts = (np.cumsum(sizes) - sizes).astype(np.int32)
    if chunk is not None:  # one stable sort by (block, run within the block, user)
        position_block = np.repeat(np.arange(grid * grid, dtype=np.int64), sizes)
        run = (np.arange(len(order), dtype=np.int64) - np.repeat(starts, sizes)) // chunk
        runs = int(run.max(initial=0)) + 1
        key = (position_block * runs + run) * (int(users.max(initial=0)) + 1) + users[order]
        order = order[np.argsort(key, kind="stable")]
    return order, Blocks(starts, sizes)


def blocked_permutation(key: Array, blocks: Blocks, n: int, *, kernels: bool = False) -> Array:
    """The epoch's order of ratings grouped by `block_order`: the blocks one after another
    in a random order, each read from a random starting point of its own (a rotation of its
    ratings' order); int32[n], zeros after the ``sum(sizes)`` entries. Element-wise, O(n):
    position ``p`` finds its block by a binary search among the K block ends (``kernels``:
    the CPU kernel's two loops per block, the same order)."""
    visit_key, shift_key = jax.random.split(key)
    starts, sizes = jnp.asarray(blocks.starts, jnp.int32), jnp.asarray(blocks.sizes, jnp.int32)
    k = sizes.shape[0]
    visit = jax.random.permutation(visit_key, k).astype(jnp.int32)
    shift = jax.random.randint(shift_key, (k,), 0, jnp.maximum(sizes, 1))
    if kernels:  # the same order in two loops per block (recsys_jax.engine.kernels)
        out = jax.ShapeDtypeStruct((n,), jnp.int32)
        return jax.ffi.ffi_call("recsys_blocked_permutation", out, vmap_method="sequential")(
            starts, sizes, visit, shift.astype(jnp.int32))
    ends = jnp.cumsum(sizes[visit])  # where each visited block's run ends
    p = jnp.arange(n, dtype=jnp.int32)
    slot = jnp.minimum(jnp.searchsorted(ends, p, side="right"), k - 1).astype(jnp.int32)
    block = visit[slot]
    size = jnp.maximum(sizes[block], 1)
    within = p - (ends[slot] - sizes[block])
    return jnp.where(p < ends[-1], starts[block] + (within + shift[block]) % size, 0)
