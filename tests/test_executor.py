"""Running served code: cell semantics, one at a time, interrupts and forwarded output."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from spindel_jupyter.executor import Executor, Interrupted, compile_cell, forward_output


def run(source: str, ns: dict[str, Any]) -> Any:
    return asyncio.run(compile_cell(source).run_async(ns))


def test_last_expression_is_the_value() -> None:
    ns: dict[str, Any] = {}
    assert run("a = 2\nb = 3\na * b", ns) == 6
    assert ns["a"] == 2
    assert run("c = 1", ns) is None


def test_top_level_await_and_imports() -> None:
    ns: dict[str, Any] = {}
    assert run("import asyncio\nawait asyncio.sleep(0)\nx = await asyncio.sleep(0, result=5)\nx + 1", ns) == 6
    assert "asyncio" in ns


def test_tracebacks_show_the_source_lines() -> None:
    import traceback

    try:
        run("x = 1\nraise ValueError('bad')", {})
    except ValueError as exc:
        text = "".join(traceback.format_exception(exc))
    assert "raise ValueError('bad')" in text


def test_jobs_run_one_at_a_time_on_a_thread_executor() -> None:
    executor = Executor()  # no running loop here: it gets a thread of its own
    active: list[int] = []
    overlaps: list[bool] = []

    async def job() -> None:
        active.append(1)
        overlaps.append(len(active) > 1)
        await asyncio.sleep(0.05)
        active.pop()

    futures = [executor.submit(i, job, lambda: None) for i in range(5)]
    for future in futures:
        future.result(5)
    assert overlaps == [False] * 5


def test_interrupting_an_awaiting_job() -> None:
    executor = Executor()
    started = threading.Event()

    async def job() -> None:
        await asyncio.sleep(30)

    future = executor.submit("key", job, started.set)
    assert started.wait(5)
    time.sleep(0.05)
    assert executor.interrupt("other") is False
    assert executor.interrupt("key") is True
    with pytest.raises(Interrupted):
        future.result(5)


def test_partial_lines_are_sent_when_flushed_or_at_the_end() -> None:
    sent: list[dict[str, Any]] = []
    with forward_output(sent.append):
        print("a", end="")
        print("b", end="")
        assert sent == []
        print("c", end="", flush=True)
        assert sent == [{"stream": "stdout", "text": "abc"}]
        print("tail", end="")
    assert sent[-1] == {"stream": "stdout", "text": "tail"}


def test_forwarded_output_is_sent_not_printed(capsys: pytest.CaptureFixture[str]) -> None:
    sent: list[dict[str, Any]] = []
    with forward_output(sent.append):
        print("to the caller")
        import sys

        print("warning", file=sys.stderr)
    print("local again")
    assert {"stream": "stdout", "text": "to the caller\n"} in sent  # one message per line
    assert {"stream": "stderr", "text": "warning\n"} in sent
    assert capsys.readouterr().out == "local again\n"
