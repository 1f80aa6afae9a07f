"""Fork cost against notebook size: a fork is a branch pointer in the hub, so it must not grow."""

from __future__ import annotations

import json
import statistics
import time
import urllib.request
from typing import Any

from .common import HubServer, Shared

SIZES = [10, 1000, 5000]


def _post(hub: HubServer, path: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{hub.port}/{path}", data=json.dumps(body).encode(), method="POST"
    )
    request.add_header("Authorization", f"token {hub.token}")
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read().decode() or "null")


def _notebook(cells: int) -> dict[str, Any]:
    return {
        "cells": [
            {
                "id": f"c{i}",
                "cell_type": "code",
                "source": f"x{i} = {i}",
                "metadata": {},
                "outputs": [],
                "execution_count": None,
            }
            for i in range(cells)
        ],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def _idle(hub: HubServer) -> None:
    """Wait until the server answers a trivial request quickly: the file writing is over."""
    for _ in range(200):
        started = time.perf_counter()
        hub.get("api/status")
        if time.perf_counter() - started < 0.005:
            return


def run(shared: Shared) -> dict[str, Any]:
    """``{"cells": [...], "ms": [...], "nodes_added": [...]}``: median fork time and store growth per fork."""
    hub = shared.hub()
    repeats = shared.count(50)
    ms: list[float] = []
    added: list[float] = []
    for cells in SIZES:
        name = f"bench-fork-{cells}"
        (hub.root / "notebooks" / f"{name}.ipynb").write_text(json.dumps(_notebook(cells)))
        _post(hub, "spindel/api/workspaces", {"name": name, "path": f"{name}.ipynb"})
        before = hub.get("spindel/api/stats")["store"]["nodes"]
        times = []
        for i in range(repeats):
            started = time.perf_counter()
            _post(
                hub,
                f"spindel/api/workspaces/{name}/fork",
                {"new": f"{name}-f{i}", "wait": False},
            )
            times.append((time.perf_counter() - started) * 1000)
            # The fork's notebook file is written after the answer; let it land before the next fork.
            copy = hub.root / "notebooks" / "forks" / f"{name}-f{i}.ipynb"
            deadline = time.monotonic() + 30
            while not copy.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            _idle(hub)
        nodes = hub.get("spindel/api/stats")["store"]["nodes"] - before
        ms.append(round(statistics.median(times), 3))
        added.append(nodes / repeats)
        print(
            f"bench: fork of {cells} cells: median {ms[-1]} ms, {added[-1]} nodes added per fork", flush=True
        )
    return {"cells": SIZES, "ms": ms, "nodes_added": added}
