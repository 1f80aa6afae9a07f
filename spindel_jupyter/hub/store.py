"""Content-addressed node store: immutable nodes keyed by the SHA-256 of their canonical bytes.

Workspace content (cells, commits) lives here. A node is written once (a
fsynced temporary file renamed into place, so a crash never leaves half a
node), identical content is stored once, and every read is verified against
its key: a corrupt node is reported, never served. Nodes written together are
made durable together by :meth:`NodeStore.sync`, each directory fsynced once.
"""

from __future__ import annotations

import hashlib
import re
import threading
from pathlib import Path
from typing import Any

from ..core import wire
from ..core.errors import CorruptNode, MissingNode
from . import durable

_KEY = re.compile(r"[0-9a-f]{64}")


def canonical(value: Any) -> Any:
    """The same value with every dict's keys sorted, so equal content encodes to equal bytes."""
    if isinstance(value, dict):
        return {key: canonical(value[key]) for key in sorted(value, key=repr)}
    if isinstance(value, list):
        return [canonical(item) for item in value]
    return value


def node_bytes(value: Any) -> bytes:
    return wire.encode(canonical(value))


def node_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class NodeStore:
    """Nodes on disk under ``directory``, two-level fan-out by hash."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        durable.make_directory(directory)
        durable.sweep(directory, "??/*" + durable.SUFFIX)
        self._batch = durable.Batch()
        self._counting = threading.Lock()
        self.count = 0
        self.bytes = 0
        for path in directory.glob("??/*"):
            self.count += 1
            self.bytes += path.stat().st_size

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / key[2:]

    def put(self, value: Any, batch: durable.Batch | None = None) -> str:
        """Store ``value`` (if it is not there yet) and return its key; durable once :meth:`sync`
        returns, or ``batch``'s sync when one is given (a group written on another thread)."""
        data = node_bytes(value)
        key = node_hash(data)
        self._add(key, data, batch)
        return key

    def add(self, key: str, data: bytes, batch: durable.Batch | None = None) -> None:
        """Store ``data`` that came from elsewhere as node ``key``; :class:`CorruptNode` unless it is
        that node (its hash is its key)."""
        if node_hash(data) != key:
            raise CorruptNode(f"node {key[:12]} is corrupt: its content does not match its hash")
        self._add(key, data, batch)

    def _add(self, key: str, data: bytes, batch: durable.Batch | None) -> None:
        path = self._path(key)
        if path.exists():
            return
        durable.make_directory(path.parent)
        (batch or self._batch).write(path, data)
        with self._counting:
            self.count += 1
            self.bytes += len(data)

    def sync(self) -> None:
        """Make every node put so far durable (before anything that names them is written)."""
        self._batch.sync()

    def has(self, key: str) -> bool:
        return bool(_KEY.fullmatch(key)) and self._path(key).exists()

    def raw(self, key: str) -> bytes | None:
        """Node ``key``'s bytes as stored, unverified (whoever receives them verifies), or None."""
        if not _KEY.fullmatch(key):
            return None
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def get(self, key: str) -> Any:
        """The node ``key``, verified; :class:`MissingNode` or :class:`CorruptNode` otherwise."""
        path = self._path(key)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            raise MissingNode(f"node {key[:12]} is not in the store") from None
        if node_hash(data) != key:
            raise CorruptNode(
                f"node {key[:12]} is corrupt on disk ({path}): its content does not match its hash"
            )
        return wire.decode(data)

    def stats(self) -> dict[str, int]:
        return {"nodes": self.count, "bytes": self.bytes}
