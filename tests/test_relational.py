"""The relational feature blocks (recsys_jax.data.relational) by hand: the implicit sets and
their 1/sqrt(size) values, built from the training rows only, and the day vocabulary."""
import numpy as np
import pytest

from recsys_jax.data import Ratings
from recsys_jax.data.relational import build_features

DAY = 86_400


def _ratings(users, items, day_numbers):
    n = len(users)
    return Ratings(np.asarray(users, np.int32), np.asarray(items, np.int32), np.full(n, 4.0, np.float32),
                   np.asarray(day_numbers, np.int64) * DAY + 100, np.arange(3, dtype=np.int64) + 1,
                   np.arange(4, dtype=np.int64) + 1)


def _row(block, r):
    lo, hi = block.indptr[r], block.indptr[r + 1]
    return dict(zip(block.indices[lo:hi].tolist(), block.values[lo:hi].tolist()))


def test_the_sets_by_hand_and_only_from_training_rows():
    # user 0 rated movies 0, 1, 2 in training; user 1 movie 1; user 2 nothing in training
    train = _ratings([0, 0, 0, 1], [0, 1, 2, 1], [10, 10, 11, 12])
    # the test part: user 0 rates movie 3, user 2 movie 0, on a day of training and on a new one
    test = _ratings([0, 2], [3, 0], [11, 99])
    f = build_features(train, test)
    assert _row(f.rated_by_user, 0) == pytest.approx({0: 3 ** -0.5, 1: 3 ** -0.5, 2: 3 ** -0.5})
    assert _row(f.rated_by_user, 1) == pytest.approx({1: 1.0}) and _row(f.rated_by_user, 2) == {}
    assert _row(f.raters_of_item, 1) == pytest.approx({0: 2 ** -0.5, 1: 2 ** -0.5})
    assert _row(f.raters_of_item, 3) == {}  # rated only in the test part: no rater
    assert 3 not in _row(f.rated_by_user, 0)  # user 0's test movie is not in its set
    np.testing.assert_array_equal(f.rated_by_user.index, [0, 2])  # each test rating reads its user's row
    np.testing.assert_array_equal(f.raters_of_item.index, [3, 0])
    assert f.num_days == 3 and list(f.day) == [1, -1]  # days 10, 11, 12; day 99 is not a training day
    # the test rows change nothing of the training features
    again = build_features(train)
    for a, b in zip(again.rated_by_user[1:4], f.rated_by_user[1:4]):
        np.testing.assert_array_equal(a, b)
    assert list(again.day) == [0, 0, 1, 2]


def test_rows_of_other_data_are_refused():
    import dataclasses

    train = _ratings([0], [0], [1])
    other = dataclasses.replace(train, item_ids=np.arange(5, dtype=np.int64))
    with pytest.raises(ValueError, match="not one data set"):
        build_features(train, other)


def test_empty_training_rows_are_refused():
    train = _ratings([0], [0], [1]).take(np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="training rows are empty"):
        build_features(train)


def test_the_genre_sets_by_hand():
    import dataclasses

    import pandas as pd

    from recsys_jax.data.relational import genre_sets, movie_genres

    movies = pd.DataFrame({"title": ["a", "b", "c"], "genres": ["Drama|Action", "(no genres listed)", "Comedy"]},
                          index=[2, 3, 4])  # raw id 1 is not in the table: no genre either
    train = dataclasses.replace(_ratings([0], [0], [1]), movies=movies)
    indptr, indices, values, names = genre_sets(train)
    assert names == ("Action", "Comedy", "Drama")
    rows = [dict(zip(indices[lo:hi].tolist(), values[lo:hi].tolist())) for lo, hi in zip(indptr[:-1], indptr[1:])]
    assert rows == [{}, pytest.approx({0: 2 ** -0.5, 2: 2 ** -0.5}), {}, {1: 1.0}]
    f = build_features(train, genres=True)
    assert f.genres_of_item.width == 3 and list(f.genres_of_item.index) == [0]
    assert build_features(train).genres_of_item is None
    assert movie_genres(" Drama | Action ") == ["Drama", "Action"] and movie_genres(float("nan")) == []
    with pytest.raises(ValueError, match="no movies table with genres"):
        genre_sets(_ratings([0], [0], [1]))
    with pytest.raises(ValueError, match="lists a genre"):
        genre_sets(dataclasses.replace(train, movies=movies.assign(genres="(no genres listed)")))
