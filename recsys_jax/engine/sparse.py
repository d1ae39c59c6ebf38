r"""Row-sparse training: optimizers that touch only the embedding rows a batch uses.

Dense Adam reads and writes every row of every table, with both moments, at every step,
so the cost of a step grows with the tables, not with the batch. Here a step costs
:math:`O(B\,D)` whatever the table sizes:

1. **Gather the columns each use needs.** The tables of one side (every ``user_*`` field,
   indexed by the users; every ``item_*`` field, by the items) are packed side by side with
   their optimizer state into one table ``float32[N, D + S]`` for the epoch. A step gathers
   each field's columns of the batch's rows straight into an array of its own (and, for
   ``lazy_adam``, the packed parameter and state columns), rather than whole packed rows
   that are then sliced apart: on XLA's CPU backend every slice of a gathered ``[B, D + S]``
   block is a copy, and the per-field gathers made the bias model's SGD epoch clearly faster
   at batch 1024 on ml-latest-small (interleaved runs of ``benchmarks.throughput``, whose
   training table in the benchmark results gives the current speed). On a mesh (``plan``) whole
   rows are still read once per side, through the explicit exchange.
2. **Local model.** The model is run on *local* tables: each side table replaced by its
   ``B`` gathered rows, row ``b`` being example ``b``'s (the batch's users and items are
   `recsys_jax.models._common.Local`, so each example reads its own row with no second
   gather, and its gradient is no scatter). The objective (`recsys_jax.engine.step.make_objective`:
   loss and penalty, unchanged) is differentiated with respect to those rows, which gives
   one gradient row per example, ``float32[B, D]``, and no dense gradient table.
3. **Merge duplicates.** A row used by several examples must get the *sum* of their
   gradients, once. Each example finds a representative among the examples with its row
   (``slot[row] = b`` scattered, then ``rep_b = slot[row_b]`` gathered: whichever write
   wins, all read the same one), the per-example gradients are scatter-added onto the
   representatives (``float32[B, D]``, not ``[N, D]``), and only representatives write.
   No sort, static shapes.
4. **Row update.** The row transformation (below) maps (merged gradient, state, params)
   of the touched rows to new ones, written back with one scatter per column block
   (parameters, state; one scatter of whole rows on a mesh); rows of padding examples
   (weight 0) and untouched rows are left exactly as they were.

Steps 3 and 4 are for ``lazy_adam``. ``sgd`` and ``adagrad`` are sums over the examples
and skip the merge: their updates are scatter-added into the packed table directly.

The other parameters (global bias, dense layers) are updated with the matching dense
Optax transformation at every step.

Row transformations, ``RowTransform(state_width, init, update, scatter)`` (Optax's shape, on rows):

``lazy_adam``
    Adam's moments for the touched rows only:

    .. math::

       m_r \leftarrow \beta_1 m_r + (1-\beta_1) g_r,\quad
       v_r \leftarrow \beta_2 v_r + (1-\beta_2) g_r^2,\quad
       \theta_r \leftarrow \theta_r - \eta_t\,\frac{m_r / (1-\beta_1^t)}{\sqrt{v_r/(1-\beta_2^t)} + \epsilon}

    with :math:`t` the global step. **Where it differs from dense Adam:** a row that a
    step does not touch keeps its moments and its value; dense Adam would decay both
    moments (a zero gradient) and still move the row by :math:`\eta_t \hat m / (\sqrt{\hat v}+\epsilon)`,
    i.e. keep applying momentum from earlier steps. On a step that touches every row the two
    are identical (tested); the bias correction uses the global step, not a per-row count,
    as TensorFlow's LazyAdam does.
``adagrad``
    Row-wise AdaGrad: one accumulator per row. With :math:`B_r` the examples of the batch
    that use row :math:`r` and :math:`g_b` example :math:`b`'s gradient row,

    .. math::

       a_r \leftarrow a_r + \sum_{b \in B_r} \overline{g_b^2}, \qquad
       \theta_r \leftarrow \theta_r - \eta_t\, \frac{\sum_{b \in B_r} g_b}{\sqrt{a_r} + \epsilon}

    (:math:`\overline{x}`: the mean over the row's columns). The step is the merged
    gradient's, scaled per row; **where it differs from merging first:** the accumulator
    adds each example's squared gradient, as if the batch's examples were successive
    AdaGrad steps that all read the same parameters (LIBMF's per-rating AdaGrad, applied
    together), rather than the square of their sum. Without duplicates the two are the
    same. Written as sums over the examples, it needs no merge (``scatter`` below): a
    scalar scatter-add into the accumulators, their gather, and one ``[B, D]``
    scatter-add, clearly faster than merging first at 5M ratings (batch 8192, on the CPU),
    at about the same validation RMSE (`benchmarks.scaling` times it).
``sgd``
    :math:`\theta_r \leftarrow \theta_r - \eta_t\, g_r`. The per-example rows are
    scatter-added into the table directly (no merge step: a row used twice receives both
    gradients, their sum, as dense SGD would): the sparse step equals the dense one exactly.
    On the CPU, for the bias and dot models with squared error, the whole step is a C++
    kernel instead (`make_fused_update`, `recsys_jax.engine.kernels`): the same update, to
    float rounding. So are ``adagrad``'s and ``lazy_adam``'s.

Which models: those whose ``user_*``/``item_*`` tables are read only at row ``user`` /
``item`` (its spec says ``row_local=True``). A whole-table penalty (``penalty="table"``)
makes every row's gradient nonzero, so it trains densely only.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array

from recsys_jax.models._common import Local

SIDES = ("user", "item")


class RowTransform(NamedTuple):
    """An optimizer on table rows: ``S = state_width(D)`` state columns per row,
    ``init(table[N, D]) -> state[N, S]``, and one of two forms, ``count`` being the 1-based
    global step and ``lr`` this step's learning rate:

    - ``update(grads[R, D], state[R, S], params[R, D], count, lr) -> (params[R, D], state[R, S])``
      on the merged gradient of each touched row (the step merges duplicates first);
    - ``scatter(table[N, D + S], rows[B], grads[B, D], count, lr) -> table``: the
      per-example gradient rows applied to the packed table directly with scatter-adds.
      It skips the merge, whose ``[B, D]`` scatter costs about as much as the table's
      own (XLA's CPU scatter is element by element), so it is for rules that can be
      written as sums over the examples.

    The step uses ``scatter`` when it is given."""

    state_width: Callable[[int], int]
    init: Callable[[Array], Array]
    update: Callable[..., tuple[Array, Array]] | None
    scatter: Callable | None = None


LAZY_ADAM = {"b1": 0.9, "b2": 0.999, "eps": 1e-8}  # lazy_adam's defaults (the fused kernel's too)


def lazy_adam(b1: float = LAZY_ADAM["b1"], b2: float = LAZY_ADAM["b2"], eps: float = LAZY_ADAM["eps"]) -> RowTransform:
    def update(g, state, p, count, lr):
        d = g.shape[1]
        m = b1 * state[:, :d] + (1 - b1) * g
        v = b2 * state[:, d:] + (1 - b2) * jnp.square(g)
        t = count.astype(jnp.float32)
        step = (m / (1 - b1**t)) / (jnp.sqrt(v / (1 - b2**t)) + eps)
        return p - lr * step, jnp.concatenate([m, v], axis=1)

    return RowTransform(lambda d: 2 * d, lambda t: jnp.zeros((t.shape[0], 2 * t.shape[1]), t.dtype), update)


ADAGRAD_EPS = 1e-10


def rowwise_adagrad(eps: float = ADAGRAD_EPS, initial: float = 0.0) -> RowTransform:
    def scatter(table, rows, g, count, lr):
        d = g.shape[1]
        table = table.at[rows, d].add(jnp.mean(jnp.square(g), axis=1))  # every example's square
        acc = table[rows, d]  # the row's accumulator after the whole batch
        return table.at[rows, :d].add(-lr * g / (jnp.sqrt(acc) + eps)[:, None])

    return RowTransform(lambda d: 1, lambda t: jnp.full((t.shape[0], 1), initial, t.dtype), None, scatter)


def sgd() -> RowTransform:
    def scatter(table, rows, g, count, lr):  # duplicates sum: exactly the merged update
        return table.at[rows].add(-lr * g)

    return RowTransform(lambda d: 0, lambda t: jnp.zeros((t.shape[0], 0), t.dtype), None, scatter)


def _dense_adagrad(schedule, eps: float = ADAGRAD_EPS) -> optax.GradientTransformation:
    """Dense AdaGrad with the same conventions as `rowwise_adagrad` (accumulator from 0)."""
    return optax.chain(optax.scale_by_rss(initial_accumulator_value=0.0, eps=eps),
                       optax.scale_by_learning_rate(schedule))


# name -> (row transformation, the dense Optax transformation for the other parameters)
ROW_OPTIMIZERS: dict[str, tuple[Callable[[], RowTransform], Callable]] = {
    "lazy_adam": (lazy_adam, lambda schedule: optax.adam(schedule)),
    "adagrad": (rowwise_adagrad, _dense_adagrad),
    "sgd": (sgd, lambda schedule: optax.sgd(schedule)),
}


def _set(table, index, values):
    return table.at[index].set(values)


def _set_unique(table, index, values):
    return table.at[index].set(values, mode="drop", unique_indices=True)


class Layout(NamedTuple):
    """Where each ``user_*`` / ``item_*`` field sits in its side's packed table."""

    fields: tuple[tuple[str, str, int, int, tuple[int, ...]], ...]  # (name, side, start, stop, row shape)
    width: tuple[tuple[str, int], ...]  # (side, D): parameter columns per side
    dense: tuple[str, ...]  # the other fields


def layout(params) -> Layout:
    fields, width, dense = [], {}, []
    for name, value in params._asdict().items():
        side = name.split("_", 1)[0]
        if side in SIDES:
            size = int(np.prod(value.shape[1:], dtype=np.int64))
            start = width.get(side, 0)
            fields.append((name, side, start, start + size, tuple(value.shape[1:])))
            width[side] = start + size
        else:
            dense.append(name)
    return Layout(tuple(fields), tuple(width.items()), tuple(dense))


class SparseOptState(NamedTuple):
    """`TrainState.opt_state` of a row-sparse optimizer, between epochs."""

    rows: dict  # side -> float32[N, S]: each row's optimizer state
    dense: Any  # the dense transformation's state for the other fields (a dict)


class Carry(NamedTuple):
    """What the scan carries within an epoch: the packed tables and the rest."""

    tables: dict  # side -> float32[N, D + S]: parameters, then optimizer state
    slots: dict  # side -> int32[N]: scratch for finding each row's representative
    dense: dict  # name -> array: the fields that are not side tables
    dense_state: Any
    step: Array  # int32[]


def init_opt_state(params, row_tx: RowTransform, dense_tx: optax.GradientTransformation) -> SparseOptState:
    lay = layout(params)
    packed = _pack_params(params, lay)
    rows = {side: row_tx.init(packed[side]) for side, _ in lay.width}
    dense = {name: getattr(params, name) for name in lay.dense}
    return SparseOptState(rows, dense_tx.init(dense))


def _pack_params(params, lay: Layout) -> dict:
    out = {}
    for side, _ in lay.width:
        cols = [getattr(params, name).reshape(getattr(params, name).shape[0], -1)
                for name, s, *_ in lay.fields if s == side]
        out[side] = jnp.concatenate(cols, axis=1) if len(cols) > 1 else cols[0]
    return out


def _unpack_rows(rows: dict, lay: Layout, params_like, dense: dict, index: dict | None = None):
    """A Params whose side fields are read from ``rows[side]`` (any number of rows); with
    ``index``, from rows ``index[side]`` of it, one gather per field of just its columns."""
    values = dict(dense)
    for name, side, start, stop, shape in lay.fields:
        block = rows[side][:, start:stop] if index is None else rows[side][index[side], start:stop]
        values[name] = block.reshape((block.shape[0],) + shape)
    return type(params_like)(**values)


def pack(state, lay: Layout):
    """`TrainState` (params + `SparseOptState`) -> `Carry`, once per epoch."""
    params, opt = state.params, state.opt_state
    packed = _pack_params(params, lay)
    tables = {side: jnp.concatenate([packed[side], opt.rows[side]], axis=1) for side, _ in lay.width}
    slots = {side: jnp.zeros(tables[side].shape[0], jnp.int32) for side, _ in lay.width}
    dense = {name: getattr(params, name) for name in lay.dense}
    return Carry(tables, slots, dense, opt.dense, state.step)


def unpack(carry: Carry, lay: Layout, params_like, state_cls):
    """`Carry` -> `TrainState`, at the end of the epoch."""
    params = _unpack_rows(carry.tables, lay, params_like, carry.dense)
    width = dict(lay.width)
    rows = {side: carry.tables[side][:, width[side]:] for side in width}
    return state_cls(params, SparseOptState(rows, carry.dense_state), carry.step)


def make_sparse_update(objective: Callable, row_tx: RowTransform, dense_tx: optax.GradientTransformation,
                       schedule: Callable, lay: Layout, params_like, plan=None) -> Callable:
    """``update(carry, batch, key) -> (carry, loss)``: one row-sparse step (module docstring).

    ``objective(params, batch, key)`` is `recsys_jax.engine.step.make_objective`'s; it is called
    with local tables and a batch whose users and items are `recsys_jax.models._common.Local`.

    With ``plan`` (a `recsys_jax.engine.sharding.MeshPlan`: packed tables and slots split by rows,
    the batch by examples) every read and write of a table row goes through
    `recsys_jax.engine.sharding.take_rows` / `update_rows`, which exchange batch-sized arrays only.
    """
    width = dict(lay.width)
    if plan is None:
        def take(table, index):
            return table[index]

        def write(table, index, values, fn, *args):
            return fn(table, index, values, *args)
    else:
        from recsys_jax.engine.sharding import take_rows, update_rows

        def take(table, index):
            return take_rows(plan, table, index)

        def write(table, index, values, fn, *args):
            return update_rows(plan, table, index, values, fn, *args)

    def update(carry: Carry, batch, key: Array) -> tuple[Carry, Array]:
        b = batch.users.shape[0]
        iota = jnp.arange(b, dtype=jnp.int32)
        index = {"user": batch.users, "item": batch.items}
        if plan is None:
            local = _unpack_rows(carry.tables, lay, params_like, carry.dense, index)
            rows = None
            if row_tx.scatter is None:
                rows = {side: (carry.tables[side][index[side], :d], carry.tables[side][index[side], d:])
                        for side, d in width.items()}
        else:
            rows = {side: take(carry.tables[side], index[side]) for side in width}  # the one gather per side
            local = _unpack_rows({s: r[:, : width[s]] for s, r in rows.items()}, lay, params_like, carry.dense)
            rows = {side: (r[:, : width[side]], r[:, width[side]:]) for side, r in rows.items()}
        here = Local(b)  # the local tables' row b is example b's
        loss, grads = jax.value_and_grad(objective)(local, batch._replace(users=here, items=here), key)
        lr = schedule(carry.step)
        count = carry.step + 1
        live = batch.mask.astype(jnp.float32)
        tables, slots = dict(carry.tables), dict(carry.slots)
        for side, d in width.items():
            idx = index[side]
            g = jnp.concatenate([getattr(grads, name).reshape(b, -1) for name, s, *_ in lay.fields if s == side],
                                axis=1)
            if row_tx.scatter is not None:  # padding examples have zero gradients: they change nothing
                tables[side] = write(tables[side], idx, g, row_tx.scatter, count, lr)
                continue
            slots[side] = write(carry.slots[side], idx, iota, _set)
            rep = take(slots[side], idx)
            merged = jnp.zeros_like(g).at[rep].add(g)
            used = jnp.zeros((b,), jnp.float32).at[rep].add(live) > 0
            new_p, new_s = row_tx.update(merged, rows[side][1], rows[side][0], count, lr)
            n = tables[side].shape[0]
            # Non-representatives (and rows only padding touched) write out of bounds, each to
            # its own index, so the written indices are unique and the dropped ones vanish.
            target = jnp.where((rep == iota) & used, idx, n + iota)
            if plan is None:
                tables[side] = tables[side].at[target, :d].set(new_p, mode="drop", unique_indices=True)
                tables[side] = tables[side].at[target, d:].set(new_s, mode="drop", unique_indices=True)
            else:
                tables[side] = write(tables[side], target, jnp.concatenate([new_p, new_s], axis=1), _set_unique)
        dense_grads = {name: getattr(grads, name) for name in lay.dense}
        updates, dense_state = dense_tx.update(dense_grads, carry.dense_state, carry.dense)
        dense = optax.apply_updates(carry.dense, updates)
        return Carry(tables, slots, dense, dense_state, count), loss

    return update


def fused_layout(lay: Layout) -> bool | None:
    """Whether the packed tables suit the fused kernel (`make_fused_update`): True
    for ``[bias, factors]`` rows on both sides (the bias model), False for ``[factors]``
    (dot), None for any other layout (the kernel does not apply)."""
    sides = {}
    for name, side, start, stop, shape in lay.fields:
        sides.setdefault(side, []).append((name.split("_", 1)[1], start, stop, shape))
    if set(sides) != set(SIDES) or dict(lay.width)["user"] != dict(lay.width)["item"]:
        return None
    kinds = {tuple((what, start, stop - start) for what, start, stop, _ in fields) for fields in sides.values()}
    width = dict(lay.width)["user"]
    if kinds == {(("factors", 0, width),)}:
        return False
    if kinds == {(("bias", 0, 1), ("factors", 1, width - 1))}:
        return True
    return None


FUSED = ("sgd", "adagrad", "lazy_adam")  # the row optimizers the kernel does, by its "rule" number


def make_fused_update(optimizer: str, dense_tx: optax.GradientTransformation, schedule: Callable, lay: Layout, *,
                      l2: float, bias_l2: float, global_mean: bool) -> Callable:
    r"""``update(carry, batch, key) -> (carry, loss)``: the ``sgd``, ``adagrad`` or
    ``lazy_adam`` step (`sgd`, `rowwise_adagrad`, `lazy_adam` with their default
    constants) of the bias or dot model with
    squared error and L2 on the touched rows, done by the CPU kernel `recsys_jax.engine.kernels`
    (``mf_sgd.cc``) in place of `make_sparse_update`'s XLA step. The same objective and
    update: the kernel returns the batch's loss and :math:`\partial L/\partial\mu`, and
    :math:`\mu` (``global_bias``) is updated here by the dense transformation, as in
    `make_sparse_update`. ``global_mean=False``: the model has no :math:`\mu` (0, untouched)."""
    if optimizer not in FUSED:
        raise ValueError(f"make_fused_update: optimizer {optimizer!r} is not one of {FUSED}")
    has_bias = fused_layout(lay)
    if has_bias is None:
        raise ValueError("make_fused_update: the tables are not [bias, factors] or [factors] rows")

    def update(carry: Carry, batch, key: Array) -> tuple[Carry, Array]:
        user, item = carry.tables["user"], carry.tables["item"]
        mu = carry.dense["global_bias"] if (has_bias and global_mean) else jnp.zeros((), jnp.float32)
        t = (carry.step + 1).astype(jnp.float32)  # lazy Adam's bias corrections, as lazy_adam computes them
        scalars = jnp.stack([mu, jnp.asarray(schedule(carry.step), jnp.float32),
                             1 - LAZY_ADAM["b1"] ** t, 1 - LAZY_ADAM["b2"] ** t]).astype(jnp.float32)
        out = (jax.ShapeDtypeStruct(user.shape, user.dtype), jax.ShapeDtypeStruct(item.shape, item.dtype),
               jax.ShapeDtypeStruct((2,), jnp.float32))
        kernel = jax.ffi.ffi_call("recsys_mf_sgd_step", out, input_output_aliases={0: 0, 1: 1},
                                  vmap_method="sequential")
        user, item, stats = kernel(user, item, batch.users, batch.items, batch.ratings,
                                   batch.mask.astype(jnp.float32), scalars, l2=np.float32(l2),
                                   bias_l2=np.float32(bias_l2), has_bias=np.int32(has_bias),
                                   rule=np.int32(FUSED.index(optimizer)),
                                   eps=np.float32(LAZY_ADAM["eps"] if optimizer == "lazy_adam" else ADAGRAD_EPS),
                                   b1=np.float32(LAZY_ADAM["b1"]), b2=np.float32(LAZY_ADAM["b2"]),
                                   rest1=np.float32(1 - LAZY_ADAM["b1"]), rest2=np.float32(1 - LAZY_ADAM["b2"]))
        dense, dense_state = carry.dense, carry.dense_state
        if lay.dense:
            grads = {name: jnp.zeros_like(value) for name, value in carry.dense.items()}
            if has_bias and global_mean:
                grads["global_bias"] = stats[1]
            updates, dense_state = dense_tx.update(grads, carry.dense_state, carry.dense)
            dense = optax.apply_updates(carry.dense, updates)
        return Carry({"user": user, "item": item}, carry.slots, dense, dense_state, carry.step + 1), stats[0]

    return update
