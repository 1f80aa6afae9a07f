"""Scenario 8: max_peers, max_topics and max_frame_bytes refuse the one too many, clearly."""

from __future__ import annotations

import asyncio

import pytest

from spindel_jupyter.core import wire
from spindel_jupyter.core.errors import SpindelError
from spindel_jupyter.peer.client import Peer
from tests.stress.common import RawSocket, StressHub, record
from tests.support import wait_until


def test_limits(limits_hub: StressHub) -> None:
    hub = limits_hub  # max_peers=3, max_topics=2, max_frame_bytes=64 KiB
    wait_until(lambda: not hub.peer_names(), what="an empty hub")

    async def main() -> dict[str, str]:
        codes: dict[str, str] = {}
        socks = [await RawSocket.open(hub, f"lim{i}") for i in range(3)]
        fourth = await RawSocket.open(hub)
        await fourth.send({"t": "hello", "name": "lim3", "kind": "script", "session": "s3"})
        codes["fourth_peer"] = (await fourth.recv_kind("error", "welcome"))["code"]
        await fourth.close()
        first = socks[0]
        for rid, topic in enumerate(("lim/a", "lim/b", "lim/c"), start=1):
            await first.send(
                {"t": "sub", "id": rid, "topic": topic, "mode": "sync", "kind": "gset"}, wire.encode(["x"])
            )
            snap = await first.recv_kind("snap")
            assert snap["re"] == rid
            if topic != "lim/c":
                assert "error" not in snap, snap
            else:
                codes["third_topic_sub"] = snap["error"]["code"]
        await first.send({"t": "pub", "topic": "lim/d", "kind": "gset", "seq": 1}, wire.encode(["y"]))
        codes["third_topic_pub"] = (await first.recv_kind("error"))["code"]
        await first.send({"t": "msg", "op": "x", "to": "lim1"}, b"\x00" * (64 * 1024 + 1))
        codes["big_frame"] = (await first.recv_kind("error"))["code"]
        await first.send({"t": "req", "id": 9, "op": "peers"})  # the connection lives on
        assert (await first.recv_kind("rep"))["re"] == 9
        for sock in socks:
            await sock.close()
        return codes

    codes = asyncio.run(main())
    assert codes == {
        "fourth_peer": "hub_full",
        "third_topic_sub": "too_many_topics",
        "third_topic_pub": "too_many_topics",
        "big_frame": "frame_too_large",
    }
    # An honest client sees the same refusals as exceptions.
    wait_until(lambda: not hub.peer_names(), what="the raw peers to leave")
    peers = [Peer(hub.ws_url, f"honest{i}", hub.token, kind="script").start() for i in range(3)]
    try:
        with pytest.raises(SpindelError) as refused:
            Peer(hub.ws_url, "honest3", hub.token, kind="script").start()
        # The client wraps the hub's HubError(hub_full) in NotConnected("cannot reach the hub ...: ...").
        assert "the hub is full: 3 peers are connected" in str(refused.value)
    finally:
        for peer in peers:
            peer.close()
    assert sorted(t["name"] for t in hub.get("spindel/api/topics")) == ["lim/a", "lim/b"]
    record("8_limits", **codes)
