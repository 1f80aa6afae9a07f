"""``cross_hub_follow``: a save on one Jupyter server, and the copy that follows it on another.

One nats-server with JetStream and two hubs in one mesh (``A`` and ``B``), as
in ``cross_hub``. Notebooks are saved on A through the contents API, which
republishes their workspaces; a workspace followed on B has B fetch the nodes
it lacks from A and rewrite ``following/NAME.ipynb`` in B's root, one followed
on A itself has A rewrite its own copy. Beside them, the same on a hub that
is in no mesh (the suite's shared hub). What is timed is the save -> the copy
on disk holding the edit; what is counted is what B fetched for it.
"""

from __future__ import annotations

import json
import os
import statistics
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import raw_nats
from .common import CLEANUP, Block, HubServer, Shared, interleave, latency, wait_until
from .cross_hub import Mesh, call_message_sizes

#: Cells of the notebook whose saves are timed, and the saves (and warm-up saves) of each measure.
LATENCY_CELLS = 50
SAVES, WARMUP = 100, 10
#: Rounds the latency measures take turns in.
ROUNDS = 5
#: Beside them, what a node fetch is made of: round trips of a bare NATS request/reply, and durable
#: writes of a node of about the size of the 50-cell notebook's commit, as a hub stores what it fetched.
RAW_REQUESTS, RAW_WARMUP = 1000, 100
NODE_BYTES = 4096
#: Notebook sizes (cells) of the bytes-moved measure, and one-cell edits saved at each.
SIZES = [10, 100, 1000, 5000]
EDITS = 5  # 3 at the largest size (each takes seconds), and with --quick
#: Seconds a copy may take to show an edit before the measure fails.
PATIENCE = 60.0

_TEMPLATES = [
    'df_{i} = pd.read_csv("data/part-{i:05d}.csv", parse_dates=["when"])\n'
    "df_{i} = df_{i}[df_{i}.value > {i}]",
    'def step_{i}(x, scale={i}):\n    """Scale and shift x (step {i})."""\n    return x * scale + {i}',
    "total_{i} = sum(v for v in range({i}) if v % 7 == 3)  # running total {i}",
    'plt.plot(df_{i}["when"], df_{i}["value"], label="series {i}")\n'
    'plt.legend(); plt.title("figure {i}")\nplt.savefig("out/fig-{i:05d}.png")',
]


def _source(tag: str, i: int) -> str:
    """Cell ``i``'s source: 80 to 230 bytes of plausible code, different in every cell of every
    notebook (so each notebook's cells are nodes of their own), ``cell I:`` findable in the file."""
    return f"# {tag} cell {i}:\n" + _TEMPLATES[i % len(_TEMPLATES)].format(i=i)


def _notebook(sources: list[str]) -> dict[str, Any]:
    return {
        "cells": [
            {
                "id": f"c{i}",
                "cell_type": "code",
                "source": source,
                "metadata": {},
                "outputs": [],
                "execution_count": None,
            }
            for i, source in enumerate(sources)
        ],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def _request(hub: HubServer, method: str, path: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{hub.port}/{path}", data=json.dumps(body).encode(), method=method
    )
    request.add_header("Authorization", f"token {hub.token}")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=PATIENCE) as response:
        return json.loads(response.read().decode() or "null")


def _save(hub: HubServer, path: str, sources: list[str]) -> None:
    """Save a notebook through the contents API, as the lab does (which republishes it)."""
    body = {"type": "notebook", "format": "json", "content": _notebook(sources)}
    _request(hub, "PUT", f"api/contents/{path}", body)


def _stats(hub: HubServer) -> dict[str, int]:
    stats = hub.get("spindel/api/stats")
    return {**stats.get("sync", {}), **{f"store_{k}": v for k, v in stats["store"].items()}}


def _listed(hub: HubServer, name: str) -> bool:
    return any(w["name"] == name for w in hub.get("spindel/api/workspaces"))


def _version(path: Path) -> tuple[int, int, int] | None:
    """What changes when the hub replaces the file (it renames a new one over it)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class Followed:
    """A notebook saved on ``publisher``, published as workspace ``name``, followed on ``follower``."""

    def __init__(self, name: str, cells: int, publisher: HubServer, follower: HubServer) -> None:
        self.name = name
        self.publisher = publisher
        self.follower = follower
        self.path = f"{name}.ipynb"
        self.sources = [_source(name, i) for i in range(cells)]
        self.edits = 0
        self.copy = follower.root / "notebooks" / "following" / self.path
        #: Milliseconds of each save's request (the contents API's answer), beside the copy's times.
        self.save_ms: list[float] = []
        _save(publisher, self.path, self.sources)
        #: The notebook file as the Jupyter server wrote it.
        self.notebook_bytes = (publisher.root / "notebooks" / self.path).stat().st_size

    def publish(self) -> float:
        """Publish the file on the publisher; milliseconds of the request."""
        started = time.perf_counter()
        _request(self.publisher, "POST", "spindel/api/workspaces", {"name": self.name, "path": self.path})
        return (time.perf_counter() - started) * 1000.0

    def follow(self) -> float:
        """Follow it on the follower (once the follower lists it); milliseconds of the request."""
        wait_until(
            lambda: _listed(self.follower, self.name), 30, f"{self.name} listed on {self.follower.name}"
        )
        started = time.perf_counter()
        answer = _request(self.follower, "POST", f"spindel/api/workspaces/{self.name}/follow", {})
        elapsed = (time.perf_counter() - started) * 1000.0
        if answer.get("copy") != f"following/{self.path}" or not self.copy.exists():
            raise RuntimeError(f"following {self.name} on {self.follower.name} gave {answer}")
        return elapsed

    def head(self) -> str:
        return str(self.follower.get(f"spindel/api/workspaces/{self.name}")["head"])

    def edit(self) -> float:
        """Edit one cell, save on the publisher; milliseconds until the follower's copy on disk has it."""
        self.edits += 1
        cell = (self.edits * 7) % len(self.sources)
        marker = f"edit:{self.edits}:"
        self.sources[cell] = f"{_source(self.name, cell)}  # {marker}"
        seen = _version(self.copy)
        started = time.perf_counter()
        _save(self.publisher, self.path, self.sources)
        self.save_ms.append((time.perf_counter() - started) * 1000.0)
        return self._wait_copy(marker, seen, started)

    def _wait_copy(self, marker: str, seen: tuple[int, int, int] | None, started: float) -> float:
        """Milliseconds from ``started`` until the copy on disk (replaced since ``seen``) has ``marker``."""
        deadline = time.monotonic() + PATIENCE
        while True:
            now = _version(self.copy)
            if now != seen:
                seen = now
                if marker.encode() in self.copy.read_bytes():
                    return (time.perf_counter() - started) * 1000.0
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.follower.name}'s copy of {self.name} did not show {marker!r} "
                    f"within {PATIENCE:.0f} s"
                )
            time.sleep(0.001)

    def block(self) -> Block:
        def measure(n: int) -> list[float]:
            return [self.edit() for _ in range(n)]

        return measure


# -- save -> copy, 50 cells ---------------------------------------------------------------------


def _latencies(mesh: Mesh, shared: Shared) -> dict[str, Any]:
    """Save -> copy updated: followed on A itself, on B, and on a hub in no mesh; interleaved."""
    a, b = mesh.a, mesh.b
    alone = shared.hub()
    followed = {
        "standalone": Followed("follow-standalone", LATENCY_CELLS, alone, alone),
        "single_hub": Followed("follow-single", LATENCY_CELLS, a, a),
        "cross_hub": Followed("follow-cross", LATENCY_CELLS, a, b),
    }
    for each in followed.values():
        each.publish()
        each.follow()
    plan: dict[str, tuple[Block, int, int]] = {
        name: (each.block(), shared.count(SAVES), shared.count(WARMUP)) for name, each in followed.items()
    }
    mark = CLEANUP.mark()
    try:
        plan["raw_nats_request"] = (
            raw_nats.round_trips(mesh.nats.url, *call_message_sizes()),
            shared.count(RAW_REQUESTS),
            shared.count(RAW_WARMUP),
        )
        plan["durable_write"] = (_durable_writes(NODE_BYTES), shared.count(SAVES), shared.count(WARMUP))
        samples = interleave(plan, ROUNDS)
    finally:
        CLEANUP.unwind(mark)
    out: dict[str, Any] = {"cells": LATENCY_CELLS, "notebook_bytes": followed["cross_hub"].notebook_bytes}
    for name, values in samples.items():
        out[name] = latency(values) if isinstance(values, list) else {"error": values}
    single, cross = out["single_hub"], out["cross_hub"]
    if "error" not in single and "error" not in cross:
        out["cross_over_single"] = {
            key: round(cross[key] / single[key], 3) for key in ("median", "p99") if single[key]
        }
    out["save_request"] = {name: latency(each.save_ms) for name, each in followed.items()}
    return out


def _durable_writes(size: int) -> Block:
    """Blocks of one node of ``size`` bytes written as the hubs store a fetched node (fsynced, renamed,
    its directory fsynced), on the disk of their stores; milliseconds."""
    from spindel_jupyter.hub import durable

    directory = CLEANUP.workdir / "durable-writes"
    directory.mkdir(exist_ok=True)
    data = os.urandom(size)
    written = 0

    def measure(n: int) -> list[float]:
        nonlocal written
        samples = []
        for _ in range(n):
            written += 1
            started = time.perf_counter()
            batch = durable.Batch()
            batch.write(directory / f"{written:06d}", data)
            batch.sync()
            samples.append((time.perf_counter() - started) * 1000.0)
        return samples

    return measure


# -- bytes moved against notebook size ----------------------------------------------------------


def _delta(after: dict[str, int], before: dict[str, int], key: str) -> int:
    return int(after.get(key, 0) - before.get(key, 0))


def _sizes(mesh: Mesh, shared: Shared) -> dict[str, Any]:
    """For each size, a notebook followed on A and one followed on B: what one-cell edits move."""
    a, b = mesh.a, mesh.b
    rows: dict[str, list[Any]] = {
        key: []
        for key in (
            "notebook_bytes", "edits", "publish_ms", "follow_ms",
            "follow_nodes_fetched", "follow_bytes_fetched",
            "single_hub_ms", "cross_hub_ms", "nodes_fetched", "bytes_fetched", "bytes_fraction",
            "store_nodes_added", "store_bytes_added", "save_request_ms",
        )
    }  # fmt: skip
    for cells in SIZES:
        started = time.monotonic()
        single = Followed(f"size-{cells}-single", cells, a, a)
        cross = Followed(f"size-{cells}-cross", cells, a, b)
        single.publish()
        rows["publish_ms"].append(round(cross.publish(), 1))
        single.follow()
        before = _stats(b)
        rows["follow_ms"].append(round(cross.follow(), 1))
        after = _stats(b)
        rows["follow_nodes_fetched"].append(_delta(after, before, "nodes_fetched"))
        rows["follow_bytes_fetched"].append(_delta(after, before, "bytes_fetched"))
        times: dict[str, list[float]] = {"single_hub": [], "cross_hub": []}
        fetched: list[int] = []
        fetched_bytes: list[int] = []
        added: list[int] = []
        added_bytes: list[int] = []
        edits = 3 if shared.quick or cells == SIZES[-1] else EDITS
        rows["edits"].append(edits)
        for i in range(edits):
            order: list[tuple[str, Followed]] = [("single_hub", single), ("cross_hub", cross)]
            for name, each in order if i % 2 == 0 else order[::-1]:
                before_a, before_b = _stats(a), _stats(b)
                times[name].append(each.edit())
                after_a, after_b = _stats(a), _stats(b)
                if each is cross:
                    fetched.append(_delta(after_b, before_b, "nodes_fetched"))
                    fetched_bytes.append(_delta(after_b, before_b, "bytes_fetched"))
                else:
                    added.append(_delta(after_a, before_a, "store_nodes"))
                    added_bytes.append(_delta(after_a, before_a, "store_bytes"))
                    if _delta(after_b, before_b, "nodes_fetched"):
                        raise RuntimeError(f"B fetched nodes for {each.name}, which only A follows")
        rows["notebook_bytes"].append(cross.notebook_bytes)
        for name, values in times.items():
            rows[f"{name}_ms"].append(round(statistics.median(values), 2))
        rows["nodes_fetched"].append(max(fetched))
        rows["bytes_fetched"].append(int(statistics.median(fetched_bytes)))
        rows["bytes_fraction"].append(round(statistics.median(fetched_bytes) / cross.notebook_bytes, 6))
        rows["store_nodes_added"].append(max(added))
        rows["store_bytes_added"].append(int(statistics.median(added_bytes)))
        rows["save_request_ms"].append(round(statistics.median(single.save_ms + cross.save_ms), 2))
        print(
            f"bench: cross_hub_follow {cells} cells ({cross.notebook_bytes:,} B): a one-cell edit fetched "
            f"{max(fetched)} nodes, {rows['bytes_fetched'][-1]:,} B on B; copy updated in "
            f"{rows['single_hub_ms'][-1]} ms on A, {rows['cross_hub_ms'][-1]} ms on B "
            f"({time.monotonic() - started:.1f} s)",
            flush=True,
        )
    return {"cells": SIZES, **rows, "most_nodes_fetched": max(rows["nodes_fetched"])}


def _part(measure: Callable[[Mesh, Shared], dict[str, Any]], mesh: Mesh, shared: Shared) -> dict[str, Any]:
    """One part of the family; a failure is recorded as ``{"error": ...}`` and the other part still runs."""
    try:
        return measure(mesh, shared)
    except Exception as exc:
        import traceback

        traceback.print_exc()
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}


def run(shared: Shared) -> dict[str, Any]:
    """Save -> copy latencies (50 cells), then what a one-cell edit moves at 10 to 5,000 cells."""
    mesh = Mesh(shared.quick)
    return {"latency": _part(_latencies, mesh, shared), "sizes": _part(_sizes, mesh, shared)}
