"""`load_ratings`: a user's own ratings file, good and bad.

Every bad file must give a `DataError` whose message names the file and the 1-based
line number of the first offending line, never a traceback from inside pandas.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys_jax.data.files import WHITESPACE, load_ratings
from recsys_jax.data.ratings import DataError, Ratings

GOOD = "userId,movieId,rating,timestamp\n10,200,4.0,1000\n10,100,3.5,1001\n30,200,5.0,1002\n20,300,0.5,1003\n"


def write(tmp_path: Path, text: str | bytes, name: str = "ratings.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def check_good(r: Ratings) -> None:
    """The four rows of GOOD, whatever the separator or layout."""
    np.testing.assert_array_equal(r.user_ids, [10, 20, 30])
    np.testing.assert_array_equal(r.item_ids, [100, 200, 300])
    np.testing.assert_array_equal(r.users, [0, 0, 2, 1])
    np.testing.assert_array_equal(r.items, [1, 0, 1, 2])
    np.testing.assert_array_equal(r.ratings, np.array([4.0, 3.5, 5.0, 0.5], np.float32))
    np.testing.assert_array_equal(r.timestamps, [1000, 1001, 1002, 1003])
    assert r.users.dtype == np.int32 and r.ratings.dtype == np.float32
    assert r.timestamps.dtype == np.int64


# -- good files ------------------------------------------------------------------------
def test_round_trip(tmp_path):
    path = write(tmp_path, GOOD)
    r = load_ratings(path)
    check_good(r)
    assert r.name == str(path)
    assert r.rating_scale == (0.5, 5.0)  # inferred from the data
    assert load_ratings(path, name="mine", rating_scale=(0, 10)).rating_scale == (0.0, 10.0)


@pytest.mark.parametrize(
    "text, kwargs",
    [
        (GOOD.replace("\n", "\r\n"), {}),  # CRLF
        ("\ufeff" + GOOD, {}),  # UTF-8 byte-order mark
        ("\n\n" + GOOD.replace("\n10,100", "\n\n10,100"), {}),  # blank lines
        (GOOD.replace(",", "\t"), {}),
        (GOOD.replace(",", "::"), {}),
        (GOOD.replace(",", "::").replace("\n", "\r\n"), {"sep": "::"}),
        (GOOD.replace(",", "  \t "), {}),
        (GOOD.replace(",", " "), {"sep": WHITESPACE}),
        (GOOD.replace(",", ";"), {"sep": ";"}),
        ('"userId","movieId","rating","timestamp"\n' + GOOD.split("\n", 1)[1], {}),
        (GOOD.split("\n", 1)[1], {"header": False}),  # defaults mean positions 0..3
        (GOOD.split("\n", 1)[1].replace(",", "\t"), {"header": False, "user_col": 0,
                                                     "item_col": 1, "rating_col": 2,
                                                     "timestamp_col": 3}),
    ],
)
def test_layouts(tmp_path, text, kwargs):
    check_good(load_ratings(write(tmp_path, text), **kwargs))


def test_columns_by_name_in_any_order(tmp_path):
    text = "ts,score,item,user,comment\n1000,4.0,200,10,nice\n1001,3.5,100,10,x\n1002,5,200,30,\n1003,0.5,300,20,y\n"
    r = load_ratings(write(tmp_path, text), user_col="user", item_col="item",
                     rating_col="score", timestamp_col="ts")
    check_good(r)


def test_columns_by_position_in_headerless_file(tmp_path):
    text = "4.0;x;10;200;1000\n3.5;x;10;100;1001\n5;x;30;200;1002\n0.5;x;20;300;1003\n"
    r = load_ratings(write(tmp_path, text), sep=";", header=False,
                     user_col=2, item_col=3, rating_col=0, timestamp_col=4)
    check_good(r)


def test_without_timestamps(tmp_path):
    r = load_ratings(write(tmp_path, "userId,movieId,rating\n1,2,3\n2,2,4\n"))
    np.testing.assert_array_equal(r.timestamps, [0, 0])
    r = load_ratings(write(tmp_path, "1 2 3\n2 2 4\n"), header=False)
    np.testing.assert_array_equal(r.timestamps, [0, 0])
    r = load_ratings(write(tmp_path, GOOD), timestamp_col=None)
    np.testing.assert_array_equal(r.timestamps, [0, 0, 0, 0])


def test_duplicates_merged_on_request(tmp_path):
    text = "userId,movieId,rating,timestamp\n1,1,1.0,5\n1,2,2.0,6\n1,1,4.0,7\n2,1,5.0,8\n1,1,2.5,9\n"
    path = write(tmp_path, text)
    with pytest.warns(UserWarning, match=r"2 repeated .* line 4"):
        last = load_ratings(path, duplicates="last")
    # kept rows: (1,2) line 3, (2,1) line 5, (1,1) line 6 — in file order
    np.testing.assert_array_equal(last.ratings, [2.0, 5.0, 2.5])
    np.testing.assert_array_equal(last.timestamps, [6, 8, 9])
    np.testing.assert_array_equal(last.user_ids[last.users], [1, 2, 1])
    np.testing.assert_array_equal(last.item_ids[last.items], [2, 1, 1])
    with pytest.warns(UserWarning):
        mean = load_ratings(path, duplicates="mean")
    np.testing.assert_allclose(mean.ratings, [2.0, 5.0, (1.0 + 4.0 + 2.5) / 3], rtol=1e-6)
    np.testing.assert_array_equal(mean.timestamps, [6, 8, 9])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning when nothing repeats
        load_ratings(write(tmp_path, GOOD, "clean.csv"), duplicates="mean")


# -- bad files -------------------------------------------------------------------------
H = "userId,movieId,rating,timestamp\n"


@pytest.mark.parametrize(
    "text, kwargs, line, fragment",
    [
        (H + "1,2,3,4\nx,2,3,4\n", {}, 3, "user id is not an integer"),
        (H + "1,2,3,4\n1,2.5,3,4\n", {}, 3, "item id is not an integer"),
        (H + "1,2,3,4\n2,2,,4\n", {}, 3, "rating"),
        (H + "1,2,3,4\n2,2,abc,4\n", {}, 3, "rating is not a number"),
        (H + "1,2,3,4\n2,2,nan,4\n", {}, 3, "rating"),
        (H + "1,2,3,4\n2,2,inf,4\n", {}, 3, "non-finite rating"),
        (H + "1,2,3,4\n2,2,7,4\n", {"rating_scale": (1, 5)}, 3, "outside the rating scale"),
        (H + "1,2,3,4\n2,2,0.5,4\n", {"rating_scale": (1, 5)}, 3, "outside the rating scale"),
        (H + "1,2,3,4\n2,2,3,-4\n", {}, 3, "negative timestamp"),
        (H + "1,2,3,4\n2,2,3,4.5\n", {}, 3, "timestamp is not an integer"),
        (H + "1,2,3,4\n2,2,3\n", {}, 3, "missing timestamp"),
        (H + "1,2,3,4\n2,2,3,4,5\n", {}, 3, "expected 4 fields"),
        (H + "1,2,3,4\n2,3,3,4\n1,2,5,6\n", {}, 4, "already rated item 2 on line 2"),
        # line numbers count physical lines: CRLF, blank lines, a BOM
        ((H + "1,2,3,4\n\n\n2,2,x,4\n").replace("\n", "\r\n"), {}, 5, "rating"),
        ("\ufeff" + H + "1,2,3,4\n\n2,2,9,4\n", {"rating_scale": (1, 5)}, 4, "outside"),
        ("\n\n" + H + "1,2,3,4\n1,2,3,4\n", {}, 5, "already rated item 2 on line 4"),
        # other separators
        ("1::2::3::4\n1::3::3:4\n", {"header": False}, 2, "rating"),
        ("1\t2\t3\t4\n1\t3\t3\n", {"header": False}, 2, "missing timestamp"),
        ("1 2 3 4\n1 3 3 x\n", {"header": False}, 2, "timestamp is not an integer"),
        (H + "1,2,3,4\n99999999999999999999999,2,3,4\n", {}, 3, "user id is beyond the int64 range"),
    ],
)
def test_bad_values_name_file_and_line(tmp_path, text, kwargs, line, fragment):
    path = write(tmp_path, text, "my-ratings.csv")
    with pytest.raises(DataError) as info:
        load_ratings(path, **kwargs)
    message = str(info.value)
    assert "my-ratings.csv" in message
    if line is not None:
        assert f"line {line}:" in message, message
    assert fragment in message, message


@pytest.mark.parametrize(
    "text, kwargs, fragment",
    [
        (b"", {}, "empty"),
        (b"\n  \r\n\n", {}, "empty"),
        (H.encode(), {}, "no data rows"),
        (b"a,b,c,d\n1,2,3,4\n", {}, "missing column(s) 'userId', 'movieId', 'rating'"),
        (b"userId,movieId,stars\n1,2,3\n", {}, "missing column(s) 'rating'"),
        (H.encode() + b"1,2,3,4\n", {"timestamp_col": "time"}, "missing column(s) 'time'"),
        (b"1,2,3\n", {"header": False, "rating_col": 5}, "rating column 5 does not exist"),
        (b"justoneword\n", {}, "cannot tell the separator"),
        (b"1,2,3,4\n", {}, "looks like data: pass header=False"),
    ],
)
def test_bad_files(tmp_path, text, kwargs, fragment):
    path = write(tmp_path, text, "my-ratings.csv")
    with pytest.raises(DataError) as info:
        load_ratings(path, **kwargs)
    assert "my-ratings.csv" in str(info.value)
    assert fragment in str(info.value), str(info.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv: no such file"):
        load_ratings(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="is a directory"):
        load_ratings(tmp_path)


def test_duplicate_names_both_lines(tmp_path):
    path = write(tmp_path, H + "5,6,3,4\n1,2,3,4\n5,6,4,4\n", "dup.csv")
    with pytest.raises(DataError, match=r"dup\.csv, line 4: user 5 already rated item 6 on line 2"):
        load_ratings(path)


def test_invalid_arguments(tmp_path):
    path = write(tmp_path, GOOD)
    with pytest.raises(ValueError, match="duplicates"):
        load_ratings(path, duplicates="first")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="position"):
        load_ratings(path, header=False, user_col="user")
    with pytest.raises(ValueError, match="must differ"):
        load_ratings(path, item_col="userId")
    with pytest.raises(ValueError, match="sep"):
        load_ratings(path, sep="||")


# Whatever the text, the only failure a user may see is a DataError.
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet="0123456789-.,:\t\n\r xe\ufeff", max_size=60), st.booleans())
def test_any_text_loads_or_raises_data_error(tmp_path, text, header):
    path = write(tmp_path, "userId,movieId,rating,timestamp\n" + text if header else text)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # merged repeats
            r = load_ratings(path, header=header, duplicates="mean")
    except DataError:
        return
    assert len(r) > 0 and np.all(np.isfinite(r.ratings))


def test_double_colon_translation_across_chunk_boundaries():
    # `::` files are streamed through a translator; a pair split between two reads
    # must still become one tab, exactly as a whole-file replace would do.
    import io

    from recsys_jax.data.files import _DoubleColonAsTab

    data = b"1::2::3.5::4\n" * 3 + b"a:::b:c::::d::" + b":"
    expected = data.replace(b"::", b"\t")
    for size in range(1, 9):
        raw = _DoubleColonAsTab(io.BytesIO(data))
        buffer, out = bytearray(size), b""
        while n := raw.readinto(buffer):
            out += bytes(buffer[:n])
        assert out == expected, size


def test_large_double_colon_file(tmp_path):
    rng = np.random.default_rng(0)
    n = 200_000  # several of pandas' read chunks
    users, items = rng.integers(1, 10**6, n), np.arange(n)
    ratings, stamps = rng.integers(1, 11, n) / 2, rng.integers(0, 2**31, n)
    text = "".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in zip(users, items, ratings, stamps))
    r = load_ratings(write(tmp_path, text, "ratings.dat"), header=False, rating_scale=(0.5, 5))
    np.testing.assert_array_equal(r.user_ids[r.users], users)
    np.testing.assert_array_equal(r.item_ids[r.items], items)
    np.testing.assert_array_equal(r.ratings, ratings.astype(np.float32))
    np.testing.assert_array_equal(r.timestamps, stamps)
