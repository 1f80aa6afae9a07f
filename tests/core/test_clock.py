"""Hybrid logical clocks: never backwards, past everything seen, unique across threads."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spindel_jupyter.core.clock import HybridClock, Stamp, as_stamp, is_stamp


class FakeWall:
    """A wall clock the test sets by hand."""

    def __init__(self, millis: int = 1000) -> None:
        self.millis = millis

    def __call__(self) -> int:
        return self.millis


def test_a_stamp_follows_the_wall_clock() -> None:
    wall = FakeWall(1000)
    clock = HybridClock("alice", wall)
    assert clock.now() == (1000, 0, "alice")
    wall.millis = 1500
    assert clock.now() == (1500, 0, "alice")


def test_the_default_wall_clock_is_milliseconds_since_the_epoch() -> None:
    before = time.time_ns() // 1_000_000
    millis, _, node = HybridClock("n").now()
    assert before <= millis <= time.time_ns() // 1_000_000
    assert node == "n"


def test_node_overrides_the_name_for_one_stamp() -> None:
    clock = HybridClock("kernel", FakeWall())
    assert clock.now(node="alice")[2] == "alice"
    assert clock.now()[2] == "kernel"


def test_a_wall_clock_standing_still_advances_the_counter() -> None:
    clock = HybridClock("n", FakeWall(7))
    assert [clock.now() for _ in range(3)] == [(7, 0, "n"), (7, 1, "n"), (7, 2, "n")]


def test_a_wall_clock_going_backwards_does_not_take_stamps_back() -> None:
    wall = FakeWall(1000)
    clock = HybridClock("n", wall)
    first = clock.now()
    wall.millis = 10
    second = clock.now()
    assert second > first
    assert second[0] == 1000  # keeps the later time, counts on


def test_a_stamp_from_the_future_moves_the_clock_past_it() -> None:
    clock = HybridClock("alice", FakeWall(1000))
    future = (10**12, 5, "zed")
    clock.observe(future)
    stamp = clock.now()
    assert stamp > future
    assert stamp[:2] > future[:2]  # later by time and counter, not only by node name


def test_an_old_stamp_does_not_move_the_clock_back() -> None:
    clock = HybridClock("n", FakeWall(1000))
    first = clock.now()
    clock.observe((5, 99, "old"))
    assert clock.now() > first


def test_observe_accepts_a_stamp_as_decoded_from_the_network() -> None:
    clock = HybridClock("n", FakeWall(0))
    clock.observe([50, 2, "peer"])  # type: ignore[arg-type]
    assert clock.now()[:2] > (50, 2)


def test_observe_refuses_what_is_not_a_stamp() -> None:
    clock = HybridClock("n", FakeWall())
    with pytest.raises(ValueError, match="not a clock stamp"):
        clock.observe(["soon", 0, "peer"])  # type: ignore[arg-type]


_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("now"), st.integers(0, 40)),
        st.tuples(st.just("observe"), st.integers(0, 40), st.integers(0, 60), st.integers(0, 5)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(_STEPS)
def test_every_stamp_is_past_everything_returned_or_observed(steps: list[tuple[Any, ...]]) -> None:
    wall = FakeWall(0)
    clock = HybridClock("n", wall)
    latest: Stamp | None = None
    for step in steps:
        wall.millis = step[1]
        if step[0] == "now":
            stamp = clock.now()
            assert latest is None or stamp[:2] > latest[:2]
            assert stamp[0] >= wall.millis  # never behind the wall clock
        else:
            stamp = (step[2], step[3], "peer")
            clock.observe(stamp)
        latest = stamp if latest is None else max(latest, stamp)


def test_threads_sharing_a_clock_never_get_the_same_stamp() -> None:
    clock = HybridClock("n")
    per_thread: list[list[Stamp]] = [[] for _ in range(8)]
    start = threading.Barrier(len(per_thread))

    def work(stamps: list[Stamp]) -> None:
        start.wait()
        for _ in range(2000):
            stamps.append(clock.now())

    threads = [threading.Thread(target=work, args=(stamps,)) for stamps in per_thread]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [stamp for stamps in per_thread for stamp in stamps]
    assert len(set(everything)) == len(everything)
    for stamps in per_thread:
        assert stamps == sorted(stamps)


@pytest.mark.parametrize("value", [[1, 2, "a"], (0, 0, ""), [2**70, 3, "node"]])
def test_is_stamp_accepts_lists_and_tuples(value: Any) -> None:
    assert is_stamp(value)
    assert as_stamp(value) == tuple(value)
    assert type(as_stamp(value)) is tuple


@pytest.mark.parametrize(
    "value",
    [
        None,
        "1,2,a",
        [1, 2],
        [1, 2, "a", 4],
        [-1, 0, "a"],
        [1, -1, "a"],
        [True, 0, "a"],
        [1.0, 0, "a"],
        [1, 2, 3],
    ],
)
def test_is_stamp_refuses_everything_else(value: Any) -> None:
    assert not is_stamp(value)
    with pytest.raises(ValueError, match=r"not a clock stamp: expected \[milliseconds, counter, node\]"):
        as_stamp(value)
