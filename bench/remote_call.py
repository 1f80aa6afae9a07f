"""``remote_call``: one call returning 1, spindel against a raw relay, ipyparallel and jupyter_client."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from spindel_jupyter import wire
from spindel_jupyter.protocol import REP, REQ
from spindel_jupyter.remote import RemoteFunction

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


def magic_overhead(shared: Shared) -> dict[str, Any]:
    """``%%spin_remote bob\\n1`` minus a local ``1``, both execute -> idle on the kernel alice.

    Cells alternate in pairs (the order flips every pair) so that both see the
    same machine noise. ``median`` is the difference of the two medians; ``p90``
    and ``p99`` are percentiles of the pairwise differences (remote_i - local_i).
    """
    hub, _ = shared.hub(), shared.bob()
    hub.wait_gone("alice")  # the script of the same name has left
    alice = spindel_kernel(hub, "alice")
    n, warmup = shared.count(600), shared.count(50)
    local: list[float] = []
    remote: list[float] = []
    try:
        for i in range(warmup + n):
            if i % 2:
                t_remote = alice.timed("%%spin_remote bob\n1")
                t_local = alice.timed("1")
            else:
                t_local = alice.timed("1")
                t_remote = alice.timed("%%spin_remote bob\n1")
            if i >= warmup:
                local.append(t_local)
                remote.append(t_remote)
    finally:
        alice.shutdown()
    diffs = [r - c for r, c in zip(remote, local, strict=True)]
    print(
        f"bench: magic overhead: local '1' median {percentile(local, 50):.3f} ms, "
        f"'%%spin_remote bob' median {percentile(remote, 50):.3f} ms"
    )
    return {
        "median": round(percentile(remote, 50) - percentile(local, 50), 4),
        "p90": round(percentile(diffs, 90), 4),
        "p99": round(percentile(diffs, 99), 4),
        "n": len(diffs),
    }


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
