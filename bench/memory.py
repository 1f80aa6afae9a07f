"""``hub_memory``: the hub's RSS while a producer floods a topic that a slow subscriber follows."""

from __future__ import annotations

import threading
import time
from typing import Any

import psutil

from .common import HubServer, Shared, guarded, start

#: Updates the producer tries to send, and the seconds it may take.
UPDATES = 200_000
SEND_SECONDS = 60.0
#: How long the subscriber may take to end with the final value once the producer is done.
CONVERGE_SECONDS = 60.0
#: The subscriber handles updates this many times slower than the producer sends them.
SLOWDOWN = 10.0

MB = 1024 * 1024


class RssSampler:
    """Samples a process's resident set size every ``interval`` seconds on a thread."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)


def producer_rate(hub: HubServer, n: int) -> float:
    """Updates/s reaching the hub (until it acked them all) while a subscriber keeps up.

    That end-to-end pace, not the rate of ``set`` calls (which only queue frames
    in the producer), is what the slow subscriber is made ten times slower than.
    """
    topic = f"bench/calibrate-{int(time.time())}"
    subscriber = start(
        "mem-calibrate-sub", "bench.peers", "slow-sub", *hub.peer_args("mem-calibrate-sub"),
        "--topic", topic, "--delay", 0, "--wait", 30, "--max-seconds", 60,
    )  # fmt: skip
    subscriber.expect("READY", 30)
    producer = start(
        "mem-calibrate", "bench.peers", "producer", *hub.peer_args("mem-calibrate"),
        "--topic", topic, "--n", n, "--max-seconds", 10,
    )  # fmt: skip
    result = producer.result(timeout=90)
    subscriber.send(f"final {result['final']}")
    subscriber.result(timeout=60)
    for proc in (producer, subscriber):
        proc.stop()
    return float(result["sent"]) / max(1e-6, float(result["send_seconds"]) + float(result["flush_seconds"]))


def hub_memory(shared: Shared) -> dict[str, Any]:
    """A fresh hub; a producer sends up to 200,000 1 KB LWW values at full speed (for at most 60 s)
    while a subscriber sleeps in its observer for 10x the producer's per-update time (as measured
    with a subscriber that keeps up); the hub's peak RSS growth over its baseline (MiB), and whether
    the subscriber ends with the final value within 60 s of the producer finishing."""
    hub = HubServer("hub-memory").start()
    try:
        return _flood(shared, hub)
    finally:
        assert hub.proc is not None
        hub.proc.stop()


def _flood(shared: Shared, hub: HubServer) -> dict[str, Any]:
    updates = shared.count(UPDATES)
    rate = producer_rate(hub, shared.count(20_000))
    delay = SLOWDOWN / rate
    topic = f"bench/memory-{int(time.time())}"
    wait = 20.0 if shared.quick else CONVERGE_SECONDS
    subscriber = start(
        "mem-sub", "bench.peers", "slow-sub", *hub.peer_args("mem-sub"),
        "--topic", topic, "--delay", f"{delay:.6f}", "--wait", wait, "--max-seconds", 300,
    )  # fmt: skip
    subscriber.expect("READY", 30)
    producer = start(
        "mem-producer", "bench.peers", "producer", *hub.peer_args("mem-producer"),
        "--topic", topic, "--n", updates, "--max-seconds", SEND_SECONDS, "--wait-go",
    )  # fmt: skip
    producer.expect("READY", 30)
    time.sleep(1.0)  # let the hub settle after the connections
    baseline = psutil.Process(hub.pid).memory_info().rss
    with RssSampler(hub.pid) as rss, RssSampler(subscriber.pid, 0.2) as sub_rss:
        producer.send("go")
        sent = producer.result(timeout=2 * SEND_SECONDS + 30)
        subscriber.send(f"final {sent['final']}")
        seen = subscriber.result(timeout=wait + 30)
    for proc in (producer, subscriber):
        proc.stop()
    growth = (rss.peak - baseline) / MB
    print(
        f"bench: hub_memory: producer (calibration) {rate:,.0f} updates/s -> subscriber sleeps "
        f"{delay * 1000:.3f} ms per update; sent {sent['sent']:,} in {sent['send_seconds']:.1f} s "
        f"(hub acked all: {sent['flushed']}, {sent['flush_seconds']:.1f} s later); "
        f"subscriber observed {seen['received']:,}, ended at "
        f"{seen['last']:,} of {seen['final']:,} after waiting {seen['wait_s']:.1f} s; hub RSS baseline "
        f"{baseline / MB:.0f} MiB, peak {rss.peak / MB:.0f} MiB; "
        f"subscriber peak RSS {sub_rss.peak / MB:.0f} MiB"
    )
    return {
        "peak_rss_growth_mb": round(growth, 1),
        "converged": bool(seen["converged"]),
        "sent": sent["sent"],
    }


def run(shared: Shared) -> dict[str, Any]:
    return guarded(hub_memory, shared)
