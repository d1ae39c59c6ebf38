"""`make_synthetic`: seeded, unique pairs, the half-star grid, and the planted formula."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from recsys_jax.data import make_synthetic

SIZES = dict(num_users=30, num_items=20, num_ratings=200, embedding_dim=4)


def planted(ratings, truth) -> np.ndarray:
    """mu + b_u + b_i + p_u . q_i in float64, from the returned truth."""
    u, i = ratings.users, ratings.items
    return (
        truth.mu
        + truth.user_bias[u].astype(np.float64)
        + truth.item_bias[i]
        + np.sum(truth.user_factors[u].astype(np.float64) * truth.item_factors[i], axis=1)
    )


def assert_same(a, b) -> None:
    (ra, ta), (rb, tb) = a, b
    for name in ("users", "items", "ratings", "timestamps", "user_ids", "item_ids"):
        np.testing.assert_array_equal(getattr(ra, name), getattr(rb, name), err_msg=name)
    for x, y in zip(ta, tb):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def data():
    return make_synthetic(jax.random.key(0), **SIZES)


def test_shapes_and_dtypes(data):
    ratings, truth = data
    n, u, i, k = SIZES["num_ratings"], SIZES["num_users"], SIZES["num_items"], SIZES["embedding_dim"]
    assert len(ratings) == n
    dtypes = {"users": np.int32, "items": np.int32, "ratings": np.float32, "timestamps": np.int64}
    for name, dtype in dtypes.items():
        a = getattr(ratings, name)
        assert a.shape == (n,) and a.dtype == dtype, name
    np.testing.assert_array_equal(ratings.user_ids, np.arange(1, u + 1))
    np.testing.assert_array_equal(ratings.item_ids, np.arange(1, i + 1))
    assert ratings.num_users == u and ratings.num_items == i
    assert 0 <= ratings.users.min() and ratings.users.max() < u
    assert 0 <= ratings.items.min() and ratings.items.max() < i
    assert ratings.rating_scale == (0.5, 5.0)
    # timestamps: 2000-01-01 .. 2020
    assert ratings.timestamps.min() >= 946_684_800
    assert ratings.timestamps.max() < 946_684_800 + 20 * 365 * 86_400
    assert truth.user_bias.shape == (u,) and truth.item_bias.shape == (i,)
    assert truth.user_factors.shape == (u, k) and truth.item_factors.shape == (i, k)
    assert truth.user_factors.dtype == np.float32 and truth.mu == 3.5 and truth.noise_std == 0.5


def test_unique_pairs(data):
    ratings, _ = data
    codes = ratings.users.astype(np.int64) * ratings.num_items + ratings.items
    assert len(np.unique(codes)) == len(ratings)


def test_half_star_grid(data):
    r = data[0].ratings
    assert r.min() >= 0.5 and r.max() <= 5.0
    np.testing.assert_array_equal(r * 2, np.round(r * 2))
    assert len(np.unique(r)) > 3  # not degenerate


def test_same_key_same_data(data):
    assert_same(data, make_synthetic(jax.random.key(0), **SIZES))
    # an int seed and a raw uint32[2] key mean the same key
    assert_same(data, make_synthetic(0, **SIZES))
    assert_same(data, make_synthetic(jax.random.PRNGKey(0), **SIZES))


def test_different_key_different_data(data):
    other, other_truth = make_synthetic(jax.random.key(1), **SIZES)
    ratings, truth = data
    assert not np.array_equal(truth.user_bias, other_truth.user_bias)
    assert not (np.array_equal(ratings.users, other.users) and np.array_equal(ratings.items, other.items))
    assert not np.array_equal(ratings.ratings, other.ratings)


def test_noiseless_equals_planted_formula():
    ratings, truth = make_synthetic(
        jax.random.key(3), **SIZES, mu=3.0, bias_std=0.3, interaction_std=0.3, noise_std=0.0, round_to_half=False
    )
    expected = planted(ratings, truth)
    # with these small stds nothing reaches the clip bounds, so the formula holds exactly
    assert expected.min() > 0.5 and expected.max() < 5.0
    np.testing.assert_allclose(ratings.ratings, expected, rtol=0, atol=2e-6)
    assert len(np.unique(ratings.ratings)) > 50  # not rounded to the half-star grid
    # the truth's interaction term has about the requested spread
    inter = np.sum(truth.user_factors[ratings.users] * truth.item_factors[ratings.items], axis=1)
    assert 0.15 < inter.std() < 0.5


def test_noiseless_rounded_is_round_of_clip():
    ratings, truth = make_synthetic(jax.random.key(4), **SIZES, mu=3.0, bias_std=1.5, noise_std=0.0)
    expected = np.round(np.clip(planted(ratings, truth), 0.5, 5.0) * 2) / 2
    x2 = np.clip(planted(ratings, truth), 0.5, 5.0) * 2
    safe = np.abs(x2 - np.floor(x2) - 0.5) > 1e-4  # away from a rounding tie, float32 vs float64 agree
    assert safe.mean() > 0.95
    np.testing.assert_array_equal(ratings.ratings[safe], expected[safe])
    assert ratings.ratings.min() == 0.5 and ratings.ratings.max() == 5.0  # bias_std 1.5 reaches both bounds


@pytest.mark.parametrize("mu, bound", [(20.0, 5.0), (-20.0, 0.5)])
def test_clipped_to_scale(mu, bound):
    ratings, _ = make_synthetic(jax.random.key(5), **SIZES, mu=mu)
    np.testing.assert_array_equal(ratings.ratings, np.full(len(ratings), bound, np.float32))


def test_noise_has_requested_std():
    ratings, truth = make_synthetic(
        jax.random.key(6), 200, 100, 5000, embedding_dim=4, mu=3.0, bias_std=0.2,
        interaction_std=0.2, noise_std=0.3, round_to_half=False,
    )
    resid = ratings.ratings - planted(ratings, truth)
    assert abs(resid.mean()) < 0.03
    assert 0.27 < resid.std() < 0.33


def test_zipf_popularity():
    ratings, _ = make_synthetic(jax.random.key(7), 200, 100, 5000, zipf=1.0)
    counts = np.sort(np.bincount(ratings.items, minlength=100))[::-1]
    assert counts[0] > 5 * max(counts[-10:].mean(), 1)  # a head and a long tail
    flat, _ = make_synthetic(jax.random.key(7), 200, 100, 5000, zipf=0.0)
    flat_counts = np.bincount(flat.items, minlength=100)
    assert flat_counts.max() < 2 * flat_counts.mean()


def test_densest_allowed_and_too_dense():
    ratings, _ = make_synthetic(jax.random.key(8), 10, 10, 50)
    codes = ratings.users.astype(np.int64) * 10 + ratings.items
    assert len(np.unique(codes)) == 50
    with pytest.raises(ValueError, match="too dense"):
        make_synthetic(jax.random.key(8), 10, 10, 51)
