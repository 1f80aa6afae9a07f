"""Calling: run cells and functions on other peers, waiting for them or awaiting them.

:func:`run` sends a cell; :func:`remote`, :class:`RemoteFunction` and
:func:`call` send a function. Every call, blocking or awaitable, takes the one
path of :func:`_calling`: it sends the call, shows what the serving peer sends
back while it runs, tells that peer to stop it at its timeout or on an
interrupt, and returns its value. A blocking call runs that coroutine to its end
on the calling thread; an awaitable one is awaited, so several can run at once.
"""

from __future__ import annotations

import ast
import asyncio
import functools
import inspect
import queue
import textwrap
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

from ..core.errors import RemoteTimeout, SpindelError, UnsendableResult
from ..core.protocol import OP_CALL, OP_OUTPUT, same_peer, split_peer
from ..peer import client
from .display import CallDisplay

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
#: What arrives for a running call: an item of its output, or None once its reply is in.
Item = dict[str, Any] | None

#: How often a waiting call wakes to update its status line and check its timeout, in seconds.
_TICK = 0.25

#: Where each running call's output goes, by (serving peer's name without its hub, request id):
#: the name as called, and the sink.
_sinks: dict[tuple[str, int], tuple[str, Callable[[Item], None]]] = {}


class _Inbox(Protocol):
    """Where a running call's items arrive: put from the connection thread, taken by the call."""

    def put(self, item: Item) -> None: ...

    async def get(self, timeout: float) -> Item:
        """The next item; :class:`queue.Empty` if none came within ``timeout`` seconds."""
        ...


class _BlockingInbox:
    """An inbox that blocks the calling thread: a coroutine that waits only on it never suspends."""

    def __init__(self) -> None:
        self._items: queue.SimpleQueue[Item] = queue.SimpleQueue()

    def put(self, item: Item) -> None:
        self._items.put(item)

    async def get(self, timeout: float) -> Item:
        return self._items.get(timeout=timeout)


class _LoopInbox:
    """An inbox on the running event loop: waiting on it lets the loop's other tasks run."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._items: asyncio.Queue[Item] = asyncio.Queue()

    def put(self, item: Item) -> None:
        self._loop.call_soon_threadsafe(self._items.put_nowait, item)

    async def get(self, timeout: float) -> Item:
        try:
            return await asyncio.wait_for(self._items.get(), timeout)
        except asyncio.TimeoutError:
            raise queue.Empty from None


async def _calling(target: str, body: dict[str, Any], timeout: float | None, inbox: _Inbox) -> Any:
    """Send a call to ``target`` and see it through; its value.

    Its output is shown as it arrives, with a status line while it is queued or
    slow. At ``timeout`` seconds it raises :class:`RemoteTimeout`; then, and on
    an interrupt (``KeyboardInterrupt``, or the awaiting task cancelled), the
    serving peer is told to stop it.
    """
    peer = client.current_peer()
    name, context = _split(target)
    if peer.handler(OP_OUTPUT) is not _route_output:
        peer.handle(OP_OUTPUT, _route_output)
    rid = peer.next_id()
    _sinks[(split_peer(name)[0], rid)] = (name, inbox.put)
    shown = CallDisplay(target)
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        _, reply = peer.submit(name, OP_CALL, {**body, "context": context}, rid=rid)
        reply.add_done_callback(lambda _: inbox.put(None))
        while True:
            wait = _TICK if deadline is None else max(0.0, min(_TICK, deadline - time.monotonic()))
            try:
                item = await inbox.get(wait)
            except queue.Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    peer.cancel(name, rid)
                    raise RemoteTimeout(
                        f"{target} did not finish within {timeout} s; the call was interrupted there"
                    ) from None
                shown.tick()
                continue
            if item is None:
                break
            shown.show(item)
    except (KeyboardInterrupt, asyncio.CancelledError):
        peer.cancel(name, rid)
        raise
    finally:
        _sinks.pop((split_peer(name)[0], rid), None)
        shown.close()
    header, payload = reply.result()
    return _result(header, payload, name)


def _blocking(call: Coroutine[Any, Any, T]) -> T:
    """Run ``call``, a coroutine that waits only on a :class:`_BlockingInbox`, to its end: its value."""
    try:
        call.send(None)
    except StopIteration as done:
        return done.value
    call.close()
    raise RuntimeError("a blocking call suspended: it must wait only on a blocking inbox")


def _route_output(message: client.Incoming) -> None:
    body = message.body if isinstance(message.body, dict) else {}
    name, sink = _sinks.get((split_peer(message.sender)[0], body.get("re", -1)), ("", None))
    if sink is not None and same_peer(message.sender, name):
        sink(body)


def _split(target: str) -> tuple[str, str | None]:
    peer, _, context = target.partition("/")
    if not peer:
        raise ValueError(f"bad target {target!r}: use PEER or PEER/CONTEXT")
    return peer, context or None


def _result(header: dict[str, Any], payload: memoryview, peer_name: str) -> Any:
    reply = client.reply_value(header, payload, peer_name)
    if isinstance(reply, dict) and "value" in reply:
        return reply["value"]
    if isinstance(reply, dict) and "unsendable" in reply:
        raise UnsendableResult(str(reply["unsendable"]), reply.get("bundle"))
    raise SpindelError(f"malformed reply from {peer_name!r}")


def run(target: str, source: str, args: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
    """Run ``source`` like a cell on ``target`` (``PEER`` or ``PEER/CONTEXT``); its last value.

    ``args`` are the only local values the body sees. Output streams back while
    it runs. Raises :class:`RemoteError` for an exception there,
    :class:`UnboundNames` before anything runs if the body reads names that are
    neither arguments nor defined remotely, and :class:`UnsendableResult` (with
    the value's rich display) if the result cannot travel.
    """
    body = {"kind": "cell", "source": source, "args": dict(args or {})}
    return _blocking(_calling(target, body, timeout, _BlockingInbox()))


class RemoteFunction:
    """A function that runs on another peer; call it, or await ``.aio(...)``."""

    def __init__(self, fn: Callable[..., Any], peer: str, context: str | None, timeout: float | None) -> None:
        self.fn = fn
        self.target = peer if context is None else f"{peer}/{context}"
        self.timeout = timeout
        self.source = function_source(fn)
        functools.update_wrapper(self, fn)

    def __repr__(self) -> str:
        return f"<remote function {self.fn.__qualname__} on {self.target}>"

    def _body(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        return {
            "kind": "function",
            "source": self.source,
            "name": self.fn.__name__,
            "args": list(args),
            "kwargs": kwargs,
        }

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _blocking(_calling(self.target, self._body(args, kwargs), self.timeout, _BlockingInbox()))

    async def aio(self, *args: Any, **kwargs: Any) -> Any:
        """Awaitable call, e.g. ``await asyncio.gather(f.aio(1), g.aio(2))``."""
        return await _calling(self.target, self._body(args, kwargs), self.timeout, _LoopInbox())


def remote(
    peer: str, context: str | None = None, timeout: float | None = None
) -> Callable[[F], RemoteFunction]:
    """Decorator: the function runs on ``peer`` (in ``context``), called as usual or awaited via ``.aio``.

    Its globals must be its arguments or exist on ``peer``: they are checked
    there before it runs. It cannot close over local variables of an enclosing
    function; pass those as arguments.
    """

    def wrap(fn: F) -> RemoteFunction:
        return RemoteFunction(fn, peer, context, timeout)

    return wrap


def call(peer: str, fn: Callable[..., Any] | str, *args: Any, **kwargs: Any) -> Any:
    """Run ``fn(*args, **kwargs)`` once on ``peer`` (``PEER`` or ``PEER/CONTEXT``).

    A string ``fn`` names a function that ``peer`` serves (``%spin_serve --functions``):
    ``call("teacher", "grade", answer)`` is ``functions("teacher").grade(answer)``, and
    only the name and the arguments travel.
    """
    if isinstance(fn, str):
        return ServedFunction(peer, fn, None)(*args, **kwargs)
    name, context = _split(peer)
    plain = fn.fn if isinstance(fn, RemoteFunction) else fn
    return RemoteFunction(plain, name, context, None)(*args, **kwargs)


class ServedFunction:
    """A function another peer serves by name (``%spin_serve --functions``): call it, or await
    ``.aio(...)``; only its name and the arguments travel."""

    def __init__(self, target: str, name: str, timeout: float | None) -> None:
        self.target, self.name, self.timeout = target, name, timeout

    def __repr__(self) -> str:
        return f"<function {self.name} served by {self.target}>"

    def _body(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        return {"kind": "named", "name": self.name, "args": list(args), "kwargs": kwargs}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _blocking(_calling(self.target, self._body(args, kwargs), self.timeout, _BlockingInbox()))

    async def aio(self, *args: Any, **kwargs: Any) -> Any:
        """Awaitable call."""
        return await _calling(self.target, self._body(args, kwargs), self.timeout, _LoopInbox())


class Functions:
    """The functions ``peer`` serves by name: ``functions("grader@teacher").grade(answer)``."""

    def __init__(self, peer: str, timeout: float | None = None) -> None:
        _split(peer)
        self._target, self._timeout = peer, timeout

    def __getattr__(self, name: str) -> ServedFunction:
        if name.startswith("_"):
            raise AttributeError(name)  # served functions have public names
        return ServedFunction(self._target, name, self._timeout)

    def __repr__(self) -> str:
        return f"<functions served by {self._target}>"


def functions(peer: str, timeout: float | None = None) -> Functions:
    """The functions ``peer`` (``PEER`` or ``PEER/CONTEXT``) serves by name (``%spin_serve --functions``)."""
    return Functions(peer, timeout)


def function_source(fn: Callable[..., Any]) -> str:
    """The source of ``fn`` as a plain ``def``: no decorators, no annotations."""
    name = getattr(fn, "__name__", "")
    if name == "<lambda>" or not inspect.isfunction(fn):
        raise SpindelError(f"only functions defined with def can run remotely, not {fn!r}")
    if fn.__code__.co_freevars:
        names = ", ".join(fn.__code__.co_freevars)
        raise SpindelError(
            f"{name} uses local variables of an enclosing function ({names}); pass them as arguments"
        )
    try:
        text = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError) as exc:
        raise SpindelError(f"cannot find the source of {name}: {exc}") from None
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            node.decorator_list = []
            node.returns = None
            for arg in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]:
                arg.annotation = None
            for extra in (node.args.vararg, node.args.kwarg):
                if extra is not None:
                    extra.annotation = None
            return ast.unparse(node)
    raise SpindelError(f"cannot find the definition of {name} in its source")
