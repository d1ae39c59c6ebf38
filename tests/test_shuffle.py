"""The O(n) Feistel shuffle is a permutation, deterministic, and unrelated to input order."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from recsys_jax.shuffle import permutation


@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 64, 65, 1000, 4097])
def test_is_a_permutation(n):
    p = np.asarray(permutation(jax.random.key(n), n))
    assert p.dtype == np.int32
    np.testing.assert_array_equal(np.sort(p), np.arange(n))


def test_deterministic_and_key_dependent():
    a = np.asarray(permutation(jax.random.key(0), 10_000))
    b = np.asarray(jax.jit(permutation, static_argnums=1)(jax.random.key(0), 10_000))
    c = np.asarray(permutation(jax.random.key(1), 10_000))
    np.testing.assert_array_equal(a, b)
    assert np.mean(a == c) < 0.01


def test_looks_random():
    n = 20_000
    perms = np.stack([np.asarray(permutation(jax.random.key(k), n)) for k in range(20)])
    for p in perms:
        # No linear trend between position and value, and few fixed points (expected 1).
        assert abs(np.corrcoef(p, np.arange(n))[0, 1]) < 0.05
        assert np.sum(p == np.arange(n)) < 10
        # Neighbours land far apart: successive differences are spread like |U - U'| * n.
        assert np.median(np.abs(np.diff(p))) == pytest.approx(n * (1 - 2 ** -0.5), rel=0.1)
    # Where element 0 lands, over keys, is spread over the range, not clumped.
    assert np.std(perms[:, 0]) > n / 5
