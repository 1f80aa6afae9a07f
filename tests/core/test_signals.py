"""Signals: local observable values (sync adds writers; see test_sync)."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from spindel_jupyter.core.errors import SpindelError
from spindel_jupyter.core.home import home
from spindel_jupyter.core.signals import Signal
from tests.support import wait_until


def collect(signal: Signal[Any]) -> tuple[list[Any], list[str]]:
    values: list[Any] = []
    threads: list[str] = []

    def observer(value: Any) -> None:
        values.append(value)
        threads.append(threading.current_thread().name)

    signal.observe(observer)
    return values, threads


def test_set_update_and_observe_on_the_home_thread() -> None:
    signal = Signal(1)
    values, threads = collect(signal)
    signal.set(2)
    assert signal.update(lambda v: v * 10) == 20
    wait_until(lambda: values == [2, 20], what="both changes observed")
    assert set(threads) == {home().thread.name}


def test_no_change_no_observer_call() -> None:
    signal = Signal("same")
    values, _ = collect(signal)
    signal.set("same")
    signal.update(lambda v: v)
    signal.set("other")
    wait_until(lambda: values == ["other"], what="one call")


def test_arrays_compare_by_identity() -> None:
    signal = Signal(np.zeros(3))
    values, _ = collect(signal)
    signal.set(np.zeros(3))
    wait_until(lambda: len(values) == 1, what="an array counts as a change")


def test_stop_observing() -> None:
    signal = Signal(0)
    values, _ = collect(signal)
    handle = signal.observe(values.append)
    handle.stop()
    signal.set(1)
    wait_until(lambda: values == [1], what="only the remaining observer")


def test_update_is_atomic_across_threads() -> None:
    signal = Signal(0)

    def bump() -> None:
        for _ in range(1000):
            signal.update(lambda v: v + 1)

    workers = [threading.Thread(target=bump) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert signal.value == 4000


def test_a_refusing_writer_leaves_the_value_alone() -> None:
    signal = Signal(1)

    def refuse(old: Any, new: Any) -> None:
        raise SpindelError("no")

    signal._add_writer(refuse)
    with pytest.raises(SpindelError):
        signal.set(2)
    assert signal.value == 1


def test_writer_replacement_is_stored() -> None:
    signal = Signal(1)
    signal._add_writer(lambda old, new: new * 100)
    signal.set(2)
    assert signal.value == 200


def test_remote_values_reach_observers_not_writers() -> None:
    signal = Signal(1)
    written: list[Any] = []
    signal._add_writer(lambda old, new: written.append(new))
    values, _ = collect(signal)
    signal._apply_remote(5)
    wait_until(lambda: values == [5], what="observer call")
    assert written == []


def test_read_only_signal_says_why() -> None:
    signal = Signal(1)
    signal._read_only = "read-only mirror of topic 'x'"
    with pytest.raises(SpindelError, match="read-only mirror"):
        signal.set(2)
