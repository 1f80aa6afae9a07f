"""The codec: round trips, precise errors, frames, and no pickle anywhere."""

from __future__ import annotations

import datetime as dt
import math
import pickle
from collections import OrderedDict, namedtuple
from enum import IntEnum
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from spindel_jupyter.core import wire
from spindel_jupyter.core.crdt import LWWMap, ORSet
from spindel_jupyter.core.errors import DecodeError, EncodeError
from tests.custom_crdt import MaxRegister


def same(a: Any, b: Any) -> bool:
    """Equal in value *and* type, all the way down (tuple is not list, set is not frozenset)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, np.generic):
        return a.dtype == b.dtype and a.tobytes() == b.tobytes()
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, complex):
        return same(a.real, b.real) and same(a.imag, b.imag)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, dt.datetime):
        return a == b and a.utcoffset() == b.utcoffset()
    return bool(a == b)


hashables = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | st.decimals(allow_nan=False, allow_infinity=False),
    lambda children: st.tuples(children, children) | st.frozensets(children, max_size=4),
    max_leaves=8,
)

timezones = st.none() | st.builds(
    dt.timezone, st.timedeltas(min_value=dt.timedelta(hours=-23), max_value=dt.timedelta(hours=23))
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**64, max_value=2**300)
    | st.integers(min_value=-(2**300), max_value=-(2**63) - 1)
    | st.floats(allow_nan=True)
    | st.complex_numbers(allow_nan=False)
    | st.text()
    | st.binary()
    | st.datetimes(timezones=timezones)
    | st.dates()
    | st.times()
    | st.timedeltas()
    | st.decimals(allow_nan=False, allow_infinity=False)
)

arrays = hnp.arrays(
    dtype=hnp.scalar_dtypes() | hnp.integer_dtypes(endianness=">"),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
)

values = st.recursive(
    scalars | arrays,
    lambda children: (
        st.lists(children, max_size=5)
        | st.tuples(children, children)
        | st.dictionaries(hashables, children, max_size=5)
        | st.sets(hashables, max_size=5)
        | st.frozensets(hashables, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(values)
def test_any_value_round_trips_with_its_types(value: Any) -> None:
    assert same(wire.decode(wire.encode(value)), value)


@settings(max_examples=200, deadline=None)
@given(values)
def test_round_trip_through_a_frame(value: Any) -> None:
    frame = wire.pack_frame({"t": "req", "id": 7, "op": "call"}, wire.encode(value))
    header, body = wire.unpack_frame(frame)
    assert header == {"t": "req", "id": 7, "op": "call"}
    assert same(wire.decode(body), value)


@settings(max_examples=200, deadline=None)
@given(arrays)
def test_arrays_come_back_writable(arr: np.ndarray) -> None:
    for data in (wire.encode(arr), bytearray(wire.encode(arr))):
        out = wire.decode(data)
        assert same(out, arr)
        assert out.flags.writeable


def test_array_from_a_writable_buffer_is_not_copied() -> None:
    arr = np.arange(1000, dtype=np.float64)
    data = bytearray(wire.encode(arr))
    out = wire.decode(data)
    out[0] = 42.0  # writes through to the received buffer: no copy was made
    assert wire.decode(bytes(data))[0] == 42.0


def test_array_buffers_travel_out_of_band() -> None:
    arr = np.zeros(1 << 20, dtype=np.uint8)
    data = wire.encode({"a": arr})
    assert len(data) < arr.nbytes + 100  # raw bytes once, no msgpack bin copy inside the body
    assert data[0] == 0xC1


def test_fortran_order_structured_and_scalar_numpy_values() -> None:
    fortran = np.asfortranarray(np.arange(12).reshape(3, 4))
    structured = np.array([(1, 2.5), (3, 4.5)], dtype=[("x", "<i4"), ("y", "<f8")])
    for value in (fortran, structured, np.int64(7), np.bool_(True), np.datetime64("2026-01-02")):
        assert same(wire.decode(wire.encode(value)), value)


def test_subclasses_travel_as_their_base_type() -> None:
    class Level(IntEnum):
        HIGH = 3

    point = namedtuple("point", "x y")
    out = wire.decode(wire.encode([Level.HIGH, point(1, 2), OrderedDict(a=1), bytearray(b"x")]))
    assert same(out, [3, (1, 2), {"a": 1}, b"x"])


def test_unencodable_value_names_its_type_and_where_it_sits() -> None:
    class Frame:
        pass

    with pytest.raises(EncodeError) as info:
        wire.encode({"df": [1, 2, 3, Frame()]}, where="args")
    message = str(info.value)
    assert "args['df'][3]" in message
    assert "Frame" in message
    assert info.value.where == "args['df'][3]"


def test_unencodable_dict_key_and_set_element_are_located() -> None:
    with pytest.raises(EncodeError, match=r"a key of value\[1\]"):
        wire.encode([0, {object(): 1}])
    with pytest.raises(EncodeError, match="an element of value"):
        wire.encode({object()})


def test_object_arrays_are_refused_with_a_way_out() -> None:
    with pytest.raises(EncodeError, match=r"tolist"):
        wire.encode({"x": np.array([object()])})


def test_self_containing_value_is_a_clear_error() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(EncodeError, match=r"contains itself|nested too deeply"):
        wire.encode(loop)


class Boom:
    """Would run code if anything unpickled it."""

    def __reduce__(self) -> Any:
        return (exec, ("raise SystemExit('unpickled!')",))


def test_no_pickle_path_in_either_direction(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the codec must never unpickle")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    with pytest.raises(EncodeError):
        wire.encode(Boom())
    # A pickle smuggled in as an extension value or as raw bytes stays data.
    payload = pickle.dumps(Boom())
    for code in range(-1, 128):
        smuggled = msgpack.packb(msgpack.ExtType(code, payload)) if code >= 0 else payload
        try:
            wire.decode(smuggled)
        except DecodeError:
            pass
    assert wire.decode(msgpack.packb(payload)) == payload


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_is_a_decode_error_never_a_crash(data: bytes) -> None:
    for fn in (wire.decode, wire.unpack_frame):
        try:
            fn(data)
        except DecodeError:
            pass


def test_truncated_values_are_refused() -> None:
    data = wire.encode({"a": np.arange(10), "b": (1, 2)})
    for cut in (1, 5, 9, len(data) // 2, len(data) - 1):
        with pytest.raises(DecodeError):
            wire.decode(data[:cut])


def test_frame_header_must_be_a_map() -> None:
    with pytest.raises(DecodeError, match="map"):
        wire.unpack_frame(msgpack.packb([1, 2]))
    with pytest.raises(DecodeError):
        wire.unpack_frame(b"")


def test_huge_integer_text_is_refused() -> None:
    bomb = msgpack.packb(msgpack.ExtType(wire.Ext.BIGINT, b"9" * 20_000))
    with pytest.raises(DecodeError, match="digits"):
        wire.decode(bomb)


def test_array_shape_must_match_its_bytes() -> None:
    data = bytearray(wire.encode(np.arange(4, dtype=np.int32)))
    good = wire.decode(data)
    assert good.shape == (4,)
    lying = wire.encode(np.arange(4, dtype=np.int32))[:-4]  # drop one element's bytes
    with pytest.raises(DecodeError):
        wire.decode(lying)


def test_utc_offsets_keep_their_seconds_and_microseconds() -> None:
    odd = dt.timezone(-dt.timedelta(hours=3, seconds=7, microseconds=1))
    for value in (dt.datetime(2000, 1, 1, tzinfo=odd), dt.time(1, 2, tzinfo=odd)):
        back = wire.decode(wire.encode(value))
        assert back == value and back.utcoffset() == value.utcoffset()


def test_a_convergent_value_travels_as_one_extension_with_its_elements_exact() -> None:
    value = {
        "set": ORSet([(1, "x"), "a", 3]).remove(3),
        "map": LWWMap({"k": (np.arange(3), dt.date(2024, 1, 2))}),
    }
    back = wire.decode(wire.encode(value))
    assert type(back["set"]) is ORSet and back["set"] == {(1, "x"), "a"}
    assert {type(e) for e in back["set"]} == {tuple, str}
    array, day = back["map"]["k"]
    assert array.tolist() == [0, 1, 2] and day == dt.date(2024, 1, 2)
    outer = msgpack.unpackb(wire.encode(value["set"]))
    assert isinstance(outer, msgpack.ExtType) and outer.code == wire.Ext.CRDT


def test_an_unknown_or_malformed_convergent_value_is_a_decode_error() -> None:
    def ext(payload: Any) -> bytes:
        return msgpack.packb(msgpack.ExtType(wire.Ext.CRDT, msgpack.packb(payload)))

    with pytest.raises(DecodeError, match=r"no convergent type is named 'nope'.*crdt\.register"):
        wire.decode(ext(["nope", {}]))
    with pytest.raises(DecodeError, match="bad orset value: malformed orset state"):
        wire.decode(ext(["orset", {"entries": {}}]))
    with pytest.raises(DecodeError, match=r"\[type name, state\]"):
        wire.decode(ext("orset"))


def test_an_encode_inside_an_encode_gets_a_packer_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """A convergent type's state() may itself encode (on the same thread, mid-encode)."""
    from spindel_jupyter.core import crdt

    class Sealed(MaxRegister):
        type_name = "sealed-test"

        def state(self) -> Any:
            return wire.encode([self.value, np.arange(2)])  # a nested encode, with a buffer of its own

        @classmethod
        def from_state(cls, data: Any) -> Any:
            return cls(wire.decode(data)[0])

    monkeypatch.setitem(crdt._registry, Sealed.type_name, Sealed)
    value = {"a": np.arange(3), "sealed": Sealed(5.0), "b": (1, np.arange(4))}
    back = wire.decode(wire.encode(value))
    assert back["a"].tolist() == [0, 1, 2] and back["b"][1].tolist() == [0, 1, 2, 3]
    assert type(back["sealed"]) is Sealed and back["sealed"].value == 5.0
    with pytest.raises(EncodeError):
        wire.encode({"bad": object()})
    assert wire.decode(wire.encode([1, 2])) == [1, 2]  # nothing of the failed encode is left behind
