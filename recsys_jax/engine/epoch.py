"""The epoch as one compiled loop: shuffle on the device, cut into batches, scan the step.

``run_epoch(step, batch_size, state, users, items, ratings, key)`` shuffles the training
arrays on the device (`recsys_jax.engine.shuffle.permutation`), cuts them into batches (the
last partial batch is padded and masked, not dropped) and scans ``step`` over them: one
compiled program per epoch, no Python in the loop. `recsys_jax.engine.build.make_engine`
compiles it once per (model, settings, shapes), with the dense or a row-sparse step.
With ``count`` the arrays are padded (`padded_size`) and the epoch loops over the steps
the first ``count`` ratings fill: one program for every size that pads alike.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from recsys_jax.data.ratings import Ratings
from recsys_jax.engine import sparse
from recsys_jax.engine.config import TrainConfig
from recsys_jax.engine.shuffle import (
    SORT_MAX,
    Blocks,
    block_order,
    blocked_permutation,
    feistel_permutation,
    permutation,
)
from recsys_jax.engine.step import Batch, TrainState


def num_batches(num_ratings: int, batch_size: int) -> int:
    return max(math.ceil(num_ratings / batch_size), 1)


def padded_size(num_ratings: int, batch_size: int) -> int | None:
    """The size that `fit` pads ``num_ratings`` ratings to, so that every number of ratings
    in ``(size/2, size]`` trains with one compiled epoch (`recsys_jax.engine.build.make_engine`'s
    ``shared``); None: the epoch is compiled for the exact number.

    The size is the next power of two, the domain of `recsys_jax.engine.shuffle`'s cipher, so the
    shuffle, and with it the whole epoch, is the exact number's. Not for up to
    `recsys_jax.engine.shuffle.SORT_MAX` ratings (their uniform shuffle sorts a fixed number of
    keys), nor for epochs of 1,000 steps or more, whose fixed-length loop is unrolled
    twice (`run_epoch`), which shortens an epoch of many small steps such as the notebook's
    batch-64 epoch.
    """
    if num_ratings <= SORT_MAX or num_batches(num_ratings, batch_size) >= 1000:
        return None
    return 1 << (num_ratings - 1).bit_length()


ORDERS = ("auto", "random", "blocked")


BLOCKED_TABLE_BYTES = 8 << 20  # "auto": the blocked order above this many bytes of user and item tables


MAX_GRID = 8


def epoch_grid(train_config: TrainConfig, params, num_ratings: int) -> int:
    """Blocks per side, ``g``, of the epoch's order (`recsys_jax.engine.shuffle.block_order`); 1: a
    shuffle of all the ratings.

    ``g`` is the largest number up to `MAX_GRID` whose ``g x g`` blocks hold at least 8
    batches each, and at least 2. ``order="auto"`` takes the blocked order for the
    row-sparse optimizers when the model's user and item tables hold more than
    `BLOCKED_TABLE_BYTES` (8 MiB; ml-latest-small's bias tables are 2 MiB, a 5M-rating
    synthetic set's 20 MiB), where their rows no longer stay in the cache: at 5M ratings
    AdaGrad's epoch ran clearly faster in blocks of 8 x 8 than as one shuffle of all the
    ratings (interleaved `benchmarks.scaling --order` runs, with the first version of the
    order, a cipher per block; the rotation of `recsys_jax.engine.shuffle` is faster still),
    at a slightly higher validation RMSE after the same epochs. More blocks cost accuracy:
    16 x 16 validated clearly worse than 8 x 8, the batches reading too few rows. The
    scaling table of the benchmark results gives the order each size runs in and its speed.
    """
    order = train_config.order
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; known orders: {', '.join(ORDERS)}")
    grid = min(MAX_GRID, math.isqrt(num_ratings // (8 * train_config.batch_size)))
    if order == "blocked":
        return max(grid, 2)
    if order == "random" or train_config.optimizer not in sparse.ROW_OPTIMIZERS:
        return 1
    table_bytes = sum(int(np.prod(v.shape)) * v.dtype.itemsize for name, v in params._asdict().items()
                      if name.split("_", 1)[0] in sparse.SIDES)
    return grid if table_bytes > BLOCKED_TABLE_BYTES and grid >= 2 else 1


def group_by_block(train_config: TrainConfig, params, train: Ratings, times,
                   make_rng: Callable[[], np.random.Generator]) -> tuple[tuple, dict]:
    """The epoch's columns ``(users, items, ratings, times)`` and its extra arguments, in the
    order ``train_config`` names (`epoch_grid`): grouped by block (`recsys_jax.engine.shuffle.block_order`,
    with ``make_rng()``'s random order within each block, each batch-sized run of it then
    sorted by user) and ``{"blocks": ...}`` for the blocked order; as given and ``{}``
    otherwise (ALS has no epoch order)."""
    columns = (train.users, train.items, train.ratings, times)
    grid = 1 if train_config.optimizer == "als" else epoch_grid(train_config, params, len(train))
    if grid == 1:
        return columns, {}
    order, blocks = block_order(train.users, train.items, grid, make_rng(), chunk=train_config.batch_size)
    return tuple(None if a is None else np.asarray(a)[order] for a in columns), {"blocks": blocks}


def make_train_epoch(train_step: Callable, batch_size: int) -> Callable:
    """A jitted ``train_epoch(state, users, items, ratings, key, num_steps=None)``.

    Returns ``(state, losses[num_batches])``. The arrays stay on the device; each epoch
    draws a fresh permutation from ``key``. ``num_steps`` (static) stops after that many
    batches of the same epoch plan: `fit` uses it to replay an epoch up to the last
    finite step.
    """

    @functools.partial(jax.jit, static_argnames="num_steps")
    def train_epoch(state: TrainState, users: Array, items: Array, ratings: Array, key: Array,
                    num_steps: int | None = None, times: Array | None = None):
        return run_epoch(train_step, batch_size, state, users, items, ratings, key, num_steps, times)

    return train_epoch


def run_epoch(train_step: Callable, batch_size: int, state: TrainState, users: Array, items: Array,
              ratings: Array, key: Array, num_steps: int | None = None, times: Array | None = None, *,
              plan=None, count: Array | None = None, blocks: Blocks | None = None, kernels: bool = False):
    """One epoch, traceable: the body of `make_train_epoch` (and of `recsys_jax.training.many`).

    ``plan`` (a `recsys_jax.engine.sharding.MeshPlan`) splits each batch's examples over the mesh
    and keeps the carried state placed as the plan says after every step; None: one device.

    ``count`` (a traced int32 scalar; see `padded_size`): only the first ``count`` examples
    of the arrays are ratings, the rest padding. The epoch is then exactly the epoch of
    those ``count`` examples alone (the same shuffle, batches, keys and steps), run as a
    loop of ``ceil(count / batch_size)`` steps, so one compiled program trains any number
    of ratings that pads to the same size. The losses of the steps not run are 0.

    ``blocks`` (a `recsys_jax.engine.shuffle.Blocks` over arrays grouped by `recsys_jax.engine.shuffle.block_order`):
    the epoch's order is `recsys_jax.engine.shuffle.blocked_permutation`'s, block after block,
    instead of a shuffle of all the ratings (`epoch_grid`).

    ``kernels``: the shuffles run as the CPU kernels (`recsys_jax.engine.options`), the same
    order.
    """
    n = users.shape[0]
    nb = num_batches(n, batch_size)
    perm_key, step_key = jax.random.split(key)
    # An O(n) keyed shuffle: jax.random.permutation sorts, and XLA's CPU sort cost more
    # than the epoch itself (see recsys_jax.engine.shuffle).
    if blocks is not None:
        perm = blocked_permutation(perm_key, blocks, n, kernels=kernels)
    elif count is None:
        perm = permutation(perm_key, n, kernels=kernels)
    else:
        perm = feistel_permutation(perm_key, n, count, kernels=kernels)
    order = jnp.concatenate([perm, jnp.zeros(nb * batch_size - n, jnp.int32)])
    order = order.reshape(nb, batch_size)
    mask = (jnp.arange(nb * batch_size) < (n if count is None else count)).reshape(nb, batch_size)
    keys = jax.random.split(step_key, nb)  # the first k of them are split(step_key, k)'s
    if num_steps is not None:
        order, mask, keys = order[:num_steps], mask[:num_steps], keys[:num_steps]
    batches = Batch(users[order], items[order], ratings[order], mask,  # one gather per epoch
                    None if times is None else times[order])
    if plan is not None:
        batches = plan.constrain_batches(batches)
    if count is not None:
        steps = (count + batch_size - 1) // batch_size
        if num_steps is not None:
            steps = jnp.minimum(steps, num_steps)

        def step(i, carry):
            state, losses = carry
            batch = jax.tree.map(lambda a: a[i], batches)
            state, loss = train_step(state, batch, keys[i])
            return (state if plan is None else plan.constrain(state)), losses.at[i].set(loss)

        return jax.lax.fori_loop(0, steps, step, (state, jnp.zeros(order.shape[0], jnp.float32)))

    def body(state, xs):
        batch, k = xs
        if plan is None:
            return train_step(state, batch, k)
        state, loss = train_step(state, batch, k)
        return plan.constrain(state), loss

    # Many small steps: unrolling the loop twice shortens the notebook's batch-64 epoch
    # (measured on the CPU); with few steps it only costs compile time.
    return jax.lax.scan(body, state, (batches, keys), unroll=2 if order.shape[0] >= 1000 else 1)
