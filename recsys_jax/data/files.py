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
inside pandas. Raw ids are parsed as int32, and as int64 when one does not fit: raw ids
beyond int32 load (the indices stay contiguous int32), ids beyond int64 are refused with
the line that holds them.

Speed: the clean case is one parsing pass with the dtypes fixed before parsing (int32
ids, float64 ratings, cast to float32 once checked, int64 timestamps). With
``engine="auto"`` (the default) a comma- or tab-separated file of 1 MiB or more whose
header, if any, is its first line is read by pyarrow's multithreaded CSV reader when
pyarrow is installed (a dependency of the package); every other file, and any file pyarrow
refuses, by pandas' C parser (``::`` is
translated to a tab while streaming so that it can read it). Both give identical arrays.
Only when the C parser fails does a slower diagnostic pass run, to find the first bad
line. Ids are mapped to contiguous indices without sorting the rows (a table over the id
range, or hashing when the ids are sparse), and a file already in (user, item) order is
checked for repeated pairs in one pass.

Cache: `load_ratings` keeps the arrays it built from a large file in a binary cache (see
`recsys_jax.data.cache`), keyed by the file's absolute path, size, modification time and
the options, so that loading it again skips parsing; ``cache=False`` or
``RECSYS_JAX_PARSE_CACHE=0`` turns that off.

`read_columns` and `first_duplicate` are the building blocks that the MovieLens loaders
share with `load_ratings`. `parse_ratings` is `load_ratings` on bytes already in memory
(the fuzz tests use it to skip the disk).
"""
from __future__ import annotations

import csv
import io
import mmap
import os
import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Literal, NamedTuple

import numpy as np
import pandas as pd

import recsys_jax.data.cache as _cache
from recsys_jax.data.ratings import DataError, Ratings

Column = str | int
Duplicates = Literal["error", "last", "mean"]
Engine = Literal["auto", "c", "pyarrow"]
ENGINES = ("auto", "c", "pyarrow")

WHITESPACE = r"\s+"  # the `sep` value meaning "one or more spaces or tabs"

_DEFAULT_NAMES = ("userId", "movieId", "rating", "timestamp")
_ROLES = ("user id", "item id", "rating", "timestamp")
_SPACE = " \t\v\f\r\n"  # what pandas' C parser skips around a number (not all of \s)
_INTEGER = re.compile(r"[+-]?[0-9]+")  # ASCII digits: pandas reads no others
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_PANDAS_LINE = re.compile(r"line (\d+)")
_INT64_DIGITS = 19  # 2**63 - 1 has 19 digits: a shorter integer string always fits

MAX_SHOWN = 120  # characters of an offending line quoted in an error message
# engine="auto" reads files from this size with pyarrow (below it the C parser is as quick
# and importing pyarrow would cost more than it saves); its threads from the second size.
ARROW_MIN_BYTES = 1 << 20
ARROW_THREADS_BYTES = 8 << 20


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

    users: np.ndarray  # int32 raw ids, int64 when one does not fit in int32
    items: np.ndarray  # int32 raw ids, int64 when one does not fit in int32
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
    engine: Engine = "auto",
) -> RatingColumns:
    """Parses and validates the four rating columns; see the module docstring.

    ``data``, when given, is the file's content: nothing is read from disk and ``path``
    only names it in messages. Duplicate (user, item) pairs are not looked for here
    (see `first_duplicate`). ``engine``: ``"auto"`` (pyarrow for a file of at least
    `ARROW_MIN_BYTES` that it can read, when it is installed), ``"c"`` (pandas' C parser
    only) or ``"pyarrow"`` (pyarrow for any file it can read; refused without pyarrow).
    The results are identical.
    """
    _check_engine(engine)
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
    size = len(data) if data is not None else _size(path)
    arrow = engine == "pyarrow" or (engine == "auto" and size >= ARROW_MIN_BYTES)
    columns = None
    if arrow:
        columns = _read_arrow(source, sep, len(fields), positions, threads=size >= ARROW_THREADS_BYTES)
    if columns is None:
        columns = _read_c(source, sep, len(fields), positions)
    if columns is None:  # the fast path failed: find the first bad line and say so
        raise _diagnose(source, sep, len(fields), positions)
    users, items, ratings, timestamps = columns
    if len(users) == 0:
        raise DataError(f"{path}: the file has a header but no data rows")

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


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


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


_ID_KINDS = (("int32", "int32", "float64", "int64"), ("int64", "int64", "float64", "int64"))

Columns4 = tuple[np.ndarray, np.ndarray, np.ndarray, "np.ndarray | None"]


def _read_c(source: Source, sep: str, ncols: int, positions: list[int | None]) -> Columns4 | None:
    """The C parser's fast path, ids as int32 and, if one does not fit, as int64; None
    when some value does not parse (then `_diagnose` runs)."""
    for kinds in _ID_KINDS:
        frame = _read_typed(source, sep, ncols, positions, kinds)
        if frame is not None:
            break
    else:
        return None
    if len(frame) == 0:
        return tuple(np.zeros(0, k) for k in kinds[:3]) + (  # type: ignore[return-value]
            None if positions[3] is None else np.zeros(0, np.int64),)
    out = [frame[p].to_numpy(k) if p is not None else None for p, k in zip(positions, kinds)]
    return out[0], out[1], out[2], out[3]


def _pyarrow_csv():
    """pyarrow's CSV module, or None when pyarrow is not installed."""
    try:
        import pyarrow.csv
    except ImportError:
        return None
    return pyarrow.csv


def _data_start(source: Source) -> int | None:
    """Byte offset of the first data row, when pyarrow can start there and agree with pandas
    on the row count: the ``skip`` lines above it end in LF or CRLF. None otherwise."""
    if source.data is not None:
        head = source.data[: 1 << 16]
    else:
        with open(source.path, "rb") as fh:
            head = fh.read(1 << 16)
    pos = 3 if head.startswith(b"\xef\xbb\xbf") else 0
    for _ in range(source.skip):
        end = head.find(b"\n", pos)
        if end < 0 or b"\r" in head[pos:end - 1]:  # a lone CR also ends a line for pandas
            return None
        pos = end + 1
    if head.startswith(b"\xef\xbb\xbf", pos):  # pyarrow would drop it as its stream's BOM
        return None
    return pos


_ARROW_MARKS = (b"x", b"X", b'"')


def _has_marks(source: Source, start: int) -> bool:
    """Whether ``x``, ``X`` or a double quote occurs after ``start``. pyarrow reads ``0x10``
    as 16 and takes a quote left open at the end of the file, where pandas refuses both:
    such a file is left to pandas. (A memchr pass per mark over the mapped file, no copy.)"""
    if source.data is not None:
        return any(source.data.find(mark, start) >= 0 for mark in _ARROW_MARKS)
    with open(source.path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size <= start:
            return False
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return any(view.find(mark, start) >= 0 for mark in _ARROW_MARKS)


def _read_arrow(
    source: Source, sep: str, ncols: int, positions: list[int | None], threads: bool = True
) -> Columns4 | None:
    """pyarrow's multithreaded reader for a plain comma- or tab-separated file; None when
    pyarrow is missing, the layout is not one it reads like pandas, or a value does not
    parse (then the C parser reads the file and, if it also fails, `_diagnose` runs).

    Stricter than the C parser, never looser: no null values, no quotes and no
    hexadecimal (no ``"`` or ``x`` after the header), ids as int32 only, every row exactly
    ``ncols`` fields (tests/test_load_cache.py compares the two on generated files).
    """
    csv_module = _pyarrow_csv()
    if csv_module is None or sep not in (",", "\t"):
        return None
    import pyarrow as pa

    start = _data_start(source)
    if start is None or _has_marks(source, start):
        return None
    names = [f"c{i}" for i in range(ncols)]
    kinds = (pa.int32(), pa.int32(), pa.float64(), pa.int64())
    types = {names[p]: k for p, k in zip(positions, kinds) if p is not None}
    try:
        if source.data is not None:
            stream = pa.BufferReader(source.data[start:])
        else:
            stream = pa.OSFile(str(source.path))
            stream.seek(start)
        with stream:
            table = csv_module.read_csv(
                stream,
                read_options=csv_module.ReadOptions(column_names=names, use_threads=threads),
                parse_options=csv_module.ParseOptions(
                    delimiter=sep, quote_char='"', double_quote=True, escape_char=False,
                    newlines_in_values=False, ignore_empty_lines=True),
                convert_options=csv_module.ConvertOptions(
                    column_types=types, include_columns=list(types), null_values=[],
                    strings_can_be_null=False, quoted_strings_can_be_null=False),
            )
    except (pa.ArrowException, OSError, ValueError):
        return None
    chunked = [table.column(names[p]) if p is not None else None for p in positions]
    del table
    out = []
    for i, column in enumerate(chunked):  # the chunks of each column are freed once joined
        chunked[i] = None
        out.append(None if column is None else column.to_numpy())
        del column
    pa.default_memory_pool().release_unused()  # give the freed chunks back to the system
    return out[0], out[1], out[2], out[3]


def _read_typed(
    source: Source, sep: str, ncols: int, positions: list[int | None],
    kinds: tuple[str, ...] = _ID_KINDS[1],
) -> pd.DataFrame | None:
    """One typed pass of the C parser; None when some value does not parse."""
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
    one int64 key; a stable sort keeps equal keys in row order. Keys already strictly
    increasing (a file in (user, item) order, as MovieLens ships them) need no sort.
    """
    key = _pair_key(users, items)
    if len(key) < 2 or bool(np.all(key[1:] > key[:-1])):
        return None
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
    key = users.astype(np.int64)  # in place from here: one int64[N] however large N is
    key *= num_items
    key += items
    return key


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
    engine: Engine = "auto",
    cache: bool | None = None,
    cache_dir: str | Path | None = None,
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
      engine: ``"auto"``, ``"c"`` or ``"pyarrow"``; see `read_columns` (same result).
      cache: use the binary cache of parsed files (`recsys_jax.data.cache`): True, False,
        or None for files of at least ``cache.MIN_BYTES`` unless
        ``$RECSYS_JAX_PARSE_CACHE`` is ``0``/``off``.
      cache_dir: the cache's root (entries go to its ``parsed/``); default
        ``$RECSYS_JAX_CACHE``, else ``~/.cache/recsys_jax``.

    Raises:
      DataError: naming the file and the first bad line; see the module docstring.
    """
    _check_duplicates_policy(duplicates)
    _check_engine(engine)
    options = dict(sep=sep, user_col=user_col, item_col=item_col, rating_col=rating_col,
                   timestamp_col=timestamp_col, header=header, rating_scale=rating_scale)
    name = str(path) if name is None else name
    entry = _cache_entry(Path(path), {**options, "duplicates": duplicates}, cache, cache_dir)
    if entry is not None:
        hit = _cache.read(*entry)
        if hit is not None and _usable(*hit):
            return _from_cache(*hit, name)
    columns = read_columns(path, **options, engine=engine)
    ratings, warning = _to_ratings(columns, path, rating_scale, duplicates, name)
    if warning is not None:
        warnings.warn(warning, stacklevel=2)
    if entry is not None and _cache.stamp(Path(path)) == entry[1]:  # unchanged while parsed
        _cache.write(*entry, *_to_cache(ratings, columns.timestamps is not None, warning))
    return ratings


# -- the parse cache -------------------------------------------------------------------
_CACHED = ("users", "items", "ratings", "timestamps", "user_ids", "item_ids")


def _cache_entry(path: Path, options: dict, cache: bool | None, cache_dir) -> tuple[Path, dict, dict] | None:
    """(entry, stamp, options) when this load goes through the cache, else None."""
    try:
        stamp = _cache.stamp(path)
    except OSError:
        return None  # no such file: read_columns says so
    if not path.is_file() or not _cache.enabled(cache, stamp["size"]):
        return None
    key = {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
    return _cache.entry_path(path, key, cache_dir), stamp, key


def _to_cache(ratings: Ratings, has_timestamps: bool, warning: str | None) -> tuple[dict, dict]:
    arrays = {k: getattr(ratings, k) for k in _CACHED if k != "timestamps" or has_timestamps}
    meta = {"rating_scale": list(ratings.rating_scale), "warning": warning}
    return arrays, meta


_DTYPES = {"users": np.int32, "items": np.int32, "ratings": np.float32, "timestamps": np.int64,
           "user_ids": np.int64, "item_ids": np.int64}


def _usable(arrays: dict[str, np.ndarray], meta: dict) -> bool:
    """Whether a checked entry also holds what `_from_cache` reads (an entry that a future
    version wrote under the same format number would not)."""
    if set(arrays) - set(_DTYPES) or set(_DTYPES) - set(arrays) - {"timestamps"}:
        return False
    if any(a.dtype != _DTYPES[k] or a.ndim != 1 for k, a in arrays.items()):
        return False
    rows = {len(a) for k, a in arrays.items() if k not in ("user_ids", "item_ids")}
    return len(rows) == 1 and isinstance(meta, dict) and {"rating_scale", "warning"} <= set(meta)


def _from_cache(arrays: dict[str, np.ndarray], meta: dict, name: str) -> Ratings:
    n = len(arrays["ratings"])
    timestamps = arrays.get("timestamps")
    if meta["warning"] is not None:
        warnings.warn(meta["warning"], stacklevel=3)
    return Ratings(
        users=arrays["users"], items=arrays["items"], ratings=arrays["ratings"],
        timestamps=np.zeros(n, np.int64) if timestamps is None else timestamps,
        user_ids=arrays["user_ids"], item_ids=arrays["item_ids"], name=name,
        rating_scale=tuple(meta["rating_scale"]),
    )


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
    ratings, warning = _to_ratings(columns, path, rating_scale, duplicates,
                                   str(path) if name is None else name)
    if warning is not None:
        warnings.warn(warning, stacklevel=2)
    return ratings


def _check_duplicates_policy(duplicates) -> None:
    if duplicates not in ("error", "last", "mean"):
        raise ValueError(f"duplicates must be 'error', 'last' or 'mean', got {duplicates!r}")


def _check_engine(engine) -> None:
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "pyarrow" and _pyarrow_csv() is None:
        raise ValueError("engine='pyarrow' needs pyarrow (pip install pyarrow)")


def factorize(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(sorted unique ids as int64, int32 index of each row)``, as ``np.unique(raw,
    return_inverse=True)`` but without sorting the rows: a presence table over the id range
    when it is at most a few times the row count, else pandas' hash table, whose few
    uniques are then sorted."""
    raw = np.asarray(raw)
    if len(raw) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int32)
    lo, hi = int(raw.min()), int(raw.max())
    limit = min(4 * len(raw) + (1 << 20), 2**31 - 1)
    base = 0 if 0 <= lo and hi < limit else lo  # ids from 0 or 1 index the table directly
    if hi - base < limit:
        present = np.zeros(hi - base + 1, dtype=bool)
        offset = raw - raw.dtype.type(base) if base != 0 else raw  # 0 <= raw - base <= hi - base
        present[offset] = True
        ids = np.flatnonzero(present).astype(np.int64) + base
        index = np.cumsum(present, dtype=np.int32) - 1
        return ids, index[offset]
    codes, uniques = pd.factorize(raw, sort=False)
    order = np.argsort(uniques)
    rank = np.empty(len(uniques), dtype=np.int32)
    rank[order] = np.arange(len(uniques), dtype=np.int32)
    return np.asarray(uniques, dtype=np.int64)[order], rank[codes]


def _to_ratings(
    columns: RatingColumns,
    path: str | Path,
    rating_scale: tuple[float, float] | None,
    duplicates: Duplicates,
    name: str,
) -> tuple[Ratings, str | None]:
    """The `Ratings` of parsed columns, with repeated pairs refused or merged, and the
    warning to give when some were merged (None when none were)."""
    if rating_scale is None:
        rating_scale = (float(columns.ratings.min()), float(columns.ratings.max()))
    user_ids, users = factorize(columns.users)
    item_ids, items = factorize(columns.items)
    n = len(users)
    ratings = Ratings(
        users=users,
        items=items,
        ratings=columns.ratings.astype(np.float32),
        timestamps=np.zeros(n, np.int64) if columns.timestamps is None else columns.timestamps,
        user_ids=user_ids,
        item_ids=item_ids,
        name=name,
        rating_scale=(float(rating_scale[0]), float(rating_scale[1])),
    )
    duplicate = first_duplicate(ratings.users, ratings.items)
    if duplicate is None:
        return ratings, None
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
    warning = (
        f"{path}: {len(ratings) - len(merged)} repeated (user, item) rows merged "
        f"(duplicates={duplicates!r}); the first repeat is line {columns.source.line_of(row)[0]}"
    )
    return merged, warning
