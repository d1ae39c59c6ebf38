r"""iALS: implicit-feedback matrix factorization by alternating least squares (Hu, Koren &
Volinsky 2008), in the formulation and with the regularisation of Rendle et al. 2021,
"Revisiting the performance of iALS on item recommendation benchmarks".

The ratings become implicit feedback: the positives :math:`S` are the training pairs rated
at least ``threshold`` (4 stars by default, as in Liang et al. 2018 and Rendle et al. 2021).
A user's score for an item is

.. math::

   \hat y_{ui} = p_u^\top q_i,

the same form as the ``dot`` model, and training minimises

.. math::

   L = \sum_{(u,i) \in S} (\hat y_{ui} - 1)^2
     + \alpha_0 \sum_{u} \sum_{i} \hat y_{ui}^2
     + \sum_u \lambda_u \lVert p_u \rVert^2 + \sum_i \lambda_i \lVert q_i \rVert^2,
   \qquad \lambda_u = \lambda\,(|S_u| + \alpha_0 |I|)^{\nu},

the second sum over *every* pair (``unobserved_weight`` :math:`\alpha_0`), the
regularisation scaled by each row's frequency (``l2`` :math:`\lambda`, ``nu``
:math:`\nu`; Rendle et al.'s frequency-based scaling, :math:`\nu = 1` by default). Hu et
al.'s confidence :math:`c = 1 + \alpha` for the positives and 1 elsewhere is the same
objective up to a factor: :math:`\alpha_0 = 1 / (1 + \alpha)`. With the items fixed, each
user's row is a ridge regression with a closed form:

.. math::

   \Bigl(\alpha_0 G + \sum_{i \in S_u} q_i q_i^\top + \lambda_u I\Bigr) p_u = \sum_{i \in S_u} q_i,
   \qquad G = \sum_{i} q_i q_i^\top = Q^\top Q,

so the unobserved pairs cost one :math:`k \times k` Gramian per half-step, not a pass over
the catalogue (Hu et al.'s observation). An epoch: every user, then every item. A row with
no positives becomes 0, its exact minimiser.

Two solvers. ``solver="cg"`` (the default) takes ``cg_steps`` conjugate-gradient steps per
row from its current value (as the implicit library and Spark do; the matrix is never
formed, so a step costs :math:`O(|S_u| k + k^2)`): each step lowers the row's quadratic, so
:math:`L` never increases (tested), and :math:`k` steps are the exact solve.
``solver="cholesky"`` solves every row exactly (a Cholesky solve of its :math:`k \times k`
system): each half-step then minimises :math:`L` over one side (tested, the updates
against a float64 reference). On ml-latest-small (random 80/20 splits of seeds 0 and 1,
the defaults below) the two rank alike, NDCG@10 0.2874 and 0.2901 for ``cg`` against 0.2861
and 0.2898 for the exact solve, and ``cg`` fits in 0.3 s instead of 7-9 s on two cores.

How it runs. ``cg`` on the CPU, where the kernels are built (`recsys_jax.engine.kernels`):
one hand-written kernel per half-step, the formulas of the XLA path row by row on every
core, each row's positives kept in the cache across its steps (work :math:`O(s(|S| k +
(U + I) k^2))` for :math:`s` steps; tested against the XLA path; at the ML-25M shape an
epoch takes about half of an implicit ALS iteration, ``python -m benchmarks.ials_scale``).
Otherwise the positives are grouped by row in chunks (`recsys_jax.models.row_chunks`, as
the ALS engine and BPMF do): per chunk one gather of the fixed side's rows, then the
conjugate-gradient steps batched, or the per-row sums :math:`\sum q_i q_i^\top` as one
batched contraction and a batched Cholesky solve; one compiled program per side and chunk
size (Cholesky's work per epoch: :math:`O(|S| k^2 + (U + I) k^3)`).

Its scores rank items; they are not ratings (``ModelSpec.ranks``): `recsys_jax.training.fit.fit`
runs it for ``train_config.epochs`` iterations (the last one kept: there is no rating to
validate on), `recsys_jax.training.experiment.run_experiment` scores its test part with
ranking metrics beside popularity, and `Recommender.predict` refuses it.
"""
from __future__ import annotations

import functools
from typing import Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from recsys_jax.models.dot import Params, apply, block_scores, predict_one, score_matrix
from recsys_jax.models.row_chunks import SidePlan, make_plan
from recsys_jax.models.spec import FoldIn, ModelSpec


# unobserved_weight and l2 chosen on the validation slice (10%) of seed 0's training split of
# ml-latest-small, NDCG@10 after 15 epochs, 64 factors, nu = 1: alpha_0 in {0.01, 0.03, 0.1, 0.3}
# x lambda in {0.001, 0.003, 0.01, 0.03}; the best, 0.1 and 0.01 (0.149; popularity 0.082), with
# 0.03 and 0.03 next (0.147). (Chosen with solver="cholesky"; "cg", now the default, ranks alike:
# see the module docstring.)
class Config(NamedTuple):
    embedding_dim: int = 64
    unobserved_weight: float = 0.1  # alpha_0: the weight of every pair's squared score
    l2: float = 0.01  # lambda, scaled per row by (|S_u| + alpha_0 |I|) ** nu
    nu: float = 1.0  # the frequency scaling's exponent (0: one lambda for every row)
    threshold: float = 4.0  # a training rating at least this is a positive
    init_scale: float = 0.1  # std of the init, divided by sqrt(embedding_dim)
    solver: str = "cg"  # "cg": cg_steps conjugate-gradient steps from the row; "cholesky": every row exact
    cg_steps: int = 3  # solver="cg": steps per row and half-epoch, warm-started (as implicit and Spark do)
    mean_rating: float = 3.5  # unused: kept so every model takes the same fields
    y_range: tuple[float, float] | None = None  # not supported (the objective is on raw scores)


# Params (user_factors float32[U, K], item_factors float32[I, K]) and the scores are dot's.


def init(key: Array, num_users: int, num_items: int, config: Config = Config()) -> Params:
    """Factors drawn from N(0, (init_scale / sqrt(K))^2)."""
    ukey, ikey = jax.random.split(key)
    k = int(config.embedding_dim)
    scale = config.init_scale / np.sqrt(k)
    return Params(scale * jax.random.normal(ukey, (num_users, k), jnp.float32),
                  scale * jax.random.normal(ikey, (num_items, k), jnp.float32))


def check_config(config: Config) -> None:
    if config.solver not in ("cholesky", "cg"):
        raise ValueError(f"ials: solver must be 'cholesky' or 'cg', got {config.solver!r}")
    if config.solver == "cg" and int(config.cg_steps) < 1:
        raise ValueError(f"ials: cg_steps must be >= 1, got {config.cg_steps}")
    if config.y_range is not None:
        raise ValueError("ials: y_range is not supported (the objective is on the raw scores)")
    if not config.unobserved_weight > 0:
        raise ValueError(f"ials: unobserved_weight must be > 0, got {config.unobserved_weight}")
    if not config.l2 >= 0 or not config.nu >= 0:
        raise ValueError(f"ials: l2 and nu must be >= 0, got {config.l2}, {config.nu}")
    if int(config.embedding_dim) < 1:
        raise ValueError(f"ials: embedding_dim must be >= 1, got {config.embedding_dim}")


def positives(train, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """``(users, items)`` of the training pairs rated at least ``threshold`` (once each)."""
    keep = np.asarray(train.ratings) >= threshold
    users, items = np.asarray(train.users)[keep].astype(np.int64), np.asarray(train.items)[keep].astype(np.int64)
    codes = np.sort(users * max(int(train.num_items), 1) + items)  # a sort, not np.unique's hash: 5x faster at 24M
    codes = codes[np.concatenate([codes[:1] == codes[:1], codes[1:] != codes[:-1]])]
    return (codes // max(int(train.num_items), 1)).astype(np.int32), (codes % max(int(train.num_items), 1)).astype(
        np.int32)


def row_weights(counts: Array, num_other: int, config: Config) -> Array:
    r""":math:`\lambda (|S_u| + \alpha_0 |I|)^\nu` for each row's count of positives."""
    return config.l2 * (counts + config.unobserved_weight * num_other) ** config.nu


@jax.jit
def _solve_chunk(other_ext, gram, counts, rows, piece_row, other, num_other, unobserved_weight, l2, nu):
    """The exact rows of one chunk, ``float32[G, K]`` (padding rows: anything finite). The
    settings are traced: one program for every setting of a shape."""
    g, k = rows.shape[0], other_ext.shape[1]
    z = other_ext[other]  # [G pieces, PIECE, K]; padding slots read the zero row
    outer = jnp.zeros((g, k, k), jnp.float32).at[piece_row].add(jnp.einsum("glk,glm->gkm", z, z), mode="drop")
    rhs = jnp.zeros((g, k), jnp.float32).at[piece_row].add(jnp.sum(z, axis=1), mode="drop")
    n = counts.at[rows].get(mode="fill", fill_value=0.0)
    reg = row_weights(n, num_other, Config(l2=l2, nu=nu, unobserved_weight=unobserved_weight))
    a = unobserved_weight * gram + outer + reg[:, None, None] * jnp.eye(k, dtype=jnp.float32)
    factor = jax.scipy.linalg.cho_factor(a)
    return jax.scipy.linalg.cho_solve(factor, rhs[..., None])[..., 0]


@functools.partial(jax.jit, static_argnames=("steps",))
def _cg_chunk(own, other_ext, gram, counts, rows, piece_row, other, num_other, unobserved_weight, l2, nu, *,
              steps: int):
    r"""One chunk's rows after ``steps`` conjugate-gradient steps on their normal equations,
    from their current values, ``float32[G, K]``: the matrix is never formed, each step
    reads the gathered rows twice (:math:`A v = \alpha_0 G v + Z^\top (Z v) + \lambda_u v`)."""
    g = rows.shape[0]
    z = other_ext[other]  # [G pieces, PIECE, K]

    def to_rows(per_piece):  # each local row's sum over its pieces
        return jnp.zeros((g,) + per_piece.shape[1:], per_piece.dtype).at[piece_row].add(per_piece, mode="drop")

    def per_piece(v):  # each piece's row of v [G local rows, K]
        return v.at[piece_row].get(mode="fill", fill_value=0.0)

    n = counts.at[rows].get(mode="fill", fill_value=0.0)
    reg = row_weights(n, num_other, Config(l2=l2, nu=nu, unobserved_weight=unobserved_weight))

    def a_times(v):
        zv = jnp.einsum("glk,gk->gl", z, per_piece(v))
        return unobserved_weight * (v @ gram) + to_rows(jnp.einsum("glk,gl->gk", z, zv)) + reg[:, None] * v

    x = own.at[rows].get(mode="fill", fill_value=0.0)
    r = to_rows(jnp.sum(z, axis=1)) - a_times(x)
    p, rs = r, jnp.sum(r * r, axis=1)
    for _ in range(steps):
        ap = a_times(p)
        alpha = rs / jnp.maximum(jnp.sum(p * ap, axis=1), 1e-30)
        x, r = x + alpha[:, None] * p, r - alpha[:, None] * ap
        new_rs = jnp.sum(r * r, axis=1)
        p, rs = r + (new_rs / jnp.maximum(rs, 1e-30))[:, None] * p, new_rs
    return x


@functools.partial(jax.jit, static_argnames=("steps", "with_loss"))
def _cg_kernel(own, other, indptr, indices, counts, unobserved_weight, l2, nu, *, steps: int, with_loss: bool):
    r"""Every row's ``steps`` conjugate-gradient steps by the CPU kernel
    (`recsys_jax.engine.kernels`, ``ials_cg.cc``: the formulas of `_cg_chunk`, row by row),
    and with ``with_loss`` the observed part of :math:`L` at the new rows,
    :math:`\sum_{(u,i) \in S} (\hat y_{ui} - 1)^2` (float32 per row, summed in float64 by the caller)."""
    gram = unobserved_weight * (other.T @ other)
    reg = row_weights(counts, jnp.float32(other.shape[0]), Config(l2=l2, nu=nu, unobserved_weight=unobserved_weight))
    call = jax.ffi.ffi_call("recsys_ials_cg", (jax.ShapeDtypeStruct(own.shape, jnp.float32),
                                               jax.ShapeDtypeStruct(own.shape[:1], jnp.float32)))
    return call(own, other, gram, indptr, indices, reg.astype(jnp.float32), steps=np.int32(steps),
                with_loss=np.int32(with_loss))


def _kernel_half(own, other, side: RowLists, config: Config, with_loss: bool):
    return _cg_kernel(own, other, side.indptr, side.indices, side.counts, jnp.float32(config.unobserved_weight),
                      jnp.float32(config.l2), jnp.float32(config.nu), steps=int(config.cg_steps),
                      with_loss=with_loss)


class RowLists(NamedTuple):
    """One side's positives in row-pointer form, for the CPU kernel: row ``u``'s other-side
    rows are ``indices[indptr[u]:indptr[u + 1]]``."""

    indptr: Array  # int32[N + 1]
    indices: Array  # int32[nnz]
    counts: Array  # float32[N]: each row's number of positives


def row_lists(own: np.ndarray, other: np.ndarray, num_rows: int) -> RowLists:
    """`RowLists` of the pairs ``(own[j], other[j])``, grouped by ``own``."""
    order = np.argsort(own, kind="stable")
    counts = np.bincount(own, minlength=num_rows)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return RowLists(jnp.asarray(indptr), jnp.asarray(other[order].astype(np.int32)),
                    jnp.asarray(counts.astype(np.float32)))


def solve_side(own: Array, other: Array, side: SidePlan | RowLists, config: Config) -> Array:
    """Every row of ``own`` solved with ``other`` fixed (exactly, or by ``cg_steps``
    conjugate-gradient steps from its current value); rows without positives 0. A side
    given as `RowLists` (``solver="cg"`` only) runs on the CPU kernel, a `SidePlan` on XLA."""
    num_other = other.shape[0]
    if isinstance(side, RowLists):
        if config.solver != "cg":
            raise ValueError("ials: the CPU kernel takes conjugate-gradient steps only (solver='cg')")
        return _kernel_half(own, other, side, config, False)[0]
    other_ext = jnp.concatenate([other, jnp.zeros_like(other[:1])], axis=0)
    gram = other.T @ other
    settings = (jnp.float32(num_other), jnp.float32(config.unobserved_weight), jnp.float32(config.l2),
                jnp.float32(config.nu))
    new = own
    for rows, piece_row, other_idx in zip(side.rows, side.piece_row, side.other):
        if config.solver == "cg":
            x = _cg_chunk(own, other_ext, gram, side.counts, rows, piece_row, other_idx, *settings,
                          steps=int(config.cg_steps))
        else:
            x = _solve_chunk(other_ext, gram, side.counts, rows, piece_row, other_idx, *settings)
        new = new.at[rows].set(x, mode="drop")
    return jnp.where(side.counts[:, None] > 0, new, 0.0)


@jax.jit
def _observed(p, q, users, items):
    return jnp.sum((jnp.sum(p[users] * q[items], axis=1) - 1.0) ** 2)


@jax.jit
def _unobserved_and_penalty(p, q, user_counts, item_counts, unobserved_weight, l2, nu):
    r""":math:`L` less its observed sum: :math:`\alpha_0 \sum_{u,i} \hat y_{ui}^2` (as
    :math:`\langle P^\top P, Q^\top Q \rangle`) plus the row penalties."""
    every = jnp.sum((p.T @ p) * (q.T @ q))  # sum over all pairs of the squared score
    config = Config(unobserved_weight=unobserved_weight, l2=l2, nu=nu)
    reg = jnp.sum(row_weights(user_counts, q.shape[0], config) * jnp.sum(p * p, axis=1)) + jnp.sum(
        row_weights(item_counts, p.shape[0], config) * jnp.sum(q * q, axis=1))
    return unobserved_weight * every + reg


def _rest(params: Params, user_counts, item_counts, config: Config) -> float:
    return float(_unobserved_and_penalty(*params, user_counts, item_counts, jnp.float32(config.unobserved_weight),
                                         jnp.float32(config.l2), jnp.float32(config.nu)))


def objective(params: Params, users, items, config: Config) -> float:
    """:math:`L` above (float32 terms, summed in float32), for the positives ``users, items``."""
    p, q = params
    counts = [jnp.asarray(np.bincount(np.asarray(a), minlength=n).astype(np.float32))
              for a, n in ((users, p.shape[0]), (items, q.shape[0]))]
    return float(_observed(p, q, jnp.asarray(users), jnp.asarray(items))) + _rest(params, *counts, config)


def fit_epochs(key: Array, train, config: Config, train_config=None, aux=None, options=None
               ) -> Iterator[tuple[Params, float]]:
    """One epoch (every user, then every item) per step, without end
    (`recsys_jax.training.fit.fit` stops at ``train_config.epochs``); yields ``(params,
    L / |S|)``. ``solver="cg"`` runs on the CPU kernel where ``options`` (the engine's
    `recsys_jax.engine.options.EngineOptions`) say the kernels are on, else on XLA."""
    check_config(config)
    users, items = positives(train, config.threshold)
    if len(users) == 0:
        raise ValueError(f"ials: no training rating reaches the threshold {config.threshold:g}")
    params = init(key, train.num_users, train.num_items, config)
    kernel = config.solver == "cg" and options is not None and options.kernels
    if kernel:
        sides = row_lists(users, items, train.num_users), row_lists(items, users, train.num_items)
    else:
        plan = make_plan(users, items, np.ones(len(users), np.float32), train.num_users, train.num_items)
        sides = plan.user, plan.item
        pairs = jnp.asarray(users), jnp.asarray(items)
    p, q = params
    while True:
        p = solve_side(p, q, sides[0], config)
        if kernel:  # the kernel sums the observed loss at the new item rows, from its cache
            q, per_item = _kernel_half(q, p, sides[1], config, True)
            observed = float(np.sum(np.asarray(per_item), dtype=np.float64))
        else:
            q = solve_side(q, p, sides[1], config)
            observed = float(_observed(p, q, *pairs))
        params = Params(p, q)
        yield params, (observed + _rest(params, sides[0].counts, sides[1].counts, config)) / len(users)


def fold_in_users(params: Params, config: Config, item_lists) -> np.ndarray:
    """New users' rows, ``float32[m, K]``, each one exact solve with every item row fixed:
    the user step above for the positives ``item_lists[j]`` (item indices) of new user j
    (strong generalisation: a user unseen in training, scored from a few of its positives).
    A user without positives gets 0."""
    q = np.asarray(params.item_factors, np.float64)
    k, num_items = q.shape[1], q.shape[0]
    base = config.unobserved_weight * (q.T @ q)
    out = np.zeros((len(item_lists), k), np.float32)
    for j, items in enumerate(item_lists):
        items = np.unique(np.asarray(items, np.int64))
        if len(items) == 0:
            continue
        lam = config.l2 * (len(items) + config.unobserved_weight * num_items) ** config.nu
        rows = q[items]
        out[j] = np.linalg.solve(base + rows.T @ rows + lam * np.eye(k), rows.sum(axis=0))
    return out


def solve_users(params: Params, config: Config, items_per_user, ratings_per_user) -> dict:
    """`recsys_jax.use.foldin`'s hook: new users' ``user_factors`` from their ratings, the
    ones of at least ``threshold`` as positives (`fold_in_users`)."""
    lists = [np.asarray(i)[np.asarray(r) >= config.threshold] for i, r in zip(items_per_user, ratings_per_user)]
    return {"user_factors": fold_in_users(params, config, lists)}


SPEC = ModelSpec("ials", Config, Params, init, apply, predict_one=predict_one, score_matrix=score_matrix,
                 block_scores=block_scores, fit_epochs=fit_epochs, item_vectors=("item_factors",), ranks=True,
                 fold_in=FoldIn(solve_users=solve_users), doc=__doc__)
