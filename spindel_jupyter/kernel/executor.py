"""Where served code runs: on the thread that owns the user namespace, one call at a time.

That is the process's home thread (see :mod:`home`): in a kernel the main
thread, so a remote call waits while the kernel runs one of its own cells and
never runs beside it. Code running there can be interrupted (a caller's timeout or interrupt button)
and its output is forwarded to the caller while it runs.
"""

from __future__ import annotations

import ast
import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import hashlib
import inspect
import io
import linecache
import signal
import sys
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from types import CodeType
from typing import Any

from ..core.errors import Interrupted
from ..core.home import home, shell

Send = Callable[[dict[str, Any]], None]


@dataclass(eq=False)
class _Job:
    key: object
    run: Callable[[], Any]
    on_start: Callable[[], None]
    future: concurrent.futures.Future[Any]
    context: contextvars.Context
    task: asyncio.Task[None] | None = None


class Executor:
    """Runs jobs one at a time on the home thread; can interrupt the running one.

    A job is a callable returning its result, or an awaitable of it. Plain jobs
    run to completion inside one callback of the home loop, the cheapest way
    there and back; awaitables continue as a task.
    """

    def __init__(self) -> None:
        place = home()
        self.loop = place.loop
        self.thread = place.thread
        self._queue: deque[_Job] = deque()
        self._running: _Job | None = None
        self._state = threading.Lock()
        # True only while served code itself runs (not while the loop waits): the
        # SIGINT of an interrupt then stops it; at any other moment it is ignored.
        self._in_step = False
        # The job the SIGINT sent by interrupt() is for, until its handler runs: that
        # happens when the main thread next runs Python code, maybe in the next job,
        # which it must not stop. A SIGINT nobody here sent (the kernel's own
        # interrupt button) stops whatever served code runs.
        self._interrupting: _Job | None = None

    def submit(
        self,
        key: object,
        run: Callable[[], Any],
        on_start: Callable[[], None],
        context: contextvars.Context | None = None,
    ) -> concurrent.futures.Future[Any]:
        """Queue ``run``; ``on_start`` runs (on the home thread) when it begins. Thread-safe.

        ``run``, and the awaitable it may return, run in ``context`` (by default an empty
        one): what a job sets in its context variables is its own, and nothing else sees it.
        """
        job = _Job(key, run, on_start, concurrent.futures.Future(), context or contextvars.Context())
        self.loop.call_soon_threadsafe(self._enqueue, job)
        return job.future

    def _enqueue(self, job: _Job) -> None:
        self._queue.append(job)
        self._drain()

    def _drain(self) -> None:
        while self._running is None and self._queue:
            job = self._queue.popleft()
            if job.future.set_running_or_notify_cancel():
                self._start(job)

    def _start(self, job: _Job) -> None:
        with self._state:
            self._running = job
        job.on_start()
        previous = self._trap_sigint()
        try:
            self._in_step = True
            try:
                result = job.context.run(job.run)
            finally:
                self._in_step = False
        except BaseException as exc:
            self._done(job, previous, error=exc)
            return
        if inspect.isawaitable(result):
            # A task runs in a copy of the context it is created in: the job's.
            job.task = job.context.run(self.loop.create_task, self._finish(job, result, previous))
        else:
            self._done(job, previous, result=result)

    async def _finish(self, job: _Job, awaitable: Awaitable[Any], previous: Any) -> None:
        try:
            result = await _Stepped(awaitable, self)
        except BaseException as exc:
            self._done(job, previous, error=exc)
        else:
            self._done(job, previous, result=result)
        self._drain()

    def _trap_sigint(self) -> Any:
        if threading.current_thread() is threading.main_thread():
            return signal.signal(signal.SIGINT, self._on_sigint)
        return None

    def _on_sigint(self, signum: int, frame: Any) -> None:
        meant_for, self._interrupting = self._interrupting, None
        if meant_for is not None and meant_for is not self._running:
            return  # sent for a job that has ended since
        if self._in_step:
            raise KeyboardInterrupt

    def _done(self, job: _Job, previous: Any, result: Any = None, error: BaseException | None = None) -> None:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        with self._state:
            self._running = None
        if isinstance(error, (KeyboardInterrupt, asyncio.CancelledError)):
            error = Interrupted("interrupted: the caller stopped waiting")
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    def interrupt(self, key: object) -> bool:
        """Interrupt job ``key`` if it runs, or drop it if it waits; say whether it was running."""
        with self._state:
            job = self._running
            if job is None or job.key != key:
                self.loop.call_soon_threadsafe(self._cancel_queued, key)
                return False
            self._interrupting = job
            if self.thread is threading.main_thread() and self.thread.ident is not None:
                signal.pthread_kill(self.thread.ident, signal.SIGINT)
            task = job.task
        if task is not None:
            self.loop.call_soon_threadsafe(task.cancel)
        return True

    def _cancel_queued(self, key: object) -> None:
        for job in self._queue:
            if job.key == key:
                job.future.cancel()


class _Stepped:
    """Awaits a coroutine step by step, flagging the executor while its code runs."""

    def __init__(self, coro: Awaitable[Any], executor: Executor) -> None:
        self._coro = coro.__await__()
        self._executor = executor

    def __await__(self) -> Any:
        value: Any = None
        error: BaseException | None = None
        while True:
            self._executor._in_step = True
            try:
                yielded = self._coro.throw(error) if error is not None else self._coro.send(value)
            except StopIteration as stop:
                return stop.value
            finally:
                self._executor._in_step = False
            try:
                value, error = (yield yielded), None
            except BaseException as exc:
                value, error = None, exc


class _Forward(io.TextIOBase):
    """A line-buffered text stream whose lines go to the caller."""

    def __init__(self, name: str, send: Send) -> None:
        self.name = name
        self._send = send
        self._pending: list[str] = []

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending.append(text)
        if "\n" in text:
            self.flush()
        return len(text)

    def flush(self) -> None:
        text = "".join(self._pending)
        self._pending.clear()
        if text:
            self._send({"stream": self.name, "text": text})


@contextlib.contextmanager
def forward_output(send: Send) -> Iterator[None]:
    """Send stdout, stderr and ``display()`` output to the caller instead of this kernel's cell."""
    ip = shell()
    previous = None
    if ip is not None:
        publisher = _forwarding_publisher(ip)
        publisher.send = send
        previous, ip.display_pub = ip.display_pub, publisher
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Forward("stdout", send), _Forward("stderr", send)
    try:
        yield
        _flush_figures()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = out, err
        if previous is not None:
            ip.display_pub = previous


_publishers: dict[int, Any] = {}


def _forwarding_publisher(shell: Any) -> Any:
    """One display publisher per shell that sends ``display()`` output to its ``send``."""
    publisher = _publishers.get(id(shell))
    if publisher is None:
        from IPython.core.displaypub import DisplayPublisher

        class _Publisher(DisplayPublisher):
            send: Send = staticmethod(lambda item: None)

            def publish(self, data: dict[str, Any], metadata: Any = None, *args: Any, **kwargs: Any) -> None:
                self.send({"display": {"data": data, "metadata": metadata or {}}})

            def clear_output(self, wait: bool = False) -> None:
                self.send({"clear": wait})

        publisher = _publishers[id(shell)] = _Publisher(shell=shell)
    return publisher


def _flush_figures() -> None:
    """Show figures the code drew (the inline backend does this after a cell; we are not a cell)."""
    backend = sys.modules.get("matplotlib_inline.backend_inline")
    if backend is not None:
        backend.flush_figures()


def rich_bundle(value: Any) -> dict[str, Any]:
    """The mimebundle a notebook would show for ``value`` (text only outside IPython)."""
    ip = shell()
    if ip is not None:
        data, metadata = ip.display_formatter.format(value)
        return {"data": data, "metadata": metadata}
    return {"data": {"text/plain": repr(value)}, "metadata": {}}


def transform(source: str) -> str:
    """IPython's input transforms (magics, ``!cmd``) when running in IPython; else the source."""
    ip = shell()
    return str(ip.transform_cell(source)) if ip is not None else source


_FLAGS = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT


@dataclass(frozen=True)
class Cell:
    """A cell body compiled once: its statements, its last expression, and whether it awaits."""

    body: CodeType
    last: CodeType | None
    is_async: bool

    def run(self, namespace: dict[str, Any]) -> Any:
        """Run a cell without top-level await; the last expression's value."""
        exec(self.body, namespace)
        return eval(self.last, namespace) if self.last is not None else None

    async def run_async(self, namespace: dict[str, Any]) -> Any:
        """Run a cell that may await at top level; the last expression's value."""
        result = eval(self.body, namespace)
        if inspect.iscoroutine(result):
            await result
        if self.last is None:
            return None
        value = eval(self.last, namespace)
        return await value if inspect.iscoroutine(value) else value


@functools.lru_cache(maxsize=512)
def compile_cell(source: str) -> Cell:
    """Compile ``source`` like a notebook cell (cached: the same body sent again costs nothing)."""
    filename = f"<remote cell {hashlib.sha1(source.encode()).hexdigest()[:8]}>"
    tree = ast.parse(source, filename)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    assert last is None or isinstance(last, ast.Expr)
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    body = compile(tree, filename, "exec", flags=_FLAGS)
    expr = compile(ast.Expression(last.value), filename, "eval", flags=_FLAGS) if last is not None else None
    is_async = any(bool(c.co_flags & inspect.CO_COROUTINE) for c in (body, expr) if c is not None)
    return Cell(body, expr, is_async)
