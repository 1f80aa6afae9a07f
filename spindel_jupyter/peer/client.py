"""The peer connection: one WebSocket to the hub, read by a background thread.

The connection reads on its own asyncio loop, on a daemon thread, so it keeps
working whatever the caller's thread is doing (a kernel busy in a cell, a
script blocked on a call); frames are written straight from the thread that
makes them. Replies come back through futures. After the hub goes away the
connection fails every pending call at once and reconnects with backoff,
announcing the same name.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import functools
import itertools
import logging
import os
import secrets
import socket
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from ..core import errors, wire
from ..core.errors import HubError, NameTaken, NotConnected, PeerLost, RemoteTimeout, SpindelError
from ..core.protocol import (
    CANCEL,
    ERROR,
    EVENT,
    HELLO,
    INVITED,
    MSG,
    OP_CALL,
    OWN,
    REP,
    REQ,
    SCOPES,
    WELCOME,
    check_name,
    from_wire,
    name_from,
    to_wire,
)
from ..core.retry import Backoff
from .transport import HandshakeError, WebSocket, open_websocket

log = logging.getLogger(__name__)

ENV_URL = "SPINDEL_HUB_URL"
ENV_TOKEN = "SPINDEL_TOKEN"
ENV_PEER = "SPINDEL_PEER"

#: Identifies this process to the hub: a reconnect of the same process takes
#: over its old name even before the hub noticed the old connection drop.
SESSION = secrets.token_hex(8)

#: Close code the hub uses when a newer connection of the same peer replaced this one.
_REPLACED = 4000
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 2.0
#: Ping the hub after this many quiet seconds; reconnect when it stays silent this much longer.
_PING_INTERVAL = 10.0
_PING_TIMEOUT = 20.0


@dataclass(frozen=True)
class Incoming:
    """A request or one-way message from another peer, as a handler sees it."""

    sender: str
    op: str
    body: Any
    #: The request id (None for one-way messages): replies and streamed output refer to it.
    id: int | None
    #: Where the sender comes from, as the hub stamped it: the server's own peer, or invited.
    scope: str = INVITED
    #: The user the sender acts for, as the hub stamped it (for a peer of another hub: as its hub says).
    user: str = ""


Handler = Callable[[Incoming], Any]
#: A reply as it arrived: its header and its still encoded body.
Reply = tuple[dict[str, Any], memoryview]
FrameHandler = Callable[[dict[str, Any], memoryview], None]
Listener = Callable[[Any], None]


class Peer:
    """A connection to a Spindel hub under one peer name.

    Use :func:`connect` to make the process-wide peer that the rest of the API
    uses; create ``Peer`` objects directly only to hold several connections.
    """

    def __init__(
        self,
        url: str,
        name: str,
        token: str = "",
        kind: str = "kernel",
        connect_timeout: float = 10.0,
        session: str = SESSION,
    ) -> None:
        self.url = url
        self.name = check_name(name)
        self.token = token
        self.kind = kind
        self.session = session
        self.connect_timeout = connect_timeout
        self.contexts: list[str] = []
        #: The Jupyter kernel this peer is ("" for any other process): the lab marks its notebook's peer.
        self.kernel = ""
        #: The notebook this peer's name follows (absolute path), "" for a name set explicitly:
        #: when the notebook is renamed or moved, the hub renames the peer after it.
        self.notebook = ""
        #: Whether the hub counts this peer as one of the server's own or as invited (from its welcome).
        self.scope = OWN
        #: The name of the hub this peer is connected to, in its mesh (from its welcome; "" before).
        self.hub = ""
        #: Largest frame the hub accepts (learned from its welcome).
        self.max_frame_bytes = 64 * 1024 * 1024
        self._ids = itertools.count(1)
        self._handlers: dict[str, Handler] = {}
        self._listeners: dict[str, list[Listener]] = {}
        self._on_connect: list[Callable[[], None]] = []
        self._frame_handlers: dict[str, FrameHandler] = {}
        self._tasks: set[asyncio.Future[None]] = set()
        self._pending: dict[int, concurrent.futures.Future[Reply]] = {}
        #: Held to register a call on the live connection, and to fail every call when it drops.
        self._pending_lock = threading.Lock()
        self._peers: list[dict[str, Any]] = []
        self._ws: WebSocket | None = None
        self._closing = False
        self._connected = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"spindel-{name}", daemon=True)

    def __repr__(self) -> str:
        state = "connected" if self.connected else "disconnected"
        return f"<Peer {self.name!r} {state} to {self.url}>"

    # -- lifecycle --------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> Peer:
        """Connect and say hello; raise :class:`NameTaken` or :class:`NotConnected` on failure."""
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._ready = ready
        self._thread.start()
        first = asyncio.run_coroutine_threadsafe(self._run(), self._loop)
        try:
            ready.result(self.connect_timeout + 5)
        except concurrent.futures.TimeoutError:
            self.close()
            raise NotConnected(
                f"no answer from the hub at {self.url} within {self.connect_timeout} s"
            ) from None
        except BaseException:
            self.close()
            first.cancel()
            raise
        return self

    def close(self) -> None:
        """Disconnect for good; pending calls fail with :class:`NotConnected`."""
        if self._closing:
            return
        self._closing = True
        if not self._thread.is_alive():
            return

        async def shutdown() -> None:
            ws, self._ws = self._ws, None
            self._connected.clear()
            self._fail_pending(NotConnected(f"peer {self.name!r} was closed"))
            if ws is not None:
                ws.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(2)
        except (concurrent.futures.TimeoutError, RuntimeError):
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        if threading.current_thread() is not self._thread:
            self._thread.join(2)

    # -- calls --------------------------------------------------------------------

    def request(self, to: str | None, op: str, body: Any = None, timeout: float | None = None) -> Any:
        """Send request ``op`` to peer ``to`` (the hub if None) and wait for its result."""
        rid, future = self.submit(to, op, body)
        try:
            header, payload = future.result(timeout)
        except concurrent.futures.TimeoutError:
            self.cancel(to, rid)
            raise RemoteTimeout(f"{_target(to)} did not answer {op!r} within {timeout} s") from None
        except KeyboardInterrupt:
            self.cancel(to, rid)
            raise
        return reply_value(header, payload, to)

    async def arequest(self, to: str | None, op: str, body: Any = None, timeout: float | None = None) -> Any:
        """Awaitable :meth:`request`, for any event loop but the connection's own."""
        rid, future = self.submit(to, op, body)
        try:
            header, payload = await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except (asyncio.TimeoutError, TimeoutError):
            self.cancel(to, rid)
            raise RemoteTimeout(f"{_target(to)} did not answer {op!r} within {timeout} s") from None
        except asyncio.CancelledError:
            self.cancel(to, rid)
            raise
        return reply_value(header, payload, to)

    def next_id(self) -> int:
        """A fresh request id, for callers that must know it before the request leaves."""
        return next(self._ids)

    def submit(
        self, to: str | None, op: str, body: Any = None, rid: int | None = None
    ) -> tuple[int, concurrent.futures.Future[Reply]]:
        """Send a request; return its id and a future of the raw reply (header, body)."""
        rid = self.next_id() if rid is None else rid
        header: dict[str, Any] = {"t": REQ, "id": rid, "op": op}
        if to is not None:
            header["to"] = to
        frame = self._frame(header, body)
        future: concurrent.futures.Future[Reply] = concurrent.futures.Future()
        with self._pending_lock:
            # The connection is cleared before its calls are failed: a call either sees it gone or is failed.
            ws = self._ws
            if ws is not None:
                self._pending[rid] = future
        if ws is None:
            future.set_exception(NotConnected(f"not connected to the hub at {self.url} (reconnecting)"))
            return rid, future
        try:
            self._write(frame, ws)
        except OSError as exc:
            # Failed here, unless the dropped connection failed it first (it is then no longer pending).
            if self._pending.pop(rid, None) is not None:
                lost = f"lost the connection to the hub at {self.url} while sending {op!r}: {exc}"
                future.set_exception(PeerLost("hub", lost))
        except BaseException:
            self._pending.pop(rid, None)
            raise
        return rid, future

    def cancel(self, to: str | None, request_id: int) -> None:
        """Give up on a request: forget it here and tell the target (which may interrupt it)."""
        self._pending.pop(request_id, None)
        if to is not None:
            self._post(wire.frame_parts({"t": CANCEL, "id": request_id, "to": to}))

    def send(self, to: str, op: str, body: Any = None) -> None:
        """One-way message ``op`` to peer ``to``; dropped if either side is disconnected."""
        self._post(self._frame({"t": MSG, "op": op, "to": to}, body))

    def handle(self, op: str, handler: Handler | None) -> None:
        """Serve requests and messages ``op`` from other peers (None stops serving it).

        ``handler(incoming)`` runs on the connection thread and returns the
        reply's body (or a :class:`wire.Encoded` one), or an awaitable of it. A
        :class:`SpindelError` reaches the caller as itself; any other exception
        as a :class:`RemoteError` with its traceback.
        """
        if handler is None:
            self._handlers.pop(op, None)
        else:
            self._handlers[op] = handler

    def handler(self, op: str) -> Handler | None:
        """The handler serving ``op`` here, if any."""
        return self._handlers.get(op)

    def listen(self, event: str, listener: Listener) -> Callable[[], None]:
        """Call ``listener(body)`` on hub event ``event``; returns a function that stops it."""
        self._listeners.setdefault(event, []).append(listener)
        return lambda: self._listeners.get(event, []).remove(listener)

    def on_frame(self, kind: str, handler: FrameHandler) -> None:
        """Pass frames of type ``kind`` to ``handler(header, body)``, on the connection thread."""
        self._frame_handlers[kind] = handler

    def send_frame(self, header: dict[str, Any], body: bytes | None = None) -> None:
        """Send a frame as is, from any thread; dropped while disconnected."""
        self._post(self._checked(wire.frame_parts(header, body)))

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the connection thread, soon (from any thread)."""
        self._loop.call_soon_threadsafe(fn, *args)

    def on_connect(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the connection thread after every (re)connection."""
        self._on_connect.append(callback)

    # -- hub requests ---------------------------------------------------------------

    def peers(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The peers connected to the hub: name, kind, contexts, since."""
        return list(self.request(None, "peers", timeout=timeout))

    def set_contexts(self, contexts: list[str], timeout: float = 10.0) -> None:
        """Tell the hub which contexts this peer serves (shown in peer lists)."""
        self.contexts = list(contexts)
        if self.connected:
            self.request(None, "update", {"contexts": self.contexts}, timeout=timeout)

    # -- frames out (any thread) -----------------------------------------------------

    def _frame(self, header: dict[str, Any], body: Any) -> list[wire.Buffer]:
        if body is not None and not isinstance(body, wire.Encoded):
            body = wire.encode_buffers(body, where="the request")
        return self._checked(wire.frame_parts(header, body))

    def _checked(self, parts: list[wire.Buffer]) -> list[wire.Buffer]:
        size = sum(len(part) for part in parts)
        if size > self.max_frame_bytes:
            raise SpindelError(
                f"message of {size} bytes is over the hub's limit of {self.max_frame_bytes} bytes; "
                "send less at once, or raise c.SpindelHub.max_frame_bytes on the server"
            )
        return parts

    def _write(self, parts: list[wire.Buffer], ws: WebSocket | None = None) -> None:
        """Write a frame from this thread; dropped while disconnected.

        A write that fails raises OSError: the connection then ends, and the caller
        tells whoever waits for this frame.
        """
        ws = ws or self._ws
        if ws is not None:
            ws.send(parts)

    def _post(self, parts: list[wire.Buffer]) -> None:
        """Write a frame nothing waits for; dropped while disconnected or when the write fails."""
        try:
            self._write(parts)
        except OSError as exc:
            log.info("spindel: a frame to the hub at %s was lost with the connection: %s", self.url, exc)

    # -- the connection thread ------------------------------------------------------

    async def _run(self) -> None:
        backoff = Backoff(_BACKOFF_FIRST, _BACKOFF_MAX)
        first = True
        while not self._closing:
            try:
                ws = await self._open()
            except (HubError, NotConnected) as exc:
                if first:
                    self._ready.set_exception(exc)
                    return
                log.info("spindel: reconnecting to %s failed: %s", self.url, exc)
            except Exception as exc:
                if first:
                    self._ready.set_exception(
                        NotConnected(f"cannot reach the hub at {self.url}: {type(exc).__name__}: {exc}")
                    )
                    return
                log.debug("spindel: reconnecting to %s failed: %s", self.url, exc)
            else:
                self._ws = ws
                self._connected.set()
                backoff.reset()
                if first:
                    self._ready.set_result(None)
                else:
                    log.info("spindel: reconnected to %s as %r", self.url, self.name)
                for callback in self._on_connect:
                    self._guard(callback)
                if self.contexts:
                    self._post(
                        self._frame(
                            {"t": REQ, "id": next(self._ids), "op": "update"}, {"contexts": self.contexts}
                        )
                    )
                code = await self._closed
                self._ws = None
                self._connected.clear()
                self._fail_pending(self._hub_lost())
                if code == _REPLACED:
                    log.info("spindel: peer %r was replaced by a newer connection", self.name)
                    return
            first = False
            await asyncio.sleep(backoff.next())

    async def _open(self) -> WebSocket:
        headers = {"Authorization": f"token {self.token}"} if self.token else {}
        loop = asyncio.get_running_loop()
        self._welcome: asyncio.Future[wire.Buffer | None] = loop.create_future()
        self._closed: asyncio.Future[int | None] = loop.create_future()
        try:
            ws = await asyncio.wait_for(
                asyncio.to_thread(
                    open_websocket,
                    self.url,
                    headers,
                    self.connect_timeout,
                    max_message=message_limit(self.max_frame_bytes),
                ),
                self.connect_timeout,
            )
        except HandshakeError as exc:
            if exc.status == 403:
                raise NotConnected(
                    f"the hub at {self.url} refused the token (403): check SPINDEL_TOKEN or --token"
                ) from None
            if exc.status == 404:
                raise NotConnected(
                    f"no Spindel hub at {self.url} (404): is the spindel_jupyter server extension enabled?"
                ) from None
            raise NotConnected(f"cannot reach the hub at {self.url}: {exc}") from None
        except (OSError, asyncio.TimeoutError, TimeoutError, ValueError) as exc:
            raise NotConnected(f"cannot reach the hub at {self.url}: {type(exc).__name__}: {exc}") from None
        ws.start(loop, self._on_message, self._on_close)
        heartbeat = asyncio.ensure_future(self._heartbeat(ws))
        self._closed.add_done_callback(lambda _: heartbeat.cancel())
        hello = {
            "t": HELLO,
            "name": self.name,
            "kind": self.kind,
            "session": self.session,
            "contexts": self.contexts,
            "kernel": self.kernel,
        }
        if self.notebook:
            hello["notebook"] = self.notebook
        self._write(wire.frame_parts(hello), ws)
        reply = await asyncio.wait_for(asyncio.shield(self._welcome), self.connect_timeout)
        if reply is None:
            raise NotConnected(f"the hub at {self.url} closed the connection during hello")
        header, _ = wire.unpack_frame(reply)
        if header.get("t") == WELCOME:
            self.max_frame_bytes = int(header.get("max_frame_bytes", self.max_frame_bytes))
            ws.max_message = message_limit(self.max_frame_bytes)
            self.scope = str(header.get("scope", OWN))
            self.hub = str(header.get("hub", ""))
            return ws
        ws.close()
        raise from_wire(header)

    async def _heartbeat(self, ws: WebSocket) -> None:
        """Ping the hub when it has been quiet; drop a connection silent for too long."""
        while not ws.closed:
            await asyncio.sleep(_PING_INTERVAL)
            quiet = time.monotonic() - ws.last_seen
            if quiet > _PING_INTERVAL + _PING_TIMEOUT:
                log.info("spindel: no word from the hub at %s for %.0f s; reconnecting", self.url, quiet)
                ws.close(1011)
            elif quiet >= _PING_INTERVAL:
                ws.ping()

    def _on_close(self, code: int | None) -> None:
        if not self._welcome.done():
            self._welcome.set_result(None)
        if not self._closed.done():
            self._closed.set_result(code)

    def _on_message(self, message: wire.Buffer) -> None:
        if not self._welcome.done():
            self._welcome.set_result(message)
            return
        try:
            self._dispatch(message)
        except Exception:
            log.exception("spindel: failed to handle a frame from the hub")

    def _dispatch(self, data: wire.Buffer) -> None:
        header, body = wire.unpack_frame(data)
        kind = header.get("t")
        if kind == REP:
            future = self._pending.pop(header.get("re", -1), None)
            if future is not None and not future.done():
                future.set_result((header, body))
        elif kind in (REQ, MSG):
            self._incoming(header, body)
        elif kind == CANCEL:
            self._incoming({**header, "op": CANCEL}, memoryview(wire.encode(header["id"])))
        elif kind == EVENT:
            event = str(header.get("event"))
            payload = wire.decode(body) if body else None
            if event == "peers" and isinstance(payload, list):
                self._peers = payload
            elif event == "renamed" and isinstance(payload, dict):
                self._renamed(payload)
            for listener in list(self._listeners.get(event, [])):
                self._guard(listener, payload)
        elif kind in self._frame_handlers:
            self._frame_handlers[kind](header, body)
        elif kind == ERROR:
            log.info("spindel: the hub reported: %s", header.get("message"))

    def _renamed(self, payload: dict[str, Any]) -> None:
        """The hub renamed this peer after its notebook: reconnect under the new name."""
        name, notebook = payload.get("name"), payload.get("notebook")
        if isinstance(name, str) and name:
            log.info("spindel: this peer is now %r (its notebook was renamed)", name)
            self.name = name
        if isinstance(notebook, str) and notebook:
            self.notebook = notebook

    def _incoming(self, header: dict[str, Any], body: memoryview) -> None:
        sender = str(header.get("from"))
        op = str(header.get("op"))
        rid = header.get("id") if header["t"] == REQ else None
        handler = self._handlers.get(op)
        # A frame the hub did not stamp (an older hub) is taken as the less trusted kind.
        scope = header["scope"] if header.get("scope") in SCOPES else INVITED
        if handler is None:
            if rid is not None:
                what = "remote calls; run %spin_serve there" if op == OP_CALL else f"{op!r}"
                message = f"peer {self.name!r} does not serve {what}"
                self._reply(sender, rid, error=to_wire(errors.UnknownOp(message)))
            return
        try:
            user = str(header.get("user") or "")
            result = handler(Incoming(sender, op, wire.decode(body) if body else None, rid, scope, user))
        except Exception as exc:
            if rid is not None:
                self._reply(sender, rid, error=remote_error(exc, self.name))
            return
        if rid is None:
            return
        if isinstance(result, concurrent.futures.Future):
            # Finished on another thread (served code runs on the home thread): the reply leaves from there.
            result.add_done_callback(functools.partial(self._reply_when_done, sender, rid))
        elif isinstance(result, Awaitable):
            task = asyncio.ensure_future(self._finish(sender, rid, result))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._reply(sender, rid, result)

    async def _finish(self, sender: str, rid: int, awaitable: Awaitable[Any]) -> None:
        try:
            result = await awaitable
        except (Exception, asyncio.CancelledError) as exc:
            self._reply(sender, rid, error=remote_error(exc, self.name))
        else:
            self._reply(sender, rid, result)

    def _reply_when_done(self, to: str, rid: int, future: concurrent.futures.Future[Any]) -> None:
        if future.cancelled():
            error = to_wire(errors.Interrupted("the call was dropped: the caller stopped waiting"))
            self._reply(to, rid, error=error)
        elif (failure := future.exception()) is not None:
            self._reply(to, rid, error=remote_error(failure, self.name))
        else:
            self._reply(to, rid, future.result())

    def _reply(self, to: str, rid: int, result: Any = None, error: dict[str, Any] | None = None) -> None:
        """Answer request ``rid`` of ``to``; if the result cannot be sent, the caller gets why."""
        header: dict[str, Any] = {"t": REP, "re": rid, "to": to}
        try:
            if error is None:
                try:
                    self._write(self._frame(header, result))
                    return
                except OSError:
                    raise
                except Exception as exc:  # not encodable, over the limit, not writable as buffers
                    error = remote_error(exc, self.name)
            header["error"] = error
            self._write(wire.frame_parts(header))
        except OSError as exc:
            # The connection ends with this failure: the hub tells the caller that this peer left.
            log.warning("spindel: the reply to %r was lost with the connection to the hub: %s", to, exc)

    def _hub_lost(self) -> PeerLost:
        return PeerLost("hub", f"lost the connection to the hub at {self.url}; reconnecting")

    def _fail_pending(self, exc: SpindelError) -> None:
        """Fail every pending call (after ``_ws`` was cleared: see :meth:`submit`)."""
        with self._pending_lock:
            pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(exc)

    def _guard(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("spindel: callback %r failed", fn)


def message_limit(max_frame_bytes: int) -> int:
    """The largest message taken from a hub whose frame limit is ``max_frame_bytes``: twice it, the
    margin the hub gives its peers' frames. A relayed frame is its sender's (within the limit) with
    the hub's stamps added; the margin also leaves room for the hub's own frames (topic snapshots)."""
    return 2 * max_frame_bytes


def remote_error(exc: BaseException, peer: str) -> dict[str, Any]:
    """The wire form of an exception raised while serving a request."""
    if isinstance(exc, asyncio.CancelledError):
        exc = errors.Interrupted("interrupted: the caller stopped waiting")
    if isinstance(exc, SpindelError):
        return to_wire(exc)
    lines = traceback.format_exception(type(exc), exc, _user_frames(exc.__traceback__))
    trace = [line.rstrip("\n") for line in lines]
    return to_wire(errors.RemoteError(peer, type(exc).__name__, str(exc), trace))


#: Frames of this package (any layer) are not the user's: a remote traceback leaves them out.
_PACKAGE_DIR = str(Path(__file__).parent.parent) + os.sep


def _user_frames(tb: TracebackType | None) -> TracebackType | None:
    """The traceback without the leading frames of this package and of asyncio."""
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if not (filename.startswith(_PACKAGE_DIR) or "asyncio" in filename):
            break
        tb = tb.tb_next
    return tb


def reply_value(header: dict[str, Any], payload: memoryview, to: str | None) -> Any:
    """The decoded body of a reply, or the exception its error stands for."""
    error = header.get("error")
    if error is not None:
        raise from_wire(error, peer=to or "hub")
    return wire.decode(payload) if payload else None


def _target(to: str | None) -> str:
    return f"peer {to!r}" if to else "the hub"


# -- the process-wide peer ---------------------------------------------------------

_current: Peer | None = None
_current_lock = threading.Lock()
_peer_setups: list[Callable[[Peer], None]] = []


def on_new_peer(setup: Callable[[Peer], None]) -> None:
    """Run ``setup(peer)`` on the current peer and on every one :func:`connect` makes, before it connects."""
    _peer_setups.append(setup)
    if _current is not None:
        setup(_current)


def connect(
    url: str | None = None,
    name: str | None = None,
    token: str | None = None,
    kind: str = "script",
    *,
    derived: bool = False,
    kernel: str = "",
    notebook: str = "",
) -> Peer:
    """Connect this process to a hub and make it the peer the rest of the API uses.

    ``url`` and ``token`` default to ``SPINDEL_HUB_URL`` and ``SPINDEL_TOKEN``; ``name`` to
    ``SPINDEL_PEER``, else this host and process. A ``derived`` name (not one the user chose)
    that is taken gets a suffix; any other is refused with :class:`NameTaken`. ``kernel`` and
    ``notebook`` say which Jupyter kernel this is and the notebook its name follows. An earlier
    connection of this process is closed once the new one is up.
    """
    global _current
    url = url or os.environ.get(ENV_URL)
    if not url:
        raise NotConnected(
            "no hub URL: pass url=ws://HOST:PORT/spindel/ws, or set SPINDEL_HUB_URL "
            "(a Jupyter server with spindel_jupyter sets it for the kernels it starts)"
        )
    token = os.environ.get(ENV_TOKEN, "") if token is None else token
    base = check_name(name or os.environ.get(ENV_PEER) or process_name())
    with _current_lock:
        previous = _current
        contexts = previous.contexts if previous is not None else []
        candidates = [base, *(f"{base}-{i}" for i in range(2, 10))] if derived else [base]
        for candidate in candidates:
            # Reusing this process's own name is fine: the hub hands it to the new connection.
            peer = Peer(url, candidate, token, kind=kind)
            peer.contexts = list(contexts)
            peer.kernel, peer.notebook = kernel, notebook
            for setup in _peer_setups:
                setup(peer)
            try:
                peer.start()
                break
            except NameTaken:
                if candidate == candidates[-1]:
                    raise
        if previous is not None:
            for op, handler in previous._handlers.items():
                peer.handle(op, handler)
            previous.close()
        _current = peer
        return peer


def process_name() -> str:
    """A peer name for a process with none of its own: this host and process id."""
    return name_from(f"{socket.gethostname().split('.')[0]}-{os.getpid()}")


def current_peer() -> Peer:
    """The peer made by :func:`connect` (or ``%load_ext``); raise if there is none."""
    peer = _current
    if peer is None:
        raise NotConnected(
            "not connected to a hub: run %spin_connect in a notebook, "
            "or spindel_jupyter.connect() in a script"
        )
    return peer


def disconnect() -> None:
    """Close the process-wide peer, if any."""
    global _current
    with _current_lock:
        peer, _current = _current, None
    if peer is not None:
        peer.close()


atexit.register(disconnect)

__all__ = ["HubError", "Peer", "connect", "current_peer", "disconnect"]
