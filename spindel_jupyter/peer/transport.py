"""A client WebSocket (RFC 6455) on wsproto that any thread writes to and one event loop reads from.

wsproto (sans-IO: bytes in, events out) does the opening handshake, checks
every frame the server sends and frames the messages we send; this module moves
the bytes. A peer's frames start on many threads: a caller waiting for its
reply, the kernel's main thread answering a call or setting a signal. Writing
them from that thread, under one lock, saves a hop to the connection's thread
on every frame. Reading stays on the connection's event loop, in bounded turns
so that a server sending fast never starves the loop's other callbacks; the
loop's own frames (pongs, closes, pings) never wait for the socket. TLS goes
through a memory BIO, so the reading and the writing thread never use the SSL
object at the same time.

Large binary messages (arrays) take hand-written paths, measured several times
faster than wsproto's (bench/README.md has the figures): sent masked with
numpy in one pass and written without joining their parts, received straight
into one buffer of their final size (the body of a returned array is not
copied again).
"""

from __future__ import annotations

import asyncio
import mmap
import os
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import SplitResult, urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from ..core.websocket import OP_BINARY, OP_CONTINUATION, OP_TEXT, frame_header
from ..core.wire import Buffer

try:  # masks large payloads (arrays) in one pass when available
    import numpy as np
except ImportError:  # pragma: no cover - exercised only without numpy
    np = None  # type: ignore[assignment]

__all__ = ["MAX_MESSAGE", "HandshakeError", "ProtocolError", "WebSocket", "open_websocket"]

_MAX_RESPONSE = 64 * 1024
_CHUNK = 256 * 1024
#: A binary message at least this large is sent and received by the hand-written paths.
_LARGE = 64 * 1024
#: Large messages are masked into (and written from) a reused buffer of this size.
_MASK_CHUNK = 1024 * 1024
#: Room for a frame header (at most 14 bytes) ahead of the payload, whose words stay aligned.
_HEAD_ROOM = 16
#: Without numpy, a message at least this large is received into memory mapped for it.
_MAPPED = 1024 * 1024
#: Bytes read and frames handled per turn of the loop, at most: then other callbacks run.
_TURN_BYTES = 1024 * 1024
_TURN_FRAMES = 64
#: A larger message closes the connection with 1009 unless the caller sets a limit of its own.
MAX_MESSAGE = 2**31
_RESERVED_BITS = 0x70


def _iov_max() -> int:
    try:
        value = os.sysconf("SC_IOV_MAX")
    except (AttributeError, ValueError, OSError):  # pragma: no cover - platforms without it
        return 1024
    return value if value > 0 else 1024


#: Buffers one sendmsg call takes at most (more fails with "Message too long").
_IOV_MAX = _iov_max()


class HandshakeError(ConnectionError):
    """The server answered the upgrade with something else than ``101``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status} {reason}".strip())
        self.status = status


class ProtocolError(ConnectionError):
    """The server broke RFC 6455; ``code`` is the close code the connection was closed with."""

    def __init__(self, message: str, code: int = 1002) -> None:
        super().__init__(message)
        self.code = code


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
                self.send(self._encrypt([]), block=True)
                return
            except ssl.SSLWantReadError:
                self.send(self._encrypt([]), block=True)
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

    def buffered(self) -> bool:
        """Whether TLS holds bytes already read from the socket (no socket event will announce them)."""
        return self.tls is not None and (self.tls.pending() > 0 or self._in.pending > 0)

    def recv_some(self, size: int) -> bytes:
        """Up to ``size`` bytes, at least one (the handshake, on the still blocking socket)."""
        buffer = bytearray(size)
        got = self.recv_into(memoryview(buffer))
        if not got:
            raise ConnectionError("the server closed the connection during the WebSocket handshake")
        return bytes(buffer[:got])

    def wire(self, parts: Sequence[memoryview]) -> list[memoryview]:
        """The bytes that carry ``parts`` on the socket (encrypted with TLS); callers hold the write lock."""
        return list(parts) if self.tls is None else self._encrypt(parts)

    def _encrypt(self, parts: Sequence[memoryview]) -> list[memoryview]:
        assert self.tls is not None
        with self._tls_lock:
            for part in parts:
                while part:
                    part = part[self.tls.write(part) :]
            return [memoryview(self._out.read())]

    def send_all(self, parts: Iterable[memoryview]) -> None:
        """Write every part, one after the other, waiting while the socket is full (callers hold the
        write lock). With TLS a large part is encrypted and written a piece at a time: the reading
        thread waits at most one piece for the SSL object."""
        for part in parts:
            if self.tls is None:
                self.send([part], block=True)
                continue
            for start in range(0, len(part), _CHUNK):
                self.send(self._encrypt([part[start : start + _CHUNK]]), block=True)

    def send(self, views: list[memoryview], block: bool) -> list[memoryview]:
        """Write ``views`` (in batches sendmsg takes); return what is left when not ``block``-ing."""
        start = 0
        views = [view for view in views if len(view)]
        while start < len(views):
            try:
                sent = self.sock.sendmsg(views[start : start + _IOV_MAX])
            except BlockingIOError:
                if not block:
                    break
                _wait_writable(self.sock)
                continue
            while sent:
                if sent >= len(views[start]):
                    sent -= len(views[start])
                    start += 1
                else:
                    views[start] = views[start][sent:]
                    sent = 0
        return views[start:]


def _wait_writable(sock: socket.socket) -> None:
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    poller.poll(1000)


def _masked_frame(parts: Sequence[memoryview], size: int) -> Iterator[memoryview]:
    """One final binary frame of ``parts``, masked with numpy a chunk at a time into one reused buffer.

    The message is never copied whole (nor its parts joined), and its first bytes
    are on their way while the rest is masked. Each chunk must be written before
    the next is asked for. Small parts share a chunk; a large one starts its own,
    where its words line up with the buffer's (masking unaligned words is slower).
    """
    mask = os.urandom(4)
    head = frame_header(OP_BINARY, size, mask)
    # The header goes first in the buffer, ending where the payload's words start.
    scratch = np.empty(_HEAD_ROOM + min(size, _MASK_CHUNK), np.uint8)
    begin = filled = _HEAD_ROOM
    begin -= len(head)
    scratch[begin:filled] = np.frombuffer(head, np.uint8)
    offset = 0
    for part in parts:
        source = np.frombuffer(part, np.uint8)
        if filled % 8 and len(source) >= _LARGE:
            yield scratch[begin:filled].data
            begin = filled = 0
        done = 0
        while done < len(source):
            n = min(len(source) - done, len(scratch) - filled)
            _mask(source[done : done + n], mask, offset, scratch[filled : filled + n])
            done, offset, filled = done + n, offset + n, filled + n
            if filled == len(scratch):
                yield scratch[begin:].data
                begin = filled = 0
    if filled > begin:
        yield scratch[begin:filled].data


def _mask(source: Any, mask: bytes, offset: int, out: Any) -> None:
    """``out`` = ``source`` XOR the 4-byte ``mask`` repeated from byte ``offset`` of the payload on."""
    turn = offset % 4
    key = (mask[turn:] + mask[:turn]) * 2
    words = len(source) // 8 * 8
    np.bitwise_xor(
        source[:words].view(np.uint64), np.frombuffer(key, np.uint64), out=out[:words].view(np.uint64)
    )
    np.bitwise_xor(source[words:], np.frombuffer(key, np.uint8)[: len(source) - words], out=out[words:])


def _host_header(parts: SplitResult) -> str:
    """``host[:port]`` of a URL: never the credentials a ``user:pass@`` URL carries."""
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    return host if parts.port is None else f"{host}:{parts.port}"


def open_websocket(
    url: str,
    headers: dict[str, str],
    timeout: float,
    tls: ssl.SSLContext | None = None,
    max_message: int = MAX_MESSAGE,
) -> WebSocket:
    """Connect and upgrade (blocking: run it off the event loop); :class:`HandshakeError` on refusal.

    ``wss://`` URLs verify the server with ``tls`` (default: the system's trusted certificates).
    A message from the server over ``max_message`` bytes closes the connection (code 1009).
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
        proto = WSConnection(ConnectionType.CLIENT)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        extra = [(name.encode(), value.encode()) for name, value in headers.items()]
        request = proto.send(Request(host=_host_header(parts), target=target, extra_headers=extra))
        stream.send_all([memoryview(request)])
        response = b""
        while b"\r\n\r\n" not in response:
            if len(response) > _MAX_RESPONSE:
                raise ProtocolError(f"the server at {url} answered the WebSocket upgrade with over 64 KiB")
            response += stream.recv_some(_CHUNK)
        head, _, rest = response.partition(b"\r\n\r\n")
        try:
            proto.receive_data(head + b"\r\n\r\n")  # the rest is frames: ours to read
            answer = next(proto.events(), None)
        except RemoteProtocolError as exc:
            raise ProtocolError(
                f"the server at {url} answered the WebSocket upgrade wrongly ({exc}): "
                "is it a WebSocket endpoint, and is nothing in between rewriting the answer?"
            ) from None
        if isinstance(answer, RejectConnection):
            status_line = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            raise HandshakeError(answer.status_code, status_line[2] if len(status_line) > 2 else "")
        if not isinstance(answer, AcceptConnection) or proto.connection is None:
            raise ProtocolError(f"the server at {url} did not answer the WebSocket upgrade")
    except BaseException:
        stream.sock.close()
        raise
    stream.sock.settimeout(None)
    stream.sock.setblocking(False)
    return WebSocket(stream, proto.connection, rest, max_message)


def _allocate(size: int) -> memoryview:
    """A writable buffer whose memory is committed as bytes land in it, in huge pages if the system has them.

    A header that announces a huge message costs nothing until its bytes arrive;
    and a fresh 64 MB buffer in huge pages takes a quarter of the time of page
    faults in 4 KiB pages (numpy asks for them; ``bytearray`` zeroes every page).
    """
    if np is not None:
        return np.empty(size, np.uint8).data
    if size < _MAPPED:  # pragma: no cover - exercised only without numpy
        return memoryview(bytearray(size))
    mapped = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)  # pragma: no cover
    if hasattr(mmap, "MADV_HUGEPAGE"):  # pragma: no cover
        mapped.madvise(mmap.MADV_HUGEPAGE)
    return memoryview(mapped)  # pragma: no cover


class _Large:
    """A large binary message being read straight into a buffer of its final size."""

    __slots__ = ("buffer", "got")

    def __init__(self, size: int) -> None:
        self.buffer = _allocate(size)
        self.got = 0

    def rest(self, budget: int) -> memoryview:
        return self.buffer[self.got : self.got + budget]

    @property
    def done(self) -> bool:
        return self.got == len(self.buffer)


class WebSocket:
    """An open client WebSocket: :meth:`send` from any thread; messages arrive on the :meth:`start` loop."""

    def __init__(
        self, stream: _Stream, proto: Connection, initial: bytes = b"", max_message: int = MAX_MESSAGE
    ) -> None:
        self._stream = stream
        #: wsproto's connection, upgraded: every call into it holds this lock (it keeps state across calls).
        self._proto = proto
        self._proto_lock = threading.Lock()
        #: Largest message taken from the server (bytes); a larger one closes with 1009.
        self.max_message = max_message
        # -- writing: one writer at a time; control frames queued when they cannot go at once
        self._write_lock = threading.Lock()
        self._queue_lock = threading.Lock()
        #: Control frames (type, bytes) to write before anything else: at most one ping and one pong.
        self._queued: list[tuple[type[Event], bytes]] = []
        #: Bytes already on their way (a non-blocking write was cut short): they go first.
        self._unsent: list[memoryview] = []
        self._watching_writable = False
        # -- reading (the loop's thread)
        self._buffer = bytearray(max(_CHUNK, len(initial)))
        self._buffer[: len(initial)] = initial
        self._start, self._end = 0, len(initial)
        #: Bytes of the current frame still to hand to wsproto.
        self._feeding = 0
        self._large: _Large | None = None
        #: Whether a fragmented message is under way, and its size so far (from the frame headers).
        self._fragmented = False
        self._message_size = 0
        self._pieces: list[bytes] = []
        self._frames_left = _TURN_FRAMES
        self._turn_scheduled = False
        self._on_message: Callable[[Buffer], None] = lambda message: None
        self._on_close: Callable[[int | None], None] = lambda code: None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._state_lock = threading.Lock()
        self.close_code: int | None = None
        #: Why the connection ended, when it was not a close from either side.
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
        # What came with the handshake (after its answer, or still in the TLS buffers) has no
        # socket event to announce it: read it now.
        self._schedule_turn()

    # -- writing (any thread) ------------------------------------------------------------

    def send(
        self, parts: Buffer | Sequence[Buffer], opcode: int = OP_BINARY, wait: float | None = None
    ) -> None:
        """Send one message made of ``parts`` (``OP_BINARY`` or ``OP_TEXT``); OSError if the socket is gone.

        ``wait`` bounds how long to wait for another thread's write to finish (TimeoutError after it).
        A write that fails ends the connection: the frame may have been cut short.
        """
        if isinstance(parts, (bytes, bytearray, memoryview)):
            parts = [parts]
        views = [memoryview(part).cast("B") for part in parts]  # lengths in bytes, whatever the items
        size = sum(len(view) for view in views)
        frame: Iterable[memoryview]
        if opcode == OP_BINARY and size >= _LARGE and np is not None:
            frame = _masked_frame(views, size)
        elif opcode in (OP_BINARY, OP_TEXT):
            payload = views[0].tobytes() if len(views) == 1 else b"".join(views)
            event = BytesMessage(data=payload) if opcode == OP_BINARY else TextMessage(data=payload.decode())
            try:
                with self._proto_lock:
                    frame = [memoryview(self._proto.send(event))]
            except LocalProtocolError:
                raise ConnectionResetError("the WebSocket is closing") from None
        else:
            raise ValueError(f"send() takes binary or text messages, not opcode {opcode}")
        if not self._write_lock.acquire(timeout=-1 if wait is None else wait):
            raise TimeoutError("another write is still under way")
        try:
            if self.closed:
                raise ConnectionResetError("the WebSocket is closed")
            try:
                if self._unsent or self._queued:
                    self._flush(block=True)
                self._stream.send_all(frame)
            except OSError as exc:
                self._finish(None, exc)
                raise
        finally:
            self._release()

    def ping(self) -> None:
        """Ask the server for a pong (any bytes from it count as alive); never waits."""
        self._control(Ping())

    def close(self, code: int = 1000) -> None:
        """Say goodbye (if the socket takes it at once) and drop the socket; the close callback runs
        on the loop."""
        if self.closed:
            return
        self._control(CloseConnection(code=code))
        self._finish(None)

    def _control(self, event: Event) -> None:
        """Write a control frame now if the socket takes it, else queue it; never waits.

        The loop's thread sends these (pongs, pings, closes): it must not block on a
        server that stopped reading, nor behind another thread's long write. A queued
        frame leaves with the next write; of pings and pongs only the latest is kept.
        """
        try:
            with self._proto_lock:
                data = self._proto.send(event)
        except LocalProtocolError:
            return  # the connection is closing: nothing more to say
        with self._queue_lock:
            if isinstance(event, (Ping, Pong)):
                self._queued = [(kind, queued) for kind, queued in self._queued if kind is not type(event)]
            self._queued.append((type(event), data))
        if self._write_lock.acquire(blocking=False):  # else the holder writes it before letting go
            self._flush_or_watch()

    def _flush(self, block: bool) -> None:
        """Write what is queued, before anything else (the write lock is held)."""
        if self._unsent:
            self._unsent = self._stream.send(self._unsent, block)
            if self._unsent:
                return
        with self._queue_lock:
            queued, self._queued = self._queued, []
        if queued:
            wire = self._stream.wire([memoryview(data) for _, data in queued])
            self._unsent = self._stream.send(wire, block)

    def _flush_or_watch(self) -> None:
        """Without blocking, write what is queued and let go of the write lock (held on entry);
        what the socket does not take now waits for it to become writable."""
        try:
            try:
                self._flush(block=False)
            finally:
                self._release(block=False)
        except OSError as exc:
            self._finish(None, exc)
            return
        loop = self._loop
        if (self._unsent or self._queued) and loop is not None and not loop.is_closed() and not self.closed:
            loop.call_soon_threadsafe(self._watch_writable)

    def _release(self, block: bool = True) -> None:
        """Let go of the write lock, first writing control frames queued meanwhile: whoever
        queued them saw the lock held and left them to its holder."""
        while True:
            self._write_lock.release()
            if not self._queued or (self._unsent and not block) or self.closed:
                return
            if not self._write_lock.acquire(blocking=False):
                return  # the new holder writes them
            try:
                self._flush(block)
            except OSError as exc:
                self._write_lock.release()
                self._finish(None, exc)
                return

    def _watch_writable(self) -> None:
        if not self._watching_writable and not self.closed:
            self._watching_writable = True
            assert self._loop is not None
            self._loop.add_writer(self._stream.sock.fileno(), self._on_writable)

    def _on_writable(self) -> None:
        assert self._loop is not None
        self._loop.remove_writer(self._stream.sock.fileno())
        self._watching_writable = False
        if self._write_lock.acquire(blocking=False):  # else the holder writes what is queued
            self._flush_or_watch()

    # -- reading (the loop's thread) ----------------------------------------------------

    def _schedule_turn(self) -> None:
        if not self._turn_scheduled and self._loop is not None:
            self._turn_scheduled = True
            self._loop.call_soon(self._on_readable)

    def _on_readable(self) -> None:
        self._turn_scheduled = False
        if self.closed:
            return
        try:
            finished = self._turn()
        except (BlockingIOError, ssl.SSLWantReadError):
            return
        except (OSError, ssl.SSLError) as exc:
            self._finish(None, exc)
            return
        if not finished and not self.closed:
            self._schedule_turn()  # what is already read (or decrypted) has no socket event to come

    def _turn(self) -> bool:
        """Read and handle a bounded amount; False if more may be waiting (a budget ran out)."""
        self._frames_left = _TURN_FRAMES
        budget = _TURN_BYTES
        while not self.closed:
            if not self._process():
                return False
            if budget <= 0:
                return False
            large = self._large
            if large is not None:
                with large.rest(budget) as view:
                    asked, n = len(view), self._stream.recv_into(view)
                large.got += n
            else:
                if self._start:
                    self._compact()
                room = min(budget, len(self._buffer) - self._end)
                if not room:  # the buffer is full of frames still to handle
                    return False
                with memoryview(self._buffer)[self._end : self._end + room] as view:
                    asked, n = room, self._stream.recv_into(view)
                self._end += n
            if not n:
                self._finish(None)  # end of stream without a close frame
                return True
            budget -= n
            self.last_seen = time.monotonic()
            if n < asked and not self._stream.buffered():
                return self._process()  # the socket is empty: its next bytes wake the reader
        return True

    def _compact(self) -> None:
        """Move what is left to read (a part of a frame header) to the start of the buffer."""
        pending = self._buffer[self._start : self._end]
        self._buffer[: len(pending)] = pending
        self._start, self._end = 0, len(pending)

    def _process(self) -> bool:
        """Handle the whole frames read so far; False when this turn's frame budget ran out first.

        The frame headers are read here only to find where each frame ends: a large
        binary message is read straight into its own buffer; every other frame goes
        to wsproto, which checks it.
        """
        buffer = self._buffer
        fed = pos = self._start
        while not self.closed:
            large = self._large
            if large is not None:
                if not large.done:
                    break
                self._large = None
                self._deliver(large.buffer)
                continue
            if self._feeding:
                step = min(self._feeding, self._end - pos)
                if not step:
                    break
                pos += step
                self._feeding -= step
                continue
            if self._frames_left <= 0:
                self._feed(fed, pos)
                return pos == self._end
            header = _parse_header(buffer, pos, self._end)
            if header is None:
                break
            first, masked, length, head = header
            opcode, final = first & 0x0F, bool(first & 0x80)
            self._frames_left -= 1
            if opcode in (OP_CONTINUATION, OP_TEXT, OP_BINARY):
                size = length + (self._message_size if opcode == OP_CONTINUATION else 0)
                if size > self.max_message:
                    self._feed(fed, pos)
                    self._fail(
                        1009,
                        f"the server sent a message of {size} bytes, over the limit of {self.max_message} "
                        "bytes; send smaller values, or raise the limit on both sides",
                    )
                    return True
                large_message = (
                    opcode == OP_BINARY
                    and final
                    and not self._fragmented
                    and not masked
                    and not first & _RESERVED_BITS
                    and length >= _LARGE
                )
                self._fragmented, self._message_size = not final, 0 if final else size
                if large_message:
                    self._feed(fed, pos)
                    if self.closed:
                        return True
                    pos = self._read_large(pos + head, length)
                    fed = pos
                    continue
            self._feeding = head + length
        self._feed(fed, pos)
        return True

    def _read_large(self, body: int, length: int) -> int:
        """Read a large message (its body from ``body`` on) into its own buffer; the new buffer start."""
        large = self._large = _Large(length)
        have = min(length, self._end - body)
        large.buffer[:have] = self._buffer[body : body + have]
        large.got = have
        self._start = body + have
        return self._start

    def _feed(self, start: int, end: int) -> None:
        """Hand ``buffer[start:end]`` to wsproto and act on what it makes of it."""
        self._start = end
        if start == end or self.closed:
            return
        events: list[Event] = []
        failure: CloseConnection | None = None
        with self._proto_lock:
            self._proto.receive_data(bytes(memoryview(self._buffer)[start:end]))
            for event in self._proto.events():
                if isinstance(event, CloseConnection):
                    if self._proto.state is ConnectionState.OPEN:  # not a close from the server:
                        failure = event  # wsproto found the frames wrong
                    else:
                        events.append(event)
                    break
                events.append(event)
        for event in events:
            if self.closed:
                return
            if isinstance(event, (BytesMessage, TextMessage)):
                data = event.data.encode() if isinstance(event.data, str) else bytes(event.data)
                if event.message_finished and not self._pieces:
                    self._deliver(data)
                else:
                    self._pieces.append(data)
                    if event.message_finished:
                        message, self._pieces = b"".join(self._pieces), []
                        self._deliver(message)
            elif isinstance(event, Ping):
                self._control(event.response())
            elif isinstance(event, CloseConnection):
                self._control(event.response())
                self._finish(None if event.code == 1005 else event.code)  # 1005: it gave no code
        if failure is not None and not self.closed:
            self._fail(failure.code, f"the server broke the WebSocket protocol (RFC 6455): {failure.reason}")

    def _deliver(self, message: Buffer) -> None:
        try:
            self._on_message(message)
        except Exception as exc:  # the connection lives on; the loop reports it
            assert self._loop is not None
            self._loop.call_exception_handler(
                {"message": "WebSocket message callback failed", "exception": exc}
            )

    def _fail(self, code: int, message: str) -> None:
        """Close with ``code`` for what the server did wrong; the error says what it was."""
        self._control(CloseConnection(code=code, reason=message))
        self._finish(code, ProtocolError(f"{message} (closed with code {code})", code))

    def _finish(self, code: int | None, error: BaseException | None = None) -> None:
        with self._state_lock:
            if self.closed:
                return
            self.closed = True
        self.close_code = code
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
            if self._watching_writable:
                self._loop.remove_writer(self._stream.sock.fileno())
        except (ValueError, OSError):
            pass
        self._stream.sock.close()
        self._on_close(self.close_code)


def _parse_header(buffer: bytearray, pos: int, end: int) -> tuple[int, bool, int, int] | None:
    """(first byte, masked, payload length, header length) of the frame at ``pos``; None if incomplete."""
    if end - pos < 2:
        return None
    first, second = buffer[pos], buffer[pos + 1]
    length, head = second & 0x7F, 2
    if length == 126:
        head = 4
        if end - pos < head:
            return None
        (length,) = struct.unpack_from("!H", buffer, pos + 2)
    elif length == 127:
        head = 10
        if end - pos < head:
            return None
        (length,) = struct.unpack_from("!Q", buffer, pos + 2)
    masked = bool(second & 0x80)
    return first, masked, length, head + (4 if masked else 0)
