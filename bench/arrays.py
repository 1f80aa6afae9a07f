"""``array_transfer``: MB/s of numpy arrays from a remote call, and of the same bytes over bare WebSocket."""

from __future__ import annotations

from typing import Any

from .common import Shared, free_port, guarded, percentile, start

#: Array sizes in bytes (decimal: 64 MB stays under the hub's default 64 MiB frame limit).
SIZES = (1_000, 1_000_000, 64_000_000)
COUNTS = (300, 60, 8)
WARMUPS = (30, 5, 2)


def _plan(shared: Shared) -> tuple[list[int], list[int]]:
    if shared.quick:
        return [30, 10, 3], [5, 2, 1]
    return list(COUNTS), list(WARMUPS)


def _mb_per_s(samples: dict[str, list[float]]) -> list[float]:
    """Size over median time, per size, in MB/s (10^6 bytes)."""
    return [round(size / 1e6 / (percentile(samples[str(size)], 50) / 1000.0), 2) for size in SIZES]


def spindel(shared: Shared) -> list[float]:
    """``@remote("bob") get_array(size)`` returning a pre-built uint8 array, from a plain process."""
    hub, bob = shared.hub(), shared.bob()
    bob.ok(f"import numpy as np\nBENCH_ARRAYS = {{s: np.ones(s, dtype=np.uint8) for s in {list(SIZES)}}}")
    counts, warmups = _plan(shared)
    proc = start(
        "array-call", "bench.peers", "arrays", *hub.peer_args("carol"),
        "--sizes", ",".join(map(str, SIZES)), "--counts", ",".join(map(str, counts)),
        "--warmups", ",".join(map(str, warmups)), "--max-seconds", 60,
    )  # fmt: skip
    samples = proc.result(timeout=400)
    proc.stop()
    bob.ok("del BENCH_ARRAYS")
    _report("spindel", samples)
    return _mb_per_s(samples)


def raw_ws(shared: Shared) -> list[float]:
    """A tornado server sends pre-built bytes of each size to a tornado client that asked."""
    port = free_port()
    sizes = ",".join(map(str, SIZES))
    server = start("raw-array-server", "bench.raw_array", "server", "--port", port, "--sizes", sizes)
    try:
        server.expect("READY", 60)
        counts, warmups = _plan(shared)
        client = start(
            "raw-array-client", "bench.raw_array", "client", "--url", f"ws://127.0.0.1:{port}/ws",
            "--sizes", sizes, "--n", ",".join(map(str, counts)), "--warmup", ",".join(map(str, warmups)),
        )  # fmt: skip
        samples = client.result(timeout=300)
        client.stop()
    finally:
        server.stop()
    _report("raw_ws", samples)
    return _mb_per_s(samples)


def _report(name: str, samples: dict[str, list[float]]) -> None:
    for size in SIZES:
        got = samples[str(size)]
        print(
            f"bench: array {name} {size:>11,d} B: median {percentile(got, 50):.3f} ms, "
            f"p90 {percentile(got, 90):.3f} ms, n {len(got)}"
        )


def run(shared: Shared) -> dict[str, Any]:
    return {"sizes": list(SIZES), "spindel": guarded(spindel, shared), "raw_ws": guarded(raw_ws, shared)}
