"""WebSocket framing (RFC 6455) shared by the peer's connection and the hub: opcodes, frame headers."""

from __future__ import annotations

import struct

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def frame_header(opcode: int, length: int, mask: bytes = b"") -> bytes:
    """The header of one final frame of ``length`` bytes (RFC 6455, 5.2); a client's carries its mask."""
    masked = 0x80 if mask else 0
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, masked | length)
    elif length <= 0xFFFF:
        head = struct.pack("!BBH", 0x80 | opcode, masked | 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, masked | 127, length)
    return head + mask
