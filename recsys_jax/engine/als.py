r"""Alternating least squares: each epoch solves every user's row, then every item's, exactly.

For the dot-product family with squared error (``dot``; ``bias`` without a y-range) the
objective that `recsys_jax.training.fit.fit` minimises, summed over the training ratings
:math:`\Omega`, is

.. math::

   \sum_{(u,i)\in\Omega} (\mu + b_u + b_i + p_u^\top q_i - r_{ui})^2
   + \sum_u n_u (\lambda \lVert p_u\rVert^2 + \lambda_b b_u^2)
   + \sum_i n_i (\lambda \lVert q_i\rVert^2 + \lambda_b b_i^2)

(``dot``: no :math:`\mu`, no biases), :math:`n_u`, :math:`n_i` the numbers of training
ratings of :math:`u` and :math:`i`: the per-example L2 of `recsys_jax.objectives.penalties`
(``penalty="touched"``) counts a row once per rating that touches it, which is the
weighted-:math:`\lambda` regularisation of ALS-WR (Zhou et al., 2008). With the items
fixed it is, for each user, a ridge regression with a closed-form solution. Write
:math:`x_u = (p_u, b_u)`, :math:`z_i = (q_i, 1)` and :math:`t_{ui} = r_{ui} - \mu - b_i`:

.. math::

   \Bigl(\sum_{i \in \Omega_u} z_i z_i^\top + n_u \Lambda\Bigr)\, x_u = \sum_{i \in \Omega_u} t_{ui}\, z_i,
   \qquad \Lambda = \operatorname{diag}(\lambda, \dots, \lambda, \lambda_b),

solved by conjugate gradient (the matrix is symmetric positive definite when
:math:`\lambda > 0`), `CG_STEPS` iterations started from the row's current value, as the
implicit library and Spark do: with warm starts a few iterations track the exact
solution from epoch to epoch (tested against NumPy's solve), and each iteration lowers
the row's quadratic, so the objective never increases (tested). An epoch is: every
user's :math:`x_u` (items fixed), then every item's (users fixed), then :math:`\mu` set
to the mean residual, its own closed form (``global_mean=False``: no :math:`\mu`). Users
and items without training ratings keep their initial rows, as they do under the
row-sparse optimizers. The learning rate, schedule and batch size do not apply; the
reported training loss is the objective (divided by :math:`|\Omega|`) after the item
step, before :math:`\mu` moves.

How it runs. Once per training set (`make_plan`, on the host, built by the first epoch
and counted in its time), each side's ratings are sorted by row, each row cut into
pieces of `PIECE` slots (the last one padded with a slot pointing at a zero row), and
whole rows packed into chunks of ``G`` pieces (`CHUNK_PIECES`, or the power of two that
holds the longest row). A chunk is one jitted call: one gather of the fixed side's rows,
``[G, PIECE, W + 1]``, then every matrix-vector product of the conjugate gradient as two
batched contractions over it (per-piece sums added into rows), and the residuals' sums
for the loss and :math:`\mu`. The compiled program depends only on ``G``, the table
shapes and the width, so it is compiled once per side and a second training set of the
same shape reuses it; the rows are written back with one scatter per side. Work per
epoch is :math:`O(|\Omega|\,W\,(2 \cdot \mathrm{CG\_STEPS} + 2))`: dense contractions and
one gather per rating and side, where SGD runs a gather and a scatter per rating and
table at every step.
"""
from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp

from recsys_jax.engine.options import EngineOptions
from recsys_jax.engine.step import TrainState
from recsys_jax.models import MODELS, get_model
from recsys_jax.models.row_chunks import PIECE, Plan, SidePlan, chunk_pieces, make_plan
from recsys_jax.objectives.losses import mse

CG_STEPS = 3  # conjugate-gradient iterations per row and epoch, from the current row


def extended(table, biases: bool):
    """The fixed side as the chunk solver reads it, ``float32[N + 1, W + 1]``: each row's
    design vector :math:`z` (factors, then a 1 for the bias when ``biases``), then its
    offset (its bias, or 0), then a zero row that padding slots point at (design 0: they
    drop out of every sum)."""
    if biases:
        body = jnp.concatenate([table[:, :-1], jnp.ones_like(table[:, :1]), table[:, -1:]], axis=1)
    else:
        body = jnp.concatenate([table, jnp.zeros_like(table[:, :1])], axis=1)
    return jnp.concatenate([body, jnp.zeros_like(body[:1])], axis=0)


@functools.partial(jax.jit, static_argnames=("cg_steps",))
def _solve_chunk(own_table, other_ext, rows, piece_row, other, vals, offset, reg, *, cg_steps: int):
    r"""One chunk's normal equations, by conjugate gradient from the rows' current values:
    ``(x[G, W], sum of residuals, sum of squared residuals)``.

    ``own_table`` is ``float32[N, W]``, ``other_ext`` the fixed side's `extended` table;
    padding slots point at its last row and have rating 0; ``offset`` is :math:`\mu`
    (with biases, else 0); ``reg`` the diagonal :math:`\Lambda`."""
    g, width = rows.shape[0], own_table.shape[1]
    # One gather of whole extended rows, used as they are: slicing the design columns out
    # would make XLA fuse the gather into the slice, element by element (much slower). The
    # offset column is masked out of every product instead (keep), so all vectors below
    # are [G, W + 1] with a last entry that stays 0.
    z = other_ext[other]  # [G, PIECE, W + 1]
    keep = jnp.arange(width + 1) < width
    # t = r - mu - b_other on real slots; 0 on padding (whose design row is 0 as well)
    t = vals - (offset + z[..., width]) * (other < other_ext.shape[0] - 1)

    def to_rows(per_piece):  # [G pieces, ...] -> [G local rows, ...]: each row's sum over its pieces
        return jnp.zeros((g,) + per_piece.shape[1:], per_piece.dtype).at[piece_row].add(per_piece, mode="drop")

    def per_piece(v):  # each piece's row of v [G local rows, W + 1]
        return v.at[piece_row].get(mode="fill", fill_value=0.0)

    def zt(s):  # Z^T s for every local row, the offset column dropped
        return jnp.where(keep, to_rows(jnp.einsum("glw,gl->gw", z, s)), 0.0)

    n = to_rows(jnp.sum((other < other_ext.shape[0] - 1).astype(jnp.float32), axis=1))  # [G]
    damp = n[:, None] * jnp.concatenate([reg, jnp.zeros((1,), reg.dtype)])  # n_u Lambda (0 on the offset)

    def z_times(v):  # Z v, per slot
        return jnp.einsum("glw,gw->gl", z, per_piece(v))

    x = jnp.pad(own_table.at[rows].get(mode="fill", fill_value=0.0), ((0, 0), (0, 1)))
    # The residual t - Z x is kept per slot and updated with each step's Z p (as x is with
    # p), so it costs no pass over z of its own: 2 passes per CG step, 2 for the start.
    res = t - z_times(x)  # 0 on padding
    r = zt(res) - damp * x  # Z^T (t - Z x) - damp x
    p, rs = r, jnp.sum(r * r, axis=1)
    for _ in range(cg_steps):
        zp = z_times(p)
        ap = zt(zp) + damp * p
        pap = jnp.sum(p * ap, axis=1)
        alpha = jnp.where(pap > 0, rs / jnp.where(pap > 0, pap, 1.0), 0.0)
        x = x + alpha[:, None] * p
        res = res - per_piece(alpha[:, None])[..., 0:1] * zp
        r = r - alpha[:, None] * ap
        rs_new = jnp.sum(r * r, axis=1)
        p = r + jnp.where(rs > 0, rs_new / jnp.where(rs > 0, rs, 1.0), 0.0)[:, None] * p
        rs = rs_new
    x = x[:, :width]
    return x, jnp.sum(res), jnp.sum(jnp.square(res))


_extended = jax.jit(extended, static_argnames="biases")


@jax.jit
def _write_rows(table, rows, x):
    return table.at[rows].set(x, mode="drop")


def _solve_side(side: SidePlan, own_table, other_table, offset, reg, biases: bool, cg_steps: int):
    """Every row of one side solved; ``(new table, sum of residuals, sum of squares)``."""
    xs, res, sq = [], 0.0, 0.0
    ext = _extended(other_table, biases)
    for rows, piece_row, other, vals in zip(side.rows, side.piece_row, side.other, side.ratings):
        x, s1, s2 = _solve_chunk(own_table, ext, rows, piece_row, other, vals, offset, reg, cg_steps=cg_steps)
        xs.append(x)
        res, sq = res + s1, sq + s2
    table = _write_rows(own_table, jnp.concatenate(side.rows), jnp.concatenate(xs))
    return table, res, sq


def _tables(params, biases: bool):
    if biases:
        return (jnp.concatenate([params.user_factors, params.user_bias[:, None]], axis=1),
                jnp.concatenate([params.item_factors, params.item_bias[:, None]], axis=1))
    return params.user_factors, params.item_factors


def _params(params, user_table, item_table, biases: bool, mu=None):
    if not biases:
        return params._replace(user_factors=user_table, item_factors=item_table)
    return params._replace(user_factors=user_table[:, :-1], user_bias=user_table[:, -1],
                           item_factors=item_table[:, :-1], item_bias=item_table[:, -1],
                           global_bias=params.global_bias if mu is None else mu)


def epoch(params, plan: Plan, *, l2: float, bias_l2: float, biases: bool, global_mean: bool,
          cg_steps: int | None = None):
    """One ALS epoch (the module docstring): ``(params, training objective / |Omega|)``."""
    cg_steps = CG_STEPS if cg_steps is None else cg_steps
    d = params.user_factors.shape[1]
    reg = jnp.asarray([l2] * d + ([bias_l2] if biases else []), jnp.float32)
    mu = params.global_bias if biases and global_mean else jnp.zeros((), jnp.float32)
    users, items = _tables(params, biases)
    users, _, _ = _solve_side(plan.user, users, items, mu, reg, biases, cg_steps)
    items, res, sq = _solve_side(plan.item, items, users, mu, reg, biases, cg_steps)
    penalty = (jnp.sum(plan.user.counts[:, None] * jnp.square(users) * reg)
               + jnp.sum(plan.item.counts[:, None] * jnp.square(items) * reg))
    loss = (sq + penalty) / plan.num_ratings
    if biases and global_mean:
        mu = mu + res / plan.num_ratings  # the mean residual: mu's closed form
    return _params(params, users, items, biases, mu if biases and global_mean else None), loss


class AlsEngine:
    """The `recsys_jax.engine.build.Engine` face of ALS, for `recsys_jax.training.loop.engine_trainer`:
    ``compile`` builds the data's `Plan` (once per training set) and compiles the chunk
    solvers; the returned epoch maps ``(state, users, items, ratings, key)`` to
    ``(state, losses[1])``."""

    optimizer = "als"
    kernel = None  # `Engine.kernel`: no step, so no step kernel

    def __init__(self, model: str, model_config, train_config, options: EngineOptions = EngineOptions()):
        self.options = options  # `Engine.options`: ALS calls no CPU kernel and stores no program
        self.biases = get_model(model).factorization == "biased"
        self.global_mean = self.biases and getattr(model_config, "global_mean", True)
        self.l2, self.bias_l2 = float(train_config.l2), float(train_config.bias_l2)
        self._plans: dict = {}
        self.plan_seconds = 0.0  # host time spent building plans (inside the epochs that built them)

    def init(self, params):
        return TrainState(params, (), jnp.zeros((), jnp.int32))

    def _plan(self, params, users, items, ratings) -> Plan:
        key = (id(users), id(items), id(ratings))
        if key not in self._plans:
            t0 = time.perf_counter()
            plan = make_plan(users, items, ratings, params.user_factors.shape[0], params.item_factors.shape[0])
            self.plan_seconds += time.perf_counter() - t0
            self._plans = {key: (plan, (users, items, ratings))}  # keeps the arrays alive: ids stay unique
        return self._plans[key][0]

    def compile(self, state, users, items, ratings, key, *, num_steps=None, times=None, aux=None):
        """``(epoch_fn, seconds)``: the chunk solvers compiled ahead of time for these shapes
        (``seconds``: 0 when both already were, in this process). The data's `Plan` is
        built by the first epoch that needs it, so that epoch's time includes it."""
        t0, compiled_any = time.perf_counter(), False
        users_t, items_t = _tables(state.params, self.biases)
        reg = jax.ShapeDtypeStruct((users_t.shape[1],), jnp.float32)
        for own_idx, own, other in ((users, users_t, items_t), (items, items_t, users_t)):
            g = chunk_pieces(own_idx, own.shape[0])
            sig = (g, own.shape, other.shape, self.biases)
            if sig not in _COMPILED:
                i32 = jax.ShapeDtypeStruct((g,), jnp.int32)
                slots = jax.ShapeDtypeStruct((g, PIECE), jnp.int32)
                vals = jax.ShapeDtypeStruct((g, PIECE), jnp.float32)
                ext = jax.ShapeDtypeStruct((other.shape[0] + 1, other.shape[1] + 1), jnp.float32)
                _solve_chunk.lower(own, ext, i32, i32, slots, vals, jax.ShapeDtypeStruct((), jnp.float32), reg,
                                   cg_steps=CG_STEPS).compile()
                _COMPILED.add(sig)
                compiled_any = True
        seconds = time.perf_counter() - t0 if compiled_any else 0.0

        def run(state, users, items, ratings, key, times=None, aux=None, num_steps=None):
            params, loss = epoch(state.params, self._plan(state.params, users, items, ratings), l2=self.l2,
                                 bias_l2=self.bias_l2, biases=self.biases, global_mean=self.global_mean)
            return state._replace(params=params, step=state.step + 1), loss[None]

        return run, seconds

    def run(self, state, users, items, ratings, key, *, num_steps=None, times=None, aux=None):
        fn, _ = self.compile(state, users, items, ratings, key)
        return fn(state, users, items, ratings, key)


_COMPILED: set = set()  # chunk-solver signatures compiled in this process (jit caches the programs)


def check(model: str, model_config, train_config, loss_fn, penalty_fn, joint: bool) -> None:
    """A clear error when ALS cannot train this setting exactly."""
    what = None
    if get_model(model).factorization is None:
        solvable = ", ".join(name for name, spec in MODELS.items() if spec.factorization is not None)
        what = f"it solves the dot-product models ({solvable}), not {model!r}"
    elif getattr(model_config, "y_range", None) is not None:
        what = "a y-range squash makes the model nonlinear in its rows"
    elif joint or loss_fn is not mse:
        what = "it minimises squared error (loss 'mse') only"
    elif penalty_fn is not None or train_config.penalty != "touched" or train_config.weight_decay:
        what = "it solves the per-rating L2 of penalty='touched' (l2, bias_l2) only"
    elif not train_config.l2 > 0:
        what = "l2 must be > 0 (each user's and item's system is singular without it)"
    if what:
        raise ValueError(f"optimizer 'als' (alternating least squares): {what}")

