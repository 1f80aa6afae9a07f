"""The hub's endpoints inside a real (in-process) Jupyter server: auth, peers, frames."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import pytest
import tornado
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.iostream import IOStream
from tornado.websocket import WebSocketClientConnection, WebSocketProtocol13, websocket_connect

from spindel_jupyter.core import codes, wire
from spindel_jupyter.peer.transport import open_websocket


@pytest.fixture
def urls(jp_serverapp: Any, http_server_client: Any, jp_http_port: int, jp_base_url: str) -> dict[str, str]:
    return {
        "ws": f"ws://127.0.0.1:{jp_http_port}{jp_base_url}spindel/ws",
        "peers": f"http://127.0.0.1:{jp_http_port}{jp_base_url}spindel/api/peers",
        "token": jp_serverapp.identity_provider.token,
    }


async def open_peer(url: str, name: str, headers: dict[str, str] | None = None) -> WebSocketClientConnection:
    ws = await websocket_connect(HTTPRequest(url, headers=headers or {}))
    await ws.write_message(
        wire.pack_frame({"t": "hello", "name": name, "kind": "kernel", "session": name}), binary=True
    )
    return ws


async def next_frame(ws: WebSocketClientConnection, kind: str) -> tuple[dict[str, Any], Any]:
    while True:
        message = await ws.read_message()
        assert message is not None, "connection closed"
        assert isinstance(message, bytes)
        header, body = wire.unpack_frame(message)
        if header["t"] == kind:
            return header, wire.decode(body) if body else None


async def login_cookie(urls: dict[str, str]) -> str:
    response = await AsyncHTTPClient().fetch(
        urls["peers"], headers={"Authorization": f"token {urls['token']}"}
    )
    cookies = [c.split(";", 1)[0] for c in response.headers.get_list("Set-Cookie")]
    assert cookies, "a token-authenticated request sets the login cookie"
    return "; ".join(cookies)


async def test_websocket_refuses_requests_without_a_valid_token(urls: dict[str, str]) -> None:
    for headers, url in [
        ({}, urls["ws"]),
        ({"Authorization": "token wrong"}, urls["ws"]),
        ({}, urls["ws"] + "?token=wrong"),
    ]:
        with pytest.raises(HTTPClientError) as info:
            await websocket_connect(HTTPRequest(url, headers=headers))
        assert info.value.code == 403


async def test_rest_refuses_requests_without_a_valid_token(urls: dict[str, str]) -> None:
    client = AsyncHTTPClient()
    for headers in ({}, {"Authorization": "token wrong"}):
        with pytest.raises(HTTPClientError) as info:
            await client.fetch(urls["peers"], headers=headers)
        assert info.value.code == 403


async def test_websocket_accepts_header_query_and_cookie(urls: dict[str, str]) -> None:
    cookie = await login_cookie(urls)
    ways = [
        ("header", urls["ws"], {"Authorization": f"token {urls['token']}"}),
        ("query", urls["ws"] + f"?token={urls['token']}", {}),
        ("cookie", urls["ws"], {"Cookie": cookie}),
    ]
    for name, url, headers in ways:
        ws = await open_peer(url, name, headers)
        header, _ = await next_frame(ws, "welcome")
        assert header["name"] == name
        ws.close()


async def test_rest_accepts_header_query_and_cookie(urls: dict[str, str]) -> None:
    cookie = await login_cookie(urls)
    client = AsyncHTTPClient()
    for url, headers in [
        (urls["peers"], {"Authorization": f"token {urls['token']}"}),
        (urls["peers"] + f"?token={urls['token']}", {}),
        (urls["peers"], {"Cookie": cookie}),
    ]:
        response = await client.fetch(url, headers=headers)
        assert json.loads(response.body) == []


async def test_peers_endpoint_lists_connected_peers(urls: dict[str, str]) -> None:
    auth = {"Authorization": f"token {urls['token']}"}
    alice = await open_peer(urls["ws"], "alice", auth)
    await next_frame(alice, "welcome")
    bob = await open_peer(urls["ws"], "bob", auth)
    await next_frame(bob, "welcome")
    response = await AsyncHTTPClient().fetch(urls["peers"], headers=auth)
    peers = json.loads(response.body)
    assert [(p["name"], p["kind"], p["contexts"]) for p in peers] == [
        ("alice", "kernel", []),
        ("bob", "kernel", []),
    ]
    assert all(p["since"] for p in peers)
    bob.close()
    await next_frame(alice, "event")  # bob's departure is broadcast
    response = await AsyncHTTPClient().fetch(urls["peers"], headers=auth)
    assert [p["name"] for p in json.loads(response.body)] == ["alice"]


async def test_bad_frames_get_error_frames_while_others_keep_working(
    urls: dict[str, str], jp_serverapp: Any
) -> None:
    auth = {"Authorization": f"token {urls['token']}"}
    hub = jp_serverapp.web_app.settings["spindel_hub"]
    hub.relay.max_frame_bytes = 4096
    mallory = await open_peer(urls["ws"], "mallory", auth)
    await next_frame(mallory, "welcome")
    alice = await open_peer(urls["ws"], "alice", auth)
    await next_frame(alice, "welcome")
    bob = await open_peer(urls["ws"], "bob", auth)
    await next_frame(bob, "welcome")

    hostile = [
        (b"\x00\xffnot msgpack at all", codes.BAD_FRAME),
        (wire.pack_frame({"t": 1, "x": [1, 2]}), codes.BAD_FRAME),
        (wire.encode([1, 2, 3]), codes.BAD_FRAME),
        (wire.pack_frame({"t": "msg", "op": "x", "to": "bob"}, b"x" * 5000), codes.FRAME_TOO_LARGE),
    ]
    for data, code in hostile:
        await mallory.write_message(data, binary=True)
        header, _ = await next_frame(mallory, "error")
        assert header["code"] == code
        # meanwhile alice and bob still talk through the hub
        await alice.write_message(
            wire.pack_frame({"t": "req", "id": 1, "op": "ping", "to": "bob"}), binary=True
        )
        request, _ = await next_frame(bob, "req")
        assert request["from"] == "alice"
        await bob.write_message(
            wire.pack_frame({"t": "rep", "re": 1, "to": "alice"}, wire.encode("pong")), binary=True
        )
        reply, body = await next_frame(alice, "rep")
        assert (reply["from"], body) == ("bob", "pong")
    # and mallory's own connection is still up
    await mallory.write_message(wire.pack_frame({"t": "req", "id": 2, "op": "peers"}), binary=True)
    _, peers = await next_frame(mallory, "rep")
    assert [p["name"] for p in peers] == ["alice", "bob", "mallory"]


async def test_server_exports_the_hub_to_kernels(urls: dict[str, str]) -> None:
    assert os.environ["SPINDEL_HUB_URL"] == urls["ws"]
    assert os.environ["SPINDEL_TOKEN"] == urls["token"]


async def test_rest_acts_as_the_signed_in_user_never_as_a_peer_a_body_names(urls: dict[str, str]) -> None:
    workspaces = urls["peers"].replace("/peers", "/workspaces")
    headers = {"Authorization": f"token {urls['token']}"}
    content = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}

    async def post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        request = HTTPRequest(url, method="POST", headers=headers, body=json.dumps(body))
        try:
            response = await AsyncHTTPClient().fetch(request)
        except HTTPClientError as exc:
            assert exc.response is not None
            return exc.code, json.loads(exc.response.body)
        return response.code, json.loads(response.body)

    status, body = await post(workspaces, {"name": "rest-ws", "notebook": content, "peer": "alice"})
    assert status == 400 and "drop 'peer'" in body["message"]
    status, body = await post(workspaces, {"name": "rest-ws", "notebook": content})
    assert status == 200 and body["owner"]["peer"].startswith("user:")
    ws = await open_peer(urls["ws"], "alice", headers)
    await next_frame(ws, "welcome")
    status, body = await post(f"{workspaces}/rest-ws/claim", {"as": "alice", "force": True})
    assert status == 200 and body["owner"]["peer"] == "alice"  # one of the same user's own peers
    status, body = await post(f"{workspaces}/rest-ws/claim", {"as": "nobody"})
    assert status == 403 and body["code"] == "forbidden"
    ws.close()


async def test_the_hubs_heartbeat_closes_a_peer_that_stops_answering_and_logs_no_warning(
    urls: dict[str, str], jp_serverapp: Any, caplog: pytest.LogCaptureFixture
) -> None:
    hub = jp_serverapp.web_app.settings["spindel_hub"]
    hub.ping_interval, hub.ping_timeout = 0.05, 0.3
    headers = {"Authorization": f"token {urls['token']}"}
    alive = await open_peer(urls["ws"], "answers", headers)  # tornado's client answers every ping...
    await next_frame(alive, "welcome")
    reading = asyncio.ensure_future(drain(alive))  # ...while its frames are read
    # A peer whose connection is never read: it answers nothing.
    silent = await asyncio.to_thread(open_websocket, urls["ws"], headers, 5.0)
    silent.send(wire.frame_parts({"t": "hello", "name": "silent", "kind": "kernel", "session": "silent"}))
    relay = hub.relay
    for _ in range(40):
        await asyncio.sleep(0.05)
        if "silent" in relay.members:
            break
    for _ in range(100):
        await asyncio.sleep(0.05)
        if "silent" not in relay.members:
            break
    assert "silent" not in relay.members and "answers" in relay.members
    protocol = relay.members["answers"].link.ws_connection
    assert protocol.ping_interval == 0 and protocol.ping_timeout == 0  # tornado's own pings are off
    assert not [r for r in caplog.records if "cannot be longer" in r.getMessage()]
    alive.close()
    silent.close()
    await reading


async def drain(ws: WebSocketClientConnection) -> None:
    while await ws.read_message() is not None:
        pass


async def test_frames_written_into_tornados_stream_arrive_intact(
    urls: dict[str, str], jp_serverapp: Any
) -> None:
    """The hub writes its frames into the stream under tornado's WebSocket (a private part of tornado,
    pinned in pyproject.toml): small ones batched, large bodies uncopied. This fails loudly if tornado
    changes what that relies on."""
    assert hasattr(WebSocketProtocol13, "is_closing"), (
        f"tornado {tornado.version} has no WebSocketProtocol13.is_closing: PeerSocketHandler.send needs it"
    )
    auth = {"Authorization": f"token {urls['token']}"}
    alice = await open_peer(urls["ws"], "alice", auth)
    await next_frame(alice, "welcome")
    bob = await open_peer(urls["ws"], "bob", auth)
    await next_frame(bob, "welcome")
    link = jp_serverapp.web_app.settings["spindel_hub"].relay.members["bob"].link
    assert isinstance(link.ws_connection, WebSocketProtocol13)
    assert isinstance(getattr(link.ws_connection, "stream", None), IOStream), (
        f"tornado {tornado.version}: WebSocketProtocol13 has no IOStream `stream` attribute any more; "
        "PeerSocketHandler.send writes frames into it: update it and the tornado pin in pyproject.toml"
    )
    bodies = [b"", b"small", os.urandom(125), os.urandom(70_000), os.urandom(3_000_000), b"after"]
    for body in bodies:  # sent back to back: the small ones leave together, the large ones uncopied
        await alice.write_message(wire.pack_frame({"t": "msg", "op": "x", "to": "bob"}, body), binary=True)
    received = []
    while len(received) < len(bodies):
        message = await bob.read_message()
        assert isinstance(message, bytes), "the hub's frames are binary WebSocket messages"
        header, got = wire.unpack_frame(message)
        if header["t"] == "msg":
            received.append((header["from"], bytes(got)))
    assert received == [("alice", body) for body in bodies]
