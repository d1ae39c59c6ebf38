r"""Bayesian probabilistic matrix factorisation, sampled by Gibbs (Salakhutdinov and Mnih, 2008).

The model. With :math:`\mu` the training mean (fixed, as in the authors' code),

.. math::

   r_{ui} \mid U, V &\sim \mathcal N\big(\mu + b_u + b_i + p_u^\top q_i,\ \alpha^{-1}\big), \qquad
   u_u = [p_u; b_u], \quad v_i = [q_i; b_i], \\
   u_u \mid \mu_U, \Lambda_U &\sim \mathcal N(\mu_U, \Lambda_U^{-1}), \qquad
   v_i \mid \mu_V, \Lambda_V \sim \mathcal N(\mu_V, \Lambda_V^{-1}), \\
   \Lambda_U &\sim \mathcal W(W_0, \nu_0), \qquad
   \mu_U \mid \Lambda_U \sim \mathcal N\big(\mu_0, (\beta_0 \Lambda_U)^{-1}\big)

(the same for :math:`\mu_V, \Lambda_V`), :math:`\mu_0 = 0`, :math:`\nu_0 = D`, :math:`W_0 = I`,
:math:`\beta_0` = ``config.prior_beta`` (2, the paper's choice). The biases are what I added
to the paper's model (``config.biases``, default on): each row is :math:`D = K + 1`
numbers, the factors and the bias, under one Gaussian-Wishart prior (so the bias may
correlate with the factors), and the conditionals below are the paper's with the other
side's design vector :math:`x_i = [q_i; 1]` and its bias moved into the target,
:math:`r_{ui} - \mu - b_i`. With ``biases=False`` it is the paper's model (:math:`u_u = p_u`,
:math:`D = K`). The noise precision :math:`\alpha` is ``config.noise_precision``, 2 as in the
paper (a noise s.d. of 0.71 stars: every MovieLens variant has the same star scale), or
``None``: sampled with a Gamma(1, 1) prior, which on ml-latest-small fits the training data
closer (a larger alpha) and validates worse at the same number of sweeps.

One Gibbs sweep (one epoch of ``fit_epochs``), each draw from its exact conditional:

1. :math:`(\mu_U, \Lambda_U) \mid U`: Normal-Wishart with, over the :math:`N` users that have
   training ratings (mean :math:`\bar u`, scatter :math:`S = \sum (u - \bar u)(u - \bar u)^\top`),
   :math:`\beta^* = \beta_0 + N`, :math:`\nu^* = \nu_0 + N`,
   :math:`\mu^* = (\beta_0 \mu_0 + N \bar u) / \beta^*`,
   :math:`(W^*)^{-1} = W_0^{-1} + S + \tfrac{\beta_0 N}{\beta^*} (\bar u - \mu_0)(\bar u - \mu_0)^\top`.
   Users without ratings drop out of this step exactly (integrating them out changes
   nothing); they are drawn from the prior in step 2, which is their conditional.
2. every user at once, :math:`u_u \mid V, \mu_U, \Lambda_U, \alpha \sim \mathcal N(P_u^{-1} b_u, P_u^{-1})`,

   .. math::

      P_u = \Lambda_U + \alpha \sum_{i \in \Omega_u} x_i x_i^\top, \qquad
      b_u = \Lambda_U \mu_U + \alpha \sum_{i \in \Omega_u} (r_{ui} - \mu - b_i)\, x_i,

   by the Cholesky factor :math:`P_u = L L^\top`: :math:`u_u = P_u^{-1} b_u + L^{-\top} z`,
   :math:`z \sim \mathcal N(0, I)`;
3. :math:`(\mu_V, \Lambda_V) \mid V`: the same as step 1, for the items;
4. every item at once, the same as step 2, given the new users;
5. :math:`\alpha \mid U, V \sim \mathrm{Gamma}(1 + |\Omega|/2,\ 1 + \mathrm{SSE}/2)` (when sampled).

The Wishart draw is Bartlett's decomposition: with :math:`W = L L^\top`,
:math:`\Lambda = L A A^\top L^\top`, :math:`A` lower triangular, :math:`A_{jj}^2 \sim \chi^2_{\nu - j}`
(:math:`j = 0 \dots K-1`; a :math:`\chi^2_d` is twice a Gamma(:math:`d/2`)) and
:math:`A_{jl} \sim \mathcal N(0, 1)` below the diagonal. Any factor of :math:`W` will do (the
standard Wishart is rotation invariant), so :math:`L = C^{-\top}` for the Cholesky factor
:math:`C` of :math:`W^{-1}`, which the conditional gives directly: no matrix is inverted.

How it runs. Each side's ratings are packed once per training set by
`recsys_jax.models.row_chunks.make_plan` (rows cut into pieces of 16 rating slots, whole rows packed into
fixed-shape chunks of ``G`` pieces; padding slots point past the table and read zeros). A
chunk is one jitted call: it gathers the fixed side's rows, ``[G, 16, D]``, forms each piece's
:math:`\sum x x^\top` and :math:`\sum y x` as two batched contractions, adds pieces into rows,
and draws every row from its :math:`D \times D` system with ``jax.vmap`` over the rows. The
programs depend on ``G`` and the table shapes only, not on the number of chunks, so they
compile once per side and `recsys_jax.training.experiment`'s refit on more ratings reuses them. All the
Gamma draws of a sweep (both Wisharts' diagonals, :math:`\alpha`'s) are one call: their shapes
do not depend on the chain, and each call site of `jax.random.gamma` adds markedly to the
compilation time on the CPU. Cholesky factors and triangular solves are short ``fori_loop``\ s
(`cholesky`, `solve_lower`, `solve_lower_t`): batched LAPACK calls inside the chunk program
now and then never returned on the CPU (jaxlib 0.10; XLA's thread pool wedged).

Prediction is the posterior mean of the rating over the kept samples :math:`s = 1 \dots S`
(after ``config.burn_in`` sweeps):

.. math::

   \hat r_{ui} = \mu + \frac 1S \sum_s \big(b_u^{(s)} + b_i^{(s)} + p_u^{(s)\top} q_i^{(s)}\big)
               = \mu + w\, \tilde u_u^\top \tilde v_i,

:math:`\tilde u_u = [p_u^{(1)}; b_u^{(1)}; 1; \dots; p_u^{(S)}; b_u^{(S)}; 1]` and
:math:`\tilde v_i = [q_i^{(1)}; 1; b_i^{(1)}; \dots]` the concatenated samples
(``params.user_samples``, ``float32[U, S_max (K + 2)]``; ``K`` per slot without biases) and
:math:`w = 1/S` (``params.sample_weight``): a gather and a dot. The store has
``config.num_samples`` slots (:math:`S_{\max}`); with more kept sweeps than slots it is a
ring: the last :math:`S_{\max}` samples are averaged, so memory is bounded by
:math:`(U + I)\,S_{\max} (K + 2)` floats (defaults: ml-latest-small's 10 k rows x 768, 32 MB;
ml-25m's 222 k rows, 680 MB), plus one such copy per epoch that `recsys_jax.training.fit.fit` keeps
as the best. Slots not yet filled are zero and add nothing. During burn-in the store holds
the current sample alone (:math:`w = 1`). ``user_factors`` / ``user_bias`` (and the items')
hold the chain's current sample (what the next sweep starts from, and what
`recsys_jax.use.explore` compares); prediction does not read them.

``TrainConfig``: ``epochs`` is the number of sweeps (burn-in included), ``patience`` stops
early as for every model; the learning rate, batch size, schedule and penalties do not
apply. The reported training loss is the mean squared error of the current sample on the
training ratings. A y-range squash is refused (the likelihood is Gaussian in the raw
score). Fold-in (`recsys_jax.use.foldin`) takes the generic gradient route on the stored samples
(a ridge fit of the new row, not a draw from its conditional).

Published figures. Rendle, Zhang and Koren ("On the Difficulty of Evaluating Baselines",
arXiv:1905.01395, 2019), ML10M, random 90/10 as in the papers they compare with:
Bayesian MF by Gibbs sampling, 512 dimensions, RMSE 0.7633 (SGD MF 0.7720); with the same
sampler, Bayesian SVD++ 0.7563, Bayesian timeSVD++ 0.7523 and its "flipped" variant 0.7485.
The BPMF paper itself reports on Netflix (probe / qualifying).
"""
from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from recsys_jax.models._common import batched, initial_offset
from recsys_jax.models.row_chunks import make_plan
from recsys_jax.models.spec import ModelSpec

ALPHA_PRIOR = (1.0, 1.0)  # Gamma(shape a0, rate b0) on the noise precision when it is sampled


class Config(NamedTuple):
    embedding_dim: int = 10  # K
    burn_in: int = 8  # sweeps before samples are kept
    num_samples: int = 64  # slots of the sample store (the last this many kept samples are averaged)
    noise_precision: float | None = 2.0  # alpha (the paper's); None: sampled (Gamma(1, 1) prior)
    prior_beta: float = 2.0  # beta_0 of the Normal-Wishart hyperprior
    biases: bool = True  # b_u, b_i sampled with the factors (the rows are [u_u; b_u], [v_i; b_i])
    init_scale: float = 0.3  # the chain starts from N(0, s^2) rows (0.1: more sweeps to leave 0)
    mean_rating: float = 3.5  # set by `fit` to the training mean: mu
    y_range: tuple[float, float] | None = None


class Params(NamedTuple):
    global_bias: Array  # float32[]: mu, the training mean (not sampled)
    sample_weight: Array  # float32[]: 1 / the number of samples in the store
    user_bias: Array  # float32[U]: the chain's current sample (0 without biases)
    item_bias: Array  # float32[I]
    user_factors: Array  # float32[U, K]
    item_factors: Array  # float32[I, K]
    user_samples: Array  # float32[U, S_max * D]: kept samples side by side (unfilled slots 0)
    item_samples: Array  # float32[I, S_max * D]; D = K + 2 with biases ([u, b_u, 1], [v, 1, b_i]), else K


def check_config(config: Config) -> None:
    """A clear error for hyperparameters the sampler cannot run with."""
    if int(config.embedding_dim) < 1:
        raise ValueError(f"embedding_dim must be >= 1, got {config.embedding_dim}")
    if int(config.burn_in) < 0:
        raise ValueError(f"burn_in must be >= 0, got {config.burn_in}")
    if int(config.num_samples) < 1:
        raise ValueError(f"num_samples must be >= 1, got {config.num_samples}")
    if config.noise_precision is not None and not float(config.noise_precision) > 0:
        raise ValueError(f"noise_precision must be > 0 (or None: sampled), got {config.noise_precision}")
    if not float(config.prior_beta) > 0:
        raise ValueError(f"prior_beta must be > 0, got {config.prior_beta}")


def init(key: Array, num_users: int, num_items: int, config: Config = Config()) -> Params:
    """The chain's start: factors from N(0, init_scale^2), biases 0, stored as the only sample (w = 1)."""
    check_config(config)
    ukey, ikey = jax.random.split(key)
    k, s = config.embedding_dim, config.num_samples
    users = config.init_scale * jax.random.normal(ukey, (num_users, k), jnp.float32)
    items = config.init_scale * jax.random.normal(ikey, (num_items, k), jnp.float32)
    user_slot, item_slot = _slots(users, jnp.zeros(num_users), items, jnp.zeros(num_items), config.biases)
    d = user_slot.shape[1]
    return Params(
        global_bias=jnp.asarray(initial_offset(config), jnp.float32),
        sample_weight=jnp.ones((), jnp.float32),
        user_bias=jnp.zeros((num_users,), jnp.float32),
        item_bias=jnp.zeros((num_items,), jnp.float32),
        user_factors=users,
        item_factors=items,
        user_samples=jnp.pad(user_slot, ((0, 0), (0, (s - 1) * d))),
        item_samples=jnp.pad(item_slot, ((0, 0), (0, (s - 1) * d))),
    )


def _slots(users, user_bias, items, item_bias, biases: bool):
    """One sample as the store holds it: ``[u, b_u, 1]`` and ``[v, 1, b_i]`` (their dot is
    :math:`u^\top v + b_u + b_i`), or ``u`` and ``v`` without biases."""
    if not biases:
        return users, items
    one_u, one_i = jnp.ones_like(user_bias)[:, None], jnp.ones_like(item_bias)[:, None]
    return (jnp.concatenate([users, user_bias[:, None], one_u], axis=1),
            jnp.concatenate([items, one_i, item_bias[:, None]], axis=1))


def predict_one(params: Params, user: Array, item: Array, key: Array | None = None, *,
                config: Config = Config()) -> Array:
    """r_ui = mu + w * user_samples[u] . item_samples[i]: the mean of u^(s) . v^(s) over the store."""
    return params.global_bias + params.sample_weight * (params.user_samples[user] @ params.item_samples[item])


def score_matrix(params: Params, *, config: Config = Config()) -> Array:
    r"""Every (user, item) pair at once, ``float32[U, I]``: :math:`\mu + w\,\tilde U \tilde V^\top`."""
    return params.global_bias + params.sample_weight * (params.user_samples @ params.item_samples.T)


apply = batched(predict_one)


# -- small dense linear algebra ---------------------------------------------------------------
# Written with jax.lax.fori_loop rather than LAPACK (jnp.linalg.cholesky, solve_triangular):
# on the CPU, batches of LAPACK calls inside the chunk program wedged XLA's thread pool now and
# then (a sweep that never returned, with jaxlib 0.10 on the 2-core machine, async dispatch on
# or off); these loops are plain vector arithmetic, batched by jax.vmap, O(K^3) per matrix.
def cholesky(a: Array) -> Array:
    """The lower triangular ``L`` with ``L L^T = a`` (``a`` ``[K, K]``, symmetric positive definite)."""
    idx = jnp.arange(a.shape[-1])

    def column(j, low):
        row = low[j]  # L[j, :j]; zero from j on
        d = jnp.sqrt(a[j, j] - row @ row)
        col = (a[:, j] - low @ row) / d
        return low.at[:, j].set(jnp.where(idx > j, col, jnp.where(idx == j, d, 0.0)))

    return jax.lax.fori_loop(0, a.shape[-1], column, jnp.zeros_like(a))


def solve_lower(low: Array, b: Array) -> Array:
    """``x`` with ``low x = b`` (forward substitution; ``b`` ``[K]`` or ``[K, M]``)."""
    def step(j, x):
        return x.at[j].set((b[j] - low[j] @ x) / low[j, j])

    return jax.lax.fori_loop(0, b.shape[0], step, jnp.zeros_like(b))


def solve_lower_t(low: Array, b: Array) -> Array:
    """``x`` with ``low^T x = b`` (back substitution; ``b`` ``[K]`` or ``[K, M]``)."""
    k = b.shape[0]

    def step(i, x):
        j = k - 1 - i
        return x.at[j].set((b[j] - low[:, j] @ x) / low[j, j])

    return jax.lax.fori_loop(0, k, step, jnp.zeros_like(b))


# -- the conditionals ---------------------------------------------------------------------------
def wishart_chi2(key: Array, df, k: int) -> Array:
    r"""The diagonal draws of Bartlett's decomposition, :math:`\chi^2_{\nu - j}` for
    :math:`j = 0 \dots K-1` (a :math:`\chi^2_d` is twice a Gamma(:math:`d/2`, 1))."""
    return 2.0 * jax.random.gamma(key, (df - jnp.arange(k)) / 2.0)


def sample_wishart(key: Array, inv_scale: Array, df, chi2: Array | None = None) -> Array:
    r"""One draw of :math:`\Lambda \sim \mathcal W(W, \nu)` (mean :math:`\nu W`), given
    :math:`W^{-1}` = ``inv_scale`` (``float32[K, K]``, SPD) and :math:`\nu` = ``df`` > K - 1,
    by Bartlett's decomposition (module docstring). ``chi2``: the diagonal's draws
    (`wishart_chi2`) when the caller has them (a sweep draws all its Gammas at once: each
    call site of `jax.random.gamma` adds markedly to the compilation time on CPU)."""
    k = inv_scale.shape[0]
    ckey, nkey = jax.random.split(key)
    if chi2 is None:
        chi2 = wishart_chi2(ckey, df, k)
    a = jnp.tril(jax.random.normal(nkey, (k, k)), -1) + jnp.diag(jnp.sqrt(chi2))
    c = cholesky(inv_scale)  # W^{-1} = C C^T, so W = C^{-T} C^{-1}
    la = solve_lower_t(c, a)  # C^{-T} A
    return la @ la.T


class NormalWishart(NamedTuple):
    r"""One side's hyperparameter conditional: :math:`\Lambda \sim \mathcal W(W^*, \nu^*)`,
    :math:`\mu \mid \Lambda \sim \mathcal N(\mu^*, (\beta^*\Lambda)^{-1})`."""

    mean: Array  # float32[K]: mu*
    beta: Array  # float32[]: beta*
    inv_scale: Array  # float32[K, K]: (W*)^{-1}
    df: Array  # float32[]: nu*


def normal_wishart_posterior(rows: Array, mask: Array, *, prior_beta: float) -> NormalWishart:
    """The Normal-Wishart conditional given the rows whose ``mask`` is 1 (prior mu_0 = 0,
    W_0 = I, nu_0 = K, beta_0 = ``prior_beta``)."""
    k = rows.shape[1]
    mask = mask.astype(rows.dtype)
    n = jnp.sum(mask)
    mean = jnp.sum(rows * mask[:, None], axis=0) / jnp.maximum(n, 1.0)
    centred = (rows - mean) * mask[:, None]
    beta = prior_beta + n
    inv_scale = (jnp.eye(k, dtype=rows.dtype) + centred.T @ centred
                 + (prior_beta * n / beta) * jnp.outer(mean, mean))
    return NormalWishart(n * mean / beta, beta, inv_scale, jnp.asarray(k, rows.dtype) + n)


def sample_normal_wishart(key: Array, post: NormalWishart, chi2: Array | None = None) -> tuple[Array, Array]:
    """``(mu, Lambda)`` drawn from ``post`` (``chi2``: see `sample_wishart`)."""
    wkey, nkey = jax.random.split(key)
    lam = sample_wishart(wkey, post.inv_scale, post.df, chi2)
    z = jax.random.normal(nkey, post.mean.shape)
    return post.mean + solve_lower_t(cholesky(lam), z) / jnp.sqrt(post.beta), lam


def row_conditional(gram: Array, rhs: Array, lam: Array, lam_mu: Array, alpha: Array, z: Array) -> Array:
    r"""One row's draw from :math:`\mathcal N(P^{-1} b, P^{-1})`, :math:`P = \Lambda + \alpha\,` ``gram``,
    :math:`b = \Lambda\mu + \alpha\,` ``rhs``, as :math:`P^{-1} b + L^{-\top} z` (``z = 0``: the mean)."""
    chol = cholesky(lam + alpha * gram)
    return solve_lower_t(chol, solve_lower(chol, lam_mu + alpha * rhs) + z)


@functools.partial(jax.jit, static_argnames="biases")
def _chunk(key, other_table, rows, piece_row, other, ratings, lam, lam_mu, alpha, mu, noise, *, biases: bool):
    """Every row of one chunk (`recsys_jax.models.row_chunks.SidePlan`) drawn from its conditional
    (``noise`` 0: the means), and the chunk's squared residuals with the new rows.

    With ``biases`` the tables' last column is the bias: the other side's row enters as the
    design vector ``[factors, 1]`` and its bias as an offset of the rating."""
    g, k = rows.shape[0], other_table.shape[1]
    valid = other < other_table.shape[0]
    x = other_table.at[other].get(mode="fill", fill_value=0.0)  # [G, PIECE, W]; padding slots read 0
    offset = mu
    if biases:
        offset = mu + x[..., -1]
        x = x.at[..., -1].set(valid.astype(x.dtype))
    y = jnp.where(valid, ratings - offset, 0.0)
    gram = jnp.zeros((g, k, k), x.dtype).at[piece_row].add(jnp.einsum("gpk,gpl->gkl", x, x), mode="drop")
    rhs = jnp.zeros((g, k), x.dtype).at[piece_row].add(jnp.einsum("gpk,gp->gk", x, y), mode="drop")
    z = noise * jax.random.normal(key, (g, k))
    new = jax.vmap(row_conditional, in_axes=(0, 0, None, None, None, 0))(gram, rhs, lam, lam_mu, alpha, z)
    per_piece = new.at[piece_row].get(mode="fill", fill_value=0.0)
    res = jnp.where(valid, y - jnp.einsum("gpk,gk->gp", x, per_piece), 0.0)
    return new, jnp.sum(jnp.square(res))


def sample_side(key: Array, other_table: Array, side, num_rows: int, mu_vec: Array, lam: Array, alpha,
                mu, noise: float = 1.0, *, biases: bool = False) -> tuple[Array, Array]:
    """``(table float32[num_rows, W], sse)``: every row of one side drawn from its
    conditional given the other side's table (``noise=0``: the conditional means; with
    ``biases`` each table's last column is its bias, see `_chunk`), one
    jitted call per chunk of ``side`` (a `recsys_jax.models.row_chunks.SidePlan`); rows without ratings
    from the prior; ``sse`` the squared residuals of the training ratings with the new rows."""
    lam_mu = lam @ mu_vec
    news, sse = [], 0.0
    keys = jax.random.split(key, len(side.rows) + 1)
    for c, (rows, piece_row, other, ratings) in enumerate(zip(side.rows, side.piece_row, side.other, side.ratings)):
        new, s = _chunk(keys[c], other_table, rows, piece_row, other, ratings, lam, lam_mu, alpha, mu, noise,
                        biases=biases)
        news.append(new)
        sse = sse + s
    return _scatter(keys[-1], jnp.concatenate(side.rows), jnp.concatenate(news), mu_vec, lam, noise,
                    num_rows=num_rows), sse


@functools.partial(jax.jit, static_argnames="num_rows")
def _scatter(key, rows, new, mu_vec, lam, noise, *, num_rows: int):
    """The side's table: every row drawn from the prior (rows without ratings keep that
    draw, their conditional), the chunks' rows written over it."""
    n, k = num_rows, lam.shape[0]
    prior = mu_vec + noise * solve_lower_t(cholesky(lam), jax.random.normal(key, (k, n))).T
    return prior.at[rows].set(new, mode="drop")


@functools.partial(jax.jit, static_argnames=("prior_beta",))
def _hyper(key, table, has_ratings, chi2, *, prior_beta: float):
    return sample_normal_wishart(key, normal_wishart_posterior(table, has_ratings, prior_beta=prior_beta), chi2)


@functools.partial(jax.jit, static_argnames="k")
def _gammas(key, df_users, df_items, alpha_shape, *, k: int):
    """All the Gamma draws of a sweep in one call (their shapes do not depend on the chain):
    the two Wisharts' chi-squares and the noise precision's Gamma(shape, 1)."""
    shapes = jnp.concatenate([(df_users - jnp.arange(k)) / 2.0, (df_items - jnp.arange(k)) / 2.0,
                              jnp.reshape(alpha_shape, (1,))])
    g = jax.random.gamma(key, shapes)
    return 2.0 * g[:k], 2.0 * g[k:2 * k], g[2 * k]


@functools.partial(jax.jit, static_argnames="biases")
def _store(params: Params, users: Array, items: Array, slot: Array, weight: Array, *, biases: bool) -> Params:
    """The sample put in ``slot`` of the store, the chain's state beside it."""
    if biases:
        state = {"user_factors": users[:, :-1], "user_bias": users[:, -1],
                 "item_factors": items[:, :-1], "item_bias": items[:, -1]}
    else:
        state = {"user_factors": users, "item_factors": items}
    user_slot, item_slot = _slots(state["user_factors"], params.user_bias if not biases else state["user_bias"],
                                  state["item_factors"], params.item_bias if not biases else state["item_bias"],
                                  biases)
    d = user_slot.shape[1]
    return params._replace(
        sample_weight=weight.astype(jnp.float32), **state,
        user_samples=jax.lax.dynamic_update_slice(params.user_samples, user_slot, (0, slot * d)),
        item_samples=jax.lax.dynamic_update_slice(params.item_samples, item_slot, (0, slot * d)))


class Chain(NamedTuple):
    """What a sweep reads besides the chain's state: the packed ratings and constants."""

    plan: object  # recsys_jax.models.row_chunks.Plan
    user_has: Array  # float32[U]: 1 for users with training ratings
    item_has: Array  # float32[I]
    mu: Array  # float32[]: the training mean
    prior_beta: float
    sample_alpha: bool
    biases: bool


def make_chain(train, mu, *, prior_beta: float = 2.0, sample_alpha: bool = True, biases: bool = True) -> Chain:
    """The training set packed for `sweep` (once per training set)."""
    plan = make_plan(train.users, train.items, train.ratings, train.num_users, train.num_items)
    return Chain(plan, (plan.user.counts > 0).astype(jnp.float32), (plan.item.counts > 0).astype(jnp.float32),
                 jnp.asarray(mu, jnp.float32), float(prior_beta), bool(sample_alpha), bool(biases))


def sweep(key: Array, users: Array, items: Array, alpha, chain: Chain) -> tuple[Array, Array, Array, Array]:
    """One Gibbs sweep (module docstring): ``(users, items, alpha, training MSE of the new sample)``."""
    k = users.shape[1]
    n = chain.plan.num_ratings
    gkey, hukey, ukey, hikey, ikey = jax.random.split(key, 5)
    chi2_u, chi2_i, g_alpha = _gammas(gkey, k + jnp.sum(chain.user_has), k + jnp.sum(chain.item_has),
                                      ALPHA_PRIOR[0] + n / 2.0, k=k)
    mu_u, lam_u = _hyper(hukey, users, chain.user_has, chi2_u, prior_beta=chain.prior_beta)
    users, _ = sample_side(ukey, items, chain.plan.user, users.shape[0], mu_u, lam_u, alpha, chain.mu,
                           biases=chain.biases)
    mu_v, lam_v = _hyper(hikey, items, chain.item_has, chi2_i, prior_beta=chain.prior_beta)
    items, sse = sample_side(ikey, users, chain.plan.item, items.shape[0], mu_v, lam_v, alpha, chain.mu,
                             biases=chain.biases)
    if chain.sample_alpha:
        alpha = g_alpha / (ALPHA_PRIOR[1] + sse / 2.0)
    return users, items, alpha, sse / n


def fit_epochs(key: Array, train, config: Config, train_config=None, aux=None, options=None) -> Iterator[tuple[Params, float]]:
    """One Gibbs sweep per epoch, without end (`recsys_jax.training.fit.fit` stops at
    ``train_config.epochs``); yields ``(posterior-mean predictor, training MSE of the
    current sample)``."""
    check_config(config)
    if config.y_range is not None:
        raise ValueError("bpmf: y_range is not supported (the Gibbs sampler's likelihood is Gaussian in the raw score)")
    if len(train) == 0:
        raise ValueError("bpmf: train is empty")
    init_key, key = jax.random.split(key)
    params = init(init_key, train.num_users, train.num_items, config)
    sample_alpha = config.noise_precision is None
    chain = make_chain(train, params.global_bias, prior_beta=config.prior_beta, sample_alpha=sample_alpha,
                       biases=config.biases)
    if sample_alpha:  # start at 1 / the ratings' variance: the precision of the mean alone
        alpha = 1.0 / max(float(np.var(np.asarray(train.ratings, np.float64))), 1e-6)
    else:
        alpha = float(config.noise_precision)
    users, items, alpha = params.user_factors, params.item_factors, jnp.asarray(alpha, jnp.float32)
    if config.biases:  # the chain's rows: [factors, bias]
        users = jnp.concatenate([users, params.user_bias[:, None]], axis=1)
        items = jnp.concatenate([items, params.item_bias[:, None]], axis=1)
    kept, s_max, t = 0, int(config.num_samples), 0
    while True:
        t += 1
        users, items, alpha, mse = sweep(jax.random.fold_in(key, t), users, items, alpha, chain)
        if t > config.burn_in:
            kept += 1
        slot = 0 if kept == 0 else (kept - 1) % s_max
        params = _store(params, users, items, jnp.asarray(slot, jnp.int32),
                        jnp.asarray(1.0 / max(min(kept, s_max), 1), jnp.float32), biases=config.biases)
        yield params, float(mse)


SPEC = ModelSpec("bpmf", Config, Params, init, apply, predict_one=predict_one, score_matrix=score_matrix, fit_epochs=fit_epochs, doc=__doc__)
