"""Running served code: cell semantics, one at a time, interrupts and forwarded output."""

from __future__ import annotations

import asyncio
import contextvars
import signal
import threading
import time
from typing import Any

import pytest

from spindel_jupyter.core.home import Home
from spindel_jupyter.kernel import executor as executor_module
from spindel_jupyter.kernel.executor import Executor, Interrupted, compile_cell, forward_output


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


def test_a_job_runs_in_its_own_context_and_nothing_else_the_home_loop_runs_sees_it() -> None:
    """What a job's context holds (a call's caller) is the job's, an awaiting job's too, while
    the home loop runs other work (a kernel's awaiting cell) that must not see it."""
    executor = Executor()
    who: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")
    seen_meanwhile: list[str] = []
    stop = threading.Event()

    def holding(name: str) -> contextvars.Context:
        context = contextvars.Context()
        context.run(who.set, name)
        return context

    def reads() -> str:
        return who.get()

    async def awaits() -> tuple[str, str]:
        before = who.get()
        await asyncio.sleep(0.1)  # the watcher runs meanwhile
        return before, who.get()

    def sets() -> None:
        who.set("leaked")

    async def watch() -> None:
        while not stop.is_set():
            seen_meanwhile.append(who.get())
            await asyncio.sleep(0.005)

    watcher = asyncio.run_coroutine_threadsafe(watch(), executor.loop)
    futures = [
        executor.submit("a", reads, lambda: None, holding("alice")),
        executor.submit("b", awaits, lambda: None, holding("bob")),
        executor.submit("c", sets, lambda: None),
        executor.submit("d", reads, lambda: None),
    ]
    results = [future.result(5) for future in futures]
    stop.set()
    watcher.result(5)
    assert results == ["alice", ("bob", "bob"), None, "nobody"]
    assert seen_meanwhile and set(seen_meanwhile) == {"nobody"}
    assert who.get() == "nobody"


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


def test_an_interrupt_that_lands_after_its_job_spares_the_next_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SIGINT sent to interrupt a job arrives later, on the main thread: it stops that job or none.

    Job A keeps SIGINT blocked, so the signal sent for it stays pending until job B
    unblocks it. A keeps its result: it finished before the interrupt could stop it.
    """
    loop = asyncio.new_event_loop()
    monkeypatch.setattr(executor_module, "home", lambda: Home(loop, threading.main_thread()))
    executor = Executor()  # on this (main) thread: the one SIGINT reaches
    a_runs, interrupt_sent = threading.Event(), threading.Event()
    was_running: list[bool] = []

    def job_a() -> str:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        a_runs.set()
        interrupt_sent.wait(5)
        return "a"

    def job_b() -> str:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # A's SIGINT is handled here
        return "b"

    def interrupt_a() -> None:
        if a_runs.wait(5):
            was_running.append(executor.interrupt("a"))
        interrupt_sent.set()

    async def both() -> list[Any]:
        futures = [executor.submit(key, job, lambda: None) for key, job in (("a", job_a), ("b", job_b))]
        return await asyncio.gather(*map(asyncio.wrap_future, futures), return_exceptions=True)

    mask = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    handler = signal.getsignal(signal.SIGINT)
    helper = threading.Thread(target=interrupt_a)
    helper.start()
    try:
        results = loop.run_until_complete(both())
        assert was_running == [True]
        assert results == ["a", "b"]
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # drops a SIGINT still pending
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        signal.signal(signal.SIGINT, handler)
        helper.join(5)
        loop.close()


def test_a_sigint_nobody_here_sent_stops_the_served_job(monkeypatch: pytest.MonkeyPatch) -> None:
    """The serving kernel's own interrupt button (a SIGINT from outside) stops the served code."""
    loop = asyncio.new_event_loop()
    monkeypatch.setattr(executor_module, "home", lambda: Home(loop, threading.main_thread()))
    executor = Executor()
    runs = threading.Event()

    def job() -> str:
        runs.set()
        for _ in range(500):
            time.sleep(0.01)
        return "finished"

    def press_interrupt() -> None:
        if runs.wait(5):
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    handler = signal.getsignal(signal.SIGINT)
    helper = threading.Thread(target=press_interrupt)
    helper.start()
    try:

        async def served() -> list[Any]:
            future = executor.submit("job", job, lambda: None)
            return await asyncio.gather(asyncio.wrap_future(future), return_exceptions=True)

        assert isinstance(loop.run_until_complete(served())[0], Interrupted)
    finally:
        signal.signal(signal.SIGINT, handler)
        helper.join(5)
        loop.close()
