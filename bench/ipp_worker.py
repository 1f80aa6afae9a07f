"""ipyparallel competitor: a one-engine cluster, and ``rc[0].apply_sync(lambda: 1)`` round trips.

``python -m bench.ipp_worker``: prints ``PIDS [...]`` (the controller and
engine run in their own sessions, so the orchestrator records them for its
final sweep), then serves blocks of round trips (see ``common.serve_blocks``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import time

import ipyparallel as ipp

from .common import emit, serve_blocks, watchdog


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ipp_worker")
    parser.add_argument("--max-seconds", type=float, default=60.0)
    args = parser.parse_args()
    watchdog(900)
    # Stopped by SIGTERM: leave through the finally below, which stops the cluster.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    cluster = ipp.Cluster(n=1, controller_ip="127.0.0.1", log_level=logging.WARNING)
    rc = None
    try:
        rc = cluster.start_and_connect_sync()
        rc.wait_for_engines(1, timeout=60)
        pids = [launcher.process.pid for launcher in [cluster.controller]]
        for engine_set in cluster.engines.values():
            pids += [launcher.process.pid for launcher in engine_set.launchers.values()]
        emit("PIDS", pids)
        view = rc[0]

        def measure(n: int) -> list[float]:
            samples: list[float] = []
            deadline = time.monotonic() + args.max_seconds
            for _ in range(n):
                started = time.perf_counter()
                value = view.apply_sync(lambda: 1)
                samples.append((time.perf_counter() - started) * 1000.0)
                if value != 1:
                    raise RuntimeError(f"apply_sync returned {value!r}")
                if time.monotonic() > deadline:
                    break
            return samples

        serve_blocks(measure)
    finally:
        if rc is not None:
            with contextlib.suppress(Exception):
                rc.close()
        cluster.stop_cluster_sync()


if __name__ == "__main__":
    main()
