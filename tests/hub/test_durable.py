"""Durable writes: fsync of the file before its rename, of its directory after, once per group."""

from __future__ import annotations

import os
from pathlib import Path

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
