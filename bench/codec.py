"""``codec``: spindel's codec on CRDT states, against plain msgpack of the same data as nested lists.

Measured in this process, no server. The value is the load scenario's set: an
``ORSet`` of 20,000 strings added by 20 writers (and a one-add delta of it).
Spindel's side is what the hub and the peers pay: ``wire.encode(value.state())``
(reading the state out of the value included) and
``ORSet.from_state(wire.decode(data))`` (the value rebuilt). msgpack's is
``packb``/``unpackb`` of the same data as one would write it for msgpack: each
element with the list of its dots, ``{element: [[writer, seq], ...]}``, and the
context. For reference, msgpack is also timed on spindel's own state (its
columns, already plain lists). The rows alternate, so they share the machine's
ups and downs; each figure is a median.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgpack

from spindel_jupyter.core import crdt, wire
from spindel_jupyter.core.crdt import ORSet

from .common import Shared, percentile

WRITERS, PER_WRITER = 20, 1000
ROUNDS = 30


def large_set() -> ORSet[str]:
    """20,000 elements, 1,000 from each of 20 writers, nothing pending."""
    value: ORSet[str] = ORSet()
    for w in range(WRITERS):
        with crdt.replica(f"load{w}"):
            value = value.merge(ORSet(f"{w}-{j}" for j in range(PER_WRITER)))
    return value.clear_delta()


def nested_lists(value: ORSet[Any]) -> dict[str, Any]:
    """The data of ``value``'s state as nested lists: each element with its dots, then the context."""
    state = value.state()
    counts = state["counts"] or [1] * len(state["elements"])
    pairs = [list(pair) for pair in zip(state["dots"][::2], state["dots"][1::2], strict=True)]
    entries, start = {}, 0
    for element, n in zip(state["elements"], counts, strict=True):
        entries[element] = pairs[start : start + n]
        start += n
    cloud = [list(pair) for pair in zip(state["cloud"][::2], state["cloud"][1::2], strict=True)]
    return {"entries": entries, "vv": state["vv"], "cloud": cloud}


def _medians(rows: dict[str, Callable[[], Any]], rounds: int, repeat: int = 1) -> dict[str, float]:
    """The median time of each row in ms (each sample ``repeat`` calls), the rows taking turns."""
    samples: dict[str, list[float]] = {name: [] for name in rows}
    for r in range(rounds + 2):  # two rounds of warm-up
        for name, fn in rows.items():
            started = time.perf_counter()
            for _ in range(repeat):
                fn()
            if r >= 2:
                samples[name].append((time.perf_counter() - started) * 1000.0 / repeat)
    return {name: percentile(times, 50) for name, times in samples.items()}


def _compare(value: ORSet[Any], rounds: int, repeat: int = 1) -> dict[str, Any]:
    nested, columns = nested_lists(value), value.state()
    data = wire.encode(value.state())
    packed, packed_columns = (msgpack.packb(plain, use_bin_type=True) for plain in (nested, columns))
    cls = type(value)
    times = _medians(
        {
            "spindel_encode_ms": lambda: wire.encode(value.state()),
            "msgpack_packb_ms": lambda: msgpack.packb(nested, use_bin_type=True),
            "msgpack_packb_columns_ms": lambda: msgpack.packb(columns, use_bin_type=True),
            "spindel_decode_ms": lambda: cls.from_state(wire.decode(data)),
            "msgpack_unpackb_ms": lambda: msgpack.unpackb(packed, strict_map_key=False),
            "msgpack_unpackb_columns_ms": lambda: msgpack.unpackb(packed_columns),
        },
        rounds,
        repeat,
    )
    out: dict[str, Any] = {key: round(ms, 4) for key, ms in times.items()}
    out["encode_ratio"] = round(times["spindel_encode_ms"] / times["msgpack_packb_ms"], 2)
    out["decode_ratio"] = round(times["spindel_decode_ms"] / times["msgpack_unpackb_ms"], 2)
    out["bytes"], out["msgpack_bytes"] = len(data), len(packed)
    return out


def run(shared: Shared) -> dict[str, Any]:
    rounds = ROUNDS // 3 if shared.quick else ROUNDS
    large = large_set()
    with crdt.replica("load0"):
        delta = large.add("one more").delta()
    out = {"orset_20k": _compare(large, rounds), "orset_delta": _compare(delta, rounds, repeat=200)}
    for name, row in out.items():
        print(
            f"bench: codec {name}: encode {row['spindel_encode_ms']:.4f} ms vs msgpack "
            f"{row['msgpack_packb_ms']:.4f} ms ({row['encode_ratio']}x; msgpack of spindel's columns "
            f"{row['msgpack_packb_columns_ms']:.4f} ms), decode {row['spindel_decode_ms']:.4f} ms vs "
            f"{row['msgpack_unpackb_ms']:.4f} ms ({row['decode_ratio']}x; of the columns "
            f"{row['msgpack_unpackb_columns_ms']:.4f} ms), {row['bytes']:,} bytes vs {row['msgpack_bytes']:,}"
        )
    return out
