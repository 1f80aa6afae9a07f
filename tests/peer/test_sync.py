"""Applying what the hub sends to a topic's signal (the wire part is tested end to end)."""

from __future__ import annotations

import gc
import threading
from types import SimpleNamespace
from typing import Any

import pytest

from spindel_jupyter.core import wire
from spindel_jupyter.core.clock import as_stamp
from spindel_jupyter.core.crdt import GSet
from spindel_jupyter.core.protocol import PUB
from spindel_jupyter.core.signals import Signal
from spindel_jupyter.peer import client, sync
from spindel_jupyter.peer.client import Peer
from spindel_jupyter.peer.sync import _Topic
from tests.support import ContendedLock, wait_until


def lww(value: Any, stamp: list[Any]) -> tuple[dict[str, Any], bytes]:
    return {"kind": "lww", "stamp": stamp}, wire.encode(value)


def gset_delta(*items: Any) -> tuple[dict[str, Any], bytes]:
    value = GSet()
    for item in items:
        value = value.add(item)
    delta = value.delta()
    assert delta is not None
    return {"kind": "gset"}, wire.encode(delta.state())


def observed(signal: Signal[Any]) -> list[Any]:
    calls: list[Any] = []
    signal.observe(calls.append)
    return calls


def test_plain_values_keep_the_highest_stamp_whatever_the_order() -> None:
    signal: Signal[Any] = Signal(None)
    topic = _Topic("t", signal, "sync", "lww")
    calls = observed(signal)
    topic.receive_all([lww("b", [2, 0, "x"]), lww("a", [1, 0, "x"]), lww("c", [2, 0, "y"])])
    assert signal.value == "c" and topic.stamp == (2, 0, "y")
    topic.receive_all([lww("old", [1, 5, "z"])])
    assert signal.value == "c"
    wait_until(lambda: calls == ["c"], what="one observer call for the batch")


def test_deltas_arriving_together_join_into_one_change() -> None:
    signal: Signal[Any] = Signal(GSet())
    topic = _Topic("t", signal, "sync", "gset")
    calls = observed(signal)
    topic.receive_all([gset_delta(1), gset_delta(2), gset_delta(1, 3)])
    assert signal.value == {1, 2, 3}
    wait_until(lambda: len(calls) == 1, what="one observer call")


def test_a_backlog_of_deltas_joins_the_large_value_once(monkeypatch: Any) -> None:
    large = GSet()
    for i in range(1000):
        large = large.add(i)
    signal: Signal[Any] = Signal(large.clear_delta())
    topic = _Topic("t", signal, "sync", "gset")
    joins_into_large: list[int] = []
    merge = GSet.merge

    def counting(self: GSet[Any], other: GSet[Any]) -> GSet[Any]:
        if len(self) >= 1000:
            joins_into_large.append(len(other))
        return merge(self, other)

    monkeypatch.setattr(GSet, "merge", counting)
    topic.receive_all([gset_delta(1000 + i) for i in range(50)])
    assert len(signal.value) == 1050
    assert joins_into_large == [50]  # one join of the 50 deltas, not 50 joins of 1,000+ elements


def test_a_backlog_is_joined_in_pairs_of_like_size(monkeypatch: Any) -> None:
    """Never one growing delta joined with each next one: that costs n^2 for an ORSet's context."""
    signal: Signal[Any] = Signal(GSet(range(1000)).clear_delta())
    topic = _Topic("t", signal, "sync", "gset")
    among_deltas: list[tuple[int, int]] = []
    merge = GSet.merge

    def recording(self: GSet[Any], other: GSet[Any]) -> GSet[Any]:
        if len(self) < 1000:
            among_deltas.append((len(self), len(other)))
        return merge(self, other)

    monkeypatch.setattr(GSet, "merge", recording)
    topic.receive_all([gset_delta(1000 + i) for i in range(64)])
    assert len(signal.value) == 1064
    assert len(among_deltas) == 63 and all(a == b for a, b in among_deltas)


def test_a_delta_that_adds_nothing_changes_nothing() -> None:
    signal: Signal[Any] = Signal(GSet().add(1).clear_delta())
    topic = _Topic("t", signal, "sync", "gset")
    before = signal.value
    calls = observed(signal)
    topic.receive_all([gset_delta(1)])
    assert signal.value is before
    topic.receive_all([gset_delta(2)])
    wait_until(lambda: len(calls) == 1, what="a call for the real change only")


def test_a_mirror_adopts_the_kind_it_receives() -> None:
    signal: Signal[Any] = Signal(None)
    topic = _Topic("t", signal, "mirror", None)
    topic.receive_all([gset_delta("x")])
    assert topic.kind == "gset" and signal.value == {"x"}
    topic.receive_all([lww("ignored", [1, 0, "a"])])  # another kind on the same topic is dropped
    assert signal.value == {"x"}


class _PausingSignal(Signal[Any]):
    """Once armed, a read of its value pauses after taking the value, until ``resume`` is set."""

    def __init__(self, value: Any, resume: threading.Event) -> None:
        super().__init__(value)
        self._lock = ContendedLock(contended=resume)  # type: ignore[assignment]
        self.resume = resume
        self.reading = threading.Event()
        self.armed = False

    @property
    def value(self) -> Any:
        value = self._value
        if self.armed:
            self.armed = False
            self.reading.set()
            self.resume.wait(5)
        return value


def test_the_handshake_sends_a_value_with_its_own_stamp_while_a_write_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A write stamps the topic before it stores its value: the handshake must not pair the old value
    with the new stamp (the hub would then drop the real write as not newer).

    The handshake pauses between reading the value and the stamp until the write on
    another thread has stamped the topic, or could not start (the handshake holds it off).
    """
    monkeypatch.setattr(client, "current_peer", lambda: SimpleNamespace(name="me", connected=False))
    resume = threading.Event()
    signal = _PausingSignal(None, resume)
    topic = _Topic("t", signal, "sync", "lww")
    signal._add_writer(topic.write)
    signal.set("old")
    old_stamp = topic.stamp
    signal._add_writer(lambda old, new: resume.set())  # runs once the write has stamped the topic

    def write() -> None:
        if signal.reading.wait(5):
            signal.set("new")

    writer = threading.Thread(target=write)
    writer.start()
    signal.armed = True
    header, body = topic.subscribe_frame(1)
    writer.join(5)
    assert signal.reading.is_set() and signal.value == "new"
    value_of = {old_stamp: "old", topic.stamp: "new"}
    assert wire.decode(body) == value_of[as_stamp(header["stamp"])]


def test_a_new_peer_where_a_dead_one_was_gets_the_frame_handlers() -> None:
    """Sync attaches to every peer, even one that reuses the memory (and id) of a dead one."""
    url = "ws://127.0.0.1:9/spindel/ws"
    first = Peer(url, "first")
    sync._attach(first)
    first._loop.close()
    address = id(first)
    del first
    gc.collect()  # the peer's connect callback refers back to it
    made: list[Peer] = []
    for _ in range(100_000):
        peer = Peer.__new__(Peer)  # bare: takes the memory, opens nothing
        if id(peer) == address:
            break
        made.append(peer)  # kept, so the next one lands elsewhere
    else:
        pytest.skip("no new peer reused the dead one's memory")
    made.clear()
    peer.__init__(url, "again")  # type: ignore[misc]
    try:
        sync._attach(peer)
        assert peer._frame_handlers.get(PUB) is sync._on_pub
    finally:
        peer._loop.close()


class _Wire:
    """Stands in for the process's peer: frames sent, and what waits for the connection thread."""

    name = "me"
    connected = True

    def __init__(self) -> None:
        self.sent: list[tuple[dict[str, Any], Any]] = []
        self.soon: list[Any] = []

    def send_frame(self, header: dict[str, Any], body: bytes | None = None) -> None:
        value = wire.decode(body) if body else None
        self.sent.append((header, value if header["kind"] == "lww" else GSet.from_state(value)))

    def call_soon(self, fn: Any, *args: Any) -> None:
        self.soon.append((fn, args))

    def run_soon(self) -> None:
        soon, self.soon = self.soon, []
        for fn, args in soon:
            fn(*args)


def test_a_burst_of_plain_writes_leaves_as_its_last_value(monkeypatch: pytest.MonkeyPatch) -> None:
    peer = _Wire()
    monkeypatch.setattr(client, "current_peer", lambda: peer)
    monkeypatch.setattr(sync, "BURST_SECONDS", 60.0)  # every write after the first comes in a burst
    signal: Signal[Any] = Signal(0)
    topic = _Topic("t", signal, "sync", "lww")
    signal._add_writer(topic.write)
    for i in range(1, 1001):
        signal.set(i)
    assert [(h["seq"], body) for h, body in peer.sent] == [(1, 1)]  # the first at once
    assert topic.pending and len(peer.soon) == 1  # the rest held: only the newest is kept
    peer.run_soon()
    (first, _), (last, body) = peer.sent
    assert (last["seq"], body) == (2, 1000)
    assert tuple(last["stamp"]) > tuple(first["stamp"]) and tuple(last["stamp"]) == topic.stamp
    topic.acknowledge(2)
    assert not topic.pending and signal.value == 1000


def test_a_burst_of_crdt_writes_leaves_as_a_few_frames_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    peer = _Wire()
    monkeypatch.setattr(client, "current_peer", lambda: peer)
    monkeypatch.setattr(sync, "BURST_SECONDS", 60.0)  # every write after the first comes in a burst
    signal: Signal[Any] = Signal(GSet())
    topic = _Topic("t", signal, "sync", "gset")
    signal._add_writer(topic.write)
    for i in range(5):
        signal.update(lambda value, i=i: value.add(i))
    assert [(h["seq"], body) for h, body in peer.sent] == [(1, {0})]  # the first at once
    assert topic.pending and len(peer.soon) == 1  # the rest held, one release on its way
    peer.run_soon()
    assert [(h["seq"], body) for h, body in peer.sent] == [(1, {0}), (2, {1, 2, 3, 4})]
    monkeypatch.setattr(sync, "BURST_SECONDS", 0.0)
    signal.update(lambda value: value.add(5))  # not in a burst: at once
    assert [(h["seq"], body) for h, body in peer.sent][-1] == (3, {5}) and peer.soon == []
    topic.acknowledge(3)
    assert not topic.pending and signal.value == set(range(6))
    monkeypatch.setattr(sync, "BURST_SECONDS", 60.0)
    monkeypatch.setattr(sync, "HOLD_BYTES", 6)  # what is held goes once it reaches 6 bytes (3 deltas)
    for i in range(6, 20):
        signal.update(lambda value, i=i: value.add(i))
    assert len(peer.sent) == 6 and all(body and len(body) == 4 for _, body in peer.sent[3:])
    peer.run_soon()
    assert set().union(*(body for _, body in peer.sent)) == set(range(20))
