"""pycrdt-websocket competitor: a ``WebsocketServer`` on ``websockets``, clients with ``pycrdt.Provider``.

``python -m bench.ycrdt server --port P`` serves rooms at ``ws://127.0.0.1:P/ROOM``;
the client roles (``ping``, ``pong``, ``writer``, ``reader``) mirror those of
:mod:`bench.peers` with Y maps instead of signals: a value is ``map["v"]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

from pycrdt import Doc, Map, Provider
from pycrdt.websocket import WebsocketServer
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from .common import (
    Block,
    Proc,
    RateWindow,
    aserve_blocks,
    emit,
    free_port,
    start,
    stdin_lines,
    watchdog,
    worker_blocks,
)


class Channel:
    """pycrdt's Channel protocol (``path``, ``send``, ``recv``, iteration) over a websockets connection."""

    def __init__(self, ws: Any, path: str) -> None:
        self._ws = ws
        self._path = path

    @property
    def path(self) -> str:
        return self._path

    def __aiter__(self) -> Channel:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.recv()
        except ConnectionClosed:
            raise StopAsyncIteration() from None

    async def send(self, message: bytes) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self._ws.send(message)

    async def recv(self) -> bytes:
        message = await self._ws.recv()
        return message.encode() if isinstance(message, str) else bytes(message)


async def server(port: int) -> None:
    """One pycrdt-websocket server on 127.0.0.1:``port``; the URL path names the room."""
    async with WebsocketServer(auto_clean_rooms=False) as rooms:

        async def handle(ws: ServerConnection) -> None:
            await rooms.serve(Channel(ws, ws.request.path if ws.request else "/"))

        async with serve(handle, "127.0.0.1", port, max_size=None, compression=None):
            emit("READY", port)
            await asyncio.Event().wait()


@contextlib.asynccontextmanager
async def joined(url: str) -> AsyncIterator[Doc]:
    """A Doc kept in sync with the room at ``url`` while the context is open."""
    doc = Doc()
    async with connect(url, max_size=None, compression=None) as ws:
        provider = Provider(doc, Channel(ws, url.rsplit("/", 1)[-1]))
        async with provider:
            await asyncio.wait_for(provider.synced.wait(), 10)
            yield doc


async def ping(url: str, max_seconds: float) -> None:
    """Blocks of round trips: set ``ping["v"] = i``, until ``pong["v"] == i`` is observed; ms."""
    async with joined(url) as doc:
        ping_map, pong_map = doc.get("ping", type=Map), doc.get("pong", type=Map)
        seen: asyncio.Queue[tuple[float, Any]] = asyncio.Queue()

        def observe(event: Any) -> None:
            if "v" in event.keys:
                seen.put_nowait((time.perf_counter(), pong_map["v"]))

        pong_map.observe(observe)
        counter = itertools.count()

        async def measure(n: int) -> list[float]:
            samples: list[float] = []
            deadline = time.monotonic() + max_seconds
            for _ in range(n):
                i = next(counter)
                started = time.perf_counter()
                ping_map["v"] = i
                while True:
                    at, value = await asyncio.wait_for(seen.get(), 10)
                    if int(value) == i:
                        break
                samples.append((at - started) * 1000.0)
                if time.monotonic() > deadline:
                    break
            return samples

        await aserve_blocks(measure)


async def pong(url: str) -> None:
    """Answer every ping: its observer writes ``pong["v"]`` (soon after, outside the transaction)."""
    async with joined(url) as doc:
        ping_map, pong_map = doc.get("ping", type=Map), doc.get("pong", type=Map)
        loop = asyncio.get_running_loop()

        def answer(value: Any) -> None:
            pong_map["v"] = value

        def observe(event: Any) -> None:
            if "v" in event.keys:
                loop.call_soon(answer, ping_map["v"])

        ping_map.observe(observe)
        emit("READY")
        commands = stdin_lines()
        while await asyncio.to_thread(commands.get) not in (None, "stop"):
            pass


async def writer(url: str, seconds: float, max_count: int) -> None:
    """Set ``m["v"]`` as fast as possible for ``seconds``, yielding to the provider after each set."""
    async with joined(url) as doc:
        values = doc.get("m", type=Map)
        emit("READY")
        sent = 0
        end = time.monotonic() + seconds
        while sent < max_count and time.monotonic() < end:
            values["v"] = sent
            sent += 1
            await asyncio.sleep(0)
        emit("RESULT", {"sent": sent})


async def reader(url: str, warmup: float, seconds: float, max_seconds: float) -> None:
    """Count observed changes of ``m``: the rate over ``seconds`` after ``warmup`` s from the first."""
    async with joined(url) as doc:
        values = doc.get("m", type=Map)
        window = RateWindow(warmup, seconds)
        values.observe(lambda _: window.tick())
        emit("READY")
        deadline = time.monotonic() + max_seconds
        while not window.done.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        emit("RESULT", window.result())


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ycrdt")
    parser.add_argument("role", choices=["server", "ping", "pong", "writer", "reader"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--url", default="")
    parser.add_argument("--warmup", type=float, default=100)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--max-count", type=int, default=10_000_000)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    args = parser.parse_args()
    watchdog(900)
    if args.role == "server":
        job = server(args.port)
    elif args.role == "ping":
        job = ping(args.url, args.max_seconds)
    elif args.role == "pong":
        job = pong(args.url)
    elif args.role == "writer":
        job = writer(args.url, args.seconds, args.max_count)
    else:
        job = reader(args.url, args.warmup, args.seconds, args.max_seconds)
    asyncio.run(job)


# -- orchestrator side ------------------------------------------------------------------------


def start_server() -> tuple[Proc, str]:
    port = free_port()
    proc = start("ycrdt-server", "bench.ycrdt", "server", "--port", port, "--max-seconds", 900)
    proc.expect("READY", 30)
    return proc, f"ws://127.0.0.1:{port}"


def round_trips() -> Block:
    """Start a server and two clients of one room; blocks of ping-pong round trips.

    The processes live until the end of the run.
    """
    _, base = start_server()
    url = f"{base}/latency"
    start("ycrdt-pong", "bench.ycrdt", "pong", "--url", url).expect("READY", 30)
    return worker_blocks(start("ycrdt-ping", "bench.ycrdt", "ping", "--url", url, "--max-seconds", 120))


def throughput(warmup: float, seconds: float) -> dict[str, Any]:
    """Changes per second a reader observes from a writer setting as fast as it can."""
    srv, base = start_server()
    try:
        url = f"{base}/throughput"
        reader_proc = start(
            "ycrdt-reader", "bench.ycrdt", "reader", "--url", url, "--warmup", warmup, "--seconds", seconds
        )
        reader_proc.expect("READY", 30)
        writer_proc = start(
            "ycrdt-writer", "bench.ycrdt", "writer", "--url", url, "--seconds", warmup + seconds + 1.5
        )
        result: dict[str, Any] = reader_proc.result(timeout=warmup + seconds + 60)
        writer_proc.result(timeout=warmup + seconds + 30)
        for proc in (writer_proc, reader_proc):
            proc.stop()
    finally:
        srv.stop()
    return result


if __name__ == "__main__":
    main()
