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
import io
import linecache
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from .errors import Interrupted
from .home import home

Send = Callable[[dict[str, Any]], None]


class Executor:
    """Runs jobs one at a time on the namespace's thread; can interrupt the running one."""

    def __init__(self) -> None:
        place = home()
        self.loop = place.loop
        self.thread = place.thread
        self._lock: asyncio.Lock | None = None
        self._running: tuple[object, asyncio.Task[Any]] | None = None
        self._state = threading.Lock()
        # True only while served code itself runs (not while the loop waits): a
        # SIGINT then interrupts it; at any other moment it is ignored.
        self._in_step = False

    def submit(
        self, key: object, job: Callable[[], Awaitable[Any]], on_start: Callable[[], None]
    ) -> concurrent.futures.Future[Any]:
        """Schedule ``job``; ``on_start`` runs (on the executor's thread) when it begins."""
        return asyncio.run_coroutine_threadsafe(self._run(key, job, on_start), self.loop)

    async def _run(self, key: object, job: Callable[[], Awaitable[Any]], on_start: Callable[[], None]) -> Any:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            on_start()
            task = asyncio.ensure_future(self._interruptible(job))
            with self._state:
                self._running = (key, task)
            try:
                return await task
            finally:
                with self._state:
                    self._running = None

    async def _interruptible(self, job: Callable[[], Awaitable[Any]]) -> Any:
        on_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, self._on_sigint) if on_main else None
        try:
            return await _Stepped(job(), self)
        except (KeyboardInterrupt, asyncio.CancelledError):
            raise Interrupted("interrupted: the caller stopped waiting") from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self._in_step:
            raise KeyboardInterrupt

    def interrupt(self, key: object) -> bool:
        """Interrupt job ``key`` if it is the one running; say whether it was."""
        with self._state:
            if self._running is None or self._running[0] != key:
                return False
            task = self._running[1]
            if self.thread is threading.main_thread() and self.thread.ident is not None:
                signal.pthread_kill(self.thread.ident, signal.SIGINT)
        self.loop.call_soon_threadsafe(task.cancel)
        return True


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
    """A text stream that forwards every write to the caller."""

    def __init__(self, name: str, send: Send) -> None:
        self.name = name
        self._send = send

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if text:
            self._send({"stream": self.name, "text": text})
        return len(text)


@contextlib.contextmanager
def forward_output(send: Send) -> Iterator[None]:
    """Send stdout, stderr and ``display()`` output to the caller instead of this kernel's cell."""
    shell = _shell()
    previous = None
    if shell is not None:
        publisher = _forwarding_publisher(shell)
        publisher.send = send
        previous, shell.display_pub = shell.display_pub, publisher
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Forward("stdout", send), _Forward("stderr", send)
    try:
        yield
        _flush_figures()
    finally:
        sys.stdout, sys.stderr = out, err
        if previous is not None:
            shell.display_pub = previous


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


def _shell() -> Any:
    if "IPython" not in sys.modules:
        return None
    from IPython import get_ipython

    return get_ipython()


def rich_bundle(value: Any) -> dict[str, Any]:
    """The mimebundle a notebook would show for ``value`` (text only outside IPython)."""
    shell = _shell()
    if shell is not None:
        data, metadata = shell.display_formatter.format(value)
        return {"data": data, "metadata": metadata}
    return {"data": {"text/plain": repr(value)}, "metadata": {}}


def transform(source: str) -> str:
    """IPython's input transforms (magics, ``!cmd``) when running in IPython; else the source."""
    shell = _shell()
    return str(shell.transform_cell(source)) if shell is not None else source


_FLAGS = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT


async def run_source(source: str, namespace: dict[str, Any], filename: str) -> Any:
    """Run ``source`` like a notebook cell in ``namespace``: top-level await, last expression's value."""
    tree = ast.parse(source, filename)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    assert last is None or isinstance(last, ast.Expr)
    lines = source.splitlines(keepends=True)
    linecache.cache[filename] = (len(source), None, lines, filename)
    result = eval(compile(tree, filename, "exec", flags=_FLAGS), namespace)
    if asyncio.iscoroutine(result):
        await result
    if last is None:
        return None
    value = eval(compile(ast.Expression(last.value), filename, "eval", flags=_FLAGS), namespace)
    if asyncio.iscoroutine(value):
        value = await value
    return value
