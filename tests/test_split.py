"""Splits: each one partitions ``range(N)`` exactly, is fixed by its seed, and follows
its protocol on tiny hand-made data (per-user fractions, last-k by timestamp)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys_jax.data import (
    DataError,
    Ratings,
    kfold_split,
    load_split,
    random_split,
    save_split,
    temporal_split,
    user_split,
)
from recsys_jax.data.split import Split


def assert_partition(split: Split, n: int) -> None:
    """train and test are sorted int64, disjoint, and together exactly range(n)."""
    for part in split:
        assert part.dtype == np.int64
        assert np.all(np.diff(part) > 0), "indices must be sorted and unique"
    assert np.intersect1d(split.train, split.test).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate(split)), np.arange(n))


def random_ratings(seed: int, num_users: int, num_ratings: int) -> Ratings:
    """Ratings with random users (raw ids 100+), items and timestamps; pairs need not be unique."""
    rng = np.random.default_rng(seed)
    return Ratings.from_raw(
        100 + rng.integers(0, num_users, num_ratings),
        rng.integers(0, 50, num_ratings),
        rng.integers(1, 11, num_ratings) / 2,
        rng.integers(0, 1000, num_ratings),
    )


# Tiny data for the per-user protocols. Rows are interleaved across users on purpose.
#   raw user 7: 5 ratings, raw user 3: 1 rating, raw user 9: 2 ratings, raw user 5: 10 ratings.
TINY_USERS = np.array([7, 5, 3, 7, 9, 5, 5, 7, 5, 9, 5, 7, 5, 5, 7, 5, 5, 5])
COUNTS = {7: 5, 3: 1, 9: 2, 5: 10}


@pytest.fixture(scope="module")
def tiny() -> Ratings:
    n = len(TINY_USERS)
    return Ratings.from_raw(TINY_USERS, np.arange(n), np.full(n, 3.0), np.arange(n))


# -- random_split ----------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 7, 10, 101, 1000])
def test_random_split_sizes_and_partition(n):
    split = random_split(n, seed=0)
    assert_partition(split, n)
    assert len(split.test) == round(0.2 * n)
    assert len(split.train) == n - round(0.2 * n)


def test_random_split_fraction_and_ratings_argument():
    r = random_ratings(0, 10, 50)
    split = random_split(r, seed=3, test_frac=0.3)
    assert_partition(split, 50)
    assert len(split.test) == 15
    # A Ratings and its length give the same split.
    for a, b in zip(split, random_split(50, seed=3, test_frac=0.3)):
        np.testing.assert_array_equal(a, b)


def test_random_split_seeded():
    a, b, c = random_split(200, 5), random_split(200, 5), random_split(200, 6)
    np.testing.assert_array_equal(a.test, b.test)
    np.testing.assert_array_equal(a.train, b.train)
    assert not np.array_equal(a.test, c.test)
    # A Generator is accepted and consumed like default_rng(seed).
    g = random_split(200, np.random.default_rng(5))
    np.testing.assert_array_equal(g.test, a.test)


@pytest.mark.parametrize("frac", [1.0, -0.1, 1.5, float("nan"), "0.2"])
def test_random_split_rejects_bad_fraction(frac):
    with pytest.raises(ValueError, match="test_frac"):
        random_split(10, 0, frac)


def test_a_zero_fraction_holds_nothing_out():
    """test_frac 0: every row trains (a model for use, `train --test-frac 0`)."""
    import jax

    from recsys_jax.data import make_synthetic
    from recsys_jax.data.split import user_split

    split = random_split(10, 0, 0.0)
    np.testing.assert_array_equal(split.train, np.arange(10))
    assert len(split.test) == 0
    ratings, _ = make_synthetic(jax.random.key(0), 20, 10, 100)
    split = user_split(ratings, 0, 0.0)
    assert len(split.test) == 0 and len(split.train) == len(ratings)


@pytest.mark.parametrize("seed", [None, 1.5, "0", True])
def test_split_rejects_non_integer_seed(seed):
    with pytest.raises(TypeError, match="seed"):
        random_split(10, seed)


# -- user_split ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "frac, held_out",
    [
        # held out per user = min(round(frac * count), count - 1); numpy rounds half to even
        (0.2, {7: 1, 3: 0, 9: 0, 5: 2}),  # 1.0, 0.2, 0.4, 2.0
        (0.5, {7: 2, 3: 0, 9: 1, 5: 5}),  # 2.5 -> 2, 0.5 -> 0, 1.0, 5.0
        (0.9, {7: 4, 3: 0, 9: 1, 5: 9}),  # 4.5 -> 4, 0.9 -> 1 capped to 0, 1.8 -> 2 capped to 1, 9.0
    ],
)
def test_user_split_per_user_counts(tiny, frac, held_out):
    split = user_split(tiny, seed=0, test_frac=frac)
    assert_partition(split, len(tiny))
    test_users = TINY_USERS[split.test]
    train_users = TINY_USERS[split.train]
    for user, count in COUNTS.items():
        assert np.sum(test_users == user) == held_out[user], user
        assert np.sum(train_users == user) == count - held_out[user] >= 1, user
    # every user keeps a rating in train
    assert set(train_users.tolist()) == set(COUNTS)


def test_user_split_seeded(tiny):
    a, b = user_split(tiny, 1, 0.5), user_split(tiny, 1, 0.5)
    np.testing.assert_array_equal(a.test, b.test)
    tests = {tuple(user_split(tiny, s, 0.5).test) for s in range(6)}
    assert len(tests) > 1, "the choice within a user must depend on the seed"


def test_user_split_single_user_all_ratings():
    r = Ratings.from_raw(np.full(10, 42), np.arange(10), np.ones(10))
    split = user_split(r, seed=0, test_frac=0.3)
    assert_partition(split, 10)
    assert len(split.test) == 3


# -- temporal_split --------------------------------------------------------------------
#   row: 0   1   2   3   4   5   6
#   user 7   3   7   9   9   7   9
#   ts   50  99  10  5   5   30  1
# user 7 by time: rows 2 (10), 5 (30), 0 (50); user 3: row 1 only;
# user 9 by time: row 6 (1), then rows 3 and 4 tie at 5: the later row (4) comes last.
TEMPORAL = Ratings.from_raw([7, 3, 7, 9, 9, 7, 9], np.arange(7), np.full(7, 4.0), [50, 99, 10, 5, 5, 30, 1])


@pytest.mark.parametrize(
    "k, test_rows",
    [
        (1, [0, 4]),
        (2, [0, 3, 4, 5]),
        (3, [0, 3, 4, 5]),  # 3 ratings each: at least one stays in train
        (10, [0, 3, 4, 5]),
    ],
)
def test_temporal_split_last_k(k, test_rows):
    split = temporal_split(TEMPORAL, k=k)
    assert_partition(split, 7)
    np.testing.assert_array_equal(split.test, test_rows)
    assert 1 in split.train, "a user with one rating stays in train"


def test_temporal_split_rejects_k0():
    with pytest.raises(ValueError, match="k"):
        temporal_split(TEMPORAL, k=0)


def test_temporal_split_against_reference():
    r = random_ratings(4, 12, 300)
    split = temporal_split(r, k=2)
    assert_partition(split, len(r))
    # Reference: per user, sort rows by (timestamp, row) and take the last min(2, n-1).
    expected = []
    for u in np.unique(r.users):
        rows = np.flatnonzero(r.users == u)
        rows = rows[np.lexsort((rows, r.timestamps[rows]))]
        expected.extend(rows[len(rows) - min(2, len(rows) - 1) :])
    np.testing.assert_array_equal(split.test, np.sort(expected))


# -- kfold_split -----------------------------------------------------------------------
@pytest.mark.parametrize("n, k", [(10, 2), (23, 5), (7, 7), (3, 5)])
def test_kfold_folds_cover_and_are_disjoint(n, k):
    splits = kfold_split(n, k=k, seed=0)
    assert len(splits) == k
    for s in splits:
        assert_partition(s, n)
    tests = np.concatenate([s.test for s in splits])
    np.testing.assert_array_equal(np.sort(tests), np.arange(n))  # each row tested exactly once
    sizes = [len(s.test) for s in splits]
    assert max(sizes) - min(sizes) <= 1


def test_kfold_seeded_and_rejects_k1():
    a, b, c = kfold_split(50, 5, seed=1), kfold_split(50, 5, seed=1), kfold_split(50, 5, seed=2)
    assert all(np.array_equal(x.test, y.test) for x, y in zip(a, b))
    assert not all(np.array_equal(x.test, y.test) for x, y in zip(a, c))
    with pytest.raises(ValueError, match="k"):
        kfold_split(50, k=1)


# -- save_split / load_split -----------------------------------------------------------
def test_save_load_round_trip(tmp_path):
    split = random_split(40, seed=9)
    path = tmp_path / "split.npz"
    save_split(path, split, seed=9, protocol="random")
    loaded = load_split(path, num_ratings=40)
    for a, b in zip(split, loaded):
        np.testing.assert_array_equal(a, b)
        assert b.dtype == np.int64
    with np.load(path) as f:
        assert int(f["meta_seed"]) == 9 and str(f["meta_protocol"]) == "random"
    assert len(load_split(path).test) == 8  # without num_ratings, no check


@pytest.mark.parametrize(
    "train, test, n",
    [
        ([0, 1, 2], [3, 4], 6),  # row 5 missing
        ([0, 1, 2], [2, 3, 4], 5),  # row 2 twice
        ([0, 1, 2], [3, 4, 5], 6 - 1),  # index out of range
        ([0, 1, 1], [3, 4], 5),  # repeat inside train, right length
    ],
)
def test_load_split_rejects_non_partition(tmp_path, train, test, n):
    path = tmp_path / "bad.npz"
    save_split(path, Split(np.array(train), np.array(test)))
    with pytest.raises(DataError, match="bad.npz") as e:
        load_split(path, num_ratings=n)
    assert "partition" in str(e.value)


def test_load_split_wrong_size(tmp_path):
    path = tmp_path / "s.npz"
    save_split(path, random_split(30, 0))
    with pytest.raises(DataError, match="s.npz"):
        load_split(path, num_ratings=31)


@pytest.mark.parametrize("content", [b"not a zip file", None])
def test_load_split_not_a_split_file(tmp_path, content):
    path = tmp_path / "junk.npz"
    if content is None:
        np.savez(path, something=np.arange(3))  # a valid npz without train/test
    else:
        path.write_bytes(content)
    with pytest.raises(DataError, match="junk.npz"):
        load_split(path)
    with pytest.raises(DataError, match="missing.npz"):
        load_split(tmp_path / "missing.npz")


# -- properties ------------------------------------------------------------------------
SETTINGS = settings(max_examples=25, deadline=None)


@SETTINGS
@given(n=st.integers(1, 300), seed=st.integers(0, 2**32 - 1), frac=st.floats(0.01, 0.99))
def test_random_split_property(n, seed, frac):
    split = random_split(n, seed, frac)
    assert_partition(split, n)
    assert len(split.test) == int(round(frac * n))


@SETTINGS
@given(seed=st.integers(0, 1000), num_users=st.integers(1, 8), n=st.integers(1, 120), frac=st.floats(0.01, 0.99))
def test_user_split_property(seed, num_users, n, frac):
    r = random_ratings(seed, num_users, n)
    split = user_split(r, seed, frac)
    assert_partition(split, n)
    counts = np.bincount(r.users, minlength=r.num_users)
    held = np.bincount(r.users[split.test], minlength=r.num_users)
    expected = np.minimum(np.round(frac * counts), counts - 1)
    np.testing.assert_array_equal(held, expected)


@SETTINGS
@given(seed=st.integers(0, 1000), num_users=st.integers(1, 8), n=st.integers(1, 120), k=st.integers(1, 4))
def test_temporal_split_property(seed, num_users, n, k):
    r = random_ratings(seed, num_users, n)
    split = temporal_split(r, k)
    assert_partition(split, n)
    for u in np.unique(r.users):
        mine = r.users == u
        test_ts = r.timestamps[split.test][mine[split.test]]
        train_ts = r.timestamps[split.train][mine[split.train]]
        assert len(train_ts) >= 1
        assert len(test_ts) == min(k, mine.sum() - 1)
        if len(test_ts):
            assert test_ts.min() >= train_ts.max()  # nothing in test is older than train


@SETTINGS
@given(n=st.integers(0, 200), k=st.integers(2, 9), seed=st.integers(0, 1000))
def test_kfold_property(n, k, seed):
    splits = kfold_split(n, k, seed)
    for s in splits:
        assert_partition(s, n)
    np.testing.assert_array_equal(np.sort(np.concatenate([s.test for s in splits])), np.arange(n))


def test_held_out_users_partition_the_positives():
    """Strong generalisation: the positives split three ways, the held-out users never in
    training, each with at least one pair folded in and one to find; seeded."""
    import jax

    from recsys_jax.data import make_synthetic
    from recsys_jax.data.split import held_out_users

    ratings, _ = make_synthetic(jax.random.key(3), 60, 40, 1200)
    split = held_out_users(ratings, 0, users_frac=0.25, fold_in_frac=0.8)
    positives = np.flatnonzero(ratings.ratings >= 4.0)
    parts = np.concatenate([split.train, split.fold_in, split.target])
    np.testing.assert_array_equal(np.sort(parts), positives)
    held = np.unique(ratings.users[split.target])
    assert not set(held) & set(ratings.users[split.train])
    np.testing.assert_array_equal(np.unique(ratings.users[split.fold_in]), held)
    eligible = np.sum(np.bincount(ratings.users[positives]) >= 2)
    assert len(held) == round(0.25 * eligible)
    per_user = np.bincount(ratings.users[split.fold_in], minlength=60)[held] / np.bincount(
        ratings.users[np.concatenate([split.fold_in, split.target])], minlength=60)[held]
    assert 0.6 < per_user.mean() < 0.9
    again = held_out_users(ratings, 0, users_frac=0.25, fold_in_frac=0.8)
    assert all(np.array_equal(a, b) for a, b in zip(split, again))
