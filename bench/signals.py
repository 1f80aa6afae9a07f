"""``signal_latency``, ``signal_throughput`` and ``fanout_p99``: synced values between processes."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from spindel_jupyter.core import wire
from spindel_jupyter.core.protocol import LWW, PUB

from . import raw_relay, ycrdt
from .common import (
    CLEANUP,
    Block,
    Proc,
    Shared,
    guarded,
    interleave,
    latency,
    percentile,
    start,
    worker_blocks,
)

#: Seconds of warm-up, then of measurement, for the throughput runs.
TP_WARMUP = 1.0
TP_SECONDS = 5.0
#: Rounds the interleaved latency measures take turns in.
ROUNDS = 5
FANOUT = (1, 4, 16)


def _topic(what: str) -> str:
    """A fresh topic name: nothing from an earlier run is stored under it."""
    return f"bench/{what}-{secrets.token_hex(3)}"


def pub_frame_size() -> int:
    """Bytes of the frame the hub relays for an LWW write of an int."""
    header = {"t": PUB, "topic": _topic("lww/ping"), "kind": LWW, "from": "sig-a"}
    header["stamp"] = [1_700_000_000_000, 0, "sig-a"]
    return len(wire.pack_frame(header, wire.encode(123_456)))


def _spindel_ping_pong(shared: Shared, mode: str) -> Block:
    """Peers A (pinger) and B (answerer) on two fresh topics; blocks of A's round trips."""
    hub = shared.hub()
    topic = _topic(mode)
    args = ("--topic", topic, "--mode", mode)
    start("sig-pong", "bench.peers", "pong", *hub.peer_args(f"pong-{mode}"), *args).expect("READY", 30)
    return worker_blocks(start("sig-ping", "bench.peers", "ping", *hub.peer_args(f"ping-{mode}"), *args))


def spindel_lww(shared: Shared) -> Block:
    """A sets ``ping`` (an int, LWW), B's observer sets ``pong``, A observes it."""
    return _spindel_ping_pong(shared, "lww")


def spindel_orset(shared: Shared) -> Block:
    """The same with ORSet topics, each write an ``.update(lambda s: s.add(i))``.

    The sets grow by one element per round trip and an add costs more the larger
    the set, so the counts are fixed (sets of 100 to 600 elements; fewer with
    ``--quick``) to keep runs comparable.
    """
    return _spindel_ping_pong(shared, "orset")


def spindel_orset_large(shared: Shared) -> Block:
    """The same with ORSet topics that start with 20,000 elements: one add into a large set."""
    return _spindel_ping_pong(shared, "orset_large")


def raw_one_way(shared: Shared) -> Block:
    """Round trips through the raw relay, frames the size of spindel's relayed LWW write."""
    size = pub_frame_size()
    return raw_relay.round_trips(size, size)


def pycrdt_one_way(shared: Shared) -> Block:
    """The same ping-pong between two pycrdt-websocket clients (Y maps) of one server."""
    return ycrdt.round_trips()


#: name -> (set-up returning a Block of round trips, iterations, warm-up iterations)
LATENCY_PLAN: dict[str, tuple[Callable[[Shared], Block], int, int]] = {
    "spindel": (spindel_lww, 2000, 200),
    "spindel_crdt": (spindel_orset, 500, 100),
    "spindel_crdt_large": (spindel_orset_large, 500, 100),
    "raw_ws_relay_one_way": (raw_one_way, 5000, 500),
    "pycrdt_websocket": (pycrdt_one_way, 2000, 200),
}


def latency_run(shared: Shared) -> dict[str, Any]:
    """One-way latency as half of each ping-pong round trip; the four measures interleaved."""
    out: dict[str, Any] = {}
    plan: dict[str, tuple[Block, int, int]] = {}
    mark = CLEANUP.mark()
    for name, (setup, n, warmup) in LATENCY_PLAN.items():
        block = guarded(setup, shared)
        if isinstance(block, dict):
            out[name] = block
        else:
            plan[name] = (block, shared.count(n), shared.count(warmup))
    for name, rtt in interleave(plan, ROUNDS).items():
        if not isinstance(rtt, list):
            out[name] = {"error": rtt}
            continue
        out[name] = latency([t / 2.0 for t in rtt])
        if name.startswith("spindel") and rtt:
            chunk = max(1, len(rtt) // 10)
            first, last = percentile(rtt[:chunk], 50) / 2, percentile(rtt[-chunk:], 50) / 2
            print(
                f"bench: signal_latency {name}: one-way median of the first {chunk} samples "
                f"{first:.3f} ms, of the last {chunk} {last:.3f} ms"
            )
    CLEANUP.unwind(mark)
    return {name: out[name] for name in LATENCY_PLAN}


# -- throughput ---------------------------------------------------------------------------


def _warmup_seconds(shared: Shared) -> tuple[float, float]:
    return (0.5, 2.0) if shared.quick else (TP_WARMUP, TP_SECONDS)


def _reader_and_writer(shared: Shared, name: str, reader_role: str, writer_role: str) -> tuple[Proc, Proc]:
    """A subscriber worker (ready) and a writer worker on one fresh topic, started for a throughput run."""
    hub = shared.hub()
    warmup, seconds = _warmup_seconds(shared)
    topic = _topic(name)
    reader = start(
        f"{name}-reader", "bench.peers", reader_role, *hub.peer_args(f"{name}-reader"),
        "--topic", topic, "--warmup", warmup, "--seconds", seconds, "--max-seconds", warmup + seconds + 30,
    )  # fmt: skip
    reader.expect("READY", 30)
    writer = start(
        f"{name}-writer", "bench.peers", writer_role, *hub.peer_args(f"{name}-writer"),
        "--topic", topic, "--seconds", warmup + seconds + 1.5,
    )  # fmt: skip
    return reader, writer


def spindel_throughput(shared: Shared) -> float:
    """Updates/s observed by a subscriber while a writer ``set``s an int as fast as it can."""
    warmup, seconds = _warmup_seconds(shared)
    reader, writer = _reader_and_writer(shared, "tp", "reader", "writer")
    result = reader.result(timeout=warmup + seconds + 60)
    writer.result(timeout=warmup + seconds + 30)
    for proc in (writer, reader):
        proc.stop()
    return round(float(result["rate"]), 1)


def spindel_crdt_throughput(shared: Shared) -> float:
    """PNCounter increments/s reflected at a subscriber while a writer increments as fast as it can.

    The subscriber counts the counter's value (the writer's progress), then checks
    it ends equal to the writer's count: a lost increment fails the measure.
    """
    warmup, seconds = _warmup_seconds(shared)
    reader, writer = _reader_and_writer(shared, "tp-count", "count-reader", "count-writer")
    sent = int(writer.result(timeout=warmup + seconds + 90)["sent"])
    reader.send(f"final {sent}")
    result = reader.result(timeout=warmup + seconds + 90)
    for proc in (writer, reader):
        proc.stop()
    if result["final"] != sent or result["backwards"]:
        raise RuntimeError(
            f"the subscriber ended at {result['final']} of {sent} increments "
            f"({result['backwards']} values went backwards)"
        )
    print(f"bench: signal_throughput spindel_crdt: {sent:,} increments, all {result['final']:,} reflected")
    return round(float(result["rate"]), 1)


def raw_throughput(shared: Shared) -> float:
    """Frames/s a sink receives through the raw relay (frames of spindel's LWW write size)."""
    warmup, seconds = _warmup_seconds(shared)
    return round(float(raw_relay.throughput(pub_frame_size(), warmup, seconds)["rate"]), 1)


def pycrdt_throughput(shared: Shared) -> float:
    """Map changes/s a pycrdt-websocket client observes from another setting as fast as it can."""
    warmup, seconds = _warmup_seconds(shared)
    return round(float(ycrdt.throughput(warmup, seconds)["rate"]), 1)


def throughput_run(shared: Shared) -> dict[str, Any]:
    return {
        "spindel": guarded(spindel_throughput, shared),
        "spindel_crdt": guarded(spindel_crdt_throughput, shared),
        "raw_ws_relay": guarded(raw_throughput, shared),
        "pycrdt_websocket": guarded(pycrdt_throughput, shared),
    }


# -- fan-out ------------------------------------------------------------------------------


def fanout(shared: Shared) -> dict[str, Any]:
    """p99 one-way latency to 1, 4 and 16 subscriber processes.

    One-way latency is each subscriber's ``time.time()`` in its observer minus
    the ``time.time()`` the publisher put in the value right before ``set``
    (same machine, same clock). Values go out every 8 ms, so this measures
    latency under fan-out, not throughput.
    """
    hub = shared.hub()
    topics = {k: _topic(f"fanout{k}") for k in FANOUT}
    subscribers = []
    for j in range(max(FANOUT)):
        mine = ",".join(topics[k] for k in FANOUT if j < k)
        subscribers.append(
            start("fan-sub", "bench.peers", "fan-sub", *hub.peer_args(f"fan-sub-{j}"), "--topics", mine)
        )
    for proc in subscribers:
        proc.expect("READY", 60)
    n, warmup = shared.count(300), shared.count(20)
    publisher = start(
        "fan-pub", "bench.peers", "fan-pub", *hub.peer_args("fan-pub"),
        "--topics", ",".join(topics[k] for k in FANOUT), "--n", n, "--warmup", warmup, "--interval", 0.008,
    )  # fmt: skip
    publisher.result(timeout=120)
    samples: dict[int, list[float]] = {k: [] for k in FANOUT}
    for proc in subscribers:
        got = proc.result(timeout=30)
        for k in FANOUT:
            samples[k] += got.get(topics[k], [])
    for proc in (publisher, *subscribers):
        proc.stop()
    for k in FANOUT:
        got = latency(samples[k])
        lost = k * n - got["n"]
        print(f"bench: fanout {k:2d} subscribers: {got}" + (f", {lost} not observed" if lost else ""))
    return {"subscribers": list(FANOUT), "spindel": [round(percentile(samples[k], 99), 4) for k in FANOUT]}
