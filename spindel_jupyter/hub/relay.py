"""The relay: who is connected, and where each frame goes.

Plain Python with no web framework in it: the WebSocket handler feeds it bytes
and gives it a :class:`Link` to write to. In a mesh of hubs, a peer of another
hub (``NAME@HUB``) is a :class:`Member` too, whose link is the way to its hub:
calls, replies, output and cancels route the same whether the other end is here
or on another Jupyter server.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import inspect
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..core import errors, wire
from ..core.protocol import (
    CANCEL,
    ERROR,
    EVENT,
    HELLO,
    HUB,
    MESH,
    MSG,
    OWN,
    PUB,
    REP,
    REQ,
    SUB,
    UNSUB,
    WELCOME,
    check_inbound,
    check_name,
    split_peer,
    to_wire,
)
from .access import Actor
from .mesh import ALONE
from .topics import TopicStore

log = logging.getLogger(__name__)

#: Requests one peer may have waiting on others before new ones are refused.
MAX_PENDING_PER_PEER = 10_000


class Link(Protocol):
    """What the relay needs of one peer connection."""

    def send(self, frame: bytes, body: wire.Buffer = b"") -> None:
        """Queue ``frame`` followed by ``body`` for the peer; never raises if the peer is gone."""

    def close(self, code: int, reason: str) -> None:
        """Close the connection."""


@dataclass(eq=False)
class Member:
    """A connected peer, as the relay knows it."""

    link: Link
    name: str = ""
    kind: str = ""
    session: str = ""
    contexts: list[str] = field(default_factory=list)
    since: str = ""
    #: The Jupyter kernel id of a kernel peer (the lab marks the current notebook's peer with it).
    kernel: str = ""
    #: The notebook (absolute path) the peer's name follows; "" for a name set explicitly.
    notebook: str = ""
    #: Requests sent to this peer not yet answered: (caller name, request id).
    awaiting: set[tuple[str, int]] = field(default_factory=set)
    #: Number of requests this peer has outstanding with others.
    outstanding: int = 0
    #: Topics this peer follows.
    subscriptions: set[str] = field(default_factory=set)
    #: The invite this connection came in with (it may then only be the invited name).
    invite: Any = None
    #: The server's own peer, or an invited one (see :mod:`.access`).
    scope: str = OWN
    #: The user this peer acts for (the signed-in Jupyter user, or the invite).
    user: str = ""

    @property
    def actor(self) -> Actor:
        """This peer as the one asking for a hub operation."""
        return Actor(self.name, self.scope, self.user)

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "contexts": list(self.contexts),
            "since": self.since,
            "kernel": self.kernel,
            "scope": self.scope,
            "user": self.user,
        }


HubOp = Callable[[Member, Any], Any]


class Federation(Protocol):
    """What the relay needs of the mesh of hubs (:class:`~.mesh.Mesh`)."""

    def peers(self) -> list[dict[str, Any]]:
        """The peers of the other hubs, each with its ``hub``."""

    def reaches(self, hub: str) -> bool:
        """Whether ``hub`` is in the mesh now."""

    def send(self, hub: str, frame: bytes, body: wire.Buffer = b"") -> None:
        """Queue a frame for a peer of ``hub``."""

    def stats(self) -> dict[str, Any]:
        """The mesh's state, for stats."""


class _HubLink:
    """The link to a peer of another hub: its frames go over the mesh to that hub."""

    def __init__(self, mesh: Federation, hub: str) -> None:
        self.mesh, self.hub = mesh, hub

    def send(self, frame: bytes, body: wire.Buffer = b"") -> None:
        self.mesh.send(self.hub, frame, body)

    def close(self, code: int, reason: str) -> None:
        """Nothing to close here: the peer's own hub holds its connection."""


class Relay:
    """Registry of connected peers and router of their frames."""

    def __init__(self, max_frame_bytes: int, topics: TopicStore | None = None, max_peers: int = 1000) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.max_peers = max_peers
        self.topics = topics or TopicStore()
        self.topics.on_change = self._broadcast_topics
        self.members: dict[str, Member] = {}
        #: Called with the name of each peer that leaves.
        self.on_leave: list[Callable[[str], None]] = []
        #: Called with the old and the new name of each peer renamed after its notebook.
        self.on_rename: list[Callable[[str, str], None]] = []
        #: Frames received, by type, for /spindel/api/stats.
        self.frames_in: Counter[str] = Counter()
        self._hub_ops: dict[str, HubOp] = {"peers": self._op_peers, "update": self._op_update}
        self._tasks: set[asyncio.Future[None]] = set()
        #: Node store counters for stats, when the hub has a store.
        self.store_stats: Callable[[], dict[str, int]] | None = None
        #: Nodes moved between the hubs of the mesh (:mod:`.node_sync`), for stats.
        self.sync_stats: Callable[[], dict[str, int]] | None = None
        #: This hub's name (in the mesh, and on its peers in lists).
        self.hub_name = ""
        #: The mesh of hubs this one is in, if any; ``on_peers`` hears of changes to this hub's own peers.
        self.mesh: Federation | None = None
        self.on_peers: list[Callable[[list[dict[str, Any]]], None]] = []
        #: Peers of other hubs that calls here involve, by ``NAME@HUB``.
        self.remotes: dict[str, Member] = {}

    # -- connection lifecycle -------------------------------------------------

    def connect(self, link: Link) -> Member:
        """A new connection; it becomes a named peer once it says hello."""
        return Member(link)

    def disconnect(self, member: Member) -> None:
        """The connection closed: drop the peer and tell everyone waiting on it."""
        if not member.name or self.members.get(member.name) is not member:
            return
        del self.members[member.name]
        self.topics.drop(member)
        for listener in self.on_leave:
            listener(member.name)
        self._fail_awaiting(member, "disconnected")
        log.info("peer %r left", member.name)
        self._broadcast_peers()

    def stats(self) -> dict[str, Any]:
        """Counters for ``/spindel/api/stats``."""
        return {
            "peers": len(self.members),
            "topics": len(self.topics.topics),
            "frames_in": dict(self.frames_in),
            "changes_received": self.topics.received,
            "changes_relayed": self.topics.relayed,
            "changes_refused": self.topics.refused,
            **({"store": self.store_stats()} if self.store_stats else {}),
            **({"sync": self.sync_stats()} if self.sync_stats else {}),
            "mesh": self.mesh.stats() if self.mesh is not None else {"state": ALONE},
        }

    def local_peers(self) -> list[dict[str, Any]]:
        """This hub's own peers, each with this hub's name."""
        here = {"hub": self.hub_name, "local": True}
        return [{**m.info(), **here} for m in sorted(self.members.values(), key=lambda m: m.name)]

    def peers(self) -> list[dict[str, Any]]:
        """What ``/spindel/api/peers`` and the ``peers`` op report: this hub's, then the mesh's others."""
        return self.local_peers() + (self.mesh.peers() if self.mesh is not None else [])

    def mesh_changed(self) -> None:
        """The mesh's hubs or their peers changed: calls to peers no longer there fail, everyone is told."""
        listed = self._announced_users()
        for name in [name for name in self.remotes if name not in listed]:
            proxy = self.remotes.pop(name)
            hub = split_peer(name)[1]
            if self.mesh is not None and self.mesh.reaches(hub):
                self._fail_awaiting(proxy, "left its hub")
            else:
                self._fail_awaiting(proxy, f"is out of reach: its hub {hub!r} left the mesh")
        for name, proxy in self.remotes.items():
            proxy.user = listed[name]
        self.broadcast_peers()

    # -- inbound frames -------------------------------------------------------

    def receive(self, member: Member, data: bytes) -> None:
        """Handle one frame from ``member``; a bad frame gets an error, never an exception.

        Whatever goes wrong while handling it becomes an error frame (or reply):
        the connection, and everyone else's, lives on.
        """
        request_id = None
        try:
            header, body, request_id = self._unpack(data)
            kind = check_inbound(header)
            self.frames_in[kind] += 1
            if kind == HELLO:
                self._hello(member, header)
            elif not member.name:
                raise errors.HelloFirst("say hello first: the first frame names the peer")
            elif kind in _BETWEEN_PEERS and header.get("to") is not None:
                self._route(member, kind, header, body)
            elif kind == REQ:
                self._hub_request(member, header, body)
            elif kind == SUB:
                self.topics.subscribe(member, header, body)
            elif kind == UNSUB:
                self.topics.unsubscribe(member, header)
            elif kind == PUB:
                self.topics.publish(member, header, body)
        except errors.HubError as exc:
            self._refuse(member, exc, request_id)
        except Exception as exc:
            log.exception("spindel: failed to handle a frame from %r", member.name or "(no hello yet)")
            self._refuse(member, errors.HubFailure(_failed(exc)), request_id)

    def receive_from_hub(self, hub: str, data: wire.Buffer) -> None:
        """Handle one frame from a peer of ``hub`` (the mesh vouches for which hub sent it).

        It is stamped here as ``NAME@HUB`` of scope ``mesh``, and reaches only this
        hub's own peers: a peer of another hub calls peers, never the hub itself.
        """
        member, request_id, addressed = None, None, HUB
        try:
            header, body, request_id = self._unpack(data)
            if request_id is not None:
                # A refusal goes back as the addressed peer's reply: the other hub routes only those.
                addressed = str(header.get("to") or HUB)
            sender = header.get("from")
            try:
                member = self._remote(f"{check_name(str(sender))}@{hub}")
            except ValueError:
                log.warning("spindel: dropped a frame from hub %r with no valid sender (%r)", hub, sender)
                return
            kind = check_inbound(header)
            if kind not in _BETWEEN_PEERS or not isinstance(header.get("to"), str):
                raise errors.Forbidden(
                    f"a peer of another hub ({member.name}) can call, answer and message this hub's peers, "
                    f"and nothing else: no {kind!r} frame"
                )
            name, to_hub = split_peer(header["to"])
            if to_hub and to_hub != self.hub_name:
                raise errors.BadFrame(f"frame for {header['to']!r} reached hub {self.hub_name!r}")
            header["to"] = name
            user = header.get("user")
            if isinstance(user, str) and user:
                # Its hub stamped it, as it announces it; a peer that calls at once is not announced yet.
                member.user = user
            self.frames_in[f"mesh_{kind}"] += 1
            self._route(member, kind, header, body)
        except errors.HubError as exc:
            if member is not None:
                self._refuse(member, exc, request_id, addressed)
            else:
                log.warning("spindel: dropped a frame from hub %r: %s", hub, exc)
        except Exception as exc:
            log.exception("spindel: failed to handle a frame from hub %r", hub)
            if member is not None:
                self._refuse(member, errors.HubFailure(_failed(exc)), request_id, addressed)

    def _unpack(self, data: wire.Buffer) -> tuple[dict[str, Any], memoryview, int | None]:
        """A frame's header, its body, and its id if it is a request; refused if over the limit
        or not a frame."""
        if len(data) > self.max_frame_bytes:
            raise errors.FrameTooLarge(
                f"frame of {len(data)} bytes is over the hub's limit of {self.max_frame_bytes} "
                "bytes (c.SpindelHub.max_frame_bytes); send smaller values"
            )
        try:
            header, body = wire.unpack_frame(data)
        except errors.DecodeError as exc:
            raise errors.BadFrame(f"frame is not valid msgpack: {exc}") from None
        request_id = header["id"] if header.get("t") == REQ and isinstance(header.get("id"), int) else None
        return header, body, request_id

    def _route(self, member: Member, kind: str, header: dict[str, Any], body: memoryview) -> None:
        if kind == REQ:
            self._request(member, header, body)
        elif kind == REP:
            self._reply(member, header, body)
        elif kind == CANCEL:
            self._cancel(member, header)
        else:
            self._forward(member, header, body, self._find(header["to"], member))

    def _refuse(
        self, member: Member, exc: errors.HubError, request_id: int | None, sender: str = HUB
    ) -> None:
        log.debug("refused frame from %r: %s", member.name or "(no hello yet)", exc)
        if request_id is not None:
            member.link.send(_reply_error(member, request_id, sender, to_wire(exc)))
        else:
            member.link.send(wire.pack_frame({"t": ERROR, "from": HUB, **to_wire(exc)}))

    def _hello(self, member: Member, header: dict[str, Any]) -> None:
        if member.name:
            raise errors.BadFrame(f"already connected as {member.name!r}")
        try:
            name = check_name(header["name"])
        except ValueError as exc:
            raise errors.BadName(str(exc)) from None
        if member.invite is not None and name != member.invite.name:
            raise errors.BadName(f"this invite lets you join only as {member.invite.name!r}")
        current = self.members.get(name)
        if current is None and len(self.members) >= self.max_peers:
            raise errors.HubFull(
                f"the hub is full: {self.max_peers} peers are connected (c.SpindelHub.max_peers)"
            )
        if current is not None:
            if current.session != header["session"]:
                raise errors.NameTaken(f"name {name!r} is already connected; use %spin_connect --as OTHER")
            # The same peer reconnecting before the hub saw its old connection drop.
            current.link.close(4000, "replaced by a new connection of the same peer")
            self.disconnect(current)
        member.name = name
        member.kind = header["kind"]
        member.session = header["session"]
        member.contexts = _str_list(header.get("contexts"))
        kernel, notebook = header.get("kernel"), header.get("notebook")
        member.kernel = kernel if isinstance(kernel, str) else ""
        member.notebook = notebook if isinstance(notebook, str) and member.invite is None else ""
        member.since = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self.members[name] = member
        log.info("peer %r (%s) connected", name, member.kind)
        member.link.send(
            wire.pack_frame(
                {
                    "t": WELCOME,
                    "name": name,
                    "scope": member.scope,
                    "max_frame_bytes": self.max_frame_bytes,
                    "hub": self.hub_name,
                }
            )
        )
        self._broadcast_peers()

    def rename(self, member: Member, base: str, notebook: str) -> str:
        """Rename a peer after its notebook was renamed or moved (a taken name gets a suffix).

        The peer is told (it reconnects under the new name), everyone sees the new
        peer list, and calls waiting on either side still find their way back.
        """
        old = member.name
        if self.members.get(old) is not member:
            return old
        candidates = [base, *(f"{base}-{i}" for i in range(2, 100))]
        new = next((c for c in candidates if c == old or c not in self.members), old)
        member.notebook = notebook
        if new != old:
            del self.members[old]
            member.name = new
            self.members[new] = member
            for other in self.members.values():
                waiting = other.awaiting
                if any(caller == old for caller, _ in waiting):
                    other.awaiting = {(new if caller == old else caller, rid) for caller, rid in waiting}
            for listener in self.on_rename:
                listener(old, new)
            log.info("peer %r is now %r (its notebook moved to %s)", old, new, notebook)
        self.notify(new, "renamed", {"name": new, "notebook": notebook})
        self._broadcast_peers()
        return new

    def _find(self, name: str, asker: Member) -> Member | None:
        """The peer ``name`` stands for, to ``asker``: ``NAME@HUB``, or a bare ``NAME`` that is this
        hub's peer of that name, else the only one of the mesh. A peer of another hub reaches only
        this hub's own."""
        peer, hub = split_peer(name)
        if hub == self.hub_name or asker.scope == MESH:
            return self.members.get(peer) if hub in ("", self.hub_name) else None
        if not hub:
            local = self.members.get(peer)
            if local is not None or self.mesh is None:
                return local
            hubs = sorted({p["hub"] for p in self.mesh.peers() if p["name"] == peer})
            if len(hubs) > 1:
                choices = ", ".join(f"{peer}@{h}" for h in hubs)
                raise errors.AmbiguousPeer(
                    f"{peer!r} names peers of several hubs of the mesh, and none of this one: {choices}; "
                    "use one of these names"
                )
            if not hubs:
                return None
            hub = hubs[0]
        if self.mesh is None or not self.mesh.reaches(hub):
            return None
        return self._remote(f"{peer}@{hub}")

    def _remote(self, name: str) -> Member:
        """The member standing for ``NAME@HUB``, a peer of another hub."""
        proxy = self.remotes.get(name)
        if proxy is None:
            assert self.mesh is not None, "a peer of another hub without a mesh"
            proxy = Member(_HubLink(self.mesh, split_peer(name)[1]), name, kind="remote", scope=MESH)
            proxy.user = self._announced_users().get(name, "")
            self.remotes[name] = proxy
        return proxy

    def _announced_users(self) -> dict[str, str]:
        """Each peer of the mesh's other hubs (``NAME@HUB``) with the user its hub announces it acts for."""
        listed = self.mesh.peers() if self.mesh is not None else []
        return {f"{p['name']}@{p['hub']}": str(p.get("user") or "") for p in listed}

    def _callable(self, asker: Member) -> list[str]:
        """Who ``asker`` could call: this hub's peers, then the mesh's (the lab's panels are peers
        too, but nobody calls them)."""
        here = sorted(n for n, m in self.members.items() if m.kind != "ui")
        if asker.scope == MESH:
            return [f"{name}@{self.hub_name}" for name in here]
        if self.mesh is None:
            return here
        return here + [f"{p['name']}@{p['hub']}" for p in self.mesh.peers() if p.get("kind") != "ui"]

    def _request(self, member: Member, header: dict[str, Any], body: memoryview) -> None:
        target_name = header["to"]
        target = self._find(target_name, member)
        if target is None:
            asked = f"{target_name}@{self.hub_name}" if member.scope == MESH else target_name
            error = to_wire(errors.PeerNotFound(asked, self._callable(member)))
            member.link.send(_reply_error(member, header["id"], target_name, error))
            return
        if member.outstanding >= MAX_PENDING_PER_PEER:
            raise errors.BadFrame(f"over {MAX_PENDING_PER_PEER} requests waiting for replies; wait for some")
        target.awaiting.add((member.name, header["id"]))
        member.outstanding += 1
        self._forward(member, header, body, target)

    def _reply(self, member: Member, header: dict[str, Any], body: memoryview) -> None:
        key = (header["to"], header["re"])
        if key not in member.awaiting:
            log.debug("dropped reply from %r to %r: no such pending request", member.name, key)
            return
        member.awaiting.discard(key)
        caller = self._find(header["to"], member)
        if caller is None:
            return
        caller.outstanding -= 1
        self._forward(member, header, body, caller)

    def _cancel(self, member: Member, header: dict[str, Any]) -> None:
        target = self._find(header["to"], member)
        key = (member.name, header["id"])
        if target is None or key not in target.awaiting:
            return
        target.awaiting.discard(key)
        member.outstanding -= 1
        self._forward(member, header, memoryview(b""), target)

    def _forward(
        self, member: Member, header: dict[str, Any], body: memoryview, target: Member | None
    ) -> None:
        if target is None:
            return  # one-way message to a peer that left: nothing waits for it
        # Stamped: a peer cannot speak as another, nor claim to be one of the server's own or a user.
        header["from"] = member.name
        header["scope"] = member.scope
        header["user"] = member.user
        target.link.send(wire.pack_frame(header), body)

    def _hub_request(self, member: Member, header: dict[str, Any], body: memoryview) -> None:
        op = self._hub_ops.get(header["op"])
        if op is None:
            known = ", ".join(sorted(self._hub_ops))
            raise errors.UnknownOp(f"the hub has no op {header['op']!r} (known: {known})")
        try:
            argument = wire.decode(body) if body else None
        except errors.DecodeError as exc:
            raise errors.BadFrame(f"request body is not valid: {exc}") from None
        try:
            result = op(member, argument)
        except errors.SpindelError as exc:
            member.link.send(_reply_error(member, header["id"], HUB, to_wire(exc)))
            return
        except Exception as exc:
            log.exception("spindel: hub op %r failed", header["op"])
            member.link.send(
                _reply_error(member, header["id"], HUB, to_wire(errors.HubFailure(_failed(exc))))
            )
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(self._finish_op(member, header["id"], result))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            _reply(member, header["id"], result)

    async def _finish_op(self, member: Member, request_id: int, awaitable: Awaitable[Any]) -> None:
        try:
            result = await awaitable
        except errors.SpindelError as exc:
            member.link.send(_reply_error(member, request_id, HUB, to_wire(exc)))
        except Exception as exc:
            log.exception("spindel: hub op failed")
            member.link.send(_reply_error(member, request_id, HUB, to_wire(errors.HubFailure(_failed(exc)))))
        else:
            _reply(member, request_id, result)

    def add_op(self, name: str, op: HubOp) -> None:
        """Serve hub request ``name`` with ``op(member, argument)`` (a result or an awaitable of it)."""
        self._hub_ops[name] = op

    def notify(self, peer: str, event: str, body: Any) -> None:
        """Send an event to one peer, if it is connected."""
        member = self.members.get(peer)
        if member is not None:
            member.link.send(wire.pack_frame({"t": EVENT, "event": event, "from": HUB}, wire.encode(body)))

    def broadcast_ui(self, event: str, body: Any) -> None:
        """Send an event to UI peers (the lab panel)."""
        watchers = [m for m in self.members.values() if m.kind == "ui"]
        if watchers:
            frame = wire.pack_frame({"t": EVENT, "event": event, "from": HUB}, wire.encode(body))
            for member in watchers:
                member.link.send(frame)

    # -- hub ops ----------------------------------------------------------------

    def _op_peers(self, member: Member, argument: Any) -> Any:
        return self.peers()

    def _op_update(self, member: Member, argument: Any) -> Any:
        if not isinstance(argument, dict):
            raise errors.BadFrame("update takes a map, e.g. {'contexts': [...]}")
        if "contexts" in argument:
            member.contexts = _str_list(argument["contexts"])
        self._broadcast_peers()
        return member.info()

    # -- helpers ----------------------------------------------------------------

    def _fail_awaiting(self, member: Member, why: str) -> None:
        for caller_name, request_id in sorted(member.awaiting):
            caller = self._find(caller_name, member)
            if caller is None:
                continue
            caller.outstanding -= 1
            lost = errors.PeerLost(member.name, f"peer {member.name!r} {why} before it answered")
            caller.link.send(_reply_error(caller, request_id, member.name, to_wire(lost)))
        member.awaiting.clear()

    def _broadcast_topics(self) -> None:
        """Tell UI peers (the lab panel) about topics: they show them live, without polling."""
        if any(m.kind == "ui" for m in self.members.values()):
            self.broadcast_ui("topics", self.topics.list())

    def broadcast_peers(self) -> None:
        """Tell every peer the list of peers (it changed here, or elsewhere in the mesh)."""
        frame = wire.pack_frame({"t": EVENT, "event": "peers", "from": HUB}, wire.encode(self.peers()))
        for other in self.members.values():
            other.link.send(frame)

    def _broadcast_peers(self) -> None:
        local = self.local_peers()
        for listener in self.on_peers:
            listener(local)
        self.broadcast_peers()


#: The frames peers send each other through the hub (those with a ``to``).
_BETWEEN_PEERS = (REQ, REP, MSG, CANCEL)


def _reply(member: Member, request_id: int, result: Any) -> None:
    member.link.send(wire.pack_frame({"t": REP, "re": request_id, "from": HUB}, wire.encode(result)))


def _reply_error(to: Member, request_id: int, sender: str, error: dict[str, Any]) -> bytes:
    """The reply that fails request ``request_id`` of ``to``, as if from ``sender``."""
    return wire.pack_frame({"t": REP, "re": request_id, "to": to.name, "from": sender, "error": error})


def _failed(exc: Exception) -> str:
    return (
        f"the hub failed on this request ({type(exc).__name__}: {exc}); nothing else was affected, "
        "and the server's log has the details"
    )


def _str_list(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return []
    return list(value)
