r"""EASE: an item-item linear model with a closed form (Steck 2019, "Embarrassingly shallow
autoencoders for sparse data").

The ratings become implicit feedback: :math:`X \in \{0, 1\}^{U \times I}` marks the
training pairs rated at least ``threshold`` (4 stars by default). A user's score for an
item is a weighted sum over the items the user liked,

.. math::

   \hat y_{ui} = \sum_{j} X_{uj} B_{ji} = (X B)_{ui},

with the weights :math:`B \in \mathbb{R}^{I \times I}` that minimise

.. math::

   \lVert X - X B \rVert_F^2 + \lambda \lVert B \rVert_F^2
   \quad \text{subject to} \quad \operatorname{diag}(B) = 0

(``l2`` :math:`\lambda`; the constraint keeps an item from predicting itself). With
:math:`P = (X^\top X + \lambda I)^{-1}` the solution is closed-form (Steck's eq. 8):

.. math::

   B_{ij} = -\frac{P_{ij}}{P_{jj}} \ (i \ne j), \qquad B_{jj} = 0.

Fitting is one "epoch": the Gramian :math:`X^\top X` over the items with a positive (the
others score 0), one inverse, in float64 on the host (tested against the constrained least
squares written out); ``Params`` keep :math:`B` over those items only. The
**item-count limit**: the Gramian and its inverse are :math:`I' \times I'` dense
(:math:`I'` the items with a positive: 8 bytes each, twice), and the inverse costs
:math:`O(I'^3)`; ``max_items`` (default 20,000: 6.4 GB, minutes on two cores) refuses more.
ml-latest-small's training split has about 5,500 such items (seconds).

Scores need each user's liked items (``Aux``: padded lists, from the training split);
like ``ials`` it ranks (``ModelSpec.ranks``): its scores are not ratings. A new user folds
in with no solve: its liked items join ``Aux`` and its scores are :math:`x_u B`.
"""
from __future__ import annotations

from typing import Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from recsys_jax.models.spec import FoldIn, ModelSpec


class Config(NamedTuple):
    l2: float = 100.0  # lambda (chosen on seed 0's validation slice; see `fit_epochs`)
    threshold: float = 4.0  # a training rating at least this is a positive
    max_items: int = 20_000  # items with a positive, at most (the dense I' x I' solve)
    num_active: int = 0  # I', the items with a positive: set from the training data (configure)
    mean_rating: float = 3.5  # unused: kept so every model takes the same fields
    y_range: tuple[float, float] | None = None  # not supported


class Params(NamedTuple):
    weights: Array  # float32[I' + 1, I' + 1]: B over the I' items with a positive, then a zero row and column


class Aux(NamedTuple):
    liked: Array  # int32[U, L]: each user's positives, padded with I (whose slot is the zero row)
    item_slot: Array  # int32[I + 1]: each item's row and column in weights (I' for no positive, and for I)


def init(key: Array, num_users: int, num_items: int, config: Config = Config()) -> Params:
    """Zero weights (the closed form does not start anywhere; it draws nothing)."""
    n = int(config.num_active)
    return Params(jnp.zeros((n + 1, n + 1), jnp.float32))


def configure(config: Config, aux: Aux) -> Config:
    """``num_active``: the number of items some user liked in the training data."""
    slot = np.asarray(aux.item_slot)
    return config._replace(num_active=int(slot[-1]))


def prepare(train, config: Config = Config()) -> Aux:
    """Each user's training positives (rated at least ``threshold``), padded with the item
    count ``I``, and each item's slot in the weights (the sorted items with a positive first)."""
    keep = np.asarray(train.ratings) >= config.threshold
    users, items = np.asarray(train.users)[keep], np.asarray(train.items)[keep]
    order = np.lexsort((items, users))
    users, items = users[order], items[order]
    counts = np.bincount(users, minlength=train.num_users)
    width = max(int(counts.max(initial=0)), 1)
    liked = np.full((train.num_users, width), train.num_items, np.int32)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    liked[users, np.arange(len(users)) - start[users]] = items
    active = np.unique(items)
    slot = np.full(train.num_items + 1, len(active), np.int32)
    slot[active] = np.arange(len(active))
    return Aux(jnp.asarray(liked), jnp.asarray(slot))


def predict_one(params: Params, user: Array, item: Array, key: Array | None = None, *, config: Config = Config(),
                aux: Aux) -> Array:
    """y_ui = sum_{j liked by u} B_ji"""
    return jnp.sum(params.weights[aux.item_slot[aux.liked[user]], aux.item_slot[item]])


def apply(params: Params, users: Array, items: Array, key: Array | None = None, *, config: Config = Config(),
          aux: Aux | None = None, times: Array | None = None) -> Array:
    """Scores of the pairs ``(users, items)``, ``float32[B]``."""
    return jax.vmap(lambda u, i: predict_one(params, u, i, config=config, aux=aux))(users, items)


def block_scores(params: Params, users: Array, config: Config, aux: Aux, user_times=None) -> Array:
    """Every item for the users ``users[C]``, ``float32[C, I]``: :math:`X_C B` as a sum of rows."""
    rows = jax.vmap(lambda u: jnp.sum(params.weights[aux.item_slot[aux.liked[u]]], axis=0))(users)  # [C, I' + 1]
    return rows[:, aux.item_slot[:-1]]


def solve(users: np.ndarray, items: np.ndarray, l2: float, max_items: int) -> tuple[np.ndarray, np.ndarray]:
    """``(active, B)``: the items with a positive (sorted) and B over them, float64[I', I'],
    the closed form above, from the positives ``(users, items)``."""
    active = np.unique(items)
    if len(active) > max_items:
        raise ValueError(f"ease: {len(active)} items have a positive, more than max_items={max_items} (the dense "
                         f"{len(active)} x {len(active)} inverse); raise max_items if the memory allows "
                         f"({16 * len(active) ** 2 / 1e9:.1f} GB)")
    x = _design(users, items, active)
    p = np.linalg.inv(x.T @ x + l2 * np.eye(len(active)))
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return active, b


def _design(users, items, active) -> np.ndarray:
    """X over the users and the ``active`` items, float64[U', I'] (U': the largest user + 1)."""
    x = np.zeros((int(users.max(initial=-1)) + 1, len(active)))
    x[users, np.searchsorted(active, items)] = 1.0
    return x


def fit_epochs(key: Array, train, config: Config, train_config=None, aux: Aux | None = None, options=None
               ) -> Iterator[tuple[Params, float]]:
    """The closed form, once; yields ``(params, (||X - XB||^2 + lambda ||B||^2) / |S|)``.

    ``l2`` = 100 was chosen on the validation slice (10%) of seed 0's training split of
    ml-latest-small, NDCG@10 among {30, 100, 300, 1000, 3000} (0.154, 0.155, 0.150, 0.134,
    0.121)."""
    if config.y_range is not None:
        raise ValueError("ease: y_range is not supported (its scores are not ratings)")
    if not config.l2 > 0:
        raise ValueError(f"ease: l2 must be > 0, got {config.l2}")
    keep = np.asarray(train.ratings) >= config.threshold
    users, items = np.asarray(train.users)[keep], np.asarray(train.items)[keep]
    if len(users) == 0:
        raise ValueError(f"ease: no training rating reaches the threshold {config.threshold:g}")
    active, b = solve(users, items, float(config.l2), int(config.max_items))
    x = _design(users, items, active)
    loss = (np.sum((x - x @ b) ** 2) + config.l2 * np.sum(b * b)) / len(users)
    weights = np.zeros((len(active) + 1, len(active) + 1), np.float32)
    weights[:-1, :-1] = b  # in slot order: prepare's slots are the sorted active items too
    yield Params(jnp.asarray(weights)), float(loss)


def solve_users(params: Params, config: Config, items_per_user, ratings_per_user) -> dict:
    """`recsys_jax.use.foldin`'s hook: a new user has no parameters of its own (its scores
    are :math:`x_u B`, B fixed), so nothing is solved; `append_user_aux` records its liked items."""
    return {}


def append_user_aux(aux: Aux, items_per_user, day, first_index: int, ratings_per_user=None,
                    config: Config = Config()) -> Aux:
    """``aux`` with the new users' liked items (rated at least ``threshold``) after the
    trained users': their scores are then :math:`x_u B` with no refit (as for a user of the
    training data; the strong-generalisation protocol of Liang et al. 2018 scores EASE so)."""
    if ratings_per_user is None:
        raise ValueError("ease: a new user's ratings are needed to tell what it liked")
    liked = [np.unique(np.asarray(i, np.int32)[np.asarray(r) >= config.threshold])
             for i, r in zip(items_per_user, ratings_per_user)]
    old = np.asarray(aux.liked)
    num_items = len(aux.item_slot) - 1
    width = max(old.shape[1], max((len(x) for x in liked), default=1), 1)
    table = np.full((old.shape[0] + len(liked), width), num_items, np.int32)
    table[:old.shape[0], :old.shape[1]] = old
    for j, x in enumerate(liked):
        table[old.shape[0] + j, :len(x)] = x
    return aux._replace(liked=jnp.asarray(table))


SPEC = ModelSpec("ease", Config, Params, init, apply, predict_one=predict_one, Aux=Aux, prepare=prepare, configure=configure,
                 block_scores=block_scores, fit_epochs=fit_epochs, item_vectors=(), ranks=True,
                 fold_in=FoldIn(append_user_aux=append_user_aux, solve_users=solve_users), doc=__doc__)
