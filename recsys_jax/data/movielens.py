"""The MovieLens data sets: registry, local lookup, verified download, safe extraction, parsing.

Contract:

* `DATASETS` lists the official GroupLens archives by name (``ml-latest-small``,
  ``ml-100k``, ``ml-1m``, ``ml-10m``, ``ml-20m``, ``ml-25m``, ``ml-32m``) with their
  URL, published sha256 (None where none is known), the folder the zip unpacks to,
  the file format and the rating scale.
* `ensure_local` (alias `fetch`) returns the extracted folder, looking in order in
  ``<data_dir>/<folder>``, ``<$RECSYS_JAX_DATA>/<folder>``, ``<cache>/<folder>``
  (cache: the ``cache_dir`` argument, else ``$RECSYS_JAX_CACHE``, else
  ``~/.cache/recsys_jax``); ``data_dir`` and ``$RECSYS_JAX_DATA`` may also be the
  extracted folder itself. Otherwise it downloads ``<base_url>/<name>.zip`` (base URL:
  the argument, else ``$RECSYS_JAX_BASE_URL``, else GroupLens; ``file://`` mirrors
  work too) into the cache, checks its size and sha256, and extracts it.
* Extraction refuses members that would land outside the target (``..``, absolute
  paths, drive letters), symbolic links and special files, and archives that unpack
  to more than the data set's bound. It unpacks into a temporary folder inside the
  cache and renames the finished folder into place, so on any failure the cache is
  left exactly as it was: no partial folder, no temporary file, no new directory.
* `load_movielens` parses the folder into a `Ratings` with the movies table
  (indexed by raw movie id, columns ``title`` and ``genres``) and the data set's
  rating scale (the ratings file goes through `load_ratings`' binary cache of parsed
  files, in ``<cache>/parsed/``); `load_ml100k_fold` reads the canonical ml-100k folds
  ``u1``..``u5`` with id maps shared between train and test.

Every failure is a `DataError` that names the data set, URL, folder or file (and line)
concerned; offline with no local copy it lists every folder searched and where to
put the files.
"""
from __future__ import annotations

import csv
import hashlib
import http.client
import io
import os
import re
import shutil
import stat
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Callable, Literal

import numpy as np
import pandas as pd

from recsys_jax.data.files import Duplicates, Source, first_duplicate, load_ratings, read_columns, shorten, to_int64
from recsys_jax.data.ratings import DataError, Ratings

Format = Literal["csv", "dat", "100k"]
FORMATS: tuple[str, ...] = ("csv", "dat", "100k")

DEFAULT_BASE_URL = "https://files.grouplens.org/datasets/movielens"
DEFAULT_TIMEOUT = 60.0  # seconds without data before a download is abandoned
_MB = 1 << 20
_GLOBAL_MAX_BYTES = 8 << 30  # no archive, custom ones included, may unpack past this


@dataclass(frozen=True)
class Dataset:
    """One MovieLens archive.

    Attributes:
      name: registry key and archive stem, e.g. ``"ml-1m"``.
      url: the official download URL.
      sha256: published checksum of the archive, or None when none is known.
      folder: the folder the archive unpacks to (``ml-10m`` unpacks to ``ml-10M100K``).
      format: ``"csv"``, ``"dat"`` or ``"100k"``; picks the parser.
      ratings_file, movies_file: file names inside ``folder``.
      rating_scale: (lowest, highest) rating.
      max_bytes: bound on both the download and the unpacked size, a generous multiple
        of the real size, so that a hostile or broken mirror cannot fill the disk.
    """

    name: str
    url: str
    sha256: str | None
    folder: str
    format: Format
    ratings_file: str
    movies_file: str
    rating_scale: tuple[float, float]
    max_bytes: int

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"{self.name}: unknown format {self.format!r}; use one of {FORMATS}")
        if self.sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError(f"{self.name}: sha256 must be 64 lowercase hex digits")


def _official(
    name: str,
    sha256: str | None,
    folder: str,
    format: Format,
    scale: tuple[float, float],
    max_mb: int,
) -> Dataset:
    ratings_file, movies_file = {
        "csv": ("ratings.csv", "movies.csv"),
        "dat": ("ratings.dat", "movies.dat"),
        "100k": ("u.data", "u.item"),
    }[format]
    return Dataset(
        name=name,
        url=f"{DEFAULT_BASE_URL}/{name}.zip",
        sha256=sha256,
        folder=folder,
        format=format,
        ratings_file=ratings_file,
        movies_file=movies_file,
        rating_scale=scale,
        max_bytes=max_mb * _MB,
    )


HALF_STARS = (0.5, 5.0)
WHOLE_STARS = (1.0, 5.0)

# Unpacked sizes, for the bounds: latest-small 3.3 MB, 100k 16 MB, 1m 24 MB, 10m 0.4 GB,
# 20m 0.9 GB, 25m 1.2 GB, 32m 0.9 GB.
DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        _official(
            "ml-latest-small",
            "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436",
            "ml-latest-small", "csv", HALF_STARS, 50,
        ),
        _official(
            "ml-100k",
            "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
            "ml-100k", "100k", WHOLE_STARS, 100,
        ),
        _official(
            "ml-1m",
            "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
            "ml-1m", "dat", WHOLE_STARS, 200,
        ),
        _official("ml-10m", None, "ml-10M100K", "dat", HALF_STARS, 1500),
        _official(
            "ml-20m",
            "96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3",
            "ml-20m", "csv", HALF_STARS, 3000,
        ),
        _official(
            "ml-25m",
            "8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa",
            "ml-25m", "csv", HALF_STARS, 4000,
        ),
        _official("ml-32m", None, "ml-32m", "csv", HALF_STARS, 4000),
    )
}


# -- public entry points ---------------------------------------------------------------
def load_movielens(
    name: str | Dataset,
    data_dir: str | Path | None = None,
    download: bool = True,
    base_url: str | None = None,
    cache_dir: str | Path | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    duplicates: Duplicates = "error",
    report_fn: Callable[[str], None] | None = None,
    cache: bool | None = None,
) -> Ratings:
    """Loads a MovieLens data set (a `DATASETS` name, or a custom `Dataset`).

    Finds or downloads the extracted folder (see `ensure_local`), then parses it.
    The result has ``name`` = the data set name, the movies table and its rating scale.
    ``duplicates`` is `load_ratings`' policy for a repeated (user, item) pair (the
    official archives have none). ``report_fn``: see `ensure_local`. ``cache``:
    `load_ratings`' switch for the binary cache of the parsed ratings, kept under
    ``<cache>/parsed/`` (None: on for files of 16 MiB or more, ml-1m and up).
    """
    dataset = get_dataset(name)
    folder = ensure_local(
        dataset, data_dir, download=download, base_url=base_url, cache_dir=cache_dir,
        timeout=timeout, report_fn=report_fn,
    )
    return _PARSERS[dataset.format](folder, dataset, duplicates, cache=cache, cache_dir=cache_dir)


def ensure_local(
    name: str | Dataset,
    data_dir: str | Path | None = None,
    *,
    download: bool = True,
    base_url: str | None = None,
    cache_dir: str | Path | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    report_fn: Callable[[str], None] | None = None,
) -> Path:
    """The extracted folder of a data set, downloading it into the cache if needed.

    ``report_fn``, when given, is called with one line of text at each step of a
    download: the URL fetched, the bytes received, the sha256 check, where it was
    extracted. Nothing is reported when a local copy is found; None keeps it quiet.
    """
    dataset = get_dataset(name)
    cache = cache_path(cache_dir)
    searched = _candidate_folders(dataset, data_dir, cache)
    for folder in searched:
        if (folder / dataset.ratings_file).is_file():
            return folder
    url = archive_url(dataset, base_url)
    if not download:
        raise _not_found(dataset, url, searched, cache, "downloading is turned off (download=False)",
                         "downloading is turned off (--no-download)")
    return _download_and_extract(dataset, url, cache, timeout, searched, report_fn or _quiet)


def _quiet(line: str) -> None:
    pass


fetch = ensure_local  # the name scripts tend to look for


def load_ml100k_fold(
    k: int,
    data_dir: str | Path | None = None,
    *,
    download: bool = True,
    base_url: str | None = None,
    cache_dir: str | Path | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    report_fn: Callable[[str], None] | None = None,
) -> tuple[Ratings, Ratings]:
    """The canonical ml-100k fold ``k`` (1..5): (train from ``u{k}.base``, test from ``u{k}.test``).

    Both share one pair of id maps, built over the union of the two files. The five
    folds partition ``u.data``, so the maps are those of the whole data set and an index
    means the same user or item in every fold.
    """
    if k not in range(1, 6):
        raise ValueError(f"ml-100k folds are numbered 1..5, got {k!r}")
    dataset = DATASETS["ml-100k"]
    folder = ensure_local(
        dataset, data_dir, download=download, base_url=base_url, cache_dir=cache_dir,
        timeout=timeout, report_fn=report_fn,
    )
    parts = [
        read_columns(
            folder / f"u{k}.{part}", sep="\t", header=False,
            user_col=0, item_col=1, rating_col=2, timestamp_col=3,
            rating_scale=dataset.rating_scale,
        )
        for part in ("base", "test")
    ]
    both = Ratings.from_raw(
        np.concatenate([p.users for p in parts]),
        np.concatenate([p.items for p in parts]),
        np.concatenate([p.ratings for p in parts]),
        np.concatenate([p.timestamps for p in parts]),
        movies=_optional(folder / dataset.movies_file, _read_u_item),
        name=dataset.name,
        rating_scale=dataset.rating_scale,
    )
    both = replace(both, user_info=_optional(folder / "u.user", _read_u_user, quiet=True))
    n_train = len(parts[0].users)
    duplicate = first_duplicate(both.users, both.items)
    if duplicate is not None:  # a repeat inside a file, or a test pair leaking from train
        row, earlier = duplicate

        def where(r: int) -> tuple[Source, int]:
            """The file and the row in it of row ``r`` of the concatenation."""
            return (parts[0].source, r) if r < n_train else (parts[1].source, r - n_train)

        source, local = where(row)
        earlier_source, earlier_local = where(earlier)
        raise source.error_at_row(
            local,
            f"the (user, item) pair also occurs in {earlier_source.path.name}, "
            f"line {earlier_source.line_of(earlier_local)[0]}",
        )
    train = replace(both.take(np.arange(n_train)), name=f"{dataset.name}/u{k}.base")
    test = replace(both.take(np.arange(n_train, len(both))), name=f"{dataset.name}/u{k}.test")
    return train, test


def get_dataset(name: str | Dataset) -> Dataset:
    """The registry entry for ``name``; a `Dataset` is returned as it is."""
    if isinstance(name, Dataset):
        return name
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        raise DataError(
            f"unknown MovieLens data set {name!r}; known: {', '.join(DATASETS)}"
        ) from None


def cache_path(cache_dir: str | Path | None = None) -> Path:
    """The cache: ``cache_dir``, else ``$RECSYS_JAX_CACHE``, else ``~/.cache/recsys_jax``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("RECSYS_JAX_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "recsys_jax"


def archive_url(dataset: Dataset, base_url: str | None = None) -> str:
    """The URL to download from: the official one unless a mirror is configured."""
    base = base_url if base_url is not None else os.environ.get("RECSYS_JAX_BASE_URL")
    if not base:
        return dataset.url
    return f"{base.rstrip('/')}/{dataset.url.rsplit('/', 1)[-1]}"


# -- local lookup ----------------------------------------------------------------------
def _candidate_folders(dataset: Dataset, data_dir: str | Path | None, cache: Path) -> list[Path]:
    folders: list[Path] = []
    for root in (data_dir, os.environ.get("RECSYS_JAX_DATA") or None):
        if root is None:
            continue
        root = Path(root).expanduser()
        folders.append(root / dataset.folder)
        # The root may be the extracted folder itself; its name must say so, so that a
        # folder of one variant (ml-25m/ratings.csv) is never read as another (ml-20m).
        if root.name in (dataset.folder, dataset.name):
            folders.append(root)
    folders.append(cache / dataset.folder)
    return list(dict.fromkeys(folders))  # the same folder twice says nothing new


def _not_found(
    dataset: Dataset, url: str, searched: list[Path], cache: Path, reason: str, cli_reason: str | None = None
) -> DataError:
    """Where we looked and how to fix it, worded for Python callers and for the CLI."""
    looked = "\n".join(f"  {folder}" for folder in searched)
    cache_folder = cache / dataset.folder

    def message(reason: str, data_dir: str) -> str:
        return (
            f"MovieLens {dataset.name} is not available: {reason}.\n"
            f"URL: {url}\n"
            f"Looked for {dataset.ratings_file} in these folders:\n{looked}\n"
            f"To use a copy obtained elsewhere, unzip {url.rsplit('/', 1)[-1]} into "
            f"{cache_folder.parent} (giving {cache_folder / dataset.ratings_file}), or pass "
            f"{data_dir} / set RECSYS_JAX_DATA to the directory that holds {dataset.folder}/; "
            f"or set RECSYS_JAX_BASE_URL to a reachable mirror."
        )

    return DataError(message(reason, "data_dir="), cli=message(cli_reason or reason, "--data-dir DIR"))


# -- download --------------------------------------------------------------------------
def _download_and_extract(
    dataset: Dataset, url: str, cache: Path, timeout: float, searched: list[Path],
    report_fn: Callable[[str], None],
) -> Path:
    """Downloads, verifies and extracts into ``cache``; all or nothing."""
    limit = min(dataset.max_bytes, _GLOBAL_MAX_BYTES)
    target = cache / dataset.folder
    created: list[Path] = []
    temporary: list[Path] = []
    done = False
    try:
        _make_dirs(cache, created)
        fd, name = tempfile.mkstemp(prefix=f".{dataset.name}-", suffix=".zip.part", dir=cache)
        temporary.append(Path(name))
        report_fn(f"fetching {url}")
        with os.fdopen(fd, "wb") as out:
            digest, size = _download(dataset, url, out, timeout, limit, searched, cache)
        report_fn(f"received {size:,} bytes ({size / _MB:.1f} MiB)")
        _verify(dataset, url, digest)
        if dataset.sha256 is not None:
            report_fn(f"sha256 {digest} matches the published checksum")
        else:
            report_fn(f"sha256 {digest} (no published checksum to compare it with)")
        staging = Path(tempfile.mkdtemp(prefix=f".{dataset.name}-", suffix=".unpacking", dir=cache))
        temporary.append(staging)
        _safe_extract(Path(name), staging, limit, url)
        unpacked = staging / dataset.folder
        if not (unpacked / dataset.ratings_file).is_file():
            raise DataError(f"{url}: the archive has no {dataset.folder}/{dataset.ratings_file}")
        try:
            os.replace(unpacked, target)  # atomic: the folder appears complete or not at all
        except OSError as e:
            if not (target / dataset.ratings_file).is_file():
                raise DataError(
                    f"cannot move the extracted {dataset.folder} into {cache}: {e}; "
                    f"remove {target} if it is an incomplete copy"
                ) from None
            # Another process finished the same download first; its copy is as good.
        report_fn(f"extracted into {target}")
        done = True
        return target
    except OSError as e:  # the cache itself: permissions, disk full
        raise DataError(f"cannot write the {dataset.name} download into {cache}: {e}") from None
    finally:
        for path in reversed(temporary):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        if not done:
            for folder in reversed(created):  # deepest first; only if still empty
                try:
                    folder.rmdir()
                except OSError:
                    break


def _make_dirs(path: Path, created: list[Path]) -> None:
    """mkdir -p, appending each directory it creates to ``created``, outermost first."""
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        folder.mkdir(exist_ok=True)
        created.append(folder)


# Errors that mean "the server could not be reached or the transfer broke off".
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError)


def _download(
    dataset: Dataset,
    url: str,
    out: BinaryIO,
    timeout: float,
    limit: int,
    searched: list[Path],
    cache: Path,
) -> str:
    """Streams ``url`` into ``out`` with a size cap; returns (sha256 hex digest, bytes)."""
    digest = hashlib.sha256()
    total = 0
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "recsys_jax"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            if length is not None and not length.isdigit():
                length = None  # a malformed header promises nothing
            if length is not None and int(length) > limit:
                raise DataError(
                    f"{url}: the server announces {int(length):,} bytes, more than the "
                    f"{limit:,} allowed for {dataset.name}"
                )
            while chunk := response.read(_MB):
                total += len(chunk)
                if total > limit:
                    raise DataError(
                        f"{url}: the download exceeds the {limit:,} bytes allowed for "
                        f"{dataset.name}"
                    )
                digest.update(chunk)
                out.write(chunk)
            # http.client returns a short body without complaint when the server closes
            # the connection early; the announced length tells.
            if length is not None and total != int(length):
                raise DataError(
                    f"{url}: the connection closed after {total:,} of the {int(length):,} bytes "
                    f"announced; the partial download was discarded"
                )
    except DataError:
        raise
    except _NETWORK_ERRORS as e:
        # HTTPError's str() carries the status code; URLError's reason says what failed.
        reason = e if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", None) or e
        raise _not_found(dataset, url, searched, cache, f"the download failed ({reason})") from None
    except ValueError as e:  # a malformed base URL
        raise DataError(f"cannot download {url!r}: {e}") from None
    return digest.hexdigest(), total


def _verify(dataset: Dataset, url: str, actual: str) -> None:
    if dataset.sha256 is None:
        warnings.warn(
            f"{dataset.name}: no published sha256 to check {url} against; "
            f"the downloaded archive has sha256 {actual}",
            stacklevel=2,
        )
    elif actual != dataset.sha256:
        raise DataError(
            f"{url}: sha256 mismatch: expected {dataset.sha256}, got {actual}; the download "
            f"is corrupt or not the official {dataset.name} archive, and was discarded"
        )


# -- extraction ------------------------------------------------------------------------
def _member_parts(name: str, url: str) -> list[str]:
    """The path components of a zip member, refusing any that could leave the target."""
    normal = name.replace("\\", "/")
    if normal.startswith("/") or re.match(r"[A-Za-z]:", normal):
        raise _refuse(url, f"member {name!r} has an absolute path")
    parts = [p for p in normal.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _refuse(url, f"member {name!r} points outside its folder")
    if not parts or any("\0" in p for p in parts):
        raise _refuse(url, f"member name {name!r} is invalid")
    return parts


def _refuse(url: str, why: str) -> DataError:
    return DataError(f"{url}: refusing the archive: {why}")


def _safe_extract(archive: Path, dest: Path, limit: int, url: str) -> None:
    """Checks every member, then unpacks them under ``dest``."""
    root = dest.resolve()
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            plan: list[tuple[zipfile.ZipInfo, Path]] = []
            total = 0
            for info in members:
                path = root.joinpath(*_member_parts(info.filename, url))
                if not path.resolve().is_relative_to(root):
                    raise _refuse(url, f"member {info.filename!r} escapes it")
                mode = info.external_attr >> 16  # Unix mode bits, 0 for archives made elsewhere
                if stat.S_ISLNK(mode):
                    raise _refuse(url, f"member {info.filename!r} is a symbolic link")
                if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: type unrecorded
                    raise _refuse(url, f"member {info.filename!r} is not a plain file")
                total += info.file_size
                if total > limit:
                    raise _refuse(url, f"it unpacks to more than {limit:,} bytes")
                plan.append((info, path))
            written = 0
            for info, path in plan:
                if info.is_dir():
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(path, "xb") as dst:  # "x": a repeated name fails
                    while chunk := src.read(_MB):
                        written += len(chunk)
                        if written > limit:  # the headers lied about the sizes
                            raise _refuse(url, f"it unpacks to more than {limit:,} bytes")
                        dst.write(chunk)
    except FileExistsError as e:
        raise _refuse(url, f"member {e.filename!r} occurs twice") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as e:
        raise DataError(f"{url}: not a readable zip archive: {e}") from None


# -- parsers: one per format -----------------------------------------------------------
_POSITIONS = {"header": False, "user_col": 0, "item_col": 1, "rating_col": 2, "timestamp_col": 3}

# How `load_ratings` reads each format's ratings file (the fuzz tests reuse these).
RATINGS_OPTIONS: dict[str, dict] = {
    "csv": {"sep": ","},  # userId,movieId,rating,timestamp with a header
    "dat": {"sep": "::", **_POSITIONS},  # UserID::MovieID::Rating::Timestamp
    "100k": {"sep": "\t", **_POSITIONS},  # user item rating timestamp
}


def parse_csv(folder: Path, dataset: Dataset, duplicates: Duplicates = "error", *,
              cache: bool | None = None, cache_dir: str | Path | None = None) -> Ratings:
    """``ratings.csv`` (userId,movieId,rating,timestamp) and ``movies.csv``."""
    ratings = load_ratings(
        folder / dataset.ratings_file, **RATINGS_OPTIONS["csv"],
        rating_scale=dataset.rating_scale, duplicates=duplicates, name=dataset.name,
        cache=cache, cache_dir=cache_dir,
    )
    return replace(ratings, movies=_optional(folder / dataset.movies_file, _read_movies_csv))


def parse_dat(folder: Path, dataset: Dataset, duplicates: Duplicates = "error", *,
              cache: bool | None = None, cache_dir: str | Path | None = None) -> Ratings:
    """``ratings.dat`` (UserID::MovieID::Rating::Timestamp) and ``movies.dat``."""
    ratings = load_ratings(
        folder / dataset.ratings_file, **RATINGS_OPTIONS["dat"],
        rating_scale=dataset.rating_scale, duplicates=duplicates, name=dataset.name,
        cache=cache, cache_dir=cache_dir,
    )
    return replace(ratings, movies=_optional(folder / dataset.movies_file, _read_movies_dat),
                   user_info=_optional(folder / "users.dat", _read_users_dat, quiet=True))


def parse_100k(folder: Path, dataset: Dataset, duplicates: Duplicates = "error", *,
               cache: bool | None = None, cache_dir: str | Path | None = None) -> Ratings:
    """``u.data`` (user item rating timestamp, tab-separated) and ``u.item``."""
    ratings = load_ratings(
        folder / dataset.ratings_file, **RATINGS_OPTIONS["100k"],
        rating_scale=dataset.rating_scale, duplicates=duplicates, name=dataset.name,
        cache=cache, cache_dir=cache_dir,
    )
    return replace(ratings, movies=_optional(folder / dataset.movies_file, _read_u_item),
                   user_info=_optional(folder / "u.user", _read_u_user, quiet=True))


_PARSERS: dict[str, Callable[..., Ratings]] = {  # (folder, dataset, duplicates, *, cache, cache_dir)
    "csv": parse_csv,
    "dat": parse_dat,
    "100k": parse_100k,
}

# -- movies tables ---------------------------------------------------------------------
GENRES_100K = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)


def _optional(path: Path, reader: Callable[[Path], pd.DataFrame], quiet: bool = False) -> pd.DataFrame | None:
    """Side tables are a convenience: without the file the ratings still load."""
    if not path.is_file():
        if not quiet:
            warnings.warn(f"{path} not found; the ratings have no movie titles", stacklevel=3)
        return None
    return reader(path)


def _users_frame(path: Path, rows: list[tuple[int, str, str, str, str]]) -> pd.DataFrame:
    """``rows`` are (line number, user id text, age, gender, occupation)."""
    ids = []
    for number, uid, *_ in rows:
        uid = uid.strip()
        if not _ASCII_DIGITS.fullmatch(uid):  # str.isdigit also takes '²', which int() refuses
            raise DataError(f"{path}, line {number}: user id {shorten(uid)!r} is not a whole number")
        value = to_int64(uid)  # not int(): it refuses more than 4,300 digits
        if value is None:
            raise DataError(f"{path}, line {number}: user id {shorten(uid)!r} is beyond the int64 range")
        ids.append(value)
    if len(set(ids)) != len(ids):
        raise DataError(f"{path}: a user id appears twice")
    return pd.DataFrame({"age": [r[2] for r in rows], "gender": [r[3] for r in rows],
                         "occupation": [r[4] for r in rows]},
                        index=pd.Index(np.array(ids, dtype=np.int64), name="userId"))


def _read_users(path: Path, data: bytes | None, sep: str, layout: str, row) -> pd.DataFrame:
    """A users file of five ``sep``-separated fields; ``row(fields)`` gives (id, age, gender,
    occupation), or None for a malformed line, reported with ``layout``."""
    rows = []
    for number, line in enumerate(_lines(_decode(path, ("utf-8", "latin-1"), data)), start=1):
        if not line.strip():
            continue
        fields = line.split(sep)
        parsed = row(fields) if len(fields) == 5 else None
        if parsed is None:
            raise DataError(f"{path}, line {number}: expected {layout} (line: {shorten(line)!r})")
        rows.append((number, *parsed))
    return _users_frame(path, rows)


def _read_u_user(path: Path, data: bytes | None = None) -> pd.DataFrame:
    """ml-100k u.user: ``user id | age | gender | occupation | zip code``; ages by decade."""
    def row(f):
        age = f[1].strip()
        if not _ASCII_DIGITS.fullmatch(age) or len(age) > 3:  # an age, not a million digits
            return None
        return (f[0], f"{int(age) // 10 * 10}s", f[2].strip(), f[3].strip())

    return _read_users(path, data, "|", "user id|age|gender|occupation|zip code", row)


def _read_users_dat(path: Path, data: bytes | None = None) -> pd.DataFrame:
    """ml-1m users.dat: ``UserID::Gender::Age::Occupation::Zip-code`` (age and occupation are codes)."""
    return _read_users(path, data, "::", "UserID::Gender::Age::Occupation::Zip-code",
                       lambda f: (f[0], f[2].strip(), f[1].strip(), f[3].strip()))


def _decode(path: Path, encodings: tuple[str, ...], data: bytes | None = None) -> str:
    """The text of ``path`` (or of ``data``, its content) in the first encoding that fits."""
    if data is None:
        data = path.read_bytes()
    for encoding in encodings:
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise DataError(f"{path}: the file is not {' or '.join(encodings)} text")


def _lines(text: str) -> list[str]:
    # Only LF, CRLF and CR end a line; str.splitlines would also split at U+0085 or
    # U+2028 inside a title and put every later line number off.
    return [line.rstrip("\r\n") for line in io.StringIO(text, newline=None)]


def _movies_frame(path: Path, rows: list[tuple[int, int, str, str]]) -> pd.DataFrame:
    """``rows`` are (line number, movie id, title, genres)."""
    seen: dict[int, int] = {}
    for number, movie, _, _ in rows:
        if movie in seen:
            raise DataError(
                f"{path}, line {number}: movie id {movie} already appeared on line {seen[movie]}"
            )
        seen[movie] = number
    return pd.DataFrame(
        {"title": [r[2] for r in rows], "genres": [r[3] for r in rows]},
        index=pd.Index(np.array([r[1] for r in rows], dtype=np.int64), name="movieId"),
    )


_ASCII_DIGITS = re.compile(r"[0-9]+")
_MOVIE_ID = re.compile(r"[ \t]*[+-]?[0-9]+[ \t]*")  # ASCII digits only, as in the ratings files


def _movie_id(path: Path, number: int, text: str, line: str) -> int:
    if not _MOVIE_ID.fullmatch(text):
        raise DataError(
            f"{path}, line {number}: movie id {shorten(text)!r} is not an integer "
            f"(line: {shorten(line)!r})"
        )
    movie = to_int64(text.strip(" \t"))  # not int(): it refuses more than 4,300 digits
    if movie is None:
        raise DataError(f"{path}, line {number}: movie id {shorten(text)!r} is beyond the int64 range")
    return movie


def _read_movies_csv(path: Path, data: bytes | None = None) -> pd.DataFrame:
    """movies.csv: ``movieId,title,genres`` with a header; titles may be quoted."""
    text = _decode(path, ("utf-8-sig", "latin-1"), data)
    lines = _lines(text)
    reader = csv.reader(io.StringIO(text, newline=""))  # the csv module handles CRLF
    rows = []
    try:
        header = next(reader, None)
        if header is None or [h.strip() for h in header] != ["movieId", "title", "genres"]:
            shown = None if header is None else shorten(",".join(header))
            raise DataError(f"{path}, line 1: expected the header movieId,title,genres, got {shown!r}")
        for fields in reader:
            number = reader.line_num
            if not fields:
                continue
            if len(fields) != 3:
                raise DataError(
                    f"{path}, line {number}: expected 3 fields, got {len(fields)} "
                    f"(line: {shorten(lines[number - 1])!r})"
                )
            movie = _movie_id(path, number, fields[0], lines[number - 1])
            rows.append((number, movie, fields[1], fields[2]))
    except csv.Error as e:  # an over-long field, a stray quote at the end of the file
        number = reader.line_num
        raise DataError(
            f"{path}, line {number}: cannot parse the line ({e}) "
            f"(line: {shorten(lines[number - 1] if 0 < number <= len(lines) else '')!r})"
        ) from None
    return _movies_frame(path, rows)


def _read_movies_dat(path: Path, data: bytes | None = None) -> pd.DataFrame:
    """movies.dat: ``MovieID::Title::Genres``; ml-1m's is Latin-1, ml-10m's UTF-8."""
    rows = []
    for number, line in enumerate(_lines(_decode(path, ("utf-8", "latin-1"), data)), start=1):
        if not line.strip():
            continue
        fields = line.split("::")
        if len(fields) < 3:
            raise DataError(
                f"{path}, line {number}: expected MovieID::Title::Genres (line: {shorten(line)!r})"
            )
        title = "::".join(fields[1:-1])  # tolerate '::' inside a title
        rows.append((number, _movie_id(path, number, fields[0], line), title, fields[-1]))
    return _movies_frame(path, rows)


def _read_u_item(path: Path, data: bytes | None = None) -> pd.DataFrame:
    """ml-100k u.item: id|title|release|video release|IMDb URL|19 genre flags, Latin-1."""
    rows = []
    n_tail = 3 + len(GENRES_100K)  # the fields after the title
    for number, line in enumerate(_lines(_decode(path, ("latin-1",), data)), start=1):
        if not line.strip():
            continue
        fields = line.split("|")
        flags = fields[-len(GENRES_100K):]
        if len(fields) < 2 + n_tail or any(f not in ("0", "1") for f in flags):
            raise DataError(
                f"{path}, line {number}: expected id|title|release date|video release date|"
                f"IMDb URL|19 genre flags of 0 or 1 (line: {shorten(line)!r})"
            )
        title = "|".join(fields[1:len(fields) - n_tail])
        genres = "|".join(g for g, flag in zip(GENRES_100K, flags) if flag == "1")
        rows.append((number, _movie_id(path, number, fields[0], line), title, genres))
    return _movies_frame(path, rows)
