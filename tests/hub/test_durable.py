"""Durable writes: fsync of the file before its rename, of its directory after, once per group."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from spindel_jupyter.hub import durable
from tests.hub.conftest import Events


def test_a_file_is_fsynced_before_its_rename_and_its_directory_after(tmp_path: Path, disk: Events) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    durable.write_file(target, b"new")
    assert target.read_bytes() == b"new"
    (kind, temporary), *rest = disk
    assert kind == "fsync" and temporary.parent == tmp_path and temporary.name.endswith(".tmp")
    assert rest == [("rename", target), ("fsync", tmp_path)]
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_group_fsyncs_each_directory_once_after_every_rename(tmp_path: Path, disk: Events) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    files = [(one / "a", b"a"), (two / "b", b"b"), (one / "c", b"c")]
    durable.write_files(files)
    assert [p.read_bytes() for p, _ in files] == [b"a", b"b", b"c"]
    renames = [i for i, (kind, _) in enumerate(disk) if kind == "rename"]
    directories = [(i, p) for i, (kind, p) in enumerate(disk) if kind == "fsync" and p.is_dir()]
    assert sorted(p for _, p in directories) == [one, two]
    assert min(i for i, _ in directories) > max(renames)
    for path, _ in files:  # each file's own fsync comes before its rename
        rename = disk.index(("rename", path))
        assert any(kind == "fsync" and p.name.startswith(f".{path.name}.") for kind, p in disk[:rename])


def test_a_batch_is_durable_only_once_synced(tmp_path: Path, disk: Events) -> None:
    batch = durable.Batch()
    batch.write(tmp_path / "a", b"a")
    batch.write(tmp_path / "b", b"b")
    assert ("fsync", tmp_path) not in disk
    batch.sync()
    batch.sync()
    assert disk.count(("fsync", tmp_path)) == 1


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old")

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="I/O error"):
        durable.write_file(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_new_directories_are_made_durable_in_their_parents(tmp_path: Path, disk: Events) -> None:
    durable.make_directory(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir()
    assert disk == [("fsync", tmp_path), ("fsync", tmp_path / "a")]
    disk.clear()
    durable.make_directory(tmp_path / "a" / "b")
    assert disk == []


def test_sweep_removes_the_leftovers_of_interrupted_writes_only(tmp_path: Path) -> None:
    (tmp_path / "kept.topic").write_bytes(b"x")
    (tmp_path / ".kept.topic.123.abcd.tmp").write_bytes(b"half")
    (tmp_path / "old-style.tmp").write_bytes(b"half")
    durable.sweep(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["kept.topic"]


# -- logs ----------------------------------------------------------------------------------


def test_a_log_gives_back_its_records_in_order(tmp_path: Path) -> None:
    log = durable.Log(tmp_path / "t.log")
    assert log.read() == [] and log.size == 0
    log.append([b"one", b""])
    log.append([b"three" * 100])
    again = durable.Log(tmp_path / "t.log")
    assert again.read() == [b"one", b"", b"three" * 100]
    assert again.records == 3 and again.size == (tmp_path / "t.log").stat().st_size


@pytest.mark.parametrize(
    "tear",
    [
        lambda data: data[:-1],  # the last payload cut short
        lambda data: data[:-505],  # only part of the last header
        lambda data: data[:-1] + bytes([data[-1] ^ 1]),  # a last byte that never reached the disk right
        lambda data: data + durable.RECORD.pack(10, 0)[:5],  # half a header after the last record
    ],
    ids=["short-payload", "short-header", "bad-checksum", "half-header"],
)
def test_a_torn_last_record_is_ignored_and_cut_off(tmp_path: Path, tear: Any) -> None:
    path = tmp_path / "t.log"
    durable.Log(path).append([b"kept", b"x" * 500])
    whole = path.read_bytes()
    path.write_bytes(tear(whole))
    log = durable.Log(path)
    kept = log.read()
    assert kept in ([b"kept"], [b"kept", b"x" * 500])
    assert path.stat().st_size == log.size  # cut off: what comes next is readable
    log.append([b"after"])
    assert durable.Log(path).read() == [*kept, b"after"]


def test_an_append_after_a_failed_one_overwrites_what_it_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "t.log"
    log = durable.Log(path)
    log.append([b"first"])
    fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="I/O error"):
        log.append([b"lost" * 100])
    monkeypatch.setattr(os, "fsync", fsync)
    log.append([b"second"])
    assert durable.Log(path).read() == [b"first", b"second"]


def test_a_new_log_is_fsynced_then_its_directory_once_per_group(tmp_path: Path, disk: Events) -> None:
    log = durable.Log(tmp_path / "t.log")
    batch = durable.Batch()
    batch.append(log, [b"a"])
    assert disk == [("fsync", log.path)]
    batch.sync()
    assert disk == [("fsync", log.path), ("fsync", tmp_path)]
    disk.clear()
    batch.append(log, [b"b"])
    batch.sync()
    assert disk == [("fsync", log.path)]  # the file exists: only its own fsync


def test_a_log_is_emptied_only_once_the_file_holding_its_records_is_durable(
    tmp_path: Path, disk: Events
) -> None:
    log = durable.Log(tmp_path / "t.log")
    log.append([b"a", b"b"])
    disk.clear()
    batch = durable.Batch()
    batch.write(tmp_path / "t.topic", b"a and b")
    batch.reset_after_sync(log)
    assert log.size > 0 and log.path.stat().st_size == log.size
    batch.sync()
    assert disk[-3:] == [("rename", tmp_path / "t.topic"), ("fsync", tmp_path), ("fsync", log.path)]
    assert log.size == 0 and log.path.stat().st_size == 0 and durable.Log(log.path).read() == []
