"""The mesh: hubs of several Jupyter servers joined over a real nats-server (JetStream)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from spindel_jupyter.hub.mesh import _without_credentials
from spindel_jupyter.peer.client import Peer
from tests.support import HubServer, NatsServer, free_port, wait_until


def mesh(hub: HubServer) -> dict[str, Any]:
    return dict(hub.get("spindel/api/stats")["mesh"])


def a_call_crosses(served: HubServer, calling: HubServer) -> None:
    """A peer of ``calling``'s hub calls a peer of ``served``'s by NAME@HUB, and is answered."""
    host = Peer(served.ws_url, "host", served.token).start()
    caller = Peer(calling.ws_url, "caller", calling.token).start()
    try:
        host.handle("echo", lambda message: message.body)
        wait_until(
            lambda: "host" in calling.peer_names(), timeout=20, what="the host listed on the caller's hub"
        )
        assert caller.request(f"host@{mesh(served)['hub']}", "echo", "across", timeout=10) == "across"
    finally:
        host.close()
        caller.close()


def test_a_hub_without_nats_works_alone(servers: Any) -> None:
    hub = servers("solo")
    assert mesh(hub) == {"state": "alone"}
    sync = hub.get("spindel/api/stats")["sync"]  # the same counters as in a mesh, where nodes move
    assert sync == dict.fromkeys(
        ("nodes_fetched", "bytes_fetched", "nodes_refused", "nodes_served", "bytes_served"), 0
    )


def test_the_hubs_of_servers_see_each_other_and_a_dead_one_leaves_within_5_s(
    nats: NatsServer, servers: Any
) -> None:
    a = servers("A", f"--SpindelHub.nats_url={nats.url}")
    b = servers("B", f"--SpindelHub.nats_url={nats.url}")
    c = servers("C", f"--SpindelHub.nats_url={nats.url}")
    for hub in (a, b, c):
        wait_until(
            lambda hub=hub: mesh(hub)["hubs"] == ["A", "B", "C"], timeout=20, what="the hubs in the mesh"
        )
        assert mesh(hub)["state"] == "connected"
    c.stop()  # a clean stop takes its entry out at once, not when it expires
    stopped = time.monotonic()
    wait_until(lambda: mesh(a)["hubs"] == ["A", "B"], timeout=10, what="the stopped server's hub to leave")
    assert time.monotonic() - stopped < 1.8, "a hub that stops cleanly leaves before its entry would expire"
    b.kill()
    killed = time.monotonic()
    wait_until(lambda: mesh(a)["hubs"] == ["A"], timeout=10, what="the dead server's hub to leave the mesh")
    assert time.monotonic() - killed <= 5.0, "a dead server's hub must leave the others' lists within 5 s"


def test_peers_are_listed_across_the_mesh_with_their_hub(nats: NatsServer, servers: Any) -> None:
    a = servers("A", f"--SpindelHub.nats_url={nats.url}")
    b = servers("B", f"--SpindelHub.nats_url={nats.url}")
    alice = Peer(a.ws_url, "alice", a.token)
    alice.kernel = "0b1c2d3e-kernel-of-server-a"
    alice.start()
    try:

        def seen_from_b() -> list[tuple[str, str, bool]]:
            return [(p["name"], p["hub"], p["local"]) for p in b.get("spindel/api/peers")]

        wait_until(lambda: seen_from_b() == [("alice", "A", False)], timeout=20, what="alice listed on B")
        assert b.get("spindel/api/peers")[0]["kernel"] == ""  # a kernel id stays on its own server
        assert [(p["name"], p["hub"], p["local"]) for p in a.get("spindel/api/peers")] == [
            ("alice", "A", True)
        ]
        bob = Peer(b.ws_url, "bob", b.token).start()
        try:
            wait_until(
                lambda: {p["name"] for p in alice.peers()} == {"alice", "bob"}, timeout=20, what="bob seen"
            )
            listed = {p["name"]: (p["hub"], p["local"]) for p in alice.peers()}
            assert listed == {"alice": ("A", True), "bob": ("B", False)}
        finally:
            bob.close()
    finally:
        alice.close()
    wait_until(lambda: seen_from_b() == [], timeout=20, what="alice to leave B's list once she left A")


def test_nats_out_of_reach_is_logged_and_retried_while_the_hub_serves_its_own(
    tmp_path: Path, servers: Any
) -> None:
    port = free_port()
    hub = servers("lonely", f"--SpindelHub.nats_url=nats://127.0.0.1:{port}")
    wait_until(lambda: mesh(hub)["problem"], timeout=20, what="the hub to say why it cannot join")
    assert mesh(hub)["state"] == "connecting"
    wait_until(lambda: "cannot reach NATS" in hub.log_path.read_text(), timeout=10, what="the log line")
    assert hub.get("spindel/api/peers") == []  # the hub's own routes keep working
    nats = NatsServer(tmp_path / "late-nats", port=port).start()
    try:
        wait_until(
            lambda: mesh(hub)["state"] == "connected", timeout=20, what="the hub to join once NATS is up"
        )
        assert mesh(hub)["hubs"] == ["lonely"]
        assert mesh(hub)["problem"] == ""
        wait_until(lambda: "joined the mesh" in hub.log_path.read_text(), timeout=10, what="the log says so")
    finally:
        nats.stop()
    wait_until(
        lambda: mesh(hub)["state"] == "disconnected", timeout=20, what="the hub to notice NATS is gone"
    )


def test_credentials_in_the_nats_url_stay_out_of_the_stats_and_the_log(tmp_path: Path, servers: Any) -> None:
    nats = NatsServer(tmp_path / "nats", args=("--user", "hub", "--pass", "s3cret-word")).start()
    try:
        url = f"nats://hub:s3cret-word@127.0.0.1:{nats.port}"
        hub = servers("guarded", f"--SpindelHub.nats_url={url}")
        wait_until(
            lambda: mesh(hub)["state"] == "connected", timeout=20, what="the hub to join with its password"
        )
        assert "s3cret-word" not in str(mesh(hub))
        assert mesh(hub)["nats"] == f"nats://***@127.0.0.1:{nats.port}"
    finally:
        nats.stop()
    assert "s3cret-word" not in hub.log_path.read_text().replace(url, "")


def test_hubs_join_with_credentials_files_on_a_nats_in_operator_mode(tmp_path: Path, servers: Any) -> None:
    """As with hosted NATS: each hub a JWT user of its own, its seed in a .creds file."""
    nats = NatsServer.with_hub_credentials(tmp_path / "nats", ["A", "B"]).start()
    try:
        a = servers(
            "A", f"--SpindelHub.nats_url={nats.url}", f"--SpindelHub.nats_credentials={nats.credentials('A')}"
        )
        b = servers(
            "B", f"--SpindelHub.nats_url={nats.url}", f"--SpindelHub.nats_credentials={nats.credentials('B')}"
        )
        joined = {"state": "connected", "hubs": ["A", "B"], "problem": ""}
        for hub in (a, b):
            wait_until(
                lambda hub=hub: {key: mesh(hub)[key] for key in joined} == joined,
                timeout=20,
                what="A and B in the mesh, topics shared",
            )
        a_call_crosses(a, b)
        seed = nats.credentials("A").read_text().split("SEED-----\n")[1].split("\n")[0]
        assert seed not in str(mesh(a)) and seed not in a.log_path.read_text()
    finally:
        nats.stop()


def test_credentials_are_taken_out_of_every_url_of_a_list() -> None:
    assert _without_credentials("nats://a:b@h1:4222, nats://h2") == "nats://***@h1:4222,nats://h2"


def test_a_hub_cannot_speak_for_another_hub(tmp_path: Path, servers: Any) -> None:
    """With one NATS user per hub, a hub that claims another's name, or frames and changes that say
    they come from another hub, are refused by NATS: nothing reaches the others."""
    import asyncio

    import nats as nats_py

    from spindel_jupyter.core import wire

    nats = NatsServer.with_hub_users(tmp_path / "nats", ["A", "B", "C"]).start()
    try:
        a = servers("A", f"--SpindelHub.nats_url={nats.user_url('A')}")
        servers("B", f"--SpindelHub.nats_url={nats.user_url('B')}")
        wait_until(lambda: mesh(a)["hubs"] == ["A", "B"], timeout=20, what="A and B in the mesh")
        # A server of B's that says it is hub C, with B's credentials.
        impostor = servers("C", f"--SpindelHub.nats_url={nats.user_url('B')}")
        wait_until(lambda: "permissions violation" in mesh(impostor)["problem"], timeout=20, what="refused")
        assert "NATS refused this hub ('C')" in impostor.log_path.read_text()

        alice = Peer(a.ws_url, "alice", a.token).start()
        calls: list[str] = []
        alice.handle("echo", lambda message: calls.append(message.sender))
        try:
            frame = wire.pack_frame({"t": "req", "id": 1, "op": "echo", "to": "alice", "from": "carol"})

            async def forge() -> list[str]:
                errors: list[str] = []

                async def refused(exc: Exception) -> None:
                    errors.append(str(exc))

                nc = await nats_py.connect(nats.user_url("B"), error_cb=refused)
                await nc.publish("spindel.frames.A.C", b"\x00" + frame)  # a frame "from C"
                await nc.publish("spindel.hubs.C", b'{"since": 0, "peers": [{"name": "carol"}]}')
                await nc.publish(
                    "spindel.topics.forged.A", b"\x00" + wire.pack_frame({"kind": "lww"}, b"\x01")
                )
                await nc.publish("spindel.frames.A.B", b"\x00" + frame)  # as itself: allowed, stamped B's
                await nc.flush()
                await asyncio.sleep(1.0)
                await nc.close()
                return errors

            errors = asyncio.run(forge())
            assert sum("permissions violation" in e.lower() for e in errors) == 3, errors
            wait_until(lambda: calls == ["carol@B"], timeout=10, what="the frame B may send, stamped as B's")
            time.sleep(1.0)
            assert calls == ["carol@B"]  # never one from C
            assert mesh(a)["hubs"] == ["A", "B"]
            assert "carol" not in [p["name"] for p in a.get("spindel/api/peers")]
            assert "forged" not in [t["name"] for t in a.get("spindel/api/topics")]
        finally:
            alice.close()
    finally:
        nats.stop()


def test_without_jetstream_calls_cross_and_the_hub_says_topics_are_not_shared(
    tmp_path: Path, servers: Any
) -> None:
    nats = NatsServer(tmp_path / "nats", jetstream=False).start()
    try:
        a = servers("A", f"--SpindelHub.nats_url={nats.url}")
        b = servers("B", f"--SpindelHub.nats_url={nats.url}")
        wait_until(
            lambda: "topics are not shared" in mesh(a)["problem"], timeout=20, what="the hub to say so"
        )
        assert "JetStream" in mesh(a)["problem"] and mesh(a)["state"] == "connected"
        a_call_crosses(b, a)
    finally:
        nats.stop()
