"""Topics across the mesh: every hub's changes in one JetStream stream that every hub follows.

Each hub stays the star relay of its own peers (:mod:`.topics`). What its peers
change it publishes once, as one NATS message on ``spindel.topics.TOPIC.HUB``;
the stream ``SPINDEL_TOPICS`` keeps those messages, and every hub follows the
stream with an ordered consumer, applying the other hubs' changes and relaying
those that add something to its followers. Changes are joins (CRDTs) or
stamped writes (last writer wins by hybrid logical clock), so order and
repetition do not matter: a change applied twice does nothing the second time.

The stream is the durable copy, compacted per topic and hub: every
``SNAPSHOT_EVERY``-th change goes as the hub's whole state of the topic with a
``Nats-Rollup: sub`` header, which drops that hub's earlier messages of it (the
state holds them all). A hub that was down
or cut off replays the stream when it joins again, then publishes a snapshot of
every topic its peers changed meanwhile: both sides end equal, nothing
acknowledged is lost. The live fan-out is the same consumer, so there is one
path, not a lossy one beside a repair.

Every message carries the topic's scope as the hub holds it (whose it is, and
whether other users may write it: :class:`~.topics.Scope`) and the user whose
change it carries, as that hub admitted it. A topic's scope goes out as soon
as it is created, before it holds a value, so the other hubs know whose it is
before their peers write it. A hub applies a change only if that user may write
the topic by the scope it holds: it does not take another hub's word that the
topic's owner allowed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from ..core import errors, wire
from ..core.protocol import HUB, LWW
from .mesh import PREFIX, TOPICS_STREAM, Chunks, Mesh, reason, token, untoken
from .topics import Scope

if TYPE_CHECKING:
    from .topics import Topic, TopicStore

log = logging.getLogger(__name__)

#: A CRDT topic's changes made on one hub between two snapshots of it.
SNAPSHOT_EVERY = 500


def topic_subject(topic: str, hub: str) -> str:
    return f"{PREFIX}.topics.{token(topic)}.{token(hub)}"


class MeshTopics:
    """This hub's side of the topics shared with the mesh's other hubs."""

    def __init__(self, mesh: Mesh, store: TopicStore) -> None:
        self.mesh = mesh
        self.store = store
        store.on_local_change = self.changed
        #: Following the stream live (connected, and caught up with what it held when joining).
        self.live = False
        #: Topics changed here since their last snapshot in the stream: how many changes.
        #: At start, every topic held (it may hold changes made while out of the mesh).
        self._unsnapshotted: dict[str, int] = dict.fromkeys(store.topics, 1)
        self._chunks = Chunks(mesh.max_frame_bytes)
        self._subscription: Any = None
        #: Plain topics written in this turn of the loop: the write to publish at its end (None: none,
        #: the turn's first write went at once).
        self._due: dict[str, Topic | None] = {}
        self.counts = {"changes_out": 0, "changes_in": 0, "changes_applied": 0, "snapshots": 0}

    def stats(self) -> dict[str, int]:
        return dict(self.counts)

    # -- out --------------------------------------------------------------------------------

    def changed(self, topic: Topic, change: wire.Buffer | None) -> None:
        """A change made here (``change``: a CRDT delta; None: the topic's whole state).

        A plain topic's first write in a turn of the event loop goes at once; the
        ones after it in that turn go as one message at its end, the last (the
        stream would keep only that one).
        """
        name = topic.name
        count = self._unsnapshotted[name] = self._unsnapshotted.get(name, 0) + 1
        if not self.live:
            return  # goes as a snapshot once back in the mesh
        if topic.kind == LWW:
            if name in self._due:
                self._due[name] = topic
                return
            if not self._due:
                asyncio.get_running_loop().call_soon(self._publish_due)
            self._due[name] = None
        self._send(topic, change, count)

    def _publish_due(self) -> None:
        due, self._due = self._due, {}
        if self.live:
            for topic in due.values():
                if topic is not None:
                    self._send(topic, None, self._unsnapshotted.get(topic.name, 0))

    def _send(self, topic: Topic, change: wire.Buffer | None, count: int) -> None:
        """The ``count``-th change since the topic's last snapshot: a message of its own (a plain
        topic's value, a CRDT's delta), or a snapshot every ``SNAPSHOT_EVERY`` changes and for a
        CRDT change that is its whole state."""
        body = topic.state if topic.kind == LWW else change
        if body is None or count >= SNAPSHOT_EVERY:
            self._snapshot(topic)
        else:
            self._publish(topic, body, full=False)

    def _snapshot(self, topic: Topic) -> None:
        self._unsnapshotted.pop(topic.name, None)
        self.counts["snapshots"] += 1
        if topic.state is None:
            body = b""  # its scope alone: nobody wrote it yet
        else:
            body = topic.state if topic.kind == LWW else wire.encode(topic.state.state())
        self._publish(topic, body, full=True)

    def _publish(self, topic: Topic, body: wire.Buffer, full: bool) -> None:
        header: dict[str, Any] = {"kind": topic.kind, "scope": topic.scope.to_wire(), "user": topic.writer}
        if topic.stamp is not None:
            header["stamp"] = list(topic.stamp)
        if full:
            header["full"] = True
        rollup = {"Nats-Rollup": "sub"} if full else None
        self.counts["changes_out"] += 1
        self.mesh.publish(
            topic_subject(topic.name, self.mesh.hub_name), wire.pack_frame(header), body, rollup
        )

    # -- in ---------------------------------------------------------------------------------

    async def joined(self, nc: Any) -> None:
        """Replay the stream, then follow it live and publish what changed here meanwhile."""
        from nats.js.api import DeliverPolicy, StorageType, StreamConfig

        js = nc.jetstream()
        config = StreamConfig(
            name=TOPICS_STREAM,
            subjects=[f"{PREFIX}.topics.>"],
            storage=StorageType.FILE,
            allow_rollup_hdrs=True,
        )
        try:
            info = await js.add_stream(config)
        except Exception as exc:
            try:
                info = await js.stream_info(TOPICS_STREAM)
            except Exception:
                raise ConnectionError(
                    "topics are not shared with the mesh: cannot create or find the JetStream stream "
                    f"{TOPICS_STREAM} ({reason(exc)}); they need JetStream on the NATS server "
                    "(nats-server -js)"
                ) from None
        self._until = info.state.last_seq
        self._caught_up = asyncio.Event()
        if self._until == 0:
            self._caught_up.set()
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
        self._subscription = await js.subscribe(
            f"{PREFIX}.topics.>",
            stream=TOPICS_STREAM,
            cb=self._on_message,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
            pending_msgs_limit=1_000_000,
            pending_bytes_limit=4 * self.mesh.max_frame_bytes + (64 << 20),
        )
        await self._caught_up.wait()
        self.live = True
        for name in sorted(self._unsnapshotted):
            topic = self.store.topics.get(name)
            if topic is not None:
                self._snapshot(topic)
        log.info("spindel: topics follow the mesh (%d messages replayed)", self._until)

    def left(self) -> None:
        self.live = False
        self._due.clear()  # still unsnapshotted: a snapshot goes once back
        self._subscription = None
        self._chunks.clear()

    async def _on_message(self, msg: Any) -> None:
        data = self._chunks.add(msg.subject, msg.data)
        if data is not None:
            self._apply(msg.subject, data)
        if not self._caught_up.is_set() and msg.metadata.sequence.stream >= self._until:
            self._caught_up.set()

    def _apply(self, subject: str, data: wire.Buffer) -> None:
        _, _, topic_token, hub_token = subject.split(".")
        hub = untoken(hub_token)
        if hub == self.mesh.hub_name and self.live:
            return  # made here, already applied
        self.counts["changes_in"] += 1
        name = untoken(topic_token)
        try:
            header, body = wire.unpack_frame(data)
            kind = header.get("kind")
            if not isinstance(kind, str):
                raise errors.BadFrame("no kind")
            full = bool(header.get("full"))
            scope = Scope.from_wire(header.get("scope"))
            user = str(header.get("user") or "")
            if self.store.merge_remote(name, kind, header.get("stamp"), body, HUB, full, scope, user):
                self.counts["changes_applied"] += 1
        except (errors.SpindelError, ValueError) as exc:
            log.warning("spindel: ignored a change to topic %r from hub %r: %s", name, hub, exc)
