"""The hub's topics: the joined state of every topic, relayed and kept durably.

The hub is the star relay of every topic (Spindel's ``:owner?`` role): it
applies each change it receives, forwards it to the other followers only if it
added something, and stores the topic's state - the joined state of a CRDT
topic, the winning write of a plain one - so a late joiner converges with every
writer offline and a restart loses nothing acknowledged.

On the server, the CRDT changes that arrive together (in one turn of the event
loop) are joined and relayed as one: a burst of writers costs each follower
one frame per turn, not one per change.

Storage costs in proportion to the change. A CRDT topic is a snapshot file of
its whole state plus a log of the changes since (:class:`~.durable.Log`):
changes are appended, and once the log outgrows the snapshot (or holds
:data:`COMPACT_RECORDS` records) the state is written whole again and the log
emptied, on the same writer thread. A plain topic is one value that every
write replaces: its file is written whole, as a log would only pile up
superseded values. Changes are written in groups and acknowledged once their
group is durable; on the server the group is written off the event loop (the
large states encoded there too), so the disk never holds up the relay.

Every topic belongs to a user, as its :class:`Scope` says: the user of the peer
that created it (stamped by the hub, never taken from the peer), who says
whether other users may write it too (``others``). The hub refuses a write of
another user to a topic shared read-only (:func:`~.access.check_topic_write`),
whether the writer is a peer of this hub or the change comes from another hub
of the mesh; the scope travels with the topic's state, here and in the mesh.

Topic files of earlier versions (a state in its former form, no log, no scope)
load as they are (with no owner: everyone's); the topic's next compaction
writes the current form.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core import crdt, errors, wire
from ..core.clock import HybridClock, Stamp, as_stamp
from ..core.protocol import ACK, ERROR, HUB, LWW, OTHERS, PUB, READ, SNAP, WRITE, to_wire
from ..core.replica import decode_state, join, join_all, lacks, wins
from . import durable
from .access import check_topic_mode, check_topic_write

if TYPE_CHECKING:
    from .relay import Member

log = logging.getLogger(__name__)

Schedule = Callable[[float, Callable[[], None]], Any]
Waiters = list["asyncio.Future[None]"]
#: The highest change number to acknowledge, per peer and topic.
Acks = dict[tuple["Member", str], int]
#: What the writer thread does for one topic of a group: write to the batch; the bytes of its file and log.
Job = Callable[[durable.Batch], tuple[int, int]]

#: How long changes may wait to be written together (seconds).
FLUSH_DELAY = 0.01
SUMMARY_CHARS = 80
#: A CRDT topic's log is compacted once it holds more bytes than its snapshot (at least these).
COMPACT_BYTES = 64 * 1024
#: ... or more records than this (each is replayed at start).
COMPACT_RECORDS = 10_000


@dataclass(frozen=True)
class Scope:
    """Whose a topic is: its owner's user, whether other users read it or write it too, when it was
    created and when its owner last said so (hub stamps)."""

    owner: str = ""
    others: str = WRITE
    created: Stamp | None = None
    moded: Stamp | None = None

    def merged(self, other: Scope) -> Scope:
        """The scope every hub ends with, whatever the order it hears of both: the earliest creation
        owns the topic (two hubs may create it at once); its owner's latest word on others holds."""
        if other.created is not None and (self.created is None or other.created < self.created):
            return other
        same = (other.created, other.owner) == (self.created, self.owner)
        if not same or other.moded is None:
            return self
        # Two words stamped alike (one hub never stamps two) end alike everywhere: read-only wins.
        tie = other.moded == self.moded and other.others == READ
        if not (wins(other.moded, self.moded) or tie):
            return self
        return replace(self, others=other.others, moded=other.moded)

    def to_wire(self) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "others": self.others,
            "created": list(self.created) if self.created else None,
            "moded": list(self.moded) if self.moded else None,
        }

    @classmethod
    def from_wire(cls, data: Any) -> Scope:
        """A scope sent by another hub or stored; raises BadFrame if it is not one."""
        if data is None:
            return cls()
        try:
            owner, others = data["owner"], data["others"]
            if not isinstance(owner, str) or others not in OTHERS:
                raise ValueError("owner must be a user name, others read or write")
            created, moded = (as_stamp(data[key]) if data.get(key) else None for key in ("created", "moded"))
        except (TypeError, KeyError, ValueError) as exc:
            raise errors.BadFrame(f"bad topic scope: {exc}") from None
        return cls(owner, others, created, moded)


@dataclass(eq=False)
class Topic:
    """One topic as the hub holds it."""

    name: str
    kind: str
    #: CRDT topics: the joined value. Plain topics: the winning write's encoded value.
    state: Any = None
    stamp: Stamp | None = None
    followers: dict[Member, str] = field(default_factory=dict)
    #: Bytes stored: the file, and the log of a CRDT topic.
    size: int = 0
    #: CRDT topics with storage: the log of changes since the snapshot, and the snapshot's size.
    log: durable.Log | None = None
    snapshot_size: int = 0
    #: The next write is the whole state (a new topic, or after a failed write).
    snapshot_due: bool = False
    #: Encoded changes to append at the next write.
    records: list[wire.Buffer] = field(default_factory=list)
    #: Changes received in this turn of the event loop, to join and relay as one: (sender, seq, delta, body).
    incoming: list[tuple[Member, int, Any, wire.Buffer]] = field(default_factory=list)
    scope: Scope = field(default_factory=Scope)
    #: The user whose change the state took last (the mesh carries it with the state).
    writer: str = ""
    _summary: tuple[Any, str] = (None, "")

    def check_write(self, user: str) -> None:
        """Pass if ``user`` may write this topic; raise NotWritable saying whose it is otherwise."""
        check_topic_write(self.name, self.scope.owner, self.scope.others, user)

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "owner": self.scope.owner,
            "others": self.scope.others,
            "subscribers": len(self.followers),
            "size": self.size,
            "summary": self.summary(),
        }

    def summary(self) -> str:
        """A short text of the current value, for peer lists and panels (made again only once it changed)."""
        state, text = self._summary
        if state is self.state:
            return text
        if self.state is None:
            return ""
        try:
            value = wire.decode(self.state) if self.kind == LWW else self.state
            text = repr(value)
        except Exception:
            text = "(unreadable)"
        text = text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 1] + "…"
        self._summary = (self.state, text)
        return text


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
        #: Topics with changes of this turn of the loop, joined and relayed at its end (see :meth:`_settle`).
        self._unsettled: dict[Topic, None] = {}
        #: With a schedule (the server's event loop), groups are written on this thread, one at a time.
        self._writer = ThreadPoolExecutor(1, "spindel-topics") if schedule and directory is not None else None
        self._writing: Future[list[tuple[int, int]]] | None = None
        #: Who waits for the changes made so far to be durable (see :meth:`stored`).
        self._waiters: Waiters = []
        #: Called after changes are stored, when the topic list or a value changed.
        self.on_change: Callable[[], None] | None = None
        #: Called with each change made here (not one from another hub): the topic, and the CRDT
        #: change that made it (None: the topic's state as a whole, as for every plain topic).
        self.on_local_change: Callable[[Topic, wire.Buffer | None], None] | None = None
        #: Changes received and frames relayed, for /spindel/api/stats.
        self.received = 0
        self.relayed = 0
        #: Mirrors of topics nobody has written yet: they follow once the topic exists.
        self._pending_mirrors: dict[str, dict[Member, str]] = {}
        #: Stamps the creation of topics and their owners' changes to who else writes them.
        self.clock = HybridClock(node=HUB)
        #: Writes refused because the topic is another user's, shared read-only (here and from the mesh).
        self.refused = 0
        if directory is not None:
            durable.make_directory(directory)
            self._load()

    # -- frames from peers ---------------------------------------------------------

    def subscribe(self, member: Member, header: dict[str, Any], body: memoryview) -> None:
        """Follow a topic; integrate the joiner's state and answer with what it lacks."""
        name, request_id, mode = header["topic"], header["id"], header["mode"]
        try:
            others = header.get("others")
            scope = self._new_scope(member.user, others or (READ if mode == "export" else WRITE))
            topic = self._topic(name, header.get("kind"), create=mode != "mirror", scope=scope)
            snapshot: dict[str, Any] = {"t": SNAP, "re": request_id, "topic": name, "from": HUB}
            if topic is not None and others is not None and others != topic.scope.others:
                self._share(topic, others, member.user)
            if topic is not None and mode != "mirror":
                topic.check_write(member.user)  # a follower that writes: refused before it follows
            if topic is None:
                member.subscriptions.add(name)
                self._pending_mirrors.setdefault(name, {})[member] = mode
                member.link.send(wire.pack_frame({**snapshot, "kind": None}))
                return
            self._settle(topic)
            topic.followers[member] = mode
            member.subscriptions.add(name)
            self._followers_changed()
            reply = self._join(topic, member, header, body)
            if body and isinstance(header.get("seq"), int):
                self._ack_later(member, name, header["seq"])
            snapshot.update(kind=topic.kind, owner=topic.scope.owner, others=topic.scope.others)
            if reply is not None:
                if topic.stamp is not None:
                    snapshot["stamp"] = list(topic.stamp)
                member.link.send(wire.pack_frame(snapshot, reply))
            else:
                member.link.send(wire.pack_frame(snapshot))
        except (errors.HubError, errors.NotWritable) as exc:
            error = {**to_wire(exc), "topic": name}
            member.link.send(wire.pack_frame({"t": SNAP, "re": request_id, "topic": name, "error": error}))

    def _new_scope(self, user: str, others: str) -> Scope:
        """The scope of a topic ``user`` creates now."""
        now = self.clock.now()
        return Scope(user, others, now, now)

    def _share(self, topic: Topic, others: str, user: str) -> None:
        """The owner says who else may write ``topic`` now (only its owner's user may)."""
        check_topic_mode(topic.name, topic.scope.owner, user)
        topic.scope = replace(topic.scope, others=others, moded=self.clock.now())
        topic.snapshot_due = True  # the scope is in the file written whole
        topic.writer = user
        self._changed(topic, None)
        self._listing_changed = True

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
        """A peer's local change: apply it, relay it if it added something, store it.

        A CRDT change waits for the end of this turn of the event loop, joined
        with the others that arrived meanwhile (see :meth:`_settle`); without an
        event loop it is applied at once.
        """
        name = header["topic"]
        self.received += 1
        topic = self._topic(name, header["kind"], create=True, scope=self._new_scope(member.user, WRITE))
        assert topic is not None
        try:
            topic.check_write(member.user)
        except errors.NotWritable as exc:
            self.refused += 1
            log.info("spindel: refused a change of %r to topic %r: %s", member.name, name, exc)
            member.link.send(wire.pack_frame({"t": ERROR, "from": HUB, "topic": name, **to_wire(exc)}))
            return
        topic.writer = member.user
        if topic.kind != LWW:
            topic.incoming.append((member, header["seq"], _crdt_value(topic.kind, body), body))
            if self.schedule is None:
                self._settle(topic)
                self._request_flush()
            elif not self._unsettled:
                self._unsettled[topic] = None
                self.schedule(0, self._settle_all)
            else:
                self._unsettled[topic] = None
            return
        self._write(topic, header.get("stamp"), body, member, member.name)
        self._ack_later(member, name, header["seq"])

    def merge_remote(
        self,
        name: str,
        kind: str,
        stamp: Any,
        body: wire.Buffer,
        sender: str,
        full_state: bool = False,
        scope: Scope | None = None,
        user: str = "",
    ) -> bool:
        """A change made on another hub of the mesh (``full_state``: its whole state) by ``user``, with
        that hub's ``scope`` of the topic: take the scope, then apply the change if ``user`` may
        write the topic, and relay it to every follower here only if it adds something. Whether it
        did (no body: only the scope came).

        Applying the same change twice does nothing the second time: no follower
        hears of it again, no observer fires twice. A change the topic's owner
        did not let ``user`` make is refused here as at the hub that took it
        (which should not have): logged and counted, never applied.
        """
        topic = self._topic(name, kind, create=True, scope=scope, local=False)
        assert topic is not None
        merged = topic.scope.merged(scope or Scope())
        if merged != topic.scope:
            topic.scope, topic.snapshot_due = merged, True
            self._listing_changed = True
            self._changed(topic, None, local=False)
        if not body:
            return False
        try:
            topic.check_write(user)
        except errors.NotWritable as exc:
            self.refused += 1
            log.warning("spindel: refused a change to topic %r from the mesh: %s", name, exc)
            return False
        if topic.kind == LWW:
            return self._write(topic, stamp, body, None, sender, user)
        self._settle(topic)  # after the changes of this hub's peers already received
        joined = join(topic.state, _crdt_value(topic.kind, body), full_state)
        if joined is topic.state:
            return False
        topic.state, topic.writer = joined, user
        frame = {"t": PUB, "topic": name, "kind": topic.kind, "from": sender}
        self._relay(topic, None, wire.pack_frame(frame, body))
        self._changed(topic, body, local=False)
        return True

    def _write(
        self, topic: Topic, stamp: Any, body: wire.Buffer, member: Member | None, sender: str, user: str = ""
    ) -> bool:
        """A plain topic's write, by ``member`` here or (None) by ``user`` on another hub: taken and
        relayed to the other followers if its stamp wins. Whether it did."""
        stamped = _stamp(stamp)
        if not wins(stamped, topic.stamp):
            return False
        topic.state, topic.stamp = bytes(body), stamped
        topic.writer = member.user if member is not None else user
        frame = {"t": PUB, "topic": topic.name, "kind": topic.kind, "from": sender, "stamp": list(stamped)}
        self._relay(topic, member, wire.pack_frame(frame, body))
        self._changed(topic, None, local=member is not None)
        return True

    def _settle_all(self) -> None:
        settled = bool(self._unsettled)
        while self._unsettled:
            topic = next(iter(self._unsettled))
            del self._unsettled[topic]
            self._settle(topic)
        if settled:
            self._request_flush()

    def _settle(self, topic: Topic) -> None:
        """Join a topic's changes received in this turn, apply them, relay them as one if they add anything.

        The relayed frame carries a lone change's own bytes, or the join of several,
        encoded once. It goes to every follower but its sender; a join of several
        peers' changes goes to every follower (a sender's own change adds nothing there).
        The changes are acknowledged once the state that holds them is durable.
        """
        incoming, topic.incoming = topic.incoming, []
        if not incoming:
            return
        deltas = [delta for _, _, delta, _ in incoming]
        change = deltas[0] if len(deltas) == 1 else join_all(deltas)
        joined = join(topic.state, change)
        for member, seq, _, _ in incoming:
            self._acks[(member, topic.name)] = max(seq, self._acks.get((member, topic.name), 0))
        if joined is topic.state:
            return
        topic.state = joined
        topic.writer = incoming[-1][0].user  # each was checked on arrival: any of them may write it
        senders = {member for member, _, _, _ in incoming}
        sender = senders.pop() if len(senders) == 1 else None
        body = incoming[0][3] if len(incoming) == 1 else wire.encode(change.state())
        frame = {"t": PUB, "topic": topic.name, "kind": topic.kind, "from": sender.name if sender else HUB}
        self._relay(topic, sender, wire.pack_frame(frame, body))
        self._changed(topic, body)

    def states(self, names: list[str]) -> dict[str, Any]:
        """The current state of each named topic the hub holds, for a workspace commit."""
        self._settle_all()
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
        self._settle_all()
        topic = self.topics.get(name)
        if topic is None or topic.state is None:
            return None
        return topic.summary()

    def copy(self, source: str, target: str, user: str = "") -> None:
        """Start topic ``target`` as ``source`` is now (a fork's own copy of a workspace topic), as
        ``user``'s, shared with other users as ``source`` is."""
        self._settle_all()
        original = self.topics.get(source)
        if original is None or original.state is None or target in self.topics:
            return
        self._topic(target, original.kind, create=True, scope=self._new_scope(user, original.scope.others))
        copy = self.topics[target]
        copy.state, copy.stamp, copy.writer = original.state, original.stamp, user
        self._changed(copy, None)

    def check_write(self, name: str, user: str) -> None:
        """Pass if ``user`` may write topic ``name`` (one nobody holds yet included)."""
        topic = self.topics.get(name)
        if topic is not None:
            topic.check_write(user)

    def fold(self, source: str, target: str, take_source: bool, user: str = "") -> bool:
        """Bring a fork's topic back, for ``user`` (see :meth:`check_write`): a CRDT joins; a plain
        value is taken if ``take_source``. Whether that changed it."""
        self._settle_all()
        theirs = self.topics.get(source)
        if theirs is None or theirs.state is None:
            return False
        ours = self._topic(target, theirs.kind, create=True, scope=self._new_scope(user, WRITE))
        assert ours is not None
        ours.writer = user
        if ours.kind == LWW:
            if not take_source or ours.state == theirs.state:
                return False
            previous = ours.stamp or (0, 0, "")
            ours.state = theirs.state
            ours.stamp = (max(previous[0], int(time.time() * 1000)), previous[1] + 1, HUB)
            payload: Any = ours.state
        else:
            joined = join(ours.state, theirs.state, full_state=True)
            if joined is ours.state:
                return False
            ours.state = joined
            payload = wire.encode(theirs.state.state())
        frame: dict[str, Any] = {"t": PUB, "topic": target, "kind": ours.kind, "from": HUB}
        if ours.stamp is not None:
            frame["stamp"] = list(ours.stamp)
        self._relay(ours, None, wire.pack_frame(frame, payload))
        self._changed(ours, payload)
        return True

    def list(self) -> list[dict[str, Any]]:
        self._settle_all()
        return [t.info() for t in sorted(self.topics.values(), key=lambda t: t.name)]

    # -- state -------------------------------------------------------------------------

    def _topic(
        self, name: str, kind: str | None, create: bool, scope: Scope | None = None, local: bool = True
    ) -> Topic | None:
        """Topic ``name``, made with ``scope`` if it is new and ``create`` (``local``: by a peer of this
        hub; the mesh hears of it at once, whose it is included, even before it holds a value)."""
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
        topic = self.topics[name] = Topic(name, kind, snapshot_due=True, scope=scope or Scope())
        topic.writer = topic.scope.owner
        if kind != LWW and self.directory is not None:
            topic.log = durable.Log(self._path(topic).with_suffix(".log"))
        # Mirrors that subscribed before anyone wrote now follow it.
        for member, mode in self._pending_mirrors.pop(name, {}).items():
            topic.followers[member] = mode
        if local and self.on_local_change is not None:
            self.on_local_change(topic, None)  # stored with its first value; the mesh hears of it now
        return topic

    def _join(self, topic: Topic, member: Member, header: dict[str, Any], body: memoryview) -> bytes | None:
        """Integrate a joiner's state; return the hub's pre-join state if the joiner lacks any of it."""
        if topic.kind == LWW:
            before, before_stamp = topic.state, topic.stamp
            if body and header.get("stamp") is not None:
                stamp = _stamp(header["stamp"])
                if wins(stamp, before_stamp):
                    topic.state, topic.stamp, topic.writer = bytes(body), stamp, member.user
                    self._relay_state(topic, member)
                    return None
            return before if before is not None else None
        before = topic.state
        if body:
            theirs = _crdt_value(topic.kind, body)
            joined = join(before, theirs, full_state=True)
            if joined is not before:
                topic.state, topic.writer = joined, member.user
                self._relay_state(topic, member, body)
            if before is None or not lacks(theirs, before):
                return None
        return wire.encode(before.state()) if before is not None else None

    def _relay_state(self, topic: Topic, sender: Member, body: wire.Buffer | None = None) -> None:
        frame: dict[str, Any] = {"t": PUB, "topic": topic.name, "kind": topic.kind, "from": sender.name}
        if topic.stamp is not None:
            frame["stamp"] = list(topic.stamp)
        payload = topic.state if topic.kind == LWW else body
        self._relay(topic, sender, wire.pack_frame(frame, payload))
        self._changed(topic, body)

    def _relay(self, topic: Topic, sender: Member | None, frame: bytes) -> None:
        for member, mode in topic.followers.items():
            if member is not sender and mode != "export":
                member.link.send(frame)
                self.relayed += 1

    def _changed(self, topic: Topic, body: wire.Buffer | None, local: bool = True) -> None:
        """The topic's state changed: a CRDT's by joining ``body`` (to log), a plain one's whole;
        ``local``: here, not on another hub."""
        if topic.log is not None and body is not None:
            topic.records.append(body)
        self._mark_dirty(topic)
        if local and self.on_local_change is not None:
            self.on_local_change(topic, body)

    # -- durability ----------------------------------------------------------------------

    def stored(self) -> Awaitable[None]:
        """Done once every change made so far is durable (an answer that names them can leave)."""
        self._settle_all()
        if self.schedule is None or not (self._dirty or self._writing is not None):
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._request_flush()
        return waiter

    def _ack_later(self, member: Member, name: str, seq: int) -> None:
        key = (member, name)
        self._acks[key] = max(seq, self._acks.get(key, 0))
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
        back would slow the whole machine): a topic's files are never written by
        two groups at once, and nothing is acknowledged before its fsync.
        """
        if self._writing is not None:
            self._flush_pending = True
            return
        self._settle_all()  # every change acknowledged below is in the state written
        self._flush_pending = False
        dirty, self._dirty = self._dirty, set()
        acks, self._acks = self._acks, {}
        waiters, self._waiters = self._waiters, []
        changed, self._listing_changed = bool(dirty) or self._listing_changed, False
        topics = list(dirty) if self.directory is not None else []
        jobs = [self._job(topic) for topic in topics]
        if self._writer is None or not jobs:
            error: OSError | None = None
            sizes: list[tuple[int, int]] = []
            try:
                sizes = _write_group(jobs)
            except OSError as exc:
                error = exc
            self._written(topics, sizes, acks, waiters, changed, error)
            return
        loop = asyncio.get_running_loop()

        def written(done: Future[list[tuple[int, int]]]) -> None:
            error = done.exception()
            sizes = done.result() if error is None else []
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is left to acknowledge
                loop.call_soon_threadsafe(self._written, topics, sizes, acks, waiters, changed, error)

        self._writing = self._writer.submit(_write_group, jobs)
        self._writing.add_done_callback(written)

    def _written(
        self,
        topics: Sequence[Topic],
        sizes: Sequence[tuple[int, int]],
        acks: Acks,
        waiters: Waiters,
        changed: bool,
        error: BaseException | None,
    ) -> None:
        """A group is durable: acknowledge its changes. If it failed, they wait for the next group."""
        self._writing = None
        if error is None:
            for topic, (snapshot, changes) in zip(topics, sizes, strict=True):
                topic.snapshot_size, topic.size = snapshot, snapshot + changes
            if changed and self.on_change is not None:
                self.on_change()
            for (member, name), seq in acks.items():
                member.link.send(wire.pack_frame({"t": ACK, "topic": name, "seq": seq, "from": HUB}))
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        else:
            log.error("spindel: could not store topics, their changes stay unacknowledged: %s", error)
            for topic in topics:  # written whole next time: what a failed append left is then moot
                topic.snapshot_due, topic.records = True, []
            self._dirty |= set(topics)
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

    def _job(self, topic: Topic) -> Job:
        """What the writer thread does for ``topic``: append its changes to its log, or write it whole.

        Decided here, on the loop, from values that no longer change (states are
        immutable): the writer encodes and writes them while the loop goes on.
        """
        path, name, kind, stamp, state = self._path(topic), topic.name, topic.kind, topic.stamp, topic.state
        scope, writer = topic.scope, topic.writer
        records, topic.records = topic.records, []
        topic_log = topic.log
        if topic_log is not None and not topic.snapshot_due:
            pending = sum(len(record) + durable.RECORD.size for record in records)
            if (
                topic_log.size + pending <= max(COMPACT_BYTES, topic.snapshot_size)
                and topic_log.records + len(records) <= COMPACT_RECORDS
            ):
                snapshot = topic.snapshot_size

                def append(batch: durable.Batch) -> tuple[int, int]:
                    batch.append(topic_log, [bytes(record) for record in records])
                    return snapshot, topic_log.size

                return append
        topic.snapshot_due = False

        def whole(batch: durable.Batch) -> tuple[int, int]:
            data = _file_content(name, kind, stamp, state, scope, writer)
            batch.write(path, data)
            if topic_log is not None:
                batch.reset_after_sync(topic_log)
            return len(data), 0

        return whole

    def _path(self, topic: Topic) -> Path:
        assert self.directory is not None
        return self.directory / f"{hashlib.sha256(topic.name.encode()).hexdigest()[:40]}.topic"

    def _load(self) -> None:
        assert self.directory is not None
        durable.sweep(self.directory)
        for path in sorted(self.directory.glob("*.topic")):
            changes = durable.Log(path.with_suffix(".log"))
            try:
                record = wire.decode(path.read_bytes())
                kind = record["kind"]
                state = record["state"]
                if kind != LWW and state is not None:
                    state = crdt.type_for(kind).from_state(state)
                stamp = as_stamp(record["stamp"]) if record.get("stamp") is not None else None
                snapshot = path.stat().st_size
                topic = Topic(record["name"], kind, state, stamp, snapshot_size=snapshot, size=snapshot)
                topic.scope = Scope.from_wire(record.get("scope"))
                topic.writer = str(record.get("writer", ""))
                if kind != LWW:
                    deltas = [decode_state(kind, payload) for payload in changes.read()]
                    if deltas:
                        topic.state = join(state, join_all(deltas))
                    topic.log, topic.size = changes, snapshot + changes.size
                self.topics[topic.name] = topic
            except Exception as exc:
                log.error("spindel: ignoring unreadable topic file %s: %s", path.name, exc)
                path.rename(path.with_suffix(".corrupt"))
                if changes.path.exists():
                    changes.path.rename(path.with_suffix(".log.corrupt"))


def _write_group(jobs: list[Job]) -> list[tuple[int, int]]:
    """Run a group's jobs and make them durable together; the bytes of each topic's file and log."""
    batch = durable.Batch()
    sizes = [job(batch) for job in jobs]
    batch.sync()
    return sizes


def _file_content(name: str, kind: str, stamp: Stamp | None, state: Any, scope: Scope, writer: str) -> bytes:
    """A topic's file: its name, kind, stamp, whole state (a plain topic's is its encoded value; None
    before anyone wrote), scope and last writer's user."""
    return wire.encode(
        {
            "name": name,
            "kind": kind,
            "stamp": stamp,
            "state": state if kind == LWW or state is None else state.state(),
            "scope": scope.to_wire(),
            "writer": writer,
        }
    )


def _stamp(value: Any) -> Stamp:
    try:
        return as_stamp(value)
    except ValueError as exc:
        raise errors.BadFrame(f"bad stamp: {exc}") from None


def _crdt_value(kind: str, body: wire.Buffer) -> Any:
    try:
        return decode_state(kind, body)
    except (errors.DecodeError, ValueError, KeyError) as exc:
        raise errors.BadFrame(f"bad {kind} state: {exc}") from None


def _kind_name(kind: str) -> str:
    return "plain values (last writer wins)" if kind == LWW else f"{kind} values"
