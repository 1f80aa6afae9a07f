"""The hub's topics: the joined state of every topic, relayed and kept durably.

The hub is the star relay of every topic (Spindel's ``:owner?`` role): it
applies each change it receives, forwards it to the other followers only if it
added something, and stores the topic's state - the joined state of a CRDT
topic, the winning write of a plain one - so a late joiner converges with every
writer offline and a restart loses nothing acknowledged.

Storage is one file per topic holding its state (compacted, not a log),
written atomically and fsynced; changes are written in groups and acknowledged
once their group is durable. On the server the group's files are written off
the event loop, so the disk never holds up the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core import crdt, errors, wire
from ..core.clock import Stamp, as_stamp
from ..core.protocol import ACK, HUB, LWW, PUB, SNAP, to_wire
from ..core.replica import decode_state, join, lacks, wins
from . import durable

if TYPE_CHECKING:
    from .relay import Member

log = logging.getLogger(__name__)

Schedule = Callable[[float, Callable[[], None]], Any]
Waiters = list["asyncio.Future[None]"]
#: The highest change number to acknowledge, per peer and topic.
Acks = dict[tuple["Member", str], int]

#: How long changes may wait to be written together (seconds).
FLUSH_DELAY = 0.01
SUMMARY_CHARS = 80


@dataclass(eq=False)
class Topic:
    """One topic as the hub holds it."""

    name: str
    kind: str
    #: CRDT topics: the joined value. Plain topics: the winning write's encoded value.
    state: Any = None
    stamp: Stamp | None = None
    followers: dict[Member, str] = field(default_factory=dict)
    size: int = 0
    summary: str = ""

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "subscribers": len(self.followers),
            "size": self.size,
            "summary": self.summary,
        }

    def summarize(self) -> None:
        """A short text of the current value, for peer lists and panels."""
        try:
            value = wire.decode(self.state) if self.kind == LWW else self.state
            text = repr(value)
        except Exception:
            text = "(unreadable)"
        self.summary = text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 1] + "…"


class TopicStore:
    """Every topic of the hub; fed frames by the relay."""

    def __init__(
        self, directory: Path | None = None, schedule: Schedule | None = None, max_topics: int = 10_000
    ) -> None:
        self.directory = directory
        self.max_topics = max_topics
        self.schedule = schedule
        self.topics: dict[str, Topic] = {}
        self._dirty: set[Topic] = set()
        self._acks: Acks = {}
        self._flush_pending = False
        self._listing_changed = False
        #: With a schedule (the server's event loop), groups are written on this thread, one at a time.
        self._writer = ThreadPoolExecutor(1, "spindel-topics") if schedule and directory is not None else None
        self._writing: Future[None] | None = None
        #: Who waits for the changes made so far to be durable (see :meth:`stored`).
        self._waiters: Waiters = []
        #: Called after changes are stored, when the topic list or a value changed.
        self.on_change: Callable[[], None] | None = None
        #: Changes received and frames relayed, for /spindel/api/stats.
        self.received = 0
        self.relayed = 0
        #: Mirrors of topics nobody has written yet: they follow once the topic exists.
        self._pending_mirrors: dict[str, dict[Member, str]] = {}
        if directory is not None:
            durable.make_directory(directory)
            self._load()

    # -- frames from peers ---------------------------------------------------------

    def subscribe(self, member: Member, header: dict[str, Any], body: memoryview) -> None:
        """Follow a topic; integrate the joiner's state and answer with what it lacks."""
        name, request_id = header["topic"], header["id"]
        try:
            topic = self._topic(name, header.get("kind"), create=header["mode"] != "mirror")
            snapshot: dict[str, Any] = {"t": SNAP, "re": request_id, "topic": name, "from": HUB}
            if topic is None:
                member.subscriptions.add(name)
                self._pending_mirrors.setdefault(name, {})[member] = header["mode"]
                member.link.send(wire.pack_frame({**snapshot, "kind": None}))
                return
            topic.followers[member] = header["mode"]
            member.subscriptions.add(name)
            self._followers_changed()
            reply = self._join(topic, member, header, body)
            if body and isinstance(header.get("seq"), int):
                self._ack_later(member, name, header["seq"], topic)
            snapshot["kind"] = topic.kind
            if reply is not None:
                if topic.stamp is not None:
                    snapshot["stamp"] = list(topic.stamp)
                member.link.send(wire.pack_frame(snapshot, reply))
            else:
                member.link.send(wire.pack_frame(snapshot))
        except errors.HubError as exc:
            error = {**to_wire(exc), "topic": name}
            member.link.send(wire.pack_frame({"t": SNAP, "re": request_id, "topic": name, "error": error}))

    def _followers_changed(self) -> None:
        self._listing_changed = True
        self._request_flush()

    def unsubscribe(self, member: Member, header: dict[str, Any]) -> None:
        name = header["topic"]
        member.subscriptions.discard(name)
        topic = self.topics.get(name)
        if topic is not None:
            topic.followers.pop(member, None)
        self._pending_mirrors.get(name, {}).pop(member, None)
        self._followers_changed()

    def drop(self, member: Member) -> None:
        """The member left: it follows nothing any more."""
        for name in member.subscriptions:
            topic = self.topics.get(name)
            if topic is not None:
                topic.followers.pop(member, None)
            self._pending_mirrors.get(name, {}).pop(member, None)
        member.subscriptions.clear()
        for key in [k for k in self._acks if k[0] is member]:
            del self._acks[key]
        self._followers_changed()

    def publish(self, member: Member, header: dict[str, Any], body: memoryview) -> None:
        """A peer's local change: apply it, relay it if it added something, store it."""
        name = header["topic"]
        self.received += 1
        topic = self._topic(name, header["kind"], create=True)
        assert topic is not None
        if topic.kind == LWW:
            stamp = _stamp(header.get("stamp"))
            if not wins(stamp, topic.stamp):
                self._ack_later(member, name, header["seq"], topic)
                return
            topic.state, topic.stamp = bytes(body), stamp
        else:
            joined = join(topic.state, _crdt_value(topic.kind, body))
            if joined is topic.state:
                self._ack_later(member, name, header["seq"], topic)
                return
            topic.state = joined
        frame = {"t": PUB, "topic": name, "kind": topic.kind, "from": member.name}
        if topic.stamp is not None:
            frame["stamp"] = list(topic.stamp)
        self._relay(topic, member, wire.pack_frame(frame, body))
        self._ack_later(member, name, header["seq"], topic, dirty=True)

    def states(self, names: list[str]) -> dict[str, Any]:
        """The current state of each named topic the hub holds, for a workspace commit."""
        out: dict[str, Any] = {}
        for name in names:
            topic = self.topics.get(name)
            if topic is None or topic.state is None:
                continue
            state = topic.state if topic.kind == LWW else topic.state.state()
            out[name] = {"kind": topic.kind, "stamp": topic.stamp, "state": state}
        return out

    def kind_of(self, name: str) -> str | None:
        topic = self.topics.get(name)
        return topic.kind if topic is not None else None

    def stamp_of(self, name: str) -> Stamp | None:
        """A plain topic's stamp (None for CRDTs and unknown topics): tells whether it changed."""
        topic = self.topics.get(name)
        return topic.stamp if topic is not None else None

    def value_text(self, name: str) -> str | None:
        topic = self.topics.get(name)
        if topic is None or topic.state is None:
            return None
        topic.summarize()
        return topic.summary

    def copy(self, source: str, target: str) -> None:
        """Start topic ``target`` as ``source`` is now (a fork's own copy of a workspace topic)."""
        original = self.topics.get(source)
        if original is None or original.state is None or target in self.topics:
            return
        self._topic(target, original.kind, create=True)
        copy = self.topics[target]
        copy.state, copy.stamp = original.state, original.stamp
        self._mark_dirty(copy)

    def fold(self, source: str, target: str, take_source: bool) -> None:
        """Bring a fork's topic back: a CRDT joins; a plain value is taken if ``take_source``."""
        theirs = self.topics.get(source)
        if theirs is None or theirs.state is None:
            return
        ours = self._topic(target, theirs.kind, create=True)
        assert ours is not None
        if ours.kind == LWW:
            if not take_source or ours.state == theirs.state:
                return
            previous = ours.stamp or (0, 0, "")
            ours.state = theirs.state
            ours.stamp = (max(previous[0], int(time.time() * 1000)), previous[1] + 1, HUB)
            payload: Any = ours.state
        else:
            joined = join(ours.state, theirs.state, full_state=True)
            if joined is ours.state:
                return
            ours.state = joined
            payload = wire.encode(theirs.state.state())
        frame: dict[str, Any] = {"t": PUB, "topic": target, "kind": ours.kind, "from": HUB}
        if ours.stamp is not None:
            frame["stamp"] = list(ours.stamp)
        self._relay(ours, None, wire.pack_frame(frame, payload))
        self._mark_dirty(ours)

    def list(self) -> list[dict[str, Any]]:
        return [t.info() for t in sorted(self.topics.values(), key=lambda t: t.name)]

    # -- state -------------------------------------------------------------------------

    def _topic(self, name: str, kind: str | None, create: bool) -> Topic | None:
        topic = self.topics.get(name)
        if topic is not None:
            if kind is not None and kind != topic.kind:
                raise errors.BadTopicKind(
                    f"topic {name!r} holds {_kind_name(topic.kind)}, not {_kind_name(kind)}: "
                    "use another topic name, or the same kind of value"
                )
            return topic
        if not create or kind is None:
            return None
        if len(self.topics) >= self.max_topics:
            raise errors.TooManyTopics(
                f"the hub holds {self.max_topics} topics already (c.SpindelHub.max_topics): "
                f"cannot create {name!r}"
            )
        if kind != LWW:
            try:
                crdt.type_for(kind)
            except KeyError as exc:
                raise errors.BadTopicKind(str(exc).strip("'\"")) from None
        topic = self.topics[name] = Topic(name, kind)
        # Mirrors that subscribed before anyone wrote now follow it.
        for member, mode in self._pending_mirrors.pop(name, {}).items():
            topic.followers[member] = mode
        return topic

    def _join(self, topic: Topic, member: Member, header: dict[str, Any], body: memoryview) -> bytes | None:
        """Integrate a joiner's state; return the hub's pre-join state if the joiner lacks any of it."""
        if topic.kind == LWW:
            before, before_stamp = topic.state, topic.stamp
            if body and header.get("stamp") is not None:
                stamp = _stamp(header["stamp"])
                if wins(stamp, before_stamp):
                    topic.state, topic.stamp = bytes(body), stamp
                    self._relay_state(topic, member)
                    return None
            return before if before is not None else None
        before = topic.state
        if body:
            theirs = _crdt_value(topic.kind, body)
            joined = join(before, theirs, full_state=True)
            if joined is not before:
                topic.state = joined
                self._relay_state(topic, member, body)
            if before is None or not lacks(theirs, before):
                return None
        return wire.encode(before.state()) if before is not None else None

    def _relay_state(self, topic: Topic, sender: Member, body: bytes | memoryview | None = None) -> None:
        frame: dict[str, Any] = {"t": PUB, "topic": topic.name, "kind": topic.kind, "from": sender.name}
        if topic.stamp is not None:
            frame["stamp"] = list(topic.stamp)
        payload = topic.state if topic.kind == LWW else body
        self._relay(topic, sender, wire.pack_frame(frame, payload))
        self._mark_dirty(topic)

    def _relay(self, topic: Topic, sender: Member | None, frame: bytes) -> None:
        for member, mode in topic.followers.items():
            if member is not sender and mode != "export":
                member.link.send(frame)
                self.relayed += 1

    # -- durability ----------------------------------------------------------------------

    def stored(self) -> Awaitable[None]:
        """Done once every change made so far is durable (an answer that names them can leave)."""
        if self.schedule is None or not (self._dirty or self._writing is not None):
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._request_flush()
        return waiter

    def _ack_later(self, member: Member, name: str, seq: int, topic: Topic, dirty: bool = False) -> None:
        key = (member, name)
        self._acks[key] = max(seq, self._acks.get(key, 0))
        if dirty:
            self._mark_dirty(topic)
        else:
            self._request_flush()

    def _mark_dirty(self, topic: Topic) -> None:
        self._dirty.add(topic)
        self._request_flush()

    def _request_flush(self) -> None:
        if self.schedule is None:
            self.flush()
        elif not self._flush_pending:
            self._flush_pending = True
            if self._writing is None:  # else the group under way schedules it, once durable
                self.schedule(FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        """Write every changed topic durably, then acknowledge the changes it holds.

        With a writer thread the files are written and fsynced there while the
        loop goes on relaying; changes arriving meanwhile form the next group,
        which starts ``FLUSH_DELAY`` after this one is durable (fsyncs back to
        back would slow the whole machine): a topic's file is never written by
        two groups at once, and nothing is acknowledged before its fsync.
        """
        if self._writing is not None:
            self._flush_pending = True
            return
        self._flush_pending = False
        dirty, self._dirty = self._dirty, set()
        acks, self._acks = self._acks, {}
        waiters, self._waiters = self._waiters, []
        changed, self._listing_changed = bool(dirty) or self._listing_changed, False
        records = [(topic, self._encode(topic)) for topic in dirty]
        files = [(self._path(topic), data) for topic, data in records] if self.directory is not None else []
        if self._writer is None or not files:
            error: OSError | None = None
            try:
                durable.write_files(files)
            except OSError as exc:
                error = exc
            self._written(dirty, acks, waiters, changed, error)
            return
        loop = asyncio.get_running_loop()

        def written(done: Future[None]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is left to acknowledge
                loop.call_soon_threadsafe(self._written, dirty, acks, waiters, changed, done.exception())

        self._writing = self._writer.submit(durable.write_files, files)
        self._writing.add_done_callback(written)

    def _written(
        self,
        dirty: set[Topic],
        acks: Acks,
        waiters: Waiters,
        changed: bool,
        error: BaseException | None,
    ) -> None:
        """A group is durable: acknowledge its changes. If it failed, they wait for the next group."""
        self._writing = None
        if error is None:
            if changed and self.on_change is not None:
                self.on_change()
            for (member, name), seq in acks.items():
                member.link.send(wire.pack_frame({"t": ACK, "topic": name, "seq": seq, "from": HUB}))
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        else:
            log.error("spindel: could not store topics, their changes stay unacknowledged: %s", error)
            self._dirty |= dirty
            for key, seq in acks.items():
                self._acks[key] = max(seq, self._acks.get(key, 0))
            self._waiters.extend(waiters)
        if self._flush_pending and self.schedule is not None:
            self.schedule(FLUSH_DELAY, self.flush)

    def close(self) -> None:
        """Write what is left now, after the group under way (at shutdown)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.shutdown(wait=True)
        self._writing = None
        self.flush()

    def _encode(self, topic: Topic) -> bytes:
        """The content of the topic's file; its size and summary are updated on the way."""
        record: dict[str, Any] = {"name": topic.name, "kind": topic.kind, "stamp": topic.stamp}
        record["state"] = topic.state if topic.kind == LWW else topic.state.state()
        data = wire.encode(record)
        topic.size = len(data)
        topic.summarize()
        return data

    def _path(self, topic: Topic) -> Path:
        assert self.directory is not None
        return self.directory / f"{hashlib.sha256(topic.name.encode()).hexdigest()[:40]}.topic"

    def _load(self) -> None:
        assert self.directory is not None
        durable.sweep(self.directory)
        for path in sorted(self.directory.glob("*.topic")):
            try:
                record = wire.decode(path.read_bytes())
                kind = record["kind"]
                state = record["state"] if kind == LWW else crdt.type_for(kind).from_state(record["state"])
                stamp = as_stamp(record["stamp"]) if record.get("stamp") is not None else None
                topic = Topic(record["name"], kind, state, stamp, size=path.stat().st_size)
                topic.summarize()
                self.topics[topic.name] = topic
            except Exception as exc:
                log.error("spindel: ignoring unreadable topic file %s: %s", path.name, exc)
                path.rename(path.with_suffix(".corrupt"))


def _stamp(value: Any) -> Stamp:
    try:
        return as_stamp(value)
    except ValueError as exc:
        raise errors.BadFrame(f"bad stamp: {exc}") from None


def _crdt_value(kind: str, body: memoryview) -> Any:
    try:
        return decode_state(kind, body)
    except (errors.DecodeError, ValueError, KeyError) as exc:
        raise errors.BadFrame(f"bad {kind} state: {exc}") from None


def _kind_name(kind: str) -> str:
    return "plain values (last writer wins)" if kind == LWW else f"{kind} values"
