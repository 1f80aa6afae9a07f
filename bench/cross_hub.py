"""``cross_hub``: calls and signals between the hubs of two Jupyter servers joined over NATS.

One nats-server with JetStream and two hubs in one mesh (``A`` and ``B``), and
beside them two bare nats-py clients of the same nats-server: what the mesh
adds to a call or a signal is compared with what one hub takes and with what
NATS itself takes, in the same run.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from spindel_jupyter.core import wire
from spindel_jupyter.core.protocol import LWW, REP, REQ

from . import raw_nats
from .common import (
    CLEANUP,
    Block,
    HubServer,
    NatsServer,
    Proc,
    Shared,
    guarded,
    interleave,
    latency,
    start,
    wait_until,
    worker_blocks,
)

T = TypeVar("T")

#: Rounds the interleaved latency measures take turns in.
ROUNDS = 5
#: Seconds of warm-up, then of measurement, for the update rates (``--quick``: fewer).
RATE_WARMUP, RATE_SECONDS = 1.0, 3.0
QUICK_WARMUP, QUICK_SECONDS = 0.3, 1.0


def call_message_sizes() -> tuple[int, int]:
    """Bytes of the NATS messages of an ``echo`` call between hubs and of its reply."""
    call = {"t": REQ, "id": 1000, "op": "echo", "to": "bob", "from": "alice@A"}
    reply = {"t": REP, "re": 1000, "to": "alice", "from": "bob@B"}
    return 1 + len(wire.pack_frame(call, wire.encode(1))), 1 + len(wire.pack_frame(reply, wire.encode(1)))


def update_message_size() -> int:
    """Bytes of the NATS message a hub publishes for an LWW write of an int (the stamped value)."""
    header = {"kind": LWW, "stamp": [1_700_000_000_000, 0, "sig-a"], "full": True}
    return 1 + len(wire.pack_frame(header, wire.encode(123_456)))


class Mesh:
    """A nats-server and two hubs that joined it as ``A`` and ``B``."""

    def __init__(self, quick: bool) -> None:
        #: Seconds of warm-up, then of measurement, of the update rates.
        self.seconds = (QUICK_WARMUP, QUICK_SECONDS) if quick else (RATE_WARMUP, RATE_SECONDS)
        self.nats = NatsServer("nats").start()
        mesh = (f"--SpindelHub.nats_url={self.nats.url}",)
        self.hubs = {
            name: HubServer(f"hub-{name}", (f"--SpindelHub.hub_name={name}", *mesh)) for name in "AB"
        }
        for hub in self.hubs.values():
            hub.launch()
        for hub in self.hubs.values():
            hub.wait_ready()
        for hub in self.hubs.values():
            wait_until(partial(self._sees_all, hub), 30, f"{hub.name} to see both hubs in the mesh", 0.1)

    def _sees_all(self, hub: HubServer) -> bool:
        return bool(hub.get("spindel/api/stats")["mesh"].get("hubs") == sorted(self.hubs))

    @property
    def a(self) -> HubServer:
        return self.hubs["A"]

    @property
    def b(self) -> HubServer:
        return self.hubs["B"]

    def wait_listed(self, name: str, hub: str, on: HubServer) -> None:
        """Wait until hub ``on`` lists peer ``name`` of hub ``hub``."""
        wait_until(
            lambda: (name, hub) in {(p["name"], p.get("hub")) for p in on.get("spindel/api/peers")},
            20, f"{name}@{hub} listed on {on.name}", 0.05,
        )  # fmt: skip


def _topic(what: str) -> str:
    """A fresh topic name: nothing from an earlier run is in the stream under it."""
    return f"bench/{what}-{secrets.token_hex(3)}"


# -- round trips ------------------------------------------------------------------------------


def _calls(mesh: Mesh, hub: str) -> Block:
    """Peer ``bob`` answers ``echo`` on ``hub``; blocks of round trips of a caller on A."""
    where, server = hub.lower(), mesh.hubs[hub]
    start(f"bob-{where}", "bench.peers", "echo", *server.peer_args("bob")).expect("READY", 30)
    mesh.wait_listed("bob", hub, mesh.a)
    caller = start(
        f"alice-{where}", "bench.peers", "request", *mesh.a.peer_args(f"alice-{where}"),
        "--target", "bob" if server is mesh.a else f"bob@{hub}", "--max-seconds", 120,
    )  # fmt: skip
    return worker_blocks(caller)


def _ping_pong(mesh: Mesh, hub: str) -> Block:
    """The ping-pong of ``signal_latency`` (LWW ints): the pinger on A, the answerer on ``hub``."""
    where, server = hub.lower(), mesh.hubs[hub]
    args = ("--topic", _topic(f"ping-pong-{where}"), "--mode", "lww")
    pong = start(f"pong-{where}", "bench.peers", "pong", *server.peer_args(f"pong-{where}"), *args)
    pong.expect("READY", 30)
    ping = start(f"ping-{where}", "bench.peers", "ping", *mesh.a.peer_args(f"ping-{where}"), *args)
    return worker_blocks(ping)


def raw_nats_request(mesh: Mesh) -> Block:
    """Request/reply between two bare nats-py clients, messages of a call's and a reply's size."""
    return raw_nats.round_trips(mesh.nats.url, *call_message_sizes())


def single_hub_call(mesh: Mesh) -> Block:
    """alice-a on A calls ``bob`` on A."""
    return _calls(mesh, "A")


def cross_hub_call(mesh: Mesh) -> Block:
    """alice-b on A calls ``bob@B``."""
    return _calls(mesh, "B")


def raw_nats_one_way(mesh: Mesh) -> Block:
    """Ping-pong between two bare nats-py clients (publish, subscribe), messages of an update's size."""
    return raw_nats.ping_pong(mesh.nats.url, update_message_size())


def single_hub_signal(mesh: Mesh) -> Block:
    """The pinger and the answerer both on A."""
    return _ping_pong(mesh, "A")


def cross_hub_signal(mesh: Mesh) -> Block:
    """The pinger on A, the answerer on B."""
    return _ping_pong(mesh, "B")


#: section -> name -> (set-up returning a Block, iterations, warm-up iterations)
LATENCY_PLAN: dict[str, dict[str, tuple[Callable[[Mesh], Block], int, int]]] = {
    "call": {
        "raw_nats_request": (raw_nats_request, 2000, 200),
        "single_hub": (single_hub_call, 1500, 150),
        "cross_hub": (cross_hub_call, 1500, 150),
    },
    "signal": {
        "raw_nats_one_way": (raw_nats_one_way, 2000, 200),
        "single_hub": (single_hub_signal, 1500, 150),
        "cross_hub": (cross_hub_signal, 1500, 150),
    },
}


def _on(mesh: Mesh, measure: Callable[[Mesh], T]) -> Callable[[Shared], T]:
    """``measure`` as :func:`guarded` takes it (a function of ``Shared``, under its own name)."""

    def bound(_: Shared) -> T:
        return measure(mesh)

    bound.__name__ = measure.__name__
    return bound


def _latencies(mesh: Mesh, shared: Shared) -> dict[str, dict[str, Any]]:
    """The six latency measures, interleaved; a signal's is half of its ping-pong round trip."""
    out: dict[str, dict[str, Any]] = {section: {} for section in LATENCY_PLAN}
    plan: dict[str, tuple[Block, int, int]] = {}
    mark = CLEANUP.mark()
    try:
        for section, measures in LATENCY_PLAN.items():
            for name, (setup, n, warmup) in measures.items():
                block = guarded(_on(mesh, setup), shared)
                if isinstance(block, dict):  # the set-up failed
                    out[section][name] = block
                else:
                    plan[f"{section}.{name}"] = (block, shared.count(n), shared.count(warmup))
        for key, samples in interleave(plan, ROUNDS).items():
            section, name = key.split(".")
            if not isinstance(samples, list):
                out[section][name] = {"error": samples}
            else:
                out[section][name] = latency([t / 2.0 for t in samples] if section == "signal" else samples)
    finally:
        CLEANUP.unwind(mark)
    return {section: {name: out[section][name] for name in LATENCY_PLAN[section]} for section in out}


# -- update rates -----------------------------------------------------------------------------


def _rate(
    mesh: Mesh, name: str, reader_on: HubServer, roles: tuple[str, str], last: Callable[[int], int]
) -> float:
    """Updates/s a reader on ``reader_on`` sees of a writer on A going as fast as it can.

    The reader must end at the writer's exact last value (``last(sent)``), or the measure fails.
    """
    warmup, seconds = mesh.seconds
    topic = _topic(name)
    reader_role, writer_role = roles
    reader = start(
        f"{name}-reader", "bench.peers", reader_role, *reader_on.peer_args(f"{name}-reader"),
        "--topic", topic, "--warmup", warmup, "--seconds", seconds, "--max-seconds", warmup + seconds + 30,
        "--check-final",
    )  # fmt: skip
    reader.expect("READY", 30)
    writer: Proc = start(
        f"{name}-writer", "bench.peers", writer_role, *mesh.a.peer_args(f"{name}-writer"),
        "--topic", topic, "--seconds", warmup + seconds + 1.0,
    )  # fmt: skip
    try:
        sent = int(writer.result(timeout=warmup + seconds + 90)["sent"])
        reader.send(f"final {last(sent)}")
        result = reader.result(timeout=warmup + seconds + 90)
    finally:
        for proc in (writer, reader):
            proc.stop()
    if result["final"] != last(sent) or result.get("backwards"):
        raise RuntimeError(
            f"the reader ended at {result['final']!r}, the writer at {last(sent)} "
            f"({result.get('backwards', 0)} values went backwards)"
        )
    print(f"bench: cross_hub {name}: {sent:,} updates, the reader ended at the last one")
    return round(float(result["rate"]), 1)


def raw_nats_publish(mesh: Mesh) -> float:
    """Messages/s a bare subscriber receives of a bare publisher, messages of an update's size."""
    warmup, seconds = mesh.seconds
    return round(float(raw_nats.throughput(mesh.nats.url, update_message_size(), warmup, seconds)["rate"]), 1)


_SETS, _INCREMENTS = ("reader", "writer"), ("count-reader", "count-writer")


def single_hub_set(mesh: Mesh) -> float:
    """A writer on A sets 0, 1, 2...; a reader on A."""
    return _rate(mesh, "set-a", mesh.a, _SETS, lambda sent: sent - 1)


def cross_hub_set(mesh: Mesh) -> float:
    """A writer on A sets 0, 1, 2...; a reader on B."""
    return _rate(mesh, "set-b", mesh.b, _SETS, lambda sent: sent - 1)


def cross_hub_increment(mesh: Mesh) -> float:
    """A writer on A increments a PNCounter; a reader on B."""
    return _rate(mesh, "count-b", mesh.b, _INCREMENTS, lambda sent: sent)


RATES: dict[str, Callable[[Mesh], float]] = {
    "raw_nats_publish": raw_nats_publish,
    "single_hub_set": single_hub_set,
    "cross_hub_set": cross_hub_set,
    "cross_hub_increment": cross_hub_increment,
}


def run(shared: Shared) -> dict[str, Any]:
    """The mesh's latencies (interleaved with bare NATS and one hub), then its update rates."""
    mesh = Mesh(shared.quick)
    out: dict[str, Any] = dict(_latencies(mesh, shared))
    out["updates"] = {name: guarded(_on(mesh, measure), shared) for name, measure in RATES.items()}
    call, reply = call_message_sizes()
    out["message_bytes"] = {"call": call, "reply": reply, "update": update_message_size()}
    return out
