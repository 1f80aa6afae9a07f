"""The one codec: msgpack for every frame and every value that crosses the wire.

Values use msgpack extension types for what plain msgpack cannot say (tuples,
sets, complex, dates and times, Decimal, big integers, numpy arrays and
scalars). Nothing here ever unpickles: an unknown extension is a
:class:`DecodeError`, not code to run.

A convergent value (:mod:`crdt`) is one extension: its type name and its
``state()``, which the built-in types make of what msgpack packs natively, so
a large set costs about what msgpack takes for the same lists. It is rebuilt by
its registered type's ``from_state`` (without its pending delta).

Large binary payloads (numpy arrays) travel out of band: the msgpack body holds
only dtype, shape and an offset, and the raw buffers follow the body, so they
are neither copied into msgpack nor parsed by the hub.

A *frame* is a small msgpack map (the header, read by the hub) followed by an
optional encoded value (the body, opaque to the hub unless it needs it).
"""

from __future__ import annotations

import datetime as _dt
import re
import struct
import threading
from decimal import Decimal
from enum import IntEnum
from typing import Any

import msgpack

from . import crdt
from .errors import DecodeError, EncodeError

try:  # numpy is optional: arrays are supported when it is importable
    import numpy as np
except ImportError:  # pragma: no cover - exercised only without numpy
    np = None  # type: ignore[assignment]

__all__ = [
    "MAX_HEADER_BYTES",
    "Buffer",
    "Encoded",
    "decode",
    "encode",
    "encode_buffers",
    "frame_parts",
    "pack_frame",
    "unpack_frame",
]

Buffer = bytes | bytearray | memoryview

#: A header larger than this is refused before it is parsed.
MAX_HEADER_BYTES = 64 * 1024

# 0xc1 is the one byte msgpack never uses: it marks a body followed by raw buffers.
_OUT_OF_BAND = 0xC1
_OOB_PREFIX = struct.Struct("<BQ")


class Encoded:
    """A value already encoded, to be sent as is: its bytes as buffers, arrays left uncopied."""

    __slots__ = ("parts",)

    def __init__(self, *parts: Buffer) -> None:
        self.parts = parts

    def tobytes(self) -> bytes:
        return b"".join(self.parts)


class Ext(IntEnum):
    """Extension type codes: part of the wire format, never renumber."""

    TUPLE = 1
    SET = 2
    FROZENSET = 3
    COMPLEX = 4
    DATETIME = 5
    DATE = 6
    TIME = 7
    TIMEDELTA = 8
    DECIMAL = 9
    BIGINT = 10
    NDARRAY = 11
    NPSCALAR = 12
    CRDT = 13


_COMPLEX = struct.Struct("<dd")
_INT_MIN = -(2**63)
_UINT_MAX = 2**64 - 1

_TIMEDELTA = struct.Struct("<qii")


class _NoEncoding(TypeError):
    """Raised inside the encoder for a type it does not know."""


class _Encoder:
    """Encode calls, one at a time: collects out-of-band buffers while msgpack walks the value.

    Each thread keeps one, with its msgpack packer (making a packer costs as much
    as packing a small value); extension values inside are packed by packers of
    their own, as the outer one is busy.
    """

    def __init__(self) -> None:
        self.buffers: list[memoryview] = []
        self.offset = 0
        self.busy = False
        self.packer = msgpack.Packer(default=self.default, strict_types=True, use_bin_type=True)

    def encode(self, value: Any) -> tuple[bytes, list[memoryview]]:
        """The msgpack body of ``value`` and the arrays' buffers that follow it."""
        self.buffers, self.offset, self.busy = [], 0, True
        try:
            return self.packer.pack(value), self.buffers
        finally:
            self.busy, self.buffers = False, []

    def pack(self, value: Any) -> bytes:
        return msgpack.packb(value, default=self.default, strict_types=True, use_bin_type=True)

    def default(self, obj: Any) -> Any:
        if crdt.is_convergent(obj):  # first: a convergent type may subclass a tuple or a dict
            return msgpack.ExtType(Ext.CRDT, self.pack([obj.type_name, obj.state()]))
        # Subclasses travel as their base type (namedtuple as tuple, IntEnum as int).
        if isinstance(obj, tuple):
            return msgpack.ExtType(Ext.TUPLE, self.pack(list(obj)))
        if isinstance(obj, frozenset):
            return msgpack.ExtType(Ext.FROZENSET, self.pack(list(obj)))
        if isinstance(obj, set):
            return msgpack.ExtType(Ext.SET, self.pack(list(obj)))
        if isinstance(obj, int):  # a big integer, or an int subclass
            value = int(obj)
            if _INT_MIN <= value <= _UINT_MAX:
                return value
            return msgpack.ExtType(Ext.BIGINT, str(value).encode())
        if isinstance(obj, float):
            return float(obj)
        if isinstance(obj, str):
            return str(obj)
        if isinstance(obj, (bytes, bytearray, memoryview)):
            return bytes(obj)
        if isinstance(obj, list):
            return list(obj)
        if isinstance(obj, dict):
            return dict(obj)
        if isinstance(obj, complex):
            return msgpack.ExtType(Ext.COMPLEX, _COMPLEX.pack(obj.real, obj.imag))
        if isinstance(obj, _dt.datetime):
            return msgpack.ExtType(Ext.DATETIME, obj.isoformat().encode())
        if isinstance(obj, _dt.date):
            return msgpack.ExtType(Ext.DATE, obj.isoformat().encode())
        if isinstance(obj, _dt.time):
            return msgpack.ExtType(Ext.TIME, obj.isoformat().encode())
        if isinstance(obj, _dt.timedelta):
            return msgpack.ExtType(Ext.TIMEDELTA, _TIMEDELTA.pack(obj.days, obj.seconds, obj.microseconds))
        if isinstance(obj, Decimal):
            return msgpack.ExtType(Ext.DECIMAL, str(obj).encode())
        if np is not None:
            if isinstance(obj, np.ndarray):
                return self._ndarray(obj)
            if isinstance(obj, np.generic):
                return self._npscalar(obj)
        raise _NoEncoding(type(obj).__qualname__)

    def _ndarray(self, arr: Any) -> msgpack.ExtType:
        if arr.dtype.hasobject:
            raise TypeError("numpy arrays of Python objects have no raw buffer; convert with .tolist()")
        shape = list(arr.shape)
        flat = np.ascontiguousarray(arr).reshape(-1)
        data = flat.view(np.uint8).data if arr.nbytes else memoryview(b"")
        descr = np.lib.format.dtype_to_descr(arr.dtype)
        header = self.pack([descr, shape, self.offset, arr.nbytes])
        self.buffers.append(data)
        self.offset += arr.nbytes
        return msgpack.ExtType(Ext.NDARRAY, header)

    def _npscalar(self, value: Any) -> msgpack.ExtType:
        if value.dtype.hasobject:
            raise TypeError("numpy object scalars have no raw buffer; convert with .item()")
        descr = np.lib.format.dtype_to_descr(value.dtype)
        return msgpack.ExtType(Ext.NPSCALAR, self.pack([descr, value.tobytes()]))


def encode(value: Any, where: str = "value") -> bytes:
    """Encode one value; raise :class:`EncodeError` naming what cannot be sent.

    ``where`` names the value in that error, so a caller can say ``args``
    and the user reads ``args['df'][3]``.
    """
    body, buffers = _pack(value, where)
    if not buffers:
        return body
    return b"".join([_OOB_PREFIX.pack(_OUT_OF_BAND, len(body)), body, *buffers])


def encode_buffers(value: Any, where: str = "value") -> Encoded:
    """:func:`encode`, keeping the arrays' buffers as they are (for sending at once, without a copy)."""
    body, buffers = _pack(value, where)
    if not buffers:
        return Encoded(body)
    return Encoded(_OOB_PREFIX.pack(_OUT_OF_BAND, len(body)), body, *buffers)


_encoders = threading.local()


def _pack(value: Any, where: str) -> tuple[bytes, list[memoryview]]:
    """The msgpack body of ``value`` and the arrays' buffers that follow it."""
    encoder = getattr(_encoders, "encoder", None)
    if encoder is None:
        encoder = _encoders.encoder = _Encoder()
    elif encoder.busy:  # an encode inside an encode (a state() that encodes): one of its own
        encoder = _Encoder()
    try:
        return encoder.encode(value)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise _locate(value, where, exc) from None


def _locate(value: Any, where: str, exc: BaseException) -> EncodeError:
    """Find the first part of ``value`` that does not encode, for a precise error."""
    if isinstance(exc, RecursionError) or "recursion limit" in str(exc):
        return EncodeError(where, type(value).__name__, "it is nested too deeply (or contains itself)")
    stack: list[tuple[Any, str]] = [(value, where)]
    seen: set[int] = set()
    while stack:
        item, path = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, dict):
            children = []
            for key, child in item.items():
                children.append((key, f"a key of {path}"))
                children.append((child, f"{path}[{key!r}]"))
            stack.extend(reversed(children))
        elif isinstance(item, (list, tuple)):
            stack.extend(reversed([(child, f"{path}[{i}]") for i, child in enumerate(item)]))
        elif isinstance(item, (set, frozenset)):
            stack.extend((child, f"an element of {path}") for child in item)
        else:
            try:
                _Encoder().pack(item)
            except (TypeError, ValueError, OverflowError) as leaf_exc:
                kind = type(item)
                detail = "" if isinstance(leaf_exc, _NoEncoding) else str(leaf_exc)
                return EncodeError(path, f"{kind.__module__}.{kind.__qualname__}", detail)
    kind = type(value)
    return EncodeError(where, f"{kind.__module__}.{kind.__qualname__}", str(exc))


class _Decoder:
    """One decode call: resolves out-of-band buffers referenced by array extensions."""

    def __init__(self, buffers: memoryview | None) -> None:
        self.buffers = buffers

    def unpack(self, data: bytes | memoryview) -> Any:
        return msgpack.unpackb(data, ext_hook=self.ext_hook, raw=False, strict_map_key=False, use_list=True)

    def ext_hook(self, code: int, data: bytes) -> Any:
        try:
            return self._ext(code, data)
        except DecodeError:
            raise
        except Exception as exc:
            raise DecodeError(f"corrupt extension value of type {code}: {exc}") from None

    def _ext(self, code: int, data: bytes) -> Any:
        if code == Ext.TUPLE:
            return tuple(self.unpack(data))
        if code == Ext.SET:
            return set(self.unpack(data))
        if code == Ext.FROZENSET:
            return frozenset(self.unpack(data))
        if code == Ext.COMPLEX:
            real, imag = _COMPLEX.unpack(data)
            return complex(real, imag)
        if code == Ext.DATETIME:
            return _from_iso(_dt.datetime, data.decode())
        if code == Ext.DATE:
            return _dt.date.fromisoformat(data.decode())
        if code == Ext.TIME:
            return _from_iso(_dt.time, data.decode())
        if code == Ext.TIMEDELTA:
            days, seconds, micros = _TIMEDELTA.unpack(data)
            return _dt.timedelta(days=days, seconds=seconds, microseconds=micros)
        if code == Ext.DECIMAL:
            return Decimal(data.decode())
        if code == Ext.BIGINT:
            text = data.decode()
            if len(text) > 10_000:
                raise DecodeError("integer with more than 10000 digits refused")
            return int(text)
        if code == Ext.NDARRAY:
            return self._ndarray(data)
        if code == Ext.NPSCALAR:
            descr, raw = self.unpack(data)
            return _numpy().frombuffer(raw, dtype=_dtype(descr))[0]
        if code == Ext.CRDT:
            return _convergent(self.unpack(data))
        raise DecodeError(f"unknown extension type {code}: not produced by this codec (refused)")

    def _ndarray(self, data: bytes) -> Any:
        numpy = _numpy()
        descr, shape, offset, nbytes = self.unpack(data)
        dtype = _dtype(descr)
        buffers = self.buffers
        if buffers is None or offset < 0 or offset + nbytes > len(buffers):
            raise DecodeError("array data is missing or truncated")
        count = 1
        for dim in shape:
            count *= int(dim)
        if count * dtype.itemsize != nbytes:
            raise DecodeError(f"array shape {shape} does not match its {nbytes} bytes")
        chunk = buffers[offset : offset + nbytes]
        arr = numpy.frombuffer(chunk, dtype=dtype).reshape(shape)
        # Zero-copy when the received buffer is writable; otherwise one copy, so
        # users always get an ordinary writable array.
        return arr if not chunk.readonly else arr.copy()


_SECONDS_OFFSET = re.compile(r"([+-])(\d\d):(\d\d):(\d\d)(?:\.(\d{6}))?$")


def _from_iso(kind: Any, text: str) -> Any:
    """``kind.fromisoformat``, keeping a UTC offset's microseconds (which Python 3.11 drops)."""
    match = _SECONDS_OFFSET.search(text)
    if match is None:
        return kind.fromisoformat(text)
    sign, hours, minutes, seconds, micros = match.groups()
    offset = _dt.timedelta(
        hours=int(hours), minutes=int(minutes), seconds=int(seconds), microseconds=int(micros or 0)
    )
    naive = kind.fromisoformat(text[: match.start()])
    return naive.replace(tzinfo=_dt.timezone(-offset if sign == "-" else offset))


def _convergent(data: Any) -> Any:
    if not isinstance(data, list) or len(data) != 2 or not isinstance(data[0], str):
        raise DecodeError("a convergent value is [type name, state]")
    try:
        cls = crdt.type_for(data[0])
    except KeyError as exc:
        raise DecodeError(f"{exc.args[0]} (register the type here too, with crdt.register)") from None
    try:
        return cls.from_state(data[1])
    except ValueError as exc:
        raise DecodeError(f"bad {data[0]} value: {exc}") from None


def _numpy() -> Any:
    if np is None:
        raise DecodeError("received a numpy value but numpy is not installed here")
    return np


def _dtype(descr: Any) -> Any:
    numpy = _numpy()
    try:
        dtype = numpy.lib.format.descr_to_dtype(descr)
    except Exception as exc:
        raise DecodeError(f"bad array dtype {descr!r}: {exc}") from None
    if dtype.hasobject:
        raise DecodeError("arrays of Python objects are refused")
    return dtype


def decode(data: bytes | bytearray | memoryview) -> Any:
    """Decode one value produced by :func:`encode`; raise :class:`DecodeError` if malformed."""
    view = memoryview(data)
    buffers: memoryview | None = None
    if len(view) and view[0] == _OUT_OF_BAND:
        if len(view) < _OOB_PREFIX.size:
            raise DecodeError("truncated value")
        _, body_len = _OOB_PREFIX.unpack_from(view)
        start = _OOB_PREFIX.size
        if start + body_len > len(view):
            raise DecodeError("truncated value")
        buffers = view[start + body_len :]
        view = view[start : start + body_len]
    try:
        return _Decoder(buffers).unpack(view)
    except DecodeError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        raise DecodeError(f"not a valid encoded value: {type(exc).__name__}: {exc}") from None


def pack_frame(header: dict[str, Any], body: Buffer | None = None) -> bytes:
    """A frame: the header map, then the already-encoded body if there is one."""
    return b"".join(frame_parts(header, body or None))


def frame_parts(header: dict[str, Any], body: Encoded | Buffer | None = None) -> list[Buffer]:
    """:func:`pack_frame` as buffers to write one after the other (a large body is not copied)."""
    head: bytes = msgpack.packb(header, use_bin_type=True)
    if body is None:
        return [head]
    if isinstance(body, Encoded):
        return [head, *body.parts]
    return [head, body]


def unpack_frame(data: Buffer) -> tuple[dict[str, Any], memoryview]:
    """Split a frame into its header (a dict with str keys) and its raw body."""
    view = memoryview(data)
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_HEADER_BYTES, strict_map_key=True)
    unpacker.feed(view[:MAX_HEADER_BYTES])
    try:
        header = unpacker.unpack()
    except msgpack.OutOfData:
        raise DecodeError("truncated frame (or a header over 64 KiB)") from None
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise DecodeError(f"not msgpack: {type(exc).__name__}: {exc}") from None
    if not isinstance(header, dict):
        raise DecodeError(f"a frame starts with a map, not {type(header).__name__}")
    return header, view[unpacker.tell() :]
