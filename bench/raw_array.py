"""Bare tornado WebSocket array transfer: a server sends pre-built bytes to a client that asks.

``python -m bench.raw_array server --port P --sizes 1000,...`` and
``python -m bench.raw_array client --url ws://... --sizes ... --n ... --warmup ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from tornado.web import Application
from tornado.websocket import WebSocketHandler, websocket_connect

from .common import emit, watchdog

MAX_MESSAGE = 2**31


class ArrayHandler(WebSocketHandler):
    """Answers a text request naming a size with that many bytes (built once at start), a binary message
    with two bytes (for the measures of sending)."""

    buffers: dict[int, bytes] = {}

    @property
    def max_message_size(self) -> int:
        return MAX_MESSAGE

    def on_message(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self.write_message(b"ok", binary=True)
        else:
            self.write_message(self.buffers[int(message)], binary=True)


async def server(port: int, sizes: list[int]) -> None:
    ArrayHandler.buffers = {size: bytes(size) for size in sizes}
    Application([(r"/ws", ArrayHandler)]).listen(port, address="127.0.0.1")
    emit("READY", port)
    await asyncio.Event().wait()


async def client(url: str, sizes: list[int], n: list[int], warmup: list[int], max_seconds: float) -> None:
    """For each size: seconds from request to the whole array received, in milliseconds."""
    ws = await websocket_connect(url, max_message_size=MAX_MESSAGE)
    out: dict[str, list[float]] = {}
    for size, count, warm in zip(sizes, n, warmup, strict=True):
        samples: list[float] = []
        deadline = time.monotonic() + max_seconds
        for i in range(warm + count):
            started = time.perf_counter()
            await ws.write_message(str(size))
            data = await asyncio.wait_for(ws.read_message(), 60)
            elapsed = time.perf_counter() - started
            if not isinstance(data, bytes) or len(data) != size:
                raise RuntimeError(f"expected {size} bytes, got {type(data).__name__}")
            del data
            if i >= warm:
                samples.append(elapsed * 1000.0)
                if time.monotonic() > deadline:
                    break
        out[str(size)] = samples
    emit("RESULT", out)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.raw_array")
    parser.add_argument("role", choices=["server", "client"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--url", default="")
    parser.add_argument("--sizes", type=_ints, required=True)
    parser.add_argument("--n", type=_ints, default=[])
    parser.add_argument("--warmup", type=_ints, default=[])
    parser.add_argument("--max-seconds", type=float, default=30.0)
    args = parser.parse_args()
    watchdog(600)
    if args.role == "server":
        asyncio.run(server(args.port, args.sizes))
    else:
        asyncio.run(client(args.url, args.sizes, args.n, args.warmup, args.max_seconds))


if __name__ == "__main__":
    main()
