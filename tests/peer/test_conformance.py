"""RFC 6455 from the client's side, case by case, against a server that writes raw bytes.

Each case sends frames (or a handshake answer) as the bytes a server could write
and checks what the client makes of them: the messages it delivers, the close
code it answers with (1002 protocol error, 1007 invalid data, 1009 too big) and
the error it ends with. Throughout, a 10 ms tick on the client's loop must keep
firing: no case may stall it.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from typing import Any

import pytest

from spindel_jupyter.peer.transport import HandshakeError, ProtocolError, open_websocket
from tests.peer.conftest import accept_key, frame, upgrade

RESPONSIVE = 0.5
LIMIT = 100_000

BIN, TEXT, CONT, CLOSE, PING, PONG = 0x2, 0x1, 0x0, 0x8, 0x9, 0xA
RSV1, RSV2, RSV3 = 0x40, 0x20, 0x10


def close(code: int, reason: bytes = b"") -> bytes:
    return frame(CLOSE, struct.pack("!H", code) + reason)


def sized(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))


# -- what the client delivers ---------------------------------------------------------------

DELIVERED = [
    pytest.param(frame(BIN, b""), [b""], id="empty message"),
    pytest.param(frame(BIN, sized(125)), [sized(125)], id="125 bytes: 7-bit length"),
    pytest.param(frame(BIN, sized(126)), [sized(126)], id="126 bytes: 16-bit length"),
    pytest.param(frame(BIN, sized(65_535)), [sized(65_535)], id="65535 bytes: largest 16-bit length"),
    pytest.param(frame(BIN, sized(65_536)), [sized(65_536)], id="65536 bytes: 64-bit length"),
    pytest.param(frame(TEXT, "héllo ✓".encode()), ["héllo ✓".encode()], id="text"),
    pytest.param(
        frame(BIN, b"ab", fin=False)
        + frame(PING, b"1")
        + frame(CONT, b"cd", fin=False)
        + frame(PING, b"2")
        + frame(CONT, b"ef"),
        [b"abcdef"],
        id="fragments with pings between",
    ),
    pytest.param(
        frame(BIN, sized(70_000), fin=False) + frame(CONT, sized(20_000)) + frame(BIN, b"next"),
        [sized(70_000) + sized(20_000), b"next"],
        id="large fragments",
    ),
    pytest.param(
        frame(TEXT, "é".encode()[:1], fin=False) + frame(CONT, "é".encode()[1:]),
        ["é".encode()],
        id="text split inside a character",
    ),
    pytest.param(frame(PONG, b"unasked") + frame(BIN, b"x"), [b"x"], id="unsolicited pong ignored"),
    pytest.param(frame(BIN, sized(LIMIT)), [sized(LIMIT)], id="message at the limit"),
]


@pytest.mark.parametrize(("sent", "expected"), DELIVERED)
def test_delivered(sent: bytes, expected: list[bytes], raw_server: Any, connect: Any) -> None:
    server = raw_server()
    client = connect(server.url, max_message=LIMIT)
    server.send(sent)
    for message in expected:
        assert client.next(timeout=5) == message
    assert not client.ws.closed
    assert client.ticker.lag() < RESPONSIVE


def test_pings_are_answered_with_their_payload(raw_server: Any, connect: Any) -> None:
    server = raw_server()
    connect(server.url)
    server.send(frame(PING, b"first") + frame(BIN, b"a", fin=False) + frame(PING, b"second") + frame(CONT))
    assert server.read_frame() == (PONG, b"first")
    assert server.read_frame() == (PONG, b"second")


# -- what the client refuses, and the close code it answers with ---------------------------------

REFUSED = [
    pytest.param(frame(BIN, b"x", mask=b"abcd"), 1002, "masked", id="masked frame from the server"),
    pytest.param(frame(BIN, b"x", rsv=RSV1), 1002, "Reserved bit", id="reserved bit 1"),
    pytest.param(frame(BIN, b"x", rsv=RSV2), 1002, "Reserved bit", id="reserved bit 2"),
    pytest.param(frame(BIN, b"x", rsv=RSV3), 1002, "Reserved bit", id="reserved bit 3"),
    pytest.param(
        frame(BIN, sized(70_000), rsv=RSV1), 1002, "Reserved bit", id="reserved bit on a large frame"
    ),
    pytest.param(frame(PING, b"x", rsv=RSV1), 1002, "Reserved bit", id="reserved bit on a ping"),
    pytest.param(frame(0x3, b"x"), 1002, "opcode", id="unknown data opcode 0x3"),
    pytest.param(frame(0x7, b"x"), 1002, "opcode", id="unknown data opcode 0x7"),
    pytest.param(frame(0xB, b"x"), 1002, "opcode", id="unknown control opcode 0xB"),
    pytest.param(frame(0xF, b"x"), 1002, "opcode", id="unknown control opcode 0xF"),
    pytest.param(frame(PING, sized(126)), 1002, "125", id="ping over 125 bytes"),
    pytest.param(frame(CLOSE, sized(126)), 1002, "125", id="close over 125 bytes"),
    pytest.param(frame(PING, b"x", fin=False), 1002, "fragment", id="fragmented ping"),
    pytest.param(frame(PONG, b"x", fin=False), 1002, "fragment", id="fragmented pong"),
    pytest.param(frame(CONT, b"x"), 1002, "CONTINUATION", id="orphan continuation"),
    pytest.param(frame(CONT, sized(70_000)), 1002, "CONTINUATION", id="large orphan continuation"),
    pytest.param(
        frame(BIN, b"a", fin=False) + frame(BIN, b"b"),
        1002,
        "CONTINUATION",
        id="new message inside a fragmented one",
    ),
    pytest.param(
        frame(TEXT, b"a", fin=False) + frame(BIN, sized(70_000)),
        1002,
        "CONTINUATION",
        id="large message inside a fragmented one",
    ),
    pytest.param(bytes([0x82, 126, 0, 5]) + b"12345", 1002, "2 bytes", id="length in 16 bits that fits 7"),
    pytest.param(
        bytes([0x82, 127]) + struct.pack("!Q", 300) + sized(300),
        1002,
        "8 bytes",
        id="length in 64 bits that fits 16",
    ),
    pytest.param(frame(TEXT, b"\xff\xfe"), 1007, "utf-8", id="invalid UTF-8 text"),
    pytest.param(frame(TEXT, b"ok \xed\xa0\x80"), 1007, "utf-8", id="UTF-8 surrogate in text"),
    pytest.param(
        frame(TEXT, b"ok", fin=False) + frame(CONT, b"\xc3("), 1007, "utf-8", id="invalid UTF-8 in a fragment"
    ),
    pytest.param(close(1000, b"\xff"), 1007, "utf-8", id="invalid UTF-8 close reason"),
    pytest.param(frame(CLOSE, b"\x03"), 1002, "1 byte", id="close with a 1-byte payload"),
    pytest.param(close(1005), 1002, "local-only", id="close code 1005"),
    pytest.param(close(1006), 1002, "local-only", id="close code 1006"),
    pytest.param(close(1015), 1002, "local-only", id="close code 1015"),
    pytest.param(close(999), 1002, "invalid code", id="close code 999"),
    pytest.param(close(1004), 1002, "reserved", id="close code 1004"),
    pytest.param(close(2999), 1002, "reserved", id="close code 2999"),
    pytest.param(close(5000), 1002, "invalid code", id="close code 5000"),
    pytest.param(frame(BIN, sized(LIMIT + 1)), 1009, "over the limit", id="message over the limit"),
    pytest.param(
        frame(BIN, sized(70_000), fin=False) + frame(CONT, sized(LIMIT - 70_000 + 1)),
        1009,
        "over the limit",
        id="fragments over the limit together",
    ),
    pytest.param(
        bytes([0x82, 127]) + struct.pack("!Q", 2**63 + 1),
        1009,
        "over the limit",
        id="64-bit length with its top bit",
    ),
]


@pytest.mark.parametrize(("sent", "code", "says"), REFUSED)
def test_refused(sent: bytes, code: int, says: str, raw_server: Any, connect: Any) -> None:
    server = raw_server()
    client = connect(server.url, max_message=LIMIT)
    server.send(frame(BIN, b"before") + sent)
    assert client.next(timeout=5) == b"before"
    assert server.read_close() == code
    assert client.closed.result(5) == code
    error = client.ws.error
    assert isinstance(error, ProtocolError) and error.code == code
    assert says.lower() in str(error).lower() and f"code {code}" in str(error)
    assert client.ticker.lag() < RESPONSIVE


@pytest.mark.parametrize(
    ("sent", "answered", "reported"),
    [
        pytest.param(close(1000, b"bye"), 1000, 1000, id="normal close"),
        pytest.param(close(4999), 4999, 4999, id="private close code"),
        pytest.param(close(3000), 3000, 3000, id="registered close code"),
        pytest.param(frame(CLOSE), None, None, id="close without a code"),
    ],
)
def test_a_close_from_the_server_is_answered(
    sent: bytes, answered: int | None, reported: int | None, raw_server: Any, connect: Any
) -> None:
    server = raw_server()
    client = connect(server.url)
    server.send(sent)
    assert server.read_close() == answered
    assert client.closed.result(5) == reported
    assert client.ws.error is None


# -- handshakes the client refuses ------------------------------------------------------------


def _answer(status: bytes, *headers: bytes, accept: bool = True) -> Callable[[bytes], bytes]:
    def make(request: bytes) -> bytes:
        lines = [b"HTTP/1.1 " + status, *headers]
        if accept:
            lines.append(b"Sec-WebSocket-Accept: " + accept_key(request))
        return b"\r\n".join(lines) + b"\r\n\r\n"

    return make


UPGRADE, CONNECTION = b"Upgrade: websocket", b"Connection: Upgrade"


@pytest.mark.parametrize(
    ("answer", "error", "says"),
    [
        pytest.param(
            _answer(b"403 Forbidden", b"Content-Length: 0"), HandshakeError, "HTTP 403 Forbidden", id="403"
        ),
        pytest.param(
            _answer(b"200 OK", b"Content-Length: 2"), HandshakeError, "HTTP 200 OK", id="200 instead of 101"
        ),
        pytest.param(
            _answer(
                b"101 Switching Protocols",
                UPGRADE,
                CONNECTION,
                b"Sec-WebSocket-Accept: d3Jvbmc=",
                accept=False,
            ),
            ProtocolError,
            "accept",
            id="wrong Sec-WebSocket-Accept",
        ),
        pytest.param(
            _answer(b"101 Switching Protocols", UPGRADE, CONNECTION, accept=False),
            ProtocolError,
            "accept",
            id="no Sec-WebSocket-Accept",
        ),
        pytest.param(
            _answer(b"101 Switching Protocols", CONNECTION),
            ProtocolError,
            "Upgrade: websocket",
            id="no Upgrade",
        ),
        pytest.param(
            _answer(b"101 Switching Protocols", b"Upgrade: h2c", CONNECTION),
            ProtocolError,
            "Upgrade: websocket",
            id="Upgrade to something else",
        ),
        pytest.param(
            _answer(b"101 Switching Protocols", UPGRADE),
            ProtocolError,
            "Connection: Upgrade",
            id="no Connection",
        ),
        pytest.param(
            _answer(b"101 Switching Protocols", UPGRADE, b"Connection: keep-alive"),
            ProtocolError,
            "Connection: Upgrade",
            id="Connection without Upgrade",
        ),
        pytest.param(lambda request: b"SSH-2.0-OpenSSH\r\n\r\n", ProtocolError, "wrongly", id="not HTTP"),
    ],
)
def test_a_bad_handshake_is_refused(
    answer: Callable[[bytes], bytes], error: type[Exception], says: str, raw_server: Any
) -> None:
    server = raw_server(answer=answer)
    with pytest.raises(error) as raised:
        open_websocket(server.url, {}, 2)
    assert says.lower() in str(raised.value).lower()


def test_a_server_that_hangs_up_instead_of_answering(raw_server: Any) -> None:
    server = raw_server(answer=lambda request: b"")
    threading.Thread(target=lambda: server.conn.close(), daemon=True).start()
    with pytest.raises(ConnectionError, match="closed the connection during the WebSocket handshake"):
        open_websocket(server.url, {}, 2)


def test_a_correct_handshake_with_frames_right_behind_it(raw_server: Any, connect: Any) -> None:
    server = raw_server(answer=lambda request: upgrade(request) + frame(BIN, b"at once"))
    client = connect(server.url)
    assert client.next(timeout=5) == b"at once"
