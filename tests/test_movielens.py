"""MovieLens: registry, the three file formats, local lookup, download, verification, extraction.

The real-data tests use the genuine ml-latest-small in ``../shared/data`` (or wherever
``RECSYS_JAX_DATA`` points) and skip without it. Downloads are served by a local
``http.server`` on 127.0.0.1; nothing here touches the network.
"""
from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import shutil
import socket
import stat
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from recsys_jax.data import movielens
from recsys_jax.data.movielens import DATASETS, Dataset, ensure_local, load_ml100k_fold, load_movielens
from recsys_jax.data.ratings import DataError

ENV_VARS = ("RECSYS_JAX_DATA", "RECSYS_JAX_CACHE", "RECSYS_JAX_BASE_URL")


def _shared_data() -> Path | None:
    """The folder holding ml-latest-small/ and ml-latest-small.zip, if any."""
    candidates = [Path(__file__).resolve().parents[1].parent / "shared" / "data"]
    if os.environ.get("RECSYS_JAX_DATA"):  # read before `clean_env` hides it
        candidates.insert(0, Path(os.environ["RECSYS_JAX_DATA"]))
    for folder in candidates:
        if (folder / "ml-latest-small" / "ratings.csv").is_file():
            return folder
    return None


SHARED = _shared_data()
OFFICIAL_ZIP = next(
    (
        p / "ml-latest-small.zip"
        for p in (SHARED, Path(__file__).resolve().parents[1].parent / "shared" / "data")
        if p is not None and (p / "ml-latest-small.zip").is_file()
    ),
    None,
)
needs_data = pytest.mark.skipif(SHARED is None, reason="genuine ml-latest-small not found")
needs_zip = pytest.mark.skipif(OFFICIAL_ZIP is None, reason="official ml-latest-small.zip not found")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No test may find data, a cache or a mirror through the caller's environment."""
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)


def files_under(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*")) if folder.exists() else []


# -- registry --------------------------------------------------------------------------
def test_registry():
    assert list(DATASETS) == [
        "ml-latest-small", "ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-32m",
    ]
    for name, d in DATASETS.items():
        assert d.name == name
        assert d.url == f"https://files.grouplens.org/datasets/movielens/{name}.zip"
        assert d.rating_scale == ((1.0, 5.0) if name in ("ml-100k", "ml-1m") else (0.5, 5.0))
    assert DATASETS["ml-10m"].folder == "ml-10M100K"
    assert DATASETS["ml-latest-small"].sha256 == (
        "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436"
    )
    assert DATASETS["ml-10m"].sha256 is None and DATASETS["ml-32m"].sha256 is None
    assert [d.format for d in DATASETS.values()] == ["csv", "100k", "dat", "dat", "csv", "csv", "csv"]
    with pytest.raises(ValueError, match="format"):
        Dataset("x", "u", None, "x", "xml", "r", "m", (1, 5), 1)  # type: ignore[arg-type]


def test_unknown_name_lists_known_ones():
    with pytest.raises(DataError, match="unknown MovieLens data set 'ml-2m'.*ml-latest-small.*ml-32m"):
        load_movielens("ml-2m")


# -- the genuine ml-latest-small ---------------------------------------------------------
def check_latest_small(r) -> None:
    assert r.name == "ml-latest-small"
    assert (len(r), r.num_users, r.num_items) == (100_836, 610, 9_724)
    assert r.user_ids[r.users[0]] == 1 and r.item_ids[r.items[0]] == 1
    assert r.ratings[0] == 4.0 and r.timestamps[0] == 964_982_703
    assert abs(float(r.ratings.mean()) - 3.5016) < 1e-4
    assert r.rating_scale == (0.5, 5.0)
    assert r.title(1) == "Toy Story (1995)"
    assert len(r.movies) == 9_742 and list(r.movies.columns) == ["title", "genres"]
    np.testing.assert_array_equal(r.user_ids, np.arange(1, 611))


@needs_data
def test_real_ml_latest_small(tmp_path, monkeypatch):
    check_latest_small(load_movielens("ml-latest-small", data_dir=SHARED, download=False))
    # the folder itself, and through the environment variable
    r = load_movielens("ml-latest-small", SHARED / "ml-latest-small", download=False)
    assert len(r) == 100_836
    monkeypatch.setenv("RECSYS_JAX_DATA", str(SHARED))
    path = ensure_local("ml-latest-small", download=False, cache_dir=tmp_path / "cache")
    assert path == SHARED / "ml-latest-small"
    assert files_under(tmp_path) == []


# -- the formats, from small hand-written files ----------------------------------------
def test_dat_format_with_latin1_titles(tmp_path):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_bytes(
        b"6040::858::4::956703932\r\n1::1193::5::978300760\n6040::1::3::956704000\n"
    )
    (folder / "movies.dat").write_bytes(
        "1::Toy Story (1995)::Animation|Children's|Comedy\n"
        "858::Godfather: The (1972)::Action|Crime|Drama\n"
        "1193::Misérables, Les (1995)::Drama\n".encode("latin-1")
    )
    r = load_movielens("ml-1m", data_dir=tmp_path, download=False, cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(r.user_ids, [1, 6040])
    np.testing.assert_array_equal(r.item_ids, [1, 858, 1193])
    np.testing.assert_array_equal(r.users, [1, 0, 1])
    np.testing.assert_array_equal(r.items, [1, 2, 0])
    np.testing.assert_array_equal(r.ratings, [4.0, 5.0, 3.0])
    np.testing.assert_array_equal(r.timestamps, [956703932, 978300760, 956704000])
    assert r.rating_scale == (1.0, 5.0) and r.name == "ml-1m"
    assert r.title(1193) == "Misérables, Les (1995)"
    assert r.title(858) == "Godfather: The (1972)"
    assert r.movies.loc[1, "genres"] == "Animation|Children's|Comedy"


def test_dat_format_ml10m_folder_utf8_and_half_stars(tmp_path):
    folder = tmp_path / "ml-10M100K"
    folder.mkdir()
    (folder / "ratings.dat").write_text("1::122::4.5::838985046\n2::122::0.5::838983525\n")
    (folder / "movies.dat").write_text("122::Boomerang (1992)::Comedy|Romance\n", encoding="utf-8")
    r = load_movielens("ml-10m", data_dir=tmp_path, download=False, cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(r.ratings, [4.5, 0.5])
    assert r.title(122) == "Boomerang (1992)"
    # whole stars only in ml-1m: 4.5 is out of its scale, named with file and line
    (tmp_path / "ml-1m").mkdir()
    (tmp_path / "ml-1m" / "ratings.dat").write_text("1::1::5::1\n1::2::0.5::2\n")
    with pytest.raises(DataError, match=r"ml-1m/ratings\.dat, line 2: rating outside the rating scale \[1, 5\]"):
        load_movielens("ml-1m", data_dir=tmp_path, download=False)


U_ITEM_LINES = [
    "1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0",
    "2|GoldenEye (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?GoldenEye%20(1995)|0|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0|1|0|0",
    "3|Misérables, Les (1995)|01-Jan-1995||http://us.imdb.com/x|0|0|0|0|0|0|0|0|1|0|0|0|0|0|0|0|0|1|0",
    "267|unknown||||1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0",
]


def write_ml100k(root: Path) -> Path:
    folder = root / "ml-100k"
    folder.mkdir(parents=True)
    base = [(196, 2, 3, 881250949), (22, 1, 1, 878887116), (196, 3, 4, 881251000)]
    test = [(186, 267, 2, 891717742), (22, 2, 5, 878887200)]

    def lines(rows):
        return "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows)

    (folder / "u.data").write_text(lines(base + test))
    (folder / "u1.base").write_text(lines(base))
    (folder / "u1.test").write_text(lines(test))
    (folder / "u.item").write_bytes("\n".join(U_ITEM_LINES).encode("latin-1") + b"\n")
    return folder


def test_100k_format_and_movies(tmp_path):
    write_ml100k(tmp_path)
    r = load_movielens("ml-100k", data_dir=tmp_path, download=False, cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(r.user_ids, [22, 186, 196])
    np.testing.assert_array_equal(r.item_ids, [1, 2, 3, 267])
    np.testing.assert_array_equal(r.users, [2, 0, 2, 1, 0])
    np.testing.assert_array_equal(r.items, [1, 0, 2, 3, 1])
    np.testing.assert_array_equal(r.ratings, [3, 1, 4, 2, 5])
    np.testing.assert_array_equal(r.timestamps, [881250949, 878887116, 881251000, 891717742, 878887200])
    assert r.rating_scale == (1.0, 5.0)
    assert r.title(3) == "Misérables, Les (1995)"
    assert r.movies.loc[1, "genres"] == "Animation|Children's|Comedy"
    assert r.movies.loc[2, "genres"] == "Action|Adventure|Thriller"
    assert r.movies.loc[3, "genres"] == "Drama|War"
    assert r.movies.loc[267, "title"] == "unknown" and r.movies.loc[267, "genres"] == "unknown"


def test_100k_fold_shares_id_maps(tmp_path):
    write_ml100k(tmp_path)
    train, test = load_ml100k_fold(1, data_dir=tmp_path, download=False, cache_dir=tmp_path / "c")
    for part in (train, test):
        np.testing.assert_array_equal(part.user_ids, [22, 186, 196])
        np.testing.assert_array_equal(part.item_ids, [1, 2, 3, 267])
    np.testing.assert_array_equal(train.users, [2, 0, 2])
    np.testing.assert_array_equal(train.items, [1, 0, 2])
    np.testing.assert_array_equal(train.ratings, [3, 1, 4])
    np.testing.assert_array_equal(test.users, [1, 0])  # user 186 occurs only in the test file
    np.testing.assert_array_equal(test.items, [3, 1])
    np.testing.assert_array_equal(test.ratings, [2, 5])
    np.testing.assert_array_equal(test.timestamps, [891717742, 878887200])
    assert train.name == "ml-100k/u1.base" and test.name == "ml-100k/u1.test"
    assert test.title(267) == "unknown"
    with pytest.raises(ValueError, match="1..5"):
        load_ml100k_fold(6, data_dir=tmp_path, download=False)


def test_100k_fold_rejects_a_test_pair_seen_in_training(tmp_path):
    folder = write_ml100k(tmp_path)
    with open(folder / "u1.test", "a") as fh:
        fh.write("196\t3\t1\t881251111\n")
    with pytest.raises(DataError, match=r"u1\.test, line 3: .*also occurs in u1\.base, line 3"):
        load_ml100k_fold(1, data_dir=tmp_path, download=False, cache_dir=tmp_path / "c")


def test_csv_format_crlf_and_quoted_titles(tmp_path):
    folder = tmp_path / "ml-20m"
    folder.mkdir()
    (folder / "ratings.csv").write_bytes(
        b"userId,movieId,rating,timestamp\r\n7,50,3.5,1112486027\r\n3,50,5.0,1112484676\r\n7,9,0.5,1\r\n"
    )
    (folder / "movies.csv").write_bytes(
        'movieId,title,genres\r\n9,"American President, The (1995)",Comedy|Drama|Romance\r\n'
        "50,Amélie (2001),(no genres listed)\r\n".encode("utf-8")
    )
    r = load_movielens("ml-20m", data_dir=tmp_path, download=False, cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(r.user_ids, [3, 7])
    np.testing.assert_array_equal(r.item_ids, [9, 50])
    np.testing.assert_array_equal(r.users, [1, 0, 1])
    np.testing.assert_array_equal(r.items, [1, 1, 0])
    np.testing.assert_array_equal(r.ratings, [3.5, 5.0, 0.5])
    assert r.title(9) == "American President, The (1995)"
    assert r.title(50) == "Amélie (2001)"
    assert r.movies.loc[50, "genres"] == "(no genres listed)"
    # a bad row names the file and its line
    (folder / "ratings.csv").write_bytes(b"userId,movieId,rating,timestamp\r\n7,50,3.5,1\r\n7,x,3,1\r\n")
    with pytest.raises(DataError, match=r"ml-20m/ratings\.csv, line 3: item id is not an integer"):
        load_movielens("ml-20m", data_dir=tmp_path, download=False)


def test_bad_movies_table(tmp_path):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_text("1::1::5::1\n")
    (folder / "movies.dat").write_text("1::A (1990)::Drama\nxx::B (1991)::Drama\n")
    with pytest.raises(DataError, match=r"movies\.dat, line 2: movie id 'xx' is not an integer"):
        load_movielens("ml-1m", data_dir=tmp_path, download=False)
    (folder / "movies.dat").unlink()
    with pytest.warns(UserWarning, match="no movie titles"):
        assert load_movielens("ml-1m", data_dir=tmp_path, download=False).movies is None


def test_a_folder_of_another_variant_is_not_taken(tmp_path):
    # data_dir may be the extracted folder itself, but only when its name says which one
    folder = tmp_path / "ml-25m"
    folder.mkdir()
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4,1\n")
    with pytest.raises(DataError, match="not available"):
        ensure_local("ml-20m", data_dir=folder, download=False, cache_dir=tmp_path / "c")
    assert ensure_local("ml-25m", data_dir=folder, download=False) == folder


# -- download --------------------------------------------------------------------------
class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]
    send_length = True

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.requests.append(self.path)
        if self.send_length:
            return super().do_GET()
        # A server that does not announce the size: only the streaming cap can stop it.
        path = Path(self.translate_path(self.path))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(path.read_bytes())

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def serve():
    """serve(folder) -> (base URL, list of requested paths, stop()); all stopped at teardown."""
    running = []

    def start(folder: Path, send_length: bool = True):
        handler = type("Handler", (_Handler,), {"requests": [], "send_length": send_length})
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(handler, directory=str(folder))
        )
        thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
        thread.start()

        def stop():
            if server in running:
                running.remove(server)
                server.shutdown()
                server.server_close()
                thread.join()

        running.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", handler.requests, stop

    yield start
    for server in list(running):
        server.shutdown()
        server.server_close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@needs_zip
def test_download_verify_extract_then_cache(tmp_path, serve):
    base_url, requests, stop = serve(OFFICIAL_ZIP.parent)
    cache = tmp_path / "cache"
    r = load_movielens("ml-latest-small", data_dir=tmp_path / "empty", base_url=base_url,
                       cache_dir=cache, timeout=10)
    check_latest_small(r)
    assert requests == ["/ml-latest-small.zip"]
    # only the extracted folder is left: no zip, no temporary files
    assert [p.name for p in cache.iterdir()] == ["ml-latest-small"]
    assert {p.name for p in (cache / "ml-latest-small").iterdir()} == {
        "README.txt", "ratings.csv", "movies.csv", "tags.csv", "links.csv"
    }
    stop()  # the second call must not need the server
    r = load_movielens("ml-latest-small", base_url=base_url, cache_dir=cache)
    assert len(r) == 100_836 and requests == ["/ml-latest-small.zip"]


@needs_zip
def test_cache_and_mirror_from_environment(tmp_path, serve, monkeypatch):
    base_url, requests, _ = serve(OFFICIAL_ZIP.parent)
    monkeypatch.setenv("RECSYS_JAX_BASE_URL", base_url + "/")
    monkeypatch.setenv("RECSYS_JAX_CACHE", str(tmp_path / "env-cache"))
    path = ensure_local("ml-latest-small")
    assert path == tmp_path / "env-cache" / "ml-latest-small"
    assert (path / "ratings.csv").stat().st_size == 2_483_723
    assert requests == ["/ml-latest-small.zip"]


@needs_zip
def test_download_reports_url_size_and_checksum(tmp_path, serve):
    base_url, _, _ = serve(OFFICIAL_ZIP.parent)
    cache, lines = tmp_path / "cache", []
    ensure_local("ml-latest-small", base_url=base_url, cache_dir=cache, report_fn=lines.append)
    size = OFFICIAL_ZIP.stat().st_size  # 978,202 bytes for the official archive
    assert lines == [
        f"fetching {base_url}/ml-latest-small.zip",
        f"received {size:,} bytes ({size / 2**20:.1f} MiB)",
        f"sha256 {hashlib.sha256(OFFICIAL_ZIP.read_bytes()).hexdigest()} matches the published checksum",
        f"extracted into {cache / 'ml-latest-small'}",
    ]
    lines.clear()  # a local copy: nothing fetched, nothing said
    ensure_local("ml-latest-small", base_url=base_url, cache_dir=cache, report_fn=lines.append)
    assert lines == []
    # a tampered archive: fetched and received, never said to match
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    data = bytearray(OFFICIAL_ZIP.read_bytes())
    data[100] ^= 0xFF
    (mirror / "ml-latest-small.zip").write_bytes(bytes(data))
    bad_url, _, _ = serve(mirror)
    with pytest.raises(DataError, match="sha256 mismatch"):
        load_movielens("ml-latest-small", base_url=bad_url, cache_dir=tmp_path / "c2", report_fn=lines.append)
    assert lines == [f"fetching {bad_url}/ml-latest-small.zip", f"received {size:,} bytes ({size / 2**20:.1f} MiB)"]


@needs_zip
def test_cli_download_through_the_mirror_variable(tmp_path, serve, monkeypatch, capsys):
    from recsys_jax.cli.main import main

    base_url, requests, _ = serve(OFFICIAL_ZIP.parent)
    monkeypatch.setenv("RECSYS_JAX_BASE_URL", base_url)
    monkeypatch.setenv("RECSYS_JAX_CACHE", str(tmp_path / "cache"))
    assert main(["download", "--dataset", "ml-latest-small"]) == 0
    out, err = capsys.readouterr()
    assert requests == ["/ml-latest-small.zip"]
    assert out == "ml-latest-small: 100836 ratings, 610 users, 9724 items\n"
    assert err.splitlines() == [
        f"recsys-jax: fetching {base_url}/ml-latest-small.zip",
        f"recsys-jax: received {OFFICIAL_ZIP.stat().st_size:,} bytes (0.9 MiB)",
        f"recsys-jax: sha256 {DATASETS['ml-latest-small'].sha256} matches the published checksum",
        f"recsys-jax: extracted into {tmp_path / 'cache' / 'ml-latest-small'}",
    ]
    assert main(["download"]) == 0  # already there: the summary only
    out, err = capsys.readouterr()
    assert err == "" and out.startswith("ml-latest-small: 100836 ratings") and len(requests) == 1


@needs_zip
def test_tampered_archive_is_refused_and_nothing_is_kept(tmp_path, serve):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    data = bytearray(OFFICIAL_ZIP.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (mirror / "ml-latest-small.zip").write_bytes(bytes(data))
    base_url, _, _ = serve(mirror)
    cache = tmp_path / "cache"
    cache.mkdir()
    with pytest.raises(DataError, match="sha256 mismatch") as info:
        load_movielens("ml-latest-small", base_url=base_url, cache_dir=cache)
    assert DATASETS["ml-latest-small"].sha256 in str(info.value)
    assert hashlib.sha256(bytes(data)).hexdigest() in str(info.value)
    assert files_under(cache) == []
    # a cache directory that did not exist is not left behind either
    with pytest.raises(DataError, match="sha256"):
        load_movielens("ml-latest-small", base_url=base_url, cache_dir=tmp_path / "new" / "cache")
    assert not (tmp_path / "new").exists()


def make_zip(members: dict[str | zipfile.ZipInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return buffer.getvalue()


def custom_dataset(archive: bytes, max_bytes: int = 1 << 20, sha256: str | None = "auto") -> Dataset:
    return Dataset(
        name="evil",
        url="https://example.invalid/datasets/evil.zip",
        sha256=hashlib.sha256(archive).hexdigest() if sha256 == "auto" else sha256,
        folder="evil",
        format="csv",
        ratings_file="ratings.csv",
        movies_file="movies.csv",
        rating_scale=(0.5, 5.0),
        max_bytes=max_bytes,
    )


RATINGS = b"userId,movieId,rating,timestamp\n1,1,4.0,1\n"


def symlink_member() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("evil/link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    "bad_member, fragment",
    [
        ("../evil.txt", "points outside"),
        ("evil/../../evil.txt", "points outside"),
        ("ABSOLUTE", "absolute path"),
        ("..\\evil.txt", "points outside"),
        ("SYMLINK", "symbolic link"),
    ],
)
def test_evil_archives_are_refused(tmp_path, serve, bad_member, fragment):
    outside = tmp_path / "outside" / "evil.txt"
    if bad_member == "ABSOLUTE":
        bad_member = str(outside)
    members: dict = {"evil/ratings.csv": RATINGS}
    members[symlink_member() if bad_member == "SYMLINK" else bad_member] = b"../../../etc/passwd"
    archive = make_zip(members)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "evil.zip").write_bytes(archive)
    base_url, requests, _ = serve(mirror)
    cache = tmp_path / "cache"
    cache.mkdir()
    with pytest.raises(DataError, match=fragment) as info:
        load_movielens(custom_dataset(archive), base_url=base_url, cache_dir=cache)
    assert requests == ["/evil.zip"] and base_url in str(info.value)
    assert files_under(cache) == []
    assert not list(tmp_path.rglob("evil.txt")) and not (tmp_path / "outside").exists()
    assert not list(tmp_path.rglob("link"))


def test_custom_archive_without_checksum_loads_with_a_warning(tmp_path, serve):
    archive = make_zip({
        "evil/": b"",
        "evil/ratings.csv": RATINGS,
        "evil/movies.csv": b"movieId,title,genres\n1,Toy Story (1995),Comedy\n",
    })
    (tmp_path / "evil.zip").write_bytes(archive)
    base_url, _, _ = serve(tmp_path)
    with pytest.warns(UserWarning, match=hashlib.sha256(archive).hexdigest()):
        r = load_movielens(custom_dataset(archive, sha256=None), base_url=base_url,
                           cache_dir=tmp_path / "cache")
    assert len(r) == 1 and r.title(1) == "Toy Story (1995)"


def test_size_bounds(tmp_path, serve):
    big = make_zip({"evil/ratings.csv": RATINGS + b"2,2,3.0,1\n" * 20_000})  # compresses well
    (tmp_path / "evil.zip").write_bytes(big)
    base_url, _, _ = serve(tmp_path)
    cache = tmp_path / "cache"
    # unpacked size above the bound, although the download itself is small
    with pytest.raises(DataError, match="unpacks to more than 100,000 bytes"):
        load_movielens(custom_dataset(big, max_bytes=100_000), base_url=base_url, cache_dir=cache)
    assert files_under(cache) == []
    # download above the bound, announced by the server or not
    limit = len(big) - 1
    with pytest.raises(DataError, match=f"announces {len(big):,} bytes, more than the {limit:,}"):
        load_movielens(custom_dataset(big, max_bytes=limit), base_url=base_url, cache_dir=cache)
    assert files_under(cache) == []
    base_url, _, _ = serve(tmp_path, send_length=False)
    with pytest.raises(DataError, match=f"download exceeds the {limit:,} bytes"):
        load_movielens(custom_dataset(big, max_bytes=limit), base_url=base_url, cache_dir=cache)
    assert files_under(cache) == []


def test_archive_without_the_expected_folder(tmp_path, serve):
    archive = make_zip({"other/ratings.csv": RATINGS})
    (tmp_path / "evil.zip").write_bytes(archive)
    base_url, _, _ = serve(tmp_path)
    with pytest.raises(DataError, match=r"has no evil/ratings\.csv"):
        load_movielens(custom_dataset(archive), base_url=base_url, cache_dir=tmp_path / "cache")
    assert files_under(tmp_path / "cache") == []


def test_not_a_zip(tmp_path, serve):
    (tmp_path / "evil.zip").write_bytes(b"<html>not found</html>")
    base_url, _, _ = serve(tmp_path)
    with pytest.raises(DataError, match="not a readable zip"):
        load_movielens(custom_dataset(b"<html>not found</html>"), base_url=base_url,
                       cache_dir=tmp_path / "cache")
    assert files_under(tmp_path / "cache") == []


def test_offline_error_names_url_and_folders(tmp_path, monkeypatch):
    base_url = closed_port_url()
    monkeypatch.setenv("RECSYS_JAX_DATA", str(tmp_path / "env-data"))
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as info:
        load_movielens("ml-latest-small", data_dir=tmp_path / "mine", base_url=base_url,
                       cache_dir=cache, timeout=5)
    message = str(info.value)
    assert f"{base_url}/ml-latest-small.zip" in message
    for folder in (tmp_path / "mine", tmp_path / "env-data", cache):
        assert str(folder / "ml-latest-small") in message
    assert "download failed" in message and "unzip" in message
    assert files_under(cache) == [] and not cache.exists()
    # download=False: the same kind of message, without a request
    with pytest.raises(DataError, match="download=False") as info:
        load_movielens("ml-100k", cache_dir=cache, download=False)
    assert "https://files.grouplens.org/datasets/movielens/ml-100k.zip" in str(info.value)
    assert str(cache / "ml-100k") in str(info.value)


def test_http_error_is_reported(tmp_path, serve):
    base_url, _, _ = serve(tmp_path / "")  # an empty folder: 404
    with pytest.raises(DataError, match="404"):
        ensure_local("ml-latest-small", base_url=base_url, cache_dir=tmp_path / "cache")
    assert files_under(tmp_path / "cache") == []


def test_safe_member_names():
    parts = movielens._member_parts
    assert parts("ml-1m/ratings.dat", "u") == ["ml-1m", "ratings.dat"]
    assert parts("./ml-1m//x", "u") == ["ml-1m", "x"]
    for bad in ("/etc/passwd", "C:/x", "\\\\server\\x", "a/../../b", ".."):
        with pytest.raises(DataError):
            parts(bad, "u")


def test_copy_of_shared_folder_in_cache_is_used(tmp_path):
    """A folder placed in the cache by hand is found without any download."""
    if SHARED is None:
        pytest.skip("genuine ml-latest-small not found")
    shutil.copytree(SHARED / "ml-latest-small", tmp_path / "ml-latest-small")
    r = load_movielens("ml-latest-small", cache_dir=tmp_path, base_url=closed_port_url())
    assert len(r) == 100_836
