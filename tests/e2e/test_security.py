"""SECURITY.md's table of who may do what, cell by cell, against a real hub, kernel and peers.

Each row of the table is an operation; each column a kind of asker: one of the
server's own peers (a script with the server's token), an invited peer (joined
with an invite token), a peer of another hub of the mesh (over a real
nats-server where each hub has its own user), and a REST request (the
signed-in user). Every cell is a test that tries the operation for real and
checks the hub (or the serving kernel) allowed it, or refused it for that rule,
changing nothing. A peer of another hub works through its own hub (B), which
shares the registry of workspaces with this one (A); and it asks this hub
directly as its own hub could (frames on NATS under that hub's user, the most
any hub can send), which is refused for every hub operation.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import queue
import secrets
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from spindel_jupyter.core import wire
from spindel_jupyter.core.errors import BadName, Forbidden, HubError, NotServed, NotWritable
from spindel_jupyter.core.protocol import from_wire
from spindel_jupyter.peer.client import Peer
from tests.support import HubServer, Kernel, NatsServer, security_table, wait_until

OWN, INVITED, MESH, REST = "own peer", "invited peer", "peer of another hub", "REST request"
COLUMNS = (OWN, INVITED, MESH, REST)
ALLOWED, REFUSED, NO_ROUTE = "allowed", "refused", "no route"

NOTEBOOK = {
    "cells": [
        {
            "cell_type": "code",
            "id": "c0",
            "metadata": {},
            "source": "x = 1",
            "outputs": [],
            "execution_count": None,
        }
    ],
    "metadata": {},
    "nbformat": 4,
    "nbformat_minor": 5,
}
_ids = itertools.count()


class Refused(Exception):
    """The operation was refused for a rule (not failed for another reason)."""


class FromAnotherHub:
    """Peer ``sec-asker`` of hub B asking hub A itself, through NATS as hub B's user."""

    def __init__(self, url: str) -> None:
        import nats

        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.replies: queue.Queue[bytes] = queue.Queue()
        self.nc = self._run(nats.connect(url))

        async def received(msg: Any) -> None:
            self.replies.put(msg.data[1:])  # after the mark of a whole (unchunked) message

        self._run(self.nc.subscribe("spindel.frames.B.A", cb=received))
        self._ids = itertools.count(1)

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)

    def request(self, op: str, argument: Any = None) -> Any:
        rid = next(self._ids)
        frame = wire.pack_frame({"t": "req", "id": rid, "op": op, "from": "sec-asker"}, wire.encode(argument))
        self._run(self.nc.publish("spindel.frames.A.B", b"\x00" + frame))
        while True:
            header, body = wire.unpack_frame(self.replies.get(timeout=10))
            if (header.get("to"), header.get("re")) == ("sec-asker@B", rid):
                break
        if header.get("error"):
            error = from_wire(header["error"])
            if isinstance(error, Forbidden):
                raise Refused(str(error))
            raise error
        return wire.decode(body) if body else None

    def close(self) -> None:
        self._run(self.nc.close())
        self.loop.call_soon_threadsafe(self.loop.stop)


@dataclass
class World:
    hub: HubServer
    own: Peer
    guest: Peer
    other_guest: Peer
    server: Kernel
    remote: Peer
    from_b: FromAnotherHub
    other: HubServer
    serving: str = ""

    def fresh(self, stem: str) -> str:
        return f"sec-{stem}-{next(_ids)}-{secrets.token_hex(2)}"

    def op(self, who: str, op: str, **arguments: Any) -> Any:
        """Workspace operation ``op``, asked by ``who``: over its WebSocket, or as a REST request."""
        if who == REST:
            return self.rest(op, arguments)
        if who == MESH and "name" in arguments and op != "publish":  # B has it once the registry says so
            wait_until(lambda: self.on_b(arguments["name"]) is not None, what=f"{arguments['name']} on B")
        peer = {OWN: self.own, INVITED: self.guest, MESH: self.remote}[who]
        try:
            return peer.request(None, f"workspace.{op}", arguments, timeout=30)
        except (Forbidden, NotWritable) as exc:  # NotWritable: a workspace of another user
            raise Refused(str(exc)) from None

    def on_b(self, name: str) -> dict[str, Any] | None:
        """Workspace ``name`` as hub B lists it."""
        listed = self.remote.request(None, "workspace.list", {}, timeout=30)
        return next((w for w in listed if w["name"] == name), None)

    def on_a(self, name: str) -> dict[str, Any]:
        """Workspace ``name`` as this hub (A) lists it, once it has it."""
        wait_until(
            lambda: name in [d["name"] for d in self.hub.get("spindel/api/workspaces")], what=f"{name} on A"
        )
        return dict(self.hub.get(f"spindel/api/workspaces/{name}"))

    def rest(self, op: str, arguments: dict[str, Any]) -> Any:
        if op == "publish":
            method, path = "POST", "spindel/api/workspaces"
        elif op == "list":
            method, path = "GET", "spindel/api/workspaces"
        else:
            method, path = "POST", f"spindel/api/workspaces/{arguments.pop('name')}/{op}"
        try:
            return self.hub.request(method, path, arguments if method == "POST" else None)
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
            if exc.code == 403 and body.get("code") == "forbidden":
                raise Refused(body["message"]) from None
            raise AssertionError(f"REST {op} failed with {exc.code}: {body}") from None

    def published(self, who: str, from_file: bool = False) -> str:
        """A new workspace published by ``who`` (from a server file when ``from_file``); its name."""
        name = self.fresh("ws")
        if from_file:
            path = f"security/{name}.ipynb"
            (self.hub.notebooks / path).write_text(json.dumps(NOTEBOOK))
            self.op(who, "publish", name=name, path=path)
        else:
            self.op(who, "publish", name=name, notebook=NOTEBOOK)
        return name

    def serve(self, allow: str | None, functions: str | None = None) -> None:
        """The serving kernel serves again, with ``--allow`` as given (None: no --allow), and with
        ``--functions`` when given (only those functions, by name)."""
        state = f"{allow} {functions}"
        if self.serving != state:
            line = "%spin_unserve\n%spin_serve" + ("" if allow is None else f" --allow {allow!r}")
            self.server.ok(line + ("" if functions is None else f" --functions {functions}"))
            self.serving = state

    def call(self, who: str) -> int:
        peer = {OWN: self.own, INVITED: self.guest, MESH: self.remote}[who]
        body = {"kind": "cell", "source": "import os\nos.getpid()", "args": {}}
        try:
            return int(peer.request("server@A", "call", body, timeout=30)["value"])
        except NotServed as exc:
            raise Refused(str(exc)) from None


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Hub A (the one asked) and hub B, each joined to NATS as its own user."""
    root = tmp_path_factory.mktemp("security")
    nats = NatsServer.with_hub_users(root / "nats", "AB").start()
    hub = HubServer(
        root / "A", args=("--SpindelHub.hub_name=A", f"--SpindelHub.nats_url={nats.user_url('A')}")
    )
    other = HubServer(
        root / "B", args=("--SpindelHub.hub_name=B", f"--SpindelHub.nats_url={nats.user_url('B')}")
    )
    hub.start()
    other.start()
    (hub.notebooks / "security").mkdir(exist_ok=True)
    own = Peer(hub.ws_url, "sec-own", hub.token, kind="script", session="sec-own").start()
    invites = [
        own.request(None, "invite.create", {"name": n, "ttl": "1h"}, timeout=10)
        for n in ("sec-guest", "sec-guest2")
    ]
    guest = Peer(hub.ws_url, "sec-guest", invites[0]["token"], kind="script", session="sec-guest").start()
    other_guest = Peer(
        hub.ws_url, "sec-guest2", invites[1]["token"], kind="script", session="sec-guest2"
    ).start()
    server = hub.start_notebook_kernel("security/server.ipynb")
    server.ok("%load_ext spindel_jupyter\ndef double(x):\n    return 2 * x")
    remote = Peer(other.ws_url, "sec-remote", other.token, kind="script", session="sec-remote").start()
    wait_until(
        lambda: "server" in [p["name"] for p in remote.peers()], timeout=20, what="A's peers seen from B"
    )
    from_b = FromAnotherHub(nats.user_url("B"))
    (other.notebooks / "security").mkdir(exist_ok=True)
    yield World(hub, own, guest, other_guest, server, remote, from_b, other)
    from_b.close()
    server.shutdown()
    for peer in (guest, other_guest, own, remote):
        peer.close()
    for server_process in (hub, other):
        server_process.stop()
    nats.stop()


# -- the rows: each tries one operation as ``who``; returns if allowed, raises Refused if refused ----


def join_as_another_name(w: World, who: str) -> None:
    token = w.hub.token
    if who == INVITED:
        token = w.own.request(None, "invite.create", {"name": w.fresh("inv"), "ttl": "1h"}, timeout=10)[
            "token"
        ]
    name = w.fresh("joiner")
    try:
        Peer(w.hub.ws_url, name, token, session=name).start().close()
    except BadName as exc:
        assert "only as" in str(exc), exc
        raise Refused(str(exc)) from None


def list_everything(w: World, who: str) -> None:
    if who == REST:
        for path in ("peers", "topics", "workspaces"):
            assert isinstance(w.hub.get(f"spindel/api/{path}"), list)
        return
    peer = {OWN: w.own, INVITED: w.guest, MESH: w.remote}[who]
    assert any(p["name"] == peer.name for p in peer.peers())
    name = w.published(OWN)  # a workspace of A, which the registry shares with B
    wait_until(lambda: name in [d["name"] for d in w.op(who, "list")], what="the workspace listed")


def sync_a_topic(w: World, who: str) -> None:
    """Through its own hub, which shares its topics with the mesh: the topic reaches A too."""
    peer = {OWN: w.own, INVITED: w.guest, MESH: w.remote}[who]
    topic, answers = w.fresh("topic"), []
    peer.on_frame("snap", lambda header, body: answers.append(header))
    peer.on_frame("ack", lambda header, body: answers.append(header))
    peer.send_frame({"t": "sub", "id": 1, "topic": topic, "mode": "sync", "kind": "lww"})
    peer.send_frame(
        {"t": "pub", "topic": topic, "kind": "lww", "seq": 1, "stamp": [1, 0, peer.name]}, b"\x01"
    )
    wait_until(lambda: any(a["t"] == "ack" for a in answers), what="the hub to store the write")
    assert not any(a.get("error") for a in answers), answers
    wait_until(lambda: any(t["name"] == topic for t in w.hub.get("spindel/api/topics")), what="A to hold it")


def call_serving_no_allow(w: World, who: str) -> None:
    w.serve(None)
    w.call(who)


def call_allow_naming(w: World, who: str) -> None:
    w.serve("sec-own,sec-guest,sec-remote@B")
    w.call(who)


def call_allow_naming_the_user(w: World, who: str) -> None:
    """``--allow user:NAME`` names the user the caller acts for, as this hub lists it."""
    peer, hub = {OWN: (w.own, "A"), INVITED: (w.guest, "A"), MESH: (w.remote, "B")}[who]
    listed = [p for p in w.own.peers() if (p["name"], p.get("hub")) == (peer.name, hub)]
    w.serve(f"user:{listed[0]['user']}")
    w.call(who)


def call_a_served_function(w: World, who: str) -> None:
    w.serve("sec-own,sec-guest,sec-remote@B", functions="double")
    peer = {OWN: w.own, INVITED: w.guest, MESH: w.remote}[who]
    body = {"kind": "named", "name": "double", "args": [21]}
    assert peer.request("server@A", "call", body, timeout=30)["value"] == 42


def send_code_to_a_functions_only_kernel(w: World, who: str) -> None:
    """Code, another name or a dunder, each refused before anything runs."""
    w.serve("sec-own,sec-guest,sec-remote@B", functions="double")
    peer = {OWN: w.own, INVITED: w.guest, MESH: w.remote}[who]
    refusals = []
    for body in (
        {"kind": "cell", "source": "import os\nos.getpid()", "args": {}},
        {"kind": "function", "source": "def double(x):\n    return 3", "name": "double", "args": [1]},
        {"kind": "named", "name": "__import__", "args": ["os"]},
        {"kind": "named", "name": "os"},
    ):
        try:
            peer.request("server@A", "call", body, timeout=30)
        except NotServed as exc:
            refusals.append(str(exc))
    assert len(refusals) == 4, refusals
    raise Refused(refusals[0])


def call_allow_not_naming(w: World, who: str) -> None:
    w.serve("somebody-else")
    w.call(who)


def call_allow_everyone(w: World, who: str) -> None:
    w.serve("*")
    w.call(who)


def publish_a_server_file(w: World, who: str) -> None:
    name = w.fresh("secret")
    path = f"security/{name}.ipynb"
    (w.hub.notebooks / path).write_text(json.dumps(NOTEBOOK))
    try:
        w.op(who, "publish", name=name, path=path)
    except (Refused, HubError) as exc:  # through B, the path names a file of B's server, which has none
        assert name not in [d["name"] for d in w.hub.get("spindel/api/workspaces")]
        raise Refused(str(exc)) from None
    assert w.on_a(name)["path"] == path


def publish_content(w: World, who: str) -> None:
    name = w.published(who)
    assert w.on_a(name)["path"] is None


def follow_into_a_server_file(w: World, who: str) -> None:
    name = w.published(OWN)
    path = f"security/following/{name}.ipynb"
    try:
        w.op(who, "follow", name=name, path=path)
    except Refused:
        assert not (w.hub.notebooks / path).exists()
        raise
    _written_here(w, who, path)


def _written_here(w: World, who: str, path: str) -> None:
    """The file ``path`` was written on this server; through another hub, on that hub's server instead."""
    if who == MESH:
        assert not (w.hub.notebooks / path).exists() and (w.other.notebooks / path).exists()
        raise Refused(f"written on hub B's server, never on this one: {path}")
    assert (w.hub.notebooks / path).exists()


def follow_receiving(w: World, who: str) -> None:
    name = w.published(OWN)
    answer = w.op(who, "follow", name=name, deliver=True)
    assert answer["notebook"]["cells"][0]["source"] == "x = 1"


def fork_into_a_server_file(w: World, who: str) -> None:
    name = w.published(OWN)
    path = f"security/forks/{name}-f.ipynb"
    try:
        w.op(who, "fork", name=name, new=f"{name}-f", path=path)
    except Refused:
        assert not (w.hub.notebooks / path).exists()
        assert f"{name}-f" not in [d["name"] for d in w.hub.get("spindel/api/workspaces")]
        raise
    _written_here(w, who, path)


def fork_receiving(w: World, who: str) -> None:
    name = w.published(OWN)
    answer = w.op(who, "fork", name=name, new=f"{name}-f", deliver=True)
    assert answer["notebook"]["cells"][0]["source"] == "x = 1" and answer["path"] is None


def _changed_fork(w: World, who: str, parent: str) -> str:
    fork = f"{parent}-f"
    w.op(who, "fork", name=parent, new=fork, deliver=True)
    changed = {**NOTEBOOK, "cells": [{**NOTEBOOK["cells"][0], "source": "x = 2"}]}
    w.op(who, "publish", name=fork, notebook=changed)
    return fork


def first_source(path: Path) -> str:
    source = json.loads(path.read_text())["cells"][0]["source"]
    return "".join(source) if isinstance(source, list) else str(source)


def merge_into_a_server_file(w: World, who: str) -> None:
    # An invited peer cannot publish a server file: one of the server's own publishes the parent.
    parent = w.published(OWN if who in (INVITED, MESH) else who, from_file=True)
    path = w.hub.get(f"spindel/api/workspaces/{parent}")["path"]
    fork = _changed_fork(w, who, parent)
    try:
        w.op(who, "merge", name=fork)
    except Refused:
        assert first_source(w.hub.notebooks / path) == "x = 1"
        raise
    assert first_source(w.hub.notebooks / path) == "x = 2"


def merge_into_no_file(w: World, who: str) -> None:
    parent = w.published(who)
    fork = _changed_fork(w, who, parent)
    assert w.op(who, "merge", name=fork)["merged"] is True


def claim_a_lease(w: World, who: str) -> None:
    name = w.published(OWN)
    w.op(who, "claim", name=name, force=True)
    holder = w.hub.get(f"spindel/api/workspaces/{name}")["owner"]["peer"]
    # The hub is in a mesh: the registry, shared by its hubs, names each peer with its hub.
    expected = {OWN: f"{w.own.name}@A", INVITED: f"{w.guest.name}@A", MESH: f"{w.remote.name}@B"}.get(who)
    if who == MESH:
        wait_until(lambda: w.on_a(name)["owner"]["peer"] == expected, what="A to see the claim")
        return
    assert holder == expected if expected else holder.startswith("user:") and holder.endswith("@A")


def overwrite_a_foreign_file(w: World, who: str) -> None:
    name = w.published(OWN)
    victim = w.hub.notebooks / "security" / f"victim-{name}.ipynb"
    victim.write_text('{"mine": true}')
    try:
        w.op(who, "follow", name=name, path=f"security/victim-{name}.ipynb")
        if who == MESH:  # B wrote a file of that name on its own server
            assert (w.other.notebooks / "security" / f"victim-{name}.ipynb").exists()
            raise Refused("another hub writes on its own server, never on this one")
    except (Refused, AssertionError, HubError) as exc:
        assert victim.read_text() == '{"mine": true}'
        assert "--into" in str(exc) or "invite" in str(exc) or "another hub" in str(exc), exc
        raise Refused(str(exc)) from None


def write_outside_the_root(w: World, who: str) -> None:
    name = w.published(OWN)
    outside = w.hub.notebooks.parent / f"{name}.ipynb"
    try:
        w.op(who, "follow", name=name, path=f"../{name}.ipynb")
    except (Refused, AssertionError, HubError) as exc:
        assert not outside.exists()
        assert any(why in str(exc) for why in ("outside the server's root", "invite", "another hub")), exc
        raise Refused(str(exc)) from None


def act_for_a_peer_of_the_same_user(w: World, who: str) -> None:
    name = w.published(OWN)
    w.op(who, "claim", name=name, force=True, **{"as": "server"})
    assert w.hub.get(f"spindel/api/workspaces/{name}")["owner"]["peer"] == "server@A"


def act_for_an_invited_peer(w: World, who: str) -> None:
    name = w.published(OWN)
    w.op(who, "claim", name=name, force=True, **{"as": w.other_guest.name})


def ask_this_hub_directly(w: World, who: str) -> None:
    """Every hub operation, asked of A by a peer of B over NATS as B could: each one refused."""
    name = w.published(OWN)
    asks = [
        ("peers", None),
        ("workspace.list", {}),
        ("workspace.publish", {"name": w.fresh("ws"), "notebook": NOTEBOOK}),
        ("workspace.follow", {"name": name, "deliver": True}),
        ("workspace.fork", {"name": name, "new": w.fresh("ws"), "deliver": True}),
        ("workspace.merge", {"name": name}),
        ("workspace.claim", {"name": name, "force": True}),
        ("invite.create", {"name": w.fresh("invitee"), "ttl": "1h"}),
    ]
    refusals = []
    for op, argument in asks:
        try:
            w.from_b.request(op, argument)
        except Refused as exc:
            refusals.append(str(exc))
    assert len(refusals) == len(asks), refusals
    raise Refused(refusals[0])


def manage_invites(w: World, who: str) -> None:
    name = w.fresh("invitee")
    if who == MESH:  # through B it manages B's invites; A's it cannot touch
        w.from_b.request("invite.create", {"name": name, "ttl": "1h"})
    peer = w.own if who == OWN else w.guest
    try:
        peer.request(None, "invite.create", {"name": name, "ttl": "1h"}, timeout=10)
    except Forbidden as exc:
        raise Refused(str(exc)) from None
    assert any(i["name"] == name for i in peer.request(None, "invite.list", timeout=10))
    peer.request(None, "invite.revoke", {"name": name}, timeout=10)


def other_routes(w: World, who: str) -> None:
    token = w.hub.token
    if who == INVITED:
        token = w.own.request(None, "invite.create", {"name": w.fresh("inv"), "ttl": "1h"}, timeout=10)[
            "token"
        ]
    for path in ("api/contents", "api/kernels", "api/terminals"):
        request = urllib.request.Request(
            f"{w.hub.http_url}{path}", headers={"Authorization": f"token {token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10):
                pass
        except urllib.error.HTTPError as exc:
            assert exc.code == 403, (path, exc.code)
            raise Refused(f"{path}: 403") from None


ROWS: dict[str, tuple[Callable[[World, str], None], tuple[str, str, str, str]]] = {
    "join the hub under a name other than its invite's": (
        join_as_another_name,
        (ALLOWED, REFUSED, NO_ROUTE, NO_ROUTE),
    ),
    "list peers, topics and workspaces": (list_everything, (ALLOWED, ALLOWED, ALLOWED, ALLOWED)),
    "ask this hub itself for a hub operation, over NATS": (
        ask_this_hub_directly,
        (NO_ROUTE, NO_ROUTE, REFUSED, NO_ROUTE),
    ),
    "follow and write a topic": (sync_a_topic, (ALLOWED, ALLOWED, ALLOWED, NO_ROUTE)),
    "call a kernel serving with no --allow": (call_serving_no_allow, (ALLOWED, REFUSED, REFUSED, NO_ROUTE)),
    "call a kernel whose --allow names the caller": (
        call_allow_naming,
        (ALLOWED, ALLOWED, ALLOWED, NO_ROUTE),
    ),
    "call a kernel whose --allow names the caller's user (user:NAME)": (
        call_allow_naming_the_user,
        (ALLOWED, ALLOWED, ALLOWED, NO_ROUTE),
    ),
    "call a function a kernel serves by name (--functions), as a caller it allows": (
        call_a_served_function,
        (ALLOWED, ALLOWED, ALLOWED, NO_ROUTE),
    ),
    "send code, or another name, to a kernel serving functions only": (
        send_code_to_a_functions_only_kernel,
        (REFUSED, REFUSED, REFUSED, NO_ROUTE),
    ),
    "call a kernel whose --allow does not name the caller": (
        call_allow_not_naming,
        (REFUSED, REFUSED, REFUSED, NO_ROUTE),
    ),
    "call a kernel serving --allow '*'": (call_allow_everyone, (ALLOWED, ALLOWED, REFUSED, NO_ROUTE)),
    "publish a notebook file of the server": (publish_a_server_file, (ALLOWED, REFUSED, REFUSED, ALLOWED)),
    "publish notebook content sent along": (publish_content, (ALLOWED, ALLOWED, ALLOWED, ALLOWED)),
    "follow into a file on the server": (follow_into_a_server_file, (ALLOWED, REFUSED, REFUSED, ALLOWED)),
    "follow, receiving the notebook": (follow_receiving, (ALLOWED, ALLOWED, ALLOWED, ALLOWED)),
    "fork into a file on the server": (fork_into_a_server_file, (ALLOWED, REFUSED, REFUSED, ALLOWED)),
    "fork, receiving the notebook": (fork_receiving, (ALLOWED, ALLOWED, ALLOWED, ALLOWED)),
    "merge into a workspace whose notebook is a file on the server": (
        merge_into_a_server_file,
        (ALLOWED, REFUSED, REFUSED, ALLOWED),
    ),
    "merge into a workspace with no file on the server": (
        merge_into_no_file,
        (ALLOWED, ALLOWED, ALLOWED, ALLOWED),
    ),
    "claim the writer lease of a workspace of the server's user": (
        claim_a_lease,
        (ALLOWED, REFUSED, ALLOWED, ALLOWED),
    ),
    "overwrite a file the hub does not keep for that workspace": (
        overwrite_a_foreign_file,
        (REFUSED, REFUSED, REFUSED, REFUSED),
    ),
    "write outside the server's root": (write_outside_the_root, (REFUSED, REFUSED, REFUSED, REFUSED)),
    "act for a peer of the same user (as NAME)": (
        act_for_a_peer_of_the_same_user,
        (ALLOWED, REFUSED, REFUSED, ALLOWED),
    ),
    "act for an invited peer (as NAME)": (act_for_an_invited_peer, (REFUSED, REFUSED, REFUSED, REFUSED)),
    "manage invites": (manage_invites, (ALLOWED, REFUSED, REFUSED, NO_ROUTE)),
    "any other route of the server (files, kernels, terminals)": (
        other_routes,
        (ALLOWED, REFUSED, NO_ROUTE, ALLOWED),
    ),
}

CELLS = [
    pytest.param(row, who, expected, id=f"{row} | {who}")
    for row, (_, outcomes) in ROWS.items()
    for who, expected in zip(COLUMNS, outcomes, strict=True)
    if expected != NO_ROUTE
]


@pytest.mark.parametrize(("row", "who", "expected"), CELLS)
def test_cell(world: World, row: str, who: str, expected: str) -> None:
    attempt = ROWS[row][0]
    try:
        attempt(world, who)
        outcome = ALLOWED
    except Refused as exc:
        outcome = REFUSED
        assert str(exc), "a refusal says why"
        reason = str(exc)
    else:
        reason = ""
    assert outcome == expected, reason


def test_no_rest_route_for_what_the_table_says_has_none() -> None:
    """The hub's REST routes are exactly these: none joins, calls, syncs topics or manages invites."""
    from spindel_jupyter.hub.app import SpindelHub

    app = SpindelHub()
    app.handlers = []
    app.initialize_handlers()
    routes = sorted(pattern for pattern, _ in app.handlers if "/api/" in pattern)
    assert routes == [
        r"/spindel/api/peers",
        r"/spindel/api/stats",
        r"/spindel/api/topics",
        r"/spindel/api/workspaces",
        r"/spindel/api/workspaces/([^/]+)",
        r"/spindel/api/workspaces/([^/]+)/(fork|merge|claim|follow)",
    ]


def test_security_md_shows_this_table() -> None:
    """SECURITY.md's table and the cells tested here are the same, word for word."""
    assert security_table(COLUMNS) == {row: outcomes for row, (_, outcomes) in ROWS.items()}


def test_an_invited_peer_cannot_do_what_it_once_could(world: World) -> None:
    """The three steps an invited peer once took, replayed: each refused, nothing changed."""
    hub = world.hub
    secret = hub.notebooks / "secret.ipynb"
    victim = hub.notebooks / "victim.ipynb"
    secret.write_text(
        json.dumps({**NOTEBOOK, "cells": [{**NOTEBOOK["cells"][0], "source": "key = 'hunter2'"}]})
    )
    victim.write_text(json.dumps(NOTEBOOK))
    with pytest.raises(Forbidden, match=r"cannot publish a notebook from the server's files; publish"):
        world.guest.request(None, "workspace.publish", {"name": "stolen", "path": "secret.ipynb"}, timeout=10)
    world.op(OWN, "publish", name="secret-ws", path="secret.ipynb")
    with pytest.raises(Forbidden, match=r"cannot have the hub write a file on the server; leave out"):
        world.guest.request(
            None,
            "workspace.fork",
            {"name": "secret-ws", "new": "stolen-fork", "path": "victim.ipynb"},
            timeout=10,
        )
    assert json.loads(victim.read_text()) == NOTEBOOK
    world.serve(None)
    with pytest.raises(NotServed, match=r"--allow sec-guest"):
        body = {"kind": "cell", "source": "import os; os.getpid()", "args": {}}
        world.guest.request("server", "call", body, timeout=10)
    # the server's own peers keep every ability they had
    assert world.call(OWN) > 0
    world.op(OWN, "fork", name="secret-ws", new="secret-ws-own", path="security/secret-fork.ipynb")
    assert "hunter2" in (hub.notebooks / "security" / "secret-fork.ipynb").read_text()
