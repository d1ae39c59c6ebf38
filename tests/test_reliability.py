"""Reliability and safety: bad input files, hostile archives and downloads, failed
checkpoint saves, bad prediction input, and properties of parsers, id maps and losses.

docs/RELIABILITY.md lists every case with the test that checks it. Downloads are served
by a local ``http.server`` on 127.0.0.1 that each test controls; nothing touches the
network. Every file a test needs is written by the test.
"""
from __future__ import annotations

import hashlib
import http.server
import io
import os
import re
import stat
import threading
import time
import warnings
import zipfile
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys_jax.use import checkpoint
from recsys_jax.eval import predict
from recsys_jax.use import recommender as recommender_module
from recsys_jax.cli.main import main
from recsys_jax.data import movielens
from recsys_jax.data.files import load_ratings, parse_ratings
from recsys_jax.data.movielens import RATINGS_OPTIONS, Dataset, load_movielens
from recsys_jax.data.ratings import DataError, Ratings
from recsys_jax.objectives.losses import LOSSES
from recsys_jax.models import bias, make_apply, make_config
from recsys_jax.use.recommender import Recommender

ENV_VARS = ("RECSYS_JAX_DATA", "RECSYS_JAX_CACHE", "RECSYS_JAX_BASE_URL", "RECSYS_JAX_DEBUG")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No test may find data, a cache or a mirror through the caller's environment."""
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)


def snapshot(folder: Path) -> dict[str, str]:
    """Every path under ``folder`` (recursively) with its kind and content hash."""
    if not folder.exists():
        return {}
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# == 1. Bad input files ====================================================================
H = b"userId,movieId,rating,timestamp\n"
RNG_BYTES = np.random.default_rng(4).bytes(5 << 20)  # 5 MB of garbage, the same every run


class Case(NamedTuple):
    fmt: str  # "csv": a user's own file (--ratings); "dat": ml-1m; "100k": ml-100k
    content: bytes
    line: int | None  # the 1-based line the message must name; None: the file as a whole
    fragment: str
    movies: bool = False  # the content is the movies file of ml-latest-small, ml-1m or ml-100k
    cli_fragment: str | None = None  # what the CLI says instead, naming its flags (None: fragment)


# Each case: the library raises one DataError naming the file, the line and the problem;
# the CLI exits 2 with that message on one line, no traceback, and writes nothing.
CORPUS = {
    "empty": Case("csv", b"", None, "the file is empty"),
    "blank-lines-only": Case("csv", b"\r\n \n\t\n", None, "the file is empty"),
    "header-only": Case("csv", H, None, "the file has a header but no data rows"),
    "missing-column": Case("csv", b"userId,movieId\n1,2\n", 1, "missing column(s) 'rating'"),
    "headerless-csv": Case("csv", b"1,2,3,4\n", 1, "looks like data: pass header=False",
                           cli_fragment="looks like data: pass --no-header"),
    "short-row": Case("csv", H + b"1,2,3,4\n2,2,3\n", 3, "missing timestamp"),
    "extra-field": Case("csv", H + b"1,2,3,4\n2,2,3,4,5\n", 3, "expected 4 fields like the first line"),
    # a short row above a long one: the short one is the first bad line
    "short-then-long": Case("csv", H + b"1,2,3,4\n2,2\n3,3,3,3,3\n", 3, "missing rating"),
    "non-numeric-user": Case("csv", H + b"1,2,3,4\nbob,2,3,4\n", 3, "user id is not an integer"),
    "non-numeric-item": Case("csv", H + b"1,2,3,4\n1,toy story,3,4\n", 3, "item id is not an integer"),
    "float-item-id": Case("csv", H + b"1,2,3,4\n1,2.5,3,4\n", 3, "item id is not an integer"),
    "empty-rating": Case("csv", H + b"1,2,3,4\n1,3,,4\n", 3, "missing or non-finite rating"),
    "nan-rating": Case("csv", H + b"1,2,3,4\n1,3,NaN,4\n", 3, "missing or non-finite rating"),
    "inf-rating": Case("csv", H + b"1,2,3,4\n1,3,inf,4\n", 3, "missing or non-finite rating"),
    "text-rating": Case("csv", H + b"1,2,3,4\n1,3,good,4\n", 3, "rating is not a number"),
    "duplicate-pair": Case("csv", H + b"1,2,3,4\n5,6,3,4\n1,2,5,6\n", 4,
                           "user 1 already rated item 2 on line 2"),
    "negative-timestamp": Case("csv", H + b"1,2,3,4\n1,3,3,-5\n", 3, "negative timestamp"),
    "float-timestamp": Case("csv", H + b"1,2,3,4\n1,3,3,4.5\n", 3, "timestamp is not an integer"),
    "user-id-beyond-int64": Case("csv", H + b"1,2,3,4\n9223372036854775808,2,3,4\n", 3,
                                 "user id is beyond the int64 range"),
    "timestamp-beyond-int64": Case("csv", H + b"1,2,3,4\n1,3,3,99999999999999999999\n", 3,
                                   "timestamp is beyond the int64 range"),
    # a million digits: Python's int() refuses more than 4,300, the message must still name the line
    "user-id-million-digits": Case("csv", H + b"1,2,3,4\n" + b"7" * 1_000_000 + b",2,3,4\n", 3,
                                   "user id is beyond the int64 range"),
    "bom-then-bad-row": Case("csv", b"\xef\xbb\xbf" + H + b"1,2,3,4\n1,x,3,4\n", 3,
                             "item id is not an integer"),
    "mixed-crlf-lf": Case("csv", H.replace(b"\n", b"\r\n") + b"1,2,3,4\n1,3,3,4\r\n\r\n1,4,3,x\n", 5,
                          "timestamp is not an integer"),
    "invalid-utf8-id": Case("csv", H + b"1,2,3,4\n\xff\xfe,2,3,4\n", 3, "user id is not an integer"),
    "garbage-binary": Case("csv", RNG_BYTES, 1, "missing column(s) 'userId', 'movieId', 'rating'"),
    "rows-then-garbage": Case("csv", H + b"1,2,3,4\n\xff" + RNG_BYTES, 3, ""),
    # ml-1m ratings.dat: UserID::MovieID::Rating::Timestamp, whole stars 1..5
    "dat-rating-above-scale": Case("dat", b"1::1::5::1\n1::2::6::2\n", 2,
                                   "rating outside the rating scale [1, 5]"),
    "dat-rating-below-scale": Case("dat", b"1::1::5::1\n1::2::0.5::2\n", 2, "rating outside the rating scale [1, 5]"),
    "dat-single-colon": Case("dat", b"1::1::5::1\n1::2::3:2\n", 2, "rating is not a number"),
    "dat-duplicate": Case("dat", b"1::1::5::1\n2::1::3::1\n1::1::4::3\n", 3, "user 1 already rated item 1 on line 1"),
    "dat-timestamp-million-digits": Case("dat", b"1::1::5::1\n1::2::3::" + b"1" * 1_000_000 + b"\n", 2,
                                         "timestamp is beyond the int64 range"),
    "dat-garbage-binary": Case("dat", RNG_BYTES, 1, "the item id column 1 does not exist"),
    # ml-100k u.data: tab-separated, whole stars 1..5
    "100k-rating-below-scale": Case("100k", b"1\t1\t5\t1\n1\t2\t0\t2\n", 2,
                                    "rating outside the rating scale [1, 5]"),
    "100k-negative-timestamp": Case("100k", b"1\t1\t5\t1\n1\t2\t3\t-2\n", 2, "negative timestamp"),
    "100k-space-separated": Case("100k", b"1\t1\t5\t1\n1 2 3 2\n", 2, "user id is not an integer"),
    "100k-garbage-binary": Case("100k", RNG_BYTES, 1, "user id is not an integer"),
    # movies tables (the ratings file beside them is sound)
    "movies-csv-huge-field": Case("csv", b'movieId,title,genres\n1,"' + b"\0" * 200_000 + b'",Drama\n', 2,
                                  "cannot parse the line (field larger than field limit", movies=True),
    "movies-csv-bad-header": Case("csv", b"id,name\n1,Toy Story\n", 1,
                                  "expected the header movieId,title,genres, got 'id,name'", movies=True),
    "movies-dat-duplicate-id": Case("dat", b"1::A (1990)::Drama\n1::B (1991)::Drama\n", 2,
                                    "movie id 1 already appeared on line 1", movies=True),
    "movies-dat-id-beyond-int64": Case("dat", b"1::A::Drama\n99999999999999999999::B::Drama\n", 2,
                                       "movie id '99999999999999999999' is beyond the int64 range", movies=True),
    "movies-dat-id-million-digits": Case("dat", b"1::A::Drama\n-" + b"9" * 1_000_000 + b"::B::Drama\n", 2,
                                         "is beyond the int64 range", movies=True),
    "movies-dat-non-ascii-digits": Case("dat", "1::A::Drama\n\u0661\u0662::B::Drama\n".encode(), 2,
                                        "movie id '\u0661\u0662' is not an integer", movies=True),
    "u-item-garbage-binary": Case("100k", RNG_BYTES, 1, "expected id|title|release date", movies=True),
}
FOLDERS = {"dat": ("ml-1m", "ratings.dat"), "100k": ("ml-100k", "u.data")}
DATASET_OF = {"csv": "ml-latest-small", "dat": "ml-1m", "100k": "ml-100k"}
SOUND = {"csv": H + b"1,1,4.0,5\n", "dat": b"1::1::4::5\n", "100k": b"1\t1\t4\t5\n"}


def write_case(root: Path, case: Case) -> tuple[Path, list[str]]:
    """Writes the file; returns its path and the CLI arguments that read it."""
    if case.fmt == "csv" and not case.movies:
        path = root / "my ratings.csv"  # a space: the message must name the path as given
        path.write_bytes(case.content)
        return path, ["--ratings", str(path)]
    dataset = movielens.DATASETS[DATASET_OF[case.fmt]]
    (root / dataset.folder).mkdir()
    ratings, movies = root / dataset.folder / dataset.ratings_file, root / dataset.folder / dataset.movies_file
    ratings.write_bytes(SOUND[case.fmt] if case.movies else case.content)
    if case.movies:
        movies.write_bytes(case.content)
    return (movies if case.movies else ratings), ["--dataset", dataset.name, "--data-dir", str(root),
                                                  "--no-download"]


def load_case(root: Path, case: Case) -> Ratings:
    if case.fmt == "csv" and not case.movies:
        return load_ratings(root / "my ratings.csv")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no movie titles": the ratings cases have no movies file
        return load_movielens(DATASET_OF[case.fmt], data_dir=root, download=False, cache_dir=root / "cache")


def assert_names(message: str, path: Path, case: Case, cli: bool = False) -> None:
    where = f"{path}, line {case.line}:" if case.line is not None else f"{path}:"
    assert message.startswith(where) or f" {where}" in message, message
    assert (case.cli_fragment or case.fragment if cli else case.fragment) in message, message
    assert len(message) < 1000, "a binary line must not be echoed whole"


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_bad_file_library_error(tmp_path, name):
    case = CORPUS[name]
    path, _ = write_case(tmp_path, case)
    start = time.perf_counter()
    with pytest.raises(DataError) as info:
        load_case(tmp_path, case)
    assert time.perf_counter() - start < 5.0  # a 5 MB binary is refused quickly
    assert_names(str(info.value), path, case)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_bad_file_cli_exit_2_no_traceback_nothing_written(tmp_path, monkeypatch, capsys, name):
    case = CORPUS[name]
    path, data_args = write_case(tmp_path, case)
    cache, out = tmp_path / "cache", tmp_path / "out"
    monkeypatch.setenv("RECSYS_JAX_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    code = main(["train", *data_args, "--model", "bias", "--epochs", "1", "--out", str(out)])
    stdout, stderr = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in stderr and stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("recsys-jax train: error: ")
    assert_names(lines[0].removeprefix("recsys-jax train: error: "), path, case, cli=True)
    assert snapshot(tmp_path) == before  # no cache, no checkpoint, no runs/ folder


def test_cli_unwritable_output_is_a_user_error(tmp_path, capsys):
    ratings = tmp_path / "ratings.csv"
    ratings.write_bytes(H + b"1,1,4,1\n1,2,3,2\n2,1,5,3\n2,2,1,4\n3,1,2,5\n")
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    code = main(["train", "--ratings", str(ratings), "--save-split", str(not_a_dir / "split.npz"),
                 "--epochs", "1", "--no-save"])
    stderr = capsys.readouterr().err
    assert code == 2 and "Traceback" not in stderr
    assert stderr.startswith("recsys-jax train: error: ") and str(not_a_dir) in stderr


# -- inputs that load, as documented ------------------------------------------------------
def test_bom_crlf_and_mixed_line_endings_load(tmp_path):
    rows = b"10,200,4.0,1000\r\n10,100,3.5,1001\n30,200,5.0,1002\r\n"
    path = tmp_path / "r.csv"
    path.write_bytes(b"\xef\xbb\xbf" + H.replace(b"\n", b"\r\n") + rows)
    r = load_ratings(path)
    np.testing.assert_array_equal(r.user_ids[r.users], [10, 10, 30])
    np.testing.assert_array_equal(r.item_ids[r.items], [200, 100, 200])
    np.testing.assert_array_equal(r.ratings, [4.0, 3.5, 5.0])
    np.testing.assert_array_equal(r.timestamps, [1000, 1001, 1002])
    # the same rows in the .dat and u.data formats, through their loaders
    for fmt, (folder, name) in FOLDERS.items():
        sep = b"::" if fmt == "dat" else b"\t"
        root = tmp_path / fmt
        (root / folder).mkdir(parents=True)
        (root / folder / name).write_bytes(b"\xef\xbb\xbf" + rows.replace(b",", sep).replace(b".5", b"").replace(b".0", b""))
        with pytest.warns(UserWarning, match="no movie titles"):
            r = load_movielens("ml-1m" if fmt == "dat" else "ml-100k", data_dir=root, download=False,
                               cache_dir=root / "cache")
        np.testing.assert_array_equal(r.user_ids[r.users], [10, 10, 30])
        np.testing.assert_array_equal(r.ratings, [4.0, 3.0, 5.0])
        assert not (root / "cache").exists()


def test_ids_with_a_million_leading_zeros_load(tmp_path):
    """Only the value counts against int64, not the digits written (int() refuses > 4,300)."""
    zeros = b"0" * 1_000_000
    path = tmp_path / "r.csv"
    path.write_bytes(H + zeros + b"12,-" + zeros + b"3,4," + zeros + b"5\n")
    r = load_ratings(path)
    assert r.user_ids.tolist() == [12] and r.item_ids.tolist() == [-3] and r.timestamps.tolist() == [5]
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_bytes(b"1::7::4::1\n")
    (folder / "movies.dat").write_bytes(zeros + b"7::A (1990)::Drama\n")
    r = load_movielens("ml-1m", data_dir=tmp_path, download=False, cache_dir=tmp_path / "cache")
    assert r.movies.index.tolist() == [7] and r.movies["title"].tolist() == ["A (1990)"]


@pytest.mark.parametrize(
    "file, content, fragment",
    [
        pytest.param("users.dat", b"1::F::1::10::48067\n" + b"9" * 1_000_000 + b"::M::56::16::70072\n",
                     "user id '999", id="users-dat-id-million-digits"),
        pytest.param("u.user", b"1|24|M|writer|1\n2|" + b"9" * 1_000_000 + b"|F|writer|1\n",
                     "expected user id|age|gender", id="u-user-age-million-digits"),
        pytest.param("u.user", "1|24|M|writer|1\n\u00b2|30|F|writer|1\n".encode(),
                     "user id '\u00b2' is not a whole number", id="u-user-superscript-id"),
    ],
)
def test_bad_users_file_names_the_line(tmp_path, file, content, fragment):
    """Side tables too: a DataError naming file and line, never int()'s own ValueError."""
    dataset = "ml-1m" if file == "users.dat" else "ml-100k"
    folder = tmp_path / movielens.DATASETS[dataset].folder
    folder.mkdir()
    (folder / FOLDERS["dat" if dataset == "ml-1m" else "100k"][1]).write_bytes(
        b"1::1::4::5\n" if dataset == "ml-1m" else b"1\t1\t4\t5\n")
    (folder / file).write_bytes(content)
    with pytest.raises(DataError) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no movie titles
        load_movielens(dataset, data_dir=tmp_path, download=False, cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert message.startswith(f"{folder / file}, line 2: "), message[:300]
    assert fragment in message and len(message) < 1000, message[:300]


def test_ids_beyond_int32_load_map_and_predict(tmp_path):
    """Raw ids are int64; only the contiguous indices are int32."""
    big_users = [2**31, 2**40, 2**63 - 1, -(2**63)]
    big_items = [2**32 + 7, 5, 2**62, 2**31 - 1]
    text = H + b"".join(f"{u},{i},{k + 1},{k}\n".encode() for k, (u, i) in enumerate(zip(big_users, big_items)))
    path = tmp_path / "big.csv"
    path.write_bytes(text)
    r = load_ratings(path)
    np.testing.assert_array_equal(r.user_ids, sorted(big_users))
    np.testing.assert_array_equal(r.user_ids[r.users], big_users)
    np.testing.assert_array_equal(r.item_ids[r.items], big_items)
    assert r.users.dtype == np.int32 and r.user_ids.dtype == np.int64
    np.testing.assert_array_equal(r.user_index(big_users), r.users)
    np.testing.assert_array_equal(r.item_index(big_items), r.items)
    # a recommender keyed by these ids predicts for them, also after a checkpoint round trip
    cfg = make_config("bias", embedding_dim=2)
    params = bias.init(jax.random.key(0), r.num_users, r.num_items, cfg)
    params = params._replace(user_bias=jnp.arange(r.num_users, dtype=jnp.float32) / 8)
    rec = Recommender("bias", cfg, params, r.user_ids, r.item_ids, (-10.0, 10.0))
    rec = checkpoint.load(checkpoint.save(tmp_path / "ck", rec))
    expected = predict.predict_indices(make_apply("bias", cfg), params, r.users, r.items)
    np.testing.assert_array_equal(rec.predict(big_users, big_items), expected)


# == 2. Archives and downloads ==============================================================
class _Server:
    """A local HTTP server with one archive and a chosen way of (mis)behaving."""

    def __init__(self, body: bytes, mode: str):
        self.body, self.mode = body, mode
        self.release = threading.Event()  # set at teardown: a stalled handler returns
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # http.server's naming
                body, half = server.body, server.body[: len(server.body) // 2]
                self.send_response(200)
                if server.mode != "drop-no-length":
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.mode == "full":
                    self.wfile.write(body)
                    return
                self.wfile.write(half)
                self.wfile.flush()
                if server.mode == "stall":
                    server.release.wait(30)  # never sends the rest
                self.close_connection = True  # "drop": close mid-file

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def serve():
    servers: list[_Server] = []

    def start(body: bytes, mode: str = "full") -> str:
        servers.append(_Server(body, mode))
        return servers[-1].url

    yield start
    for s in servers:
        s.close()
    assert not any(s.thread.is_alive() for s in servers)


RATINGS_CSV = b"userId,movieId,rating,timestamp\n1,1,4.0,1\n"


def make_zip(members: dict) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return buffer.getvalue()


def set_declared_sizes(archive: bytes, size: int) -> bytes:
    """Rewrites every member's uncompressed size, in local and central headers, to ``size``."""
    data = bytearray(archive)
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = 0
        while (at := data.find(signature, start)) >= 0:
            data[at + offset : at + offset + 4] = size.to_bytes(4, "little")
            start = at + 4
    return bytes(data)


def symlink_member() -> zipfile.ZipInfo:
    """A member that unpacks as a symbolic link (its content is the link's target)."""
    info = zipfile.ZipInfo("evil/ratings.csv")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def dataset(archive: bytes, *, sha256: str | None = "auto", max_bytes: int = 1 << 20) -> Dataset:
    return Dataset(
        name="evil", url="https://example.invalid/evil.zip",
        sha256=hashlib.sha256(archive).hexdigest() if sha256 == "auto" else sha256,
        folder="evil", format="csv", ratings_file="ratings.csv", movies_file="movies.csv",
        rating_scale=(0.5, 5.0), max_bytes=max_bytes,
    )


def hostile(name: str, cache: Path) -> tuple[bytes, dict, str, str]:
    """(served bytes, Dataset options, server mode, message fragment) of one case."""
    zeros = b"\0" * (32 << 20)
    cases = {
        # members that would write outside the staging folder, aimed at a cache file
        "dot-dot-member": (make_zip({"evil/ratings.csv": RATINGS_CSV, "evil/../../sentinel.txt": b"x"}),
                           {}, "full", "points outside its folder"),
        "absolute-member": (make_zip({"evil/ratings.csv": RATINGS_CSV, str(cache / "sentinel.txt"): b"x"}),
                            {}, "full", "has an absolute path"),
        "symlink-member": (make_zip({symlink_member(): str(cache / "sentinel.txt")}),
                           {}, "full", "is a symbolic link"),
        # 32 MB of zeros deflate to ~32 KB: the declared size is over the 1 MB bound
        "zip-bomb": (make_zip({"evil/ratings.csv": RATINGS_CSV, "evil/zeros.csv": zeros}),
                     {}, "full", "unpacks to more than 1,048,576 bytes"),
        # the same bomb with headers that lie (1 KB declared): never more than declared is
        # written, and the CRC then fails
        "zip-bomb-lying-headers": (set_declared_sizes(make_zip({"evil/ratings.csv": zeros}), 1024),
                                   {}, "full", "not a readable zip archive"),
        # 3 x 3 GiB declared: over the 8 GiB bound that holds even for a generous Dataset
        "over-global-bound": (set_declared_sizes(make_zip({f"evil/{k}.csv": b"1" for k in "abc"}), 3 << 30),
                              {"max_bytes": 100 << 30}, "full", "unpacks to more than 8,589,934,592 bytes"),
        "truncated-zip": (make_zip({"evil/ratings.csv": RATINGS_CSV * 50})[:-30], {}, "full",
                          "not a readable zip archive"),
        "wrong-sha256": (make_zip({"evil/ratings.csv": RATINGS_CSV}), {"sha256": "0" * 64}, "full",
                         "sha256 mismatch: expected " + "0" * 64),
        "stall-mid-file": (make_zip({"evil/ratings.csv": RATINGS_CSV * 50}), {}, "stall", "timed out"),
        "drop-mid-file": (make_zip({"evil/ratings.csv": RATINGS_CSV * 50}), {}, "drop",
                          "the connection closed after "),
        # no Content-Length: the cut-off body looks complete, and its checksum is wrong
        "drop-mid-file-no-length": (make_zip({"evil/ratings.csv": RATINGS_CSV * 50}), {},
                                    "drop-no-length", "sha256 mismatch"),
    }
    return cases[name]


HOSTILE = ["dot-dot-member", "absolute-member", "symlink-member", "zip-bomb", "zip-bomb-lying-headers",
           "over-global-bound", "truncated-zip", "wrong-sha256", "stall-mid-file", "drop-mid-file",
           "drop-mid-file-no-length"]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_archive_or_server_is_refused_cache_unchanged(tmp_path, serve, name):
    cache = tmp_path / "cache"
    (cache / "ml-latest-small").mkdir(parents=True)  # an earlier download, and a file
    (cache / "ml-latest-small" / "ratings.csv").write_bytes(RATINGS_CSV)
    (cache / "sentinel.txt").write_bytes(b"keep me")
    body, options, mode, fragment = hostile(name, cache)
    ds = dataset(body, **options)  # the archive's own sha256 unless the case says otherwise
    url = serve(body, mode)
    before = snapshot(tmp_path)
    start = time.perf_counter()
    with pytest.raises(DataError) as info:
        load_movielens(ds, base_url=url, cache_dir=cache, timeout=1.0)
    assert time.perf_counter() - start < 10.0
    assert fragment in str(info.value), str(info.value)
    assert f"{url}/evil.zip" in str(info.value)
    assert snapshot(tmp_path) == before  # the cache and everything beside it, unchanged
    assert (cache / "sentinel.txt").read_bytes() == b"keep me"


def test_good_archive_from_the_same_server_loads(tmp_path, serve):
    """Control for the refusals above: the harness accepts a sound archive."""
    body = make_zip({"evil/ratings.csv": RATINGS_CSV})
    url = serve(body)
    with pytest.warns(UserWarning, match="no movie titles"):
        r = load_movielens(dataset(body), base_url=url, cache_dir=tmp_path / "cache", timeout=1.0)
    assert len(r) == 1 and sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["evil"]


# == 3. Checkpoints: a failed save leaves the previous checkpoint as it was =================
def small_rec(seed: int) -> Recommender:
    cfg = make_config("bias", embedding_dim=2)
    params = bias.init(jax.random.key(seed), 3, 4, cfg)
    return Recommender("bias", cfg, params, np.array([1, 2, 3]), np.array([10, 20, 30, 40]),
                       (0.5, 5.0), {10: "A"})


def same_params(a: Recommender, b: Recommender) -> bool:
    return all(np.asarray(x).tobytes() == np.asarray(y).tobytes() for x, y in zip(a.params, b.params))


def fail_savez(*args, **kwargs):
    raise OSError(28, "No space left on device")


def interrupt_savez(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("failure", ["savez-disk-full", "savez-interrupted", "meta-not-json", "final-rename"])
def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch, failure):
    first, second = small_rec(0), small_rec(1)
    path = checkpoint.save(tmp_path / "ck", first, extra={"n": 1})
    before = snapshot(tmp_path)
    extra = {"n": 2}
    expected: type[BaseException] = OSError
    if failure == "savez-disk-full":
        monkeypatch.setattr(checkpoint.np, "savez", fail_savez)
    elif failure == "savez-interrupted":
        monkeypatch.setattr(checkpoint.np, "savez", interrupt_savez)
        expected = KeyboardInterrupt
    elif failure == "meta-not-json":  # arrays and titles are written when meta.json fails
        extra, expected = {"when": object()}, TypeError
    else:  # the old folder has been moved aside when moving the new one in fails
        real_replace, calls = os.replace, []

        def flaky_replace(src, dst):
            calls.append((src, dst))
            if Path(src).name.startswith(".ck.tmp-"):
                raise OSError(5, "Input/output error")
            return real_replace(src, dst)

        monkeypatch.setattr(checkpoint.os, "replace", flaky_replace)
    with pytest.raises(expected):
        checkpoint.save(path, second, extra=extra)
    monkeypatch.undo()
    if failure == "final-rename":
        assert len(calls) == 3  # aside, (failed) in, back
    assert snapshot(tmp_path) == before  # no temporary or .old folder, files unchanged
    loaded = checkpoint.load(path)
    assert same_params(loaded, first) and not same_params(loaded, second)
    assert checkpoint.read_meta(path)["extra"] == {"n": 1}


def test_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint.np, "savez", fail_savez)
    with pytest.raises(OSError, match="No space"):
        checkpoint.save(tmp_path / "ck", small_rec(0))
    assert list(tmp_path.iterdir()) == []


# == 5. Prediction input: clear errors before any device work ===============================
@pytest.fixture
def no_device(monkeypatch):
    """Fails the test if prediction reaches the compiled program."""

    def forbidden(apply_fn):
        raise AssertionError("device work started before the input was checked")

    monkeypatch.setattr(predict, "_jitted", forbidden)


@pytest.fixture(scope="module")
def rec() -> Recommender:
    """3 users (raw 1, 2, 3), 4 items (raw 10..40)."""
    return small_rec(0)


def apply_of(rec: Recommender):
    return make_apply(rec.model, rec.config)


@pytest.mark.parametrize(
    "users, items, match",
    [
        pytest.param([0, 3], [0, 0], "users index 3 is out of range 0..2", id="user-index-too-large"),
        pytest.param([0, -1], [0, 0], "users index -1 is out of range 0..2", id="negative-index"),
        pytest.param([0, 1], [4, 0], "items index 4 is out of range 0..3", id="item-index-too-large"),
        pytest.param(np.array([2**32], np.int64), [0], "users index 4294967296 is out of range",
                     id="index-beyond-int32"),  # the old int32 cast wrapped it to 0
        pytest.param([0, 1], [0], "2 users but 1 items", id="mismatched-lengths"),
        pytest.param([0.5], [0], "users must be integers", id="float-with-fraction"),
        pytest.param([0], [np.nan], "items must be integers", id="nan"),
        pytest.param(["0"], [0], "users must be integers, got dtype <U1", id="string"),
        pytest.param([True], [0], "users must be integers, got dtype bool", id="bool"),
        pytest.param([[0]], [[0]], "users must be 1-D", id="two-dimensional"),
        pytest.param(0, 0, "users must be 1-D", id="scalar"),
    ],
)
def test_predict_indices_rejects_bad_input(rec, no_device, users, items, match):
    with pytest.raises(ValueError, match=match):
        predict.predict_indices(apply_of(rec), rec.params, users, items)


def test_predict_indices_accepts_what_it_should(rec):
    apply_fn = apply_of(rec)
    ref = predict.predict_indices(apply_fn, rec.params, np.array([0, 2], np.int32), np.array([3, 0], np.int32))
    for users, items in (([0, 2], [3, 0]), ([0.0, 2.0], [3.0, 0.0]), (np.array([0, 2], np.uint8), (3, 0))):
        np.testing.assert_array_equal(predict.predict_indices(apply_fn, rec.params, users, items), ref)
    assert predict.table_sizes(rec.params) == (3, 4)


def test_predict_indices_empty(rec, no_device):
    out = predict.predict_indices(apply_of(rec), rec.params, [], np.array([], np.int64))
    assert out.dtype == np.float32 and out.shape == (0,)


def test_recommender_predict_empty_and_bad_ids(rec, no_device, monkeypatch):
    out = rec.predict([], [])
    assert out.dtype == np.float32 and out.shape == (0,)

    def forbidden(*args, **kwargs):
        raise AssertionError("device work started before the ids were checked")

    monkeypatch.setattr(recommender_module, "predict_indices", forbidden)
    for users, items, error, match in [
        ([True], [10], ValueError, "integers"),
        (np.array([2**64 - 1], np.uint64), [10], ValueError, "beyond the int64 range"),
        ([1e30], [10], ValueError, "integers"),
        ([1, 2], [10, 99], KeyError, "unknown item id 99"),
        ([7], [10], KeyError, "unknown user id 7"),
    ]:
        with pytest.raises(error, match=match):
            rec.predict(users, items)


# == 6. Properties ==========================================================================
PROPS = settings(max_examples=40, deadline=None)
INT64 = st.integers(-(2**63), 2**63 - 1)


@st.composite
def rating_rows(draw):
    """Rows with unique (user, item) pairs: raw ids anywhere in int64, half-star ratings."""
    n = draw(st.integers(1, 30))
    users = draw(st.lists(INT64, min_size=1, max_size=6, unique=True))
    items = draw(st.lists(INT64, min_size=1, max_size=6, unique=True))
    pairs = draw(st.lists(st.tuples(st.sampled_from(users), st.sampled_from(items)),
                          min_size=1, max_size=n, unique=True))
    ratings = draw(st.lists(st.integers(1, 10), min_size=len(pairs), max_size=len(pairs)))
    stamps = draw(st.lists(st.integers(0, 2**63 - 1), min_size=len(pairs), max_size=len(pairs)))
    return pairs, [r / 2 for r in ratings], stamps


@PROPS
@given(rows=rating_rows(), fmt=st.sampled_from(sorted(RATINGS_OPTIONS)), crlf=st.lists(st.booleans()),
       bom=st.booleans())
def test_parsers_round_trip_valid_files(rows, fmt, crlf, bom):
    pairs, ratings, stamps = rows
    sep = {"csv": ",", "dat": "::", "100k": "\t"}[fmt]
    lines = ["userId,movieId,rating,timestamp"] if fmt == "csv" else []
    lines += [sep.join((str(u), str(i), f"{r:g}", str(t))) for (u, i), r, t in zip(pairs, ratings, stamps)]
    ends = [("\r\n" if crlf[k % len(crlf)] else "\n") if crlf else "\n" for k in range(len(lines))]
    data = ("\ufeff" if bom else "") + "".join(line + end for line, end in zip(lines, ends))
    r = parse_ratings(data.encode(), f"prop.{fmt}", **RATINGS_OPTIONS[fmt], rating_scale=(0.5, 5.0))
    np.testing.assert_array_equal(r.user_ids[r.users], [u for u, _ in pairs])
    np.testing.assert_array_equal(r.item_ids[r.items], [i for _, i in pairs])
    np.testing.assert_array_equal(r.ratings, np.array(ratings, np.float32))
    np.testing.assert_array_equal(r.timestamps, stamps)
    np.testing.assert_array_equal(r.user_ids, sorted({u for u, _ in pairs}))


@PROPS
@given(raw_users=st.lists(INT64, min_size=1, max_size=40), raw_items=st.data())
def test_id_maps_round_trip(raw_users, raw_items):
    items = raw_items.draw(st.lists(INT64, min_size=len(raw_users), max_size=len(raw_users)))
    r = Ratings.from_raw(raw_users, items, np.full(len(raw_users), 3.0))
    np.testing.assert_array_equal(r.user_ids[r.users], raw_users)  # index -> raw id
    np.testing.assert_array_equal(r.item_ids[r.items], items)
    every_user, every_item = np.arange(r.num_users), np.arange(r.num_items)
    np.testing.assert_array_equal(r.user_index(r.user_ids[every_user]), every_user)  # raw -> index
    np.testing.assert_array_equal(r.item_index(r.item_ids[every_item]), every_item)
    np.testing.assert_array_equal(r.user_index(raw_users), r.users)
    assert r.users.dtype == np.int32 and r.user_ids.dtype == np.int64


FINITE = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@PROPS
@given(name=st.sampled_from(sorted(LOSSES)),
       pairs=st.lists(st.tuples(FINITE, FINITE), min_size=1, max_size=20))
def test_losses_non_negative_zero_at_target_symmetric(name, pairs):
    loss = LOSSES[name]
    p, t = (jnp.asarray(np.array(c, np.float32)) for c in zip(*pairs))
    value = np.asarray(loss(p, t))
    assert value.shape == (len(pairs),) and np.all(np.isfinite(value))
    assert np.all(value >= 0)
    np.testing.assert_array_equal(np.asarray(loss(t, t)), 0.0)
    np.testing.assert_array_equal(np.asarray(loss(t, p)), value)  # a function of |p - t|


# == 7. docs/RELIABILITY.md names only tests that exist, and every case ======================
ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "RELIABILITY.md"


def case_column(section: str) -> list[str]:
    """The backticked names in the first column of the tables headed ``| case `X` |``."""
    names, inside = [], False
    for line in section.splitlines():
        if line.startswith("| case `X`"):
            inside = True
        elif not line.startswith("|"):
            inside = False
        elif inside and line.startswith("| `"):
            names.append(line.split("`")[1])
    return names


def test_reliability_doc_is_true():
    text = DOC.read_text(encoding="utf-8")
    # every node id resolves: the file, the function and, for a [param], its literal id
    refs = re.findall(r"`(?:(tests/\w+\.py)::(\w+))?(\[[^\]`]+\])?`", text)
    current, checked = None, 0
    for file, func, param in refs:
        if file:
            source = (ROOT / file).read_text(encoding="utf-8")
            assert re.search(rf"^def {func}\(", source, re.MULTILINE), f"{file}::{func} does not exist"
            current = (file, source)
        elif not param or current is None:
            continue
        if param and param != "[X]":
            assert f'"{param[1:-1]}"' in current[1], f"{current[0]} has no case {param}"
        checked += 1
    assert checked >= 60
    # the corpus and the hostile cases are listed, one row each, and nothing else is
    bad_files, archives = text.split("## 1.")[1].split("## 2.")
    assert sorted(case_column(bad_files)) == sorted(CORPUS)
    assert sorted(case_column(archives.split("## 3.")[0])) == sorted(HOSTILE)
    # the fuzz count quoted is the one the fuzz test uses
    fuzz_source = (ROOT / "tests" / "test_fuzz.py").read_text(encoding="utf-8")
    count = int(re.search(r"^NUM_INPUTS = ([\d_]+)", fuzz_source, re.MULTILINE).group(1))
    assert f"**{count:,} generated inputs**" in text
