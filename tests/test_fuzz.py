"""A bounded fuzz run of every parser: random bytes and mutated valid files.

Each parser sees `NUM_INPUTS` generated inputs (drawn from ``np.random.default_rng``
with a fixed seed per parser, so a failure reproduces). Whatever the input, a parser
either returns a valid result or raises `DataError`; any other exception fails the test
and the message shows the input that caused it.

The ratings parsers run through `parse_ratings` (the same code as `load_ratings`, on
bytes in memory) with the options each MovieLens format uses (`RATINGS_OPTIONS`); the
movies parsers get the bytes directly. A valid `Ratings` has int32 indices inside the
id maps, sorted unique int64 raw ids, finite float32 ratings inside the scale,
non-negative int64 timestamps and no repeated (user, item) pair.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys_jax.data import movielens
from recsys_jax.data.files import parse_ratings
from recsys_jax.data.movielens import RATINGS_OPTIONS
from recsys_jax.data.ratings import DataError, Ratings

NUM_INPUTS = 10_000  # per parser; docs/RELIABILITY.md quotes this number

# -- valid files to mutate ---------------------------------------------------------------
RATINGS_SEEDS = {
    "csv": b"userId,movieId,rating,timestamp\n1,10,4.0,964982703\n1,20,3.5,964981247\n"
           b"2,10,5.0,964982224\n3,30,0.5,964983815\n",
    "dat": b"1::1193::5::978300760\r\n1::661::3::978302109\n2::1193::4::978298413\n"
           b"6040::1::1::956704000\n",
    "100k": b"196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n"
            b"244\t51\t2\t880606923\n",
}
SCALES = {"csv": (0.5, 5.0), "dat": (1.0, 5.0), "100k": (1.0, 5.0)}

U_ITEM = (
    "1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)"
    "|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    "3|Misérables, Les (1995)|01-Jan-1995||http://us.imdb.com/x|0|0|0|0|0|0|0|0|1|0|0|0|0|0|0|0|0|1|0\n"
)
MOVIES_SEEDS = {
    "movies.csv": 'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n'
                  '11,"American President, The (1995)",Comedy|Drama\n'
                  '50,Amélie (2001),(no genres listed)\n'.encode(),
    "movies.dat": "1::Toy Story (1995)::Animation|Children's|Comedy\n"
                  "1193::Misérables, Les (1995)::Drama\n".encode("latin-1"),
    "u.item": U_ITEM.encode("latin-1"),
}
MOVIES_PARSERS = {
    "movies.csv": movielens._read_movies_csv,
    "movies.dat": movielens._read_movies_dat,
    "u.item": movielens._read_u_item,
}

# Byte strings that parsers treat specially: separators, line ends, signs, special
# numbers, a byte-order mark, quotes, invalid UTF-8, numbers beyond int64 or float64.
TOKENS = [
    b",", b"::", b":", b"\t", b" ", b"|", b"\n", b"\r", b"\r\n", b"-", b"+", b".", b"e",
    b"nan", b"inf", b"NA", b"\xef\xbb\xbf", b"\x00", b'"', b"'", b"\xff", b"\xe9",
    b"99999999999999999999", b"9223372036854775808", b"-9223372036854775809", b"1e400",
    b"0", b"5", b"4.5", b"userId", b"movieId", b"rating", b"timestamp", b"\xd9\xa1",
]
ALPHABET = np.frombuffer(b"0123456789,:\t |\n\r-+.eE\"naifNA", dtype=np.uint8)


def mutate(rng: np.random.Generator, data: bytes) -> bytes:
    """One to four random edits: replace, insert, delete, duplicate or truncate."""
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 5))):
        op = int(rng.integers(0, 6))
        pos = int(rng.integers(0, len(out) + 1))
        if op == 0 and out:  # replace a byte with any byte
            out[min(pos, len(out) - 1)] = int(rng.integers(0, 256))
        elif op == 1:  # insert a special token
            out[pos:pos] = TOKENS[int(rng.integers(0, len(TOKENS)))]
        elif op == 2:  # replace a short span with a special token
            out[pos:pos + int(rng.integers(1, 6))] = TOKENS[int(rng.integers(0, len(TOKENS)))]
        elif op == 3:  # delete a span
            del out[pos:pos + int(rng.integers(1, 12))]
        elif op == 4:  # duplicate a span (repeats lines, hence pairs and movie ids)
            end = min(len(out), pos + int(rng.integers(1, 40)))
            out[pos:pos] = out[pos:end]
        else:  # truncate
            del out[pos:]
    return bytes(out)


def generate(rng: np.random.Generator, seed_file: bytes) -> bytes:
    """A random input: mostly mutated valid files, some noise from bytes or an alphabet."""
    kind = rng.random()
    if kind < 0.15:
        return rng.bytes(int(rng.integers(0, 300)))
    if kind < 0.30:
        return ALPHABET[rng.integers(0, len(ALPHABET), int(rng.integers(0, 120)))].tobytes()
    return mutate(rng, seed_file)


def check_ratings(r: Ratings, scale: tuple[float, float]) -> None:
    """Everything a caller may rely on in a `Ratings`."""
    assert isinstance(r, Ratings)
    n = len(r)
    assert n > 0
    assert r.users.dtype == np.int32 and r.items.dtype == np.int32
    assert r.ratings.dtype == np.float32 and r.timestamps.dtype == np.int64
    assert r.user_ids.dtype == np.int64 and r.item_ids.dtype == np.int64
    for a in (r.users, r.items, r.ratings, r.timestamps):
        assert a.shape == (n,)
    for ids, index in ((r.user_ids, r.users), (r.item_ids, r.items)):
        assert np.all(np.diff(ids) > 0)  # sorted and unique
        assert index.min() >= 0 and index.max() < len(ids)
        assert len(np.unique(index)) == len(ids)  # every id occurs in some row
    assert np.all(np.isfinite(r.ratings))
    assert r.ratings.min() >= scale[0] and r.ratings.max() <= scale[1]
    assert np.all(r.timestamps >= 0)
    pairs = r.users.astype(np.int64) * r.num_items + r.items
    assert len(np.unique(pairs)) == n  # duplicates="error": no repeated pair


def check_movies(frame: pd.DataFrame) -> None:
    assert list(frame.columns) == ["title", "genres"]
    assert frame.index.dtype == np.int64 and frame.index.is_unique
    assert all(isinstance(t, str) for t in frame["title"])


def fuzz(seed: int, seed_file: bytes, parse, check) -> tuple[int, int]:
    """Runs `NUM_INPUTS` inputs; returns (parsed, refused); fails on any other exception."""
    rng = np.random.default_rng(seed)
    parsed = refused = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning from inside pandas counts as a failure
        for i in range(NUM_INPUTS):
            data = generate(rng, seed_file)
            try:
                result = parse(data)
            except DataError as e:
                assert "fuzz-input" in str(e), f"input {i} {data!r}: {e}"  # names the file
                # the diagnosis found the bad line instead of giving up
                assert "pandas refused" not in str(e), f"input {i} {data!r}: {e}"
                refused += 1
                continue
            except Exception as e:  # noqa: BLE001 (the point of the test)
                pytest.fail(f"input {i} (seed {seed}) {data!r} raised {type(e).__name__}: {e}")
            try:
                check(result)
            except AssertionError:
                pytest.fail(f"input {i} (seed {seed}) {data!r} gave an invalid result")
            parsed += 1
    assert parsed + refused == NUM_INPUTS
    return parsed, refused


@pytest.mark.slow
@pytest.mark.parametrize("fmt", sorted(RATINGS_SEEDS))
def test_fuzz_ratings_parsers(fmt):
    scale = SCALES[fmt]
    path = f"fuzz-input.{fmt}"

    def parse(data: bytes) -> Ratings:
        return parse_ratings(data, path, **RATINGS_OPTIONS[fmt], rating_scale=scale)

    parsed, refused = fuzz(1000 + sorted(RATINGS_SEEDS).index(fmt), RATINGS_SEEDS[fmt], parse,
                           lambda r: check_ratings(r, scale))
    # The run reaches both outcomes: the generator is neither all noise nor all valid.
    assert parsed >= NUM_INPUTS // 20 and refused >= NUM_INPUTS // 5, (parsed, refused)


@pytest.mark.parametrize("name", sorted(MOVIES_PARSERS))
def test_fuzz_movies_parsers(name):
    reader = MOVIES_PARSERS[name]
    path = Path(f"fuzz-input-{name}")
    parsed, refused = fuzz(2000 + sorted(MOVIES_PARSERS).index(name), MOVIES_SEEDS[name],
                           lambda data: reader(path, data), check_movies)
    assert parsed >= NUM_INPUTS // 20 and refused >= NUM_INPUTS // 5, (parsed, refused)


def test_parse_ratings_matches_load_ratings(tmp_path):
    """The in-memory entry point the fuzz run uses is the file loader, value for value."""
    for fmt, data in RATINGS_SEEDS.items():
        path = tmp_path / f"r.{fmt}"
        path.write_bytes(data)
        options = dict(**RATINGS_OPTIONS[fmt], rating_scale=SCALES[fmt])
        a, b = load_ratings_checked(path, options), parse_ratings(data, path, **options)
        for field in ("users", "items", "ratings", "timestamps", "user_ids", "item_ids"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
        assert a.name == b.name == str(path) and a.rating_scale == b.rating_scale
        bad = data.replace(b"3", b"x", 1)  # a bad value: the same message, file and line
        path.write_bytes(bad)
        with pytest.raises(DataError) as from_file:
            load_ratings_checked(path, options)
        with pytest.raises(DataError) as from_memory:
            parse_ratings(bad, path, **options)
        assert str(from_file.value) == str(from_memory.value)
        assert f"{path}, line " in str(from_file.value)


def load_ratings_checked(path: Path, options: dict) -> Ratings:
    from recsys_jax.data.files import load_ratings

    return load_ratings(path, **options)
