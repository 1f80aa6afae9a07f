"""The frames peers and the hub exchange, and the rules both sides check.

A frame is a header map (see :mod:`spindel_jupyter.wire`) whose ``t`` field names
its type, optionally followed by an encoded body. Peers send:

``hello``  ``{name, kind, session}`` - first frame; the hub answers ``welcome`` or an ``error``.
``req``    ``{id, op, to?}``         - a request to peer ``to`` (or to the hub when absent).
``rep``    ``{re, to, error?}``      - the reply to request ``re`` of peer ``to``.
``msg``    ``{op, to}``              - one-way, e.g. output streamed during a call.
``cancel`` ``{id, to}``              - the caller gave up on request ``id`` (timeout, interrupt).
``sub``    ``{id, topic, mode, kind?, stamp?, others?}`` - follow a topic, shipping this peer's state
           (body) if any; ``others`` (``read`` or ``write``): who else may write it, said by its owner.
``unsub``  ``{topic}``               - stop following it.
``pub``    ``{topic, kind, seq, stamp?}`` - a local change: a CRDT delta or a stamped value (body).

The hub sends ``welcome`` ``{name, scope, max_frame_bytes}``, relays
``req``/``rep``/``msg``/``cancel`` with ``from`` and ``scope`` stamped for the
real sender, answers a request it cannot route with a ``rep`` carrying an
``error``, reports a bad frame with ``error`` ``{code, message, re?}``, and
broadcasts ``event`` frames (``{event: "peers"}`` with the peer list as body).
For topics it answers ``sub`` with ``snap`` ``{re, topic, kind, owner, others, stamp?, error?}`` (its
state before the joiner's, as body, when the joiner lacks something), relays
``pub`` to the other followers, and sends ``ack`` ``{topic, seq}`` once a change
is stored durably; a change it refuses (a topic another user shares read-only)
gets an ``error`` frame naming the ``topic``.

An error, in a ``rep`` or an ``error`` frame, is a map ``{code, message, ...}``
(the codes are in :mod:`~spindel_jupyter.core.codes`): :func:`to_wire` makes it
from an exception, :func:`from_wire` makes the exception of its class again.
"""

from __future__ import annotations

import re
from typing import Any

from . import codes, errors

HELLO = "hello"
WELCOME = "welcome"
REQ = "req"
REP = "rep"
MSG = "msg"
CANCEL = "cancel"
SUB = "sub"
UNSUB = "unsub"
PUB = "pub"
SNAP = "snap"
ACK = "ack"

#: How a peer follows a topic: both ways, publish only, or as a read-only mirror.
MODES = ("sync", "export", "mirror")
#: Who else may write a topic, as its owner shares it: other users read it, or write it too.
READ = "read"
WRITE = "write"
OTHERS = (READ, WRITE)
#: The kind of a topic holding plain last-writer-wins values (others are CRDT type names).
LWW = "lww"
MAX_TOPIC = 256
ERROR = "error"
EVENT = "event"

#: The ops of a remote call: the call itself (a request), and what the serving
#: peer sends its caller while it runs (one-way: output, queued/running status).
OP_CALL = "call"
OP_OUTPUT = "output"

#: Sender stamped on frames the hub itself originates.
HUB = "@hub"

#: What a peer is: a kernel, a browser UI, or a plain Python process.
KINDS = ("kernel", "ui", "script")

#: Where a peer comes from, as the hub stamps it on what it relays: the server's own
#: (joined with the server's token or login) or invited (joined with an invite token).
OWN = "own"
INVITED = "invited"
#: A peer of another hub of the mesh (``NAME@HUB``), as this hub stamps what it relays from there.
MESH = "mesh"
SCOPES = (OWN, INVITED, MESH)

_NAME = re.compile(r"\w[\w.\-]{0,63}")
_MAX_OP = 64

# Required header fields of each frame type a peer may send, and their types.
_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    HELLO: {"name": str, "kind": str, "session": str},
    REQ: {"id": int, "op": str},
    REP: {"re": int, "to": str},
    MSG: {"op": str, "to": str},
    CANCEL: {"id": int, "to": str},
    SUB: {"id": int, "topic": str, "mode": str},
    UNSUB: {"topic": str},
    PUB: {"topic": str, "kind": str, "seq": int},
}
_OPTIONAL: dict[str, dict[str, type | tuple[type, ...]]] = {
    REQ: {"to": str},
    REP: {"error": dict},
    SUB: {"kind": str, "stamp": list, "seq": int, "others": str},
    PUB: {"stamp": list},
}


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid peer name, else raise ``ValueError`` saying why."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"invalid peer name {name!r}: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter, digit or '_' (no '/' or spaces)"
        )
    return name


def split_peer(name: str) -> tuple[str, str]:
    """``NAME@HUB`` as ``(NAME, HUB)``; a bare name has hub ``""`` (peer names never hold ``@``)."""
    peer, _, hub = name.partition("@")
    return peer, hub


def same_peer(sender: str, target: str) -> bool:
    """Whether a frame from ``sender`` (as the hub stamped it) comes from the peer a caller named
    ``target``: a bare name matches that peer on any hub (the hub resolved it), a qualified one
    only itself, or the local peer when it is of this hub."""
    name, hub = split_peer(sender)
    target_name, target_hub = split_peer(target)
    return name == target_name and (not hub or not target_hub or hub == target_hub)


def name_from(text: str) -> str:
    """A valid peer name derived from free text such as a notebook's file name."""
    cleaned = re.sub(r"[^\w.\-]+", "-", text).strip("-.")
    cleaned = cleaned[:64] or "peer"
    return cleaned if _NAME.fullmatch(cleaned) else f"_{cleaned[:63]}"


def check_inbound(header: dict[str, Any]) -> str:
    """Validate a header sent by a peer and return its type; raise :class:`~errors.BadFrame`."""
    kind = header.get("t")
    if kind not in _FIELDS:
        known = ", ".join(sorted(_FIELDS))
        raise errors.BadFrame(f"unknown frame type {kind!r}: a peer sends one of {known}")
    for field, expected in _FIELDS[kind].items():
        value = header.get(field)
        if not isinstance(value, expected) or isinstance(value, bool):
            raise errors.BadFrame(f"{kind} frame needs field {field!r} of type {_type_names(expected)}")
    for field, expected in _OPTIONAL.get(kind, {}).items():
        if field in header and (not isinstance(header[field], expected) or isinstance(header[field], bool)):
            raise errors.BadFrame(f"{kind} frame field {field!r} must be of type {_type_names(expected)}")
    op = header.get("op")
    if isinstance(op, str) and not 0 < len(op) <= _MAX_OP:
        raise errors.BadFrame(f"op must be 1-{_MAX_OP} characters")
    if kind == HELLO and header["kind"] not in KINDS:
        raise errors.BadFrame(f"hello kind must be one of {', '.join(KINDS)}")
    if kind == SUB and header["mode"] not in MODES:
        raise errors.BadFrame(f"sub mode must be one of {', '.join(MODES)}")
    if kind == SUB and header.get("others", READ) not in OTHERS:
        raise errors.BadFrame(f"sub others must be one of {', '.join(OTHERS)}")
    topic = header.get("topic")
    if isinstance(topic, str) and not 0 < len(topic) <= MAX_TOPIC:
        raise errors.BadFrame(f"topic names are 1-{MAX_TOPIC} characters")
    return str(kind)


# -- errors on the wire ------------------------------------------------------------

#: The classes whose errors carry only their message: every refusal of the hub, and these.
_PLAIN_CLASSES: tuple[type[errors.SpindelError], ...] = (
    errors.HubError,
    *errors.HubError.__subclasses__(),
    errors.NotWritable,
    errors.NotServed,
    errors.Interrupted,
    errors.RemoteTimeout,
)
_PLAIN = {cls.code: cls for cls in _PLAIN_CLASSES}


def error_dict(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """The error map carried by ``rep`` and ``error`` frames."""
    return {"code": code, "message": message, **extra}


def to_wire(exc: errors.SpindelError) -> dict[str, Any]:
    """The error map of ``exc``: its code, its message, and the fields its class carries."""
    extra: dict[str, Any] = {}
    if isinstance(exc, (errors.PeerNotFound, errors.PeerLost, errors.RemoteError)):
        extra["peer"] = exc.peer
    if isinstance(exc, errors.PeerNotFound):
        extra["peers"] = exc.connected
    elif isinstance(exc, errors.RemoteError):
        extra.update(ename=exc.ename, evalue=exc.evalue, traceback=exc.traceback)
    elif isinstance(exc, errors.UnboundNames):
        extra["names"] = exc.names
    elif isinstance(exc, errors.UnsendableResult):
        extra["bundle"] = exc.bundle
    elif isinstance(exc, errors.MergeConflict):
        extra["conflicts"] = exc.conflicts
    return error_dict(exc.code, str(exc), **extra)


def from_wire(error: dict[str, Any], peer: str = "") -> errors.SpindelError:
    """The exception an error map stands for, of its code's class; ``peer``: who answered."""
    code = str(error.get("code", codes.HUB_ERROR))
    message = str(error.get("message", "unknown error"))
    who = str(error.get("peer", peer))
    if code == codes.PEER_NOT_FOUND:
        return errors.PeerNotFound(who, [str(p) for p in error.get("peers") or []])
    if code == codes.PEER_LOST:
        return errors.PeerLost(who, message)
    if code == codes.REMOTE_ERROR:
        return errors.RemoteError(
            who,
            str(error.get("ename", "Exception")),
            str(error.get("evalue", message)),
            [str(line) for line in error.get("traceback") or []],
        )
    if code == codes.UNBOUND_NAMES:
        return errors.UnboundNames(message, [str(n) for n in error.get("names") or []])
    if code == codes.UNSENDABLE:
        return errors.UnsendableResult(message, error.get("bundle"))
    if code == codes.MERGE_CONFLICT:
        return errors.MergeConflict(message, list(error.get("conflicts") or []))
    if code in _PLAIN:
        return _PLAIN[code](message)
    # A code this side does not know (a newer hub's): still the hub's refusal, code kept.
    return errors.HubError(message, code)


def _type_names(expected: type | tuple[type, ...]) -> str:
    if isinstance(expected, tuple):
        return " or ".join(t.__name__ for t in expected)
    return expected.__name__
