"""The client WebSocket against a real tornado WebSocket server (plain and TLS)."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import hashlib
import os
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, HTTPError
from tornado.websocket import WebSocketHandler

from spindel_jupyter.peer.transport import (
    MAX_MESSAGE,
    HandshakeError,
    ProtocolError,
    WebSocket,
    open_websocket,
)


class Echo(WebSocketHandler):
    """Echoes binary messages; ``close:CODE`` closes with CODE; ``big:N`` answers N bytes."""

    def prepare(self) -> None:
        if self.request.headers.get("Authorization") != "token good":
            raise HTTPError(403)

    def on_message(self, message: str | bytes) -> None:
        if isinstance(message, str) and message.startswith("close:"):
            self.close(int(message[6:]))
        elif isinstance(message, str) and message.startswith("big:"):
            self.write_message(os.urandom(int(message[4:])), binary=True)
        elif isinstance(message, str) and message == "ping-me":
            self.ping(b"are you there")
        else:
            self.write_message(message, binary=isinstance(message, bytes))

    def on_pong(self, data: bytes) -> None:
        self.write_message(b"pong:" + data, binary=True)


class Server:
    """A tornado server on its own thread; ``url`` is ws:// or wss://."""

    def __init__(self, certfile: Path | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        sockets = bind_sockets(0, "127.0.0.1")
        port = sockets[0].getsockname()[1]
        tls = None
        if certfile is not None:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(certfile)

        async def serve() -> None:
            app = Application([("/ws", Echo)], websocket_max_message_size=2**30)
            HTTPServer(app, ssl_options=tls, max_buffer_size=2**30).add_sockets(sockets)

        asyncio.run_coroutine_threadsafe(serve(), self.loop).result(5)
        self.url = f"{'wss' if tls else 'ws'}://localhost:{port}/ws"

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class Client:
    """An open WebSocket read on its own loop thread; messages land in a queue."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.messages: asyncio.Queue[Any] = asyncio.Queue()
        self.closed: concurrent.futures.Future[int | None] = concurrent.futures.Future()
        self.loop.call_soon_threadsafe(ws.start, self.loop, self._message, self.closed.set_result)

    def _message(self, message: Any) -> None:
        self.messages.put_nowait(bytes(message))

    def next(self, timeout: float = 10) -> bytes:
        return asyncio.run_coroutine_threadsafe(self._next(timeout), self.loop).result(timeout + 1)

    async def _next(self, timeout: float) -> bytes:
        return await asyncio.wait_for(self.messages.get(), timeout)

    def stop(self) -> None:
        self.ws.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def server() -> Iterator[Server]:
    made = Server()
    yield made
    made.stop()


@pytest.fixture
def connect() -> Iterator[Any]:
    clients: list[Client] = []

    def make(url: str, token: str = "good", tls: ssl.SSLContext | None = None) -> Client:
        client = Client(open_websocket(url, {"Authorization": f"token {token}"}, 5, tls))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.stop()


def test_small_and_large_messages_both_ways(server: Server, connect: Any) -> None:
    client = connect(server.url)
    for size in (0, 1, 125, 126, 65_535, 65_536, 3_000_001):
        data = os.urandom(size)
        client.ws.send(data)
        assert client.next() == data, size


def test_a_message_of_several_parts_arrives_as_one(server: Server, connect: Any) -> None:
    client = connect(server.url)
    array = np.arange(100_003, dtype=np.int64)
    parts = [b"abc", array.data, b"", b"z"]  # lengths not multiples of 4 shift the mask
    client.ws.send(parts)
    assert client.next() == b"abc" + array.tobytes() + b"z"


def test_large_messages_from_the_server_arrive_whole(server: Server, connect: Any) -> None:
    client = connect(server.url)
    for size in (70_000, 5_000_000):
        client.ws.send(f"big:{size}".encode(), opcode=0x1)
        assert len(client.next()) == size


def test_writes_from_many_threads_never_interleave(server: Server, connect: Any) -> None:
    client = connect(server.url)
    sent = {bytes([i]) * (100_000 + i) for i in range(16)}
    threads = [threading.Thread(target=client.ws.send, args=(data,)) for data in sent]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {client.next() for _ in sent} == sent


def test_pings_from_the_server_are_answered(server: Server, connect: Any) -> None:
    client = connect(server.url)
    client.ws.send(b"ping-me", opcode=0x1)
    assert client.next() == b"pong:are you there"


def test_the_close_code_reaches_the_callback(server: Server, connect: Any) -> None:
    client = connect(server.url)
    client.ws.send(b"close:4000", opcode=0x1)
    assert client.closed.result(5) == 4000
    with pytest.raises(OSError):
        client.ws.send(b"after the close")


def test_a_refused_upgrade_names_the_status(server: Server) -> None:
    with pytest.raises(HandshakeError) as refused:
        open_websocket(server.url, {"Authorization": "token bad"}, 5)
    assert refused.value.status == 403
    with pytest.raises(HandshakeError) as missing:
        open_websocket(server.url.replace("/ws", "/nothing"), {}, 5)
    assert missing.value.status == 404


def test_not_a_websocket_url() -> None:
    with pytest.raises(ValueError, match="ws:// or wss://"):
        open_websocket("http://localhost/ws", {}, 5)


def test_tls(tmp_path: Path, connect: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pem = tmp_path / "localhost.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", pem, "-out", pem],
        check=True, capture_output=True,
    )  # fmt: skip
    server = Server(certfile=pem)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            open_websocket(server.url, {"Authorization": "token good"}, 5)
        trusted = ssl.create_default_context(cafile=str(pem))
        client = connect(server.url, tls=trusted)
        for size in (5, 200_000, 3_000_000):
            data = os.urandom(size)
            client.ws.send(data)
            assert client.next() == data
        client.ws.send(b"big:1000000", opcode=0x1)
        assert len(client.next()) == 1_000_000
        monkeypatch.setenv("SSL_CERT_FILE", str(pem))  # as the README says for self-signed certificates
        trusted_by_env = connect(server.url)
        trusted_by_env.ws.send(b"trusted through SSL_CERT_FILE")
        assert trusted_by_env.next() == b"trusted through SSL_CERT_FILE"
    finally:
        server.stop()


def raw_server(frames: bytes, hold: float = 2) -> tuple[str, threading.Thread]:
    """A bare TCP server: accepts one WebSocket upgrade, sends ``frames`` as they are, reads nothing more."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        request = b""
        while b"\r\n\r\n" not in request:
            request += conn.recv(4096)
        key = next(
            line.split(b":", 1)[1].strip()
            for line in request.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key")
        )
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        conn.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n" + frames
        )
        time.sleep(hold)
        conn.close()
        listener.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return f"ws://127.0.0.1:{port}/", thread


def test_a_fragmented_message_is_put_back_together(connect: Any) -> None:
    first = bytes([0x02, 3]) + b"abc"  # binary, not final
    middle = bytes([0x00, 2]) + b"de"  # continuation
    ping = bytes([0x89, 0])  # a control frame may come between fragments
    last = bytes([0x80, 1]) + b"f"  # continuation, final
    url, _ = raw_server(first + middle + ping + last + bytes([0x82, 2]) + b"gh")
    client = connect(url)
    assert client.next() == b"abcdef"
    assert client.next() == b"gh"


def test_a_frame_over_the_limit_closes_the_connection(connect: Any) -> None:
    url, _ = raw_server(bytes([0x82, 127]) + struct.pack("!Q", MAX_MESSAGE + 1))
    client = connect(url)
    assert client.closed.result(5) == 1009
    assert isinstance(client.ws.error, ProtocolError)


def test_a_masked_frame_from_the_server_is_refused(connect: Any) -> None:
    url, _ = raw_server(bytes([0x82, 0x81]) + b"\x00\x00\x00\x00x")
    client = connect(url)
    assert client.closed.result(5) == 1002


def test_closing_unblocks_a_write_the_server_never_reads(connect: Any) -> None:
    url, _ = raw_server(b"", hold=20)
    client = connect(url)
    outcome: concurrent.futures.Future[BaseException | None] = concurrent.futures.Future()

    def write() -> None:
        try:
            client.ws.send(bytes(50_000_000))
            outcome.set_result(None)
        except OSError as exc:
            outcome.set_result(exc)

    threading.Thread(target=write, daemon=True).start()
    time.sleep(0.5)
    assert not outcome.done(), "the write should be waiting for a reader"
    started = time.monotonic()
    client.ws.close()  # its close frame cannot get in: it is skipped, and the socket shut
    assert isinstance(outcome.result(5), OSError)
    assert time.monotonic() - started < 5
    assert client.closed.result(5) is None
