"""The content-addressed node store."""

from __future__ import annotations

from pathlib import Path

import pytest

from spindel_jupyter.core.errors import CorruptNode, MissingNode
from spindel_jupyter.hub.store import NodeStore, node_bytes, node_hash
from tests.hub.conftest import Events


def test_put_get_and_identical_content_stored_once(tmp_path: Path) -> None:
    store = NodeStore(tmp_path)
    key = store.put({"source": "x = 1", "outputs": []})
    assert store.put({"outputs": [], "source": "x = 1"}) == key  # key order does not matter
    assert store.get(key) == {"source": "x = 1", "outputs": []}
    assert store.stats()["nodes"] == 1
    assert key == node_hash(node_bytes({"outputs": [], "source": "x = 1"}))


def test_corrupt_node_is_reported_never_served(tmp_path: Path) -> None:
    store = NodeStore(tmp_path)
    key = store.put({"a": 1})
    path = tmp_path / key[:2] / key[2:]
    path.write_bytes(node_bytes({"a": 2}))
    with pytest.raises(CorruptNode, match=key[:12]):
        store.get(key)


def test_missing_node(tmp_path: Path) -> None:
    with pytest.raises(MissingNode):
        NodeStore(tmp_path).get("0" * 64)


def test_writes_leave_no_temporary_files_and_counts_survive_a_restart(tmp_path: Path) -> None:
    store = NodeStore(tmp_path)
    for i in range(5):
        store.put({"n": i})
    assert not list(tmp_path.rglob("*.tmp"))
    again = NodeStore(tmp_path)
    assert again.stats() == store.stats() and again.stats()["nodes"] == 5


def test_nodes_are_durable_once_synced_and_leftovers_are_swept_never_served(
    tmp_path: Path, disk: Events
) -> None:
    store = NodeStore(tmp_path)
    key = store.put({"a": 1})
    path = tmp_path / key[:2] / key[2:]
    assert ("rename", path) in disk and ("fsync", path.parent) not in disk
    store.sync()
    assert disk.index(("rename", path)) < disk.index(("fsync", path.parent))
    (path.parent / f".{path.name}.999.beef.tmp").write_bytes(b"half")
    missing = "f" * 64
    (tmp_path / "ff").mkdir(exist_ok=True)
    (tmp_path / "ff" / f"{missing[2:]}.999.tmp").write_bytes(b"half")  # as older versions named them
    again = NodeStore(tmp_path)
    assert not list(tmp_path.rglob("*.tmp")) and again.stats()["nodes"] == 1
    with pytest.raises(MissingNode):
        again.get(missing)
