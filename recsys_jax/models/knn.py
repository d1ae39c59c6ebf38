r"""Item-based neighbours with baselines (Koren, KDD 2008, section 2.2; Surprise's KNNBaseline).

.. math::

   \hat r_{ui} = b_{ui} + \frac{\sum_{j\in S^k(i;u)} s_{ij}\,(r_{uj} - b_{uj})}
                              {\sum_{j\in S^k(i;u)} s_{ij}},
   \qquad b_{ui} = \mu + b_u + b_i,

   s_{ij} = \frac{n_{ij}}{n_{ij} + \lambda_s}\,
            \frac{\sum_{v\in U_{ij}} e_{vi}\,e_{vj}}
                 {\sqrt{\sum_{v\in U_{ij}} e_{vi}^2 \sum_{v\in U_{ij}} e_{vj}^2}},
   \qquad e_{vj} = r_{vj} - b_{vj},

==========================  ===================================================================
symbol                      argument
==========================  ===================================================================
:math:`\mu, b_u, b_i`       ``params.global_bias``, ``params.user_bias[u]``, ``params.item_bias[i]``
:math:`s_{ij}`              ``params.item_neighbor_sims[i]``, for the items ``params.item_neighbors[i]``
:math:`U_{ij}, n_{ij}`      the users who rated both i and j in training, and how many
:math:`\lambda_s`           ``config.shrinkage`` (100, as Koren and Surprise)
:math:`k`                   ``config.k`` (40)
:math:`r_{uj}`              u's training ratings: ``aux`` (from `prepare`)
==========================  ===================================================================

:math:`S^k(i;u)` is the (at most) k items that u rated in training most similar to i, among
i's ``config.max_neighbors`` (M) most similar items with :math:`s_{ij} > 0`. Only positive
similarities are neighbours (Surprise likewise drops non-positive ones from its top k): the
weights then form a convex combination and the denominator cannot vanish or change sign.
With no such neighbour the prediction is the baseline :math:`b_{ui}`. Pairs with fewer than
``config.min_support`` (2) common raters have :math:`s_{ij} = 0` (with one common rater the
correlation is :math:`\pm 1` whatever the ratings; Surprise uses the same cut), and so do
pairs whose residuals over the common raters are all zero on one side.

**Baselines** (Koren 2010, section 2.1; Surprise's ``als`` baseline, its defaults): from
:math:`b = 0`, ``config.baseline_epochs`` (10) sweeps of the closed-form coordinate updates

.. math::

   b_i \leftarrow \frac{\sum_{u\in R(i)} (r_{ui} - \mu - b_u)}{\lambda_2 + |R(i)|}
   \;\text{for every } i, \qquad
   b_u \leftarrow \frac{\sum_{i\in R(u)} (r_{ui} - \mu - b_i)}{\lambda_3 + |R(u)|}
   \;\text{for every } u,

items first, :math:`\lambda_2` = ``config.reg_item`` (10), :math:`\lambda_3` =
``config.reg_user`` (15), :math:`\mu` the training mean: block coordinate descent on
:math:`\sum (r_{ui} - \mu - b_u - b_i)^2 + \lambda_2 \sum_i b_i^2 + \lambda_3 \sum_u b_u^2`.
Same order, start and defaults as Surprise's ``baseline_als``, so the baselines agree with
Surprise's to float32 rounding (tested).

**Similarities on the device.** The baseline residuals fill a dense masked matrix
:math:`E \in \mathbb R^{U\times A}` (0 where unrated; A the items with at least
``min_support`` training ratings: the others can have no similarity) with its mask
:math:`W`; for a block of items :math:`b` the four products
:math:`E_b^\top E` (the numerators), :math:`(E\circ E)_b^\top W` and :math:`W_b^\top (E\circ E)`
(the sums of squares over common raters) and :math:`W_b^\top W` (:math:`n_{ij}`) give a
``[B, A]`` slab of similarities, of which only each row's top M (``jax.lax.top_k``) is kept.
Memory is :math:`O(U A)` for E and W plus :math:`O(B A)` per block (B chosen so a slab is
about 4M entries), never the :math:`A \times A` matrix; time is :math:`8\,U A^2` flops
(ml-latest-small's training split less the validation slice, 5,439 items with two ratings
or more: 1.4e11 flops; `benchmarks.throughput` times the whole fit). Matrix products run at
``Precision.HIGHEST`` (no TF32 on GPUs).

**What M approximates.** Exactly, :math:`S^k(i;u)` is drawn from every item u rated. Here
it is drawn from i's M = 500 most similar items: when u rated fewer than k of those,
:math:`S^k(i;u)` is smaller than exact (the missing neighbours are less similar than i's
500th, whose shrunk weights are small). With M at least the number of items the result is
exact (the tests compare with a NumPy reference both ways). M matters more than any other
setting here: on the validation slice of ml-latest-small's training split (split seed 0)
the RMSE fell as M grew from 50 through 200, 400, 500, 600 and 1000 to the exact result
(all 5,439 items with two ratings or more), by less and less from M = 500 on (Surprise's
KNNBaseline, item-based Pearson-baseline, on the same rows came out close to the exact
result, its shrinkage being :math:`(n-1)/(n-1+\lambda_s)`). M = 500 keeps the tables at
2 x 500 floats per item and the prediction cost at 500 lookups per pair. The other defaults
are the literature's (k = 40, :math:`\lambda_s` = 100, Surprise's baseline settings), kept
because no alternative tried on the same slice gained more than a trifle: at M = 200,
k = 20 and 80, :math:`\lambda_s` = 50 and 200, Koren's :math:`(\lambda_2, \lambda_3)` =
(25, 10) and ``min_support`` = 1; at M = 500, :math:`\lambda_s` = 200,
:math:`\lambda_s` = 300 with k = 60, and 3 baseline sweeps. Shrinkage counts
common raters, so it is not scale-free: on larger MovieLens variants pairs have more
common raters and the same :math:`\lambda_s` shrinks less (Koren chose 100 on Netflix).

**Prediction.** The lists are stored most similar first, so :math:`S^k(i;u)` is the first k
entries of i's list that u rated: one pass down the M entries with a running count of the
rated ones (`_first_k_offset`), no sort. Three routes give the same numbers up to float
rounding (tested against each other and the NumPy reference):

- `predict_one` (and `apply_search`): i's M neighbour ids are binary-searched in u's sorted
  list of rated items (u's slice of the training pairs, ``aux``) and ``top_k`` keeps the k
  most similar found: :math:`O(M \log |R(u)|)` dependent gathers per pair, no U x I memory.
- `apply` (`apply_table`) when :math:`U I \le` `DENSE_TABLE` (2^26 entries): a dense table of
  the residuals :math:`r_{uj} - b_{uj}` (NaN where u did not rate j; one scatter of the
  training pairs, rebuilt per call) is read at the pair's M neighbour ids. Above the size,
  `apply` falls back to the search.
- `dense_scores`, whole-catalogue ranking (the spec's ``block_scores``): for a chunk of
  C users their rows of that table are built from their slices of the training pairs only
  (:math:`O(C I)` memory, whatever U), and every item's list is read from them: C I M
  gathers of C contiguous floats.

On ml-latest-small's training split less the validation slice (split seed 0, on the CPU),
`benchmarks.throughput` predicted pairs faster through the table than through the search
(though its blocks of 8,192 pairs rebuild the table each time; the prediction table of the
benchmark results has the current figures), and ranking the whole catalogue for the 609
test users (`ranking_report`) with `dense_scores` was far faster than the search over the
user x catalogue grid, with the same report.

The neighbour ids are stored as float32 (exact below :math:`2^{24}` items; `fit_epochs`
refuses more) so that ``Params`` stays a pytree of float32 tables; ``-1`` pads the lists of
items with fewer than M positive neighbours. For a training pair (u rated i) i is not its
own neighbour, so the reported training loss is a leave-one-out error.

**Training** is not by gradients: `fit_epochs` fits the baselines, computes the neighbour
lists and yields the model once (one "epoch"); `recsys_jax.training.fit.fit` scores the validation
split on it. No `TrainConfig` field is read (every setting above is in `Config`, so a
refit of the same model config gives the same estimator on more data).

Published figures. Surprise's README benchmark (5-fold cross-validation, library defaults:
MSD similarity, user-based, k = 40): KNNBaseline RMSE 0.9306 on ml-100k and 0.8949 on ml-1m.
This project's issue quotes 0.858 for Surprise's KNNBaseline on ml-latest-small, random
80/20. Run here on split seed 0's rows, Surprise's KNNBaseline (item-based,
Pearson-baseline, Surprise 1.1.5 defaults otherwise, fit on the whole training split) and
this module with its defaults (``recsys-jax train --model knn``, which refits on the whole
training split) came out close to each other and both behind the bias model on the same
split: item k-NN alone does not beat a tuned biased matrix factorisation here (the accuracy
and peers tables of the benchmark results, from `benchmarks.accuracy` and
`benchmarks.peers`, compare them). It is a different estimator (local, item to item),
the kind a blend combines with factor models (not measured here).

References:
  Y. Koren, "Factorization meets the neighborhood: a multifaceted collaborative filtering
  model", KDD 2008. Y. Koren, "Factor in the neighbors: scalable and accurate collaborative
  filtering", ACM TKDD 4(1), 2010. N. Hug, "Surprise: a Python library for recommender
  systems", JOSS 2020.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from recsys_jax.models._common import initial_offset
from recsys_jax.models.spec import ModelSpec


class Config(NamedTuple):
    k: int = 40  # neighbours per prediction (Koren; Surprise's default)
    max_neighbors: int = 500  # M: neighbours kept per item (see "What M approximates")
    shrinkage: float = 100.0  # lambda_s in n/(n + lambda_s)
    min_support: int = 2  # fewer common raters: similarity 0
    reg_item: float = 10.0  # lambda_2 of the baseline sweeps (Surprise's reg_i)
    reg_user: float = 15.0  # lambda_3 (Surprise's reg_u)
    baseline_epochs: int = 10  # sweeps of the baseline updates (Surprise's n_epochs)
    search_steps: int = 0  # binary-search steps per lookup; set by `configure` (0: 31, any list length)
    mean_rating: float = 3.5  # set by `fit` to the training mean
    y_range: tuple[float, float] | None = None  # accepted for the common face; fit_epochs refuses a squash


class Params(NamedTuple):
    global_bias: Array  # float32[]
    user_bias: Array  # float32[U]
    item_bias: Array  # float32[I]
    item_neighbors: Array  # float32[I, M]: neighbour item ids, most similar first; -1 pads
    item_neighbor_sims: Array  # float32[I, M]: their s_ij > 0; 0 pads


class Aux(NamedTuple):
    user_indptr: Array  # int32[U + 1]: u's training pairs are rated_items[user_indptr[u]:user_indptr[u+1]]
    rated_items: Array  # int32[N]: rated items, sorted within each user
    rated_ratings: Array  # float32[N]: their ratings


# Entries of one [B, A] slab of similarities: B = max(1, SLAB // A) items per block.
SLAB = 1 << 22
# apply builds a dense U x I residual table when it has at most this many entries (256 MB of
# float32), else binary-searches each user's list (see `apply`).
DENSE_TABLE = 1 << 26
MAX_ITEMS = 1 << 24  # float32 holds every integer id below this
TRAIN_LOSS_PAIRS = 8192  # training pairs scored for the reported training loss


def _check_config(config: Config) -> None:
    if int(config.k) < 1:
        raise ValueError(f"knn: k must be >= 1, got {config.k}")
    if int(config.max_neighbors) < 1:
        raise ValueError(f"knn: max_neighbors must be >= 1, got {config.max_neighbors}")
    if not config.shrinkage >= 0:
        raise ValueError(f"knn: shrinkage must be >= 0, got {config.shrinkage}")
    if int(config.min_support) < 1:
        raise ValueError(f"knn: min_support must be >= 1, got {config.min_support}")
    if not (config.reg_item >= 0 and config.reg_user >= 0):
        raise ValueError(f"knn: reg_item and reg_user must be >= 0, got {config.reg_item}, {config.reg_user}")
    if int(config.baseline_epochs) < 0:
        raise ValueError(f"knn: baseline_epochs must be >= 0, got {config.baseline_epochs}")
    if not 0 <= int(config.search_steps) <= 31:
        raise ValueError(f"knn: search_steps must be in 0..31, got {config.search_steps}")


def prepare(train, config: Config = Config()) -> Aux:
    """Each user's training ratings as a slice of one list sorted by (user, item).

    Raises `ValueError` naming ``train`` when a (user, item) pair occurs twice.
    """
    order = np.lexsort((train.items, train.users))
    users, items = np.asarray(train.users)[order], np.asarray(train.items)[order]
    dup = (users[1:] == users[:-1]) & (items[1:] == items[:-1])
    if np.any(dup):
        n = int(np.argmax(dup))
        raise ValueError(f"knn: train has the (user, item) pair ({int(users[n])}, {int(items[n])}) more than once")
    counts = np.bincount(users, minlength=train.num_users)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return Aux(jnp.asarray(indptr), jnp.asarray(items, jnp.int32),
               jnp.asarray(np.asarray(train.ratings)[order], jnp.float32))


def configure(config: Config, aux: Aux) -> Config:
    """The config with ``search_steps`` enough for the longest user list (its bit length)."""
    longest = int(np.max(np.diff(np.asarray(aux.user_indptr)))) if aux.user_indptr.shape[0] > 1 else 0
    return config._replace(search_steps=max(longest.bit_length(), 1))


def init(key: Array, num_users: int, num_items: int, config: Config = Config()) -> Params:
    """The baseline-only model: mu at the training mean, zero biases, no neighbours. Nothing
    is drawn (``key`` is unused): the estimator's tables come from the data (`fit_epochs`)."""
    m = int(config.max_neighbors)
    return Params(
        global_bias=jnp.asarray(initial_offset(config), jnp.float32),
        user_bias=jnp.zeros((num_users,), jnp.float32),
        item_bias=jnp.zeros((num_items,), jnp.float32),
        item_neighbors=jnp.full((num_items, m), -1.0, jnp.float32),
        item_neighbor_sims=jnp.zeros((num_items, m), jnp.float32),
    )


def _lower_bound(sorted_items: Array, lo: Array, hi: Array, targets: Array, steps: int) -> Array:
    """For each target, the first position p in [lo, hi) with sorted_items[p] >= target (hi if
    none): a branchless binary search of ``steps`` halvings (enough when hi - lo < 2**steps)."""
    last = max(sorted_items.shape[0] - 1, 0)
    lo = jnp.broadcast_to(lo, targets.shape)
    hi = jnp.broadcast_to(hi, targets.shape)

    def halve(_, bounds):
        lo, hi = bounds
        mid = (lo + hi) // 2
        right = (lo < hi) & (sorted_items[jnp.minimum(mid, last)] < targets)
        left = (lo < hi) & ~right
        return jnp.where(right, mid + 1, lo), jnp.where(left, mid, hi)

    lo, _ = jax.lax.fori_loop(0, steps, halve, (lo, hi))
    return lo


def _rated_neighbors(params: Params, user: Array, item: Array, config: Config, aux: Aux):
    """``(rated bool[M], sims float32[M], residuals float32[M])`` over i's neighbour list:
    whether u rated each neighbour j in training, s_ij, and r_uj - b_uj (junk where not rated)."""
    num_items = params.item_bias.shape[0]
    neighbors = jnp.round(params.item_neighbors[item]).astype(jnp.int32)  # [M]
    sims = params.item_neighbor_sims[item]  # [M]
    valid = (neighbors >= 0) & (neighbors < num_items) & (sims > 0)
    j = jnp.clip(neighbors, 0, num_items - 1)
    start, stop = aux.user_indptr[user], aux.user_indptr[user + 1]
    pos = _lower_bound(aux.rated_items, start, stop, j, int(config.search_steps) or 31)
    at = jnp.clip(pos, 0, max(aux.rated_items.shape[0] - 1, 0))
    rated = valid & (pos < stop) & (aux.rated_items[at] == j)  # j in R(u)
    residuals = aux.rated_ratings[at] - (params.global_bias + params.user_bias[user] + params.item_bias[j])
    return rated, sims, residuals


def _first_k_offset(ids: Array, sims: Array, valid: Array, lookup, k: int) -> Array:
    """sum_{j in S^k} s_ij e_uj / sum_{j in S^k} s_ij (0 when S^k(i;u) is empty), for a batch of
    (u, i): ``ids``, ``sims``, ``valid`` are ``[M, *S]`` (the lists along the first axis: the
    neighbour ids, s_ij and whether the entry is a real neighbour), ``lookup(ids[m])`` gives
    e_uj = r_uj - b_uj where u rated j and NaN where not, of a shape ``sims[m]`` broadcasts to.

    The lists are most similar first, so S^k(i;u) is the first k rated valid entries: one
    pass down the lists (`jax.lax.scan` over M) with a running count, no sort; ties in s_ij go
    to the earlier entry, as in `jax.lax.top_k`. Nothing of size ``M * S`` is gathered at once
    (a cumulative sum over a gathered ``[S, M]`` block was much slower on the CPU)."""
    def step(carry, xs):
        count, num, den = carry
        j, s, v = xs
        e = lookup(j)
        rated = v & ~jnp.isnan(e)
        count = count + rated.astype(jnp.int32)
        keep = rated & (count <= k)
        e = jnp.where(keep, e, 0.0)  # before the product: NaN * 0 would reach the gradients
        return (count, num + jnp.where(keep, s * e, 0.0), den + jnp.where(keep, s, 0.0)), None

    out = jax.eval_shape(lookup, ids[0])
    shape = jnp.broadcast_shapes(out.shape, sims.shape[1:])
    zeros = jnp.zeros(shape, jnp.result_type(out.dtype, sims.dtype))
    (_, num, den), _ = jax.lax.scan(step, (jnp.zeros(shape, jnp.int32), zeros, zeros), (ids, sims, valid), unroll=4)
    return num / jnp.where(den > 0, den, 1.0)


def _neighbor_table(params: Params, items: Array) -> tuple[Array, Array, Array]:
    """``(ids int32[..., M], sims, valid bool[..., M])`` of the neighbour lists of ``items``."""
    num_items = params.item_bias.shape[0]
    neighbors = jnp.round(params.item_neighbors[items]).astype(jnp.int32)
    sims = params.item_neighbor_sims[items]
    valid = (neighbors >= 0) & (neighbors < num_items) & (sims > 0)
    return jnp.clip(neighbors, 0, num_items - 1), sims, valid


def _training_residuals(params: Params, aux: Aux) -> tuple[Array, Array]:
    """``(users int32[N], e float32[N])``: each training pair's user and its baseline residual
    r_uj - b_uj (the same float operations as `_rated_neighbors`)."""
    num_pairs = aux.rated_items.shape[0]
    users = jnp.searchsorted(aux.user_indptr, jnp.arange(num_pairs, dtype=jnp.int32), side="right") - 1
    e = aux.rated_ratings - (params.global_bias + params.user_bias[users] + params.item_bias[aux.rated_items])
    return users.astype(jnp.int32), e


def residual_table(params: Params, aux: Aux) -> Array:
    """``float32[U, I]``: r_uj - b_uj where u rated j in training, NaN elsewhere."""
    users, e = _training_residuals(params, aux)
    shape = (params.user_bias.shape[0], params.item_bias.shape[0])
    return jnp.full(shape, jnp.nan, e.dtype).at[users, aux.rated_items].set(e)


def residual_rows(params: Params, users: Array, config: Config, aux: Aux) -> Array:
    """``float32[C, I]``: `residual_table`'s rows of ``users`` (repeats allowed), built from
    their slices of the training pairs only (``C * L`` entries, L the longest list)."""
    num_items, num_pairs = params.item_bias.shape[0], aux.rated_items.shape[0]
    steps = int(config.search_steps)
    longest = max(min(num_items, num_pairs, (1 << steps) if steps else num_pairs), 1)  # a list has no repeats
    start, stop = aux.user_indptr[users], aux.user_indptr[users + 1]
    pos = start[:, None] + jnp.arange(longest, dtype=jnp.int32)[None, :]  # [C, L]
    inside = pos < stop[:, None]
    at = jnp.clip(pos, 0, max(num_pairs - 1, 0))
    j = aux.rated_items[at]
    e = aux.rated_ratings[at] - (params.global_bias + params.user_bias[users][:, None] + params.item_bias[j])
    rows = jnp.broadcast_to(jnp.arange(users.shape[0], dtype=jnp.int32)[:, None], pos.shape)
    cols = jnp.where(inside, j, num_items)  # out of range: dropped
    return jnp.full((users.shape[0], num_items), jnp.nan, e.dtype).at[rows, cols].set(e, mode="drop")


def predict_one(
    params: Params, user: Array, item: Array, key: Array | None = None, *, config: Config = Config(), aux: Aux
) -> Array:
    """r_ui = b_ui + sum_{j in S^k(i;u)} s_ij (r_uj - b_uj) / sum_{j in S^k(i;u)} s_ij

    By binary search in u's rated list (`_rated_neighbors`): the reference form, and
    `apply`'s above `DENSE_TABLE`."""
    rated, sims, residuals = _rated_neighbors(params, user, item, config, aux)
    # S^k(i;u): the k largest s_ij among the rated neighbours (the others score 0 and drop out).
    top_sims, top = jax.lax.top_k(jnp.where(rated, sims, 0.0), min(int(config.k), sims.shape[0]))
    weights = jnp.where(top_sims > 0, top_sims, 0.0)
    total = jnp.sum(weights)
    offset = jnp.sum(weights * residuals[top]) / jnp.where(total > 0, total, 1.0)
    return params.global_bias + params.user_bias[user] + params.item_bias[item] + offset


def apply(params: Params, users: Array, items: Array, key: Array | None = None, *,
          config: Config = Config(), aux: Aux | None = None, times: Array | None = None) -> Array:
    """Predictions for the pairs ``(users, items)``, ``float32[B]``.

    With ``U * I <= DENSE_TABLE`` it builds `residual_table` (one scatter of the training
    pairs) and reads each pair's M neighbours from u's row; above it, `predict_one` per pair
    (binary searches, no U x I memory). Both give the same S^k(i;u) when, as `fit_epochs`
    stores them, each list is most similar first."""
    if aux is None:
        raise ValueError("knn: apply needs aux = knn.prepare(train_ratings)")
    num_users, num_items = params.user_bias.shape[0], params.item_bias.shape[0]
    if num_users * num_items > DENSE_TABLE:
        return apply_search(params, users, items, config=config, aux=aux)
    return apply_table(params, users, items, config=config, aux=aux)


def apply_search(params: Params, users: Array, items: Array, *, config: Config, aux: Aux) -> Array:
    """`apply` by binary search: `predict_one` for each pair (vmap)."""
    return jax.vmap(lambda u, i: predict_one(params, u, i, config=config, aux=aux))(users, items)


def apply_table(params: Params, users: Array, items: Array, *, config: Config, aux: Aux) -> Array:
    """`apply` through `residual_table` (U x I memory)."""
    table = residual_table(params, aux)
    ids, sims, valid = _neighbor_table(params, items)  # [B, M]
    offset = _first_k_offset(ids.T, sims.T, valid.T, lambda j: table[users, j], int(config.k))
    return params.global_bias + params.user_bias[users] + params.item_bias[items] + offset


def dense_scores(params: Params, users: Array, config: Config, aux: Aux) -> Array:
    """``float32[C, I]``: every item's prediction for each of ``users`` (whole-catalogue
    ranking, the spec's ``block_scores``): the users' `residual_rows` read at every
    item's M neighbour ids, one list position at a time (`_first_k_offset`; ``C * I * M``
    gathers from rows of I floats, ``O(C * I)`` memory)."""
    num_items = params.item_bias.shape[0]
    rows = residual_rows(params, users, config, aux).T  # [I, C]: a lookup reads C contiguous floats
    ids, sims, valid = _neighbor_table(params, jnp.arange(num_items))  # [I, M]
    offset = _first_k_offset(ids.T, sims.T[..., None], valid.T[..., None], lambda j: rows[j], int(config.k))
    return params.global_bias + params.user_bias[users][:, None] + params.item_bias[None, :] + offset.T


# -- fitting ---------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("num_users", "num_items", "epochs"))
def fit_baselines(users: Array, items: Array, ratings: Array, mu: Array, *, num_users: int, num_items: int,
                  epochs: int, reg_user: float, reg_item: float) -> tuple[Array, Array]:
    """``(b_u float32[U], b_i float32[I])`` after ``epochs`` sweeps of the closed-form updates
    (items, then users; from zero): see the module docstring."""
    n_user = jax.ops.segment_sum(jnp.ones_like(ratings), users, num_segments=num_users)
    n_item = jax.ops.segment_sum(jnp.ones_like(ratings), items, num_segments=num_items)
    centred = ratings - mu

    def sweep(_, b):
        b_user, _ = b
        b_item = jax.ops.segment_sum(centred - b_user[users], items, num_segments=num_items) / (reg_item + n_item)
        b_user = jax.ops.segment_sum(centred - b_item[items], users, num_segments=num_users) / (reg_user + n_user)
        return b_user, b_item

    zeros = (jnp.zeros(num_users, jnp.float32), jnp.zeros(num_items, jnp.float32))
    return jax.lax.fori_loop(0, epochs, sweep, zeros)


@functools.partial(jax.jit, static_argnames=("num_users", "num_active", "max_neighbors", "block", "min_support"))
def _top_similarities(users: Array, cols: Array, residuals: Array, shrinkage: Array, *, num_users: int,
                      num_active: int, max_neighbors: int, block: int, min_support: int) -> tuple[Array, Array]:
    """Each active item's top ``max_neighbors`` shrunk Pearson-baseline similarities and their
    column ids (``[A, M]`` each; ids -1 and sims 0 where fewer are positive), by blocks of
    ``block`` items (`SLAB`)."""
    hi = jax.lax.Precision.HIGHEST
    resid = jnp.zeros((num_users, num_active), jnp.float32).at[users, cols].set(residuals)
    mask = jnp.zeros((num_users, num_active), jnp.float32).at[users, cols].set(1.0)
    sq = resid * resid
    num_blocks = -(-num_active // block)
    pad = num_blocks * block - num_active
    # Transposed and padded: a block of items is a contiguous slice of rows.
    resid_t, sq_t, mask_t = (jnp.pad(x.T, ((0, pad), (0, 0))) for x in (resid, sq, mask))
    k = min(max_neighbors, num_active)

    def one_block(start):
        def rows(x):  # [B, U]: the block's rows of a transposed matrix
            return jax.lax.dynamic_slice_in_dim(x, start, block)

        prods = jnp.dot(rows(resid_t), resid, precision=hi)  # sum_v e_vi e_vj
        sq_i = jnp.dot(rows(sq_t), mask, precision=hi)  # sum over common raters of e_vi^2
        sq_j = jnp.dot(rows(mask_t), sq, precision=hi)  # ... of e_vj^2
        common = jnp.dot(rows(mask_t), mask, precision=hi)  # n_ij (exact: integers below 2^24)
        denom = jnp.sqrt(sq_i * sq_j)
        rho = jnp.where(denom > 0, prods / jnp.where(denom > 0, denom, 1.0), 0.0)
        sims = rho * common / (common + shrinkage)
        self_pair = (start + jnp.arange(block))[:, None] == jnp.arange(num_active)[None, :]
        sims = jnp.where((common >= min_support) & ~self_pair, sims, 0.0)
        top_sims, top = jax.lax.top_k(sims, k)
        return jnp.where(top_sims > 0, top_sims, 0.0), jnp.where(top_sims > 0, top, -1)

    top_sims, top = jax.lax.map(one_block, jnp.arange(num_blocks) * block)
    top_sims = top_sims.reshape(-1, k)[:num_active]
    top = top.reshape(-1, k)[:num_active]
    if k < max_neighbors:
        top_sims = jnp.pad(top_sims, ((0, 0), (0, max_neighbors - k)))
        top = jnp.pad(top, ((0, 0), (0, max_neighbors - k)), constant_values=-1)
    return top_sims, top


def neighbor_lists(users, items, residuals, num_users: int, num_items: int, config: Config
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``(ids int32[I, M], sims float32[I, M])``: every item's M most similar items with
    :math:`s_{ij} > 0`, most similar first (ids -1 and sims 0 pad), from the baseline
    ``residuals`` of the training pairs ``(users, items)``."""
    m = int(config.max_neighbors)
    ids = np.full((num_items, m), -1, np.int32)
    sims = np.zeros((num_items, m), np.float32)
    counts = np.bincount(np.asarray(items), minlength=num_items)
    active = np.flatnonzero(counts >= max(int(config.min_support), 1))
    if active.size < 2:
        return ids, sims
    column = np.full(num_items, -1, np.int64)
    column[active] = np.arange(active.size)
    keep = column[np.asarray(items)] >= 0
    block = max(1, min(active.size, SLAB // active.size))
    top_sims, top = _top_similarities(
        jnp.asarray(np.asarray(users)[keep], jnp.int32), jnp.asarray(column[np.asarray(items)[keep]], jnp.int32),
        jnp.asarray(np.asarray(residuals)[keep], jnp.float32), jnp.float32(config.shrinkage),
        num_users=num_users, num_active=int(active.size), max_neighbors=m, block=block,
        min_support=int(config.min_support))
    top, top_sims = np.asarray(top), np.asarray(top_sims)
    ids[active] = np.where(top >= 0, active[np.maximum(top, 0)], -1)
    sims[active] = top_sims
    return ids, sims


def fit_epochs(key: Array, train, config: Config, train_config, aux: Aux, options=None):
    """Fits the baselines, computes the neighbour lists, and yields ``(params, train_loss)``
    once. ``train_loss`` is the mean squared error on `TRAIN_LOSS_PAIRS` training pairs drawn
    from ``key`` (all of them when fewer; an item is not its own neighbour, so for the pair's
    own item this is a leave-one-out error). ``train_config`` is not read."""
    _check_config(config)
    if config.y_range is not None:
        raise ValueError("knn: y_range is not supported (the estimator is on the rating scale already)")
    if train.num_items >= MAX_ITEMS:
        raise ValueError(f"knn: train has {train.num_items} items; neighbour ids are float32, exact below {MAX_ITEMS}")
    if len(train) == 0:
        raise ValueError("knn: train is empty")
    users = jnp.asarray(train.users, jnp.int32)
    items = jnp.asarray(train.items, jnp.int32)
    ratings = jnp.asarray(train.ratings, jnp.float32)
    mu = jnp.float32(np.mean(np.asarray(train.ratings, np.float64)))
    b_user, b_item = fit_baselines(users, items, ratings, mu, num_users=train.num_users, num_items=train.num_items,
                                   epochs=int(config.baseline_epochs), reg_user=float(config.reg_user),
                                   reg_item=float(config.reg_item))
    residuals = ratings - (mu + b_user[users] + b_item[items])
    ids, sims = neighbor_lists(train.users, train.items, residuals, train.num_users, train.num_items, config)
    params = Params(mu, b_user, b_item, jnp.asarray(ids, jnp.float32), jnp.asarray(sims))

    sample = np.arange(len(train))
    if len(train) > TRAIN_LOSS_PAIRS:  # a fixed sample: scoring every training pair cost more than the fit
        sample = np.sort(np.asarray(jax.random.permutation(key, len(train))[:TRAIN_LOSS_PAIRS]))
    score = jax.jit(functools.partial(apply, config=config._replace(mean_rating=0.0)))
    pred = np.asarray(score(params, jnp.asarray(train.users[sample], jnp.int32),
                            jnp.asarray(train.items[sample], jnp.int32), aux=aux))
    yield params, float(np.mean((pred.astype(np.float64) - np.asarray(train.ratings, np.float64)[sample]) ** 2))


def num_neighbors_found(params: Params, users: Array, items: Array, *, config: Config, aux: Aux) -> Array:
    """``|S^k(i;u)|`` for each pair, ``int32[B]``: how many neighbours each prediction used."""
    def one(u, i):
        rated, _, _ = _rated_neighbors(params, u, i, config, aux)
        return jnp.minimum(jnp.sum(rated), int(config.k)).astype(jnp.int32)

    return jax.vmap(one)(users, items)


def block_scores(params: Params, users: Array, config: Config, aux: Aux, user_times=None) -> Array:
    """`dense_scores`: every item for the users ``users[C]``, ``float32[C, I]``."""
    return dense_scores(params, users, config, aux)


SPEC = ModelSpec("knn", Config, Params, init, apply, predict_one=predict_one, Aux=Aux, prepare=prepare, configure=configure,
                 block_scores=block_scores, fit_epochs=fit_epochs,
                 # no learned item vectors: `similar` and PCA have nothing to compare (the neighbours are lists)
                 item_vectors=(), doc=__doc__)
