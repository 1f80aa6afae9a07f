"""Topics: signals kept equal across peers, through the hub.

The sync rules are the core's (:mod:`~spindel_jupyter.core.replica`): plain
values last writer wins by hybrid logical clock, CRDTs by their join, and
Spindel's symmetric handshake, made again after every reconnection. Here each
topic's replica is bound to this process: its value lives in a :class:`Signal`
(whose lock serializes the topic's writes, applies and handshakes), its frames
go through the process's peer, and what arrives is applied on the home thread.

A topic belongs to the user of the peer that created it; other users read it,
and write it only if its owner shares it with ``others="write"``. The hub
refuses what they may not write: following to write raises :class:`NotWritable`
at once, and a write refused later (the owner made the topic read-only since)
is reported, the topic becomes a read-only mirror here and takes the hub's
value again, so it never silently diverges.

A write goes out at once, unless the topic sent a frame less than
:data:`BURST_SECONDS` ago: then it is held back, joined with the writes that
follow (a plain value: replaced by the next), and sent as one frame from the
connection thread as soon as that thread runs (or by the write that brings what
is held to :data:`HOLD_BYTES`). A lone write costs no delay; a burst costs a few
frames.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import threading
import time
import weakref
from typing import Any

from ..core import crdt, wire
from ..core.clock import HybridClock
from ..core.errors import NotConnected, NotWritable, SpindelError
from ..core.home import home
from ..core.protocol import ACK, ERROR, LWW, OTHERS, PUB, SNAP, UNSUB, from_wire
from ..core.replica import Change, Frame, Replica, kind_of
from ..core.signals import Signal
from . import client

log = logging.getLogger(__name__)

#: How long following a topic waits for the hub's answer.
SUBSCRIBE_TIMEOUT = 10.0
#: A write this soon after the topic's last frame is held back and joined with the next ones...
BURST_SECONDS = 0.0005
#: ... until the writes held add up to this many bytes: then they go (frames stay well under the hub's limit).
HOLD_BYTES = 1 << 20

_clock = HybridClock(node=client.SESSION)
_ids = itertools.count(1)
_lock = threading.Lock()
_acked = threading.Condition(_lock)
_topics: dict[str, _Topic] = {}
_waiting: dict[int, concurrent.futures.Future[Change]] = {}


def _peer_name() -> str:
    return client.current_peer().name


class _Topic(Replica):
    """A replica of a topic this process follows, bound to its signal and sent through its peer."""

    def __init__(self, name: str, signal: Signal[Any], mode: str, kind: str | None) -> None:
        super().__init__(name, mode, kind, _clock, _peer_name)
        self.signal = signal
        #: Held while a frame of this topic is made and sent, so frames leave in the order of their numbers.
        self._sending = threading.Lock()
        self._last_sent = 0.0
        self._release_due = False

    def write(self, old: Any, new: Any) -> Any:
        """The signal's writer: publish a local write (on the writing thread, inside the signal's lock)."""
        peer = client.current_peer()
        with self._sending:
            now = time.monotonic()
            burst = peer.connected and now - self._last_sent < BURST_SECONDS
            hold = (burst or self._release_due) and self.held_bytes < HOLD_BYTES
            frame, kept = self.publish(new, hold=hold)
            if frame is not None and peer.connected:
                peer.send_frame(*frame)
                self._last_sent = now
            elif self.held is not None and not self._release_due and peer.connected:
                self._release_due = True
                peer.call_soon(self._release, peer)
        return kept

    def _release(self, peer: client.Peer) -> None:
        """Send the writes held back, as one frame (on the connection thread)."""
        with self._sending:
            self._release_due = False
            try:
                frame = self.release()
            except Exception:  # they stay held (and pending): a handshake ships them
                log.exception("spindel: could not send the changes held back for topic %r", self.name)
                return
            if frame is not None and peer.connected:
                peer.send_frame(*frame)
                self._last_sent = time.monotonic()

    def receive(self, header: dict[str, Any], body: bytes, full_state: bool) -> None:
        self.receive_all([(header, body)], full_state)

    def receive_all(self, changes: list[Change], full_state: bool = False) -> None:
        """Apply changes from the hub, then tell observers once: a slow observer never falls behind.

        Read, join and write happen under the signal's lock: a local write made
        meanwhile on another thread (a script's main thread) is never lost.
        """
        with self.signal._lock:
            current = self.signal.value
            value = self.apply(current, changes, full_state)
            if value is not current:  # a no-op apply changes nothing: no observer call, no re-publish
                self.signal._apply_remote(value)

    def subscribe_frame(self, request_id: int) -> Frame:
        """The handshake frame, its value and stamp read in one piece under the signal's lock."""
        with self.signal._lock, self._sending:
            return self.handshake(request_id, self.signal.value)

    def take(self, header: dict[str, Any], body: bytes) -> None:
        """Take the hub's state as the value, whatever this side holds (it wrote what it may not)."""
        with self.signal._lock:
            self.stamp = None
            self.signal._apply_remote(self.apply(None, [(header, body)], full_state=True))


def _follow(
    name: str, signal: Signal[Any], mode: str, kind: str | None, others: str | None = None
) -> Signal[Any]:
    if others is not None and others not in OTHERS:
        raise SpindelError(f"others={others!r}: other users either 'read' the topic or 'write' it too")
    peer = client.current_peer()
    _attach(peer)
    topic = _Topic(name, signal, mode, kind)
    topic.others = others
    if mode == "export" and kind == LWW and signal.value is not None:
        topic.stamp = topic.clock.now(topic.peer())  # what it exports is the topic's value from now
    with _lock:
        old = _topics.get(name)
    if old is not None:  # the hub takes the new way of following in place of the old one
        _unbind(old)
    _bind(topic)
    with _lock:
        _topics[name] = topic
    header, body = _subscribe(peer, topic)
    if header.get("error"):  # the hub changed nothing: the topic is followed as it was, if it was
        _unbind(topic)
        with _lock:
            if old is None:
                _topics.pop(name, None)
            else:
                _topics[name] = old
        if old is not None:
            _bind(old)
        raise from_wire(header["error"])
    topic.others = None  # said once: a handshake after a reconnection does not say it again
    topic.receive(header, body, full_state=True)
    return signal


def _bind(topic: _Topic, read_only: str = "") -> None:
    """Have ``topic``'s signal publish its writes, or, followed as a mirror, refuse them."""
    if topic.mode == "mirror":
        topic.signal._read_only = read_only or (
            f"topic {topic.name!r} is a read-only mirror here; use sync_signal to write to it"
        )
    else:
        topic.signal._add_writer(topic.write)


def _unbind(topic: _Topic) -> None:
    topic.signal._remove_writer(topic.write)
    topic.signal._read_only = None


def _subscribe(peer: client.Peer, topic: _Topic) -> Change:
    """Send the handshake and wait for the hub's answer (its state, if we lack any)."""
    request_id = next(_ids)
    future: concurrent.futures.Future[Change] = concurrent.futures.Future()
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
    _unbind(topic)
    if peer.connected:
        peer.send_frame({"t": UNSUB, "topic": topic.name})


# -- frames from the hub (connection thread) -----------------------------------------


_arrived: dict[str, list[Change]] = {}
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
        _report(str(header.get("topic")), header["error"])
    elif topic is not None and topic.mode != "export":
        home().call(_guarded, topic.receive, header, body.tobytes(), True)


def _on_error(header: dict[str, Any], body: memoryview) -> None:
    """An error frame: about a topic followed here (a write refused), or anything else (logged)."""
    name = header.get("topic")
    if isinstance(name, str) and name in _topics:
        _report(name, header)
    else:
        log.info("spindel: the hub reported: %s", header.get("message"))


def _report(name: str, error: dict[str, Any]) -> None:
    """The hub refused this peer's writes of topic ``name``: say so, and follow it read-only from now."""
    exc = from_wire(error)
    log.warning("spindel: %s", exc)
    if isinstance(exc, NotWritable):
        home().call(_guarded, _read_only, name, str(exc))


def _read_only(name: str, message: str) -> None:
    """Follow ``name`` as a mirror from now, its value the hub's (a write here was refused)."""
    old = _topics.get(name)
    if old is None or old.mode == "mirror":
        return
    peer = client.current_peer()
    _unbind(old)
    mirror = _Topic(name, old.signal, "mirror", old.kind)
    _bind(mirror, message)
    with _lock:
        _topics[name] = mirror
    header, body = _subscribe(peer, mirror)
    if not header.get("error"):
        mirror.take(header, body)


def _on_ack(header: dict[str, Any], body: memoryview) -> None:
    topic = _topics.get(str(header.get("topic")))
    if topic is None:
        return
    with _acked:
        topic.acknowledge(int(header.get("seq", 0)))
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
    peer.on_frame(ERROR, _on_error)
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


def sync_signal(topic: str, signal_or_value: Any = None, *, others: str | None = None) -> Signal[Any]:
    """Keep a signal equal on every peer that syncs ``topic``; returns the Signal.

    Pass a :class:`Signal`, or a value to start one with (a CRDT from
    :mod:`spindel_jupyter.crdt` makes a convergent topic). The signal holds the
    union of everyone's state when this returns. A plain starting value stays
    local until the first write: a value the topic already has wins over it.

    ``others``: whether other users may ``"write"`` the topic too (the default
    for a topic this creates) or only ``"read"`` it; only the topic's owner (the
    user who created it) may say. Raises :class:`NotWritable` for a topic of
    another user who shares it read-only.
    """
    signal = signal_or_value if isinstance(signal_or_value, Signal) else Signal(signal_or_value)
    value = signal.value
    if value is not None and not crdt.is_convergent(value):
        wire.encode(value, where=f"the value of topic {topic!r}")
    return _follow(topic, signal, "sync", kind_of(value) if value is not None else None, others)


def export_signal(topic: str, signal: Signal[Any], *, others: str | None = None) -> Signal[Any]:
    """Publish ``signal`` to ``topic``: its value now, then its changes, taking no one else's.

    ``others``: whether other users only ``"read"`` the topic (the default for a
    topic this creates) or may ``"write"`` it too; only the topic's owner (the
    user who created it) may say.
    """
    value = signal.value
    return _follow(topic, signal, "export", kind_of(value) if value is not None else LWW, others)


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
        if not _acked.wait_for(lambda: not any(t.pending for t in _topics.values()), timeout):
            pending = [t.name for t in _topics.values() if t.pending]
            raise NotConnected(f"the hub has not stored the changes to {', '.join(pending)} yet")
