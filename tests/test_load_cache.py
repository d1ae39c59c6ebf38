"""Large ratings files: the pyarrow and C parsers agree, ids are factorised without a sort,
and parsed arrays are cached in binary form, invalidated when the file changes and never
returned when damaged."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys_jax.data import cache as cache_module
from recsys_jax.data import files
from recsys_jax.data.files import factorize, first_duplicate, load_ratings, parse_ratings
from recsys_jax.data.movielens import load_movielens
from recsys_jax.data.ratings import DataError, Ratings

try:
    import pyarrow  # noqa: F401

    HAVE_PYARROW = True
except ImportError:
    HAVE_PYARROW = False

needs_pyarrow = pytest.mark.skipif(not HAVE_PYARROW, reason="pyarrow not installed (the fast extra)")
FIELDS = ("users", "items", "ratings", "timestamps", "user_ids", "item_ids")
READ_COLUMNS = files.read_columns  # the real parser, whatever `Spy` puts in its place


def ml_text(rng: np.random.Generator, rows: int, *, big_ids: bool = False, decimals: bool = False) -> str:
    """A ratings.csv in the ml-25m/ml-32m layout with ``rows`` distinct pairs, shuffled."""
    users = rng.integers(1, 3 * rows, rows) * (10**10 if big_ids else 1)
    items = rng.permutation(rows) * 7 + 1  # distinct, so every (user, item) pair is too
    if decimals:
        ratings = [f"{r:.4f}" for r in rng.uniform(0.5, 5.0, rows)]
    else:
        ratings = [f"{r / 2:.1f}" for r in rng.integers(1, 11, rows)]
    stamps = rng.integers(789_652_009, 1_697_164_000, rows)
    lines = [f"{u},{i},{r},{t}\n" for u, i, r, t in zip(users, items, ratings, stamps)]
    return "userId,movieId,rating,timestamp\n" + "".join(lines)


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode())
    return path


def assert_same(a: Ratings, b: Ratings) -> None:
    for field in FIELDS:
        x, y = getattr(a, field), getattr(b, field)
        assert x.dtype == y.dtype, field
        np.testing.assert_array_equal(x, y, err_msg=field)
    assert a.rating_scale == b.rating_scale


def reference(path: Path, **kwargs) -> Ratings:
    """What the loader must give: the C parser's columns through `Ratings.from_raw`."""
    c = READ_COLUMNS(path, engine="c", **kwargs)
    return Ratings.from_raw(c.users, c.items, c.ratings, c.timestamps,
                            rating_scale=(float(c.ratings.min()), float(c.ratings.max())))


class Spy:
    """Counts the parses `load_ratings` runs (a cache hit runs none)."""

    def __init__(self, monkeypatch):
        self.calls = 0
        real = files.read_columns

        def counted(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(files, "read_columns", counted)


@pytest.fixture
def spy(monkeypatch):
    return Spy(monkeypatch)


@pytest.fixture
def ratings_file(tmp_path):
    return write(tmp_path / "ratings.csv", ml_text(np.random.default_rng(0), 3000))


# -- factorisation and duplicates ------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
# ids from 1: a table indexed by the id; negative ids: by id - lowest; spread ids: hashing
@pytest.mark.parametrize("low, high", [(1, 500), (-50, 50), (-(10**9), 10**9)])
def test_factorize_equals_np_unique(dtype, low, high):
    rng = np.random.default_rng(1)
    raw = rng.integers(low, high, 5000).astype(dtype)
    ids, index = factorize(raw)
    expected_ids, expected_index = np.unique(raw, return_inverse=True)
    assert ids.dtype == np.int64 and index.dtype == np.int32
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_array_equal(index, expected_index)
    ids, index = factorize(np.array([2**62, -(2**62), 5], np.int64))  # the range overflows int32
    np.testing.assert_array_equal(ids, [-(2**62), 5, 2**62])
    np.testing.assert_array_equal(index, [2, 0, 1])


def test_first_duplicate_sorted_and_shuffled():
    users = np.array([0, 0, 1, 1, 2], np.int32)
    items = np.array([0, 3, 1, 2, 0], np.int32)
    assert first_duplicate(users, items) is None  # strictly increasing: no sort
    assert first_duplicate(users[::-1], items[::-1]) is None
    # rows 3 and 5 repeat rows 1 and 0; the first repeated row is 3, of row 1
    users = np.array([1, 0, 2, 0, 3, 1], np.int32)
    items = np.array([1, 0, 0, 0, 2, 1], np.int32)
    assert first_duplicate(users, items) == (3, 1)


# -- the two parsers -------------------------------------------------------------------
@needs_pyarrow
@pytest.mark.parametrize("kwargs", [{}, {"big_ids": True}, {"decimals": True}])
def test_pyarrow_and_c_give_identical_arrays(tmp_path, kwargs):
    path = write(tmp_path / "ratings.csv", ml_text(np.random.default_rng(2), 20_000, **kwargs))
    source = files.Source(path, skip=1)
    arrow = files._read_arrow(source, ",", 4, [0, 1, 2, 3])
    assert (arrow is None) == kwargs.get("big_ids", False)  # ids beyond int32: the C parser's
    by_arrow = load_ratings(path, engine="pyarrow", cache=False)
    by_c = load_ratings(path, engine="c", cache=False)
    assert_same(by_arrow, by_c)
    assert_same(by_c, reference(path))
    assert by_c.users.dtype == np.int32 and by_c.ratings.dtype == np.float32
    assert by_c.timestamps.dtype == np.int64 and by_c.user_ids.dtype == np.int64


@needs_pyarrow
@pytest.mark.parametrize("text", [
    "\ufeffuserId,movieId,rating,timestamp\r\n1,2,3.5,4\r\n\r\n5,6,1,7\r\n",  # BOM, CRLF, blank
    "userId\tmovieId\trating\n1\t2\t3.5\n5\t6\t1\n",  # tabs, no timestamps
    '"userId","movieId","rating","timestamp"\n1,2,3.5,4\n5,6,1,7\n',  # quoted header
])
def test_pyarrow_reads_the_plain_layouts(tmp_path, text):
    path = write(tmp_path / "r.csv", text)
    first, *_ = files._first_line(path)
    sep = "\t" if "\t" in text else ","
    ncols = 4 if "timestamp" in text else 3
    positions = [0, 1, 2, 3 if ncols == 4 else None]
    assert files._read_arrow(files.Source(path, skip=first + 1), sep, ncols, positions) is not None
    assert_same(load_ratings(path, engine="pyarrow", cache=False),
                load_ratings(path, engine="c", cache=False))


def _outcome(data: bytes, header: bool, engine: str):
    """The arrays that `parse_ratings` gives, or the message of its DataError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = parse_ratings(data, "f.csv", header=header, duplicates="mean", engine=engine)
    except DataError as e:
        return str(e)
    return tuple(getattr(r, f).tobytes() for f in FIELDS) + (r.rating_scale,)


@needs_pyarrow
@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789-+.,\t\n\r ex\"\ufeff", max_size=80), st.booleans())
def test_engines_agree_on_any_text(text, header):
    """Whatever the text, both engines load the same arrays or refuse with the same message."""
    data = (("userId,movieId,rating,timestamp\n" + text) if header else text).encode()
    assert _outcome(data, header, "pyarrow") == _outcome(data, header, "c")


@needs_pyarrow
@pytest.mark.parametrize("data, header", [
    (b"0,0,0,0x10\n", False),  # pyarrow reads hexadecimal, pandas does not
    (b"userId,movieId,rating,timestamp\n\xef\xbb\xbf\r", True),  # a BOM after the header
    (b'0\t0\t"0', False),  # a quote left open at the end
])
def test_engines_agree_on_found_differences(data, header):
    """Cases where the two parsers once disagreed (found by the property tests)."""
    assert isinstance(_outcome(data, header, "c"), str)
    assert _outcome(data, header, "pyarrow") == _outcome(data, header, "c")


# Fields that are mostly valid, so that pyarrow reads most files, with the edge cases that
# the two parsers could take differently: signs, spaces, quotes, exponents, int32 overflow.
_FIELD = st.one_of(
    st.integers(-3, 3000).map(str),
    st.integers(2**31 - 3, 2**31 + 3).map(str),
    st.floats(0, 10, allow_nan=False).map(lambda f: f"{f:.{int(f * 7) % 9}f}"),
    st.sampled_from(["", " 7", "7 ", "+3", "-0", "007", '"5"', "1.0", "1e3", "1E3", "2.5e-1", ".5", "5.",
                     "1e", "e5", "nan", "NaN", "-nan", "inf", "-inf", "+inf", "Inf", "INF", "Infinity",
                     "x", "0x10", "0X1A", "0b1", "0o7", "99999999999999999999", "1_000", "\u0661", "\t3"]),
)
_ROW = st.one_of(st.tuples(_FIELD, _FIELD, _FIELD, _FIELD).map(",".join),
                 st.lists(_FIELD, min_size=3, max_size=5).map(",".join))


@needs_pyarrow
@settings(max_examples=400, deadline=None)
@given(st.lists(_ROW, min_size=1, max_size=8), st.sampled_from(["\n", "\r\n"]), st.booleans())
def test_engines_agree_on_near_valid_rows(rows, newline, header):
    head = "userId,movieId,rating,timestamp" + newline if header else ""
    data = (head + newline.join(rows) + newline).encode()
    assert _outcome(data, header, "pyarrow") == _outcome(data, header, "c")


def test_engine_is_checked(ratings_file):
    with pytest.raises(ValueError, match="engine"):
        load_ratings(ratings_file, engine="polars")  # type: ignore[arg-type]


def test_bad_row_still_named_with_pyarrow_installed(tmp_path):
    text = ml_text(np.random.default_rng(3), 2000).splitlines(keepends=True)
    text[1500] = "7,8,x,9\n"
    path = write(tmp_path / "bad.csv", "".join(text))
    for engine in ("auto", "c"):
        with pytest.raises(DataError, match=r"bad\.csv, line 1501: rating is not a number"):
            load_ratings(path, engine=engine, cache=True, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "parsed").exists() or not any((tmp_path / "cache" / "parsed").iterdir())


# -- the cache -------------------------------------------------------------------------
def entries(cache_dir: Path) -> list[Path]:
    folder = cache_dir / "parsed"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def test_second_load_comes_from_the_cache(ratings_file, tmp_path, spy):
    cache_dir = tmp_path / "cache"
    first = load_ratings(ratings_file, cache=True, cache_dir=cache_dir)
    assert spy.calls == 1
    [entry] = entries(cache_dir)
    assert entry.name.startswith("ratings.csv-") and entry.suffix == ".arrays"
    second = load_ratings(ratings_file, cache=True, cache_dir=cache_dir, name="again")
    assert spy.calls == 1  # not parsed again
    assert_same(first, second)
    assert_same(second, reference(ratings_file))
    assert second.name == "again" and first.name == str(ratings_file)
    # Arrays are copy-on-write: writing to one changes neither the entry nor the next load.
    second.ratings[:] = 0
    assert_same(load_ratings(ratings_file, cache=True, cache_dir=cache_dir), first)
    assert spy.calls == 1


def test_changed_file_is_parsed_again(ratings_file, tmp_path, spy):
    cache_dir = tmp_path / "cache"
    load_ratings(ratings_file, cache=True, cache_dir=cache_dir)
    st = ratings_file.stat()
    os.utime(ratings_file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # touch
    load_ratings(ratings_file, cache=True, cache_dir=cache_dir)
    assert spy.calls == 2
    # same size, new content (a 4.0 becomes a 5.0), new mtime: the new ratings, one entry
    text = ratings_file.read_text()
    changed = text.replace(",4.0,", ",5.0,", 1)
    assert changed != text and len(changed) == len(text)
    ratings_file.write_text(changed)
    os.utime(ratings_file, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    r = load_ratings(ratings_file, cache=True, cache_dir=cache_dir)
    assert spy.calls == 3
    assert_same(r, reference(ratings_file))
    assert len(entries(cache_dir)) == 1  # the entry was replaced, not added to
    load_ratings(ratings_file, cache=True, cache_dir=cache_dir)
    assert spy.calls == 3


def test_options_are_part_of_the_key(ratings_file, tmp_path, spy):
    cache_dir = tmp_path / "cache"
    a = load_ratings(ratings_file, cache=True, cache_dir=cache_dir)
    b = load_ratings(ratings_file, cache=True, cache_dir=cache_dir, rating_scale=(0, 10))
    assert spy.calls == 2 and len(entries(cache_dir)) == 2
    assert a.rating_scale == (0.5, 5.0) and b.rating_scale == (0.0, 10.0)
    c = load_ratings(ratings_file, cache=True, cache_dir=cache_dir, timestamp_col=None)
    assert spy.calls == 3
    np.testing.assert_array_equal(c.timestamps, np.zeros(len(c), np.int64))
    d = load_ratings(ratings_file, cache=True, cache_dir=cache_dir, timestamp_col=None)
    assert spy.calls == 3
    assert_same(c, d)


def test_merge_warning_is_given_again_from_the_cache(tmp_path, spy):
    path = write(tmp_path / "dup.csv", "userId,movieId,rating,timestamp\n1,1,1.0,5\n1,2,2.0,6\n1,1,4.0,7\n")
    cache_dir = tmp_path / "cache"
    for calls in (1, 1):
        with pytest.warns(UserWarning, match=r"1 repeated .* line 4"):
            r = load_ratings(path, duplicates="mean", cache=True, cache_dir=cache_dir)
        assert spy.calls == calls
        np.testing.assert_allclose(r.ratings, [2.0, 2.5])


def _flip_byte(entry: Path, where: int) -> None:
    data = bytearray(entry.read_bytes())
    data[where] ^= 0x40
    entry.write_bytes(bytes(data))


DAMAGE = {
    "data byte": lambda e: _flip_byte(e, e.stat().st_size - 100),
    "header byte": lambda e: _flip_byte(e, 40),
    "magic": lambda e: _flip_byte(e, 0),
    "truncated": lambda e: os.truncate(e, e.stat().st_size - 8),
    "cut to the header": lambda e: os.truncate(e, 30),
    "empty": lambda e: os.truncate(e, 0),
    "appended": lambda e: e.write_bytes(e.read_bytes() + b"\0" * 64),
    "not ours": lambda e: e.write_bytes(b"PK\x03\x04" + os.urandom(500)),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_entry_is_parsed_again(ratings_file, tmp_path, spy, damage):
    cache_dir = tmp_path / "cache"
    good = load_ratings(ratings_file, cache=True, cache_dir=cache_dir)
    [entry] = entries(cache_dir)
    DAMAGE[damage](entry)
    again = load_ratings(ratings_file, cache=True, cache_dir=cache_dir)
    assert spy.calls == 2  # detected: parsed, not returned
    assert_same(again, good)
    load_ratings(ratings_file, cache=True, cache_dir=cache_dir)  # ... and the entry rewritten
    assert spy.calls == 2


def test_format_version_is_checked(ratings_file, tmp_path, spy, monkeypatch):
    cache_dir = tmp_path / "cache"
    load_ratings(ratings_file, cache=True, cache_dir=cache_dir)
    monkeypatch.setattr(cache_module, "FORMAT_VERSION", cache_module.FORMAT_VERSION + 1)
    load_ratings(ratings_file, cache=True, cache_dir=cache_dir)
    assert spy.calls == 2


def test_switches(ratings_file, tmp_path, spy, monkeypatch):
    cache_dir = tmp_path / "cache"
    monkeypatch.delenv(cache_module.ENV_SWITCH, raising=False)
    load_ratings(ratings_file, cache=False, cache_dir=cache_dir)
    load_ratings(ratings_file, cache_dir=cache_dir)  # default: below MIN_BYTES, not cached
    assert entries(cache_dir) == []
    monkeypatch.setattr(cache_module, "MIN_BYTES", 0)
    monkeypatch.setenv(cache_module.ENV_SWITCH, "off")
    load_ratings(ratings_file, cache_dir=cache_dir)
    assert entries(cache_dir) == []
    load_ratings(ratings_file, cache=True, cache_dir=cache_dir)  # the argument wins
    assert len(entries(cache_dir)) == 1
    monkeypatch.setenv(cache_module.ENV_SWITCH, "1")
    monkeypatch.setenv("RECSYS_JAX_CACHE", str(tmp_path / "env-cache"))
    load_ratings(ratings_file)
    assert len(entries(tmp_path / "env-cache")) == 1
    calls = spy.calls
    load_ratings(ratings_file)
    assert spy.calls == calls
    with pytest.raises(ValueError, match="cache must be"):
        load_ratings(ratings_file, cache="yes")  # type: ignore[arg-type]


def test_unwritable_cache_warns_and_loads(ratings_file, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.warns(RuntimeWarning, match="could not write the parse cache"):
        r = load_ratings(ratings_file, cache=True, cache_dir=blocker)
    assert_same(r, reference(ratings_file))


def test_writing_leaves_no_temporary_file(ratings_file, tmp_path):
    cache_dir = tmp_path / "cache"
    load_ratings(ratings_file, cache=True, cache_dir=cache_dir)
    assert [p.name.startswith(".") for p in entries(cache_dir)] == [False]


def test_the_cache_is_private_and_a_shared_one_is_not_trusted(ratings_file, tmp_path, spy, capsys):
    """Anyone who may write to the folder could change the ratings an entry returns: the
    folder is made 0700 and entries 0644; a folder that group or others may write is
    neither read nor written (issue 25, item 2)."""
    import stat

    from recsys_jax.data import cachefiles

    cache_dir = tmp_path / "cache"
    load_ratings(ratings_file, cache=True, cache_dir=cache_dir)
    [entry] = entries(cache_dir)
    assert stat.S_IMODE(entry.parent.stat().st_mode) == 0o700 and stat.S_IMODE(entry.stat().st_mode) == 0o644
    os.chmod(entry.parent, 0o777)
    cachefiles._said.clear()
    r = load_ratings(ratings_file, cache=True, cache_dir=cache_dir)
    assert spy.calls == 2  # parsed again, not read from the shared folder
    assert_same(r, reference(ratings_file))
    assert "group or others may write" in capsys.readouterr().err


def test_movielens_folder_layout_is_cached(tmp_path, spy):
    folder = tmp_path / "ml-32m"
    folder.mkdir()
    write(folder / "ratings.csv", ml_text(np.random.default_rng(4), 2000))
    write(folder / "movies.csv", "movieId,title,genres\n1,Toy Story (1995),Animation|Comedy\n")
    cache_dir = tmp_path / "cache"
    first = load_movielens("ml-32m", data_dir=tmp_path, download=False, cache_dir=cache_dir, cache=True)
    second = load_movielens("ml-32m", data_dir=tmp_path, download=False, cache_dir=cache_dir, cache=True)
    assert spy.calls == 1
    assert_same(first, second)
    assert second.name == "ml-32m" and second.movies.loc[1, "title"] == "Toy Story (1995)"
    assert len(entries(cache_dir)) == 1
    load_movielens("ml-32m", data_dir=tmp_path, download=False, cache_dir=cache_dir, cache=False)
    assert spy.calls == 2


def test_benchmark_file_is_seeded_and_in_movielens_order(tmp_path):
    from benchmarks.load import synthetic_columns, write_synthetic

    a = synthetic_columns(5000, 300, 400, seed=7)
    b = synthetic_columns(5000, 300, 400, seed=7)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    users, movies, stars, stamps, movie_ids = a
    key = users.astype(np.int64) * (movie_ids.max() + 1) + movies
    assert len(users) == 5000 and np.all(key[1:] > key[:-1])  # distinct, (user, movie) order
    assert set(movies) <= set(movie_ids) and stars.min() >= 0 and stars.max() <= 9
    data = write_synthetic(tmp_path / "ml-32m", 5000, 300, 400, seed=7)
    r = load_ratings(tmp_path / "ml-32m" / "ratings.csv", cache=False)
    assert (len(r), r.num_users, r.num_items) == (5000, data["users"], data["movies"])
    np.testing.assert_array_equal(r.user_ids[r.users], users)
    np.testing.assert_array_equal(r.item_ids[r.items], movies)
    np.testing.assert_array_equal(r.ratings, (stars + 1) / 2)
    np.testing.assert_array_equal(r.timestamps, stamps)


def test_entry_with_other_arrays_is_parsed_again(ratings_file, tmp_path, spy):
    """An entry that passes every check but does not hold the arrays of a `Ratings`."""
    cache_dir = tmp_path / "cache"
    good = load_ratings(ratings_file, cache=True, cache_dir=cache_dir)
    [entry] = entries(cache_dir)
    _, stamp, options = files._cache_entry(ratings_file, {
        "sep": None, "user_col": "userId", "item_col": "movieId", "rating_col": "rating",
        "timestamp_col": "timestamp", "header": True, "rating_scale": None, "duplicates": "error"},
        True, cache_dir)
    assert cache_module.read(entry, stamp, options) is not None  # the key is rebuilt right
    cache_module.write(entry, stamp, options, {"users": good.users.astype(np.int64)},
                       {"rating_scale": [0.5, 5.0], "warning": None})
    assert_same(load_ratings(ratings_file, cache=True, cache_dir=cache_dir), good)
    assert spy.calls == 2
