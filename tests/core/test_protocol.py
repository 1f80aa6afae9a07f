"""Frame validation and the peer-name rule."""

from __future__ import annotations

from typing import Any

import pytest

from spindel_jupyter.core.errors import BadFrame
from spindel_jupyter.core.protocol import check_inbound, check_name, name_from


@pytest.mark.parametrize("name", ["alice", "Bob_2", "lecture3.v2", "ünïcode", "_x", "a" * 64])
def test_valid_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "a b", "bob/ctx", "-lead", ".hidden", "a" * 65, "x\n"])
def test_invalid_names_say_what_is_allowed(name: str) -> None:
    with pytest.raises(ValueError, match="letters, digits"):
        check_name(name)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("My Analysis (v2)", "My-Analysis-v2"), ("lecture3", "lecture3"), ("..", "peer"), ("-x-", "x")],
)
def test_names_derived_from_free_text_are_valid(text: str, expected: str) -> None:
    assert name_from(text) == expected
    check_name(name_from(text))


@pytest.mark.parametrize(
    "header",
    [
        {"t": "hello", "name": "a", "kind": "kernel", "session": "s"},
        {"t": "req", "id": 1, "op": "peers"},
        {"t": "req", "id": 1, "op": "call", "to": "bob"},
        {"t": "rep", "re": 1, "to": "bob"},
        {"t": "rep", "re": 1, "to": "bob", "error": {"code": "x"}},
        {"t": "msg", "op": "stream", "to": "bob"},
        {"t": "cancel", "id": 3, "to": "bob"},
    ],
)
def test_known_frames_pass(header: dict[str, Any]) -> None:
    assert check_inbound(header) == header["t"]


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        ({}, "unknown frame type None"),
        ({"t": "welcome"}, "unknown frame type 'welcome'"),
        ({"t": "req", "op": "x"}, "'id'"),
        ({"t": "req", "id": True, "op": "x"}, "'id'"),
        ({"t": "req", "id": "1", "op": "x"}, "'id'"),
        ({"t": "req", "id": 1, "op": "x", "to": 5}, "'to'"),
        ({"t": "req", "id": 1, "op": ""}, "op must be"),
        ({"t": "rep", "re": 1}, "'to'"),
        ({"t": "rep", "re": 1, "to": "a", "error": "bad"}, "'error'"),
        ({"t": "hello", "name": "a", "kind": "robot", "session": "s"}, "kind must be"),
    ],
)
def test_bad_frames_are_refused_with_the_reason(header: dict[str, Any], fragment: str) -> None:
    with pytest.raises(BadFrame, match=fragment.replace("(", r"\(")):
        check_inbound(header)
