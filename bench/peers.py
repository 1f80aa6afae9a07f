"""Spindel peers as plain Python processes: ``python -m bench.peers ROLE --url --token --name ...``.

Each role connects with :func:`spindel_jupyter.connect`, prints ``READY`` once
set up, does its bounded work and prints one ``RESULT {json}`` line. Signal
observers run on the process's home thread (see ``spindel_jupyter.core.home``), so
timestamps are taken in the observer itself.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import queue
import sys
import time
from typing import Any

import spindel_jupyter
from spindel_jupyter import subscribe_signal, sync_signal
from spindel_jupyter.core.crdt import ORSet, PNCounter
from spindel_jupyter.kernel.calling import remote

from .common import RateWindow, emit, serve_blocks, stdin_lines, watchdog

# -- functions run on bob ------------------------------------------------------------------


def one():
    return 1


def get_array(size):
    return BENCH_ARRAYS[size]  # noqa: F821 - built on bob before the calls


# -- roles -----------------------------------------------------------------------------------


def role_call(args: argparse.Namespace) -> None:
    """Blocks of round trips of ``@remote("bob") one()``, in milliseconds."""
    fn = remote(args.target)(one)

    def measure(n: int) -> list[float]:
        samples: list[float] = []
        deadline = time.monotonic() + args.max_seconds
        for _ in range(n):
            started = time.perf_counter()
            value = fn()
            samples.append((time.perf_counter() - started) * 1000.0)
            if value != 1:
                raise RuntimeError(f"one() returned {value!r}")
            if time.monotonic() > deadline:
                break
        return samples

    serve_blocks(measure)


def role_echo(args: argparse.Namespace) -> None:
    """Serve ``echo``: answer every request with its body."""
    spindel_jupyter.current_peer().handle("echo", lambda message: message.body)
    emit("READY")
    _wait_for_eof()


def role_request(args: argparse.Namespace) -> None:
    """Blocks of round trips of ``request(--target, "echo", 1)``, in milliseconds."""
    peer = spindel_jupyter.current_peer()

    def measure(n: int) -> list[float]:
        samples: list[float] = []
        deadline = time.monotonic() + args.max_seconds
        for _ in range(n):
            started = time.perf_counter()
            value = peer.request(args.target, "echo", 1, timeout=10)
            samples.append((time.perf_counter() - started) * 1000.0)
            if value != 1:
                raise RuntimeError(f"echo answered {value!r}")
            if time.monotonic() > deadline:
                break
        return samples

    serve_blocks(measure)


def role_arrays(args: argparse.Namespace) -> None:
    """For each size: milliseconds of ``@remote("bob") get_array(size)``, checked by size."""
    fn = remote(args.target)(get_array)
    out: dict[str, list[float]] = {}
    for size, count, warm in zip(args.sizes, args.counts, args.warmups, strict=True):
        samples: list[float] = []
        deadline = time.monotonic() + args.max_seconds
        for i in range(warm + count):
            started = time.perf_counter()
            value = fn(size)
            elapsed = time.perf_counter() - started
            if value.nbytes != size:
                raise RuntimeError(f"got {value.nbytes} bytes instead of {size}")
            del value
            if i >= warm:
                samples.append(elapsed * 1000.0)
                if time.monotonic() > deadline:
                    break
        out[str(size)] = samples
    emit("RESULT", out)


#: Elements the ``orset_large`` sets start with (the answerer makes them; the pinger receives them).
LARGE = 20_000


def _ping_pong_signals(prefix: str, mode: str, answerer: bool = False) -> tuple[Any, Any]:
    signals = []
    for name in ("ping", "pong"):
        if mode == "orset_large" and answerer:
            start: Any = ORSet(f"{name}-{j}" for j in range(LARGE)).clear_delta()
        else:
            start = ORSet() if mode.startswith("orset") else None
        signals.append(sync_signal(f"{prefix}/{name}", start))
    return signals[0], signals[1]


def role_ping(args: argparse.Namespace) -> None:
    """Blocks of ping-pong round trips: from set (or update) to observing the answer, in ms."""
    ping, pong = _ping_pong_signals(args.topic, args.mode)
    seen: queue.SimpleQueue[tuple[float, Any]] = queue.SimpleQueue()
    pong.observe(lambda value: seen.put((time.perf_counter(), value)))
    counter = itertools.count()

    def measure(n: int) -> list[float]:
        samples: list[float] = []
        deadline = time.monotonic() + args.max_seconds
        for _ in range(n):
            i = next(counter)
            started = time.perf_counter()
            if args.mode.startswith("orset"):
                ping.update(lambda s, i=i: s.add(i))
            else:
                ping.set(i)
            while True:
                at, value = seen.get(timeout=10)
                if (i in value) if args.mode.startswith("orset") else value == i:
                    break
            samples.append((at - started) * 1000.0)
            if time.monotonic() > deadline:
                break
        return samples

    serve_blocks(measure)


def role_pong(args: argparse.Namespace) -> None:
    """Answer every ping: the observer of ``ping`` writes ``pong`` (on the home thread)."""
    ping, pong = _ping_pong_signals(args.topic, args.mode, answerer=True)
    if args.mode.startswith("orset"):
        # A adds 0, 1, 2...: the set's size (less what it started with) names the element just added.
        base = LARGE if args.mode == "orset_large" else 0
        ping.observe(lambda value: pong.update(lambda s: s.add(len(value) - 1 - base)))
    else:
        ping.observe(pong.set)
    emit("READY")
    _wait_for_eof()


def role_writer(args: argparse.Namespace) -> None:
    """Set an int as fast as possible for ``--seconds``."""
    signal = sync_signal(args.topic)
    emit("READY")
    sent = 0
    end = time.monotonic() + args.seconds
    while sent < args.max_count and time.monotonic() < end:
        signal.set(sent)
        sent += 1
    spindel_jupyter.peer.sync.flush(timeout=60)
    emit("RESULT", {"sent": sent})


def role_reader(args: argparse.Namespace) -> None:
    """Count updates delivered: the rate over ``--seconds`` after ``--warmup`` s from the first.

    The writer sets 0, 1, 2...: an observed value ``n`` means every update up to
    ``n`` has arrived (the observer sees the newest of updates that arrive
    together, as last-writer-wins allows), so the count is the writer's progress.
    With ``--check-final``, told ``final N`` (the writer's last value) after the
    window, it waits for N and reports the value it ends at.
    """
    signal = subscribe_signal(args.topic)
    window = RateWindow(args.warmup, args.seconds)
    newest = [-1]

    def delivered(value: int) -> None:
        if value > newest[0]:
            window.tick(value - newest[0])
            newest[0] = value

    signal.observe(delivered)
    commands = stdin_lines()
    emit("READY")
    window.done.wait(args.max_seconds)
    if not args.check_final:
        emit("RESULT", window.result())
        return
    final = _wait_for_final(commands, newest, args.max_seconds)
    emit("RESULT", {**window.result(), "final": signal.value, "sent": final})


def role_count_writer(args: argparse.Namespace) -> None:
    """Increment a PNCounter as fast as possible for ``--seconds``; report the count, once stored."""
    signal = sync_signal(args.topic, PNCounter())
    emit("READY")
    sent = 0
    end = time.monotonic() + args.seconds
    while sent < args.max_count and time.monotonic() < end:
        signal.update(lambda counter: counter.increment())
        sent += 1
    spindel_jupyter.peer.sync.flush(timeout=60)
    emit("RESULT", {"sent": sent})


def role_count_reader(args: argparse.Namespace) -> None:
    """Count increments reflected: the rate over ``--seconds`` after ``--warmup`` s, then the final check.

    The counter starts at 0 and only ever goes up by one: an observed value ``n``
    is ``n`` increments reflected here, so the count is the writer's progress, and
    no increment can be lost unseen. Told ``final N`` (the writer's count), it waits
    for the value to reach N and reports whether it did, exactly.
    """
    signal = subscribe_signal(args.topic)
    window = RateWindow(args.warmup, args.seconds)
    newest, backwards = [0], [0]

    def reflected(value: Any) -> None:
        count = int(value)
        if count > newest[0]:
            window.tick(count - newest[0])
            newest[0] = count
        elif count < newest[0]:
            backwards[0] += 1

    signal.observe(reflected)
    commands = stdin_lines()
    emit("READY")
    window.done.wait(args.max_seconds)
    final = _wait_for_final(commands, newest, args.max_seconds)
    emit(
        "RESULT",
        {**window.result(), "final": int(signal.value or 0), "sent": final, "backwards": backwards[0]},
    )


def _wait_for_final(commands: queue.Queue[str | None], newest: list[int], timeout: float) -> int:
    """Read ``final N`` from the orchestrator, then wait (30 s at most) for ``newest[0]`` to reach N."""
    line = commands.get(timeout=timeout) or ""
    final = int(line.split()[1]) if line.startswith("final ") else -1
    deadline = time.monotonic() + 30
    while newest[0] < final and time.monotonic() < deadline:
        time.sleep(0.01)
    return final


def role_fan_sub(args: argparse.Namespace) -> None:
    """For each topic: one-way latencies (receive time.time() minus the sender's), until it says done."""
    done: dict[str, bool] = {}
    latencies: dict[str, list[float]] = {}
    for topic in args.topics:
        done[topic] = False
        latencies[topic] = []

        def observe(value: Any, topic: str = topic) -> None:
            now = time.time()
            if value.get("done"):
                done[topic] = True
            elif not value.get("warmup"):
                latencies[topic].append((now - value["t"]) * 1000.0)

        subscribe_signal(topic).observe(observe)
    emit("READY")
    deadline = time.monotonic() + args.max_seconds
    while not all(done.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    emit("RESULT", latencies)


def role_fan_pub(args: argparse.Namespace) -> None:
    """For each topic: warm-up values, then ``--n`` values stamped with time.time(), then done."""
    for topic in args.topics:
        signal = sync_signal(topic)
        for i in range(args.warmup + args.n):
            signal.set({"i": i, "warmup": i < args.warmup, "t": time.time()})
            time.sleep(args.interval)
        signal.set({"done": True})
        time.sleep(0.5)
    emit("RESULT", {"ok": True})


def _index(value: Any) -> int:
    return int.from_bytes(value[:8], "little") if isinstance(value, bytes) else -1


def role_producer(args: argparse.Namespace) -> None:
    """Send up to ``--n`` 1 KB values (an index plus padding) at full speed, within ``--max-seconds``."""
    signal = sync_signal(args.topic)
    pad = os.urandom(1024 - 8)
    commands = stdin_lines()
    emit("READY")
    if args.wait_go and commands.get(timeout=120) != "go":
        return
    sent = 0
    started = time.monotonic()
    deadline = started + args.max_seconds
    for i in range(args.n):
        if i % 256 == 0 and time.monotonic() > deadline:
            break
        signal.set(i.to_bytes(8, "little") + pad)
        sent = i + 1
    send_seconds = time.monotonic() - started
    flushed = True
    try:
        spindel_jupyter.peer.sync.flush(timeout=args.max_seconds)
    except spindel_jupyter.SpindelError:
        flushed = False
    emit(
        "RESULT",
        {
            "sent": sent,
            "final": sent - 1,
            "send_seconds": send_seconds,
            "flushed": flushed,
            "flush_seconds": time.monotonic() - started - send_seconds,
        },
    )


def role_slow_sub(args: argparse.Namespace) -> None:
    """Observe the topic, sleeping ``--delay`` s in the observer; report whether it converged."""
    signal = sync_signal(args.topic)
    received = [0]

    def observe(_: Any) -> None:
        received[0] += 1
        time.sleep(args.delay)

    signal.observe(observe)
    commands = stdin_lines()
    emit("READY")
    line = commands.get(timeout=args.max_seconds)
    final = int(line.split()[1]) if line and line.startswith("final") else -2
    started = time.monotonic()
    while _index(signal.value) != final and time.monotonic() - started < args.wait:
        time.sleep(0.05)
    emit(
        "RESULT",
        {
            "converged": _index(signal.value) == final,
            "last": _index(signal.value),
            "final": final,
            "received": received[0],
            "wait_s": time.monotonic() - started,
        },
    )


def _wait_for_eof() -> None:
    commands = stdin_lines()
    while commands.get() not in (None, "stop"):
        pass


ROLES = {
    "call": role_call,
    "echo": role_echo,
    "request": role_request,
    "arrays": role_arrays,
    "ping": role_ping,
    "pong": role_pong,
    "writer": role_writer,
    "reader": role_reader,
    "count-writer": role_count_writer,
    "count-reader": role_count_reader,
    "fan-sub": role_fan_sub,
    "fan-pub": role_fan_pub,
    "producer": role_producer,
    "slow-sub": role_slow_sub,
}


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peers")
    parser.add_argument("role", choices=sorted(ROLES))
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--target", default="bob")
    parser.add_argument("--topic", default="bench")
    parser.add_argument("--topics", type=lambda t: t.split(","), default=[])
    parser.add_argument("--mode", choices=["lww", "orset", "orset_large"], default="lww")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--warmup", type=float, default=100)
    parser.add_argument("--sizes", type=_ints, default=[])
    parser.add_argument("--counts", type=_ints, default=[])
    parser.add_argument("--warmups", type=_ints, default=[])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--interval", type=float, default=0.01)
    parser.add_argument("--delay", type=float, default=0.001)
    parser.add_argument("--wait", type=float, default=60.0)
    parser.add_argument("--max-count", type=int, default=10_000_000)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument("--wait-go", action="store_true")
    parser.add_argument(
        "--check-final", action="store_true", help="reader: told `final N`, report the value it ends at"
    )
    args = parser.parse_args()
    if args.role not in ("reader", "count-reader"):
        args.warmup = int(args.warmup)
    watchdog(900)  # the whole run's budget; the orchestrator stops workers long before
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    spindel_jupyter.connect(args.url, name=args.name, token=args.token)
    try:
        ROLES[args.role](args)
    finally:
        sys.stdout.flush()
        spindel_jupyter.disconnect()


if __name__ == "__main__":
    main()
