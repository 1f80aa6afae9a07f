"""``transport``: the peer's WebSocket against the previous one (``bench/legacy_transport.py``), in one run.

Every measure runs once per connection (``legacy``, ``current``), each in a
worker of its own, interleaved: round trips of spindel's call-sized frames
through the bare relay; receiving 1 MB and 64 MB binary messages from a bare
tornado server; sending them to it (it answers each with two bytes). Both are
also measured with wsproto framing and parsing the large messages
(``current_wsproto``), the path the current connection takes for messages under
64 KiB: the figures behind its hand-written paths for large ones.

Worker: ``python -m bench.transport ROLE --impl legacy|current|current_wsproto --url URL --size N``.
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import sys
import threading
import time
from typing import Any

from .common import (
    Block,
    Shared,
    free_port,
    interleave,
    latency,
    serve_blocks,
    start,
    watchdog,
    worker_blocks,
)

#: Rounds the interleaved measures take turns in.
ROUNDS = 5
SIZES = (1_000_000, 64_000_000)
#: (measure, connections, iterations, warm-up) for each size in SIZES; the round trip once.
IMPLS = ("legacy", "current")
PLAN: list[tuple[str, tuple[str, ...], tuple[int, int], tuple[int, int]]] = [
    ("receive", (*IMPLS, "current_wsproto"), (300, 30), (30, 3)),
    ("send", (*IMPLS, "current_wsproto"), (300, 20), (30, 2)),
]


# -- worker side --------------------------------------------------------------------------------


class Connection:
    """One WebSocket of the chosen implementation, read on its own loop thread into a queue."""

    def __init__(self, impl: str, url: str) -> None:
        if impl == "legacy":
            from . import legacy_transport as module
        else:
            from spindel_jupyter.peer import transport as module

            if impl == "current_wsproto":  # wsproto frames and parses every message, large ones too
                module._LARGE = sys.maxsize
        self.ws = module.open_websocket(url, {}, 10)
        self.messages: queue.SimpleQueue[Any] = queue.SimpleQueue()
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()
        closed = lambda code: self.messages.put(None)  # noqa: E731
        loop.call_soon_threadsafe(self.ws.start, loop, self.messages.put, closed)

    def ask(self, payload: bytes, text: bool = False) -> int:
        """Send ``payload`` and wait for the answer; its size."""
        self.ws.send(payload, 0x1 if text else 0x2)
        answer = self.messages.get(timeout=60)
        if answer is None:
            raise ConnectionError("the server closed the connection")
        return len(answer)


def _timed(n: int, once: Any) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        once()
        samples.append((time.perf_counter() - started) * 1000.0)
    return samples


def role_round_trip(connection: Connection, size: int) -> None:
    frame = bytes(size)
    serve_blocks(lambda n: _timed(n, lambda: connection.ask(frame)))


def role_receive(connection: Connection, size: int) -> None:
    request = str(size).encode()

    def once() -> None:
        if connection.ask(request, text=True) != size:
            raise RuntimeError(f"expected {size} bytes")

    serve_blocks(lambda n: _timed(n, once))


def role_send(connection: Connection, size: int) -> None:
    payload = bytes(size)
    serve_blocks(lambda n: _timed(n, lambda: connection.ask(payload)))


ROLES = {"round_trip": role_round_trip, "receive": role_receive, "send": role_send}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.transport")
    parser.add_argument("role", choices=sorted(ROLES))
    parser.add_argument("--impl", choices=["legacy", "current", "current_wsproto"], required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--size", type=int, required=True)
    args = parser.parse_args()
    watchdog(900)
    ROLES[args.role](Connection(args.impl, args.url), args.size)


if __name__ == "__main__":
    main()


# -- orchestrator side ------------------------------------------------------------------------


def _worker(role: str, impl: str, url: str, size: int) -> Block:
    args = [role, "--impl", impl, "--url", url, "--size", size]
    return worker_blocks(start(f"transport-{role}-{impl}", "bench.transport", *args), timeout=600)


def run(shared: Shared) -> dict[str, Any]:
    """Both connections, every measure, interleaved; ``{measure: {connection: latency}}``."""
    from . import raw_relay
    from .remote_call import call_frame_sizes

    size, reply_size = call_frame_sizes()
    port = free_port()
    sizes = ",".join(map(str, SIZES))
    server = start("raw-array-server", "bench.raw_array", "server", "--port", port, "--sizes", sizes)
    server.expect("READY", 60)
    array_url = f"ws://127.0.0.1:{port}/ws"

    plan: dict[str, tuple[Block, int, int]] = {}
    for impl in IMPLS:  # a relay each: it forwards every frame to all its other clients
        _, relay_url = raw_relay.start_hub()
        echo = start("raw-echo", "bench.raw_relay", "echo", "--url", relay_url, "--size", reply_size)
        echo.expect("READY", 30)
        block = _worker("round_trip", impl, relay_url, size)
        plan[f"relay_round_trip/{impl}"] = (block, shared.count(3000), shared.count(300))
    for measure, impls, counts, warmups in PLAN:
        for message_size, n, warmup in zip(SIZES, counts, warmups, strict=True):
            for impl in impls:
                block = _worker(measure, impl, array_url, message_size)
                warm = max(1, warmup // 10) if shared.quick else warmup
                plan[f"{measure}_{message_size // 1_000_000}MB/{impl}"] = (block, shared.count(n), warm)
    out: dict[str, Any] = {}
    for name, samples in interleave(plan, ROUNDS).items():
        measure, impl = name.split("/")
        entry = latency(samples) if isinstance(samples, list) else {"error": samples}
        out.setdefault(measure, {})[impl] = entry
    for measure, entries in out.items():
        legacy = entries.get("legacy", {}).get("median")
        for impl, entry in entries.items():
            if impl != "legacy" and legacy and entry.get("median"):
                print(f"bench: transport {measure}: legacy / {impl} = {legacy / entry['median']:.2f}x")
    return out
