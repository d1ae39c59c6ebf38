"""What every model module shares: the batched face of `predict_one`."""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array


class Local:
    """The users (or items) of a batch whose side tables hold the batch's own rows.

    The row-sparse step (`recsys_jax.engine.sparse`) gathers each example's rows once and runs the
    model on those local tables: row ``b`` of every ``user_*`` / ``item_*`` field belongs to
    example ``b``. Passed as ``users`` and ``items``, a ``Local`` tells `batched` to hand
    each example its own row directly. Indexing the local tables with ``0..B-1`` instead
    would give the same values, but XLA then gathers the ``[B, D]`` rows again and its
    gradient is a ``[B, D]`` scatter-add, a sizeable share of a sparse step at batch
    8192 on the CPU. Valid for row-local models only (spec ``row_local=True``: tables read
    only at the pair's own rows), which are the ones the sparse step trains."""

    def __init__(self, size: int):
        self.shape = (int(size),)

    def __repr__(self) -> str:
        return f"Local({self.shape[0]})"


def _side_axes(params):
    """vmap ``in_axes`` for ``params``: 0 for the ``user_*`` / ``item_*`` fields, else None."""
    return type(params)(**{name: 0 if name.startswith(("user_", "item_")) else None for name in params._fields})


def batched(predict_one, *, stochastic: bool = False, uses_aux: bool = False, uses_time: bool = False):
    """``apply(params, users[B], items[B], key=None, *, config, aux=None, times=None) -> float32[B]``.

    Built from ``predict_one(params, user, item, key, *, config[, aux][, time])``:
    parameters (and ``aux``, the constant data a model derives from the training split)
    are shared across the batch (``in_axes=None``); users, items and ``times`` are mapped.
    A key (for dropout) is split into one key per example so each pair draws its own mask;
    with no key the model runs in inference mode. ``config`` carries static
    hyperparameters; it is a hashable NamedTuple. Every model's ``apply`` takes the same
    arguments; a model ignores what it does not use (``uses_aux``, ``uses_time``), and a
    model that is not ``stochastic`` ignores the key (no per-example key splitting).
    """

    def apply(params, users: Array, items: Array, key: Array | None = None, *, config=None,
              aux=None, times: Array | None = None) -> Array:
        kw = {} if config is None else {"config": config}
        if uses_aux:
            if aux is None:
                raise ValueError(f"{predict_one.__module__}: this model needs aux (from its prepare())")
            kw["aux"] = aux
        mapped = [users, items]
        if uses_time:
            if times is None:
                raise ValueError(f"{predict_one.__module__}: this model needs times (days since the epoch)")
            mapped.append(times)

        if isinstance(users, Local):  # local tables: example b's rows are row b (see Local)
            rows = params._replace(**{name: getattr(params, name)[:, None] for name in params._fields
                                      if name.startswith(("user_", "item_"))})

            def one_local(p, *rest, k=None):
                extra = {"time": rest[0]} if uses_time else {}
                return predict_one(p, 0, 0, k, **kw, **extra)

            axes = _side_axes(params)
            rest = mapped[2:]
            if key is None or not stochastic:
                return jax.vmap(one_local, in_axes=(axes, *[0] * len(rest)))(rows, *rest)
            keys = jax.random.split(key, users.shape[0])
            return jax.vmap(lambda p, *xs: one_local(p, *xs[:-1], k=xs[-1]),
                            in_axes=(axes, *[0] * (len(rest) + 1)))(rows, *rest, keys)

        def one(u, i, *rest, k=None):
            extra = {"time": rest[0]} if uses_time else {}
            return predict_one(params, u, i, k, **kw, **extra)

        if key is None or not stochastic:
            return jax.vmap(one)(*mapped)
        keys = jax.random.split(key, users.shape[0])
        return jax.vmap(lambda *xs: one(*xs[:-1], k=xs[-1]))(*mapped, keys)

    apply.__doc__ = f"Batched over (users[B], items[B]):\n\n    {predict_one.__doc__}"
    return apply


def biased_product(left: Array, right: Array, left_bias: Array | None = None,
                   right_bias: Array | None = None) -> Array:
    r"""``left @ right.T + left_bias[:, None] + right_bias[None, :]``, ``float32[U, I]``, as one
    matrix product of the augmented factors :math:`[L,\ b_L,\ 1]\,[R,\ 1,\ b_R]^\top`.

    XLA on the CPU adds broadcast terms to a large product in passes of their own that cost
    more than the product itself: for ml-latest-small's 610 x 9,724 bias-model scores the
    augmented product took little more than the product alone, and much less than adding
    the biases after it. The sums agree to float32 rounding."""
    lcols, rcols = [left], [right]
    if left_bias is not None:
        lcols.append(left_bias[:, None].astype(left.dtype))
        rcols.append(jnp.ones((right.shape[0], 1), right.dtype))
    if right_bias is not None:
        lcols.append(jnp.ones((left.shape[0], 1), left.dtype))
        rcols.append(right_bias[:, None].astype(right.dtype))
    if len(lcols) == 1:
        return left @ right.T
    return jnp.concatenate(lcols, axis=1) @ jnp.concatenate(rcols, axis=1).T


def scaled_normal(key: Array, shape: tuple[int, ...], scale: float) -> Array:
    """``scale * N(0, 1)`` draws, float32. The barrier keeps XLA from folding ``scale`` into
    the draw's own arithmetic, so that the compiled init (`recsys_jax.engine.build.init_params`)
    gives the same numbers, to the bit, as the init run op by op."""
    return scale * jax.lax.optimization_barrier(jax.random.normal(key, shape, jnp.float32))


def embedding_init(key: Array, shape: tuple[int, ...], config) -> Array:
    """An embedding table: N(0, s^2) (``config.init == "normal"``) or U(-s, s) (``"uniform"``,
    Keras' default embedding initialiser), with ``s = config.init_scale``."""
    kind, s = getattr(config, "init", "normal"), config.init_scale
    if kind == "normal":
        return scaled_normal(key, shape, s)
    if kind == "uniform":
        return jax.random.uniform(key, shape, jnp.float32, -s, s)
    raise ValueError(f"init must be 'normal' or 'uniform', got {kind!r}")


class Offset(NamedTuple):
    """``mean_rating``'s stand-in inside `recsys_jax.engine.build.init_params`' compiled init: the
    offset itself, computed on the host from the real config, as an argument of the program."""

    value: Array  # float32[]


def initial_offset(config) -> float | Array:
    """The constant term that makes an untrained model predict the training mean.

    With a y-range ``(lo, hi)`` the output is squashed by a sigmoid, so the offset is the
    logit of where the mean sits in the range. A model configured with
    ``global_mean=False`` (the course notebook's models) starts at 0 instead. Inside the
    compiled init (``config.mean_rating`` an `Offset`) it is the offset passed in.
    """
    if isinstance(getattr(config, "mean_rating", None), Offset):
        return config.mean_rating.value
    if not getattr(config, "global_mean", True):
        return 0.0
    mean = config.mean_rating
    if getattr(config, "y_range", None) is None:
        return float(mean)
    lo, hi = config.y_range
    p = min(max((mean - lo) / (hi - lo), 1e-4), 1 - 1e-4)
    return math.log(p) - math.log1p(-p)


def users_rows(params, users: Array):
    """``params`` with every ``user_*`` table cut to the rows of ``users``."""
    return params._replace(**{f: getattr(params, f)[users] for f in params._fields if f.startswith("user_")})


def row_weights(index: Array, weight: Array, num_rows: int) -> Array:
    """``c[r] = sum of weight[b] over the examples b with index[b] == r``: float32[num_rows].
    For a `Local` index (row b is example b's own) that is ``weight``."""
    if isinstance(index, Local):
        return weight
    return jnp.zeros(num_rows, jnp.float32).at[index].add(weight)


def weighted_sq_norm(table: Array, row_weight: Array) -> Array:
    """``sum_r row_weight[r] * |table[r]|^2``: a dense weighted sum over the table."""
    return jnp.sum(row_weight * jnp.square(table).reshape(table.shape[0], -1).sum(axis=1))
