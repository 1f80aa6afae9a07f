"""The previous hand-written client WebSocket (RFC 6455), kept to compare against.

This is ``spindel_jupyter/peer/transport.py`` as it was before the connection moved to
wsproto, word for word but for its imports (absolute here): the ``transport`` family of
the bench measures it beside the current connection in the same run. Not used by the package.

Its own description follows.

A client WebSocket (RFC 6455) that any thread writes to and one event loop reads from.

A peer's frames start on many threads: a caller waiting for its reply, the
kernel's main thread answering a call or setting a signal. Writing them from
that thread, under one lock, saves a hop to the connection's thread on every
frame; reading stays on the connection's event loop, and a large frame is read
straight into one buffer of its final size (the body of a returned array is
not copied again). TLS goes through a memory BIO, so the reading and the
writing thread never use the SSL object at the same time.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from tornado.util import _websocket_mask  # tornado's C masking routine (Python fallback without it)

from spindel_jupyter.core.websocket import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    frame_header,
)
from spindel_jupyter.core.wire import Buffer

try:  # masks large payloads (arrays) in one pass when available
    import numpy as np
except ImportError:  # pragma: no cover - exercised only without numpy
    np = None  # type: ignore[assignment]

__all__ = ["HandshakeError", "WebSocket", "open_websocket"]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_RESPONSE = 64 * 1024
_CHUNK = 256 * 1024
#: A frame at least this large is read straight into a buffer of its own.
_DIRECT = 64 * 1024
#: Seconds a control frame (pong, close) waits for another thread's write before it is skipped.
_CONTROL_WAIT = 0.5
#: A larger frame from the server closes the connection (the hub's own limit is far lower).
MAX_MESSAGE = 2**31


class HandshakeError(ConnectionError):
    """The server answered the upgrade with something else than ``101``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status} {reason}".strip())
        self.status = status


class ProtocolError(ConnectionError):
    """The server sent bytes that are not a valid WebSocket frame."""


class _Stream:
    """Bytes in and out of a non-blocking socket, optionally through TLS."""

    def __init__(self, sock: socket.socket, tls: ssl.SSLObject | None = None) -> None:
        self.sock = sock
        self.tls = tls
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._tls_lock = threading.Lock()

    @classmethod
    def connect(cls, host: str, port: int, tls: ssl.SSLContext | None, timeout: float) -> _Stream:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle delay on small frames
        stream = cls(sock)
        if tls is not None:
            stream.tls = tls.wrap_bio(stream._in, stream._out, server_hostname=host)
            stream._handshake()
        return stream

    def _handshake(self) -> None:
        assert self.tls is not None
        while True:
            try:
                self.tls.do_handshake()
                self._flush_tls()
                return
            except ssl.SSLWantReadError:
                self._flush_tls()
                data = self.sock.recv(_CHUNK)
                if not data:
                    raise ConnectionError(
                        "the server closed the connection during the TLS handshake"
                    ) from None
                self._in.write(data)

    def recv_into(self, view: memoryview) -> int:
        """Read what is there into ``view``: 0 at end of stream, BlockingIOError if nothing yet."""
        if self.tls is None:
            return self.sock.recv_into(view)
        while True:
            with self._tls_lock:
                try:
                    return self.tls.read(len(view), view)  # type: ignore[return-value]  # int with a buffer
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLZeroReturnError:
                    return 0
            data = self.sock.recv(_CHUNK)
            if not data:
                return 0
            self._in.write(data)

    def sendall(self, parts: Sequence[Buffer]) -> None:
        """Write every part, waiting while the socket is full (callers hold the write lock)."""
        if self.tls is not None:
            with self._tls_lock:
                for part in parts:
                    view = memoryview(part).cast("B")
                    while view:
                        view = view[self.tls.write(view) :]
                data = self._out.read()
            parts = [data]
        views = [memoryview(part).cast("B") for part in parts if len(part)]
        while views:
            try:
                sent = self.sock.sendmsg(views)
            except BlockingIOError:
                _wait_writable(self.sock)
                continue
            while sent:
                if sent >= len(views[0]):
                    sent -= len(views.pop(0))
                else:
                    views[0] = views[0][sent:]
                    sent = 0

    def _flush_tls(self) -> None:
        data = self._out.read()
        if data:
            self.sock.sendall(data)

    def recv_some(self, size: int) -> bytes:
        """Up to ``size`` bytes, at least one (the handshake, on the still blocking socket)."""
        buffer = bytearray(size)
        got = self.recv_into(memoryview(buffer))
        if not got:
            raise ConnectionError("the server closed the connection during the WebSocket handshake")
        return bytes(buffer[:got])


def _mask(key: bytes, data: Buffer) -> Buffer:
    """``data`` XOR the repeated 4-byte ``key``, as a new buffer."""
    if np is None or len(data) < _DIRECT:
        return _websocket_mask(key, bytes(data))
    source = np.frombuffer(data, np.uint8)
    out = np.empty(len(source), np.uint8)
    words = len(source) // 8 * 8
    np.bitwise_xor(
        source[:words].view(np.uint64), np.frombuffer(key * 2, np.uint64), out=out[:words].view(np.uint64)
    )
    np.bitwise_xor(source[words:], np.frombuffer(key * 2, np.uint8)[: len(source) - words], out=out[words:])
    return out.data


def _wait_writable(sock: socket.socket) -> None:
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    poller.poll(1000)


def open_websocket(
    url: str, headers: dict[str, str], timeout: float, tls: ssl.SSLContext | None = None
) -> WebSocket:
    """Connect and upgrade (blocking: run it off the event loop); :class:`HandshakeError` on refusal.

    ``wss://`` URLs verify the server with ``tls`` (default: the system's trusted certificates).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"not a WebSocket URL (ws:// or wss://): {url}")
    secure = parts.scheme == "wss"
    host = parts.hostname or "localhost"
    port = parts.port or (443 if secure else 80)
    context = (tls or ssl.create_default_context()) if secure else None
    stream = _Stream.connect(host, port, context, timeout)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [
            f"GET {target} HTTP/1.1",
            f"Host: {parts.netloc}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        stream.sendall([("\r\n".join(lines) + "\r\n\r\n").encode()])
        response = b""
        while b"\r\n\r\n" not in response:
            if len(response) > _MAX_RESPONSE:
                raise ProtocolError("the server's handshake response is too long")
            response += stream.recv_some(_CHUNK)
        head, _, rest = response.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        fields = status_line.split(" ", 2)
        status = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 0
        if status != 101:
            raise HandshakeError(status, fields[2] if len(fields) > 2 else "")
        received = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            received[name.strip().lower()] = value.strip()
        expected = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()
        if received.get("sec-websocket-accept") != expected:
            raise ProtocolError("the server's handshake has a wrong Sec-WebSocket-Accept")
    except BaseException:
        stream.sock.close()
        raise
    stream.sock.settimeout(None)
    stream.sock.setblocking(False)
    return WebSocket(stream, rest)


class WebSocket:
    """An open client WebSocket: :meth:`send` from any thread; messages arrive on the :meth:`start` loop."""

    def __init__(self, stream: _Stream, initial: bytes = b"") -> None:
        self._stream = stream
        self._write_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._buffer = bytearray(max(_CHUNK, len(initial)))
        self._buffer[: len(initial)] = initial
        self._start, self._end = 0, len(initial)
        #: A large frame being read straight into its own buffer: (opcode, fin, buffer, bytes so far).
        self._direct: tuple[int, bool, bytearray, int] | None = None
        self._fragments: list[Buffer] = []
        self._on_message: Callable[[Buffer], None] = lambda message: None
        self._on_close: Callable[[int | None], None] = lambda code: None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.close_code: int | None = None
        self.error: BaseException | None = None
        self.closed = False
        #: time.monotonic() of the last bytes received: the heartbeat's evidence of life.
        self.last_seen = time.monotonic()

    def start(
        self,
        loop: asyncio.AbstractEventLoop,
        on_message: Callable[[Buffer], None],
        on_close: Callable[[int | None], None],
    ) -> None:
        """Deliver messages (and then the close code) to the callbacks, on ``loop``'s thread."""
        self._loop = loop
        self._on_message = on_message
        self._on_close = on_close
        loop.add_reader(self._stream.sock.fileno(), self._on_readable)
        if self._end:
            loop.call_soon(self._parse)

    # -- writing (any thread) ------------------------------------------------------------

    def send(
        self, parts: Buffer | Sequence[Buffer], opcode: int = OP_BINARY, wait: float | None = None
    ) -> None:
        """Send one message made of ``parts`` (masked, as a client must); OSError if the socket is gone.

        ``wait`` bounds how long to wait for another thread's write to finish (TimeoutError after it).
        """
        if isinstance(parts, (bytes, bytearray, memoryview)):
            parts = [parts]
        parts = [memoryview(part).cast("B") for part in parts]  # lengths in bytes, whatever the item type
        mask = os.urandom(4)
        out: list[Buffer] = [frame_header(opcode, sum(len(part) for part in parts), mask)]
        offset = 0
        for part in parts:
            if not len(part):
                continue
            turn = offset % 4
            out.append(_mask(mask[turn:] + mask[:turn], part))
            offset += len(part)
        if not self._write_lock.acquire(timeout=-1 if wait is None else wait):
            raise TimeoutError("another write is still under way")
        try:
            if self.closed:
                raise ConnectionResetError("the WebSocket is closed")
            self._stream.sendall(out)
        finally:
            self._write_lock.release()

    def ping(self) -> None:
        """Ask the server for a pong (any bytes from it count as alive)."""
        self._send_quietly(b"", OP_PING)

    def close(self, code: int = 1000) -> None:
        """Say goodbye and drop the socket; the close callback runs on the loop."""
        if self.closed:
            return
        self._send_quietly(struct.pack("!H", code), OP_CLOSE)
        self._finish(None)

    def _send_quietly(self, payload: bytes, opcode: int) -> None:
        """A control frame from the loop's thread: skipped rather than stuck behind a write that hangs."""
        try:
            self.send(payload, opcode, wait=_CONTROL_WAIT)
        except OSError:
            pass

    # -- reading (the loop's thread) ----------------------------------------------------

    def _on_readable(self) -> None:
        try:
            while not self.closed:
                if self._direct is not None:
                    opcode, fin, buffer, got = self._direct
                    n = self._stream.recv_into(memoryview(buffer)[got:])
                    if not n:
                        break
                    self.last_seen = time.monotonic()
                    if got + n < len(buffer):
                        self._direct = (opcode, fin, buffer, got + n)
                        continue
                    self._direct = None
                    self._frame(opcode, fin, buffer)
                    continue
                if self._end == len(self._buffer):
                    self._compact()
                n = self._stream.recv_into(memoryview(self._buffer)[self._end :])
                if not n:
                    break
                self.last_seen = time.monotonic()
                self._end += n
                self._parse()
            else:
                return
        except (BlockingIOError, ssl.SSLWantReadError):
            return
        except (OSError, ssl.SSLError) as exc:
            self._finish(None, exc)
            return
        self._finish(None)  # end of stream without a close frame

    def _compact(self) -> None:
        pending = self._buffer[self._start : self._end]
        self._buffer[: len(pending)] = pending
        self._start, self._end = 0, len(pending)

    def _parse(self) -> None:
        """Handle every whole frame in the buffer; start a direct read for a large one."""
        buffer = self._buffer
        while not self.closed:
            available = self._end - self._start
            if available < 2:
                break
            first, second = buffer[self._start], buffer[self._start + 1]
            if second & 0x80:
                self._finish(1002, ProtocolError("the server sent a masked frame"))
                return
            length = second & 0x7F
            head = 2
            if length == 126:
                head = 4
                if available < head:
                    break
                (length,) = struct.unpack_from("!H", buffer, self._start + 2)
            elif length == 127:
                head = 10
                if available < head:
                    break
                (length,) = struct.unpack_from("!Q", buffer, self._start + 2)
            if length > MAX_MESSAGE:
                self._finish(1009, ProtocolError(f"the server sent a frame of {length} bytes"))
                return
            fin, opcode = bool(first & 0x80), first & 0x0F
            body_start = self._start + head
            if length >= _DIRECT and self._end - body_start < length:
                large = bytearray(length)
                got = self._end - body_start
                large[:got] = buffer[body_start : self._end]
                self._start = self._end = 0
                self._direct = (opcode, fin, large, got)
                return
            if self._end - body_start < length:
                if self._start and len(buffer) - self._start < head + length:
                    self._compact()
                break
            payload = bytes(buffer[body_start : body_start + length])
            self._start = body_start + length
            self._frame(opcode, fin, payload)
        if self._start == self._end:
            self._start = self._end = 0

    def _frame(self, opcode: int, fin: bool, payload: Buffer) -> None:
        if opcode == OP_PING:
            self._send_quietly(bytes(payload), OP_PONG)
        elif opcode == OP_PONG:
            pass
        elif opcode == OP_CLOSE:
            code = struct.unpack_from("!H", payload)[0] if len(payload) >= 2 else None
            self._send_quietly(bytes(payload[:2]), OP_CLOSE)
            self._finish(code)
        elif opcode in (OP_TEXT, OP_BINARY) and fin and not self._fragments:
            self._on_message(payload)
        elif opcode in (OP_TEXT, OP_BINARY, OP_CONTINUATION):
            self._fragments.append(payload)
            if fin:
                message, self._fragments = b"".join(self._fragments), []
                self._on_message(message)
        else:
            self._finish(1002, ProtocolError(f"unknown WebSocket opcode {opcode}"))

    def _finish(self, code: int | None, error: BaseException | None = None) -> None:
        with self._state_lock:
            if self.closed:
                return
            self.closed = True
        self.close_code = code
        #: Why the connection ended, when it was not a close from either side.
        self.error = error
        try:  # a write blocked on a peer that stopped reading fails now and lets go of the lock
            self._stream.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._detach)
        else:
            self._stream.sock.close()

    def _detach(self) -> None:
        assert self._loop is not None
        try:
            self._loop.remove_reader(self._stream.sock.fileno())
        except (ValueError, OSError):
            pass
        self._stream.sock.close()
        self._on_close(self.close_code)
