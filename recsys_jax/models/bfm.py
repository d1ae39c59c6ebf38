r"""Bayesian factorization machine, sampled by Gibbs (Freudenthaler, Schmidt-Thieme & Rendle
2011, "Bayesian factorization machines"; the relational blocks of Rendle 2013, "Scaling
factorization machines to relational data").

The model. A rating :math:`n` of user :math:`u` for movie :math:`i` on day :math:`d` is a
sparse feature vector :math:`x_n` of six groups (`recsys_jax.data.relational`): the user id,
the movie id, the day (one-hot over the training days; a day outside them has no feature),
the movies the user rated :math:`N(u)` and the users who rated the movie :math:`N(i)`, each
of those two sets valued :math:`1/\sqrt{|N|}` (these five built from the training rows
only), and the movie's genres :math:`G(i)` from the data's movies table, valued
:math:`1/\sqrt{|G(i)|}`. The genres are metadata, not ratings, so they reach every movie,
rated in training or not; they are the movie's part of :math:`x`, folded into the movie's
vector in the store as :math:`N(i)` is. ``genres="auto"`` (the default) adds them where the
movies table lists any, ``"on"`` requires them and ``"off"`` leaves the five groups of
Rendle, Zhang & Koren 2019 (``recsys-jax train --model bfm --option genres=off``). On
ml-latest-small (five random 80/20 splits, seeds 0-4) the genres lower the test RMSE from
0.8183 to 0.8081, on every seed (by 0.0102 on average); myFM 0.4.0 on the same six groups
and splits: 0.8050. Then

.. math::

   y_n \sim \mathcal N\big(\hat y(x_n), \alpha^{-1}\big), \qquad
   \hat y(x) = w_0 + \sum_j w_j x_j + \sum_{f=1}^{k} \tfrac12 \Big[\big(\textstyle\sum_j v_{jf} x_j\big)^2
               - \textstyle\sum_j v_{jf}^2 x_j^2\Big],

every pair of features interacting through their factors. Priors, one set per feature
group :math:`g` (``user``, ``item``, ``day``, ``rated``, ``raters``; ``genres``):
:math:`w_j \sim \mathcal N(\mu^w_g, 1/\lambda^w_g)`, :math:`v_{jf} \sim \mathcal N(\mu^v_{gf},
1/\lambda^v_{gf})`, each :math:`(\mu, \lambda)` Normal-Gamma, :math:`\lambda \sim
\mathrm{Gamma}(a_0, b_0)`, :math:`\mu \mid \lambda \sim \mathcal N(\mu_0, 1/(\gamma_0 \lambda))`;
:math:`w_0 \sim \mathcal N(0, 1/\lambda_0)`; :math:`\alpha \sim \mathrm{Gamma}(a_0, b_0)`
(:math:`a_0 = b_0 = \gamma_0 = \lambda_0 = 1`, :math:`\mu_0 = 0`: vague priors; libFM's and
myFM's defaults take the same values in the parameterisation
:math:`\mathrm{Gamma}(a_0/2, b_0/2)`, a slightly vaguer prior).

One Gibbs sweep draws every parameter from its exact conditional. :math:`\hat y` is linear
in any one parameter :math:`\theta`, :math:`\hat y(x_n) = g_n + \theta h_n` (for
:math:`v_{jf}`, :math:`h_n = x_{nj}(q_{nf} - v_{jf} x_{nj})`, :math:`q_{nf} = \sum_l v_{lf}
x_{nl}`; for :math:`w_j`, :math:`h_n = x_{nj}`), so with the residuals :math:`e_n = y_n -
\hat y(x_n)` and the prior :math:`\mathcal N(\mu_\theta, 1/\lambda_\theta)`,

.. math::

   \theta \mid \cdot \sim \mathcal N\Big(\frac{\alpha \sum_n h_n (e_n + \theta h_n) + \lambda_\theta \mu_\theta}{P},
   \ \frac1P\Big), \qquad P = \alpha \sum_n h_n^2 + \lambda_\theta .

The order of a sweep: :math:`\alpha`; every group's hyperparameters (:math:`\lambda` given
the old :math:`\mu`, then :math:`\mu` given the new :math:`\lambda`); :math:`w_0`; each
group's :math:`w`; then for each factor :math:`f`, each group's :math:`v_{\cdot f}`. The
features of a one-hot group never share a rating, so their draws are independent given the
rest and are taken all at once (``jax.ops.segment_sum`` over the ratings). The features of
an implicit set share ratings (every movie of :math:`N(u)` is in each of :math:`u`'s
ratings), so they are drawn one after another, each from its conditional given the ones
before: Rendle 2013's relational form makes each draw cost the size of its column of the
block, not the number of ratings. For the block of the sets :math:`N(u)` (block row
:math:`b = u`, the ratings :math:`n \in b` of that user), with :math:`c_b = Q_{bf} - v_{jf}
x_{bj}`, :math:`Q_{bf} = \sum_l v_{lf} x_{bl}` and :math:`r_n = q_{nf} - Q_{bf}` (the other
groups' part), :math:`h_n = x_{bj}(c_b + r_n)`, so

.. math::

   \sum_n h_n^2 = \sum_{b \ni j} x_{bj}^2 \big(|b| c_b^2 + 2 c_b S_b + S^{(2)}_b\big), \qquad
   \sum_n h_n e_n = \sum_{b \ni j} x_{bj} \big(c_b E_b + R_b\big),

from the block rows' sums over their ratings :math:`S_b = \sum r_n`, :math:`S^{(2)}_b =
\sum r_n^2`, :math:`E_b = \sum e_n`, :math:`R_b = \sum r_n e_n`; after the draw (change
:math:`\Delta`) they follow exactly: :math:`E_b \mathrel{-}= \Delta x_{bj}(|b| c_b + S_b)`,
:math:`R_b \mathrel{-}= \Delta x_{bj}(c_b S_b + S^{(2)}_b)`, :math:`Q_{bf} \mathrel{+}= \Delta
x_{bj}` (the linear terms: :math:`h_n = x_{bj}`, :math:`\sum h^2 = \sum x^2 |b|`, :math:`\sum h
e = \sum x E_b`). A sweep is one compiled program (`sweep`: a ``fori_loop`` over the
factors; within a factor each group's draws are `_onehot_update` or `_block_update`, the
latter a ``fori_loop`` over the block's columns); its cost is :math:`O(k(N + \mathrm{nnz}))`
for :math:`N` ratings and the blocks' entries. On the CPU, where the kernels are built
(`recsys_jax.engine.kernels`), each group's draws for a factor are one call of a C++ kernel
(``bfm_gibbs.cc``: a few passes over the ratings and the block's entries), which computes
what the JAX path does to float rounding (tested): on ml-latest-small a sweep takes about
50 ms on two cores, 256 sweeps 14-18 s. Tested: a sweep against the same draws written out
in float64 on the expanded design matrix, and the features against test rows
(`recsys_jax.data.relational`).

Prediction is the mean of :math:`\hat y` over kept samples (after ``burn_in`` sweeps, one
sample every ``thin`` sweeps, at most ``num_samples`` kept: a ring, the last ones), with
the samples' spread beside it (`predict_std`: :math:`\sqrt{\mathrm{Var}_s \hat y^{(s)} +
\overline{1/\alpha^{(s)}}}`, the posterior predictive standard deviation). Per sample, each
user's features fold into one vector and one number (:math:`a_u = v_u + Q_u`, the factors
of its id and of its set, and the terms that involve only them), the same for each movie and
day, so a prediction is :math:`w_0 + s_u + s_i + s_d + a_u^\top b_i + a_u^\top c_d + b_i^\top
c_d` averaged over the samples: a gather and a few dot products.

**Ordinal probit** (``ordinal=True``; ``recsys-jax train --model bfm --loss ordinal``). The
levels :math:`\ell_1 < \dots < \ell_C` of the training ratings are ordered classes: rating
:math:`n` is :math:`\ell_c` exactly when a latent :math:`z_n \sim \mathcal N(\hat y(x_n), 1)`
falls in :math:`(\gamma_{c-1}, \gamma_c]`, :math:`\gamma_0 = -\infty`, :math:`\gamma_C =
\infty` (Albert & Chib 1993's data augmentation). The noise precision is 1 (the cut-points
set the scale), :math:`w_0` stays 0 (the cut-points carry the intercept) and the cut-points
have a flat prior on the ordered set, starting at :math:`\Phi^{-1}` of the training share at
or below each level. A sweep (`ordinal_sweep`):

1. the cut-points given :math:`\hat y`, with :math:`z` marginalised (Cowles 1996: given
   :math:`z`, a cut-point is confined between the latents of its two classes and barely
   moves), by Metropolis random walks on
   :math:`\prod_n [\Phi(\gamma_{c_n} - \hat y_n) - \Phi(\gamma_{c_n - 1} - \hat y_n)]`: each
   :math:`\gamma_c` in turn (reading the ratings of levels :math:`c` and :math:`c+1` only; scale
   :math:`2/\sqrt{n_c + n_{c+1}}`), then all of them by one common shift (scale
   :math:`2/\sqrt N`);
2. each :math:`z_n` from its truncated normal (`truncated_normal`: the inverse CDF, taken on
   the side of 0 where the interval's tail is);
3. the sweep above, with :math:`z` for :math:`y`.

The prediction is the posterior predictive expected level, :math:`\sum_c \ell_c P(y = \ell_c)`
with :math:`P(y = \ell_c)` the mean over the kept samples of :math:`\Phi(\gamma_c - \hat y) -
\Phi(\gamma_{c-1} - \hat y)` (`level_probs`; ``recsys-jax predict --distribution`` prints
them), and `predict_std` the standard deviation of the level under those probabilities.

How it relates to BPMF (`recsys_jax.models.bpmf`). With the id groups alone, no day, no
sets and no genres, :math:`\hat y = w_0 + w_u + w_i + v_u^\top v_i`: biased matrix factorization, which
BPMF samples by rows (each user's factor vector at once, under a full Gaussian-Wishart
prior); the FM samples coordinate by coordinate under a diagonal Normal-Gamma prior per
factor, which is what lets it add the sets and the day at the cost of their size.

``TrainConfig``: ``epochs`` is the number of sweeps (burn-in included); the learning rate,
batch size, schedule and penalties do not apply. The reported training loss is the mean
squared residual of the current sample. Fold-in is not supported (a new user is a new
block row: retrain).
"""
from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from recsys_jax.data.ratings import MAX_LEVELS
from recsys_jax.data.relational import build_features, day_numbers, has_genres
from recsys_jax.models.spec import ModelSpec

GROUPS = ("user", "item", "day", "rated", "raters", "genres")  # the feature groups, in the sweep's order
BASE_GROUPS = 5  # every chain has the first five (a group that is off stays at 0); "genres" only where built
GENRE_MODES = ("auto", "on", "off")  # Config.genres
PRIOR = {"a0": 1.0, "b0": 1.0, "gamma0": 1.0, "mu0": 0.0, "lambda0": 1.0}


class Config(NamedTuple):
    embedding_dim: int = 10  # k, the rank (Rendle et al. 2019's and the issue's: 10)
    burn_in: int = 16  # sweeps before samples are kept
    num_samples: int = 64  # the most samples kept (a ring: the last ones)
    thin: int = 0  # keep a sample every `thin` sweeps; 0: spread num_samples over the sweeps after burn-in
    day: bool = True  # the rating's day as a feature group
    implicit: bool = True  # the sets N(u) and N(i) as feature groups
    genres: str = "auto"  # the genres as a sixth group: "auto" (where the movies table lists any), "on", "off"
    init_scale: float = 0.1  # v starts N(0, init_scale^2)
    num_days: int = 0  # D, the training days: set from the training data (configure)
    ordinal: bool = False  # ordinal probit over the rating levels instead of Gaussian noise (`--loss ordinal`)
    num_levels: int = 0  # C, the training rating levels when ordinal: set from the training data (configure)
    num_genres: int = 0  # G, the genres of the sixth group (0: no such group): set from the movies table (configure)
    mean_rating: float = 3.5  # set by `fit` to the training mean: w_0 starts there
    y_range: tuple[float, float] | None = None  # not supported


class Aux(NamedTuple):
    """What the sampler and prediction read besides the parameters (from the training rows)."""

    day_vocab: Array  # int32[D]: the training days (days since the epoch), sorted
    rated_indptr: Array  # int32[U + 1]: N(u), CSR over movies
    rated_items: Array  # int32[nnz]
    rated_values: Array  # float32[nnz]: 1 / sqrt(|N(u)|)
    raters_indptr: Array  # int32[I + 1]: N(i), CSR over users
    raters_users: Array  # int32[nnz]
    raters_values: Array  # float32[nnz]
    levels: Array  # float32[C]: the training rating levels, sorted (the ordinal classes)
    genres_indptr: Array  # int32[I + 1]: G(i), CSR over genres (all empty without the genre group)
    genres_ids: Array  # int32[nnz]
    genres_values: Array  # float32[nnz]: 1 / sqrt(|G(i)|)


class Params(NamedTuple):
    """The kept samples (``S`` = ``num_samples`` slots; unfilled slots have weight 0)."""

    sample_mask: Array  # float32[S]: 1 for a filled slot
    global_bias: Array  # float32[S]: w_0 per sample
    noise_var: Array  # float32[S]: 1 / alpha per sample
    user_scalar: Array  # float32[U, S]: s_u per sample
    item_scalar: Array  # float32[I, S]
    day_scalar: Array  # float32[D + 1, S] (row D: a day outside the training days, 0)
    user_vector: Array  # float32[U, S, K]: a_u per sample
    item_vector: Array  # float32[I, S, K]
    day_vector: Array  # float32[D + 1, S, K]
    cutpoints: Array  # float32[S, C - 1] (ordinal; [S, 0] otherwise): gamma_1 < ... < gamma_{C-1} per sample


def prepare(train, config: Config = Config()) -> Aux:
    """The training days and the implicit sets, from the training rows only; the genres from
    the movies table (``config.genres``: "on", or "auto" where it lists them)."""
    if config.genres not in GENRE_MODES:
        raise ValueError(f"bfm: genres must be one of {', '.join(GENRE_MODES)}; got {config.genres!r}")
    f = build_features(train, genres=config.genres == "on" or (config.genres == "auto" and has_genres(train)))
    vocab = np.unique(day_numbers(train.timestamps))  # floor(days(t)): the day `day_slots` finds at prediction
    b, c = f.rated_by_user, f.raters_of_item
    levels = np.unique(np.asarray(train.ratings, np.float32))
    if config.ordinal and not 2 <= len(levels) <= MAX_LEVELS:
        raise ValueError(f"bfm: ordinal needs 2 to {MAX_LEVELS} distinct training ratings (star levels), "
                         f"got {len(levels)}")
    g = f.genres_of_item
    genres = ((np.zeros(train.num_items + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32)) if g is None
              else (g.indptr, g.indices, g.values))
    return Aux(jnp.asarray(vocab.astype(np.int32)), jnp.asarray(b.indptr.astype(np.int32)),
               jnp.asarray(b.indices), jnp.asarray(b.values), jnp.asarray(c.indptr.astype(np.int32)),
               jnp.asarray(c.indices), jnp.asarray(c.values), jnp.asarray(levels),
               jnp.asarray(genres[0].astype(np.int32)), jnp.asarray(genres[1]), jnp.asarray(genres[2]))


def configure(config: Config, aux: Aux) -> Config:
    """``num_days``: the number of distinct training days (the day group's size); ``num_levels``:
    the number of training rating levels when ordinal (else 0); ``num_genres``: the genres
    `prepare` found (0: no genre group)."""
    return config._replace(num_days=int(aux.day_vocab.shape[0]),
                           num_levels=int(aux.levels.shape[0]) if config.ordinal else 0,
                           num_genres=_num_genres(aux))


def _num_genres(aux: Aux) -> int:
    """The genres of the genre block (every one is some movie's: `genre_sets`); 0 without it."""
    return int(np.asarray(aux.genres_ids).max(initial=-1)) + 1


def group_sizes(num_users: int, num_items: int, config: Config) -> tuple:
    """The features of each group (`GROUPS`; "genres" only where `prepare` built it), for a
    ``config`` that `configure` has set."""
    base = (int(num_users), int(num_items), int(config.num_days), int(num_items), int(num_users))
    return base + ((int(config.num_genres),) if config.num_genres > 0 else ())


def init(key: Array, num_users: int, num_items: int, config: Config = Config()) -> Params:
    """An empty store (predicts 0 until a sample is kept)."""
    s, k, num_days = int(config.num_samples), int(config.embedding_dim), int(config.num_days)
    z = functools.partial(jnp.zeros, dtype=jnp.float32)
    return Params(z(s), z(s), z(s), z((num_users, s)), z((num_items, s)), z((num_days + 1, s)),
                  z((num_users, s, k)), z((num_items, s, k)), z((num_days + 1, s, k)),
                  z((s, max(int(config.num_levels) - 1, 0))))


def day_slots(aux: Aux, times: Array) -> Array:
    """Each time's (float days) slot among the training days; D (no feature) for another day."""
    day = jnp.floor(times).astype(jnp.int32)
    vocab = aux.day_vocab
    slot = jnp.clip(jnp.searchsorted(vocab, day), 0, max(vocab.shape[0] - 1, 0))
    return jnp.where((vocab.shape[0] > 0) & (vocab[slot] == day), slot, vocab.shape[0])


def sample_scores(params: Params, users: Array, items: Array, days: Array) -> Array:
    r""":math:`\hat y^{(s)}` of every kept sample, ``float32[B, S]`` (unfilled slots: 0)."""
    a, b, c = params.user_vector[users], params.item_vector[items], params.day_vector[days]
    cross = jnp.sum(a * b + a * c + b * c, axis=-1)
    return (params.global_bias + params.user_scalar[users] + params.item_scalar[items] + params.day_scalar[days]
            + cross) * params.sample_mask


def _days(params: Params, users: Array, aux: Aux | None, times: Array | None) -> Array:
    """Each pair's day slot (the no-feature slot D without ``times``)."""
    if times is None or aux is None:
        return jnp.full(users.shape, params.day_scalar.shape[0] - 1, jnp.int32)
    return day_slots(aux, times)


def level_probs(params: Params, users: Array, items: Array, *, aux: Aux, times: Array | None = None) -> Array:
    r"""Ordinal: the posterior predictive probability of each rating level, ``float32[B, C]``
    (rows sum to 1): :math:`P(y = \ell_c) = \Phi(\gamma_c - \hat y) - \Phi(\gamma_{c-1} - \hat y)`
    averaged over the kept samples."""
    if params.cutpoints.shape[1] == 0:
        raise ValueError("bfm: level_probs needs a model sampled with ordinal=True (`--loss ordinal`)")
    scores = sample_scores(params, users, items, _days(params, users, aux, times))  # [B, S]
    probs = probit_probs(params.cutpoints[None], scores)  # [B, S, C]
    mask = params.sample_mask[None, :, None]
    return jnp.sum(probs * mask, axis=1) / jnp.maximum(jnp.sum(params.sample_mask), 1.0)


def apply(params: Params, users: Array, items: Array, key: Array | None = None, *, config: Config = Config(),
          aux: Aux | None = None, times: Array | None = None) -> Array:
    r"""The posterior mean of the rating, ``float32[B]``: the mean over the kept samples of
    :math:`\hat y`, or (ordinal) of the expected level. Without ``times`` the day has no feature."""
    if params.cutpoints.shape[1] > 0:
        if aux is None:
            raise ValueError("bfm: an ordinal model's prediction needs its aux (the rating levels)")
        return level_probs(params, users, items, aux=aux, times=times) @ aux.levels
    scores = sample_scores(params, users, items, _days(params, users, aux, times))
    return jnp.sum(scores, axis=-1) / jnp.maximum(jnp.sum(params.sample_mask), 1.0)


def predict_one(params: Params, user: Array, item: Array, key: Array | None = None, *, config: Config = Config(),
                aux: Aux | None = None, times: Array | None = None) -> Array:
    return apply(params, user[None], item[None], config=config, aux=aux,
                 times=None if times is None else jnp.reshape(times, (1,)))[0]


def predict_std(params: Params, users: Array, items: Array, *, aux: Aux | None = None,
                times: Array | None = None) -> Array:
    r"""The posterior predictive standard deviation of each rating, ``float32[B]``: the spread
    of :math:`\hat y` over the kept samples and the mean noise variance :math:`1/\alpha`; for
    an ordinal model, the standard deviation of the level under `level_probs`."""
    if params.cutpoints.shape[1] > 0:
        probs = level_probs(params, users, items, aux=aux, times=times)
        mean = probs @ aux.levels
        return jnp.sqrt(jnp.maximum(probs @ aux.levels ** 2 - mean ** 2, 0.0))
    scores = sample_scores(params, users, items, _days(params, users, aux, times))
    n = jnp.maximum(jnp.sum(params.sample_mask), 1.0)
    mean = jnp.sum(scores, axis=-1, keepdims=True) / n
    spread = jnp.sum(((scores - mean) * params.sample_mask) ** 2, axis=-1) / n
    return jnp.sqrt(spread + jnp.sum(params.noise_var * params.sample_mask) / n)


# -- the sampler -----------------------------------------------------------------------------
class Design(NamedTuple):
    """The training ratings and the blocks, as the sweep reads them (device arrays)."""

    y: Array  # float32[N]
    user: Array  # int32[N]
    item: Array  # int32[N]
    day: Array  # int32[N]
    # block "rated" (rows: users; features: movies) and "raters" (rows: movies; features: users),
    # each in CSR (by block row) and CSC (by feature) form; the CSC arrays end in `span` padding
    # entries (row R, value 0), so that a fixed-length slice from any column's start stays inside.
    rated_ptr: Array  # int32[U + 1]: CSR row pointer
    rated_row: Array  # int32[nnz]: the block row (user) of each CSR entry
    rated_feature: Array  # int32[nnz]
    rated_value: Array  # float32[nnz]
    rated_col_ptr: Array  # int32[I + 1]: CSC column pointer
    rated_col_row: Array  # int32[nnz + L]
    rated_col_value: Array  # float32[nnz + L]
    rated_span: Array  # float32[L]: L, the longest column (its shape only)
    raters_ptr: Array
    raters_row: Array
    raters_feature: Array
    raters_value: Array
    raters_col_ptr: Array
    raters_col_row: Array
    raters_col_value: Array
    raters_span: Array
    # block "genres" (rows: movies; features: genres), the same forms (empty without the genre group)
    genres_ptr: Array
    genres_row: Array
    genres_feature: Array
    genres_value: Array
    genres_col_ptr: Array
    genres_col_row: Array
    genres_col_value: Array
    genres_span: Array


def _columns(rows: np.ndarray, features: np.ndarray, values: np.ndarray, num_features: int, num_rows: int):
    """CSC of the block: column pointer, rows and values, with the padding tail."""
    order = np.lexsort((rows, features))
    counts = np.bincount(features, minlength=num_features)
    span = max(int(counts.max(initial=0)), 1)
    ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    col_row = np.concatenate([rows[order], np.full(span, num_rows)]).astype(np.int32)
    col_value = np.concatenate([values[order], np.zeros(span)]).astype(np.float32)
    return ptr, col_row, col_value, np.zeros(span, np.float32)


def make_design(train, aux: Aux) -> Design:
    """`Design` of the training rows ``train`` (whose features ``aux`` holds)."""
    users, items = np.asarray(train.users, np.int32), np.asarray(train.items, np.int32)
    vocab = np.asarray(aux.day_vocab)
    day = np.searchsorted(vocab, day_numbers(train.timestamps)).astype(np.int32)
    parts = []
    num_genres = _num_genres(aux)
    for indptr, feats, vals, num_rows, num_feats in (
            (aux.rated_indptr, aux.rated_items, aux.rated_values, train.num_users, train.num_items),
            (aux.raters_indptr, aux.raters_users, aux.raters_values, train.num_items, train.num_users),
            (aux.genres_indptr, aux.genres_ids, aux.genres_values, train.num_items, num_genres)):
        indptr, feats, vals = np.asarray(indptr), np.asarray(feats), np.asarray(vals)
        rows = np.repeat(np.arange(num_rows, dtype=np.int32), np.diff(indptr))
        parts += [indptr.astype(np.int32), rows, feats, vals, *_columns(rows, feats, vals, num_feats, num_rows)]
    return Design(*(jnp.asarray(a) for a in (np.asarray(train.ratings, np.float32), users, items, day, *parts)))


class State(NamedTuple):
    w0: Array  # float32[]
    w: tuple  # per group: float32[n_g]
    v: tuple  # per group: float32[n_g, K]
    alpha: Array  # float32[]
    mu_w: Array  # float32[G]
    lam_w: Array  # float32[G]
    mu_v: Array  # float32[G, K]
    lam_v: Array  # float32[G, K]


def _block_sums(v_col: Array, w: Array, d: Design, block: str, num_rows: int):
    """Per block row: Q (sum x v), the sum of squares (sum x^2 v^2), and L (sum x w)."""
    row, feat, val = getattr(d, f"{block}_row"), getattr(d, f"{block}_feature"), getattr(d, f"{block}_value")
    q = jax.ops.segment_sum(val[:, None] * v_col[feat], row, num_rows)
    ssq = jax.ops.segment_sum((val * val)[:, None] * v_col[feat] ** 2, row, num_rows)
    lin = jax.ops.segment_sum(val * w[feat], row, num_rows)
    return q, ssq, lin


def predictions(state: State, d: Design, sizes: tuple) -> Array:
    r""":math:`\hat y` of the training ratings, through the per-user, per-movie and per-day
    parts of `_sample` (the store's form: tested against the expanded design in float64)."""
    return _predictions_and_q(state, d, sizes)[0]


def _predictions_and_q(state: State, d: Design, sizes: tuple) -> tuple[Array, Array]:
    r""":math:`\hat y` [N] and :math:`q` [N, K] (:math:`q_{nf} = \sum_j v_{jf} x_{nj}` =
    :math:`a_u + b_i + c_d`) of the training ratings."""
    (su, a), (si, b), (sd, c) = _sample(state, d, sizes)
    u, i, t = d.user, d.item, d.day
    au, bi, ct = a[u], b[i], c[t]
    yhat = state.w0 + su[u] + si[i] + sd[t] + jnp.sum(au * bi + au * ct + bi * ct, axis=1)
    return yhat, au + bi + ct


def _draw(sum_h2, sum_he, old, lam, mu, alpha, z):
    precision = alpha * sum_h2 + lam
    mean = (alpha * (sum_he + old * sum_h2) + lam * mu) / precision
    return mean + z * jax.lax.rsqrt(precision)


def _onehot_update(idx: Array, q: Array, e: Array, old: Array, z: Array, lam, mu, alpha, factor: bool,
                   kernel: bool = False) -> tuple[Array, Array, Array]:
    """One one-hot group's features (``idx`` [N]: each rating's), all drawn at once: they
    share no rating, so each conditional reads its own ratings alone (:math:`h_n = q_{nf} -
    v_{jf}` for a factor, 1 for a linear term). Returns the new values and the ratings' new
    ``e`` and ``q``. With ``kernel``, one CPU kernel call (``bfm_gibbs.cc``)."""
    if kernel:
        call = jax.ffi.ffi_call("recsys_bfm_onehot", (jax.ShapeDtypeStruct(old.shape, jnp.float32),
                                                      jax.ShapeDtypeStruct(e.shape, jnp.float32),
                                                      jax.ShapeDtypeStruct(q.shape, jnp.float32)))
        return call(idx, q, e, old, z, jnp.stack([lam, mu, alpha]).astype(jnp.float32), factor=np.int32(factor))
    m = old.shape[0]
    h = q - old[idx] if factor else jnp.ones_like(e)
    new = _draw(jax.ops.segment_sum(h * h, idx, m), jax.ops.segment_sum(h * e, idx, m), old, lam, mu, alpha, z)
    delta = (new - old)[idx]
    return new, e - delta * h, (q + delta) if factor else q


def _block_update(d: Design, block: str, rows_of: Array, num_rows: int, q: Array, e: Array, old: Array, z: Array,
                  lam, mu, alpha, factor: bool, kernel: bool = False) -> tuple[Array, Array, Array]:
    """One block's features (its factor ``f`` column ``old``, or its linear terms), drawn one
    after another (see the module docstring), from the ratings' ``q`` (their sum :math:`q_{nf}`;
    unused for linear terms) and residuals ``e``; ``rows_of`` [N] is each rating's block row.
    Returns the new values [F] and the ratings' new ``e`` and ``q``. With ``kernel`` the CPU
    kernel (`recsys_jax.engine.kernels`, ``bfm_gibbs.cc``) does it all in one call."""
    ptr, feat, val = (getattr(d, f"{block}_{x}") for x in ("ptr", "feature", "value"))
    col_ptr, col_row, col_val = (getattr(d, f"{block}_{x}") for x in ("col_ptr", "col_row", "col_value"))
    scalars = jnp.stack([lam, mu, alpha]).astype(jnp.float32)
    if kernel:
        call = jax.ffi.ffi_call("recsys_bfm_block", (jax.ShapeDtypeStruct(old.shape, jnp.float32),
                                                     jax.ShapeDtypeStruct(e.shape, jnp.float32),
                                                     jax.ShapeDtypeStruct(q.shape, jnp.float32)))
        return call(ptr, feat, val, col_ptr, col_row, col_val, rows_of, q, e, old, z, scalars,
                    factor=np.int32(factor))
    row = getattr(d, f"{block}_row")
    span = getattr(d, f"{block}_span").shape[0]

    def sums(v):  # per block row: Q = sum x v, and sum x^2 v^2 (a factor) or L = sum x w (linear)
        return (jax.ops.segment_sum(val * v[feat], row, num_rows),
                jax.ops.segment_sum(val * val * v[feat] ** 2, row, num_rows))

    def per_row(x):  # a block row's sum over its ratings, then padding's 0
        return jnp.append(jax.ops.segment_sum(x, rows_of, num_rows), 0.0)

    q_old, ss_old = sums(old)
    r = q - q_old[rows_of] if factor else jnp.zeros_like(e)
    cnt, s1, s2, e1, er = per_row(jnp.ones_like(e)), per_row(r), per_row(r * r), per_row(e), per_row(r * e)
    qb = jnp.append(q_old, 0.0)

    def body(j, carry):
        vals, e1, er, qb = carry
        start, count = col_ptr[j], col_ptr[j + 1] - col_ptr[j]
        inside = jnp.arange(span) < count
        rows = jnp.where(inside, jax.lax.dynamic_slice(col_row, (start,), (span,)), num_rows)
        x = jnp.where(inside, jax.lax.dynamic_slice(col_val, (start,), (span,)), 0.0)
        v = vals[j]
        c = qb[rows] - v * x if factor else jnp.ones_like(x)
        cn, a1, a2 = cnt[rows], s1[rows], s2[rows]
        sum_h2 = jnp.sum(x * x * (cn * c * c + 2.0 * c * a1 + a2))
        sum_he = jnp.sum(x * (c * e1[rows] + er[rows]))
        new = _draw(sum_h2, sum_he, v, lam, mu, alpha, z[j])
        delta = new - v
        e1 = e1.at[rows].add(-delta * x * (cn * c + a1))
        er = er.at[rows].add(-delta * x * (c * a1 + a2))
        if factor:
            qb = qb.at[rows].add(delta * x)
        return vals.at[j].set(new), e1, er, qb

    new, _, _, _ = jax.lax.fori_loop(0, old.shape[0], body, (old, e1, er, qb))
    q_new, ss_new = sums(new)
    dq = (q_new - q_old)[rows_of]
    if not factor:  # a linear term: q_new holds L = sum x w
        return new, e - dq, q
    return new, e - (dq * (q + 0.5 * dq) - 0.5 * (ss_new - ss_old)[rows_of]), q + dq


class Draws(NamedTuple):
    """Every random variate of one sweep, drawn up front (`draws`): standard Gamma and
    Normal variates, scaled by the sweep (so that a reference can replay them)."""

    g_alpha: Array  # Gamma(a0 + N / 2)
    g_lam_w: Array  # [G]: Gamma(a0 + (n_g + 1) / 2)
    z_mu_w: Array  # [G]
    g_lam_v: Array  # [G, K]
    z_mu_v: Array  # [G, K]
    z_w0: Array  # []
    z_w: tuple  # per group [n_g]
    z_v: tuple  # per group [n_g, K]


def draws(key: Array, n: int, sizes: tuple, k: int) -> Draws:
    """The variates of one sweep of ``n`` ratings and groups of ``sizes`` features. The
    groups after the first `BASE_GROUPS` draw from a key of their own, so that adding one
    leaves the others' variates as they were."""
    keys = jax.random.split(key, 8)
    base, extra = _group_draws(keys, sizes[:BASE_GROUPS], k), sizes[BASE_GROUPS:]
    if extra:
        more = _group_draws(jax.random.split(jax.random.fold_in(key, 1), 8), extra, k)
        base = [jnp.concatenate([a, b]) if isinstance(a, Array) else a + b for a, b in zip(base, more)]
    g_lam_w, z_mu_w, g_lam_v, z_mu_v, z_w, z_v = base
    return Draws(jax.random.gamma(keys[0], PRIOR["a0"] + 0.5 * n), g_lam_w, z_mu_w, g_lam_v, z_mu_v,
                 jax.random.normal(keys[5]), z_w, z_v)


def _group_draws(keys: Array, sizes: tuple, k: int) -> list:
    """The per-group variates of `Draws` (from ``keys[1:5]`` and ``keys[6:8]``)."""
    a0 = PRIOR["a0"]
    shapes = jnp.asarray([a0 + 0.5 * (m + 1) for m in sizes], jnp.float32)
    return [jax.random.gamma(keys[1], shapes), jax.random.normal(keys[2], (len(sizes),)),
            jax.random.gamma(keys[3], jnp.broadcast_to(shapes[:, None], (len(sizes), k))),
            jax.random.normal(keys[4], (len(sizes), k)),
            tuple(jax.random.normal(kk, (m,)) for kk, m in zip(jax.random.split(keys[6], len(sizes)), sizes)),
            tuple(jax.random.normal(kk, (m, k)) for kk, m in zip(jax.random.split(keys[7], len(sizes)), sizes))]


@functools.partial(jax.jit, static_argnames=("sizes", "use_day", "use_implicit", "kernel"))
def sweep(key: Array, state: State, d: Design, sizes: tuple, use_day: bool, use_implicit: bool,
          kernel: bool = False) -> tuple[State, Array]:
    """One Gibbs sweep (the module docstring's order); returns the new state and the
    training mean squared residual of it. ``kernel``: the blocks' sequential draws on the
    CPU kernel (else a JAX loop)."""
    return sweep_with(draws(key, d.y.shape[0], sizes, state.v[0].shape[1]), state, d, sizes, use_day, use_implicit,
                      kernel)


def sweep_with(r: Draws, state: State, d: Design, sizes: tuple, use_day: bool, use_implicit: bool,
               kernel: bool = False) -> tuple[State, Array]:
    """`sweep` with its variates given."""
    state, e = _sweep(r, state, d, sizes, use_day, use_implicit, kernel)
    return state, jnp.mean(e * e)


def _sweep(r: Draws, state: State, d: Design, sizes: tuple, use_day: bool, use_implicit: bool,
           kernel: bool = False, ordinal: bool = False, start: tuple | None = None) -> tuple[State, Array]:
    r"""`sweep_with`, returning the new residuals :math:`y - \hat y` [N]. ``ordinal``: ``d.y``
    holds the latent :math:`z`, whose noise precision is 1 (not drawn) and whose intercept is
    the cut-points' (:math:`w_0` stays 0); ``start``: :math:`(\hat y, q)` of ``state``
    (`_predictions_and_q`) when the caller has them."""
    p = PRIOR
    n = d.y.shape[0]
    active = (True, True, use_day, use_implicit, use_implicit, True)[:len(sizes)]  # genres: there when sized
    # alpha | e
    # a factor's column of q changes only in its own step
    yhat, q_all = _predictions_and_q(state, d, sizes) if start is None else start
    e = d.y - yhat
    alpha = jnp.float32(1.0) if ordinal else r.g_alpha / (p["b0"] + 0.5 * jnp.sum(e * e))
    # hyperparameters | parameters, per group (lambda given the old mu, then mu given lambda)
    mu_w, lam_w, mu_v, lam_v = [], [], [], []
    for g in range(len(sizes)):
        w, v = state.w[g], state.v[g]
        m = w.shape[0]
        sw = jnp.sum((w - state.mu_w[g]) ** 2) + p["gamma0"] * (state.mu_w[g] - p["mu0"]) ** 2
        lw = r.g_lam_w[g] / (p["b0"] + 0.5 * sw)
        muw = (jnp.sum(w) + p["gamma0"] * p["mu0"]) / (m + p["gamma0"]) + r.z_mu_w[g] * jax.lax.rsqrt(
            (m + p["gamma0"]) * lw)
        sv = jnp.sum((v - state.mu_v[g]) ** 2, axis=0) + p["gamma0"] * (state.mu_v[g] - p["mu0"]) ** 2
        lv = r.g_lam_v[g] / (p["b0"] + 0.5 * sv)
        muv = (jnp.sum(v, axis=0) + p["gamma0"] * p["mu0"]) / (m + p["gamma0"]) + r.z_mu_v[g] * jax.lax.rsqrt(
            (m + p["gamma0"]) * lv)
        keep = active[g]
        mu_w.append(muw if keep else state.mu_w[g])
        lam_w.append(lw if keep else state.lam_w[g])
        mu_v.append(muv if keep else state.mu_v[g])
        lam_v.append(lv if keep else state.lam_v[g])
    state = state._replace(alpha=alpha, mu_w=jnp.stack(mu_w), lam_w=jnp.stack(lam_w), mu_v=jnp.stack(mu_v),
                           lam_v=jnp.stack(lam_v))
    # w0
    precision = alpha * n + p["lambda0"]
    w0_new = state.w0 if ordinal else (alpha * jnp.sum(e + state.w0)) / precision + r.z_w0 * jax.lax.rsqrt(precision)
    e = e - (w0_new - state.w0)
    state = state._replace(w0=w0_new)
    num_users, num_items = sizes[0], sizes[1]
    onehot = ((0, d.user), (1, d.item), (2, d.day))
    blocks = ((3, "rated", d.user, num_users), (4, "raters", d.item, num_items),
              (5, "genres", d.item, num_items))[:len(sizes) - len(onehot)]
    zw, zv = r.z_w, r.z_v
    # linear terms: one-hot groups at once, block features one after another
    w = list(state.w)
    for g, idx in onehot:
        if not active[g]:
            continue
        w[g], e, _ = _onehot_update(idx, jnp.zeros_like(e), e, w[g], zw[g], state.lam_w[g], state.mu_w[g], alpha,
                                    factor=False, kernel=kernel)
    for g, block, rows_of, num_rows in blocks:
        if not active[g]:
            continue
        w[g], e, _ = _block_update(d, block, rows_of, num_rows, jnp.zeros_like(e), e, w[g], zw[g], state.lam_w[g],
                                   state.mu_w[g], alpha, factor=False, kernel=kernel)
    state = state._replace(w=tuple(w))

    # factors: for each f, every group
    def factor_step(f, carry):
        v, e = carry
        v = list(v)
        col = [jax.lax.dynamic_index_in_dim(t, f, axis=1, keepdims=False) for t in v]
        zf = [jax.lax.dynamic_index_in_dim(z, f, axis=1, keepdims=False) for z in zv]
        lam, mu = state.lam_v[:, f], state.mu_v[:, f]
        q = jax.lax.dynamic_index_in_dim(q_all, f, axis=1, keepdims=False)
        for g, idx in onehot:
            if not active[g]:
                continue
            col[g], e, q = _onehot_update(idx, q, e, col[g], zf[g], lam[g], mu[g], alpha, factor=True, kernel=kernel)
        for g, block, rows_of, num_rows in blocks:
            if not active[g]:
                continue
            col[g], e, q = _block_update(d, block, rows_of, num_rows, q, e, col[g], zf[g], lam[g], mu[g], alpha,
                                         factor=True, kernel=kernel)
        v = [jax.lax.dynamic_update_index_in_dim(t, c[:, None], f, axis=1) for t, c in zip(v, col)]
        return tuple(v), e

    v, e = jax.lax.fori_loop(0, state.v[0].shape[1], factor_step, (tuple(state.v), e))
    return state._replace(v=v), e


# -- ordinal probit ----------------------------------------------------------------------------
def log_interval(a: Array, b: Array) -> Array:
    r""":math:`\log(\Phi(b) - \Phi(a))` for :math:`a < b` (either may be infinite), computed on
    the side of 0 where the normal's tail is (``log_ndtr`` of negative arguments): no
    cancellation when both bounds are far out."""
    flip = a > 0
    lo, hi = jnp.where(flip, -b, a), jnp.where(flip, -a, b)
    la, lb = jax.scipy.special.log_ndtr(lo), jax.scipy.special.log_ndtr(hi)
    return lb + jnp.log(-jnp.expm1(la - lb))


def truncated_normal(u: Array, a: Array, b: Array) -> Array:
    r"""The standard normal truncated to :math:`[a, b]` by the inverse CDF of ``u`` ~ U(0, 1):
    :math:`\Phi^{-1}(\Phi(a) + u(\Phi(b) - \Phi(a)))`, on the tail's side of 0 (as
    `log_interval`), clipped into :math:`[a, b]` where float32 runs out (the probability kept
    inside :math:`(0, 1)`, so that the draw is never infinite: ``u`` may be 0, and
    :math:`\Phi(b)` underflows to 0 beyond :math:`b \approx -13`, where the draw is then ``b``)."""
    flip = a > 0
    lo, hi = jnp.where(flip, -b, a), jnp.where(flip, -a, b)
    pa, pb = jax.scipy.special.ndtr(lo), jax.scipy.special.ndtr(hi)
    p = pa + jnp.where(flip, 1.0 - u, u) * (pb - pa)
    p = jnp.clip(p, jnp.finfo(p.dtype).tiny, jnp.nextafter(jnp.ones((), p.dtype), 0))
    x = jnp.clip(jax.scipy.special.ndtri(p), lo, hi)
    return jnp.where(flip, -x, x)


class Ordinal(NamedTuple):
    """The ordinal likelihood's data: each rating's class and the cut-point moves' scales."""

    classes: Array  # int32[N]: the level index of each training rating, sorted by class
    order: Array  # int32[N]: the ratings sorted by class (classes = the sorted ratings' levels)
    steps: Array  # float32[C]: the random-walk scale of each cut-point's move, then of the joint shift


def ordinal_data(train, aux: Aux) -> tuple[Ordinal, tuple]:
    r"""`Ordinal` of the training rows, and ``bounds`` (static): the start of each class among
    the sorted ratings, and N. The move of cut-point :math:`c` reads classes :math:`c` and
    :math:`c+1` alone; its scale is :math:`2/\sqrt{n_c + n_{c+1}}`, the shift's :math:`2/\sqrt N`."""
    levels = np.asarray(aux.levels)
    cls = np.searchsorted(levels, np.asarray(train.ratings, np.float32)).astype(np.int32)
    order = np.argsort(cls, kind="stable").astype(np.int32)
    counts = np.bincount(cls, minlength=len(levels))
    bounds = tuple(int(x) for x in np.concatenate([[0], np.cumsum(counts)]))
    steps = np.append(2.0 / np.sqrt(counts[:-1] + counts[1:]), 2.0 / np.sqrt(len(cls))).astype(np.float32)
    return Ordinal(jnp.asarray(cls[order]), jnp.asarray(order), jnp.asarray(steps)), bounds


def initial_cutpoints(train, aux: Aux) -> Array:
    r""":math:`\gamma_c = \Phi^{-1}(F_c)`, :math:`F_c` the share of training ratings at or below
    level :math:`c`: with :math:`\hat y = 0` the model predicts the training distribution."""
    cls = np.searchsorted(np.asarray(aux.levels), np.asarray(train.ratings, np.float32))
    cdf = np.cumsum(np.bincount(cls, minlength=aux.levels.shape[0]))[:-1] / len(cls)
    return jax.scipy.special.ndtri(jnp.asarray(cdf, jnp.float32))


def padded(cuts: Array) -> Array:
    r""":math:`(\gamma_0 = -\infty, \gamma_1, \dots, \gamma_{C-1}, \gamma_C = \infty)` along the last
    axis: level :math:`c`'s interval is ``(padded[c], padded[c + 1]]``."""
    end = jnp.full(cuts.shape[:-1] + (1,), jnp.inf, cuts.dtype)
    return jnp.concatenate([-end, cuts, end], axis=-1)


def probit_probs(cuts: Array, scores: Array) -> Array:
    r""":math:`P(y = \ell_c) = \Phi(\gamma_c - \hat y) - \Phi(\gamma_{c-1} - \hat y)` of each score,
    ``float32[..., C]`` (``cuts`` float32[..., C - 1], broadcast against ``scores``)."""
    return jnp.diff(jax.scipy.special.ndtr(padded(cuts) - scores[..., None]), axis=-1)


def class_loglik(cuts: Array, yhat: Array, classes: Array) -> Array:
    r"""Each rating's :math:`\log P(y = \text{its level})` given :math:`\hat y` and the cut-points."""
    ext = padded(cuts)
    return log_interval(ext[classes] - yhat, ext[classes + 1] - yhat)


def move_cutpoints(z: Array, u: Array, cuts: Array, yhat: Array, od: Ordinal, bounds: tuple) -> Array:
    r"""Metropolis moves of the cut-points given :math:`\hat y` (``yhat`` sorted by class),
    :math:`z` marginalised (Cowles 1996): each :math:`\gamma_c` in turn by a Gaussian random
    walk (a proposal out of order is rejected), then all together by one shift; flat prior.
    ``z``, ``u`` float32[C]: the walks' normal and uniform variates."""
    num = cuts.shape[0]
    for c in range(num + 1):
        lo, hi = (bounds[c], bounds[c + 2]) if c < num else (0, bounds[-1])
        yh, cl = yhat[lo:hi], od.classes[lo:hi]
        step = z[c] * od.steps[c]
        if c < num:
            new = cuts.at[c].add(step)
            below = cuts[c - 1] if c > 0 else -jnp.inf
            above = cuts[c + 1] if c < num - 1 else jnp.inf
            ordered = (new[c] > below) & (new[c] < above)
        else:
            new, ordered = cuts + step, True
        gain = jnp.sum(class_loglik(new, yh, cl) - class_loglik(cuts, yh, cl))  # one sum: no cancellation
        cuts = jnp.where(ordered & (jnp.log(u[c]) < gain), new, cuts)
    return cuts


@functools.partial(jax.jit, static_argnames=("sizes", "bounds", "use_day", "use_implicit", "kernel"))
def ordinal_sweep(key: Array, state: State, cuts: Array, d: Design, od: Ordinal, levels: Array, sizes: tuple,
                  bounds: tuple, use_day: bool, use_implicit: bool, kernel: bool = False
                  ) -> tuple[State, Array, Array]:
    r"""One sweep of the ordinal probit: the cut-points given :math:`\hat y` (`move_cutpoints`),
    the latent :math:`z_n \sim \mathcal N(\hat y_n, 1)` truncated to its level's interval,
    then the FM's sweep on :math:`z` (`sweep_with`, ``ordinal=True``). Returns the new state,
    cut-points and the training MSE of the expected level."""
    k_cut, k_z, k_sweep = jax.random.split(key, 3)
    kz, ku = jax.random.split(k_cut)
    start = _predictions_and_q(state, d, sizes)
    yhat = start[0][od.order]
    cuts = move_cutpoints(jax.random.normal(kz, (cuts.shape[0] + 1,)), jax.random.uniform(ku, (cuts.shape[0] + 1,)),
                          cuts, yhat, od, bounds)
    ext = padded(cuts)
    t = truncated_normal(jax.random.uniform(k_z, yhat.shape), ext[od.classes] - yhat, ext[od.classes + 1] - yhat)
    z = jnp.zeros_like(yhat).at[od.order].set(yhat + t)
    state, e = _sweep(draws(k_sweep, d.y.shape[0], sizes, state.v[0].shape[1]), state, d._replace(y=z), sizes,
                      use_day, use_implicit, kernel, ordinal=True, start=start)
    expected = probit_probs(cuts, z - e) @ levels  # z - e: the new sample's y-hat
    return state, cuts, jnp.mean((expected - d.y) ** 2)


def _sample(state: State, d: Design, sizes: tuple) -> tuple:
    """One sample's per-user, per-movie and per-day (scalar, vector) for the store."""
    num_users, num_items = sizes[0], sizes[1]
    vu, vi, vd, vr, vs = state.v[:BASE_GROUPS]
    wu, wi, wd, wr, ws = state.w[:BASE_GROUPS]
    qr, ssr, lr = _block_sums(vr, wr, d, "rated", num_users)
    qs, sss, ls = _block_sums(vs, ws, d, "raters", num_items)
    if len(sizes) > BASE_GROUPS:  # the genres are the movie's too: they fold into its part
        qg, ssg, lg = _block_sums(state.v[5], state.w[5], d, "genres", num_items)
        qs, sss, ls = qs + qg, sss + ssg, ls + lg
    a, b = vu + qr, vi + qs
    s_u = wu + lr + 0.5 * jnp.sum(a * a - vu ** 2 - ssr, axis=1)
    s_i = wi + ls + 0.5 * jnp.sum(b * b - vi ** 2 - sss, axis=1)
    return (s_u, a), (s_i, b), (jnp.append(wd, 0.0), jnp.concatenate([vd, jnp.zeros_like(vd[:1])]))


@functools.partial(jax.jit, static_argnames=("sizes",))
def _store(params: Params, state: State, cuts: Array, d: Design, slot: Array, sizes: tuple) -> Params:
    (su, a), (si, b), (sd, c) = _sample(state, d, sizes)
    return Params(params.sample_mask.at[slot].set(1.0), params.global_bias.at[slot].set(state.w0),
                  params.noise_var.at[slot].set(1.0 / state.alpha), params.user_scalar.at[:, slot].set(su),
                  params.item_scalar.at[:, slot].set(si), params.day_scalar.at[:, slot].set(sd),
                  params.user_vector.at[:, slot].set(a), params.item_vector.at[:, slot].set(b),
                  params.day_vector.at[:, slot].set(c), params.cutpoints.at[slot].set(cuts))


def initial_state(key: Array, sizes: tuple, config: Config) -> State:
    """Factors N(0, init_scale^2) (0 in a group that is off), linear terms 0, w_0 the mean."""
    k = int(config.embedding_dim)
    keys = list(jax.random.split(key, BASE_GROUPS))
    keys += list(jax.random.split(jax.random.fold_in(key, 1), len(sizes) - BASE_GROUPS))  # as `draws`
    on = (True, True, bool(config.day), bool(config.implicit), bool(config.implicit), True)
    v = tuple(config.init_scale * jax.random.normal(kk, (m, k), jnp.float32) * float(a)
              for kk, m, a in zip(keys, sizes, on))
    g = len(sizes)
    return State(jnp.float32(config.mean_rating), tuple(jnp.zeros(m, jnp.float32) for m in sizes), v,
                 jnp.float32(1.0), jnp.zeros(g, jnp.float32), jnp.ones(g, jnp.float32), jnp.zeros((g, k), jnp.float32),
                 jnp.ones((g, k), jnp.float32))


def kept_sweeps(config: Config, sweeps: int | None) -> tuple[int, int]:
    """``(first, thin)``: the sweeps kept are ``first``, ``first + thin``, ... . After
    ``burn_in``, every ``thin``-th (``config.thin``, or spread so that ``num_samples`` cover the
    sweeps after burn-in), counted back from the last sweep when their number is known, so
    that the last sweep is kept and the ring holds the last samples."""
    burn_in, s = int(config.burn_in), int(config.num_samples)
    thin = int(config.thin) or (1 if sweeps is None else max(1, -(-(sweeps - burn_in) // s)))
    first = burn_in + 1 + ((sweeps - burn_in - 1) % thin if sweeps is not None and sweeps > burn_in else 0)
    return first, thin


def check_config(config: Config) -> None:
    if config.y_range is not None:
        raise ValueError("bfm: y_range is not supported (the Gibbs sampler's likelihood is Gaussian in the raw score)")
    if int(config.embedding_dim) < 1 or int(config.num_samples) < 1 or int(config.burn_in) < 0 or int(config.thin) < 0:
        raise ValueError(f"bfm: embedding_dim and num_samples must be >= 1, burn_in and thin >= 0; got "
                         f"{config.embedding_dim}, {config.num_samples}, {config.burn_in}, {config.thin}")


class Carry(NamedTuple):
    """Everything a chain carries from one sweep to the next (what a progress folder saves)."""

    sweep: Array  # int32[]: sweeps done
    kept: Array  # int32[]: samples kept so far
    state: State
    cuts: Array  # float32[C - 1]: the ordinal cut-points ([0] without)
    params: Params  # the store of kept samples


def initial_carry(key: Array, train, config: Config, aux: Aux | None = None) -> Carry:
    """The chain before its first sweep: `initial_state` (with :math:`w_0 = 0` and the cut-points
    at the training distribution when ordinal) and an empty store."""
    aux = prepare(train, config) if aux is None else aux
    config = configure(config, aux)
    sizes = group_sizes(train.num_users, train.num_items, config)
    init_key = jax.random.split(key)[0]
    state = initial_state(init_key, sizes, config)
    cuts = jnp.zeros((0,), jnp.float32)
    if config.ordinal:
        cuts = initial_cutpoints(train, aux)
        state = state._replace(w0=jnp.float32(0.0))  # the cut-points carry the intercept
    return Carry(jnp.int32(0), jnp.int32(0), state, cuts, init(init_key, train.num_users, train.num_items, config))


def fit_epochs(key: Array, train, config: Config, train_config=None, aux: Aux | None = None, options=None, *,
               start: Carry | None = None, carry: bool = False) -> Iterator[tuple]:
    """One Gibbs sweep per epoch, without end (`recsys_jax.training.fit.fit` stops at
    ``train_config.epochs``); yields ``(the store of kept samples, the training MSE of the
    current sample)``, and the `Carry` third with ``carry=True``. ``start``: a saved `Carry`
    to go on from (a resumed chain continues exactly as the uninterrupted one: sweep t's
    variates come from ``fold_in(key, t)``)."""
    check_config(config)
    if len(train) == 0:
        raise ValueError("bfm: train is empty")
    loss = "mse" if train_config is None else train_config.loss
    if loss not in ("mse", "ordinal") or (loss == "ordinal") != bool(config.ordinal):
        raise ValueError(f"bfm: train_config.loss {loss!r} with config.ordinal={config.ordinal}: the sampler's "
                         "likelihood is Gaussian (loss 'mse', ordinal=False) or ordinal probit (loss 'ordinal', "
                         "ordinal=True; `recsys-jax train --loss ordinal` sets both)")
    aux = prepare(train, config) if aux is None else aux
    config = configure(config, aux)
    sizes = group_sizes(train.num_users, train.num_items, config)
    d = make_design(train, aux)
    kernel = options is not None and options.kernels
    t, kept, state, cuts, params = initial_carry(key, train, config, aux) if start is None else start
    t, kept = int(t), int(kept)
    key = jax.random.split(key)[1]
    if config.ordinal:
        od, bounds = ordinal_data(train, aux)
    first, thin = kept_sweeps(config, None if train_config is None else int(train_config.epochs))
    while True:
        t += 1
        if config.ordinal:
            state, cuts, mse = ordinal_sweep(jax.random.fold_in(key, t), state, cuts, d, od, aux.levels, sizes,
                                             bounds, bool(config.day), bool(config.implicit), kernel)
        else:
            state, mse = sweep(jax.random.fold_in(key, t), state, d, sizes, bool(config.day), bool(config.implicit),
                               kernel)
        if t <= first:  # burn-in, and the first kept sweep: the store holds the current sample alone
            params = params._replace(sample_mask=jnp.zeros_like(params.sample_mask))
            kept = int(t == first)
            params = _store(params, state, cuts, d, jnp.asarray(0, jnp.int32), sizes)
        elif (t - first) % thin == 0:
            kept += 1
            params = _store(params, state, cuts, d, jnp.asarray((kept - 1) % int(config.num_samples), jnp.int32),
                            sizes)
        if carry:
            yield params, float(mse), Carry(jnp.int32(t), jnp.int32(kept), state, cuts, params)
        else:
            yield params, float(mse)


SPEC = ModelSpec("bfm", Config, Params, init, apply, predict_one=predict_one, Aux=Aux, prepare=prepare,
                 configure=configure,
                 fit_epochs=fit_epochs, uses_time=True, keeps_last=True, predict_std=predict_std,
                 level_probs=level_probs, initial_carry=initial_carry, doc=__doc__)
