"""Reading a ratings table from a delimited text file: a user's own data or a MovieLens file.

Contract of `load_ratings`:

* The file is UTF-8 (a byte-order mark is ignored; undecodable bytes become U+FFFD and
  are then reported as bad values), lines end in LF or CRLF, blank lines are ignored.
* The separator is a comma, a tab, ``::`` or a run of whitespace, detected from the first
  non-blank line unless given; any other single character may be given explicitly.
* Columns are named from the header (``header=True``) or given as 0-based positions.
* User and item ids are integers; ratings are finite numbers (inside ``rating_scale``
  when one is given); timestamps, when present, are non-negative integer seconds.
* Each (user, item) pair occurs once, unless ``duplicates`` says how to merge repeats.

Every violation raises `DataError` whose message names the file, the 1-based line number
of the first offending line and that line's text (cut to `MAX_SHOWN` characters, so that
a binary file gives a short message); a user's mistake never surfaces as a traceback from
inside pandas. Ids are int64: raw ids beyond int32 load (the indices stay contiguous
int32), ids beyond int64 are refused with the line that holds them.

Speed: the clean case is one pass of pandas' C parser with explicit dtypes (``::`` is
translated to a tab while streaming so that the C parser can read it). Only when that
fails does a slower diagnostic pass run, to find the first bad line.

`read_columns` and `first_duplicate` are the building blocks that the MovieLens loaders
share with `load_ratings`. `parse_ratings` is `load_ratings` on bytes already in memory
(the fuzz tests use it to skip the disk).
"""
from __future__ import annotations

import csv
import io
import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Literal, NamedTuple

import numpy as np
import pandas as pd

from recsys_jax.data.ratings import DataError, Ratings

Column = str | int
Duplicates = Literal["error", "last", "mean"]

WHITESPACE = r"\s+"  # the `sep` value meaning "one or more spaces or tabs"

_DEFAULT_NAMES = ("userId", "movieId", "rating", "timestamp")
_ROLES = ("user id", "item id", "rating", "timestamp")
_SPACE = " \t\v\f\r\n"  # what pandas' C parser skips around a number (not all of \s)
_INTEGER = re.compile(r"[+-]?[0-9]+")  # ASCII digits: pandas reads no others
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_PANDAS_LINE = re.compile(r"line (\d+)")
_INT64_DIGITS = 19  # 2**63 - 1 has 19 digits: a shorter integer string always fits

MAX_SHOWN = 120  # characters of an offending line quoted in an error message


def shorten(text: str, limit: int = MAX_SHOWN) -> str:
    """``text``, or its first ``limit`` characters and how long it really is."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text):,} characters)"


# -- where a data row lives in the file ----------------------------------------------
@dataclass(frozen=True)
class Source:
    """A parsed text file and how its data rows map back to physical lines.

    ``skip`` physical lines (header and anything above it) precede the data; after them
    every non-blank line is one data row, exactly as pandas counts them. ``data`` holds
    the content when it was parsed from memory; ``path`` then only names it.
    """

    path: Path
    skip: int
    data: bytes | None = field(default=None, repr=False)

    def line_of(self, row: int) -> tuple[int, str]:
        """(1-based line number, text) of data row ``row``; slow, for error messages."""
        seen = -1
        with _open_text(self.path, self.data) as fh:
            for number, line in enumerate(fh, start=1):
                if number <= self.skip or _blank(line):
                    continue
                seen += 1
                if seen == row:
                    return number, line.rstrip("\r\n")
        return -1, ""

    def text_of_line(self, number: int) -> str:
        with _open_text(self.path, self.data) as fh:
            for current, line in enumerate(fh, start=1):
                if current == number:
                    return line.rstrip("\r\n")
        return ""

    def error_at_row(self, row: int, problem: str, cli_problem: str | None = None) -> DataError:
        number, text = self.line_of(row)
        return _line_error(self.path, number, problem, text, cli_problem)


def _open_text(path: Path, data: bytes | None = None):
    # Universal newlines end a line at LF, CRLF or a lone CR, as pandas' parser does, so
    # that line numbers agree with it; "utf-8-sig" drops a byte-order mark.
    if data is not None:
        return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", errors="replace", newline=None)
    return open(path, encoding="utf-8-sig", errors="replace", newline=None)


def _blank(line: str) -> bool:
    return not line.strip(" \t\r\n")  # the lines pandas skips


def _line_error(
    path: Path, number: int, problem: str, text: str | None = None, cli_problem: str | None = None
) -> DataError:
    """``cli_problem``: ``problem`` with the CLI's flags in its advice (see `DataError`)."""
    where = f"{path}, line {number}" if number > 0 else str(path)
    shown = f" (line: {shorten(text)!r})" if text else ""
    cli = None if cli_problem is None else f"{where}: {cli_problem}{shown}"
    return DataError(f"{where}: {problem}{shown}", cli=cli)


# -- the columns of a ratings file -----------------------------------------------------
class RatingColumns(NamedTuple):
    """Raw parsed columns, one entry per data row, in file order."""

    users: np.ndarray  # int64 raw ids
    items: np.ndarray  # int64 raw ids
    ratings: np.ndarray  # float64, finite
    timestamps: np.ndarray | None  # int64 >= 0, or None when the file has none
    source: Source


def read_columns(
    path: str | Path,
    *,
    sep: str | None = None,
    user_col: Column = "userId",
    item_col: Column = "movieId",
    rating_col: Column = "rating",
    timestamp_col: Column | None = "timestamp",
    header: bool = True,
    rating_scale: tuple[float, float] | None = None,
    data: bytes | None = None,
) -> RatingColumns:
    """Parses and validates the four rating columns; see the module docstring.

    ``data``, when given, is the file's content: nothing is read from disk and ``path``
    only names it in messages. Duplicate (user, item) pairs are not looked for here
    (see `first_duplicate`).
    """
    path = Path(path)
    first_index, first_line = _first_line(path, data)
    if sep is None:
        sep = _sniff_separator(path, first_index, first_line)
    if len(sep) != 1 and sep not in ("::", WHITESPACE):
        raise ValueError(f"sep must be one character, '::' or {WHITESPACE!r}, got {sep!r}")
    fields = _split(first_line, sep)

    positions = _resolve_columns(
        path, first_index + 1, fields, header, (user_col, item_col, rating_col, timestamp_col)
    )
    source = Source(path, skip=first_index + 1 if header else 0, data=data)
    frame = _read_typed(source, sep, len(fields), positions)
    if frame is None:  # the fast path failed: find the first bad line and say so
        raise _diagnose(source, sep, len(fields), positions)
    if len(frame) == 0:
        raise DataError(f"{path}: the file has a header but no data rows")

    users = frame[positions[0]].to_numpy(np.int64)
    items = frame[positions[1]].to_numpy(np.int64)
    ratings = frame[positions[2]].to_numpy(np.float64)
    timestamps = frame[positions[3]].to_numpy(np.int64) if positions[3] is not None else None

    checks: list[tuple[np.ndarray, str]] = [(~np.isfinite(ratings), "missing or non-finite rating")]
    if rating_scale is not None:
        lo, hi = rating_scale
        checks.append(
            ((ratings < lo) | (ratings > hi), f"rating outside the rating scale [{lo:g}, {hi:g}]")
        )
    if timestamps is not None:
        checks.append((timestamps < 0, "negative timestamp"))
    failure = _first_failure(checks)
    if failure is not None:
        row, problem = failure
        raise source.error_at_row(row, problem)
    return RatingColumns(users, items, ratings, timestamps, source)


def _first_line(path: Path, data: bytes | None = None) -> tuple[int, str]:
    """0-based physical index and text of the first non-blank line."""
    try:
        with _open_text(path, data) as fh:
            for index, line in enumerate(fh):
                if not _blank(line):
                    return index, line.rstrip("\r\n")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a ratings file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the file: {e.strerror or e}") from None
    raise DataError(f"{path}: the file is empty")


def _sniff_separator(path: Path, index: int, line: str) -> str:
    if "::" in line:
        return "::"
    for sep in (",", "\t"):
        if sep in line:
            return sep
    if len(line.split()) > 1:
        return WHITESPACE
    raise _line_error(
        path, index + 1, "cannot tell the separator (expected commas, tabs, '::' or spaces)", line
    )


def _split(line: str, sep: str) -> list[str]:
    if sep == WHITESPACE:
        return line.split()
    if sep == "::":
        return line.split("::")
    try:
        return next(csv.reader([line], delimiter=sep))  # honours quoted header names
    except (csv.Error, StopIteration):
        return line.split(sep)


def _resolve_columns(
    path: Path,
    first_number: int,
    fields: list[str],
    header: bool,
    columns: tuple[Column | None, ...],
) -> list[int | None]:
    """0-based positions of (user, item, rating, timestamp); timestamp may be None."""
    names = [f.strip() for f in fields]
    positions: list[int | None] = []
    missing: list[str] = []
    for role, col, default in zip(_ROLES, columns, _DEFAULT_NAMES):
        if col is None:
            if role != "timestamp":
                raise ValueError(f"the {role} column is required")
            positions.append(None)
            continue
        if isinstance(col, bool) or not isinstance(col, (int, str)):
            raise ValueError(f"a column is a name or a 0-based position, got {col!r}")
        if isinstance(col, str) and not header:
            if col != default:
                raise ValueError(
                    f"header=False: give the {role} column as a 0-based position, not {col!r}"
                )
            col = _DEFAULT_NAMES.index(col)  # defaults mean the usual order 0, 1, 2, 3
        if isinstance(col, int):
            if 0 <= col < len(fields):
                positions.append(col)
            elif role == "timestamp" and not header and columns[3] == default:
                positions.append(None)  # headerless three-column file: no timestamps
            else:
                raise _line_error(
                    path,
                    first_number,
                    f"the {role} column {col} does not exist: lines have {len(fields)} "
                    f"columns (0-based positions 0..{len(fields) - 1})",
                )
            continue
        if col in names:
            positions.append(names.index(col))
        elif role == "timestamp" and col == default:
            positions.append(None)  # the default timestamp column is optional
        else:
            missing.append(col)
            positions.append(None)
    if missing:
        message = (
            f"{path}, line {first_number}: missing column(s) {', '.join(map(repr, missing))}; "
            f"the header has {shorten(', '.join(map(repr, names)))}"
        )
        if all(_NUMBER.fullmatch(n) for n in names):
            raise DataError(f"{message} (the first line looks like data: pass header=False)",
                            cli=f"{message} (the first line looks like data: pass --no-header)")
        raise DataError(message)
    used = [p for p in positions if p is not None]
    if len(set(used)) != len(used):
        raise ValueError(f"the user, item, rating and timestamp columns must differ: {columns}")
    return positions


class _DoubleColonAsTab(io.RawIOBase):
    """Streams a file with every ``::`` turned into a tab, for pandas' fast C parser."""

    def __init__(self, raw: BinaryIO):
        self._raw = raw
        self._held = b""  # a trailing ':' that may pair with the next chunk's first byte
        self._out = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        while not self._out:
            chunk = self._raw.read(max(len(buffer), 2))
            if not chunk:
                self._out, self._held = self._held, b""
                break
            out = (self._held + chunk).replace(b"::", b"\t")
            # A colon left unpaired at the end may pair with the next chunk's first byte.
            self._held = b":" if out.endswith(b":") else b""
            self._out = out[:-1] if self._held else out
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n


def _read_frame(source: Source, sep: str, dtype, **kwargs) -> pd.DataFrame:
    options = dict(
        header=None,
        skiprows=source.skip,
        index_col=False,
        dtype=dtype,
        engine="c",
        encoding="utf-8",
        encoding_errors="replace",
        **kwargs,
    )
    in_memory = source.data is not None
    if sep == "::":
        with io.BytesIO(source.data) if in_memory else open(source.path, "rb") as fh:
            return pd.read_csv(io.BufferedReader(_DoubleColonAsTab(fh)), sep="\t", **options)
    return pd.read_csv(io.BytesIO(source.data) if in_memory else source.path, sep=sep, **options)


def _read_typed(
    source: Source, sep: str, ncols: int, positions: list[int | None]
) -> pd.DataFrame | None:
    """The fast path; None when some value does not parse (then `_diagnose` runs)."""
    kinds = ("int64", "int64", "float64", "int64")
    dtype: dict[int, str] = {c: "str" for c in range(ncols)}
    for position, kind in zip(positions, kinds):
        if position is not None:
            dtype[position] = kind
    try:
        with warnings.catch_warnings():
            # pandas warns while it tries a float cast on '1e400' in an int column; the
            # ValueError that follows is diagnosed below, so the warning says nothing.
            warnings.simplefilter("ignore", RuntimeWarning)
            frame = _read_frame(source, sep, dtype)
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=range(ncols))
    except (ValueError, OverflowError, TypeError):
        # pandas.errors.ParserError is a ValueError
        return None
    # pandas takes the width from the first data line; it must match the header's.
    return frame if frame.shape[1] == ncols else None


def _diagnose(source: Source, sep: str, ncols: int, positions: list[int | None]) -> DataError:
    """The first bad line of a file that the typed fast path could not read."""
    path = source.path
    try:
        frame = _read_frame(source, sep, str, keep_default_na=False, na_filter=False)
    except pd.errors.ParserError as e:
        match = _PANDAS_LINE.search(str(e))
        if not match:
            return DataError(f"{path}: cannot parse the file: {e}")
        # pandas stops at the first line with too many fields (it counts physical lines,
        # as we do); a line above it may be bad in another way, so check those first.
        number = int(match.group(1))
        earlier = _first_bad_row_before(source, sep, ncols, positions, number)
        if earlier is not None:
            return source.error_at_row(*earlier)
        return _line_error(
            path, number, f"expected {ncols} fields like the first line", source.text_of_line(number)
        )
    except (ValueError, OSError) as e:
        return DataError(f"{path}: cannot parse the file: {e}")
    failure = _first_bad_row(frame, ncols, positions)
    if failure is None:
        return DataError(f"{path}: cannot parse the file (pandas refused a value that looks valid)")
    return source.error_at_row(*failure)


def _first_bad_row_before(
    source: Source, sep: str, ncols: int, positions: list[int | None], number: int
) -> tuple[int, str] | None:
    """`_first_bad_row` among the data rows above physical line ``number``."""
    rows = 0
    with _open_text(source.path, source.data) as fh:
        for current, line in enumerate(fh, start=1):
            if current >= number:
                break
            if current > source.skip and not _blank(line):
                rows += 1
    if rows == 0:
        return None
    try:
        frame = _read_frame(source, sep, str, keep_default_na=False, na_filter=False, nrows=rows)
    except (ValueError, OSError):  # a quoted field spanning lines put the count off
        return None
    return _first_bad_row(frame, ncols, positions)


def _first_bad_row(frame: pd.DataFrame, ncols: int, positions: list[int | None]) -> tuple[int, str] | None:
    """(row, problem) of the first row of a string-typed frame that cannot be used.

    Plain Python over each column: as fast as pandas' string methods on a large file (they
    loop in Python too) and much faster on a small one.
    """
    if frame.shape[1] != ncols:
        return 0, f"expected {ncols} fields like the header"
    frame = frame.fillna("")  # short lines leave NaN even with na_filter=False
    checks: list[tuple[np.ndarray, str]] = []
    for role, position in zip(_ROLES, positions):
        if position is None:
            continue
        values = [str(v).strip(_SPACE) for v in frame[position].tolist()]
        empty = np.array([v == "" for v in values], dtype=bool)
        checks.append((empty, f"missing {role}"))
        if role == "rating":
            numbers = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce")
            checks.append((numbers.isna().to_numpy() & ~empty, "rating is not a number"))
        else:
            integer = np.array([_INTEGER.fullmatch(v) is not None for v in values], dtype=bool)
            checks.append((~integer & ~empty, f"{role} is not an integer"))
            checks.append((_beyond_int64(values, integer), f"{role} is beyond the int64 range"))
    return _first_failure(checks)


def to_int64(text: str) -> int | None:
    """The value of an ASCII integer string (``[+-]?[0-9]+``), or None outside int64.

    Leading zeros are dropped and the length decides before converting: Python refuses to
    convert a string of more than 4,300 digits (``sys.get_int_max_str_digits``), and a
    line of a million digits must still give a `DataError` naming it.
    """
    sign = -1 if text.startswith("-") else 1
    digits = text.lstrip("+-").lstrip("0") or "0"
    if len(digits) > _INT64_DIGITS:
        return None
    value = sign * int(digits)
    return value if -(2**63) <= value < 2**63 else None


def _beyond_int64(values: list[str], integer: np.ndarray) -> np.ndarray:
    """Which of the ``integer`` strings do not fit in int64."""
    out = np.zeros(len(values), dtype=bool)
    for row in np.flatnonzero(integer):
        if len(values[row]) >= _INT64_DIGITS:
            out[row] = to_int64(values[row]) is None
    return out


def _first_failure(checks: list[tuple[np.ndarray, str]]) -> tuple[int, str] | None:
    """The earliest failing row and, among checks failing there, the first check's text."""
    best: tuple[int, str] | None = None
    for mask, problem in checks:
        if mask.any():
            row = int(np.argmax(mask))
            if best is None or row < best[0]:
                best = (row, problem)
    return best


# -- duplicates ------------------------------------------------------------------------
def first_duplicate(users: np.ndarray, items: np.ndarray) -> tuple[int, int] | None:
    """(row, earlier row) of the first row whose (user, item) pair occurred before.

    ``users``/``items`` are contiguous indices (as in `Ratings`), so the pair packs into
    one int64 key; a stable sort keeps equal keys in row order.
    """
    key = _pair_key(users, items)
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    repeat = sorted_key[1:] == sorted_key[:-1]
    if not repeat.any():
        return None
    row = int(order[1:][repeat].min())
    earlier = int(order[np.searchsorted(sorted_key, key[row])])
    return row, earlier


def _pair_key(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    num_items = int(items.max()) + 1 if len(items) else 1
    return users.astype(np.int64) * num_items + items.astype(np.int64)


def _merge_duplicates(ratings: Ratings, policy: Duplicates) -> Ratings:
    """Keeps one row per pair, at the position of its last occurrence in the file.

    'last' keeps that row as it is; 'mean' gives it the mean of the pair's ratings.
    Every user and item still occurs, so the id maps do not change.
    """
    key = _pair_key(ratings.users, ratings.items)
    _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    last_row = np.zeros(len(counts), dtype=np.int64)
    last_row[inverse] = np.arange(len(key))  # later rows overwrite earlier ones
    keep = np.sort(last_row)
    merged = ratings.take(keep)
    if policy == "mean":
        means = np.bincount(inverse, weights=ratings.ratings.astype(np.float64)) / counts
        merged = replace(merged, ratings=means[inverse[keep]].astype(np.float32))
    return merged


# -- the public loader -----------------------------------------------------------------
def load_ratings(
    path: str | Path,
    *,
    sep: str | None = None,
    user_col: Column = "userId",
    item_col: Column = "movieId",
    rating_col: Column = "rating",
    timestamp_col: Column | None = "timestamp",
    header: bool = True,
    rating_scale: tuple[float, float] | None = None,
    duplicates: Duplicates = "error",
    name: str | None = None,
) -> Ratings:
    """Loads explicit ratings from a delimited text file.

    Args:
      path: the file.
      sep: ``','``, ``'\\t'``, ``'::'``, ``WHITESPACE`` (``r'\\s+'``) or another single
        character; None detects comma, tab, ``::`` or whitespace from the first line.
      user_col, item_col, rating_col, timestamp_col: header names, or 0-based positions.
        Without a header the default names mean positions 0, 1, 2, 3. timestamp_col=None
        means no timestamps (zeros); so does the default name when the file lacks it.
      header: whether the first non-blank line names the columns.
      rating_scale: (lowest, highest) allowed rating; None infers (min, max) of the data.
      duplicates: a repeated (user, item) pair is an error ('error'), or keeps the last
        row ('last') or the mean rating ('mean'), with a warning.
      name: `Ratings.name`; defaults to the path.

    Raises:
      DataError: naming the file and the first bad line; see the module docstring.
    """
    _check_duplicates_policy(duplicates)
    columns = read_columns(
        path,
        sep=sep,
        user_col=user_col,
        item_col=item_col,
        rating_col=rating_col,
        timestamp_col=timestamp_col,
        header=header,
        rating_scale=rating_scale,
    )
    return _to_ratings(columns, path, rating_scale, duplicates, name)


def parse_ratings(
    data: bytes,
    path: str | Path = "<memory>",
    *,
    rating_scale: tuple[float, float] | None = None,
    duplicates: Duplicates = "error",
    name: str | None = None,
    **options,
) -> Ratings:
    """`load_ratings` on a file's content already in memory; ``path`` names it in messages.

    ``options`` are `load_ratings`' column options (``sep``, ``header``, ``*_col``).
    """
    _check_duplicates_policy(duplicates)
    columns = read_columns(path, rating_scale=rating_scale, data=bytes(data), **options)
    return _to_ratings(columns, path, rating_scale, duplicates, name)


def _check_duplicates_policy(duplicates) -> None:
    if duplicates not in ("error", "last", "mean"):
        raise ValueError(f"duplicates must be 'error', 'last' or 'mean', got {duplicates!r}")


def _to_ratings(
    columns: RatingColumns,
    path: str | Path,
    rating_scale: tuple[float, float] | None,
    duplicates: Duplicates,
    name: str | None,
) -> Ratings:
    """The `Ratings` of parsed columns, with repeated pairs refused or merged."""
    if rating_scale is None:
        rating_scale = (float(columns.ratings.min()), float(columns.ratings.max()))
    ratings = Ratings.from_raw(
        columns.users,
        columns.items,
        columns.ratings,
        columns.timestamps,
        name=str(path) if name is None else name,
        rating_scale=rating_scale,
    )
    duplicate = first_duplicate(ratings.users, ratings.items)
    if duplicate is None:
        return ratings
    row, earlier = duplicate
    if duplicates == "error":
        earlier_line, _ = columns.source.line_of(earlier)
        repeat = f"user {columns.users[row]} already rated item {columns.items[row]} on line {earlier_line}"
        raise columns.source.error_at_row(
            row,
            f"{repeat} (pass duplicates='last' or 'mean' to merge repeats)",
            f"{repeat} (pass --duplicates last or mean to merge repeats)",
        )
    merged = _merge_duplicates(ratings, duplicates)
    warnings.warn(
        f"{path}: {len(ratings) - len(merged)} repeated (user, item) rows merged "
        f"(duplicates={duplicates!r}); the first repeat is line {columns.source.line_of(row)[0]}",
        stacklevel=3,
    )
    return merged
