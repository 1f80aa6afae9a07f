"""The exceptions this package raises, the hub's and the serving peers' included.

An error that crosses the wire travels as its class's ``code`` (see
:mod:`~spindel_jupyter.core.codes`) and arrives as the same class, so a caller
catches ``WorkspaceNotFound`` or ``PeerNotFound`` whichever side raised it
(:func:`~spindel_jupyter.core.protocol.from_wire`).
"""

from __future__ import annotations

import difflib
from typing import Any

from . import codes


class SpindelError(Exception):
    """Base class of every error this package raises."""

    #: The wire code this error travels under (a subclass that can travel has one of its own).
    code = codes.ERROR

    def _render_traceback_(self) -> list[str]:
        # IPython shows this instead of a traceback through this package's internals.
        return [f"{type(self).__name__}: {self}"]


class SpindelWarning(UserWarning):
    """Something works, but maybe not as the user meant: e.g. serving every peer of the hub."""


class EncodeError(SpindelError, TypeError):
    """A value has no wire encoding; names its type and where it sits."""

    def __init__(self, where: str, type_name: str, detail: str = "") -> None:
        self.where = where
        self.type_name = type_name
        hint = detail or (
            "send plain data instead (None, bool, int, float, str, bytes, list, dict, "
            "tuple, set, complex, datetime/date/time/timedelta, Decimal, numpy arrays), "
            "for example df.to_dict() or obj.__dict__"
        )
        super().__init__(f"cannot send {where}: a value of type {type_name} has no wire encoding; {hint}")


class DecodeError(SpindelError, ValueError):
    """Bytes that are not a valid encoding (truncated, corrupt, or of an unknown type)."""


class HubError(SpindelError):
    """The hub refused a frame or a request; the message says why and what to do.

    Each refusal with a code of its own arrives as the subclass of that code; a
    bare ``HubError`` is one without (or with a code this side does not know,
    kept in ``code``).
    """

    def __init__(self, message: str, code: str | None = None) -> None:
        if code is not None:
            self.code = code
        super().__init__(message)


class HubFailure(HubError):
    """The hub failed on a frame or a request: nothing else was affected, and its log has the details."""

    code = codes.HUB_ERROR


class BadFrame(HubError):
    """A frame the hub cannot read, or one that breaks the protocol's rules."""

    code = codes.BAD_FRAME


class FrameTooLarge(HubError):
    """A frame over the hub's ``max_frame_bytes``."""

    code = codes.FRAME_TOO_LARGE


class HelloFirst(HubError):
    """A frame sent before the ``hello`` that names the peer."""

    code = codes.HELLO_FIRST


class BadName(HubError):
    """A peer name the hub refuses: not a valid name, or not the one an invite allows."""

    code = codes.BAD_NAME


class NameTaken(HubError):
    """The peer name asked for is already connected to the hub."""

    code = codes.NAME_TAKEN


class AmbiguousPeer(HubError):
    """A bare peer name matches peers of several hubs of the mesh, and none of this hub."""

    code = codes.AMBIGUOUS_PEER


class HubFull(HubError):
    """The hub has as many peers connected as it takes (``c.SpindelHub.max_peers``)."""

    code = codes.HUB_FULL


class UnknownOp(HubError):
    """A request for an operation that the hub, or the peer asked, does not serve."""

    code = codes.UNKNOWN_OP


class BadTopicKind(HubError):
    """A topic written with another kind of value than it holds, or with a kind that does not exist."""

    code = codes.TOPIC_KIND


class TooManyTopics(HubError):
    """The hub holds as many topics as it takes (``c.SpindelHub.max_topics``)."""

    code = codes.TOO_MANY_TOPICS


class Forbidden(HubError):
    """The hub refuses an operation to whoever asked; the message names the rule and what to do."""

    code = codes.FORBIDDEN


class WorkspaceNotFound(HubError, KeyError):
    """No workspace has that name."""

    code = codes.WORKSPACE_NOT_FOUND

    def __str__(self) -> str:
        # KeyError would quote the message.
        return str(self.args[0]) if self.args else "workspace not found"


class WorkspaceExists(HubError):
    """A workspace of that name already exists."""

    code = codes.WORKSPACE_EXISTS


class CorruptNode(HubError):
    """A stored node whose bytes no longer match its hash."""

    code = codes.CORRUPT_NODE


class MissingNode(HubError):
    """A node that is not in the store."""

    code = codes.MISSING_NODE


class NotConnected(SpindelError):
    """No connection to a hub: connect first, or the hub cannot be reached."""


class NotServed(SpindelError):
    """The peer does not serve this call: not opted in, not this context, or not this caller."""

    code = codes.NOT_SERVED


class Interrupted(SpindelError):
    """Served code was interrupted because its caller stopped waiting."""

    code = codes.INTERRUPTED


class UnsendableResult(SpindelError):
    """A remote result the codec cannot carry; ``bundle`` holds its rich display."""

    code = codes.UNSENDABLE

    def __init__(self, message: str, bundle: dict[str, Any] | None = None) -> None:
        self.bundle = bundle or {}
        super().__init__(message)


class PeerNotFound(SpindelError):
    """The target peer is not connected to the hub."""

    code = codes.PEER_NOT_FOUND

    def __init__(self, peer: str, connected: list[str] | None = None) -> None:
        self.peer = peer
        self.connected = list(connected or [])
        listing = ", ".join(self.connected) if self.connected else "none"
        close = difflib.get_close_matches(peer, self.connected, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        super().__init__(f"no peer named {peer!r} is connected to the hub; {hint}connected: {listing}")


class PeerLost(SpindelError):
    """The peer (or the hub) went away while a call to it was pending."""

    code = codes.PEER_LOST

    def __init__(self, peer: str, detail: str = "") -> None:
        self.peer = peer
        super().__init__(detail or f"peer {peer!r} disconnected before it answered")


class RemoteTimeout(SpindelError, TimeoutError):
    """A remote call did not answer within its timeout."""

    code = codes.TIMEOUT


class RemoteError(SpindelError):
    """An exception raised on a remote peer, with its remote traceback."""

    code = codes.REMOTE_ERROR

    def __init__(self, peer: str, ename: str, evalue: str, traceback: list[str] | None = None) -> None:
        self.peer = peer
        self.ename = ename
        self.evalue = evalue
        self.traceback = list(traceback or [])
        super().__init__(f"[{peer}] {ename}: {evalue}")

    def _render_traceback_(self) -> list[str]:
        # IPython shows the remote traceback, once, instead of the local one.
        header = f"RemoteError from peer {self.peer!r}:"
        return [header, *(self.traceback or [f"{self.ename}: {self.evalue}"])]


class UnboundNames(SpindelError):
    """Names a remote body reads that are neither arguments nor defined remotely."""

    code = codes.UNBOUND_NAMES

    def __init__(self, message: str, names: list[str] | None = None) -> None:
        self.names = list(names or [])
        super().__init__(message)


class MergeConflict(SpindelError):
    """A merge found conflicting edits and changed nothing; ``conflicts`` lists them side by side."""

    code = codes.MERGE_CONFLICT

    def __init__(self, message: str, conflicts: list[dict[str, Any]] | None = None) -> None:
        self.conflicts = list(conflicts or [])
        super().__init__(message)

    def __repr__(self) -> str:
        lines = [str(self)]
        for c in self.conflicts:
            lines.append(f"cell {c.get('index')}: ours {c.get('ours')!r} | theirs {c.get('theirs')!r}")
        return "\n".join(lines)


class NotWritable(SpindelError):
    """Not writable by whoever asked: another peer holds the workspace's writer lease, or the
    workspace or topic belongs to another user, who shares it read-only."""

    code = codes.NOT_WRITABLE
