"""A replica of a synced topic: the sync rules, with frames in and frames out.

A topic holds either plain values, last writer wins by hybrid logical clock
(ties broken by the writer's peer name, the stamp's last part), or a CRDT
(:mod:`crdt`) of which only deltas cross the wire. Every peer and the hub apply
what they receive by the same rules (:func:`wins`, :func:`join`, :func:`lacks`),
so all copies end equal whatever the delivery order, and whatever arrives twice.

A :class:`Replica` is one peer's side of one topic. It turns a local write into
the ``pub`` frame to send, applies the ``pub`` and ``snap`` frames the hub sends
and counts its ``ack`` frames, and makes the ``sub`` frame of Spindel's symmetric
handshake: the replica ships its own state (if it wrote before connecting, or
while disconnected), the hub joins it and answers with whatever the replica
lacks, so both hold the union after one round trip. It is made again after every
reconnection.

A write may also be held back (:meth:`Replica.publish` with ``hold``): a
CRDT's delta joins the others held, a plain value replaces the one held (the
last writer wins anyway), and :meth:`Replica.release` makes one frame of them
all. A peer holds writes that come in a burst, so that a loop of a thousand
adds or sets costs the hub, the mesh and every follower a few frames, not a
thousand.

A replica holds no socket, thread, lock or value: its caller keeps the value
(a :class:`~.signals.Signal` in a peer) and passes it in, under whatever lock
keeps a write, an apply and a handshake of the topic from running at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from . import crdt, wire
from .clock import HybridClock, Stamp, as_stamp
from .errors import SpindelError
from .protocol import LWW, PUB, SUB
from .signals import changed

#: A frame as header and body (None: no body).
Frame = tuple[dict[str, Any], bytes | None]
#: A change received from the hub: a ``pub`` or ``snap`` header and its body.
Change = tuple[dict[str, Any], bytes]


def kind_of(value: Any) -> str:
    """The kind of topic ``value`` makes: its CRDT type's name, or plain values."""
    return str(value.type_name) if crdt.is_convergent(value) else LWW


def wins(stamp: Stamp, current: Stamp | None) -> bool:
    """Whether a plain write stamped ``stamp`` replaces the one stamped ``current``.

    The later stamp wins; at equal times the greater peer name does, so every copy
    picks the same winner. An equal stamp is the same write: it adds nothing.
    """
    return current is None or stamp > current


def decode_state(kind: str, body: wire.Buffer) -> Any:
    """A CRDT state or delta of type ``kind`` from its encoded body.

    Raises KeyError for an unknown type, DecodeError or ValueError for a bad body.
    """
    return crdt.type_for(kind).from_state(wire.decode(body))


def join(current: Any, other: Any, full_state: bool = False) -> Any:
    """``current`` joined with a received delta (``full_state``: a whole state).

    ``current`` itself if ``other`` adds nothing to it, so that ``is`` tells a no-op;
    ``other`` if there is no ``current`` yet.
    """
    if current is None:
        return other
    return current.merge(other) if full_state else current.apply_delta(other)


def lacks(value: Any, other: Any) -> bool:
    """Whether ``value`` lacks something ``other`` holds (both CRDT states of one type)."""
    return join(value, other, full_state=True) is not value


def join_all(values: list[Any]) -> Any:
    """The join of ``values`` (at least one), in a balanced tree of joins.

    Folding a backlog into one growing value would cost n^2 for types whose join
    scales with both sides (an ORSet's causal context); pairs of like size cost n log n.
    """
    while len(values) > 1:
        joined = [values[i].merge(values[i + 1]) for i in range(0, len(values) - 1, 2)]
        if len(values) % 2:
            joined.append(values[-1])
        values = joined
    return values[0]


class Replica:
    """One peer's side of one topic: how it follows it, its value's kind and stamp, and its writes' numbers.

    ``clock`` stamps plain writes and observes the stamps received, so a write made
    after seeing another wins over it; ``peer`` names the writer (the peer's
    current name) in those stamps.
    """

    def __init__(
        self, name: str, mode: str, kind: str | None, clock: HybridClock, peer: Callable[[], str]
    ) -> None:
        self.name = name
        #: "sync", "export" or "mirror" (see :data:`~.protocol.MODES`).
        self.mode = mode
        #: :data:`~.protocol.LWW` or a CRDT type name; None until written or received.
        self.kind = kind
        self.clock = clock
        self.peer = peer
        #: Plain topics: the stamp of the current value (None until written or received).
        self.stamp: Stamp | None = None
        #: How many local writes were published, and the highest of them the hub stored durably.
        self.sent = 0
        self.acked = 0
        #: CRDT topics: the join of the deltas of writes held back, not sent yet (None: none),
        #: and the bytes of those deltas encoded one by one.
        self.held: Any = None
        self.held_bytes = 0
        #: Who else may write the topic, as its owner says in the next handshake (None: nothing said).
        self.others: str | None = None

    @property
    def pending(self) -> bool:
        """Whether a write is held back, or published and not yet acknowledged as stored by the hub."""
        return self.acked < self.sent or self.held is not None

    def publish(self, new: Any, hold: bool = False) -> tuple[Frame | None, Any]:
        """A local write of ``new``: the ``pub`` frame to send (None if nothing is) and the value to keep.

        A plain value is stamped; a CRDT's pending delta is what travels, and the
        value kept has none left. With ``hold``, the write is held back instead (for
        :meth:`release`): a CRDT's delta joins those held, a plain value replaces the
        one held; a frame goes now only if writes were held and ``hold`` is off,
        carrying them too. Raises SpindelError for a value of
        another kind, EncodeError for one that cannot travel, changing nothing.
        """
        if self.kind is None:  # followed before anyone wrote: the first write decides
            self.kind = kind_of(new)
        if self.kind == LWW:
            body = wire.encode(new, where=f"the value of topic {self.name!r}")
            self.stamp = self.clock.now(self.peer())
            if not hold and self.held is None:
                return self._pub({"kind": LWW, "stamp": list(self.stamp)}, body), new
            self.held, self.held_bytes = body, len(body)  # only the newest write travels
            return (None if hold else self.release()), new
        if not crdt.is_convergent(new) or new.type_name != self.kind:
            raise SpindelError(
                f"topic {self.name!r} holds {self.kind} values; set one of those (or use .update)"
            )
        delta = new.delta()
        if delta is None:
            return None, new
        # Encoded even when held back: a change that cannot travel is refused at the write.
        body = wire.encode(delta.state(), where=f"the change to topic {self.name!r}")
        kept = new.clear_delta()
        if not hold and self.held is None:
            return self._pub({"kind": self.kind}, body), kept
        self.held = delta if self.held is None else self.held.merge(delta)
        self.held_bytes += len(body)
        return (None if hold else self.release()), kept

    def release(self) -> Frame | None:
        """The ``pub`` frame of the writes held back, joined (None if none are)."""
        if self.held is None:
            return None
        if self.kind == LWW:
            body, self.held, self.held_bytes = self.held, None, 0
            assert self.stamp is not None
            return self._pub({"kind": LWW, "stamp": list(self.stamp)}, body)
        body = wire.encode(self.held.state(), where=f"the changes to topic {self.name!r}")
        self.held, self.held_bytes = None, 0
        return self._pub({"kind": self.kind}, body)

    def _pub(self, fields: dict[str, Any], body: bytes) -> Frame:
        self.sent += 1
        return {"t": PUB, "topic": self.name, **fields, "seq": self.sent}, body

    def apply(self, current: Any, changes: Iterable[Change], full_state: bool = False) -> Any:
        """``current`` with changes from the hub applied; ``current`` itself if they add nothing.

        ``full_state``: the changes are whole states (a ``snap``), not deltas. A plain
        value is replaced by the winning write, unless equal to it. Deltas that arrived
        together are joined first and applied once, so a type whose join costs in
        proportion to the value is not paid per delta (the join is associative and
        commutative: the result is the same). A change of another kind is dropped;
        a replica that knows no kind yet (a mirror) takes the first it receives.
        """
        value = current
        deltas: list[Any] = []
        for header, body in changes:
            kind = header.get("kind")
            if self.kind is None and isinstance(kind, str):
                self.kind = kind
            if kind != self.kind or not body:
                continue
            if kind == LWW:
                stamp = as_stamp(header.get("stamp"))
                if wins(stamp, self.stamp):
                    self.stamp = stamp
                    self.clock.observe(stamp)
                    value = wire.decode(body)
                continue
            deltas.append(decode_state(str(kind), body))
        if deltas:
            value = join(value, join_all(deltas), full_state)
        return value if changed(current, value) else current

    def acknowledge(self, seq: int) -> None:
        """The hub stored this replica's writes up to number ``seq`` (an ``ack``)."""
        self.acked = max(self.acked, seq)

    def handshake(self, request_id: int, current: Any) -> Frame:
        """The ``sub`` frame that (re)starts following: mode, kind, writes so far, and the state if any.

        Its caller holds off writes meanwhile: a write stamps the topic before the
        value is stored, so the old value could otherwise leave under the new
        stamp, and the hub would drop the real write as not newer.
        """
        if self.held is not None:
            # Writes held back travel in the state shipped, under the handshake's number.
            self.held, self.held_bytes = None, 0
            self.sent += 1
        header: dict[str, Any] = {
            "t": SUB,
            "id": request_id,
            "topic": self.name,
            "mode": self.mode,
            "seq": self.sent,
        }
        if self.kind is not None:
            header["kind"] = self.kind
        if self.others is not None:
            header["others"] = self.others
        if self.mode == "mirror" or current is None:
            return header, None
        if self.kind == LWW:
            if self.stamp is None:
                return header, None
            header["stamp"] = list(self.stamp)
            return header, wire.encode(current)
        return header, wire.encode(current.state())
