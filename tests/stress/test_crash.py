"""Scenarios 4 and 6: kill -9 the hub during writes and during publishes; nothing acknowledged is lost."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spindel_jupyter.core import wire
from tests.stress.common import StressHub, finish, record, scale, start_worker, stop_all
from tests.support import wait_until


@pytest.fixture(scope="module")
def crash_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StressHub]:
    hub = StressHub(tmp_path_factory.mktemp("crash-hub"))
    try:
        yield hub.start()
    finally:
        hub.stop()


@pytest.mark.timeout(scale(120, 600))
def test_hub_killed_during_writes_loses_nothing(crash_hub: StressHub, tmp_path: Path) -> None:
    writers = scale(3, 6)
    topic = "crash/set"
    procs = [
        start_worker(
            crash_hub,
            "writer",
            dir=str(tmp_path),
            i=i,
            set=topic,
            interval=0.01,
            flush_every=10,
            max_seconds=90,
        )
        for i in range(writers)
    ]
    try:
        wait_until(
            lambda: all((tmp_path / f"ready-{i}").exists() for i in range(writers)),
            timeout=60,
            what="writers",
        )
        time.sleep(scale(1.5, 4))
        killed = time.time()
        crash_hub.kill()
        time.sleep(1.0)  # down: the writers keep writing
        crash_hub.start()
        restarted = time.time()
        wait_until(
            lambda: len(crash_hub.peer_names()) == writers,
            timeout=30,
            what="the writers to reconnect by themselves",
        )
        reconnected = time.time()
        time.sleep(scale(1.0, 3))
        (tmp_path / "stop").touch()
        wait_until(
            lambda: all((tmp_path / f"written-{i}").exists() for i in range(writers)), timeout=60, what="stop"
        )
        total = sum(int((tmp_path / f"written-{i}").read_text()) for i in range(writers))
        (tmp_path / "total.tmp").write_text(str(total))
        (tmp_path / "total.tmp").replace(tmp_path / "total")
        results = [finish(proc, 120) for proc in procs]
        reader = finish(start_worker(crash_hub, "reader", set=topic, name="late-reader"), 60)
    finally:
        stop_all(procs)

    def at(result: dict[str, Any], moment: float, key: str = "timeline") -> int:
        return max([n for t, n in result[key] if t <= moment], default=0)

    acked_before = sum(at(r, killed, "acks") for r in results)
    while_down = sum(at(r, restarted) - at(r, killed) for r in results)
    record(
        "4_hub_crash",
        writers=writers,
        writes=total,
        acked_before_kill=acked_before,
        written_while_down=while_down,
        restart_s=round(restarted - killed, 2),
        reconnected_s=round(reconnected - restarted, 2),
    )
    assert acked_before > 0 and while_down > 0
    everything = {f"w{i}-{j}" for i, r in enumerate(results) for j in range(r["written"])}
    assert len(everything) == total
    assert set(reader["items"]) == everything  # the hub holds every write, acknowledged or made while down
    for r in results:
        assert r["settled"] and r["converged"] and r["missing_own"] == 0, {
            k: r[k] for k in ("settled", "size")
        }
        assert r["size"] == total and r["digest"] == reader["digest"]  # and so does every peer


def _write_notebook(path: Path, k: int) -> None:
    cells = [
        {
            "cell_type": "code",
            "id": f"c{j}",
            "metadata": {},
            "outputs": [],
            "execution_count": None,
            "source": f"x{j} = {k} * {j}  # revision {k}\n" + "# padding\n" * j,
        }
        for j in range(12)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))


def _text(source: str | list[str]) -> str:
    return source if isinstance(source, str) else "".join(source)


def _verified(nodes: Path, key: str) -> Any:
    data = (nodes / key[:2] / key[2:]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == key, f"node {key} does not match its hash"
    return wire.decode(data)


def _ancestors(nodes: Path, head: str) -> set[str]:
    seen: set[str] = set()
    stack = [head]
    while stack:
        key = stack.pop()
        if key in seen:
            continue
        seen.add(key)
        commit = _verified(nodes, key)
        for cell_key, _ in commit["cells"]:
            _verified(nodes, cell_key)
        stack.extend(commit["parents"])
    return seen


@pytest.mark.timeout(scale(120, 600))
def test_hub_killed_during_publishes_serves_only_whole_commits(crash_hub: StressHub) -> None:
    hub = crash_hub
    names = [f"ws{i}" for i in range(3)]
    acked: dict[str, str] = {}
    published = 0
    cycles = scale(1, 3)
    leftovers = 0
    for cycle in range(cycles):
        stop = threading.Event()

        def publish_loop(cycle: int = cycle, stop: threading.Event = stop) -> None:
            nonlocal published
            k = 0
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline:
                name = names[k % len(names)]
                path = f"store/{name}.ipynb"
                _write_notebook(hub.notebooks / path, 1000 * cycle + k)
                try:
                    descriptor = hub.request("POST", "spindel/api/workspaces", {"name": name, "path": path})
                except (urllib.error.URLError, ConnectionError, OSError):
                    return  # the hub is gone
                acked[name] = descriptor["head"]
                published += 1
                k += 1

        thread = threading.Thread(target=publish_loop, daemon=True)
        thread.start()
        time.sleep(1.0 + 0.37 * cycle)
        hub.kill()
        stop.set()
        thread.join(30)
        hub.start()
        nodes = hub.root / "store" / "nodes"
        leftovers = len(list(nodes.glob("??/*.tmp")))
        for path in nodes.glob("??/*"):  # every node in the store is whole
            if not path.name.endswith(".tmp"):
                assert hashlib.sha256(path.read_bytes()).hexdigest() == path.parent.name + path.name
        for name in names:
            if name not in acked:
                continue
            head = hub.get(f"spindel/api/workspaces/{name}")["head"]
            history = _ancestors(nodes, head)
            assert acked[name] in history  # the last acknowledged publish survived (or a later one)
            copy = f"following/{name}-{cycle}.ipynb"
            hub.request("POST", f"spindel/api/workspaces/{name}/follow", {"path": copy})
            followed = json.loads((hub.notebooks / copy).read_text())
            head_cells = [_verified(nodes, key)["source"] for key, _ in _verified(nodes, head)["cells"]]
            assert [_text(c["source"]) for c in followed["cells"]] == [_text(s) for s in head_cells]
    assert acked, "no publish was acknowledged before the kill"
    record("6_store_crash", kill_cycles=cycles, publishes_acked=published, leftover_tmp_files=leftovers)
