"""Fixtures of the peer's tests: a client WebSocket on its own loop, and servers that speak bytes."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import hashlib
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from spindel_jupyter.peer.transport import MAX_MESSAGE, WebSocket, open_websocket

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Ticker:
    """A tick every 10 ms on a loop: :meth:`lag` is how long past its time a tick ever was (s).

    A loop that stops running its callbacks shows here, even while it is stuck.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float = 0.01) -> None:
        self.loop = loop
        self.interval = interval
        self.worst = 0.0
        self.ticks = 0
        self._due = time.monotonic() + interval
        loop.call_soon_threadsafe(self._arm)

    def _arm(self) -> None:
        self._due = time.monotonic() + self.interval
        self.loop.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        self.worst = max(self.worst, time.monotonic() - self._due)
        self.ticks += 1
        self._arm()

    def lag(self) -> float:
        return max(self.worst, time.monotonic() - self._due)


class Client:
    """An open WebSocket read on its own loop thread; messages land in a queue, a ticker checks the loop."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.ticker = Ticker(self.loop)
        self.messages: asyncio.Queue[bytes] = asyncio.Queue()
        self.received = 0
        self.closed: concurrent.futures.Future[int | None] = concurrent.futures.Future()
        self.loop.call_soon_threadsafe(ws.start, self.loop, self._message, self.closed.set_result)

    def _message(self, message: Any) -> None:
        self.received += 1
        self.messages.put_nowait(bytes(message))

    def next(self, timeout: float = 10) -> bytes:
        return asyncio.run_coroutine_threadsafe(self._next(timeout), self.loop).result(timeout + 1)

    async def _next(self, timeout: float) -> bytes:
        return await asyncio.wait_for(self.messages.get(), timeout)

    def on_loop(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the client's loop (as the peer's heartbeat does) and return its result."""

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(5)

    def stop(self) -> None:
        self.ws.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def connect() -> Iterator[Callable[..., Client]]:
    """``connect(url, token="good", tls=None, max_message=...)``: an open :class:`Client`."""
    clients: list[Client] = []

    def make(
        url: str, token: str = "good", tls: ssl.SSLContext | None = None, max_message: int = MAX_MESSAGE
    ) -> Client:
        client = Client(open_websocket(url, {"Authorization": f"token {token}"}, 5, tls, max_message))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.stop()


@pytest.fixture
def certificate(tmp_path: Path) -> Path:
    """A self-signed certificate (and its key) for ``localhost``, in one PEM file."""
    pem = tmp_path / "localhost.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", pem, "-out", pem],
        check=True, capture_output=True,
    )  # fmt: skip
    return pem


# -- a server that speaks bytes ------------------------------------------------------------


def accept_key(request: bytes) -> bytes:
    """The Sec-WebSocket-Accept answering the Sec-WebSocket-Key of ``request``."""
    key = next(
        line.split(b":", 1)[1].strip()
        for line in request.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key")
    )
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def upgrade(request: bytes) -> bytes:
    """A correct ``101`` answer to ``request``."""
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_key(request) + b"\r\n\r\n"
    )


def frame(opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0, mask: bytes = b"") -> bytes:
    """A frame as a server writes it (a test may set what a server must not: mask, reserved bits)."""
    first = (0x80 if fin else 0) | rsv | opcode
    masked = 0x80 if mask else 0
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", first, masked | n)
    elif n <= 0xFFFF:
        head = struct.pack("!BBH", first, masked | 126, n)
    else:
        head = struct.pack("!BBQ", first, masked | 127, n)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + payload


class RawServer:
    """One WebSocket connection served byte by byte: the upgrade by hand, then raw frames.

    ``answer(request)`` makes the handshake's answer (default: a correct 101); ``rcvbuf``
    shrinks the socket's receive buffer, so that a server that stops reading is soon full.
    """

    def __init__(self, answer: Callable[[bytes], bytes] = upgrade, rcvbuf: int | None = None) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        if rcvbuf is not None:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.url = f"ws://127.0.0.1:{self.listener.getsockname()[1]}/ws"
        self.request = b""
        self._conn: concurrent.futures.Future[socket.socket] = concurrent.futures.Future()
        self._answer = answer
        self._pending = b""
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        try:
            self.listener.settimeout(10)
            conn, _ = self.listener.accept()
            conn.settimeout(10)
            while b"\r\n\r\n" not in self.request:
                self.request += conn.recv(4096)
            conn.sendall(self._answer(self.request))
            self._conn.set_result(conn)
        except BaseException as exc:
            self._conn.set_exception(exc)

    @property
    def conn(self) -> socket.socket:
        return self._conn.result(10)

    def send(self, data: bytes) -> None:
        self.conn.sendall(data)

    def read_frame(self, timeout: float = 5) -> tuple[int, bytes]:
        """The next frame the client sent: (opcode, unmasked payload)."""
        head = self._read(2, timeout)
        n = head[1] & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self._read(2, timeout))
        elif n == 127:
            (n,) = struct.unpack("!Q", self._read(8, timeout))
        mask = self._read(4, timeout) if head[1] & 0x80 else b"\0\0\0\0"
        payload = self._read(n, timeout)
        return head[0] & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

    def read_close(self, timeout: float = 5) -> int | None:
        """The code of the client's close frame (None if it had none), skipping what comes before."""
        while True:
            opcode, payload = self.read_frame(timeout)
            if opcode == 0x8:
                return struct.unpack("!H", payload[:2])[0] if payload else None

    def _read(self, n: int, timeout: float) -> bytes:
        self.conn.settimeout(timeout)
        while len(self._pending) < n:
            chunk = self.conn.recv(65536)
            if not chunk:
                raise ConnectionError(f"the client closed the connection ({len(self._pending)} of {n} bytes)")
            self._pending += chunk
        data, self._pending = self._pending[:n], self._pending[n:]
        return data

    def close(self) -> None:
        if self._conn.done() and self._conn.exception() is None:
            self.conn.close()
        self.listener.close()


@pytest.fixture
def raw_server() -> Iterator[Callable[..., RawServer]]:
    """``raw_server(answer=upgrade, rcvbuf=None)``: a :class:`RawServer`, closed after the test."""
    servers: list[RawServer] = []

    def make(answer: Callable[[bytes], bytes] = upgrade, rcvbuf: int | None = None) -> RawServer:
        server = RawServer(answer, rcvbuf)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()
