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
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import arrays, codec, fork, memory, remote_call, signals
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
    "hub_memory": memory.run,
}


def write_results(path: Path, sections: dict[str, Any]) -> dict[str, Any]:
    """Merge ``sections`` into the JSON at ``path`` (written atomically); return the whole."""
    merged: dict[str, Any] = {}
    if path.exists():
        try:
            old = json.loads(path.read_text())
            merged = old if isinstance(old, dict) else {}
        except (OSError, ValueError):
            merged = {}
    merged.update(sections)
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
    if "hub_memory" in results:
        hm = results["hub_memory"]
        lines += ["", "hub_memory"]
        for key, value in hm.items():
            lines.append(f"  {key:<40}{value!s:>12}")
    return "\n".join(lines)


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


def targets(results: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    """(target, holds or None if unmeasured, the numbers)."""
    r = results
    api = _get(r, "remote_call", "spindel_api", "median")
    raw = _get(r, "remote_call", "raw_ws_relay", "median")
    ipp = _get(r, "remote_call", "ipyparallel_apply_sync", "median")
    magic = _get(r, "remote_call", "spindel_magic_overhead", "median")
    sig = _get(r, "signal_latency", "spindel", "median")
    sig_raw = _get(r, "signal_latency", "raw_ws_relay_one_way", "median")
    sig_y = _get(r, "signal_latency", "pycrdt_websocket", "median")
    crdt_small = _get(r, "signal_latency", "spindel_crdt", "median")
    crdt_large = _get(r, "signal_latency", "spindel_crdt_large", "median")
    tp = _get(r, "signal_throughput", "spindel")
    tp_crdt = _get(r, "signal_throughput", "spindel_crdt")
    tp_raw = _get(r, "signal_throughput", "raw_ws_relay")
    tp_y = _get(r, "signal_throughput", "pycrdt_websocket")
    arr = _get(r, "array_transfer", "spindel", -1)
    arr_raw = _get(r, "array_transfer", "raw_ws", -1)
    growth = _get(r, "hub_memory", "peak_rss_growth_mb")
    converged = (r.get("hub_memory") or {}).get("converged")

    def check(
        name: str, a: float | None, b: float | None, ok: Callable[[float, float], bool], how: str
    ) -> None:
        if a is None or b is None:
            out.append((name, None, "not measured"))
        else:
            out.append((name, ok(a, b), how.format(a=a, b=b)))

    out: list[tuple[str, bool | None, str]] = []
    for way in ("encode", "decode"):
        check(
            f"codec.orset_20k {way} <= 3x msgpack of the same lists",
            _get(r, "codec", "orset_20k", f"{way}_ratio"),
            3.0,
            lambda a, b: a <= b,
            "{a:.2f}x",
        )
    check(
        "remote_call.spindel_api.median <= 2x raw_ws_relay.median",
        api,
        raw,
        lambda a, b: a <= 2 * b,
        "{a:.3f} ms vs 2 x {b:.3f} ms",
    )
    check(
        "remote_call.spindel_api.median <= 1/3 ipyparallel_apply_sync.median",
        api,
        ipp,
        lambda a, b: a <= b / 3,
        "{a:.3f} ms vs {b:.3f} ms / 3",
    )
    floor = _get(r, "floors", "raw_ws_relay_in_cell_overhead", "median")
    check(
        "remote_call.spindel_magic_overhead.median <= 1 ms",
        magic,
        1.0,
        lambda a, b: a <= b,
        "{a:.3f} ms" + (f" (the bare relay from a cell: {floor:.3f} ms)" if floor is not None else ""),
    )
    check(
        "signal_latency.spindel.median <= 2x raw_ws_relay_one_way.median",
        sig,
        sig_raw,
        lambda a, b: a <= 2 * b,
        "{a:.3f} ms vs 2 x {b:.3f} ms",
    )
    check(
        "signal_latency.spindel.median < pycrdt_websocket.median",
        sig,
        sig_y,
        lambda a, b: a < b,
        "{a:.3f} ms vs {b:.3f} ms",
    )
    check(
        "signal_latency.spindel_crdt_large.median <= 2x spindel_crdt.median",
        crdt_large,
        crdt_small,
        lambda a, b: a <= 2 * b,
        "{a:.3f} ms vs 2 x {b:.3f} ms",
    )
    check(
        "signal_throughput.spindel_crdt >= 0.5x raw_ws_relay",
        tp_crdt,
        tp_raw,
        lambda a, b: a >= 0.5 * b,
        "{a:,.0f}/s vs 0.5 x {b:,.0f}/s",
    )
    check(
        "signal_throughput.spindel >= 0.4x raw_ws_relay",
        tp,
        tp_raw,
        lambda a, b: a >= 0.4 * b,
        "{a:,.0f}/s vs 0.4 x {b:,.0f}/s",
    )
    check(
        "signal_throughput.spindel >= pycrdt_websocket",
        tp,
        tp_y,
        lambda a, b: a >= b,
        "{a:,.0f}/s vs {b:,.0f}/s",
    )
    check(
        "array_transfer 64 MB spindel >= 0.5x raw_ws",
        arr,
        arr_raw,
        lambda a, b: a >= 0.5 * b,
        "{a:,.1f} MB/s vs 0.5 x {b:,.1f} MB/s",
    )
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
    return out  # fmt: skip


# -- main --------------------------------------------------------------------------------------


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", help=f"comma-separated families among: {', '.join(FAMILIES)}")
    parser.add_argument("--quick", action="store_true", help="a tenth of the iterations, for development")
    parser.add_argument("--output", type=Path, default=RESULTS, help="the JSON file to merge results into")
    args = parser.parse_args(argv)
    chosen = list(FAMILIES) if not args.only else [f.strip() for f in args.only.split(",") if f.strip()]
    unknown = [f for f in chosen if f not in FAMILIES]
    if unknown:
        parser.error(f"unknown families {unknown}; choose among {', '.join(FAMILIES)}")
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    shared = Shared(quick=args.quick)
    sections: dict[str, Any] = {}
    print(f"bench: logs in {CLEANUP.log_dir}", flush=True)
    try:
        # Shared parts first, so that each family's own processes can be stopped after it.
        if set(chosen) - {"hub_memory", "codec"}:
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
    finally:
        if shared.floors:
            sections["floors"] = shared.floors
        failed = not sections or '"error":' in json.dumps(sections)
        CLEANUP.close(keep_logs=failed)
        if failed:
            print(f"bench: something failed; logs kept in {CLEANUP.log_dir}", file=sys.stderr)
        if sections:
            merged = write_results(args.output, sections)
            shown = {k: v for k, v in merged.items() if k in sections}
            print("\n" + table(shown))
            print("\ntargets (reported, not enforced):")
            for name, holds, numbers in targets(merged):
                mark = {True: "PASS", False: "MISS", None: "----"}[holds]
                print(f"  [{mark}] {name:<70} {numbers}")
            print(f"\nwrote {args.output}; total wall time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
