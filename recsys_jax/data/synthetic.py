r"""Synthetic explicit ratings with a planted low-rank structure.

.. math::

   r_{ui} = \operatorname{round}_{1/2}\Big(\operatorname{clip}\big(\mu + b_u + b_i
            + p_u^\top q_i + \varepsilon_{ui},\ 0.5,\ 5\big)\Big),
   \qquad \varepsilon_{ui} \sim \mathcal N(0, \sigma^2)

with :math:`p_u, q_i \sim \mathcal N(0, s^2 I_k)` scaled so that the interaction term has
standard deviation ``interaction_std``. Items are drawn with a Zipf-like popularity, as in
MovieLens, and users uniformly; (user, item) pairs are unique. The same key gives the same
data. Sizes up to the ML-25M shape (25,000,095 ratings, 162,541 users, 62,423 items) fit in
a few hundred MB.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from recsys_jax.data.ratings import Ratings

ML25M_SHAPE = dict(num_users=162_541, num_items=62_423, num_ratings=25_000_095)


class SyntheticTruth(NamedTuple):
    mu: float
    user_bias: np.ndarray  # float32[U]
    item_bias: np.ndarray  # float32[I]
    user_factors: np.ndarray  # float32[U, K]
    item_factors: np.ndarray  # float32[I, K]
    noise_std: float


def _numpy_rng(key) -> np.random.Generator:
    """A NumPy generator seeded from a JAX key (host-side sampling is faster for big N)."""
    if isinstance(key, (int, np.integer)):
        key = jax.random.key(int(key))
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng(np.asarray(key, dtype=np.uint32).ravel().tolist())


def make_synthetic(
    key,
    num_users: int = 1000,
    num_items: int = 500,
    num_ratings: int = 50_000,
    *,
    embedding_dim: int = 8,
    mu: float = 3.5,
    bias_std: float = 0.4,
    interaction_std: float = 0.6,
    noise_std: float = 0.5,
    zipf: float = 0.8,
    round_to_half: bool = True,
) -> tuple[Ratings, SyntheticTruth]:
    """Draws ``num_ratings`` unique (user, item) ratings from the planted model.

    Args:
      key: a `jax.random` key (or an int seed).
      num_users, num_items, num_ratings: sizes; ``num_ratings <= num_users * num_items / 2``.
      embedding_dim: rank ``k`` of the planted interaction.
      mu, bias_std, interaction_std, noise_std: the model's global mean and the standard
        deviations of the biases, of :math:`p_u^\top q_i` and of the noise.
      zipf: item popularity exponent (0 = uniform).
      round_to_half: round to the MovieLens half-star scale; if False only clip.

    Returns:
      ``(ratings, truth)``: the id maps cover all ``U`` users and ``I`` items, rated or
      not, with raw ids ``1..U`` and ``1..I``; and the planted parameters.
    """
    if num_ratings > num_users * num_items // 2:
        raise ValueError(
            f"num_ratings={num_ratings} is too dense for {num_users} users x {num_items} items"
        )
    rng = _numpy_rng(key)
    scale = np.sqrt(interaction_std / np.sqrt(embedding_dim))
    truth = SyntheticTruth(
        mu=float(mu),
        user_bias=(bias_std * rng.standard_normal(num_users)).astype(np.float32),
        item_bias=(bias_std * rng.standard_normal(num_items)).astype(np.float32),
        user_factors=(scale * rng.standard_normal((num_users, embedding_dim))).astype(np.float32),
        item_factors=(scale * rng.standard_normal((num_items, embedding_dim))).astype(np.float32),
        noise_std=float(noise_std),
    )

    # Unique pairs: draw with replacement, dedupe by a linear code, top up until enough.
    item_p = 1.0 / np.arange(1, num_items + 1) ** zipf
    item_cdf = np.cumsum(item_p / item_p.sum())
    item_perm = rng.permutation(num_items)  # popularity is not tied to the item index
    codes = np.empty(0, dtype=np.int64)
    while len(codes) < num_ratings:
        need = int((num_ratings - len(codes)) * 1.1) + 16
        u = rng.integers(0, num_users, need, dtype=np.int64)
        i = item_perm[np.minimum(np.searchsorted(item_cdf, rng.random(need)), num_items - 1)]
        codes = np.unique(np.concatenate([codes, u * num_items + i]))
    codes = np.sort(rng.choice(codes, num_ratings, replace=False)) if len(codes) > num_ratings else codes
    users, items = (codes // num_items).astype(np.int32), (codes % num_items).astype(np.int32)

    r = np.empty(num_ratings, dtype=np.float32)
    chunk = 1 << 22  # bound the temporary [chunk, K] arrays at 25M ratings
    for s in range(0, num_ratings, chunk):
        u, i = users[s : s + chunk], items[s : s + chunk]
        r[s : s + chunk] = (
            mu
            + truth.user_bias[u]
            + truth.item_bias[i]
            + np.einsum("nk,nk->n", truth.user_factors[u], truth.item_factors[i])
            + noise_std * rng.standard_normal(len(u), dtype=np.float32)
        )
    np.clip(r, 0.5, 5.0, out=r)
    if round_to_half:
        r = np.round(r * 2) / 2
    timestamps = 946_684_800 + rng.integers(0, 20 * 365 * 86_400, num_ratings)  # 2000..2020
    ratings = Ratings(
        users=users,
        items=items,
        ratings=r.astype(np.float32),
        timestamps=timestamps.astype(np.int64),
        user_ids=np.arange(1, num_users + 1, dtype=np.int64),
        item_ids=np.arange(1, num_items + 1, dtype=np.int64),
        name=f"synthetic-{num_ratings}",
        rating_scale=(0.5, 5.0),
    )
    return ratings, truth
