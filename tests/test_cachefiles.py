"""recsys_jax.data.cachefiles: the checks every cache entry of the project's own passes
before it is used (issue 25, items 2, 3 and 9): private folders, entries with a header and a
checksum, refused owners and modes, the size cap and what killed processes leave."""
from __future__ import annotations

import os
import stat
import time

import pytest

from recsys_jax.data import cachefiles

PAYLOAD = bytes(range(256)) * 40


@pytest.fixture(autouse=True)
def _fresh_notices(monkeypatch):
    monkeypatch.setattr(cachefiles, "_said", set())
    monkeypatch.delenv("RECSYS_JAX_QUIET", raising=False)


def _flip_middle(path, count=8):
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + count):
        data[i] ^= 0xA5
    path.write_bytes(bytes(data))


def _chown_or_skip(path, uid=12345):
    try:
        os.chown(path, uid, -1, follow_symlinks=False)
    except PermissionError:
        pytest.skip("giving a file to another user needs root")


def test_an_entry_reads_back_what_was_written(tmp_path):
    path = cachefiles.write_entry(tmp_path / "e", "program", PAYLOAD)
    assert cachefiles.read_entry(path, "program", "test entry") == PAYLOAD
    assert path.read_bytes().startswith(cachefiles.MAGIC)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(cachefiles.TMP_PREFIX)]  # nothing left over


@pytest.mark.parametrize("damage", ["flip", "cut", "grow", "kind", "version", "magic"])
def test_a_damaged_entry_is_refused_removed_and_said(tmp_path, capsys, damage):
    path = cachefiles.write_entry(tmp_path / "e", "program", PAYLOAD)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        _flip_middle(path)
    elif damage == "cut":
        path.write_bytes(bytes(data[:-1]))
    elif damage == "grow":
        path.write_bytes(bytes(data) + b"\0")
    elif damage == "kind":
        cachefiles.write_entry(path, "kernels", PAYLOAD)
    elif damage == "version":
        data[8] += 1  # the format version follows the 8 magic bytes
        path.write_bytes(bytes(data))
    else:
        data[0] ^= 1
        path.write_bytes(bytes(data))
    assert cachefiles.read_entry(path, "program", "test entry") is None
    assert not path.exists()  # removed: the caller makes it anew
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "test entry" in err and "damaged" in err


def test_every_single_byte_flip_is_caught(tmp_path):
    """Any one byte of the header or the payload changed: never the payload returned."""
    original = cachefiles.write_entry(tmp_path / "e", "program", PAYLOAD[:64]).read_bytes()
    for i in range(len(original)):
        data = bytearray(original)
        data[i] ^= 0x01
        (tmp_path / "e").write_bytes(bytes(data))
        assert cachefiles.read_entry(tmp_path / "e", "program", "test entry") is None, i


def test_entries_are_written_without_group_or_other_write(tmp_path):
    old = os.umask(0)
    try:
        path = cachefiles.write_entry(tmp_path / "e", "program", PAYLOAD, mode=0o666)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_file_others_may_write_is_refused_not_removed(tmp_path, capsys):
    path = cachefiles.write_entry(tmp_path / "e", "program", PAYLOAD)
    os.chmod(path, 0o664)
    assert cachefiles.read_entry(path, "program", "test entry") is None
    assert path.exists()  # not ours to judge damaged: left as it is
    assert "group or others may write" in capsys.readouterr().err


def test_a_file_of_another_user_is_refused(tmp_path, capsys):
    path = cachefiles.write_entry(tmp_path / "e", "program", PAYLOAD)
    _chown_or_skip(path)
    assert cachefiles.read_entry(path, "program", "test entry") is None
    assert "owned by user 12345" in capsys.readouterr().err


def test_a_link_is_not_followed(tmp_path, capsys):
    target = cachefiles.write_entry(tmp_path / "real", "program", PAYLOAD)
    (tmp_path / "link").symlink_to(target)
    assert cachefiles.read_entry(tmp_path / "link", "program", "test entry") is None
    assert "not loading" in capsys.readouterr().err


def test_a_new_folder_is_private(tmp_path):
    folder = cachefiles.private_folder(tmp_path / "a" / "b", "test folder")
    assert folder == tmp_path / "a" / "b"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


@pytest.mark.parametrize("problem", ["group-writable", "other-writable", "link", "another user"])
def test_a_folder_that_cannot_be_trusted_is_refused_with_one_notice(tmp_path, capsys, problem):
    folder = tmp_path / "cache"
    if problem == "link":
        (tmp_path / "elsewhere").mkdir()
        folder.symlink_to(tmp_path / "elsewhere")
    else:
        folder.mkdir(mode=0o700)
        if problem == "another user":
            _chown_or_skip(folder)
        else:
            os.chmod(folder, 0o770 if problem == "group-writable" else 0o707)
    assert cachefiles.private_folder(folder, "test folder") is None
    assert cachefiles.private_folder(folder, "test folder") is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not using the test folder" in err and "without it" in err


def test_notices_are_said_once_and_can_be_silenced(capsys, monkeypatch):
    cachefiles.notice("hello")
    cachefiles.notice("hello")
    assert capsys.readouterr().err == "recsys_jax: hello\n"
    monkeypatch.setenv("RECSYS_JAX_QUIET", "1")
    cachefiles.notice("another")
    assert capsys.readouterr().err == ""


def _aged(path, seconds_ago):
    t = time.time() - seconds_ago
    os.utime(path, (t, t))


def test_prune_keeps_the_cap_removing_the_least_recently_used_first(tmp_path):
    folder = tmp_path / "cache"
    (folder / "programs").mkdir(parents=True)
    ages = {"a": 500, "b": 400, "programs/c": 300, "d": 200, "e": 100}
    for name, age in ages.items():
        (folder / name).write_bytes(b"x" * 1000)
        _aged(folder / name, age)
    cachefiles.touch(folder / "a")  # used just now: kept
    (folder / ".lockfile").write_bytes(b"")
    removed, freed = cachefiles.prune([folder], cap=2500)
    assert (removed, freed) == (3, 3000)
    assert sorted(p.name for p in folder.rglob("*") if p.is_file()) == [".lockfile", "a", "e"]
    assert cachefiles.prune([folder], cap=2500) == (0, 0)


def test_prune_removes_what_killed_processes_left(tmp_path):
    (tmp_path / ".tmp-old").write_bytes(b"x")
    (tmp_path / ".tmp-build-old").mkdir()
    (tmp_path / ".tmp-build-old" / "mf_sgd.o").write_bytes(b"x")
    for p in (tmp_path / ".tmp-old", tmp_path / ".tmp-build-old"):
        _aged(p, 2 * cachefiles.STALE_SECONDS)
    (tmp_path / ".tmp-writing-now").write_bytes(b"x")  # another process's, still being written
    cachefiles.prune([tmp_path], cap=1 << 30)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-writing-now"]


def test_the_cap_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("RECSYS_JAX_CACHE_MAX_MB", "1.5")
    assert cachefiles.cap_bytes() == 3 << 19
    monkeypatch.setenv("RECSYS_JAX_CACHE_MAX_MB", "lots")
    with pytest.raises(ValueError, match="RECSYS_JAX_CACHE_MAX_MB"):
        cachefiles.cap_bytes()
    monkeypatch.delenv("RECSYS_JAX_CACHE_MAX_MB")
    assert cachefiles.cap_bytes() == cachefiles.DEFAULT_CAP_MB << 20
