"""Remote execution: serve this kernel's contexts, and run cells and functions on other peers.

The boundary is explicit, as in Spindel: a remote body sees only the
arguments it is given and the names of the context it runs in. Every free name
is checked on the serving side before anything runs, and one
:class:`UnboundNames` error lists all that are missing.

Serving is opt-in (:func:`serve`); served code runs on the thread that owns
the namespace, one call at a time, with its output streamed back to the caller.
"""

from __future__ import annotations

import ast
import asyncio
import functools
import inspect
import queue
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from ..core import wire
from ..core.errors import (
    EncodeError,
    NotServed,
    RemoteTimeout,
    SpindelError,
    SpindelWarning,
    UnboundNames,
    UnsendableResult,
)
from ..core.home import in_kernel, shell
from ..core.protocol import OWN
from ..peer import client
from . import contexts
from .executor import Cell, Executor, compile_cell, forward_output, rich_bundle, transform
from .freenames import free_names

OP_CALL = "call"
#: ``--allow`` entry that lets every peer call, invited ones included.
EVERYONE = "*"
#: One-way messages from the serving peer to the caller while a call runs.
OP_OUTPUT = "output"

#: A call running longer than this shows that it is still running.
PROGRESS_AFTER = 3.0
#: A call not started within this long is reported to the caller as queued.
QUEUED_AFTER = 0.2

_MISSING = object()
F = TypeVar("F", bound=Callable[..., Any])
Send = Callable[[dict[str, Any]], None]


# -- serving ---------------------------------------------------------------------


class _Server:
    """This process's serving state: which contexts, for whom, and where code runs."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self.contexts: set[str] = set()
        #: Callers allowed by name (``*``: every peer); None: the server's own peers only.
        self.allow: set[str] | None = None

    def describe(self) -> str:
        if self.allow is None:
            who = "this server's own peers (invited peers need --allow NAME)"
        elif EVERYONE in self.allow:
            who = "every peer of the hub, invited ones included"
        else:
            who = ", ".join(sorted(self.allow)) + " only" if self.allow else "no one"
        names = sorted(self.contexts)
        served = ["this kernel's namespace" if c == contexts.DEFAULT else f"context {c!r}" for c in names]
        return f"serving {', '.join(served)} to {who}"

    def check_caller(self, me: str, call: client.Incoming) -> None:
        """Refuse a caller this kernel does not serve, before anything runs."""
        if self.allow is None:
            if call.scope != OWN:
                raise NotServed(
                    f"peer {me!r} serves only this server's own peers, and {call.sender!r} joined with "
                    f"an invite: to let it call, run %spin_serve --allow {call.sender} on {me}"
                )
        elif EVERYONE not in self.allow and call.sender not in self.allow:
            allowed = ", ".join(sorted(self.allow)) or "no one"
            raise NotServed(
                f"peer {me!r} does not serve calls from {call.sender!r} (it allows: {allowed}); "
                f"to let it call, add it: %spin_serve --allow {','.join(sorted({*self.allow, call.sender}))}"
            )

    def handle_call(self, call: client.Incoming) -> Any:
        me = client.current_peer().name
        self.check_caller(me, call)
        body = call.body if isinstance(call.body, dict) else {}
        context = str(body.get("context") or contexts.DEFAULT)
        if context not in self.contexts:
            served = ", ".join(sorted(self.contexts))
            raise NotServed(f"peer {me!r} does not serve context {context!r} (it serves: {served})")
        target = me if context == contexts.DEFAULT else f"{me}/{context}"
        output = functools.partial(_send_output, call.sender, call.id)
        state = {"started": False, "queued": False}

        def on_start() -> None:
            state["started"] = True
            if state["queued"]:
                output({"status": "running"})

        def report_queued() -> None:
            if not state["started"]:
                state["queued"] = True
                output({"status": "queued"})

        asyncio.get_running_loop().call_later(QUEUED_AFTER, report_queued)
        job = functools.partial(self._execute, body, context, target, output)
        return self.executor.submit((call.sender, call.id), job, on_start)

    def handle_cancel(self, message: client.Incoming) -> None:
        self.executor.interrupt((message.sender, message.body))

    def _execute(self, body: dict[str, Any], context: str, target: str, output: Send) -> Any:
        """Run one call on the home thread: its encoded result, or an awaitable of it."""
        namespace = contexts.namespace(context)
        if body.get("kind") == "function":
            return self._call_function(body, namespace, target, output)
        return self._run_cell(body, namespace, target, output)

    def _run_cell(self, body: dict[str, Any], namespace: dict[str, Any], target: str, output: Send) -> Any:
        source = _transform(str(body.get("source", "")))
        cell = compile_cell(source)
        args = dict(body.get("args") or {})
        _check_bound(_free_names(source), namespace, args, target)
        saved = {name: namespace.get(name, _MISSING) for name in args}
        namespace.update(args)
        if cell.is_async:
            return self._run_async_cell(cell, namespace, args, saved, output)
        try:
            with forward_output(output):
                value = cell.run(namespace)
        finally:
            _restore(namespace, args, saved)
        return _encoded_value(value, with_bundle=True)

    async def _run_async_cell(
        self, cell: Cell, namespace: dict[str, Any], args: dict[str, Any], saved: dict[str, Any], output: Send
    ) -> wire.Encoded:
        try:
            with forward_output(output):
                value = await cell.run_async(namespace)
        finally:
            _restore(namespace, args, saved)
        return _encoded_value(value, with_bundle=True)

    def _call_function(
        self, body: dict[str, Any], namespace: dict[str, Any], target: str, output: Send
    ) -> Any:
        source, name = str(body.get("source", "")), str(body.get("name", ""))
        code = _compile_function(source)
        _check_bound(_free_names(source) - {name}, namespace, {}, target)
        scratch: dict[str, Any] = {}
        exec(code, namespace, scratch)
        with forward_output(output):
            result = scratch[name](*body.get("args", []), **body.get("kwargs", {}))
        if inspect.isawaitable(result):
            return self._await_function(result, output)
        return _encoded_value(result)

    async def _await_function(self, awaitable: Awaitable[Any], output: Send) -> wire.Encoded:
        with forward_output(output):
            result = await awaitable
        return _encoded_value(result)


@functools.lru_cache(maxsize=512)
def _free_names(source: str) -> set[str]:
    return free_names(source)


@functools.lru_cache(maxsize=512)
def _compile_function(source: str) -> Any:
    return compile(source, "<remote function>", "exec")


@functools.lru_cache(maxsize=512)
def _transform(source: str) -> str:
    return transform(source)


def _restore(namespace: dict[str, Any], args: dict[str, Any], saved: dict[str, Any]) -> None:
    """Arguments do not stay in the remote namespace unless the body rebound them."""
    for name, old in saved.items():
        if namespace.get(name, _MISSING) is args[name]:
            if old is _MISSING:
                namespace.pop(name, None)
            else:
                namespace[name] = old


def _check_bound(free: Iterable[str], namespace: dict[str, Any], args: dict[str, Any], target: str) -> None:
    missing = sorted(name for name in free if name not in args and name not in namespace)
    if not missing:
        return
    listed = ", ".join(repr(n) for n in missing)
    these = "it as an argument" if len(missing) == 1 else "them as arguments"
    defined = "is" if len(missing) == 1 else "are"
    host = target.split("/", 1)[0]
    example = f"%%spin_remote {target} {' '.join(missing)}"
    raise UnboundNames(
        f"{'name' if len(missing) == 1 else 'names'} {listed} {defined} not defined on {target}: "
        f"pass {these} ({example}) or define {'it' if len(missing) == 1 else 'them'} on {host}",
        missing,
    )


def _encoded_value(value: Any, with_bundle: bool = False) -> wire.Encoded:
    try:
        return wire.encode_buffers({"value": value}, where="the result")
    except EncodeError as exc:
        kind = f"{type(value).__module__}.{type(value).__qualname__}"
        bundle = rich_bundle(value) if with_bundle else {}
        message = f"the result, a {kind}, cannot be sent back: {exc}"
        return wire.encode_buffers({"unsendable": message, "bundle": bundle})


def _send_output(to: str, request_id: int | None, item: dict[str, Any]) -> None:
    client.current_peer().send(to, OP_OUTPUT, {"re": request_id, **item})


_server: _Server | None = None
_server_lock = threading.Lock()


def serve(context: str | None = None, allow: Iterable[str] | None = None) -> str:
    """Opt in to serving remote calls; nothing is served before this.

    ``context`` names a context to serve (created empty if it does not exist);
    by default the kernel's own namespace. ``allow`` names the peers that may
    call (``"*"``: every peer of the hub, invited ones included, with a warning);
    by default only the server's own peers may, never invited ones. Returns a
    one-line summary.
    """
    if allow is not None:
        allow = {str(p) for p in allow}
        if EVERYONE in allow:
            warnings.warn(
                "serving every peer of the hub: invited teammates too can run any code in this kernel",
                SpindelWarning,
                stacklevel=2,
            )
    global _server
    peer = client.current_peer()
    with _server_lock:
        if _server is None:
            _server = _Server(Executor())
        name = context or contexts.DEFAULT
        if name not in contexts.list_contexts():
            contexts.register_context(name)
        _server.contexts.add(name)
        if allow is not None:
            _server.allow = set(allow)
        peer.handle(OP_CALL, _server.handle_call)
        peer.handle("cancel", _server.handle_cancel)
        peer.set_contexts(sorted(_server.contexts))
        return _server.describe()


def unserve() -> None:
    """Stop serving remote calls (calls already running finish)."""
    global _server
    with _server_lock:
        _server = None
    try:
        peer = client.current_peer()
    except SpindelError:
        return
    peer.handle(OP_CALL, None)
    peer.handle("cancel", None)
    peer.set_contexts([])


def serving() -> str:
    """What this process serves, in one line."""
    server = _server
    return server.describe() if server is not None else "not serving"


def _on_register(name: str) -> None:
    server = _server
    if server is not None:
        server.contexts.add(name)
        client.current_peer().set_contexts(sorted(server.contexts))


contexts.on_register(_on_register)


# -- calling ---------------------------------------------------------------------

_sinks: dict[tuple[str, int], Callable[[dict[str, Any]], None]] = {}


def _route_output(message: client.Incoming) -> None:
    body = message.body if isinstance(message.body, dict) else {}
    sink = _sinks.get((message.sender, body.get("re", -1)))
    if sink is not None:
        sink(body)


def _split(target: str) -> tuple[str, str | None]:
    peer, _, context = target.partition("/")
    if not peer:
        raise ValueError(f"bad target {target!r}: use PEER or PEER/CONTEXT")
    return peer, context or None


class _Display:
    """Shows what a running call sends: its output, and a status line while it is slow or queued."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.started = time.monotonic()
        self.status = ""
        self._handle: Any = None
        self._shown = ""

    def show(self, item: dict[str, Any]) -> None:
        if "stream" in item:
            stream = sys.stdout if item["stream"] == "stdout" else sys.stderr
            stream.write(str(item.get("text", "")))
            stream.flush()
        elif "display" in item:
            _publish(item["display"])
        elif "clear" in item:
            _clear_output(bool(item["clear"]))
        elif "status" in item:
            self.status = str(item["status"])
            self.tick()

    def tick(self) -> None:
        elapsed = time.monotonic() - self.started
        if self.status == "queued":
            text = f"{self.target} is busy running a cell; this call is queued ({elapsed:.0f} s)"
        elif elapsed >= PROGRESS_AFTER:
            text = f"running on {self.target}… {elapsed:.0f} s"
        else:
            return
        self._status_line(text)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.update({"text/plain": ""}, raw=True)

    def _status_line(self, text: str) -> None:
        if text == self._shown or not in_kernel():
            return
        from IPython.display import display

        self._shown = text
        bundle = {"text/plain": text, "text/html": f"<span style='opacity:0.7'>⏳ {text}</span>"}
        if self._handle is None:
            self._handle = display(bundle, raw=True, display_id=True)
        else:
            self._handle.update(bundle, raw=True)


def _publish(display: dict[str, Any]) -> None:
    data, metadata = display.get("data") or {}, display.get("metadata") or {}
    if shell() is not None:
        from IPython.display import publish_display_data

        publish_display_data(data, metadata)
        return
    print(data.get("text/plain", ""))


def _clear_output(wait: bool) -> None:
    if in_kernel():
        from IPython.display import clear_output

        clear_output(wait=wait)


def _prepare(peer: client.Peer) -> None:
    if peer.handler(OP_OUTPUT) is not _route_output:
        peer.handle(OP_OUTPUT, _route_output)


def _timed_out(target: str, timeout: float | None) -> RemoteTimeout:
    return RemoteTimeout(f"{target} did not finish within {timeout} s; the call was interrupted there")


def _result(header: dict[str, Any], payload: memoryview, peer_name: str) -> Any:
    reply = client.reply_value(header, payload, peer_name)
    if isinstance(reply, dict) and "value" in reply:
        return reply["value"]
    if isinstance(reply, dict) and "unsendable" in reply:
        raise UnsendableResult(str(reply["unsendable"]), reply.get("bundle"))
    raise SpindelError(f"malformed reply from {peer_name!r}")


def _call(target: str, body: dict[str, Any], timeout: float | None) -> Any:
    """Send a call and wait for it, showing its output as it comes; the result's value."""
    peer = client.current_peer()
    name, context = _split(target)
    body["context"] = context
    _prepare(peer)
    inbox: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
    rid = peer.next_id()
    _sinks[(name, rid)] = inbox.put
    display = _Display(target)
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        _, future = peer.submit(name, OP_CALL, body, rid=rid)
        future.add_done_callback(lambda _: inbox.put(None))
        while True:
            wait = 0.25 if deadline is None else max(0.0, min(0.25, deadline - time.monotonic()))
            try:
                item = inbox.get(timeout=wait)
            except queue.Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    peer.cancel(name, rid)
                    raise _timed_out(target, timeout) from None
                display.tick()
                continue
            if item is None:
                break
            display.show(item)
    except KeyboardInterrupt:
        peer.cancel(name, rid)
        raise
    finally:
        _sinks.pop((name, rid), None)
        display.close()
    header, payload = future.result()
    return _result(header, payload, name)


async def _acall(target: str, body: dict[str, Any], timeout: float | None) -> Any:
    """:func:`_call` for an event loop: awaitable, so several calls can run at once."""
    peer = client.current_peer()
    name, context = _split(target)
    body["context"] = context
    _prepare(peer)
    loop = asyncio.get_running_loop()
    display = _Display(target)
    rid = peer.next_id()

    def sink(item: dict[str, Any]) -> None:
        loop.call_soon_threadsafe(display.show, item)

    _sinks[(name, rid)] = sink
    try:
        _, future = peer.submit(name, OP_CALL, body, rid=rid)
        header, payload = await asyncio.wait_for(asyncio.wrap_future(future), timeout)
    except (asyncio.TimeoutError, TimeoutError):
        peer.cancel(name, rid)
        raise _timed_out(target, timeout) from None
    except asyncio.CancelledError:
        peer.cancel(name, rid)
        raise
    finally:
        _sinks.pop((name, rid), None)
    return _result(header, payload, name)


def run(target: str, source: str, args: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
    """Run ``source`` like a cell on ``target`` (``PEER`` or ``PEER/CONTEXT``); its last value.

    ``args`` are the only local values the body sees. Output streams back while
    it runs. Raises :class:`RemoteError` for an exception there,
    :class:`UnboundNames` before anything runs if the body reads names that are
    neither arguments nor defined remotely, and :class:`UnsendableResult` (with
    the value's rich display) if the result cannot travel.
    """
    body = {"kind": "cell", "source": source, "args": dict(args or {})}
    return _call(target, body, timeout)


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
        return _call(self.target, self._body(args, kwargs), self.timeout)

    async def aio(self, *args: Any, **kwargs: Any) -> Any:
        """Awaitable call, e.g. ``await asyncio.gather(f.aio(1), g.aio(2))``."""
        return await _acall(self.target, self._body(args, kwargs), self.timeout)


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


def call(peer: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn(*args, **kwargs)`` once on ``peer`` (``PEER`` or ``PEER/CONTEXT``)."""
    name, context = _split(peer)
    plain = fn.fn if isinstance(fn, RemoteFunction) else fn
    return RemoteFunction(plain, name, context, None)(*args, **kwargs)


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
