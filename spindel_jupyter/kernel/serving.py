"""Serving: this kernel's contexts, opened to other peers' calls.

Serving is opt-in (:func:`serve`), and by default only for the server's own
peers: an invited one is let in by name (``allow``), a user's peers by the
user's name (``user:NAME``: the user the hub stamps on each caller; for a peer
of another hub, the user its hub says it acts for). The boundary is explicit,
as in Spindel: a served body sees only the arguments it is given and the names
of the context it runs in. Every free name is checked here before anything
runs, and one :class:`UnboundNames` error lists all that are missing.

Served code runs on the thread that owns the namespace, one call at a time,
with its output streamed back to the caller; :func:`caller` tells it who that is.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import threading
import warnings
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..core import wire
from ..core.errors import EncodeError, NotServed, SpindelError, SpindelWarning, UnboundNames
from ..core.protocol import CANCEL, MESH, OP_CALL, OP_OUTPUT, OWN, split_peer
from ..peer import client
from . import contexts
from .executor import Cell, Executor, compile_cell, forward_output, rich_bundle, transform
from .freenames import free_names

#: ``--allow`` entry that lets every peer call, invited ones included.
EVERYONE = "*"
#: The kind of call that names a served function (functions-only serving: no code travels).
NAMED = "named"
#: How an ``--allow`` entry names a user (``user:NAME``): every peer acting for that user, on any hub.
USER = "user:"
#: A call not started within this long is reported to the caller as queued.
QUEUED_AFTER = 0.2

_MISSING = object()
Send = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Caller:
    """Who made the call being served, as the hubs stamped it: a caller cannot pass for another."""

    #: The calling peer as the hub stamped it: ``NAME`` for a peer of this hub, ``NAME@HUB`` for
    #: one of another hub (what ``call()`` and ``--allow`` take).
    peer: str
    #: The user it acts for: the user its server admitted it for (for a peer of another hub, as
    #: its hub says), ``invite:NAME`` for an invited peer.
    user: str
    #: The hub it is connected to.
    hub: str


_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("spindel_caller", default=None)


def caller() -> Caller | None:
    """Who called the function (or cell) being served, e.g. to record each student's progress;
    None outside a remote call.

    It holds for that call only, in the call's own context: the kernel's cells and other calls
    never see it, nor do threads the call starts (tasks it creates do).
    """
    return _caller.get()


class _Server:
    """This process's serving state: which contexts, for whom, and where code runs."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self.contexts: set[str] = set()
        #: Callers allowed by name (``*``: every peer); None: the server's own peers only.
        self.allow: set[str] | None = None
        #: Functions-only serving: the names of the only functions callers may call; None: code is served.
        self.functions: set[str] | None = None

    def describe(self) -> str:
        if self.allow is None:
            who = "this server's own peers (invited peers and peers of other hubs need --allow NAME)"
        elif EVERYONE in self.allow:
            named = sorted(n for n in self.allow if "@" in n)
            others = f", and {', '.join(named)}" if named else " (peers of other hubs need --allow NAME@HUB)"
            who = f"every peer of this hub, invited ones included{others}"
        else:
            who = ", ".join(sorted(self.allow)) + " only" if self.allow else "no one"
        names = sorted(self.contexts)
        served = ["this kernel's namespace" if c == contexts.DEFAULT else f"context {c!r}" for c in names]
        if self.functions is not None:
            served = [f"only the functions {', '.join(sorted(self.functions))} (no code)"]
        return f"serving {', '.join(served)} to {who}"

    def check_caller(self, me: str, call: client.Incoming) -> None:
        """Refuse a caller this kernel does not serve, before anything runs.

        A peer of another hub is served only when allowed by its name (``NAME@HUB``):
        ``*`` opens this kernel to the peers of its own hub, not to the whole mesh.
        """
        entries = self.allow or set()
        users = {entry[len(USER) :] for entry in entries if entry.startswith(USER)}
        if (call.sender in entries and not call.sender.startswith(USER)) or (
            call.user and call.user in users
        ):
            return
        if call.scope == MESH:
            let_in = ",".join(sorted({*entries, call.sender}))
            of_user = f" (or every peer of its user: --allow {USER}{call.user})" if call.user else ""
            raise NotServed(
                f"peer {me!r} does not serve calls from {call.sender!r}, a peer of another hub: peers of "
                f"other hubs are served only when allowed by name; to let it call, run "
                f"%spin_serve --allow {let_in}{of_user} on {me}"
            )
        if self.allow is None:
            if call.scope != OWN:
                raise NotServed(
                    f"peer {me!r} serves only this server's own peers, and {call.sender!r} joined with "
                    f"an invite: to let it call, run %spin_serve --allow {call.sender} on {me}"
                )
        elif EVERYONE not in self.allow:
            allowed = ", ".join(sorted(self.allow)) or "no one"
            raise NotServed(
                f"peer {me!r} does not serve calls from {call.sender!r} (it allows: {allowed}); "
                f"to let it call, add it: %spin_serve --allow {','.join(sorted({*self.allow, call.sender}))}"
            )

    def handle_call(self, call: client.Incoming) -> Any:
        peer = client.current_peer()
        me = peer.name
        self.check_caller(me, call)
        body = call.body if isinstance(call.body, dict) else {}
        self.check_kind(me, body)
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
        scope = contextvars.Context()
        scope.run(_caller.set, Caller(call.sender, call.user, split_peer(call.sender)[1] or peer.hub))
        return self.executor.submit((call.sender, call.id), job, on_start, scope)

    def check_kind(self, me: str, body: dict[str, Any]) -> None:
        """Refuse, before anything runs, a call this kernel does not serve: code sent to a kernel
        serving only functions, a function it does not serve, or a function call to one serving code."""
        if self.functions is None:
            if body.get("kind") == NAMED:
                raise NotServed(
                    f"peer {me!r} serves code, not functions by name: call it with remote(), or call() "
                    "with a function"
                )
            return
        served = ", ".join(sorted(self.functions))
        if body.get("kind") != NAMED:
            raise NotServed(
                f"peer {me!r} serves only the functions {served}, by name, and runs no code sent to it: "
                f"call one by its name: call({me!r}, 'NAME', ...) or functions({me!r}).NAME(...)"
            )
        name, args, kwargs = body.get("name"), body.get("args", []), body.get("kwargs", {})
        if not isinstance(name, str) or name not in self.functions:
            raise NotServed(f"peer {me!r} does not serve a function {name!r} (it serves: {served})")
        if (
            not isinstance(args, list)
            or not isinstance(kwargs, dict)
            or not all(isinstance(k, str) for k in kwargs)
        ):
            raise NotServed(f"a call of {name} on {me!r} takes a list of arguments and a map of keywords")

    def handle_cancel(self, message: client.Incoming) -> None:
        self.executor.interrupt((message.sender, message.body))

    def _execute(self, body: dict[str, Any], context: str, target: str, output: Send) -> Any:
        """Run one call on the home thread: its encoded result, or an awaitable of it."""
        namespace = contexts.namespace(context)
        if body.get("kind") == NAMED:
            return self._call_named(body, namespace, target, output)
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
        return self._invoke(scratch[name], body, output)

    def _call_named(self, body: dict[str, Any], namespace: dict[str, Any], target: str, output: Send) -> Any:
        """Call a served function by its name (checked by :meth:`check_kind`), as it is defined now."""
        name = body["name"]
        fn = namespace.get(name)
        if not callable(fn):
            raise NotServed(f"{name} is served but no longer a function on {target}: define it again there")
        return self._invoke(fn, body, output)

    def _invoke(self, fn: Callable[..., Any], body: dict[str, Any], output: Send) -> Any:
        """Call ``fn`` with the body's arguments, its output streamed: its encoded result, or an
        awaitable of it."""
        with forward_output(output):
            result = fn(*body.get("args", []), **body.get("kwargs", {}))
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
    """Arguments do not stay in the served namespace unless the body rebound them."""
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


def serve(
    context: str | None = None, allow: Iterable[str] | None = None, functions: Iterable[str] | None = None
) -> str:
    """Opt in to serving remote calls; nothing is served before this.

    ``context`` names a context to serve (created empty if it does not exist);
    by default the kernel's own namespace. ``allow`` names the peers that may
    call (``"*"``: every peer of the hub, invited ones included, with a warning;
    ``"user:NAME"``: every peer acting for user NAME, on any hub of the mesh);
    by default only the server's own peers may, never invited ones.
    ``functions`` serves only those functions of the context, by name: callers
    send a name and arguments (through the codec), never code, and reach
    nothing else (``call(PEER, NAME, ...)`` or :func:`spindel_jupyter.functions`
    calls them; :func:`caller` in them says who calls); without it,
    serving runs the code callers send. Returns a one-line summary.
    """
    names = None if functions is None else _servable(functions, context or contexts.DEFAULT)
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
        _server.functions = names
        peer.handle(OP_CALL, _server.handle_call)
        peer.handle(CANCEL, _server.handle_cancel)
        peer.set_contexts(sorted(_server.contexts))
        return _server.describe()


def _servable(functions: Iterable[str], context: str) -> set[str]:
    """The names of functions to serve, each a public function defined in ``context`` now."""
    names = {str(name).strip() for name in functions if str(name).strip()}
    if not names:
        raise SpindelError("--functions names no function: name the functions to serve, e.g. grade,hint")
    namespace = contexts.namespace(context) if context in contexts.list_contexts() else {}
    for name in sorted(names):
        if not name.isidentifier() or name.startswith("_"):
            raise SpindelError(f"cannot serve {name!r}: serve functions by their public names (no leading _)")
        if not callable(namespace.get(name)):
            raise SpindelError(f"{name!r} is not a function defined here: define it, then serve it")
    return names


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
    peer.handle(CANCEL, None)
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
