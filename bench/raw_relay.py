"""The floor: a minimal tornado WebSocket hub that forwards every frame to the other clients.

Run as a worker: ``python -m bench.raw_relay ROLE ...``. Roles: ``hub`` (the
relay), ``echo`` (answers every frame with one of ``--size`` bytes), ``ping``
(round trips of ``--size``-byte frames), ``source`` and ``sink`` (throughput).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import socket
import time
from typing import Any
from urllib.parse import urlsplit

from tornado.util import _websocket_mask
from tornado.web import Application
from tornado.websocket import (
    WebSocketClientConnection,
    WebSocketClosedError,
    WebSocketHandler,
    websocket_connect,
)

from spindel_jupyter.core.websocket import OP_BINARY, frame_header

from .common import Block, Proc, RateWindow, aserve_blocks, emit, free_port, start, watchdog, worker_blocks

MAX_MESSAGE = 2**31


class RelayHandler(WebSocketHandler):
    """Forwards each binary frame, as is, to every other connected client."""

    clients: set[RelayHandler] = set()

    @property
    def max_message_size(self) -> int:
        return MAX_MESSAGE

    def open(self, *args: str, **kwargs: str) -> None:
        RelayHandler.clients.add(self)

    def on_message(self, message: str | bytes) -> None:
        for client in RelayHandler.clients:
            if client is not self:
                try:
                    client.write_message(message, binary=True)
                except WebSocketClosedError:
                    pass

    def on_close(self) -> None:
        RelayHandler.clients.discard(self)


async def hub(port: int) -> None:
    """Serve the relay on 127.0.0.1:``port`` until killed."""
    Application([(r"/ws", RelayHandler)]).listen(port, address="127.0.0.1")
    emit("READY", port)
    await asyncio.Event().wait()


async def connect(url: str) -> WebSocketClientConnection:
    return await websocket_connect(url, max_message_size=MAX_MESSAGE)


async def echo(url: str, size: int) -> None:
    """Answer every frame with a frame of ``size`` bytes."""
    ws = await connect(url)
    reply = bytes(size)
    emit("READY")
    while (await ws.read_message()) is not None:
        ws.write_message(reply, binary=True)


async def ping(url: str, size: int, max_seconds: float) -> None:
    """Blocks of round trips: send ``size`` bytes, wait for the answer; milliseconds."""
    ws = await connect(url)
    frame = bytes(size)

    async def measure(n: int) -> list[float]:
        samples: list[float] = []
        deadline = time.monotonic() + max_seconds
        for _ in range(n):
            started = time.perf_counter()
            await ws.write_message(frame, binary=True)
            if await asyncio.wait_for(ws.read_message(), 10) is None:
                raise RuntimeError("relay closed the connection")
            samples.append((time.perf_counter() - started) * 1000.0)
            if time.monotonic() > deadline:
                break
        return samples

    await aserve_blocks(measure)


async def source(url: str, size: int, seconds: float, max_count: int) -> None:
    """Send ``size``-byte frames as fast as the socket takes them, for ``seconds``."""
    ws = await connect(url)
    frame = bytes(size)
    sent = 0
    end = time.monotonic() + seconds
    try:
        while sent < max_count and time.monotonic() < end:
            await ws.write_message(frame, binary=True)
            sent += 1
    except WebSocketClosedError:
        pass
    emit("RESULT", {"sent": sent})
    ws.close()


async def sink(url: str, warmup: float, seconds: float, timeout: float) -> None:
    """Count frames received: the rate over ``seconds`` after ``warmup`` s from the first."""
    ws = await connect(url)
    window = RateWindow(warmup, seconds)
    emit("READY")
    try:
        while not window.done.is_set():
            if await asyncio.wait_for(ws.read_message(), timeout) is None:
                break
            window.tick()
    except asyncio.TimeoutError:
        pass
    emit("RESULT", window.result())


class BlockingClient:
    """A bare blocking WebSocket client for a round trip from inside a kernel cell.

    The floor of a remote cell: the same frames through the same relay, with
    nothing but a socket between the cell and the wire.
    """

    def __init__(self, url: str, size: int, reply_size: int) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        response = b""
        while b"\r\n\r\n" not in response:
            response += self.sock.recv(4096)
        if response.split(b" ", 2)[1] != b"101":
            raise ConnectionError(f"relay refused the upgrade: {response[:80]!r}")
        self.payload = bytes(size)
        self.expect = len(frame_header(OP_BINARY, reply_size)) + reply_size

    def round_trip(self) -> None:
        """Send one frame, wait for the whole answer."""
        mask = os.urandom(4)
        frame = frame_header(OP_BINARY, len(self.payload), mask) + _websocket_mask(mask, self.payload)
        self.sock.sendall(frame)
        got = 0
        while got < self.expect:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("relay closed the connection")
            got += len(chunk)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.raw_relay")
    parser.add_argument("role", choices=["hub", "echo", "ping", "source", "sink"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--url", default="")
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--warmup", type=float, default=100)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    parser.add_argument("--max-count", type=int, default=10_000_000)
    args = parser.parse_args()
    watchdog(900)
    if args.role == "hub":
        job = hub(args.port)
    elif args.role == "echo":
        job = echo(args.url, args.size)
    elif args.role == "ping":
        job = ping(args.url, args.size, args.max_seconds)
    elif args.role == "source":
        job = source(args.url, args.size, args.seconds, args.max_count)
    else:
        job = sink(args.url, args.warmup, args.seconds, timeout=10)
    asyncio.run(job)


if __name__ == "__main__":
    main()


# -- orchestrator side ------------------------------------------------------------------------


def start_hub() -> tuple[Proc, str]:
    """Start the relay; its process and ws:// URL."""
    port = free_port()
    relay = start("raw-relay", "bench.raw_relay", "hub", "--port", port, "--max-seconds", 900)
    relay.expect("READY", 30)
    return relay, f"ws://127.0.0.1:{port}/ws"


def round_trips(size: int, reply_size: int) -> Block:
    """Start relay, answerer (B) and pinger (A); blocks of A -> relay -> B -> relay -> A round trips.

    The frames are ``size`` bytes out and ``reply_size`` bytes back. The processes
    live until the end of the run.
    """
    _, url = start_hub()
    start("raw-echo", "bench.raw_relay", "echo", "--url", url, "--size", reply_size).expect("READY", 30)
    pinger = start("raw-ping", "bench.raw_relay", "ping", "--url", url, "--size", size, "--max-seconds", 120)
    return worker_blocks(pinger)


def throughput(size: int, warmup: float, seconds: float) -> dict[str, Any]:
    """Frames per second a sink receives from a source sending as fast as it can, through the relay."""
    relay, url = start_hub()
    try:
        sink_proc = start(
            "raw-sink", "bench.raw_relay", "sink", "--url", url, "--warmup", warmup, "--seconds", seconds
        )
        sink_proc.expect("READY", 30)
        source_proc = start(
            "raw-source", "bench.raw_relay", "source", "--url", url, "--size", size,
            "--seconds", warmup + seconds + 1.5,
        )  # fmt: skip
        result: dict[str, Any] = sink_proc.result(timeout=warmup + seconds + 60)
        source_proc.result(timeout=warmup + seconds + 30)
        for proc in (source_proc, sink_proc):
            proc.stop()
    finally:
        relay.stop()
    return result
