"""Training and prediction on a device mesh: tables sharded by rows, batches by examples.

JAX is the distributed engine; this module only says where each array lives. A
`jax.sharding.Mesh` with one axis (``make_mesh(n)``: the first ``n`` devices) is wrapped in
a `MeshPlan`, which `recsys_jax.training.fit.fit` and `recsys_jax.engine.build.make_engine` take:

============================  ===============================================================
embedding tables              every ``user_*`` / ``item_*`` field, and the optimizer state
                              that mirrors it (Adam's moments, the row-sparse optimizers'
                              packed ``[N, D + S]`` tables): **rows** split over the axis
batches                       ``int32[B]`` users, items, ratings, mask: **examples** split
                              over the axis (a sharding constraint on the epoch's batches)
everything else               the global bias, dense layers, step counters, the ratings
                              (read once per epoch to cut the batches): **replicated**
============================  ===============================================================

Nothing else changes: the compiled epoch is the same function, jitted with the state and
data placed by `jax.device_put` and sharding constraints inside (`jax.lax.with_sharding_constraint`
on the state carried by the scan and on the batches), and XLA's partitioner inserts the
collectives: a batch's row gather from a row-sharded table is a masked local gather plus
an all-reduce of the ``[B, K]`` rows (no table is ever gathered), the gradient's scatter-add
lands on the device owning each row. On one device (``mesh=None``) none of this is traced:
the program is exactly the unsharded one.

Uneven tables. A `NamedSharding` must divide the dimension it splits, so for a row-local
model (spec ``row_local=True``: it reads a table only at the batch's rows) a table whose row
count is not a multiple of the device count is padded with zero rows while training
(`pad_rows`): a padded row is never indexed, its gradient is zero, and every optimizer
here leaves a zero row with zero state unchanged (Adam's update is ``0 / (0 + eps)``), so
padding changes no result (tested). `fit` strips the padding from the parameters it returns
(`unpad_rows`); a stripped table that no longer divides the device count is replicated.
Other models (SVD++, FM) may tie a table's size to their data, so they are not padded:
their uneven tables are replicated, their even ones split, and XLA's partitioner places
the collectives (correct, tested; not tuned).

Many processes. With ``jax.distributed.initialize()`` in every process (one per host, or
several on one host for a test) ``jax.devices()`` lists every process's devices and the
same code runs unchanged: each process reads the ratings itself (the same file, no
broadcast) and `put_replicated` assembles the global arrays from the process-local copies.
Checkpoints are written by process 0 only, from `to_host` (which gathers shards that live
in other processes), and hold unpadded, unsharded arrays, so they load with any device
count.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "devices"
SIDES = ("user", "item")
FORCE_HINT = ("on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N (set before JAX starts) "
              "makes N host devices")


def make_mesh(num_devices: int | None = None, *, axis: str = AXIS, devices=None) -> Mesh:
    """A 1-D mesh over the first ``num_devices`` of ``devices`` (default ``jax.devices()``,
    every device of every process); all of them when ``num_devices`` is None."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices) if num_devices is None else int(num_devices)
    if n < 1:
        raise ValueError(f"num_devices must be >= 1, got {num_devices}")
    if n > len(devices):
        raise ValueError(f"num_devices={n} but JAX sees {len(devices)} device(s) ({devices[0].platform}); "
                         + FORCE_HINT)
    return Mesh(np.array(devices[:n]), (axis,))


class MeshPlan(NamedTuple):
    """Where the arrays of one training run live (hashable: part of the engine's cache key)."""

    mesh: Mesh
    axis: str = AXIS

    @property
    def size(self) -> int:
        return int(self.mesh.shape[self.axis])

    def rows(self) -> NamedSharding:
        return NamedSharding(self.mesh, P(self.axis))

    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    def examples(self) -> NamedSharding:
        """``[num_batches, B]`` batch arrays: the examples of each batch split over the axis."""
        return NamedSharding(self.mesh, P(None, self.axis))

    def shardings(self, tree):
        """A `NamedSharding` per leaf: rows for table leaves that divide evenly, else replicated."""
        def pick(path, leaf):
            shape = np.shape(leaf)
            if table_side(path) is not None and len(shape) >= 1 and shape[0] % self.size == 0:
                return self.rows()
            return self.replicated()

        return jax.tree_util.tree_map_with_path(pick, tree)

    def put(self, tree):
        """``tree`` placed on the mesh (tables by rows, the rest replicated)."""
        return jax.device_put(tree, self.shardings(tree))

    def constrain(self, tree):
        """Inside a traced function: the same placement as `put`, as sharding constraints."""
        return jax.lax.with_sharding_constraint(tree, self.shardings(tree))

    def constrain_batches(self, batches):
        """The epoch's ``[num_batches, B]`` arrays split by examples (other leaves untouched)."""
        def pick(x):
            return jax.lax.with_sharding_constraint(x, self.examples()) if x is not None and x.ndim == 2 else x

        return type(batches)(*(pick(x) for x in batches))

    def pad(self, tree):
        return pad_rows(tree, self.size)


# -- explicit row exchange: a row-sharded table read and written at example-sharded indices --
#
# Left to itself, XLA's partitioner serves a gather from a row-sharded table at
# example-sharded indices by all-gathering the whole table at every step (measured: one
# all-gather of every [N, K] table per step in the scanned epoch). These two functions
# write the pattern out with `jax.shard_map`, exchanging only batch-sized arrays: the B
# indices are all-gathered, each device reads the rows it owns (zeros elsewhere), and a
# reduce-scatter sums the partial rows and hands each device its B/D examples' rows.
# Both are differentiable (the transpose of the reduce-scatter is an all-gather, that of
# the local read a local scatter-add), so a dense optimizer's table gradients stay sharded.


def _local_index(plan: MeshPlan, n_local: int, index):
    """(all B indices, their offsets in this device's rows, which of them it owns)."""
    index = jax.lax.all_gather(index, plan.axis, tiled=True)
    offset = index - jax.lax.axis_index(plan.axis) * n_local
    return index, offset, (offset >= 0) & (offset < n_local)


def take_rows(plan: MeshPlan, table, index):
    """``table[index]``: ``table`` split by rows, ``index`` (int32[B]) and the result
    (``[B, ...]``) by examples; B must be a multiple of the device count."""
    def local(tab, idx):
        _, offset, mine = _local_index(plan, tab.shape[0], idx)
        rows = tab[jnp.where(mine, offset, 0)]
        rows = jnp.where(mine.reshape((-1,) + (1,) * (rows.ndim - 1)), rows, jnp.zeros((), rows.dtype))
        return jax.lax.psum_scatter(rows, plan.axis, scatter_dimension=0, tiled=True)

    return jax.shard_map(local, mesh=plan.mesh, in_specs=(P(plan.axis), P(plan.axis)), out_specs=P(plan.axis),
                         check_vma=False)(table, index)


def update_rows(plan: MeshPlan, table, index, values, write, *args):
    """``write(local_table, local_index, values, *args)`` on each device's rows: ``index``
    (int32[B]) and ``values`` (``[B, ...]``) split by examples are all-gathered, and the
    indices of rows another device owns point past the local rows, where a scatter with
    ``mode="drop"`` (JAX's default for ``.at[].set/add``) drops them. ``args`` are replicated."""
    def local(tab, idx, vals, *rest):
        _, offset, mine = _local_index(plan, tab.shape[0], idx)
        vals = jax.lax.all_gather(vals, plan.axis, tiled=True)
        spare = tab.shape[0] + jnp.arange(offset.shape[0], dtype=offset.dtype)  # distinct, out of range
        return write(tab, jnp.where(mine, offset, spare), vals, *rest)

    specs = (P(plan.axis), P(plan.axis), P(plan.axis)) + (P(),) * len(args)
    return jax.shard_map(local, mesh=plan.mesh, in_specs=specs, out_specs=P(plan.axis),
                         check_vma=False)(table, index, values, *args)


def as_plan(mesh) -> MeshPlan | None:
    """None, a `MeshPlan`, or a `Mesh` (of one axis) -> a `MeshPlan` or None.

    The plan places arrays with sharding constraints, which need the mesh's axis to be of
    the automatic type; ``jax.make_mesh`` makes explicit axes by default, so a mesh made that
    way is taken over the same devices with an automatic axis."""
    if mesh is None or isinstance(mesh, MeshPlan):
        return mesh
    if isinstance(mesh, Mesh):
        if len(mesh.axis_names) != 1:
            raise ValueError(f"mesh must have one axis (tables and batches are split over it), got axes "
                             f"{mesh.axis_names}")
        if any(t != AxisType.Auto for t in getattr(mesh, "axis_types", ())):
            mesh = Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,))
        return MeshPlan(mesh, mesh.axis_names[0])
    raise ValueError(f"mesh must be a jax.sharding.Mesh or None, got {type(mesh).__name__}")


def table_side(path) -> str | None:
    """``"user"`` / ``"item"`` when the last named key on ``path`` is a table's (``user_*``,
    ``item_*``, or a packed side table ``"user"`` / ``"item"``); None otherwise."""
    for key in reversed(path):
        name = getattr(key, "name", None) if hasattr(key, "name") else getattr(key, "key", None)
        if isinstance(name, str):
            side = name.split("_", 1)[0]
            return side if side in SIDES else None
    return None


def pad_rows(tree, multiple: int):
    """Every table leaf padded with zero rows to a multiple of ``multiple`` rows."""
    def pad(path, x):
        if table_side(path) is None or np.ndim(x) < 1 or x.shape[0] % multiple == 0:
            return x
        extra = multiple - x.shape[0] % multiple
        return jnp.pad(x, [(0, extra)] + [(0, 0)] * (x.ndim - 1))

    return jax.tree_util.tree_map_with_path(pad, tree)


def unpad_rows(tree, num_users: int, num_items: int):
    """The table leaves cut back to ``num_users`` / ``num_items`` rows (`pad_rows` undone)."""
    sizes = {"user": num_users, "item": num_items}

    def cut(path, x):
        side = table_side(path)
        if side is None or np.ndim(x) < 1 or x.shape[0] == sizes[side]:
            return x
        return x[: sizes[side]]

    return jax.tree_util.tree_map_with_path(cut, tree)


def is_sharded(tree) -> bool:
    """True when some leaf of ``tree`` is split over more than one device."""
    for x in jax.tree.leaves(tree):
        sharding = getattr(x, "sharding", None)
        if sharding is not None and len(sharding.device_set) > 1 and not sharding.is_fully_replicated:
            return True
    return False


def put_replicated(plan: MeshPlan, tree):
    """Host arrays (the same in every process: each reads the data itself) as global arrays
    replicated over the mesh. In one process this is `jax.device_put`."""
    sharding = plan.replicated()
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def make(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(make, tree)


def to_host(tree) -> Any:
    """Every leaf as a NumPy array on the host, gathered from all its shards (also those in
    other processes, with ``jax.distributed``): what a checkpoint writes."""
    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(get, tree)
