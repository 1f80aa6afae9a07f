"""The floor of the mesh: two bare nats-py clients of one nats-server.

Run as a worker: ``python -m bench.raw_nats ROLE --url nats://...``. Roles:
``echo`` (answers every request with ``--size`` bytes), ``request`` (round
trips of ``--size``-byte requests), ``pong`` (publishes on ``pong`` what
arrives on ``ping``), ``ping`` (ping-pong round trips of ``--size``-byte
messages), ``source`` and ``sink`` (publish rate).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import nats

from .common import Block, RateWindow, aserve_blocks, emit, start, watchdog, worker_blocks

#: Every subject of these workers starts so, well apart from the hubs' own.
SUBJECT = "bench.raw"


async def _connect(url: str) -> Any:
    return await nats.connect(url, name="bench raw")  # nats-py's defaults, as the hubs have


async def echo(url: str, size: int) -> None:
    """Answer every request on ``bench.raw.echo`` with ``size`` bytes."""
    nc = await _connect(url)
    reply = bytes(size)

    async def answer(msg: Any) -> None:
        await nc.publish(msg.reply, reply)

    await nc.subscribe(f"{SUBJECT}.echo", cb=answer)
    await nc.flush()
    emit("READY")
    await asyncio.Event().wait()


async def request(url: str, size: int, max_seconds: float) -> None:
    """Blocks of request/reply round trips of ``size`` bytes; milliseconds."""
    nc = await _connect(url)
    payload = bytes(size)

    async def measure(n: int) -> list[float]:
        samples: list[float] = []
        deadline = time.monotonic() + max_seconds
        for _ in range(n):
            started = time.perf_counter()
            await nc.request(f"{SUBJECT}.echo", payload, timeout=10)
            samples.append((time.perf_counter() - started) * 1000.0)
            if time.monotonic() > deadline:
                break
        return samples

    await aserve_blocks(measure)


async def pong(url: str) -> None:
    """Publish on ``bench.raw.pong`` every message that arrives on ``bench.raw.ping``."""
    nc = await _connect(url)

    async def answer(msg: Any) -> None:
        await nc.publish(f"{SUBJECT}.pong", msg.data)

    await nc.subscribe(f"{SUBJECT}.ping", cb=answer)
    await nc.flush()
    emit("READY")
    await asyncio.Event().wait()


async def ping(url: str, size: int, max_seconds: float) -> None:
    """Blocks of ping-pong round trips: publish ``size`` bytes, wait for the answer; milliseconds."""
    nc = await _connect(url)
    payload = bytes(size)
    answers: asyncio.Queue[Any] = asyncio.Queue()

    async def arrived(msg: Any) -> None:
        answers.put_nowait(msg)

    await nc.subscribe(f"{SUBJECT}.pong", cb=arrived)
    await nc.flush()

    async def measure(n: int) -> list[float]:
        samples: list[float] = []
        deadline = time.monotonic() + max_seconds
        for _ in range(n):
            started = time.perf_counter()
            await nc.publish(f"{SUBJECT}.ping", payload)
            await asyncio.wait_for(answers.get(), 10)
            samples.append((time.perf_counter() - started) * 1000.0)
            if time.monotonic() > deadline:
                break
        return samples

    await aserve_blocks(measure)


async def source(url: str, size: int, seconds: float, max_count: int) -> None:
    """Publish ``size``-byte messages on ``bench.raw.rate`` as fast as the client takes them."""
    nc = await _connect(url)
    payload = bytes(size)
    sent = 0
    end = time.monotonic() + seconds
    while sent < max_count and time.monotonic() < end:
        await nc.publish(f"{SUBJECT}.rate", payload)
        sent += 1
    await nc.flush(timeout=30)
    emit("RESULT", {"sent": sent})
    await nc.close()


async def sink(url: str, warmup: float, seconds: float, timeout: float) -> None:
    """Count messages received on ``bench.raw.rate``: the rate over ``seconds`` after ``warmup`` s."""
    nc = await _connect(url)
    window = RateWindow(warmup, seconds)

    async def arrived(msg: Any) -> None:
        window.tick()

    await nc.subscribe(
        f"{SUBJECT}.rate", cb=arrived, pending_msgs_limit=4_000_000, pending_bytes_limit=1 << 30
    )
    await nc.flush()
    emit("READY")
    await asyncio.to_thread(window.done.wait, timeout)
    emit("RESULT", window.result())
    await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.raw_nats")
    parser.add_argument("role", choices=["echo", "request", "pong", "ping", "source", "sink"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    parser.add_argument("--max-count", type=int, default=10_000_000)
    args = parser.parse_args()
    watchdog(900)
    if args.role == "echo":
        job = echo(args.url, args.size)
    elif args.role == "request":
        job = request(args.url, args.size, args.max_seconds)
    elif args.role == "pong":
        job = pong(args.url)
    elif args.role == "ping":
        job = ping(args.url, args.size, args.max_seconds)
    elif args.role == "source":
        job = source(args.url, args.size, args.seconds, args.max_count)
    else:
        job = sink(args.url, args.warmup, args.seconds, timeout=args.warmup + args.seconds + 30)
    asyncio.run(job)


if __name__ == "__main__":
    main()


# -- orchestrator side ------------------------------------------------------------------------


def round_trips(url: str, size: int, reply_size: int) -> Block:
    """Blocks of request/reply round trips between two clients: ``size`` bytes out, ``reply_size`` back."""
    start("nats-echo", "bench.raw_nats", "echo", "--url", url, "--size", reply_size).expect("READY", 30)
    return worker_blocks(
        start("nats-request", "bench.raw_nats", "request", "--url", url, "--size", size, "--max-seconds", 120)
    )


def ping_pong(url: str, size: int) -> Block:
    """Blocks of publish -> subscriber -> publish -> subscriber round trips of ``size``-byte messages."""
    start("nats-pong", "bench.raw_nats", "pong", "--url", url).expect("READY", 30)
    return worker_blocks(
        start("nats-ping", "bench.raw_nats", "ping", "--url", url, "--size", size, "--max-seconds", 120)
    )


def throughput(url: str, size: int, warmup: float, seconds: float) -> dict[str, Any]:
    """Messages per second a subscriber receives from a client publishing as fast as it can."""
    sink_proc = start(
        "nats-sink", "bench.raw_nats", "sink", "--url", url, "--warmup", warmup, "--seconds", seconds
    )
    sink_proc.expect("READY", 30)
    source_proc = start(
        "nats-source", "bench.raw_nats", "source", "--url", url, "--size", size,
        "--seconds", warmup + seconds + 1.5,
    )  # fmt: skip
    result: dict[str, Any] = sink_proc.result(timeout=warmup + seconds + 60)
    source_proc.result(timeout=warmup + seconds + 60)
    for proc in (source_proc, sink_proc):
        proc.stop()
    return result
