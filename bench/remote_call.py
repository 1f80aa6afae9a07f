"""``remote_call``: one call returning 1, spindel against a raw relay, ipyparallel and jupyter_client."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from spindel_jupyter.core import wire
from spindel_jupyter.core.protocol import REP, REQ
from spindel_jupyter.kernel.calling import RemoteFunction

from . import raw_relay
from .common import (
    CLEANUP,
    Block,
    Kernel,
    Shared,
    base_env,
    guarded,
    interleave,
    latency,
    percentile,
    spindel_kernel,
    start,
    worker_blocks,
)
from .peers import one

#: Rounds the interleaved measures take turns in.
ROUNDS = 5


def call_frame_sizes() -> tuple[int, int]:
    """Bytes of spindel's relayed call frame for ``one()`` and of its reply."""
    body = RemoteFunction(one, "bob", None, None)._body((), {})
    body["context"] = None
    header = {"t": REQ, "id": 1000, "op": "call", "to": "bob", "from": "alice"}
    call = wire.pack_frame(header, wire.encode(body))
    reply = wire.pack_frame({"t": REP, "re": 1000, "to": "alice", "from": "bob"}, wire.encode({"value": 1}))
    return len(call), len(reply)


def spindel_api(shared: Shared) -> Block:
    """``@remote("bob") one()`` from a plain Python process (peer alice) to the bob kernel."""
    hub, _ = shared.hub(), shared.bob()
    return worker_blocks(start("alice-call", "bench.peers", "call", *hub.peer_args("alice")))


def raw_ws_relay(shared: Shared) -> Block:
    """Round trips through the bare tornado relay, frames of spindel's call and reply sizes."""
    return raw_relay.round_trips(*call_frame_sizes())


def ipyparallel_apply_sync(shared: Shared) -> Block:
    """``rc[0].apply_sync(lambda: 1)`` on a one-engine cluster (the client in its own process)."""
    return worker_blocks(start("ipyparallel", "bench.ipp_worker", grace=30))


def jupyter_client_execute(shared: Shared) -> Block:
    """``execute("1")`` -> reply and idle, on a plain local kernel."""
    kernel = Kernel("plain", base_env())
    return lambda n: [kernel.timed("1") for _ in range(n)]


#: name -> (set-up returning a Block, iterations, warm-up iterations)
PLAN: dict[str, tuple[Callable[[Shared], Block], int, int]] = {
    "spindel_api": (spindel_api, 2000, 200),
    "raw_ws_relay": (raw_ws_relay, 5000, 500),
    "ipyparallel_apply_sync": (ipyparallel_apply_sync, 1000, 100),
    "jupyter_client_execute": (jupyter_client_execute, 1000, 100),
}


def _overhead(cells: list[float], local: list[float]) -> dict[str, Any]:
    """Median = difference of the medians; p90/p99 = percentiles of the pairwise differences."""
    diffs = [cell - here for cell, here in zip(cells, local, strict=True)]
    return {**latency(diffs), "median": round(percentile(cells, 50) - percentile(local, 50), 4)}


def magic_overhead(shared: Shared) -> dict[str, Any]:
    """``%%spin_remote bob\\n1`` minus a local ``1``, both execute -> idle on the kernel alice.

    A third cell, a round trip through the bare relay from inside the cell and
    then ``1``, is that measure's floor on this machine (``shared.floors``).
    The three cells take turns in a rotating order so that all see the same
    machine noise.
    """
    hub, _ = shared.hub(), shared.bob()
    hub.wait_gone("alice")  # the script of the same name has left
    _, url = raw_relay.start_hub()
    size, reply_size = call_frame_sizes()
    start("raw-echo", "bench.raw_relay", "echo", "--url", url, "--size", reply_size).expect("READY", 30)
    alice = spindel_kernel(hub, "alice")
    alice.ok("from bench.raw_relay import BlockingClient")
    alice.ok(f"_raw = BlockingClient({url!r}, {size}, {reply_size})")
    cells = {"local": "1", "spindel": "%%spin_remote bob\n1", "raw": "_raw.round_trip()\n1"}
    n, warmup = shared.count(600), shared.count(50)
    samples: dict[str, list[float]] = {name: [] for name in cells}
    names = list(cells)
    try:
        for i in range(warmup + n):
            turn = names[i % 3 :] + names[: i % 3]
            times = {name: alice.timed(cells[name]) for name in turn}
            if i >= warmup:
                for name in names:
                    samples[name].append(times[name])
    finally:
        alice.shutdown()
    print(
        "bench: magic overhead: "
        + ", ".join(f"{cells[k]!r} median {percentile(v, 50):.3f} ms" for k, v in samples.items())
    )
    shared.floors["raw_ws_relay_in_cell_overhead"] = _overhead(samples["raw"], samples["local"])
    return _overhead(samples["spindel"], samples["local"])


def run(shared: Shared) -> dict[str, Any]:
    """The four call measures interleaved in rounds, then the magic's overhead on its own."""
    out: dict[str, Any] = {}
    plan: dict[str, tuple[Block, int, int]] = {}
    mark = CLEANUP.mark()
    for name, (setup, n, warmup) in PLAN.items():
        block = guarded(setup, shared)
        if isinstance(block, dict):  # the set-up failed
            out[name] = block
        else:
            plan[name] = (block, shared.count(n), shared.count(warmup))
    for name, samples in interleave(plan, ROUNDS).items():
        out[name] = latency(samples) if isinstance(samples, list) else {"error": samples}
    CLEANUP.unwind(mark)
    out["spindel_magic_overhead"] = guarded(magic_overhead, shared)
    order = ["spindel_api", "spindel_magic_overhead", *list(PLAN)[1:]]
    return {name: out[name] for name in order}
