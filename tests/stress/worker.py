"""A plain Python peer process for the stress suite: ``python -m tests.stress.worker MODE JSON``.

It prints one JSON line with its findings at the end. Every loop is bounded in count and time.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import spindel_jupyter
from spindel_jupyter.core.crdt import ORSet, PNCounter
from spindel_jupyter.core.errors import SpindelError
from spindel_jupyter.core.home import home
from spindel_jupyter.peer import sync


def wait_for_file(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout} s")
        time.sleep(0.005)


def digest(items: Any) -> str:
    return hashlib.sha256("\n".join(sorted(map(str, items))).encode()).hexdigest()[:16]


def wait_until(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


def load(p: dict[str, Any]) -> dict[str, Any]:
    """N of these write M unique set elements and M increments each, all at once."""
    folder, i, m, total = Path(p["dir"]), p["i"], p["writes"], p["total"]
    spindel_jupyter.connect(p["url"], name=f"load{i}", token=p["token"])
    items = sync.sync_signal(p["set"], ORSet())
    count = sync.sync_signal(p["counter"], PNCounter())
    (folder / f"ready-{i}").touch()
    wait_for_file(folder / "go", 120)
    start, cpu = time.time(), time.process_time()

    def write_all() -> None:
        for j in range(m):
            items.update(lambda s, e=f"{i}-{j}": s.add(e))
            count.update(lambda c: c.increment())

    if p["on_home"]:  # as in a kernel: writes and remote changes on one thread
        on_home(write_all, p["timeout"])
    else:  # as a script: writes on the main thread, remote changes on the home thread
        write_all()
    written = time.time()
    sync.flush(timeout=p["flush_timeout"])
    acked = time.time()
    ok = wait_until(lambda: len(items.value) == total and int(count.value) == total, p["timeout"])
    return {
        "start": start,
        "written": written,
        "acked": acked,
        "converged": time.time(),
        "cpu_s": time.process_time() - cpu,
        "ok": ok,
        "size": len(items.value),
        "count": int(count.value),
        "digest": digest(items.value),
        "missing_own": len({f"{i}-{j}" for j in range(m)} - set(items.value)),
    }


def on_home(fn: Any, timeout: float = 30) -> Any:
    """Run ``fn`` on the home thread, where remote changes are applied (as a kernel's cells are)."""
    done: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def run() -> None:
        try:
            done.set_result(fn())
        except BaseException as exc:
            done.set_exception(exc)

    home().call(run)
    return done.result(timeout)


def writer(p: dict[str, Any]) -> dict[str, Any]:
    """Writes a stream of set elements until told to stop, recording what the hub acknowledged."""
    folder, i = Path(p["dir"]), p["i"]
    spindel_jupyter.connect(p["url"], name=f"writer{i}", token=p["token"])
    items = sync.sync_signal(p["set"], ORSet())
    (folder / f"ready-{i}").touch()
    acks: list[tuple[float, int]] = []
    timeline: list[tuple[float, int]] = []
    written = 0
    deadline = time.monotonic() + p["max_seconds"]
    while not (folder / "stop").exists() and time.monotonic() < deadline:
        element = f"w{i}-{written}"
        on_home(lambda e=element: items.update(lambda s: s.add(e)))
        written += 1
        timeline.append((time.time(), written))
        if written % p["flush_every"] == 0:
            try:
                sync.flush(timeout=0.3)
                acks.append((time.time(), written))
            except SpindelError:
                pass
        time.sleep(p["interval"])
    (folder / f"written-{i}.tmp").write_text(str(written))
    (folder / f"written-{i}.tmp").replace(folder / f"written-{i}")  # whole, for the parent to read
    settled = False
    for _ in range(100):  # the hub may be starting again: bounded retries
        try:
            sync.flush(timeout=0.5)
            settled = True
            break
        except SpindelError:
            time.sleep(0.1)
    wait_for_file(folder / "total", 60)
    total = int((folder / "total").read_text())
    converged = wait_until(lambda: len(items.value) >= total, 30)
    mine = {f"w{i}-{j}" for j in range(written)}
    return {
        "written": written,
        "acks": acks,
        "timeline": timeline,
        "settled": settled,
        "converged": converged,
        "size": len(items.value),
        "missing_own": len(mine - set(items.value)),
        "digest": digest(items.value),
    }


def reader(p: dict[str, Any]) -> dict[str, Any]:
    """A late joiner: what the hub holds for a topic."""
    spindel_jupyter.connect(p["url"], name=p.get("name", "reader"), token=p["token"])
    items = sync.sync_signal(p["set"], ORSet())
    return {"size": len(items.value), "digest": digest(items.value), "items": sorted(map(str, items.value))}


MODES = {"load": load, "writer": writer, "reader": reader}

if __name__ == "__main__":
    mode, params = sys.argv[1], json.loads(sys.argv[2])
    result = MODES[mode](params)
    print(json.dumps(result), flush=True)
    spindel_jupyter.disconnect()
