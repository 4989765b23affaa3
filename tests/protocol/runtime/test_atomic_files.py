"""The one atomic write: the old file survives a failed write, secrets are never readable by
others, nothing temporary is left behind, and every rename is followed by an fsync of its directory."""

from __future__ import annotations

import os
import stat

import pytest

import thinkmesh.protocol.runtime.atomic_files as atomic_files
from thinkmesh.protocol.runtime.atomic_files import (
    PRIVATE_MODE,
    atomic_path,
    replace_directory,
    replace_file,
    write_atomic,
)


def leftovers(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


@pytest.fixture
def synced(monkeypatch) -> list[tuple[str, str]]:
    """Every fsync the helper makes, in order, as ("file" | "dir", name)."""
    calls: list[tuple[str, str]] = []
    real_file, real_dir = atomic_files.fsync_file, atomic_files.fsync_directory
    monkeypatch.setattr(atomic_files, "fsync_file", lambda p: (calls.append(("file", os.path.basename(p))), real_file(p)))
    monkeypatch.setattr(atomic_files, "fsync_directory",
                        lambda d: (calls.append(("dir", os.path.basename(d))), real_dir(d)))
    return calls


def test_writes_bytes_and_text_replacing_the_old_file(tmp_path) -> None:
    path = tmp_path / "state.json"
    assert write_atomic(path, b"old") == path
    write_atomic(path, "néw\n")
    assert path.read_bytes() == "néw\n".encode() and leftovers(tmp_path) == []


def test_the_file_is_fsynced_before_the_rename_and_the_directory_after(tmp_path, synced) -> None:
    write_atomic(tmp_path / "a", b"x")
    assert [kind for kind, _ in synced] == ["file", "dir"]
    assert synced[0][1].startswith(".a.tmp-") and synced[1][1] == tmp_path.name


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path) -> None:
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"old checkpoint")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"half a new chec")
            raise RuntimeError("disk full")
    assert path.read_bytes() == b"old checkpoint" and leftovers(tmp_path) == []


def test_a_write_into_a_missing_directory_fails_without_touching_anything(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "absent" / "file", b"x")
    assert list(tmp_path.iterdir()) == []


def test_a_private_file_is_0600_from_its_first_byte(tmp_path) -> None:
    path = tmp_path / "identity.json"
    with atomic_path(path, mode=PRIVATE_MODE) as tmp:
        assert stat.S_IMODE(tmp.stat().st_mode) == 0o600  # before a secret is written into it
        tmp.write_text("seed")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    write_atomic(path, "another seed", mode=PRIVATE_MODE)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() == "another seed"


def test_a_plain_file_gets_the_umask_s_mode(tmp_path) -> None:
    old = os.umask(0o027)
    try:
        write_atomic(tmp_path / "port", "8080\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "port").stat().st_mode) == 0o640


def test_exclusive_never_replaces_an_existing_file(tmp_path) -> None:
    path = tmp_path / "backup.json"
    write_atomic(path, "first", mode=PRIVATE_MODE, exclusive=True)
    with pytest.raises(FileExistsError):
        write_atomic(path, "second", mode=PRIVATE_MODE, exclusive=True)
    assert path.read_text() == "first" and leftovers(tmp_path) == []


def test_replace_file_moves_a_finished_file_durably(tmp_path, synced) -> None:
    (tmp_path / "dump.next").write_text("new")
    (tmp_path / "dump").write_text("old")
    replace_file(tmp_path / "dump.next", tmp_path / "dump")
    assert (tmp_path / "dump").read_text() == "new" and not (tmp_path / "dump.next").exists()
    assert synced == [("file", "dump.next"), ("dir", tmp_path.name)]


def test_replace_directory_swaps_in_the_new_tree_and_drops_the_old(tmp_path, synced) -> None:
    target, staging = tmp_path / "model", tmp_path / ".model.staging"
    (target / "sub").mkdir(parents=True)
    (target / "config.json").write_text("old")
    (staging / "sub").mkdir(parents=True)
    (staging / "config.json").write_text("new")
    (staging / "sub" / "weights").write_bytes(b"w")
    replace_directory(staging, target)
    assert (target / "config.json").read_text() == "new" and (target / "sub" / "weights").read_bytes() == b"w"
    assert not staging.exists() and leftovers(tmp_path) == []
    assert ("file", "weights") in synced and ("file", "config.json") in synced
    assert synced[-1] == ("dir", tmp_path.name)  # the swap itself is durable last


def test_megabytes_are_written_whole_in_chunks(tmp_path) -> None:
    data = os.urandom(3 * atomic_files.WRITE_CHUNK + 12345)
    write_atomic(tmp_path / "evidence", data)
    assert (tmp_path / "evidence").read_bytes() == data and leftovers(tmp_path) == []


def test_a_deferred_write_renames_whole_without_fsync_and_fsync_tree_makes_it_durable(tmp_path, synced) -> None:
    (tmp_path / "round").mkdir()
    write_atomic(tmp_path / "round" / "a.evidence", b"verdict", durable=False)
    with atomic_path(tmp_path / "round" / "b.evidence", durable=False) as tmp:
        tmp.write_bytes(b"another")
    assert synced == [] and leftovers(tmp_path / "round") == []
    assert (tmp_path / "round" / "a.evidence").read_bytes() == b"verdict"
    atomic_files.fsync_tree(tmp_path / "round")
    assert sorted(synced) == [("dir", "round"), ("file", "a.evidence"), ("file", "b.evidence")]
