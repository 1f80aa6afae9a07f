"""Topics: signals kept equal across peers, through the hub.

A topic holds either plain values, last writer wins by hybrid logical clock
(ties broken by peer name), or a CRDT (:mod:`crdt`), of which only deltas cross
the wire. Every peer and the hub apply what they receive the same way, so all
replicas end equal whatever the delivery order.

Following a topic starts with Spindel's symmetric handshake: the peer ships
its own state (if it wrote before connecting, or while disconnected), the hub
joins it and answers with whatever the peer lacks, so both hold the union after
one round trip. It happens again after every reconnection.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import threading
import weakref
from typing import Any

from ..core import crdt, wire
from ..core.clock import HybridClock, Stamp, as_stamp
from ..core.errors import NotConnected, SpindelError
from ..core.home import home
from ..core.protocol import ACK, LWW, PUB, SNAP, SUB, UNSUB, from_wire
from ..core.signals import Signal
from . import client

log = logging.getLogger(__name__)

#: How long following a topic waits for the hub's answer.
SUBSCRIBE_TIMEOUT = 10.0

_clock = HybridClock(node=client.SESSION)
_ids = itertools.count(1)
_lock = threading.Lock()
_acked = threading.Condition(_lock)
_topics: dict[str, _Topic] = {}
_waiting: dict[int, concurrent.futures.Future[tuple[dict[str, Any], bytes]]] = {}


def _join_pairwise(values: list[Any]) -> Any:
    """The join of ``values``, in a balanced tree of joins.

    Folding a backlog into one growing value would cost n^2 for types whose join
    scales with both sides (an ORSet's causal context); pairs of like size cost n log n.
    """
    while len(values) > 1:
        joined = [values[i].merge(values[i + 1]) for i in range(0, len(values) - 1, 2)]
        if len(values) % 2:
            joined.append(values[-1])
        values = joined
    return values[0]


class _Topic:
    """One topic this process follows: its signal, how, and where its writes stand."""

    def __init__(self, name: str, signal: Signal[Any], mode: str, kind: str | None) -> None:
        self.name = name
        self.signal = signal
        self.mode = mode
        self.kind = kind
        #: Plain topics: the stamp of the current value (None until written or received).
        self.stamp: Stamp | None = None
        self.sent = 0
        self.acked = 0

    # -- local writes (on the writing thread, inside the signal's lock) --------------

    def write(self, old: Any, new: Any) -> Any:
        peer = client.current_peer()
        if self.kind is None:  # followed before anyone wrote: the first write decides
            self.kind = _kind_of(new)
        if self.kind == LWW:
            body = wire.encode(new, where=f"the value of topic {self.name!r}")
            self.stamp = _clock.now(peer.name)
            header: dict[str, Any] = {"t": PUB, "topic": self.name, "kind": LWW, "stamp": list(self.stamp)}
            self._publish(peer, header, body)
            return None
        if not crdt.is_convergent(new) or new.type_name != self.kind:
            raise SpindelError(
                f"topic {self.name!r} holds {self.kind} values; set one of those (or use .update)"
            )
        delta = new.delta()
        if delta is None:
            return None
        body = wire.encode(delta.state(), where=f"the change to topic {self.name!r}")
        self._publish(peer, {"t": PUB, "topic": self.name, "kind": self.kind}, body)
        return new.clear_delta()

    def _publish(self, peer: client.Peer, header: dict[str, Any], body: bytes) -> None:
        with _lock:
            self.sent += 1
            header["seq"] = self.sent
        if peer.connected:
            peer.send_frame(header, body)

    # -- what arrives (on the home thread) --------------------------------------------

    def receive(self, header: dict[str, Any], body: bytes, full_state: bool) -> None:
        self.receive_all([(header, body)], full_state)

    def receive_all(self, changes: list[tuple[dict[str, Any], bytes]], full_state: bool = False) -> None:
        """Apply changes from the hub, then tell observers once: a slow observer never falls behind.

        Read, join and write happen under the signal's lock: a local write made
        meanwhile on another thread (a script's main thread) is never lost.
        """
        with self.signal._lock:
            self._receive_all(changes, full_state)

    def _receive_all(self, changes: list[tuple[dict[str, Any], bytes]], full_state: bool) -> None:
        current = start = self.signal.value
        # Deltas that arrived together are joined first and applied once, so that a type
        # whose join costs in proportion to the value is not paid per delta (the join is
        # associative and commutative: the result is the same).
        deltas: list[Any] = []
        for header, body in changes:
            kind = header.get("kind")
            if self.kind is None and isinstance(kind, str):
                self.kind = kind
            if kind != self.kind or not body:
                continue
            if kind == LWW:
                stamp = as_stamp(header.get("stamp"))
                if self.stamp is None or stamp > self.stamp:
                    self.stamp = stamp
                    _clock.observe(stamp)
                    current = wire.decode(body)
                continue
            deltas.append(crdt.type_for(str(kind)).from_state(wire.decode(body)))
        if deltas:
            joined = _join_pairwise(deltas)
            if current is None:
                current = joined
            else:
                current = current.merge(joined) if full_state else current.apply_delta(joined)
        if current is not start:  # a no-op apply changes nothing: no observer call, no re-publish
            self.signal._apply_remote(current)

    # -- the handshake ---------------------------------------------------------------

    def subscribe_frame(self, request_id: int) -> tuple[dict[str, Any], bytes | None]:
        """The handshake frame: kind, sequence and state, read in one piece under the signal's lock.

        A write (under that lock) stamps the topic before it stores the value: read
        apart, the old value could leave under the new stamp, and the hub would drop
        the real write as not newer.
        """
        with self.signal._lock:
            header: dict[str, Any] = {
                "t": SUB,
                "id": request_id,
                "topic": self.name,
                "mode": self.mode,
                "seq": self.sent,
            }
            if self.kind is not None:
                header["kind"] = self.kind
            value = self.signal.value
            if self.mode == "mirror" or value is None:
                return header, None
            if self.kind == LWW:
                if self.stamp is None:
                    return header, None
                header["stamp"] = list(self.stamp)
                return header, wire.encode(value)
            return header, wire.encode(value.state())


def _kind_of(value: Any) -> str:
    return str(value.type_name) if crdt.is_convergent(value) else LWW


def _follow(name: str, signal: Signal[Any], mode: str, kind: str | None) -> Signal[Any]:
    peer = client.current_peer()
    _attach(peer)
    topic = _Topic(name, signal, mode, kind)
    with _lock:
        old = _topics.pop(name, None)
    if old is not None:
        _stop(old, peer)
    if mode == "mirror":
        signal._read_only = f"topic {name!r} is a read-only mirror here; use sync_signal to write to it"
    else:
        signal._add_writer(topic.write)
    with _lock:
        _topics[name] = topic
    header, body = _subscribe(peer, topic)
    if header.get("error"):
        with _lock:
            _topics.pop(name, None)
        signal._remove_writer(topic.write)
        raise from_wire(header["error"])
    topic.receive(header, body, full_state=True)
    return signal


def _subscribe(peer: client.Peer, topic: _Topic) -> tuple[dict[str, Any], bytes]:
    """Send the handshake and wait for the hub's answer (its state, if we lack any)."""
    request_id = next(_ids)
    future: concurrent.futures.Future[tuple[dict[str, Any], bytes]] = concurrent.futures.Future()
    _waiting[request_id] = future
    try:
        if not peer.connected:
            raise NotConnected(f"not connected to the hub at {peer.url}")
        peer.send_frame(*topic.subscribe_frame(request_id))
        return future.result(SUBSCRIBE_TIMEOUT)
    except concurrent.futures.TimeoutError:
        raise NotConnected(
            f"the hub did not answer for topic {topic.name!r} within {SUBSCRIBE_TIMEOUT} s"
        ) from None
    finally:
        _waiting.pop(request_id, None)


def _stop(topic: _Topic, peer: client.Peer) -> None:
    topic.signal._remove_writer(topic.write)
    topic.signal._read_only = None
    if peer.connected:
        peer.send_frame({"t": UNSUB, "topic": topic.name})


# -- frames from the hub (connection thread) -----------------------------------------


_arrived: dict[str, list[tuple[dict[str, Any], bytes]]] = {}
_arrived_lock = threading.Lock()


def _on_pub(header: dict[str, Any], body: memoryview) -> None:
    name = str(header.get("topic"))
    topic = _topics.get(name)
    if topic is None or topic.mode == "export":
        return
    change = (header, body.tobytes())
    with _arrived_lock:
        waiting = _arrived.get(name)
        if waiting is not None:
            # Already queued for the home thread: join the batch. A plain value
            # only needs its newest write (the hub relays them in stamp order).
            if topic.kind == LWW:
                waiting[:] = [change]
            else:
                waiting.append(change)
            return
        _arrived[name] = [change]
    home().call(_apply_arrived, name)


def _apply_arrived(name: str) -> None:
    with _arrived_lock:
        changes = _arrived.pop(name, [])
    topic = _topics.get(name)
    if topic is not None and changes:
        _guarded(topic.receive_all, changes)


def _on_snap(header: dict[str, Any], body: memoryview) -> None:
    future = _waiting.pop(int(header.get("re", -1)), None)
    if future is not None:
        future.set_result((header, body.tobytes()))
        return
    topic = _topics.get(str(header.get("topic")))
    if header.get("error"):
        log.warning("spindel: topic %r: %s", header.get("topic"), header["error"].get("message"))
    elif topic is not None and topic.mode != "export":
        home().call(_guarded, topic.receive, header, body.tobytes(), True)


def _on_ack(header: dict[str, Any], body: memoryview) -> None:
    topic = _topics.get(str(header.get("topic")))
    if topic is None:
        return
    with _acked:
        topic.acked = max(topic.acked, int(header.get("seq", 0)))
        _acked.notify_all()


def _guarded(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except Exception:
        log.exception("spindel: could not apply a change from the hub")


def _resubscribe(peer: client.Peer) -> None:
    """After a (re)connection: the handshake again for every topic, without waiting."""
    for topic in list(_topics.values()):
        request_id = next(_ids)
        try:
            peer.send_frame(*topic.subscribe_frame(request_id))
        except Exception:
            log.exception("spindel: could not re-follow topic %r", topic.name)


#: The peers sync's frame handlers are on (weakly: a new peer may reuse a dead one's id).
_attached: weakref.WeakSet[client.Peer] = weakref.WeakSet()


def _attach(peer: client.Peer) -> None:
    if peer in _attached:
        return
    _attached.add(peer)
    peer.on_frame(PUB, _on_pub)
    peer.on_frame(SNAP, _on_snap)
    peer.on_frame(ACK, _on_ack)
    peer.on_connect(lambda: _resubscribe(peer))


client.on_new_peer(_attach)


# -- public API ----------------------------------------------------------------------


def followed_topics() -> list[str]:
    """The topics this process syncs (a published notebook records their states)."""
    return sorted(_topics)


def followed(topic: str) -> Signal[Any] | None:
    """The signal this process syncs ``topic`` with, if it does."""
    entry = _topics.get(topic)
    return entry.signal if entry is not None else None


def sync_signal(topic: str, signal_or_value: Any = None) -> Signal[Any]:
    """Keep a signal equal on every peer that syncs ``topic``; returns the Signal.

    Pass a :class:`Signal`, or a value to start one with (a CRDT from
    :mod:`spindel_jupyter.crdt` makes a convergent topic). The signal holds the
    union of everyone's state when this returns. A plain starting value stays
    local until the first write: a value the topic already has wins over it.
    """
    signal = signal_or_value if isinstance(signal_or_value, Signal) else Signal(signal_or_value)
    value = signal.value
    if value is not None and not crdt.is_convergent(value):
        wire.encode(value, where=f"the value of topic {topic!r}")
    return _follow(topic, signal, "sync", _kind_of(value) if value is not None else None)


def export_signal(topic: str, signal: Signal[Any]) -> Signal[Any]:
    """Publish ``signal``'s changes to ``topic`` without taking anyone else's."""
    value = signal.value
    return _follow(topic, signal, "export", _kind_of(value) if value is not None else LWW)


def subscribe_signal(topic: str) -> Signal[Any]:
    """A read-only Signal mirroring ``topic``."""
    return _follow(topic, Signal(None), "mirror", None)


def unsync(topic: str) -> None:
    """Stop following ``topic`` (the signal keeps its last value)."""
    with _lock:
        entry = _topics.pop(topic, None)
    if entry is not None:
        _stop(entry, client.current_peer())


def flush(timeout: float = 10.0) -> None:
    """Wait until the hub has durably stored every change this process published."""
    with _acked:
        if not _acked.wait_for(lambda: all(t.acked >= t.sent for t in _topics.values()), timeout):
            pending = [t.name for t in _topics.values() if t.acked < t.sent]
            raise NotConnected(f"the hub has not stored the changes to {', '.join(pending)} yet")
