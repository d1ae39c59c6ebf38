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
the catalogue (Hu et al.'s observation). ``solver="cg"`` instead takes ``cg_steps``
conjugate-gradient steps per row from its current value (as the implicit library and
Spark do; the matrix is never formed, so a step costs :math:`O(|S_u| k + k^2)`): each step
lowers the row's quadratic, so :math:`L` still never increases (tested), and with
:math:`k` steps it is the exact solve. Every row is solved exactly (a Cholesky solve of
its :math:`k \times k` system); each half-step therefore minimises :math:`L` over one side,
and :math:`L` never increases (tested, with the updates against a float64 reference). A row
with no positives solves to 0, its exact minimiser. An epoch: every user, then every item.

How it runs: the positives grouped by row in chunks (`recsys_jax.models.row_chunks`, as the
ALS engine and BPMF do); per chunk one gather of the fixed side's rows, the per-row sums
:math:`\sum q_i q_i^\top` as one batched contraction, and a batched Cholesky solve; one
compiled program per side and chunk size. Work per epoch: :math:`O(|S| k^2 + (U + I) k^3)`.

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
# 0.03 and 0.03 next (0.147).
class Config(NamedTuple):
    embedding_dim: int = 64
    unobserved_weight: float = 0.1  # alpha_0: the weight of every pair's squared score
    l2: float = 0.01  # lambda, scaled per row by (|S_u| + alpha_0 |I|) ** nu
    nu: float = 1.0  # the frequency scaling's exponent (0: one lambda for every row)
    threshold: float = 4.0  # a training rating at least this is a positive
    init_scale: float = 0.1  # std of the init, divided by sqrt(embedding_dim)
    solver: str = "cholesky"  # "cholesky": every row exact; "cg": cg_steps conjugate-gradient steps from the row
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
    codes = np.unique(users * max(int(train.num_items), 1) + items)
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
    g, k = rows.shape[0], other_ext.shape[1]
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


def solve_side(own: Array, other: Array, side: SidePlan, config: Config) -> Array:
    """Every row of ``own`` solved with ``other`` fixed (exactly, or by ``cg_steps``
    conjugate-gradient steps from its current value); rows without positives 0."""
    num_other = other.shape[0]
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


def objective(params: Params, users, items, config: Config) -> float:
    """:math:`L` above (float64 sums of float32 terms), for the positives ``users, items``."""
    p, q = params.user_factors, params.item_factors
    observed = jnp.sum(p[users] * q[items], axis=1)
    every = jnp.sum((p.T @ p) * (q.T @ q))  # sum over all pairs of the squared score
    nu_, ni_ = (jnp.bincount(jnp.asarray(a), length=n).astype(jnp.float32)
                for a, n in ((users, p.shape[0]), (items, q.shape[0])))
    reg = jnp.sum(row_weights(nu_, q.shape[0], config) * jnp.sum(p * p, axis=1)) + jnp.sum(
        row_weights(ni_, p.shape[0], config) * jnp.sum(q * q, axis=1))
    return float(jnp.sum((observed - 1.0) ** 2) + config.unobserved_weight * every + reg)


def fit_epochs(key: Array, train, config: Config, train_config=None, aux=None) -> Iterator[tuple[Params, float]]:
    """One epoch (every user, then every item, solved exactly) per step, without end
    (`recsys_jax.training.fit.fit` stops at ``train_config.epochs``); yields ``(params,
    L / |S|)``."""
    check_config(config)
    users, items = positives(train, config.threshold)
    if len(users) == 0:
        raise ValueError(f"ials: no training rating reaches the threshold {config.threshold:g}")
    params = init(key, train.num_users, train.num_items, config)
    plan = make_plan(users, items, np.ones(len(users), np.float32), train.num_users, train.num_items)
    p, q = params
    while True:
        p = solve_side(p, q, plan.user, config)
        q = solve_side(q, p, plan.item, config)
        params = Params(p, q)
        yield params, objective(params, users, items, config) / len(users)


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
