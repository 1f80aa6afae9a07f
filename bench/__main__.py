"""Run the benchmark suite: ``python -m bench [--only a,b] [--quick]``.

Every comparison runs in this one run, on this machine, after warm-up. The
table goes to stdout and the numbers to ``bench/results.json`` (merged into
what is there, so sections measured by other tools survive).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import arrays, codec, cross_hub, cross_hub_follow, fork, memory, remote_call, signals, transport
from .common import CLEANUP, Shared, guarded, machine

RESULTS = Path(__file__).resolve().parent / "results.json"

#: Scenario families, in the order they run (the memory flood last, on its own hub).
FAMILIES: dict[str, Callable[[Shared], Any]] = {
    "codec": codec.run,
    "remote_call": remote_call.run,
    "signal_latency": signals.latency_run,
    "signal_throughput": signals.throughput_run,
    "array_transfer": arrays.run,
    "fanout_p99": lambda shared: guarded(signals.fanout, shared),
    "fork": lambda shared: guarded(fork.run, shared),
    "transport": lambda shared: guarded(transport.run, shared),
    "cross_hub": lambda shared: guarded(cross_hub.run, shared),
    "cross_hub_follow": lambda shared: guarded(cross_hub_follow.run, shared),
    "hub_memory": memory.run,
}

#: Families that run without the shared hub (cross_hub starts a mesh of its own).
_HUBLESS = {"hub_memory", "transport", "codec", "cross_hub"}


def write_results(
    path: Path, sections: dict[str, Any], runs: list[dict[str, Any]] | None = None, planned: int = 0
) -> dict[str, Any]:
    """Merge ``sections`` into the JSON at ``path`` (written atomically); return the whole.

    With several ``runs`` in a row, each run's sections are kept under ``runs`` too (written after
    each run: ``planned`` is how many the whole series has).
    """
    merged: dict[str, Any] = {}
    if path.exists():
        try:
            old = json.loads(path.read_text())
            merged = old if isinstance(old, dict) else {}
        except (OSError, ValueError):
            merged = {}
    kept = merged.pop("runs", None)
    merged.update(sections)
    if runs is not None and max(len(runs), planned) > 1:
        if isinstance(kept, list) and len(kept) == max(len(runs), planned):
            # A run of some families adds them to each stored run, keeping the others' figures
            # (the runs of the series still to come keep all theirs until they are done).
            runs = [{**before, **now} for before, now in zip(kept, runs, strict=False)] + kept[len(runs) :]
        merged["runs"] = runs
    elif kept is not None and runs is None:
        merged["runs"] = kept
    merged["machine"] = machine()
    merged["when"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(merged, indent=2) + "\n")
    os.replace(tmp, path)
    return merged


# -- the table ---------------------------------------------------------------------------------


def _num(value: Any, digits: int = 3) -> str:
    if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
        return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,d}"
    return "-"


def _median(entry: Any) -> float | None:
    return entry.get("median") if isinstance(entry, dict) and "median" in entry else None


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def _latency_table(title: str, section: dict[str, Any], reference: str) -> list[str]:
    lines = [f"{title:<42}{'median':>10}{'p90':>10}{'p99':>10}{'n':>7}   {reference} / this"]
    ref = _median(section.get(reference))
    for name, entry in section.items():
        if isinstance(entry, dict) and "error" in entry:
            lines.append(f"  {name:<40}FAILED: {entry['error'][:80]}")
            continue
        cells = "".join(f"{_num(entry.get(k)):>10}" for k in ("median", "p90", "p99"))
        lines.append(f"  {name:<40}{cells}{_num(entry.get('n')):>7}   {_ratio(ref, _median(entry))}")
    return lines


def table(results: dict[str, Any]) -> str:
    lines: list[str] = []
    if "codec" in results:
        lines += [f"{'codec (ms, median)':<42}{'spindel':>10}{'msgpack':>10}{'ratio':>8}"]
        for name, row in results["codec"].items():
            if not isinstance(row, dict) or "error" in row:
                lines.append(f"  {name:<40}FAILED: {str(row)[:80]}")
                continue
            for way, ours, theirs in (("encode", "spindel_encode_ms", "msgpack_packb_ms"),
                                      ("decode", "spindel_decode_ms", "msgpack_unpackb_ms")):  # fmt: skip
                cells = f"{_num(row.get(ours)):>10}{_num(row.get(theirs)):>10}"
                lines.append(f"  {name + ' ' + way:<40}{cells}{row.get(way + '_ratio', '-')!s:>7}x")
        lines.append("")
    if "remote_call" in results:
        lines += _latency_table("remote_call (ms, round trip)", results["remote_call"], "spindel_api")
        lines.append(
            "  (spindel_magic_overhead: median = difference of medians; p90/p99 of pairwise differences)"
        )
    if "floors" in results:
        magic = (results.get("remote_call") or {}).get("spindel_magic_overhead")
        section = {**({"spindel_magic_overhead": magic} if magic else {}), **results["floors"]}
        lines += ["", *_latency_table("floors (ms, in the same run)", section, "spindel_magic_overhead")]
    if "signal_latency" in results:
        lines += ["", *_latency_table("signal_latency (ms, one-way)", results["signal_latency"], "spindel")]
    if "signal_throughput" in results:
        tp = results["signal_throughput"]
        lines += ["", f"{'signal_throughput (updates/s received)':<42}{'rate':>12}   spindel / this"]
        for name, value in tp.items():
            shown = (
                _num(value, 0) if not isinstance(value, dict) else f"FAILED: {value.get('error', '')[:60]}"
            )
            both = isinstance(value, (int, float)) and isinstance(tp.get("spindel"), (int, float))
            lines.append(f"  {name:<40}{shown:>12}   {_ratio(tp['spindel'], value) if both else '-'}")
    if "array_transfer" in results:
        at = results["array_transfer"]
        sizes = at.get("sizes", [])
        head = "".join(f"{_size(s):>12}" for s in sizes)
        lines += ["", f"{'array_transfer (MB/s)':<42}{head}"]
        for name in ("spindel", "raw_ws"):
            row = at.get(name)
            cells = "".join(f"{_num(v, 1):>12}" for v in row) if isinstance(row, list) else f"  FAILED {row}"
            lines.append(f"  {name:<40}{cells}")
        if isinstance(at.get("spindel"), list) and isinstance(at.get("raw_ws"), list):
            cells = "".join(f"{_ratio(a, b):>12}" for a, b in zip(at["spindel"], at["raw_ws"], strict=True))
            lines.append(f"  {'spindel / raw_ws':<40}{cells}")
    if "fanout_p99" in results:
        fo = results["fanout_p99"]
        if "error" in fo:
            lines += ["", f"fanout_p99: FAILED {fo['error'][:80]}"]
        else:
            head = "".join(f"{f'{k} sub':>10}" for k in fo["subscribers"])
            lines += ["", f"{'fanout_p99 (ms, one-way by time.time())':<42}{head}"]
            lines.append(f"  {'spindel':<40}" + "".join(f"{_num(v):>10}" for v in fo["spindel"]))
    if "transport" in results:
        tr = results["transport"]
        if "error" in tr:
            lines += ["", f"transport: FAILED {tr['error'][:80]}"]
        for measure, section in tr.items():
            if isinstance(section, dict) and "legacy" in section:
                lines += ["", *_latency_table(f"transport {measure} (ms)", section, "legacy")]
    if "cross_hub" in results:
        lines += ["", *_cross_hub_table(results["cross_hub"])]
    if "cross_hub_follow" in results:
        lines += ["", *_cross_hub_follow_table(results["cross_hub_follow"])]
    if "hub_memory" in results:
        hm = results["hub_memory"]
        lines += ["", "hub_memory"]
        for key, value in hm.items():
            lines.append(f"  {key:<40}{value!s:>12}")
    return "\n".join(lines)


def _cross_hub_table(section: dict[str, Any]) -> list[str]:
    if "error" in section:
        return [f"cross_hub: FAILED {section['error'][:80]}"]
    lines = _latency_table("cross_hub call (ms, round trip)", section.get("call", {}), "raw_nats_request")
    lines += [
        "",
        *_latency_table("cross_hub signal (ms, one-way)", section.get("signal", {}), "raw_nats_one_way"),
    ]
    updates = section.get("updates", {})
    raw = updates.get("raw_nats_publish")
    lines += ["", f"{'cross_hub updates (/s received)':<42}{'rate':>12}   this / raw_nats_publish"]
    for name, value in updates.items():
        if isinstance(value, dict):
            lines.append(f"  {name:<40}FAILED: {value.get('error', '')[:60]}")
            continue
        both = isinstance(raw, (int, float))
        lines.append(f"  {name:<40}{_num(value, 0):>12}   {_ratio(value, raw) if both else '-'}")
    sizes = section.get("message_bytes", {})
    if sizes:
        lines.append("  (NATS messages of " + ", ".join(f"{k} {v} B" for k, v in sizes.items()) + ")")
    return lines


def _cross_hub_follow_table(section: dict[str, Any]) -> list[str]:
    if "error" in section:
        return [f"cross_hub_follow: FAILED {section['error'][:80]}"]
    lines: list[str] = []
    lat = section.get("latency", {})
    if "error" in lat:
        lines.append(f"cross_hub_follow latency: FAILED {lat['error'][:80]}")
    else:
        title = f"cross_hub_follow save -> copy (ms, {lat.get('cells')} cells)"
        shown = {k: v for k, v in lat.items() if isinstance(v, dict) and ("n" in v or "error" in v)}
        lines += _latency_table(title, shown, "single_hub")
        ratio = lat.get("cross_over_single", {})
        saves = lat.get("save_request", {}).get("single_hub", {})
        lines.append(
            f"  (cross_hub / single_hub: median {ratio.get('median', '-')}x, p99 {ratio.get('p99', '-')}x; "
            f"the save's request alone: median {_num(saves.get('median'))} ms)"
        )
    sizes = section.get("sizes", {})
    if "error" in sizes:
        return [*lines, "", f"cross_hub_follow sizes: FAILED {sizes['error'][:80]}"]
    cells = sizes.get("cells", [])
    lines += ["", f"{'cross_hub_follow one-cell edit, by cells':<42}" + "".join(f"{c:>11,}" for c in cells)]

    def row(label: str, values: list[Any], digits: int = 0) -> None:
        lines.append(f"  {label:<40}" + "".join(f"{_num(v, digits) if v is not None else 'FAILED':>11}"
                                                for v in values))  # fmt: skip

    row("notebook file (B)", sizes.get("notebook_bytes", []))
    row("single_hub: copy updated (ms)", sizes.get("single_hub_ms", []), 1)
    row("single_hub: moved between hubs (B)", [0 for _ in cells])
    row("single_hub: nodes added to A's store", sizes.get("store_nodes_added", []))
    row("single_hub: bytes added to A's store", sizes.get("store_bytes_added", []))
    row("cross_hub: copy updated (ms)", sizes.get("cross_hub_ms", []), 1)
    row("cross_hub: nodes fetched by B", sizes.get("nodes_fetched", []))
    row("cross_hub: bytes fetched by B", sizes.get("bytes_fetched", []))
    lines.append(f"  {'cross_hub: bytes fetched / notebook':<40}"
                 + "".join(f"{v:>11.1%}" for v in sizes.get("bytes_fraction", [])))  # fmt: skip
    row("save request (ms)", sizes.get("save_request_ms", []), 1)
    row("publish from the file (ms)", sizes.get("publish_ms", []), 1)
    row("first follow on B (ms)", sizes.get("follow_ms", []), 1)
    row("first follow: nodes fetched", sizes.get("follow_nodes_fetched", []))
    row("first follow: bytes fetched", sizes.get("follow_bytes_fetched", []))
    return lines


def _size(n: int) -> str:
    for unit, scale in (("MB", 1_000_000), ("KB", 1_000)):
        if n >= scale:
            return f"{n / scale:g} {unit}"
    return f"{n} B"


# -- targets -----------------------------------------------------------------------------------


def _get(results: dict[str, Any], *path: Any) -> Any:
    value: Any = results
    for key in path:
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            return None
    return value if isinstance(value, (int, float)) else None


@dataclass(frozen=True)
class Target:
    """A goal as a ratio of two measures of the same run: ``measure / reference`` within ``bound``.

    With ``plus = (k, other)`` the reference is a budget, ``reference + k * other``: a goal
    ``a <= b + k * c`` is judged as ``a / (b + k * c) <= bound`` (``bound`` 1).
    """

    name: str
    measure: tuple[Any, ...]
    reference: tuple[Any, ...] | None  # None: the measure is a ratio already
    bound: float
    at_least: bool = False  # a rate: the ratio must reach the bound, not stay under it
    unit: str = "ms"
    plus: tuple[float, tuple[Any, ...]] | None = None

    def _reference(self, results: dict[str, Any]) -> float | None:
        assert self.reference is not None
        b = _get(results, *self.reference)
        if self.plus is None or b is None:
            return b
        k, other = self.plus
        c = _get(results, *other)
        return None if c is None else b + k * c

    def ratio(self, results: dict[str, Any]) -> float | None:
        a = _get(results, *self.measure)
        if self.reference is None:
            return a
        b = self._reference(results)
        return a / b if a is not None and b else None

    def holds(self, ratio: float) -> bool:
        return ratio >= self.bound if self.at_least else ratio <= self.bound

    def shown(self, ratio: float) -> str:
        """A ratio as printed: a measure that is a count (``unit`` not ms, no reference) in its unit."""
        return f"{ratio:g} {self.unit}" if self.reference is None and self.unit != "ms" else f"{ratio:.2f}x"

    def numbers(self, results: dict[str, Any]) -> str:
        if self.reference is None:
            ratio = self.ratio(results)
            return "not measured" if ratio is None else self.shown(ratio)
        a, b = _get(results, *self.measure), self._reference(results)
        if a is None or b is None:
            return "not measured"
        ratio = a / b if b else math.nan
        digits = 0 if self.unit in ("/s", "B") else (1 if self.unit == "MB/s" else 3)
        reference = f"{b:,.{digits}f}"
        if self.plus is not None:
            k, other = self.plus
            parts = _get(results, *self.reference), _get(results, *other)
            reference = f"{parts[0]:,.{digits}f} + {k:g} x {parts[1]:,.{digits}f} = {reference}"
        return f"{a:,.{digits}f} vs {reference} {self.unit}: {ratio:.2f}x"


#: The goals, each against what it is compared with in the same run.
TARGETS = [
    Target("codec.orset_20k encode <= 3x msgpack of the same lists",
           ("codec", "orset_20k", "encode_ratio"), None, 3),
    Target("codec.orset_20k decode <= 3x msgpack of the same lists",
           ("codec", "orset_20k", "decode_ratio"), None, 3),
    Target("remote_call.spindel_api <= 1.5x raw_ws_relay",
           ("remote_call", "spindel_api", "median"), ("remote_call", "raw_ws_relay", "median"), 1.5),
    Target("remote_call.spindel_api <= 1/3 ipyparallel_apply_sync",
           ("remote_call", "spindel_api", "median"),
           ("remote_call", "ipyparallel_apply_sync", "median"), 1 / 3),
    Target("remote_call.spindel_magic_overhead <= 1.2x the in-cell relay floor",
           ("remote_call", "spindel_magic_overhead", "median"),
           ("floors", "raw_ws_relay_in_cell_overhead", "median"), 1.2),
    Target("signal_latency.spindel <= 2x raw_ws_relay_one_way",
           ("signal_latency", "spindel", "median"), ("signal_latency", "raw_ws_relay_one_way", "median"), 2),
    Target("signal_latency.spindel < pycrdt_websocket",
           ("signal_latency", "spindel", "median"), ("signal_latency", "pycrdt_websocket", "median"), 1),
    Target("signal_latency.spindel_crdt_large <= 2x spindel_crdt",
           ("signal_latency", "spindel_crdt_large", "median"),
           ("signal_latency", "spindel_crdt", "median"), 2),
    Target("signal_throughput.spindel_crdt >= 0.5x raw_ws_relay",
           ("signal_throughput", "spindel_crdt"), ("signal_throughput", "raw_ws_relay"), 0.5, True, "/s"),
    Target("signal_throughput.spindel >= 0.4x raw_ws_relay",
           ("signal_throughput", "spindel"), ("signal_throughput", "raw_ws_relay"), 0.4, True, "/s"),
    Target("signal_throughput.spindel >= pycrdt_websocket",
           ("signal_throughput", "spindel"), ("signal_throughput", "pycrdt_websocket"), 1, True, "/s"),
    Target("array_transfer 1 MB spindel >= 0.8x raw_ws",
           ("array_transfer", "spindel", 1), ("array_transfer", "raw_ws", 1), 0.8, True, "MB/s"),
    Target("array_transfer 64 MB spindel >= 0.8x raw_ws",
           ("array_transfer", "spindel", 2), ("array_transfer", "raw_ws", 2), 0.8, True, "MB/s"),
    Target("cross_hub.call.cross_hub <= single_hub + 1.5x raw_nats_request",
           ("cross_hub", "call", "cross_hub", "median"), ("cross_hub", "call", "single_hub", "median"), 1,
           plus=(1.5, ("cross_hub", "call", "raw_nats_request", "median"))),
    Target("cross_hub.signal.cross_hub <= single_hub + 1.5x raw_nats_one_way",
           ("cross_hub", "signal", "cross_hub", "median"), ("cross_hub", "signal", "single_hub", "median"), 1,
           plus=(1.5, ("cross_hub", "signal", "raw_nats_one_way", "median"))),
    Target("cross_hub.updates.cross_hub_set >= 0.5x raw_nats_publish",
           ("cross_hub", "updates", "cross_hub_set"), ("cross_hub", "updates", "raw_nats_publish"), 0.5, True,
           "/s"),
    Target("cross_hub_follow.cross_hub <= 1.5x single_hub (save -> copy)",
           ("cross_hub_follow", "latency", "cross_hub", "median"),
           ("cross_hub_follow", "latency", "single_hub", "median"), 1.5),
    Target("cross_hub_follow: a one-cell edit fetches <= 2 nodes, at every size",
           ("cross_hub_follow", "sizes", "most_nodes_fetched"), None, 2, unit="nodes"),
    Target("cross_hub_follow: a one-cell edit of 5,000 cells fetches < 1% of the file",
           ("cross_hub_follow", "sizes", "bytes_fetched", -1),
           ("cross_hub_follow", "sizes", "notebook_bytes", -1), 0.01, unit="B"),
]  # fmt: skip


def targets(results: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    """(target, holds or None if unmeasured, the numbers)."""
    out: list[tuple[str, bool | None, str]] = []
    for target in TARGETS:
        ratio = target.ratio(results)
        out.append((target.name, None if ratio is None else target.holds(ratio), target.numbers(results)))
    growth = _get(results, "hub_memory", "peak_rss_growth_mb")
    converged = (results.get("hub_memory") or {}).get("converged")
    if growth is None or converged is None:
        out.append(("hub_memory.peak_rss_growth_mb <= 100 and converged", None, "not measured"))
    else:
        out.append(("hub_memory.peak_rss_growth_mb <= 100 and converged", growth <= 100 and bool(converged),
                    f"{growth:.1f} MiB, converged={converged}"))  # fmt: skip
    fork_ms, fork_nodes = results.get("fork", {}).get("ms"), results.get("fork", {}).get("nodes_added")
    if not fork_ms or not fork_nodes:
        out.append(("fork.ms flat (5000 cells <= 3x 10 cells), nodes_added <= 1", None, "not measured"))
    else:
        flat = fork_ms[-1] <= 3 * fork_ms[0] and max(fork_nodes) <= 1
        numbers = (
            f"{fork_ms[0]:.2f} ms at 10 cells, {fork_ms[-1]:.2f} ms at 5000, nodes added {max(fork_nodes)}"
        )
        out.append(("fork.ms flat (5000 cells <= 3x 10 cells), nodes_added <= 1", flat, numbers))
    return out


def median_of_runs(runs: list[dict[str, Any]]) -> list[tuple[str, bool | None, str]]:
    """Each ratio target over several full runs: its ratio in each, and the verdict on their median."""
    out: list[tuple[str, bool | None, str]] = []
    for target in TARGETS:
        ratios = [r for r in (target.ratio(run) for run in runs) if r is not None]
        if not ratios:
            out.append((target.name, None, "not measured"))
            continue
        middle = statistics.median(ratios)
        each = ", ".join(target.shown(r) for r in ratios)
        out.append(
            (
                target.name,
                target.holds(middle),
                f"median {target.shown(middle)} of {len(ratios)} runs ({each})",
            )
        )
    return out


# -- main --------------------------------------------------------------------------------------


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def run_once(chosen: list[str], quick: bool) -> dict[str, Any]:
    """One full run of the chosen families, each with its own processes; the sections measured."""
    shared = Shared(quick=quick)
    sections: dict[str, Any] = {}
    print(f"bench: logs in {CLEANUP.log_dir}", flush=True)
    failed = True
    try:
        # Shared parts first, so that each family's own processes can be stopped after it.
        if set(chosen) - _HUBLESS:
            shared.hub()
        if {"remote_call", "array_transfer"} & set(chosen):
            shared.bob()
        for name in FAMILIES:
            if name in chosen:
                print(f"bench: {name}...", flush=True)
                family_started = time.monotonic()
                mark = CLEANUP.mark()
                try:
                    sections[name] = FAMILIES[name](shared)
                finally:
                    CLEANUP.unwind(mark)
                print(f"bench: {name} took {time.monotonic() - family_started:.0f} s", flush=True)
        failed = False
    finally:
        if shared.floors:
            sections["floors"] = shared.floors
        failed = failed or not sections or '"error":' in json.dumps(sections)
        log_dir = CLEANUP.log_dir
        CLEANUP.close(keep_logs=failed)
        if failed:
            print(f"bench: something failed; logs kept in {log_dir}", file=sys.stderr)
    return sections


def _print_targets(title: str, rows: list[tuple[str, bool | None, str]]) -> None:
    print(f"\n{title}")
    for name, holds, numbers in rows:
        mark = {True: "PASS", False: "MISS", None: "----"}[holds]
        print(f"  [{mark}] {name:<70} {numbers}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", help=f"comma-separated families among: {', '.join(FAMILIES)}")
    parser.add_argument("--quick", action="store_true", help="a tenth of the iterations, for development")
    parser.add_argument("--output", type=Path, default=RESULTS, help="the JSON file to merge results into")
    parser.add_argument(
        "--runs", type=int, default=1, help="full runs in a row; the targets are judged on their median"
    )
    args = parser.parse_args(argv)
    chosen = list(FAMILIES) if not args.only else [f.strip() for f in args.only.split(",") if f.strip()]
    unknown = [f for f in chosen if f not in FAMILIES]
    if unknown:
        parser.error(f"unknown families {unknown}; choose among {', '.join(FAMILIES)}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    runs: list[dict[str, Any]] = []
    for number in range(1, args.runs + 1):
        if args.runs > 1:
            print(f"bench: run {number} of {args.runs}", flush=True)
        sections = run_once(chosen, args.quick)
        if not sections:
            break
        runs.append(sections)
        merged = write_results(args.output, sections, runs, args.runs)
        shown = {k: v for k, v in merged.items() if k in sections}
        print("\n" + table(shown))
        _print_targets("targets (reported, not enforced):", targets(merged))
    if len(runs) > 1:
        _print_targets(f"targets over {len(runs)} runs (the median ratio is judged):", median_of_runs(runs))
    print(f"\nwrote {args.output}; total wall time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
