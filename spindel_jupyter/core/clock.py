"""Hybrid logical clocks: timestamps for last-writer-wins that respect causality.

A stamp is ``(wall-clock milliseconds, logical counter, node name)``. It stays close
to real time, but a clock never goes backwards: when the wall clock stands still or
steps back, or a stamp arrives from a node whose clock runs ahead, the counter carries
time forward. Every stamp a clock hands out is greater than every stamp it handed out
or observed before, so a write made after seeing another write always wins over it
(Kulkarni et al., "Logical Physical Clocks", 2014).

Stamps are plain tuples and compare lexicographically: equal times are broken by node
name, so every replica picks the same winner.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

__all__ = ["HybridClock", "Stamp", "as_stamp", "is_stamp"]

#: ``(wall-clock milliseconds, logical counter, node name)``.
Stamp = tuple[int, int, str]


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class HybridClock:
    """A hybrid logical clock for one node; safe to share between threads."""

    def __init__(self, node: str, wall: Callable[[], int] | None = None) -> None:
        self.node = node
        self._wall = wall or _wall_ms
        self._lock = threading.Lock()
        self._time = 0  # the largest wall time handed out or observed
        self._counter = 0  # orders the events within _time

    def now(self, node: str | None = None) -> Stamp:
        """A new stamp, greater than every stamp this clock returned or observed.

        ``node`` names the writer in this stamp instead of the clock's own node.
        """
        with self._lock:
            wall = self._wall()
            if wall > self._time:
                self._time, self._counter = wall, 0
            else:
                self._counter += 1
            return (self._time, self._counter, self.node if node is None else node)

    def observe(self, stamp: Stamp) -> None:
        """Merge a stamp received from another node, so that later stamps here are greater.

        Raises ValueError if ``stamp`` is not a stamp (it may come from the network).
        """
        their_time, their_counter, _ = as_stamp(stamp)
        with self._lock:
            wall = self._wall()
            latest = max(self._time, their_time, wall)
            if latest == self._time == their_time:
                counter = max(self._counter, their_counter) + 1
            elif latest == self._time:
                counter = self._counter + 1
            elif latest == their_time:
                counter = their_counter + 1
            else:
                counter = 0
            self._time, self._counter = latest, counter


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def is_stamp(value: object) -> bool:
    """Whether a decoded value is a stamp: ``[milliseconds, counter, node]`` as a list or tuple."""
    return (
        isinstance(value, (list, tuple))
        and len(value) == 3
        and _is_count(value[0])
        and _is_count(value[1])
        and isinstance(value[2], str)
    )


def as_stamp(value: object) -> Stamp:
    """``value`` as a :data:`Stamp` tuple; raise ValueError if it is not one."""
    if not is_stamp(value):
        raise ValueError(
            "not a clock stamp: expected [milliseconds, counter, node] "
            f"(two integers >= 0 and a str), got {value!r:.200}"
        )
    millis, counter, node = cast(Sequence[Any], value)
    return (int(millis), int(counter), str(node))
