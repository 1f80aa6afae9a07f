"""Replicas of topics, alone and syncing through the hub's real topic logic over in-memory channels."""

from __future__ import annotations

import itertools
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spindel_jupyter.core import crdt, wire
from spindel_jupyter.core.clock import HybridClock
from spindel_jupyter.core.crdt import GSet, LWWMap, ORSet, PNCounter
from spindel_jupyter.core.protocol import ACK, LWW, PUB, SNAP
from spindel_jupyter.core.replica import Change, Frame, Replica, wins
from spindel_jupyter.core.signals import changed
from spindel_jupyter.hub.relay import Relay
from spindel_jupyter.hub.topics import TopicStore


def replica(kind: str | None, peer: str = "alice", wall: int = 1000, mode: str = "sync") -> Replica:
    return Replica("t", mode, kind, HybridClock(peer, wall=lambda: wall), lambda: peer)


def published(frame: Frame | None) -> Change:
    """A frame as the hub relays it (its body as bytes)."""
    assert frame is not None and frame[1] is not None
    return frame[0], frame[1]


# -- one replica -----------------------------------------------------------------------


def test_a_plain_write_is_stamped_by_the_injected_clock_under_the_peer_name() -> None:
    writer = replica(None, peer="alice", wall=5)
    (header, body), kept = writer.publish({"x": 1})
    assert header == {"t": PUB, "topic": "t", "kind": LWW, "stamp": [5, 0, "alice"], "seq": 1}
    assert wire.decode(body) == {"x": 1} and kept == {"x": 1} and writer.stamp == (5, 0, "alice")


def test_plain_writes_at_equal_times_go_to_the_greater_peer_name_in_any_order() -> None:
    alice, bob = replica(LWW, "alice"), replica(LWW, "bob")
    from_alice, _ = alice.publish("a")
    from_bob, _ = bob.publish("b")
    for order in ([from_alice, from_bob], [from_bob, from_alice]):
        reader = replica(LWW, "carol")
        value = None
        for frame in order:
            value = reader.apply(value, [published(frame)])
        assert value == "b" and reader.stamp == (1000, 0, "bob")
    assert wins((1000, 0, "bob"), (1000, 0, "alice")) and not wins((1000, 0, "bob"), (1000, 0, "bob"))


def test_a_plain_write_after_seeing_another_wins_over_it_whatever_the_clocks() -> None:
    ahead, behind = replica(LWW, "ahead", wall=9000), replica(LWW, "behind", wall=10)
    seen = behind.apply(None, [published(ahead.publish("first")[0])])
    frame, _ = behind.publish("second")
    assert seen == "first" and ahead.apply("first", [published(frame)]) == "second"


def test_a_crdt_write_sends_its_delta_and_keeps_nothing_pending() -> None:
    writer = replica("gset")
    big = GSet(range(100)).clear_delta()
    (header, body), kept = writer.publish(big.add("new"))
    assert header["kind"] == "gset" and GSet.from_state(wire.decode(body)) == {"new"}
    assert kept.delta() is None and kept == big | {"new"}
    assert writer.publish(kept) == (None, kept)  # nothing pending: nothing to send


def test_a_no_op_apply_returns_the_value_itself() -> None:
    reader = replica("gset")
    value = GSet(["x"]).clear_delta()
    again = GSet(["x"]).delta()
    assert again is not None
    assert reader.apply(value, [({"kind": "gset"}, wire.encode(again.state()))]) is value
    plain = replica(LWW)
    current = plain.apply(None, [({"kind": LWW, "stamp": [1, 0, "a"]}, wire.encode([1, 2]))])
    later_but_equal = ({"kind": LWW, "stamp": [2, 0, "a"]}, wire.encode([1, 2]))
    assert plain.apply(current, [later_but_equal]) is current and plain.stamp == (2, 0, "a")


def test_the_handshake_ships_the_state_only_when_the_replica_has_one() -> None:
    plain = replica(None)
    assert plain.handshake(1, None)[1] is None
    plain.publish("written while disconnected")
    header, body = plain.handshake(2, "written while disconnected")
    assert header["stamp"] == [1000, 0, "alice"] and header["seq"] == 1 and header["kind"] == LWW
    assert body is not None and wire.decode(body) == "written while disconnected"
    assert replica(LWW).handshake(3, "a starting value, never written")[1] is None
    assert replica(None, mode="mirror").handshake(4, "anything")[1] is None
    header, body = replica("orset").handshake(5, ORSet(["x"]))
    assert body is not None and ORSet.from_state(wire.decode(body)) == {"x"}


def test_writes_are_pending_until_the_hub_acknowledges_them() -> None:
    writer = replica(LWW)
    writer.publish(1)
    writer.publish(2)
    writer.acknowledge(1)
    assert writer.pending
    writer.acknowledge(2)
    writer.acknowledge(1)  # an older ack, late
    assert not writer.pending


# -- replicas and the hub over misbehaving channels ----------------------------------------

#: The topics every peer follows, and what a syncing peer starts with.
TOPICS: dict[str, Callable[[], Any]] = {
    "plain": lambda: None,
    "set": ORSet,
    "count": PNCounter,
    "map": LWWMap,
}


class Connection:
    """One connection of a peer to the hub: a queue of frames each way, each delivered in order.

    The hub's end is a :class:`~spindel_jupyter.hub.relay.Link`: it writes to the queue toward the peer.
    """

    def __init__(self, relay: Relay) -> None:
        self.up: deque[bytes] = deque()
        self.down: deque[bytes] = deque()
        self.alive = True
        self.member = relay.connect(self)

    def send(self, frame: bytes, body: wire.Buffer = b"") -> None:
        if self.alive:
            self.down.append(bytes(frame) + bytes(body))

    def close(self, code: int, reason: str) -> None:
        self.die()

    def die(self) -> None:
        """The connection is lost, and with it whatever is in flight either way."""
        self.alive = False
        self.up.clear()
        self.down.clear()


class Peer:
    """A peer as :mod:`spindel_jupyter.peer.sync` makes one: per topic, its replica and a value (a Signal's).

    Counts, per topic, the calls its observers would get and the real changes of the value.
    """

    def __init__(self, name: str, mode: str, relay: Relay, wall: Callable[[], int]) -> None:
        self.name = name
        self.relay = relay
        clock = HybridClock(name, wall=wall)
        self.values: dict[str, Any] = {t: start() if mode == "sync" else None for t, start in TOPICS.items()}
        self.replicas = {
            topic: Replica(topic, mode, value.type_name if value is not None else None, clock, lambda: name)
            for topic, value in self.values.items()
        }
        self.observed: Counter[str] = Counter()
        self.changes: Counter[str] = Counter()
        self.connection: Connection | None = None
        #: Frames that crossed each way so far (on any connection): what a duplicate is made of.
        self.delivered: dict[str, list[bytes]] = {"up": [], "down": []}
        self._ids = itertools.count(1)

    def connect(self) -> None:
        """A (re)connection, as the real peer makes one: hello, then each topic's handshake, not waiting."""
        self.connection = Connection(self.relay)
        hello = {"t": "hello", "name": self.name, "kind": "script", "session": self.name}
        self.connection.up.append(wire.pack_frame(hello))
        for topic, replica in self.replicas.items():
            self.send(replica.handshake(next(self._ids), self.values[topic]))

    def disconnect(self, hub_notices: bool) -> None:
        """The connection dies; the hub notices now, or only when this peer says hello again."""
        assert self.connection is not None
        self.connection.die()
        if hub_notices:
            self.relay.disconnect(self.connection.member)
        self.connection = None

    def send(self, frame: Frame) -> None:
        if self.connection is not None:  # the real peer drops frames while disconnected
            self.connection.up.append(wire.pack_frame(*frame))

    def write(self, topic: str, change: Callable[[Any], Any], hold: bool = False) -> None:
        """A local write, as ``Signal.update`` makes it with the replica as the signal's writer.

        ``hold``: held back, as the peer holds a write that comes in a burst.
        """
        old = self.values[topic]
        with crdt.replica(self.name):
            new = change(old)
        if changed(old, new):
            frame, self.values[topic] = self.replicas[topic].publish(new, hold=hold)
            if frame is not None:
                self.send(frame)

    def release(self) -> None:
        """Send the writes held back, each topic's as one frame (as the connection thread does)."""
        for replica in self.replicas.values():
            frame = replica.release()
            if frame is not None:
                self.send(frame)

    def receive(self, frames: list[bytes]) -> None:
        """Frames that arrived together, taken as peer/sync.py takes them.

        A topic's pubs among them are applied as one batch, where the first of them
        arrived; snapshots one by one.
        """
        steps: list[tuple[str, list[Change], bool]] = []
        batches: dict[str, list[Change]] = {}
        for data in frames:
            header, body = wire.unpack_frame(data)
            assert header["t"] != "error" and "error" not in header, header
            topic, change = header.get("topic"), (header, body.tobytes())
            if header["t"] == PUB:
                if topic not in batches:
                    batches[topic] = []
                    steps.append((topic, batches[topic], False))
                batches[topic].append(change)
            elif header["t"] == SNAP:
                steps.append((topic, [change], True))
            elif header["t"] == ACK:
                self.replicas[topic].acknowledge(header["seq"])
        for topic, changes, full_state in steps:
            current = self.values[topic]
            value = self.replicas[topic].apply(current, changes, full_state)
            if value is not current:  # peer/sync.py tells the signal, which calls its observers
                self.observed[topic] += 1
                self.values[topic] = value
            if content(value) != content(current):
                self.changes[topic] += 1


def content(value: Any) -> Any:
    """What a value holds, to tell a real change: a CRDT's whole state (causal context and tombstones too)."""
    return value.state() if crdt.is_convergent(value) else value


def hub_copy(relay: Relay, topic: str) -> tuple[Any, Any]:
    """The hub's value of a topic and its stamp."""
    held = relay.topics.topics.get(topic)
    if held is None or held.state is None:
        return None, None
    return (wire.decode(held.state) if held.kind == LWW else held.state), held.stamp


def change_for(write: tuple[Any, ...]) -> tuple[str, Callable[[Any], Any]]:
    """The topic and the change of a drawn write."""
    topic, *args = write
    if topic == "plain":
        return topic, lambda _: args[0]
    method, *arguments = args
    return topic, lambda value: getattr(value, method)(*arguments)


# Plain values decode to new objects (no small ints or one-letter strings), so that taking an
# equal value would show as an observer call.
WRITES = st.one_of(
    st.tuples(st.just("plain"), st.sampled_from(["red", "blue", (1, "red")])),
    st.tuples(st.just("set"), st.sampled_from(["add", "remove"]), st.sampled_from("abc")),
    st.tuples(st.just("count"), st.sampled_from(["increment", "decrement"]), st.integers(0, 3)),
    st.tuples(st.just("map"), st.just("set"), st.sampled_from("kl"), st.integers(0, 2)),
    st.tuples(st.just("map"), st.just("delete"), st.sampled_from("kl")),
)
WHO = st.integers(0, 3)
WRITE = st.tuples(st.just("write"), WHO, WRITES, st.booleans())
DELIVER = st.tuples(st.sampled_from(["up", "down"]), WHO, st.integers(1, 4))
STEPS = st.one_of(
    WRITE,
    WRITE,
    DELIVER,
    DELIVER,
    st.tuples(st.just("duplicate"), WHO, st.sampled_from(["up", "down"]), st.integers(0, 1000)),
    st.tuples(st.just("disconnect"), WHO, st.booleans()),
    st.tuples(st.just("reconnect"), WHO),
    st.tuples(st.just("release"), WHO),
    st.tuples(st.just("tick"), st.integers(0, 2)),
)


@dataclass
class Schedule:
    """Who takes part, and what happens in which order."""

    #: Peers that sync and write; one more, if there are more skews, mirrors every topic.
    writers: int
    #: How far each peer's wall clock runs ahead (ms): equal clocks make equal stamp times, broken by name.
    skews: list[int]
    connected: list[bool]
    steps: list[tuple[Any, ...]]


@st.composite
def schedules(draw: st.DrawFn) -> Schedule:
    writers = draw(st.integers(2, 3))
    peers = writers + draw(st.integers(0, 1))
    return Schedule(
        writers,
        draw(st.lists(st.integers(0, 2), min_size=peers, max_size=peers)),
        draw(st.lists(st.booleans(), min_size=peers, max_size=peers)),
        draw(st.lists(STEPS, min_size=10, max_size=60)),
    )


def deliver_up(relay: Relay, peer: Peer, count: int) -> None:
    connection = peer.connection
    while connection is not None and connection.up and count > 0:
        data = connection.up.popleft()
        if wire.unpack_frame(data)[0]["t"] != "hello":
            peer.delivered["up"].append(data)
        relay.receive(connection.member, data)
        count -= 1


def deliver_down(peer: Peer, count: int) -> None:
    connection = peer.connection
    if connection is not None:
        frames = [connection.down.popleft() for _ in range(min(count, len(connection.down)))]
        peer.delivered["down"].extend(f for f in frames if wire.unpack_frame(f)[0]["t"] in (PUB, SNAP, ACK))
        peer.receive(frames)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schedules())
def test_replicas_and_the_hub_converge_over_channels_that_delay_reorder_duplicate_and_drop(
    schedule: Schedule,
) -> None:
    """Every replica and the hub end with equal values, and no observer is called for a no-op.

    What the channel models, and why: each peer has one WebSocket to the hub at a time,
    a queue of frames each way.

    - In order within a connection: it runs over TCP, so a queue only ever delivers its
      oldest frame (several at once: frames that arrived together, applied as one batch).
    - Delay and reorder: nothing forces a delivery, so the schedule interleaves every
      queue of every peer, both ways, with writes made while frames are in flight; frames
      of different connections, or of the two directions of one, arrive in any order.
    - Drop: TCP loses no frame on a live connection, so frames are lost only with their
      connection. A disconnect drops what is in flight both ways; the hub notices it at
      once, or only when the peer says hello again (it then replaces the old connection).
      The peer writes on while disconnected, and the reconnection redoes the handshake of
      every topic, as the real peer does after every reconnection.
    - Held writes: a write may be held back (as the peer holds a burst) and leave later,
      joined with the others held, when the peer releases them, or in the state of the
      next handshake.
    - Duplicates: a topic frame that crossed once (on this connection or an earlier one)
      is queued again behind the frames in flight, as an at-least-once redelivery would
      send it; the handshake after a reconnection ships again what was sent before, so
      every side must be idempotent.

    The hub is the real one (:class:`~spindel_jupyter.hub.topics.TopicStore` behind a
    :class:`~spindel_jupyter.hub.relay.Relay`), without storage: it acknowledges at once.
    At the end everyone reconnects and every frame is delivered.
    """
    relay = Relay(1 << 20, TopicStore())
    now = [0]
    peers = []
    for i, skew in enumerate(schedule.skews):
        mode = "sync" if i < schedule.writers else "mirror"
        peers.append(Peer(f"{mode}{i}", mode, relay, lambda skew=skew: now[0] + skew))
    for peer, connected in zip(peers, schedule.connected, strict=True):
        if connected:
            peer.connect()
    for step in schedule.steps:
        kind, *args = step
        if kind == "tick":
            now[0] += args[0]
            continue
        peer = peers[args[0] % len(peers)]
        if kind == "write":
            peers[args[0] % schedule.writers].write(*change_for(args[1]), hold=args[2])
        elif kind == "release":
            peer.release()
        elif kind == "up":
            deliver_up(relay, peer, args[1])
        elif kind == "down":
            deliver_down(peer, args[1])
        elif kind == "duplicate" and peer.connection is not None and peer.delivered[args[1]]:
            sent = peer.delivered[args[1]]
            getattr(peer.connection, args[1]).append(sent[args[2] % len(sent)])
        elif kind == "disconnect" and peer.connection is not None:
            peer.disconnect(hub_notices=args[1])
        elif kind == "reconnect" and peer.connection is None:
            peer.connect()
    for peer in peers:
        if peer.connection is None:
            peer.connect()
        peer.release()
    while any(p.connection is not None and (p.connection.up or p.connection.down) for p in peers):
        for peer in peers:
            deliver_up(relay, peer, len(peer.connection.up) if peer.connection else 0)
        for peer in peers:
            deliver_down(peer, len(peer.connection.down) if peer.connection else 0)

    for topic in TOPICS:
        value, stamp = hub_copy(relay, topic)
        for peer in peers:
            assert content(peer.values[topic]) == content(value), (peer.name, topic)
            if relay.topics.kind_of(topic) == LWW:
                assert peer.replicas[topic].stamp == stamp, (peer.name, topic)
    for peer in peers:
        assert peer.observed == peer.changes, peer.name  # one call per real change, none for a no-op
        assert not any(r.pending for r in peer.replicas.values()), peer.name  # flush() would return


def test_writes_held_back_leave_as_one_frame_numbered_after_those_sent() -> None:
    writer = replica("orset")
    value: Any = ORSet()
    for element, hold in (("a", False), ("b", True), ("c", True)):
        frame, value = writer.publish(value.add(element), hold=hold)
        assert (frame is None) == hold
    assert writer.pending and writer.sent == 1
    header, body = published(writer.release())
    assert header["seq"] == 2 and ORSet.from_state(wire.decode(body)) == {"b", "c"}
    assert writer.release() is None
    writer.publish(value.add("d"), hold=True)
    (header, body), value = writer.publish(value.add("e"))  # not held: takes the held ones along
    assert header["seq"] == 3 and ORSet.from_state(wire.decode(body)) == {"d", "e"}
    writer.acknowledge(3)
    assert not writer.pending


def test_writes_held_back_travel_in_the_handshake_under_its_number() -> None:
    writer = replica("gset")
    _, value = writer.publish(GSet().add("x"), hold=True)
    assert writer.pending and writer.sent == 0
    header, body = writer.handshake(1, value)
    assert header["seq"] == 1 and body is not None and GSet.from_state(wire.decode(body)) == {"x"}
    assert writer.release() is None  # nothing is held any more
    writer.acknowledge(1)
    assert not writer.pending
