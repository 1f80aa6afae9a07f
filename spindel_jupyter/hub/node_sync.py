"""Nodes between the hubs of a mesh: a hub fetches the nodes of a head it lacks from hubs that have them.

Each hub keeps its own content-addressed store (:mod:`.store`). To read a head
made on another hub, a hub walks it - the commit, then its cells - and asks
only for the nodes it lacks: first the hub that made the head, then the
others in turn, for whatever is still missing. A node is named by its hash,
so any hub that has it is as good a source, and every node is verified
against its hash as it arrives: content that does not match is refused,
counted, and asked of the next hub. A node asked for while it is already on
its way is not asked for again.

Why hubs and not a JetStream bucket keyed by hash: with a bucket, every
publish would copy its new nodes into NATS whether anyone follows or not, the
bucket would need its own garbage collection, and nodes over NATS's payload
limit an object store. Asked of the hubs, a node moves only when a hub needs
it, at most once to that hub, and a head stays fetchable from every hub that
holds it - its followers' hubs too - while the hub that made it is away.

A commit lists its cells by key, so it grows with the notebook; a commit whose
parent the asker has travels as the difference from that parent (the
entries of the cell list that changed, and the fields that did): a one-cell
change moves one cell and a small delta whatever the notebook's size. The
asker rebuilds the commit and checks it against its hash like any node (if
that fails, it asks for the whole node).

Subject ``spindel.nodes.TO.FROM`` carries both the asks (``want``, with the
heads the asker has whole: ``bases``) and the answers (``have``: nodes,
batched up to ``BATCH_BYTES``, each whole or as a delta from a base;
``done``); who asks or answers is read from the subject, as for frames. Keys
travel as their 32 bytes in the message's body (an ask names nodes by hash
only): an ask's body is its keys; an answer's is, for each node, its key, its
base's key or 32 zero bytes, its size (4 bytes, big-endian) and its bytes.
"""

from __future__ import annotations

import asyncio
import difflib
import itertools
import logging
import struct
from collections import deque
from collections.abc import Iterable
from typing import Any

from ..core import wire
from ..core.errors import CorruptNode, MissingNode
from . import durable
from .mesh import PREFIX, Chunks, Mesh, token, untoken
from .store import NodeStore, node_bytes

log = logging.getLogger(__name__)

#: Nodes go in messages of about this size (a larger node alone, in chunks).
BATCH_BYTES = 256 * 1024
#: Most nodes asked for in one message.
MOST_KEYS = 4096
#: Seconds a hub asked for nodes may go without answering anything before the next one is asked.
PATIENCE = 5.0
#: Heads whole here that an ask names as bases for deltas (the latest ones).
BASES = 64


#: Nodes and bytes this hub fetched from other hubs, refused (not matching their hash) and served.
COUNTERS = ("nodes_fetched", "bytes_fetched", "nodes_refused", "nodes_served", "bytes_served")


def nodes_subject(to_hub: str, from_hub: str) -> str:
    return f"{PREFIX}.nodes.{token(to_hub)}.{token(from_hub)}"


class _Ask:
    """One ask for nodes, to one hub: what came back, and whether it is over."""

    def __init__(self, hub: str, keys: list[str]) -> None:
        self.hub = hub
        self.keys = set(keys)
        self.got: set[str] = set()
        #: Nodes that came as a delta this hub could not rebuild: asked again, whole.
        self.whole: set[str] = set()
        self.done = asyncio.Event()
        self.progress = asyncio.Event()


class NodeSync:
    """This hub's side of moving nodes in the mesh: fetching what it lacks, serving what it has."""

    def __init__(self, mesh: Mesh, store: NodeStore) -> None:
        self.mesh = mesh
        self.store = store
        self._ids = itertools.count(1)
        self._asks: dict[int, _Ask] = {}
        self._coming: dict[str, asyncio.Future[None]] = {}
        self._whole_heads: deque[str] = deque(maxlen=BASES)
        self._chunks = Chunks(mesh.max_frame_bytes)
        self._subscription: Any = None
        #: What ``/spindel/api/stats`` shows as ``sync``.
        self.counts = dict.fromkeys(COUNTERS, 0)

    def stats(self) -> dict[str, int]:
        """Nothing for the mesh's stats: the hub shows :attr:`counts` as ``sync``."""
        return {}

    # -- fetching ---------------------------------------------------------------------------

    async def fetch(self, head: str, hub: str) -> None:
        """Have every node of commit ``head`` here, verified: the commit, then the cells it lacks.

        ``hub`` made the head and is asked first. :class:`MissingNode` names
        what no hub of the mesh could give.
        """
        if not self.store.has(head):
            await self._fetch([head], hub, head, bases=list(self._whole_heads))
        commit = self.store.get(head)
        wanted = dict.fromkeys(key for key, _ in commit["cells"] if not self.store.has(key))
        if wanted:
            await self._fetch(list(wanted), hub, head)
        if head not in self._whole_heads:
            self._whole_heads.appendleft(head)  # a base for the next commits' deltas

    async def _fetch(self, keys: list[str], first: str, head: str, bases: list[str] | None = None) -> None:
        loop = asyncio.get_running_loop()
        waiting = [self._coming[key] for key in keys if key in self._coming]
        mine = [key for key in keys if key not in self._coming]
        for key in mine:
            self._coming[key] = loop.create_future()
        asked: list[str] = []
        try:
            missing = list(mine)
            for hub in self._sources(first):
                if not missing:
                    break
                asked.append(hub)
                got = await self._ask(hub, missing, bases)
                missing = [key for key in missing if key not in got]
        finally:
            for key in mine:
                future = self._coming.pop(key)
                if self.store.has(key):
                    future.set_result(None)
                else:
                    future.set_exception(MissingNode(f"node {key[:12]} could not be fetched"))
                    future.exception()  # whoever waits on it is told; nobody else need be
        if missing:
            where = ", ".join(asked) or "none (no other hub is in the mesh now)"
            raise MissingNode(
                f"{len(missing)} node(s) of head {head[:12]} could not be fetched, e.g. {missing[0][:12]}: "
                f"no hub of the mesh gave them (asked: {where}); the hub that has them may be away"
            )
        await asyncio.gather(*waiting)

    def _sources(self, first: str) -> list[str]:
        others = [hub for hub in self.mesh.hubs() if hub not in (first, self.mesh.hub_name)]
        return [hub for hub in [first, *others] if hub and self.mesh.reaches(hub)]

    async def _ask(self, hub: str, keys: list[str], bases: list[str] | None = None) -> set[str]:
        """Ask ``hub`` for ``keys``; the ones that arrived, verified and stored, once it is done or silent."""
        got: set[str] = set()
        for start in range(0, len(keys), MOST_KEYS):
            part = keys[start : start + MOST_KEYS]
            number = next(self._ids)
            ask = self._asks[number] = _Ask(hub, part)
            want: dict[str, Any] = {"want": number}
            if bases:
                want["bases"] = bases
            try:
                keys_bytes = b"".join(bytes.fromhex(key) for key in part)
                self.mesh.publish(nodes_subject(hub, self.mesh.hub_name), wire.pack_frame(want), keys_bytes)
                while not ask.done.is_set():
                    ask.progress.clear()
                    try:
                        await asyncio.wait_for(ask.progress.wait(), PATIENCE)
                    except asyncio.TimeoutError:
                        log.warning(
                            "spindel: hub %r did not answer an ask for %d node(s) within %.0f s",
                            hub,
                            len(part),
                            PATIENCE,
                        )
                        break
            finally:
                del self._asks[number]
            got |= ask.got
            if ask.whole:
                got |= await self._ask(hub, sorted(ask.whole))
        return got

    async def _arrived(self, hub: str, header: dict[str, Any], body: wire.Buffer) -> None:
        ask = self._asks.get(header.get("have") or header.get("done") or 0)
        if ask is None or ask.hub != hub:
            return  # late, or not an answer to this hub's ask
        ask.progress.set()
        if "done" in header:
            ask.done.set()
            return
        try:
            nodes = [node for node in _entries(body) if node[0] in ask.keys and node[0] not in ask.got]
        except ValueError:
            log.warning("spindel: dropped a malformed answer with nodes from hub %r", hub)
            return
        stored, refused, whole = await asyncio.to_thread(self._store, nodes)
        ask.whole.update(whole)
        for key in refused:
            self.counts["nodes_refused"] += 1
            log.warning(
                "spindel: refused node %s from hub %r: its content does not match its hash; "
                "asking another hub for it", key[:12], hub,
            )  # fmt: skip
        for key, size in stored:
            ask.got.add(key)
            self.counts["nodes_fetched"] += 1
            self.counts["bytes_fetched"] += size

    def _store(
        self, nodes: list[tuple[str, bytes, str | None]]
    ) -> tuple[list[tuple[str, int]], list[str], list[str]]:
        """Verify and store nodes (each whole, or a delta from the node ``base``), durably: (key, bytes
        moved) of those stored, the keys of those refused, and of those to ask for whole."""
        batch = durable.Batch()
        stored: list[tuple[str, int]] = []
        refused: list[str] = []
        whole: list[str] = []
        for key, data, base in nodes:
            content = data
            if base is not None:
                try:
                    content = node_bytes(apply_delta(self.store.get(base), wire.decode(data)))
                except Exception:
                    whole.append(key)
                    continue
            try:
                self.store.add(key, content, batch)
            except CorruptNode:
                (whole if base is not None else refused).append(key)
            else:
                stored.append((key, len(data)))
        batch.sync()
        return stored, refused, whole

    # -- serving ----------------------------------------------------------------------------

    async def _serve(self, hub: str, header: dict[str, Any], body: wire.Buffer) -> None:
        number, bases = header.get("want"), header.get("bases") or []
        if len(body) % 32 or len(body) > 32 * MOST_KEYS or not isinstance(bases, list) or len(bases) > BASES:
            log.warning("spindel: dropped a malformed ask for nodes from hub %r", hub)
            return
        keys = [bytes(body[i : i + 32]).hex() for i in range(0, len(body), 32)]
        subject = nodes_subject(hub, self.mesh.hub_name)
        found = await asyncio.to_thread(self._read, keys, {b for b in bases if isinstance(b, str)})
        for batch in _batches(found):
            self.mesh.publish(
                subject, wire.pack_frame({"have": number}), b"".join(_entry(*node) for node in batch)
            )
            self.counts["nodes_served"] += len(batch)
            self.counts["bytes_served"] += sum(len(data) for _, data, _ in batch)
        self.mesh.publish(subject, wire.pack_frame({"done": number}))

    def _read(self, keys: list[str], bases: set[str]) -> list[tuple[str, bytes, str | None]]:
        """The nodes of ``keys`` this hub has: (key, bytes, None), or for a commit with a parent in
        ``bases`` (key, its delta from that parent, the parent)."""
        found: list[tuple[str, bytes, str | None]] = []
        for key in keys:
            data = self.store.raw(key)
            if data is None:
                continue
            delta = _delta_from_bases(self.store, data, bases) if bases else None
            found.append((key, *delta) if delta else (key, data, None))
        return found

    # -- in the mesh ---------------------------------------------------------------------------

    async def joined(self, nc: Any) -> None:
        self._subscription = await nc.subscribe(
            f"{PREFIX}.nodes.{token(self.mesh.hub_name)}.*",
            cb=self._on_message,
            pending_msgs_limit=1_000_000,
            pending_bytes_limit=4 * self.mesh.max_frame_bytes + (64 << 20),
        )

    def left(self) -> None:
        self._subscription = None
        self._chunks.clear()
        for ask in self._asks.values():
            ask.progress.set()
            ask.done.set()

    async def _on_message(self, msg: Any) -> None:
        data = self._chunks.add(msg.subject, msg.data)
        if data is None:
            return
        hub = untoken(msg.subject.rsplit(".", 1)[-1])
        try:
            header, body = wire.unpack_frame(data)
        except Exception:
            log.warning("spindel: dropped a malformed message about nodes from hub %r", hub)
            return
        if not isinstance(header, dict):
            return
        if "want" in header:
            await self._serve(hub, header, body)
        else:
            await self._arrived(hub, header, body)


_SIZE = struct.Struct(">I")
_NO_BASE = bytes(32)


def _entry(key: str, data: bytes, base: str | None) -> bytes:
    """One node of an answer's body: key, base (or zeros), size, bytes."""
    return b"".join(
        (bytes.fromhex(key), bytes.fromhex(base) if base else _NO_BASE, _SIZE.pack(len(data)), data)
    )


def _entries(body: wire.Buffer) -> list[tuple[str, bytes, str | None]]:
    """The nodes of an answer's body; ValueError if it is not made of whole entries."""
    view, nodes, offset = memoryview(body), [], 0
    while offset < len(view):
        if offset + 68 > len(view):
            raise ValueError("a truncated entry")
        key, base = bytes(view[offset : offset + 32]).hex(), bytes(view[offset + 32 : offset + 64])
        (size,) = _SIZE.unpack(view[offset + 64 : offset + 68])
        offset += 68
        if offset + size > len(view):
            raise ValueError("a truncated node")
        nodes.append((key, bytes(view[offset : offset + size]), base.hex() if base != _NO_BASE else None))
        offset += size
    return nodes


def _delta_from_bases(store: NodeStore, data: bytes, bases: set[str]) -> tuple[bytes, str] | None:
    """A commit's delta from its first parent in ``bases`` (one this hub has too), with that parent;
    None for any other node."""
    try:
        commit = wire.decode(data)
        parents = commit["parents"] if isinstance(commit, dict) and "cells" in commit else []
        for parent in parents:
            if parent in bases and store.has(parent):
                return wire.encode(commit_delta(store.get(parent), commit)), parent
    except Exception:
        return None
    return None


def commit_delta(base: dict[str, Any], commit: dict[str, Any]) -> dict[str, Any]:
    """What turns commit ``base`` into ``commit``: fields set or dropped, and the runs of the cell
    list that changed (replaced by their new entries)."""
    old, new = [tuple(entry) for entry in base["cells"]], [tuple(entry) for entry in commit["cells"]]
    runs = [
        [i1, i2, [list(entry) for entry in new[j1:j2]]]
        for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes()
        if tag != "equal"
    ]
    changed = {key: value for key, value in commit.items() if key != "cells" and base.get(key) != value}
    return {"set": changed, "unset": [key for key in base if key not in commit], "cells": runs}


def apply_delta(base: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    """The commit ``delta`` makes of ``base`` (see :func:`commit_delta`)."""
    value = {key: item for key, item in base.items() if key not in delta["unset"]}
    value.update(delta["set"])
    cells = list(base["cells"])
    for start, end, entries in reversed(delta["cells"]):
        cells[start:end] = entries
    value["cells"] = cells
    return value


def _batches(
    nodes: Iterable[tuple[str, bytes, str | None]],
) -> Iterable[list[tuple[str, bytes, str | None]]]:
    """Nodes in groups of about ``BATCH_BYTES``."""
    batch: list[tuple[str, bytes, str | None]] = []
    size = 0
    for key, data, base in nodes:
        batch.append((key, data, base))
        size += len(data)
        if size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch
