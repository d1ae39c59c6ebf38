r"""Relational feature blocks for factorization machines (Rendle 2013, "Scaling
factorization machines to relational data"), built from the training rows only.

A rating :math:`(u, i, t)` becomes a sparse feature vector :math:`x` of groups: the user id
and the movie id (one-hot), the rating's day (one-hot over the days of the training
ratings), and two *implicit* sets,

.. math::

   x^{N(u)}_j = \frac{[j \in N(u)]}{\sqrt{|N(u)|}}, \qquad
   x^{N(i)}_v = \frac{[v \in N(i)]}{\sqrt{|N(i)|}},

:math:`N(u)` the movies user :math:`u` rated and :math:`N(i)` the users who rated movie
:math:`i`: the feature set of Rendle, Zhang & Koren 2019 ("On the difficulty of evaluating
baselines"), whose Bayesian FM on it is the SVD++-and-more model those sets encode. Every
set is built from the **training rows only**: a test rating neither adds a movie to its
user's set nor a user to its movie's set (tested), so nothing of the test part leaks into
the features. (Building the sets from every row, the test part's pairs without their
ratings, is a known non-strict variant, "implicit feedback from the test set"; it is not
offered here.)

The two implicit groups repeat: every rating of user :math:`u` carries the same
:math:`x^{N(u)}`. A `Block` stores each distinct row once, with each rating's index into
them, the relational form in which a sampler's or solver's cost is the size of the blocks,
not of the expanded design matrix (Rendle 2013); myFM's ``RelationBlock`` takes the same
form.

**Genres** (``build_features(..., genres=True)``): a sixth group, the movie's genres from the data's
movies table (``Ratings.movies``: MovieLens' ``movies.csv``, ``movies.dat`` or ``u.item``),
:math:`x^{G(i)}_g = [g \in G(i)] / \sqrt{|G(i)|}`. It is metadata, not ratings, so it holds
for every movie, rated in training or not; a movie with no genre listed has none. Its block
rows are movies, like :math:`N(i)`'s.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from recsys_jax.data.ratings import Ratings, days


class Block(NamedTuple):
    """Rows shared by many ratings: row ``r`` has the features ``indices[indptr[r]:indptr[r + 1]]``
    with ``values`` there; rating ``n`` reads row ``index[n]``."""

    index: np.ndarray  # int64[N]: each rating's row of the block
    indptr: np.ndarray  # int64[R + 1]
    indices: np.ndarray  # int32[nnz]: feature ids in 0..width-1
    values: np.ndarray  # float32[nnz]
    width: int  # the number of features of the group


class Features(NamedTuple):
    """The feature groups of some ratings (see the module docstring): ``user``, ``item`` and
    ``day`` one-hot indices (``day`` -1 for a day no training rating has: no feature),
    and the implicit blocks ``rated_by_user`` (over movies) and ``raters_of_item`` (over users)."""

    user: np.ndarray  # int64[N]
    item: np.ndarray  # int64[N]
    day: np.ndarray  # int64[N], -1: a day outside the training days
    num_days: int
    rated_by_user: Block
    raters_of_item: Block
    genres_of_item: Block | None = None  # rows: movies; features: genres (`genre_sets`); None unless asked


NO_GENRE = "(no genres listed)"  # MovieLens' entry for a movie without genres


def movie_genres(text) -> list[str]:
    """The genres of a movies table's ``genres`` entry (``"Action|Comedy"``), in order; none for
    MovieLens' ``(no genres listed)``, an empty or a missing entry."""
    if not isinstance(text, str):
        return []
    return [g for g in (part.strip() for part in text.split("|")) if g and g != NO_GENRE]


def day_numbers(timestamps) -> np.ndarray:
    """Each timestamp's day, int64: the floor of `recsys_jax.data.ratings.days` (float32 days
    since the epoch, the time-aware models' unit), so that a day computed here and one
    computed from the same ``days`` at prediction agree, even a few seconds before midnight."""
    return np.floor(days(timestamps)).astype(np.int64)


def _sets(own: np.ndarray, other: np.ndarray, num_rows: int, num_other: int) -> tuple[np.ndarray, ...]:
    """CSR of each row's distinct ``other`` entries, valued 1/sqrt(count) (0 entries: empty)."""
    codes = np.unique(own.astype(np.int64) * num_other + other)
    rows, cols = codes // num_other, (codes % num_other).astype(np.int32)
    counts = np.bincount(rows, minlength=num_rows)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    values = (1.0 / np.sqrt(np.maximum(counts, 1)))[rows].astype(np.float32)
    return indptr, cols, values


def _listed_genres(ratings: Ratings) -> list[list[str]] | None:
    """Each movie's genres (by movie index, sorted), or None without a movies table of genres."""
    movies = ratings.movies
    if movies is None or "genres" not in getattr(movies, "columns", ()):
        return None
    listed = movies["genres"]
    return [sorted(set(movie_genres(listed.get(raw) if raw in listed.index else None)))
            for raw in np.asarray(ratings.item_ids).tolist()]


def has_genres(ratings: Ratings) -> bool:
    """Whether ``ratings.movies`` lists a genre for one of its movies (`genre_sets` would not fail)."""
    return any(_listed_genres(ratings) or ())


def genre_sets(ratings: Ratings) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """Each movie's genres (rows: movie indices of ``ratings``), CSR valued 1/sqrt(#genres),
    and the genre names, sorted (feature g is ``names[g]``), from ``ratings.movies``."""
    per_movie = _listed_genres(ratings)
    if per_movie is None:
        raise ValueError(f"genres: the data {ratings.name!r} has no movies table with genres (MovieLens' "
                         "movies.csv, movies.dat or u.item); a ratings file alone has none")
    names = tuple(sorted({g for gs in per_movie for g in gs}))
    if not names:
        raise ValueError(f"genres: no movie of {ratings.name!r} lists a genre")
    slot = {g: n for n, g in enumerate(names)}
    counts = np.asarray([len(gs) for gs in per_movie], np.int64)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    indices = np.asarray([slot[g] for gs in per_movie for g in gs], np.int32)
    values = np.repeat(1.0 / np.sqrt(np.maximum(counts, 1)), counts).astype(np.float32)
    return indptr, indices, values, names


def build_features(train: Ratings, rows: Ratings | None = None, *, genres: bool = False) -> Features:
    """The features of ``rows`` (default: ``train``'s own), every set and the day vocabulary
    from ``train``. ``rows`` must share ``train``'s id maps (a split of one `Ratings`).
    ``genres``: add the movies' genres (`genre_sets`)."""
    if len(train) == 0:
        raise ValueError("build_features: the training rows are empty")
    rows = train if rows is None else rows
    if rows.num_users != train.num_users or rows.num_items != train.num_items:
        raise ValueError(f"build_features: rows of {rows.num_users} users x {rows.num_items} movies are not of the "
                         f"training data's {train.num_users} x {train.num_items}: not one data set")
    users, items = np.asarray(train.users), np.asarray(train.items)
    by_user = _sets(users, items, train.num_users, train.num_items)
    by_item = _sets(items, users, train.num_items, train.num_users)
    vocabulary = np.unique(day_numbers(train.timestamps))
    row_days = day_numbers(rows.timestamps)
    slot = np.searchsorted(vocabulary, row_days)
    known = (slot < len(vocabulary)) & (vocabulary[np.minimum(slot, len(vocabulary) - 1)] == row_days)
    ru, ri = np.asarray(rows.users).astype(np.int64), np.asarray(rows.items).astype(np.int64)
    by_genre = None
    if genres:
        indptr, indices, values, names = genre_sets(train)
        by_genre = Block(ri, indptr, indices, values, len(names))
    return Features(ru, ri, np.where(known, slot, -1), len(vocabulary),
                    Block(ru, *by_user, train.num_items), Block(ri, *by_item, train.num_users), by_genre)
