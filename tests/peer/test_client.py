"""The peer connection against a real hub (a Jupyter server subprocess)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import spindel_jupyter
from spindel_jupyter.core import wire
from spindel_jupyter.core.errors import (
    HubError,
    NameTaken,
    NotConnected,
    PeerLost,
    PeerNotFound,
    RemoteError,
    RemoteTimeout,
    SpindelError,
)
from spindel_jupyter.core.protocol import WELCOME
from spindel_jupyter.kernel import session
from spindel_jupyter.peer import client
from spindel_jupyter.peer.client import Peer
from tests.peer.conftest import RawServer, Ticker, frame
from tests.support import ContendedLock, HubServer, wait_until


@pytest.fixture
def peers(hub: HubServer) -> Any:
    made: list[Peer] = []

    def make(name: str, **kwargs: Any) -> Peer:
        peer = Peer(hub.ws_url, name, hub.token, session=f"{name}-{time.monotonic()}", **kwargs).start()
        made.append(peer)
        return peer

    yield make
    for peer in made:
        peer.close()


def test_request_reply_and_remote_exception(peers: Any) -> None:
    alice, bob = peers("alice1"), peers("bob1")
    bob.handle("add", lambda req: (req.sender, req.body[0] + req.body[1]))

    def fail(req: Any) -> Any:
        raise ValueError("boom")

    bob.handle("fail", fail)
    assert alice.request("bob1", "add", [2, 3], timeout=10) == ("alice1", 5)
    with pytest.raises(RemoteError) as info:
        alice.request("bob1", "fail", None, timeout=10)
    assert (info.value.peer, info.value.ename, info.value.evalue) == ("bob1", "ValueError", "boom")
    assert any("raise ValueError" in line for line in info.value.traceback)


def test_numpy_array_round_trip_through_the_hub(peers: Any) -> None:
    alice, bob = peers("alice2"), peers("bob2")
    bob.handle("double", lambda req: req.body * 2)
    arr = np.arange(250_000, dtype=np.float64).reshape(500, 500)
    out = alice.request("bob2", "double", arr, timeout=30)
    assert out.dtype == arr.dtype and out.shape == arr.shape
    assert np.array_equal(out, arr * 2)


def test_a_value_of_more_buffers_than_sendmsg_takes_comes_back(peers: Any) -> None:
    """1,100 arrays are more buffers than one sendmsg call takes (IOV_MAX): the reply still leaves."""
    alice, bob = peers("alice21"), peers("bob21")
    bob.handle("many", lambda req: [np.full(16, i, dtype=np.int64) for i in range(1_100)])
    arrays = alice.request("bob21", "many", timeout=10)
    assert len(arrays) == 1_100 and all((array == i).all() for i, array in enumerate(arrays))


def test_a_request_that_cannot_be_written_fails_at_once(peers: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    alice, bob = peers("alice22"), peers("bob22")
    bob.handle("echo", lambda req: req.body)

    def broken(parts: Any, opcode: int = 2, wait: float | None = None) -> None:
        raise OSError("the socket broke")

    assert alice._ws is not None
    monkeypatch.setattr(alice._ws, "send", broken)
    with pytest.raises(PeerLost, match="while sending 'echo': the socket broke"):  # not RemoteTimeout
        alice.request("bob22", "echo", 1, timeout=30)
    assert not alice._pending


def test_the_message_limit_follows_the_hubs_frame_limit(peers: Any) -> None:
    alice = peers("alice23")
    assert alice._ws is not None
    assert alice._ws.max_message == client.message_limit(alice.max_frame_bytes) == 2 * alice.max_frame_bytes


def test_unknown_peer_fails_at_once_listing_peers(peers: Any) -> None:
    alice = peers("alice3")
    started = time.monotonic()
    with pytest.raises(PeerNotFound) as info:
        alice.request("nobody", "x", timeout=10)
    assert time.monotonic() - started < 2
    assert "alice3" in info.value.connected
    assert "nobody" in str(info.value)


def test_op_not_served_is_a_clear_error(peers: Any) -> None:
    alice, _ = peers("alice4"), peers("bob4")
    with pytest.raises(HubError, match="peer 'bob4' does not serve remote calls; run %spin_serve there"):
        alice.request("bob4", "call", timeout=10)


def test_timeout_raises_and_tells_the_target(peers: Any) -> None:
    alice, bob = peers("alice5"), peers("bob5")
    cancelled = threading.Event()
    bob.handle("slow", lambda req: asyncio.sleep(30))
    bob.handle("cancel", lambda req: cancelled.set())
    with pytest.raises(RemoteTimeout, match=r"within 0\.3 s"):
        alice.request("bob5", "slow", timeout=0.3)
    assert cancelled.wait(5), "the target hears that the caller gave up"
    bob.handle("quick", lambda req: "ok")
    assert alice.request("bob5", "quick", timeout=10) == "ok"


def test_awaitable_requests_run_concurrently(peers: Any) -> None:
    alice, bob, carol = peers("alice6"), peers("bob6"), peers("carol6")

    async def nap(req: Any) -> str:
        await asyncio.sleep(0.5)
        return req.body

    bob.handle("nap", nap)
    carol.handle("nap", nap)

    async def both() -> list[Any]:
        return await asyncio.gather(alice.arequest("bob6", "nap", "b"), alice.arequest("carol6", "nap", "c"))

    started = time.monotonic()
    assert asyncio.run(both()) == ["b", "c"]
    assert time.monotonic() - started < 0.95  # overlapped, not one after the other


def test_duplicate_name_is_refused_with_the_fix(peers: Any, hub: HubServer) -> None:
    peers("dora")
    with pytest.raises(NameTaken, match="name 'dora' is already connected; use %spin_connect --as OTHER"):
        Peer(hub.ws_url, "dora", hub.token, session="elsewhere").start()


def test_bad_token_and_wrong_url_are_clear(hub: HubServer) -> None:
    with pytest.raises(NotConnected, match="refused the token"):
        Peer(hub.ws_url, "eve", "wrong").start()
    with pytest.raises(NotConnected, match="404"):
        Peer(hub.ws_url.replace("spindel/ws", "nothing/ws"), "eve", hub.token).start()
    with pytest.raises(NotConnected, match="cannot reach"):
        Peer("ws://127.0.0.1:9/spindel/ws", "eve", hub.token, connect_timeout=2).start()


def test_oversized_request_is_refused_before_sending(peers: Any) -> None:
    alice = peers("alice7")
    alice.max_frame_bytes = 1000
    with pytest.raises(SpindelError, match="over the hub's limit"):
        alice.request("alice7", "x", b"x" * 2000, timeout=5)


def test_peer_events_keep_a_live_list(peers: Any) -> None:
    alice = peers("alice8")
    seen: list[list[str]] = []
    alice.listen("peers", lambda body: seen.append([p["name"] for p in body]))
    bob = peers("bob8")
    wait_until(lambda: any("bob8" in names for names in seen), what="bob8 in alice's peer events")
    bob.close()
    wait_until(lambda: "bob8" not in seen[-1], what="bob8 gone from alice's peer events")


def test_connect_uses_the_environment_and_suffixes_derived_names(
    hub: HubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPINDEL_HUB_URL", hub.ws_url)
    monkeypatch.setenv("SPINDEL_TOKEN", hub.token)
    monkeypatch.delenv("SPINDEL_PEER", raising=False)
    monkeypatch.setenv("JPY_SESSION_NAME", str(Path("/somewhere/My Analysis.ipynb")))
    squatter = Peer(hub.ws_url, "My-Analysis", hub.token, session="other-process").start()
    try:
        peer = spindel_jupyter.connect()
        assert peer is spindel_jupyter.current_peer()
        assert peer.name == "My-Analysis-2"
        assert peer.kind == "script"
        assert "My-Analysis-2" in hub.peer_names()
        renamed = spindel_jupyter.connect(name="analyst")
        assert renamed.name == "analyst"
        wait_until(lambda: "My-Analysis-2" not in hub.peer_names(), what="the old name to leave")
        with pytest.raises(NameTaken):
            spindel_jupyter.connect(name="My-Analysis")
        assert spindel_jupyter.current_peer() is renamed  # a failed rename keeps the connection
    finally:
        spindel_jupyter.disconnect()
        squatter.close()
    with pytest.raises(NotConnected, match="%spin_connect"):
        spindel_jupyter.current_peer()


def test_connect_without_a_hub_says_how(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPINDEL_HUB_URL", raising=False)
    with pytest.raises(NotConnected, match="SPINDEL_HUB_URL"):
        spindel_jupyter.connect()


def test_default_name_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPINDEL_PEER", "explicit")
    monkeypatch.setenv("JPY_SESSION_NAME", "/x/lecture3.ipynb")
    assert session.default_name() == "explicit"
    monkeypatch.delenv("SPINDEL_PEER")
    assert session.default_name() == "lecture3"
    monkeypatch.delenv("JPY_SESSION_NAME")
    assert session.default_name()  # host-pid outside a kernel


def test_pending_calls_fail_at_once_when_the_hub_dies_and_peers_reconnect(own_hub: HubServer) -> None:
    alice = Peer(own_hub.ws_url, "alice", own_hub.token, session="a").start()
    bob = Peer(own_hub.ws_url, "bob", own_hub.token, session="b").start()
    reconnected = threading.Event()
    alice.on_connect(reconnected.set)
    try:
        bob.handle("hang", lambda req: asyncio.sleep(60))
        bob.handle("ping", lambda req: "pong")
        _, future = alice.submit("bob", "hang")
        time.sleep(0.2)
        started = time.monotonic()
        own_hub.kill()
        with pytest.raises(PeerLost, match="lost the connection to the hub"):
            future.result(10)
        assert time.monotonic() - started < 2
        with pytest.raises(NotConnected):
            alice.request("bob", "ping", timeout=5)
        own_hub.start()
        assert reconnected.wait(15), "alice reconnects by herself"
        wait_until(
            lambda: sorted(own_hub.peer_names()) == ["alice", "bob"], timeout=15, what="both peers back"
        )
        assert alice.request("bob", "ping", timeout=10) == "pong"
    finally:
        alice.close()
        bob.close()


def test_a_hub_that_stops_answering_is_left_by_heartbeat(own_hub: HubServer, monkeypatch: Any) -> None:
    monkeypatch.setattr(client, "_PING_INTERVAL", 0.3)
    monkeypatch.setattr(client, "_PING_TIMEOUT", 0.6)
    alice = Peer(own_hub.ws_url, "alice", own_hub.token, session="a").start()
    bob = Peer(own_hub.ws_url, "bob", own_hub.token, session="b").start()
    bob.handle("hang", lambda req: asyncio.sleep(60))
    assert own_hub.proc is not None
    try:
        _, waiting = alice.submit("bob", "hang")
        time.sleep(0.2)
        own_hub.proc.send_signal(signal.SIGSTOP)  # alive, but silent: no close, no reset
        started = time.monotonic()
        with pytest.raises(PeerLost, match="lost the connection to the hub"):
            waiting.result(10)
        assert time.monotonic() - started < 5  # the heartbeat, well before the 10 s the call would wait
        assert not alice.connected
        own_hub.proc.send_signal(signal.SIGCONT)
        wait_until(lambda: alice.connected, timeout=15, what="alice back once the hub answers again")
    finally:
        own_hub.proc.send_signal(signal.SIGCONT)
        alice.close()
        bob.close()


def _fake_hub_that_floods_pings_and_stops_reading(server: RawServer, flood: threading.Event) -> None:
    """Welcome the peer; on ``flood``, send it pings whose pongs cannot get out, then say nothing more."""
    _, hello = server.read_frame()
    header, _ = wire.unpack_frame(hello)
    welcome = {"t": WELCOME, "name": header["name"], "scope": "own", "max_frame_bytes": 1 << 20}
    server.send(frame(0x2, wire.pack_frame(welcome)))
    flood.wait(10)
    server.conn.settimeout(20)
    server.send(frame(0x9, bytes(125)) * 30_000)


def test_the_heartbeat_leaves_a_hub_that_stopped_reading(raw_server: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(client, "_PING_INTERVAL", 0.3)
    monkeypatch.setattr(client, "_PING_TIMEOUT", 0.6)
    server, flood = raw_server(rcvbuf=4096), threading.Event()
    hub = threading.Thread(target=_fake_hub_that_floods_pings_and_stops_reading, args=(server, flood))
    hub.daemon = True
    hub.start()
    alice = Peer(server.url, "alice", session="a").start()
    try:
        ticker = Ticker(alice._loop)
        flood.set()
        wait_until(lambda: not alice.connected, timeout=10, what="the heartbeat to leave the silent hub")
        assert ticker.lag() < 0.5, f"the connection's loop stalled for {ticker.lag():.2f} s"
    finally:
        alice.close()


class _Socket:
    """Stands in for a live connection: takes frames and drops them."""

    def send(self, parts: Any) -> None:
        pass


def test_a_call_submitted_while_the_connection_drops_fails_with_it() -> None:
    """A call registered just as the connection drops is failed with the others, never left waiting.

    The registration pauses until the drop has failed what was pending, or is held off by it.
    """
    peer = Peer("ws://127.0.0.1:9/spindel/ws", "alice")
    inserting, dropped = threading.Event(), threading.Event()

    class Pending(dict[int, Any]):
        def __setitem__(self, rid: int, future: concurrent.futures.Future[Any]) -> None:
            inserting.set()
            dropped.wait(5)
            super().__setitem__(rid, future)

    def drop() -> None:
        if inserting.wait(5):
            peer._ws = None  # as the connection thread does when the socket closes
            peer._fail_pending(peer._hub_lost())
        dropped.set()

    peer._ws = _Socket()  # type: ignore[assignment]
    peer._pending = Pending()
    peer._pending_lock = ContendedLock(contended=dropped)  # type: ignore[attr-defined,assignment]
    dropping = threading.Thread(target=drop)
    dropping.start()
    try:
        _, future = peer.submit("bob", "op")
        dropping.join(5)
        assert inserting.is_set()
        with pytest.raises(PeerLost):
            future.result(2)
    finally:
        dropping.join(5)
        peer._loop.close()


def test_an_unknown_peer_suggests_the_closest_name_and_lists_no_lab_panels(peers: Any) -> None:
    alice = peers("alice5")
    panel = Peer(alice.url, "lab-panel5", alice.token, kind="ui", session="lab-panel5").start()
    try:
        with pytest.raises(PeerNotFound, match=r"did you mean 'alice5'\?") as info:
            alice.request("alise5", "x", timeout=10)
        assert "alice5" in info.value.connected and "lab-panel5" not in info.value.connected
    finally:
        panel.close()
