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

Subject ``spindel.nodes.TO.FROM`` carries both the asks (``want``) and the
answers (``have``: nodes, batched up to ``BATCH_BYTES``; ``done``); who asks or
answers is read from the subject, as for frames.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Iterable
from typing import Any

from ..core import wire
from ..core.errors import CorruptNode, MissingNode
from . import durable
from .mesh import PREFIX, Chunks, Mesh, token, untoken
from .store import NodeStore

log = logging.getLogger(__name__)

#: Nodes go in messages of about this size (a larger node alone, in chunks).
BATCH_BYTES = 256 * 1024
#: Most nodes asked for in one message.
MOST_KEYS = 4096
#: Seconds a hub asked for nodes may go without answering anything before the next one is asked.
PATIENCE = 5.0


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
            await self._fetch([head], hub, head)
        commit = self.store.get(head)
        wanted = dict.fromkeys(key for key, _ in commit["cells"] if not self.store.has(key))
        if wanted:
            await self._fetch(list(wanted), hub, head)

    async def _fetch(self, keys: list[str], first: str, head: str) -> None:
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
                got = await self._ask(hub, missing)
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

    async def _ask(self, hub: str, keys: list[str]) -> set[str]:
        """Ask ``hub`` for ``keys``; the ones that arrived, verified and stored, once it is done or silent."""
        got: set[str] = set()
        for start in range(0, len(keys), MOST_KEYS):
            part = keys[start : start + MOST_KEYS]
            number = next(self._ids)
            ask = self._asks[number] = _Ask(hub, part)
            try:
                self.mesh.publish(
                    nodes_subject(hub, self.mesh.hub_name), wire.pack_frame({"want": number, "keys": part})
                )
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
        return got

    async def _arrived(self, hub: str, header: dict[str, Any], body: wire.Buffer) -> None:
        ask = self._asks.get(header.get("have") or header.get("done") or 0)
        if ask is None or ask.hub != hub:
            return  # late, or not an answer to this hub's ask
        ask.progress.set()
        if "done" in header:
            ask.done.set()
            return
        keys, sizes = header.get("keys"), header.get("sizes")
        if (
            not isinstance(keys, list)
            or not isinstance(sizes, list)
            or len(keys) != len(sizes)
            or not all(isinstance(n, int) and n >= 0 for n in sizes)
            or sum(sizes) != len(body)
        ):
            log.warning("spindel: dropped a malformed answer with nodes from hub %r", hub)
            return
        nodes, offset = [], 0
        for key, size in zip(keys, sizes, strict=True):
            if key in ask.keys and key not in ask.got:
                nodes.append((key, bytes(body[offset : offset + size])))
            offset += size
        stored, refused = await asyncio.to_thread(self._store, nodes)
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

    def _store(self, nodes: list[tuple[str, bytes]]) -> tuple[list[tuple[str, int]], list[str]]:
        """Verify and store nodes, durably: (key, size) of those stored, keys of those refused."""
        batch, stored, refused = durable.Batch(), [], []
        for key, data in nodes:
            try:
                self.store.add(key, data, batch)
            except CorruptNode:
                refused.append(key)
            else:
                stored.append((key, len(data)))
        batch.sync()
        return stored, refused

    # -- serving ----------------------------------------------------------------------------

    async def _serve(self, hub: str, header: dict[str, Any]) -> None:
        number, keys = header.get("want"), header.get("keys")
        if not isinstance(keys, list) or len(keys) > MOST_KEYS or not all(isinstance(k, str) for k in keys):
            log.warning("spindel: dropped a malformed ask for nodes from hub %r", hub)
            return
        subject = nodes_subject(hub, self.mesh.hub_name)
        found = await asyncio.to_thread(lambda: [(key, self.store.raw(key)) for key in keys])
        for batch in _batches((key, data) for key, data in found if data is not None):
            names = [key for key, _ in batch]
            sizes = [len(data) for _, data in batch]
            self.mesh.publish(
                subject,
                wire.pack_frame({"have": number, "keys": names, "sizes": sizes}),
                b"".join(d for _, d in batch),
            )
            self.counts["nodes_served"] += len(batch)
            self.counts["bytes_served"] += sum(sizes)
        self.mesh.publish(subject, wire.pack_frame({"done": number}))

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
            await self._serve(hub, header)
        else:
            await self._arrived(hub, header, body)


def _batches(nodes: Iterable[tuple[str, bytes]]) -> Iterable[list[tuple[str, bytes]]]:
    """Nodes in groups of about ``BATCH_BYTES``."""
    batch: list[tuple[str, bytes]] = []
    size = 0
    for key, data in nodes:
        batch.append((key, data))
        size += len(data)
        if size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch
