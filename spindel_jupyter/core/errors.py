"""The exceptions users see, and the mapping from wire error codes to them.

Every error that crosses the wire carries a ``code``; :func:`from_wire` turns it
back into the matching exception so a caller catches ``PeerNotFound`` whether the
hub or the remote kernel raised it.
"""

from __future__ import annotations

import difflib
from typing import Any


class SpindelError(Exception):
    """Base class of every error this package raises."""

    #: The wire code this error travels under when a peer raises it while serving.
    code = "error"

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
    """The hub refused a frame or a request; the message says why and what to do."""

    def __init__(self, message: str, code: str = "hub_error") -> None:
        self.code = code
        super().__init__(message)


class NameTaken(HubError):
    """The peer name asked for is already connected to the hub."""


class NotConnected(SpindelError):
    """No connection to a hub: connect first, or the hub cannot be reached."""


class NotServed(SpindelError):
    """The peer does not serve this call: not opted in, not this context, or not this caller."""

    code = "not_served"


class Interrupted(SpindelError):
    """Served code was interrupted because its caller stopped waiting."""

    code = "interrupted"


class UnsendableResult(SpindelError):
    """A remote result the codec cannot carry; ``bundle`` holds its rich display."""

    code = "unsendable"

    def __init__(self, message: str, bundle: dict[str, Any] | None = None) -> None:
        self.bundle = bundle or {}
        super().__init__(message)


class PeerNotFound(SpindelError):
    """The target peer is not connected to the hub."""

    def __init__(self, peer: str, connected: list[str] | None = None) -> None:
        self.peer = peer
        self.connected = list(connected or [])
        listing = ", ".join(self.connected) if self.connected else "none"
        close = difflib.get_close_matches(peer, self.connected, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        super().__init__(f"no peer named {peer!r} is connected to the hub; {hint}connected: {listing}")


class PeerLost(SpindelError):
    """The peer (or the hub) went away while a call to it was pending."""

    def __init__(self, peer: str, detail: str = "") -> None:
        self.peer = peer
        super().__init__(detail or f"peer {peer!r} disconnected before it answered")


class RemoteTimeout(SpindelError, TimeoutError):
    """A remote call did not answer within its timeout."""

    code = "timeout"


class RemoteError(SpindelError):
    """An exception raised on a remote peer, with its remote traceback."""

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

    code = "unbound_names"

    def __init__(self, message: str, names: list[str] | None = None) -> None:
        self.names = list(names or [])
        super().__init__(message)


class MergeConflict(SpindelError):
    """A merge found conflicting edits and changed nothing; ``conflicts`` lists them side by side."""

    code = "merge_conflict"

    def __init__(self, message: str, conflicts: list[dict[str, Any]] | None = None) -> None:
        self.conflicts = list(conflicts or [])
        super().__init__(message)

    def __repr__(self) -> str:
        lines = [str(self)]
        for c in self.conflicts:
            lines.append(f"cell {c.get('index')}: ours {c.get('ours')!r} | theirs {c.get('theirs')!r}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        import html

        def cell(text: Any) -> str:
            shown = "(deleted)" if text is None else html.escape(str(text))
            return f"<td style='text-align:left;vertical-align:top'><pre>{shown}</pre></td>"

        rows = "".join(
            f"<tr><td>{c.get('index')}</td>{cell(c.get('base'))}{cell(c.get('ours'))}{cell(c.get('theirs'))}</tr>"
            for c in self.conflicts
        )
        head = "<tr><th>cell</th><th>base</th><th>ours</th><th>theirs</th></tr>"
        return f"<p>{html.escape(str(self))}</p><table>{head}{rows}</table>"


class NotWritable(SpindelError):
    """Another peer holds the workspace's writer lease."""

    code = "not_writable"


# Wire error codes, in one place. The hub and the peers both speak these.
BAD_FRAME = "bad_frame"
FRAME_TOO_LARGE = "frame_too_large"
HELLO_FIRST = "hello_first"
BAD_NAME = "bad_name"
NAME_TAKEN = "name_taken"
PEER_NOT_FOUND = "peer_not_found"
PEER_LOST = "peer_lost"
REMOTE_ERROR = "remote_error"
UNKNOWN_OP = "unknown_op"
TOPIC_KIND = "topic_kind"
HUB_FULL = "hub_full"
TOO_MANY_TOPICS = "too_many_topics"
HUB_ERROR = "hub_error"

# Errors that travel as just a code and a message.
_PLAIN: dict[str, type[SpindelError]] = {
    cls.code: cls for cls in (NotServed, Interrupted, RemoteTimeout, NotWritable)
}


def from_wire(error: dict[str, Any], peer: str = "") -> SpindelError:
    """The exception for an error dict received in a reply or an error frame."""
    code = str(error.get("code", "hub_error"))
    message = str(error.get("message", "unknown error"))
    if code == PEER_NOT_FOUND:
        return PeerNotFound(str(error.get("peer", peer)), list(error.get("peers") or []))
    if code == PEER_LOST:
        return PeerLost(str(error.get("peer", peer)), message)
    if code == REMOTE_ERROR:
        return RemoteError(
            str(error.get("peer", peer)),
            str(error.get("ename", "Exception")),
            str(error.get("evalue", message)),
            [str(line) for line in error.get("traceback") or []],
        )
    if code == UnboundNames.code:
        return UnboundNames(message, [str(n) for n in error.get("names") or []])
    if code == MergeConflict.code:
        return MergeConflict(message, list(error.get("conflicts") or []))
    if code == UnsendableResult.code:
        return UnsendableResult(message, error.get("bundle"))
    if code in _PLAIN:
        return _PLAIN[code](message)
    if code == NAME_TAKEN:
        return NameTaken(message, code)
    return HubError(message, code)


def to_wire(exc: SpindelError) -> dict[str, Any]:
    """The error dict for a :class:`SpindelError` raised while serving a request."""
    error: dict[str, Any] = {"code": exc.code, "message": str(exc)}
    if isinstance(exc, UnboundNames):
        error["names"] = exc.names
    if isinstance(exc, UnsendableResult):
        error["bundle"] = exc.bundle
    if isinstance(exc, MergeConflict):
        error["conflicts"] = exc.conflicts
    return error
