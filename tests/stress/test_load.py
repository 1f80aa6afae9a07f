"""Scenario 3: N peer processes each make M concurrent CRDT writes; every peer ends with all of them."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.stress.common import FULL, StressHub, finish, record, scale, start_worker, stop_all
from tests.support import wait_until

#: The full-size scenario (20 peers x 1,000 writes each) should converge within this many seconds.
#: Reported with a verdict in the figures, not asserted: a loaded machine must not fail the suite.
TARGET_CONVERGED_S = 3.0


@pytest.fixture(scope="module")
def load_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StressHub]:
    """A hub of the load scenario's own: its backlog must not slow the other scenarios."""
    hub = StressHub(tmp_path_factory.mktemp("load-hub"))
    try:
        yield hub.start()
    finally:
        hub.stop()


def _run_load(hub: StressHub, folder: Path, topic: str, on_home: bool, wait: float) -> dict[str, Any]:
    """Run the scenario; a failure to run it raises RuntimeError, a wrong outcome AssertionError."""
    peers, writes = scale(5, 20), scale(200, 1000)
    total = peers * writes
    procs = [
        start_worker(
            hub,
            "load",
            dir=str(folder),
            i=i,
            writes=writes,
            total=total,
            set=f"{topic}/set",
            counter=f"{topic}/count",
            timeout=wait,
            flush_timeout=scale(60, 600),
            on_home=on_home,
        )
        for i in range(peers)
    ]
    try:
        wait_until(
            lambda: all((folder / f"ready-{i}").exists() for i in range(peers)) or _dead(procs),
            timeout=120,
            what="every load peer to follow its topics",
        )
        go = time.time()
        (folder / "go").touch()
        results = [finish(proc, wait + scale(60, 600) + 60) for proc in procs]
    except AssertionError as exc:
        raise RuntimeError(f"the load scenario did not run to the end: {exc}") from exc
    finally:
        stop_all(procs)
    figures = {
        "peers": peers,
        "writes_per_peer": writes,
        "elements": total,
        "all_written_s": round(max(r["written"] for r in results) - go, 2),
        "all_acked_s": round(max(r["acked"] for r in results) - go, 2),
        "converged_s": round(max(r["converged"] for r in results) - go, 2),
        "converged_peers": sum(r["ok"] for r in results),
        "lost_own_writes": sum(r["missing_own"] for r in results),
    }
    figures["changes_per_s"] = round(2 * total / figures["converged_s"])
    figures["peer_cpu_s"] = round(sum(r["cpu_s"] for r in results) / peers, 3)
    if FULL:
        verdict = "PASS" if figures["converged_s"] <= TARGET_CONVERGED_S else "MISS"
        figures["target"] = f"converged_s <= {TARGET_CONVERGED_S:g}: {verdict}"
    record(f"3_load_{'home_thread' if on_home else 'main_thread'}", **figures)
    print(f"[stress] target {figures.get('target', '(for the full size only: SPINDEL_STRESS=full)')}")
    bad = [{k: r[k] for k in ("size", "count", "missing_own")} for r in results if not r["ok"]]
    assert not bad, f"peers that did not reach {total} elements and count {total}: {bad}"
    assert {r["size"] for r in results} == {total}
    assert {r["count"] for r in results} == {total}
    assert len({r["digest"] for r in results}) == 1
    topics = {t["name"]: t for t in hub.get("spindel/api/topics")}
    assert topics[f"{topic}/set"]["kind"] == "orset" and topics[f"{topic}/count"]["kind"] == "pncounter"
    return figures


@pytest.mark.timeout(scale(120, 1800))
def test_writers_on_the_home_thread_converge(load_hub: StressHub, tmp_path: Path) -> None:
    """Writes made where remote changes are applied (a kernel's main thread): all N*M everywhere."""
    _run_load(load_hub, tmp_path, "load-home", on_home=True, wait=scale(60, 300))


@pytest.mark.timeout(scale(120, 1800))
def test_script_writers_converge(load_hub: StressHub, tmp_path: Path) -> None:
    """Writes from a script's main thread while others' changes arrive: all N*M everywhere."""
    _run_load(load_hub, tmp_path, "load-main", on_home=False, wait=scale(10, 60))


def _dead(procs: list[subprocess.Popen[str]]) -> bool:
    failed = [p for p in procs if p.poll() is not None]
    if failed:
        stderr = failed[0].stderr.read() if failed[0].stderr else ""
        raise AssertionError(f"a load peer exited early: {stderr[-3000:]}")
    return False
