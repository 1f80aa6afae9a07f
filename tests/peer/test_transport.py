"""The client WebSocket against a tornado WebSocket server (plain and TLS) and servers that misbehave."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, HTTPError
from tornado.websocket import WebSocketHandler

from spindel_jupyter.peer.transport import MAX_MESSAGE, HandshakeError, ProtocolError, open_websocket
from tests.peer.conftest import RawServer, frame, upgrade
from tests.support import wait_until

#: A loop tick may be late by this much and no more (s): far above scheduling noise, far below a stall.
RESPONSIVE = 0.5


class Echo(WebSocketHandler):
    """Echoes binary messages; ``close:CODE`` closes with CODE; ``big:N`` answers N bytes."""

    def prepare(self) -> None:
        if self.request.headers.get("Authorization") != "token good":
            raise HTTPError(403)

    def on_message(self, message: str | bytes) -> None:
        if isinstance(message, str) and message.startswith("close:"):
            self.close(int(message[6:]))
        elif isinstance(message, str) and message.startswith("big:"):
            self.write_message(os.urandom(int(message[4:])), binary=True)
        elif isinstance(message, str) and message == "ping-me":
            self.ping(b"are you there")
        else:
            self.write_message(message, binary=isinstance(message, bytes))

    def on_pong(self, data: bytes) -> None:
        self.write_message(b"pong:" + data, binary=True)


class Server:
    """A tornado server on its own thread; ``url`` is ws:// or wss://."""

    def __init__(self, certfile: Path | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        sockets = bind_sockets(0, "127.0.0.1")
        port = sockets[0].getsockname()[1]
        tls = None
        if certfile is not None:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(certfile)

        async def serve() -> None:
            app = Application([("/ws", Echo)], websocket_max_message_size=2**30)
            HTTPServer(app, ssl_options=tls, max_buffer_size=2**30).add_sockets(sockets)

        asyncio.run_coroutine_threadsafe(serve(), self.loop).result(5)
        self.url = f"{'wss' if tls else 'ws'}://localhost:{port}/ws"

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def server() -> Iterator[Server]:
    made = Server()
    yield made
    made.stop()


def test_small_and_large_messages_both_ways(server: Server, connect: Any) -> None:
    client = connect(server.url)
    for size in (0, 1, 125, 126, 65_535, 65_536, 3_000_001):
        data = os.urandom(size)
        client.ws.send(data)
        assert client.next() == data, size


def test_a_message_of_several_parts_arrives_as_one(server: Server, connect: Any) -> None:
    client = connect(server.url)
    array = np.arange(100_003, dtype=np.int64)
    parts = [b"abc", array.data, b"", b"z"]  # lengths not multiples of 4 shift the mask
    client.ws.send(parts)
    assert client.next() == b"abc" + array.tobytes() + b"z"


def test_a_message_of_more_buffers_than_sendmsg_takes_arrives_whole(server: Server, connect: Any) -> None:
    """1,100 buffers (a list of arrays) exceed IOV_MAX: they are written in batches, not refused."""
    client = connect(server.url)
    for size in (3, 150):  # small (framed by wsproto) and large (the hand-written path) in total
        parts = [bytes([i % 256]) * size for i in range(1_100)]
        client.ws.send(parts)
        assert client.next() == b"".join(parts)


def test_large_messages_from_the_server_arrive_whole(server: Server, connect: Any) -> None:
    client = connect(server.url)
    for size in (70_000, 5_000_000):
        client.ws.send(f"big:{size}".encode(), opcode=0x1)
        assert len(client.next()) == size


def test_writes_from_many_threads_never_interleave(server: Server, connect: Any) -> None:
    client = connect(server.url)
    sent = {bytes([i]) * (100_000 + i) for i in range(16)} | {bytes([i]) * (10 + i) for i in range(16)}
    threads = [threading.Thread(target=client.ws.send, args=(data,)) for data in sent]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {client.next() for _ in sent} == sent


def test_pings_from_the_server_are_answered(server: Server, connect: Any) -> None:
    client = connect(server.url)
    client.ws.send(b"ping-me", opcode=0x1)
    assert client.next() == b"pong:are you there"


def test_the_close_code_reaches_the_callback(server: Server, connect: Any) -> None:
    client = connect(server.url)
    client.ws.send(b"close:4000", opcode=0x1)
    assert client.closed.result(5) == 4000
    with pytest.raises(OSError):
        client.ws.send(b"after the close")


def test_a_refused_upgrade_names_the_status(server: Server) -> None:
    with pytest.raises(HandshakeError) as refused:
        open_websocket(server.url, {"Authorization": "token bad"}, 5)
    assert refused.value.status == 403
    assert str(refused.value) == "HTTP 403 Forbidden"
    with pytest.raises(HandshakeError) as missing:
        open_websocket(server.url.replace("/ws", "/nothing"), {}, 5)
    assert missing.value.status == 404


def test_not_a_websocket_url() -> None:
    with pytest.raises(ValueError, match="ws:// or wss://"):
        open_websocket("http://localhost/ws", {}, 5)


def test_credentials_in_the_url_stay_out_of_the_host_header(raw_server: Any, connect: Any) -> None:
    server = raw_server()
    port = server.url.split(":")[2].split("/")[0]
    connect(server.url.replace("ws://", "ws://someone:secret@"))
    assert server.conn is not None  # the upgrade is done
    assert f"\r\nHost: 127.0.0.1:{port}\r\n".encode() in server.request
    assert b"secret" not in server.request and b"someone" not in server.request


def test_tls(certificate: Path, connect: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    server = Server(certfile=certificate)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            open_websocket(server.url, {"Authorization": "token good"}, 5)
        trusted = ssl.create_default_context(cafile=str(certificate))
        client = connect(server.url, tls=trusted)
        for size in (5, 200_000, 3_000_000):
            data = os.urandom(size)
            client.ws.send(data)
            assert client.next() == data
        client.ws.send(b"big:1000000", opcode=0x1)
        assert len(client.next()) == 1_000_000
        client.ws.send(b"ping-me", opcode=0x1)
        assert client.next() == b"pong:are you there"
        monkeypatch.setenv("SSL_CERT_FILE", str(certificate))  # as the README says for self-signed ones
        trusted_by_env = connect(server.url)
        trusted_by_env.ws.send(b"trusted through SSL_CERT_FILE")
        assert trusted_by_env.next() == b"trusted through SSL_CERT_FILE"
    finally:
        server.stop()


def _tls_server_answering_with_a_message(certificate: Path, message: bytes) -> tuple[str, threading.Event]:
    """A TLS server whose answer to the upgrade and first message leave in one write, as two records."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate)
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_side=True)

        def pump() -> None:
            conn.sendall(outgoing.read())
            data = conn.recv(65536)
            if not data:
                raise ConnectionError("the client left")
            incoming.write(data)

        try:
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    pump()
            request = b""
            while b"\r\n\r\n" not in request:
                try:
                    request += tls.read(65536)
                except ssl.SSLWantReadError:
                    pump()
            tls.write(upgrade(request))
            tls.write(frame(0x2, message))
            conn.sendall(outgoing.read())
            done.wait(10)
        finally:
            conn.close()
            listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return f"wss://localhost:{listener.getsockname()[1]}/ws", done


def test_a_message_that_comes_with_the_tls_handshake_is_read_at_once(certificate: Path, connect: Any) -> None:
    """Records read with the upgrade's answer wait in the TLS buffers: no socket event announces them."""
    url, done = _tls_server_answering_with_a_message(certificate, b"sent with the answer")
    try:
        client = connect(url, tls=ssl.create_default_context(cafile=str(certificate)))
        assert client.next(timeout=5) == b"sent with the answer"
    finally:
        done.set()


def test_a_fragmented_message_is_put_back_together(raw_server: Any, connect: Any) -> None:
    server = raw_server()
    client = connect(server.url)
    server.send(
        frame(0x2, b"abc", fin=False)
        + frame(0x0, b"de", fin=False)
        + frame(0x9)  # a control frame may come between fragments
        + frame(0x0, b"f")
        + frame(0x2, b"gh")
    )
    assert client.next() == b"abcdef"
    assert client.next() == b"gh"


def test_a_frame_over_the_limit_closes_the_connection(raw_server: Any, connect: Any) -> None:
    server = raw_server()
    client = connect(server.url)
    server.send(bytes([0x82, 127]) + struct.pack("!Q", MAX_MESSAGE + 1))
    assert client.closed.result(5) == 1009
    assert isinstance(client.ws.error, ProtocolError)
    assert server.read_close() == 1009


def test_a_huge_announced_frame_takes_no_memory_before_its_bytes(raw_server: Any, connect: Any) -> None:
    server = raw_server()
    client = connect(server.url, max_message=2**30)
    before, seen = _rss(), client.ws.last_seen
    server.send(bytes([0x82, 127]) + struct.pack("!Q", 512 * 2**20) + bytes(1_000_000))
    wait_until(lambda: client.ws.last_seen > seen, what="the first bytes read")
    time.sleep(0.3)  # the rest of the megabyte
    assert _rss() - before < 64 * 2**20, "only what arrived takes memory, not the 512 MiB announced"
    assert not client.ws.closed


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_masked_frame_from_the_server_is_refused(raw_server: Any, connect: Any) -> None:
    server = raw_server()
    client = connect(server.url)
    server.send(frame(0x2, b"x", mask=b"abcd"))
    assert client.closed.result(5) == 1002
    assert server.read_close() == 1002


def test_the_loop_never_waits_for_a_server_that_stopped_reading(raw_server: Any, connect: Any) -> None:
    """A server that floods pings and reads nothing: the pongs cannot all get out, and the loop
    (where the heartbeat runs) keeps running; closing from it does not wait either."""
    server = raw_server(rcvbuf=4096)
    client = connect(server.url)
    server.conn.settimeout(20)
    server.send(frame(0x9, bytes(125)) * 30_000)  # pongs of 3.9 MB: far more than the socket buffers
    time.sleep(0.5)
    assert client.ticker.lag() < RESPONSIVE, f"the loop stalled for {client.ticker.lag():.2f} s"
    client.on_loop(client.ws.close)  # as the heartbeat does when the server is silent
    assert client.closed.result(5) is None
    assert client.ticker.lag() < RESPONSIVE


def test_a_server_sending_fast_never_starves_the_loop(raw_server: Any, connect: Any) -> None:
    """The reader returns to the loop after a bounded amount of work, whatever is still waiting."""
    server = raw_server()
    client = connect(server.url)
    burst = (frame(0x2, bytes(100)) * 2_000) + frame(0x2, bytes(200_000))  # small frames, and a large one
    stop = time.monotonic() + 3

    def flood() -> None:
        while time.monotonic() < stop:
            server.send(burst)

    flooding = threading.Thread(target=flood, daemon=True)
    flooding.start()
    flooding.join(10)
    assert client.received > 1_000
    assert client.ticker.lag() < RESPONSIVE, f"a 10 ms tick was {client.ticker.lag():.2f} s late"


def test_closing_unblocks_a_write_the_server_never_reads(raw_server: Any, connect: Any) -> None:
    server = raw_server()
    client = connect(server.url)
    outcome: concurrent.futures.Future[BaseException | None] = concurrent.futures.Future()

    def write() -> None:
        try:
            client.ws.send(bytes(50_000_000))
            outcome.set_result(None)
        except OSError as exc:
            outcome.set_result(exc)

    threading.Thread(target=write, daemon=True).start()
    time.sleep(0.5)
    assert not outcome.done(), "the write should be waiting for a reader"
    started = time.monotonic()
    client.ws.ping()  # queued behind the write, never waiting for it
    client.ws.close()  # its close frame cannot get in: it is skipped, and the socket shut
    assert isinstance(outcome.result(5), OSError)
    assert time.monotonic() - started < 5
    assert client.closed.result(5) is None
    assert client.ticker.lag() < RESPONSIVE


def test_a_server_that_never_answers_the_upgrade_times_out(raw_server: Any) -> None:
    server = raw_server(answer=lambda request: b"")
    with pytest.raises(TimeoutError):
        open_websocket(server.url, {}, 0.5)


def test_a_closed_connection_refuses_to_send(raw_server: Any, connect: Any) -> None:
    server: RawServer = raw_server()
    client = connect(server.url)
    server.send(frame(0x8, struct.pack("!H", 1001)))
    assert client.closed.result(5) == 1001
    assert server.read_close() == 1001  # the close is answered with its code
    with pytest.raises(ConnectionResetError):
        client.ws.send(b"late")
