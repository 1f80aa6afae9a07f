"""Invites end to end: a teammate joins as one peer with a token that opens nothing else."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from spindel_jupyter import demo
from spindel_jupyter.core.errors import NameTaken, NotConnected, SpindelError
from spindel_jupyter.peer.client import Peer
from tests.support import HubServer, start_kernel, wait_until


def invite(host: Peer, name: str, ttl: str = "1h") -> dict[str, Any]:
    return dict(host.request(None, "invite.create", {"name": name, "ttl": ttl}, timeout=10))


def status_with(hub: HubServer, path: str, token: str) -> int:
    request = urllib.request.Request(f"{hub.http_url}{path}")
    request.add_header("Authorization", f"token {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture
def host(hub: HubServer) -> Any:
    peer = Peer(hub.ws_url, "host", hub.token, session="host").start()
    yield peer
    peer.close()


def test_an_invite_joins_as_its_one_name_and_opens_no_other_route(hub: HubServer, host: Peer) -> None:
    made = invite(host, "guest")
    assert made["url"].endswith("/spindel/ws") and made["token"].startswith("spin-")
    guest = Peer(hub.ws_url, "guest", made["token"], session="guest").start()
    try:
        assert "guest" in hub.peer_names()
        host.handle("hello", lambda req: f"hi {req.sender}")
        assert guest.request("host", "hello", timeout=10) == "hi guest"
        for path in ("api/contents", "api/kernels", "spindel/api/peers", "api/terminals"):
            assert status_with(hub, path, made["token"]) == 403, path
        with pytest.raises(SpindelError, match="cannot manage invites"):
            guest.request(None, "invite.create", {"name": "more"}, timeout=10)  # and cannot mint more
    finally:
        guest.close()
    with pytest.raises((NameTaken, NotConnected, SpindelError), match="only as 'guest'"):
        Peer(hub.ws_url, "host2", made["token"], session="x").start()


def test_revoking_closes_the_live_connection(hub: HubServer, host: Peer) -> None:
    made = invite(host, "visitor")
    visitor = Peer(hub.ws_url, "visitor", made["token"], session="visitor").start()
    try:
        listed = host.request(None, "invite.list", timeout=10)
        assert [(i["name"], i["connected"]) for i in listed if i["name"] == "visitor"] == [("visitor", True)]
        host.request(None, "invite.revoke", {"name": "visitor"}, timeout=10)
        wait_until(lambda: "visitor" not in hub.peer_names(), timeout=5, what="the visitor to be cut off")
        with pytest.raises(NotConnected, match="403"):
            Peer(hub.ws_url, "visitor", made["token"], session="again").start()
    finally:
        visitor.close()


def test_an_expired_invite_stops_working(hub: HubServer, host: Peer) -> None:
    made = invite(host, "brief", ttl="2s")
    brief = Peer(hub.ws_url, "brief", made["token"], session="brief").start()
    try:
        wait_until(lambda: "brief" not in hub.peer_names(), timeout=6, what="the expired invite to be closed")
    finally:
        brief.close()
    with pytest.raises(NotConnected, match="403"):
        Peer(hub.ws_url, "brief", made["token"], session="later").start()


def test_invite_magics(hub: HubServer) -> None:
    kernel = hub.start_notebook_kernel("inviter.ipynb")
    try:
        kernel.ok("%load_ext spindel_jupyter")
        out = kernel.ok("%spin_invite --as teammate --ttl 30m")
        assert "%spin_connect ws://" in out.stdout and "--as teammate --token spin-" in out.stdout
        assert "teammate" in kernel.ok("%spin_invites").text()
        assert "revoked" in kernel.ok("%spin_invite --revoke teammate").stdout
        assert json.dumps(kernel.ok("%spin_invites").text()).count("teammate") == 0
    finally:
        kernel.shutdown()


def sources(path: Path) -> list[str]:
    cells = json.loads(path.read_text())["cells"]
    return ["".join(c["source"]) if isinstance(c["source"], list) else c["source"] for c in cells]


def test_a_bad_invite_name_is_a_clear_error_and_the_kernel_stays_connected(hub: HubServer) -> None:
    kernel = hub.start_notebook_kernel("bad-inviter.ipynb")
    try:
        kernel.ok("%load_ext spindel_jupyter")
        out = kernel.run('%spin_invite --as "a b"')
        assert out.error is not None and "cannot invite 'a b': invalid peer name" in out.error["evalue"]
        assert "bad-inviter" in kernel.ok("%spin_peers").text()
    finally:
        kernel.shutdown()


def test_an_invited_kernel_follows_forks_and_publishes_where_it_runs(
    hub: HubServer, host: Peer, tmp_path: Path
) -> None:
    """The hub sends an invited peer the notebooks; its own side writes them, next to its notebook."""
    lesson = hub.notebooks / "inv" / "lesson.ipynb"
    lesson.parent.mkdir(exist_ok=True)
    lesson.write_text(json.dumps(demo.code_notebook("a = 1", "b = 2")))
    host.request(None, "workspace.publish", {"name": "inv-lesson", "path": "inv/lesson.ipynb"}, timeout=10)
    made = invite(host, "visiting")
    mine = tmp_path / "visitor.ipynb"
    mine.write_text(json.dumps(demo.code_notebook("notes = 'mine'")))
    kernel = start_kernel({"JPY_SESSION_NAME": str(mine)})
    try:
        kernel.ok("%load_ext spindel_jupyter")
        kernel.ok(f"%spin_connect {hub.ws_url} --as visiting --token {made['token']}")
        out = kernel.ok("%spin_follow inv-lesson")
        copy = tmp_path / "following" / "inv-lesson.ipynb"
        assert str(copy) in out.stdout and sources(copy) == ["a = 1", "b = 2"]
        assert not (hub.notebooks / "following").exists()  # nothing written on the server
        # a new head reaches the invited follower's own copy
        lesson.write_text(json.dumps(demo.code_notebook("a = 1", "b = 20")))
        host.request(
            None, "workspace.publish", {"name": "inv-lesson", "path": "inv/lesson.ipynb"}, timeout=10
        )
        wait_until(lambda: sources(copy) == ["a = 1", "b = 20"], what="the copy to follow")

        kernel.ok("%spin_fork inv-lesson")
        fork = tmp_path / "forks" / "inv-lesson-visiting.ipynb"
        assert sources(fork) == ["a = 1", "b = 20"]
        assert hub.get("spindel/api/workspaces/inv-lesson-visiting")["path"] is None
        # what the hub refuses an invited peer reaches its kernel naming the rule
        head = hub.get("spindel/api/workspaces/inv-lesson")["head"]
        out = kernel.run("%spin_merge inv-lesson-visiting")
        # An invited peer is a user of its own: the server user's workspace is read-only to it.
        assert out.error is not None and out.error["ename"] == "NotWritable"
        assert "read-only to user invite:visiting: ask" in out.error["evalue"]
        assert hub.get("spindel/api/workspaces/inv-lesson")["head"] == head
        out = kernel.run("%spin_invite --as more")
        assert out.error is not None and out.error["ename"] == "Forbidden"

        kernel.ok("%spin_publish visitor-notes")  # its own notebook's content
        published = hub.get("spindel/api/workspaces/visitor-notes")
        assert published["path"] is None and published["owner"]["peer"] == "visiting"
        host.request(
            None, "workspace.follow", {"name": "visitor-notes", "path": "inv/notes.ipynb"}, timeout=10
        )
        assert sources(hub.notebooks / "inv" / "notes.ipynb") == ["notes = 'mine'"]
    finally:
        kernel.shutdown()
