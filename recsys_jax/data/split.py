"""Train/test splits as index arrays, each drawn from an explicit seed.

Every split returns a `Split(train, test)` of sorted int64 row indices into the
`Ratings` it was given; ``ratings.take(split.train)`` gives the rows. The two index
arrays partition ``range(len(ratings))`` exactly. Splits can be written to and read
from ``.npz`` (`save_split` / `load_split`) so that another library can be run on the
identical split.

- `random_split`: the course notebook's protocol, a uniformly random test fraction.
- `user_split`: a random fraction of each user's ratings, at least one kept in train.
- `temporal_split`: each user's last ``k`` ratings by timestamp go to test.
- `kfold_split`: ``k`` random folds; fold f is the test set of split f.
- `held_out_users` / `held_out_users_split`: strong generalisation, a random share of the
  users held out whole, each one's positives cut into a part folded in and a part to find.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from recsys_jax.data.ratings import DataError, Ratings


class Split(NamedTuple):
    train: np.ndarray  # int64[N_train], sorted
    test: np.ndarray  # int64[N_test], sorted


def _rng(seed) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int or np.random.Generator, got {seed!r}")
    return np.random.default_rng(int(seed))


def _check_frac(test_frac: float) -> None:
    if isinstance(test_frac, bool) or not isinstance(test_frac, (int, float, np.integer, np.floating)) \
            or not 0.0 <= test_frac < 1.0:
        raise ValueError(f"test_frac must be in [0, 1) (0: no test part, every rating trains), got {test_frac!r}")


def _from_test_mask(test_mask: np.ndarray) -> Split:
    return Split(np.flatnonzero(~test_mask).astype(np.int64), np.flatnonzero(test_mask).astype(np.int64))


def random_split(ratings: Ratings | int, seed, test_frac: float = 0.2) -> Split:
    """A uniformly random ``test_frac`` of the rows is held out (the notebook's 80/20); 0
    holds out nothing (a model trained on every rating, for use)."""
    _check_frac(test_frac)
    n = ratings if isinstance(ratings, (int, np.integer)) else len(ratings)
    num_test = int(round(test_frac * n))
    perm = _rng(seed).permutation(n)
    mask = np.zeros(n, dtype=bool)
    mask[perm[:num_test]] = True
    return _from_test_mask(mask)


def _rank_within_user(users: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows visited in ``order`` grouped by user: each row's rank in its user and the user's count."""
    sorted_users = users[order]
    counts = np.bincount(users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank_sorted = np.arange(len(order)) - starts[sorted_users]
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = rank_sorted
    return rank, counts[users]


def user_split(ratings: Ratings, seed, test_frac: float = 0.2) -> Split:
    """Per user, a random ``test_frac`` of that user's ratings go to test.

    Each user keeps at least one rating in train, so every test user is known.
    """
    _check_frac(test_frac)
    rng = _rng(seed)
    # A random order within each user: sort by (user, random key).
    order = np.lexsort((rng.random(len(ratings)), ratings.users))
    rank, count = _rank_within_user(ratings.users, order)
    num_test = np.minimum(np.round(test_frac * count).astype(np.int64), count - 1)
    return _from_test_mask(rank < num_test)


def temporal_split(ratings: Ratings, k: int = 1) -> Split:
    """Each user's last ``k`` ratings by timestamp go to test (ties: later row last).

    A user with ``k`` or fewer ratings keeps at least one rating in train.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    order = np.lexsort((np.arange(len(ratings)), ratings.timestamps, ratings.users))
    rank, count = _rank_within_user(ratings.users, order)
    num_test = np.minimum(k, count - 1)
    return _from_test_mask(rank >= count - num_test)


class HeldOutUsers(NamedTuple):
    """Row indices of `held_out_users`: ``train`` every positive of the training users;
    ``fold_in`` and ``target`` the held-out users' positives given to the model and to find."""

    train: np.ndarray  # int64[N]
    fold_in: np.ndarray  # int64[F]
    target: np.ndarray  # int64[T]


def held_out_users(ratings: Ratings, seed, users_frac: float = 0.2, fold_in_frac: float = 0.8,
                   threshold: float = 4.0) -> HeldOutUsers:
    """Strong generalisation, the protocol of Liang et al. 2018 and Rendle et al. 2021: the
    ratings of at least ``threshold`` are the positives (the rest are dropped); a random
    ``users_frac`` of the users with at least two positives are held out of training; of
    each held-out user's positives a random ``fold_in_frac`` (at least one, and at least
    one left) is given to the trained model (folded in), the rest are the targets."""
    if not 0.0 < users_frac < 1.0 or not 0.0 < fold_in_frac < 1.0:
        raise ValueError(f"users_frac and fold_in_frac must be in (0, 1), got {users_frac}, {fold_in_frac}")
    rng = _rng(seed)
    positive = np.flatnonzero(np.asarray(ratings.ratings) >= threshold)
    users = np.asarray(ratings.users)[positive]
    counts = np.bincount(users, minlength=ratings.num_users)
    eligible = np.flatnonzero(counts >= 2)
    held = np.zeros(ratings.num_users, bool)
    held[rng.choice(eligible, int(round(users_frac * len(eligible))), replace=False)] = True
    mine = held[users]
    rows = positive[mine]
    order = np.lexsort((rng.random(len(rows)), users[mine]))
    rank, count = _rank_within_user(np.asarray(ratings.users)[rows], order)
    given = np.clip(np.round(fold_in_frac * count).astype(np.int64), 1, count - 1)
    return HeldOutUsers(np.sort(positive[~mine]), np.sort(rows[rank < given]), np.sort(rows[rank >= given]))


def held_out_users_split(ratings: Ratings, seed, users_frac: float = 0.2, threshold: float = 4.0) -> Split:
    """The `Split` of `held_out_users` for models of every rating: ``train`` holds every
    rating of the users that are not held out (the ones below ``threshold`` too: a rating
    model learns from them), ``test`` every rating of the held-out users, whose positives
    `held_out_users` (the same seed, fraction and threshold) cuts into the part folded in
    and the part to find (`recsys-jax train --split held-out-users`, then `evaluate`)."""
    held = np.zeros(ratings.num_users, bool)
    held[np.asarray(ratings.users)[held_out_users(ratings, seed, users_frac, threshold=threshold).target]] = True
    return _from_test_mask(held[np.asarray(ratings.users)])


PROTOCOLS = ("random", "user", "temporal", "held-out-users")


def make_split(ratings: Ratings, protocol: str = "random", *, seed=0, test_frac: float = 0.2, last_k: int = 1) -> Split:
    """The test split of ``protocol``: ``"random"`` (`random_split`), ``"user"`` (`user_split`:
    ``test_frac`` of each user's ratings), ``"temporal"`` (`temporal_split`: each user's
    last ``last_k``) or ``"held-out-users"`` (`held_out_users_split`: ``test_frac`` of the
    users, every rating of theirs). The split `recsys-jax train --split` makes."""
    if protocol == "random":
        return random_split(ratings, seed, test_frac)
    if protocol == "user":
        return user_split(ratings, seed, test_frac)
    if protocol == "temporal":
        return temporal_split(ratings, k=last_k)
    if protocol == "held-out-users":
        if not 0.0 < test_frac < 1.0:
            raise ValueError(f"--split held-out-users: test_frac (the share of users held out) must be in (0, 1), "
                             f"got {test_frac}")
        return held_out_users_split(ratings, seed, test_frac)
    raise ValueError(f"unknown split protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")


def kfold_split(ratings: Ratings | int, k: int = 5, seed=0) -> list[Split]:
    """``k`` random folds of (nearly) equal size; split f tests on fold f."""
    if k < 2:
        raise ValueError(f"k must be >= 2, got {k}")
    n = ratings if isinstance(ratings, (int, np.integer)) else len(ratings)
    fold = np.empty(n, dtype=np.int64)
    fold[_rng(seed).permutation(n)] = np.arange(n) % k
    return [_from_test_mask(fold == f) for f in range(k)]


def save_split(path: str | os.PathLike, split: Split, **meta) -> None:
    """Writes the index arrays (and scalar metadata such as the seed) to ``path`` (.npz)."""
    arrays = {"train": np.asarray(split.train, np.int64), "test": np.asarray(split.test, np.int64)}
    arrays.update({f"meta_{k}": np.asarray(v) for k, v in meta.items()})
    np.savez(path, **arrays)


def load_split(path: str | os.PathLike, num_ratings: int | None = None) -> Split:
    """Reads a split written by `save_split`; checks it partitions ``num_ratings`` rows if given."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            train, test = f["train"].astype(np.int64), f["test"].astype(np.int64)
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{path}: not a split file written by save_split ({e})") from e
    if num_ratings is not None:
        both = np.concatenate([train, test])
        if len(both) != num_ratings or not np.array_equal(np.sort(both), np.arange(num_ratings)):
            raise DataError(
                f"{path}: the split does not partition {num_ratings} ratings "
                f"({len(train)} train + {len(test)} test indices)"
            )
    return Split(train, test)
