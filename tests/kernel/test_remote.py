"""The calling side's pure parts: what a function sends, and how missing names are reported."""

from __future__ import annotations

from typing import Any

import pytest

from spindel_jupyter.core.errors import SpindelError, UnboundNames
from spindel_jupyter.kernel.remote import _check_bound, _split, function_source, remote


def decorated(f: Any) -> Any:
    return f


@decorated
def annotated(frame: SomeType, *rest: Other, scale: float = 2.0, **extra: More) -> Result:  # noqa: F821
    return frame * scale


def test_function_source_drops_decorators_and_annotations() -> None:
    source = function_source(annotated)
    assert source.startswith("def annotated(frame, *rest, scale=2.0, **extra):")
    for word in ("decorated", "SomeType", "Other", "More", "Result", "float"):
        assert word not in source


def test_closures_and_lambdas_are_refused_with_a_way_out() -> None:
    factor = 3

    def closes() -> int:
        return factor

    with pytest.raises(SpindelError, match=r"local variables of an enclosing function \(factor\)"):
        function_source(closes)
    with pytest.raises(SpindelError, match="defined with def"):
        function_source(lambda: 1)


def test_remote_decorator_keeps_the_function_metadata() -> None:
    wrapped = remote("bob", context="ctx")(annotated)
    assert wrapped.__name__ == "annotated"
    assert wrapped.target == "bob/ctx"
    assert "bob/ctx" in repr(wrapped)


def test_missing_names_are_listed_once_with_the_fix() -> None:
    with pytest.raises(UnboundNames) as info:
        _check_bound({"b", "a", "here", "arg"}, {"here": 1}, {"arg": 2}, "bob/ctx")
    assert info.value.names == ["a", "b"]
    message = str(info.value)
    assert "names 'a', 'b' are not defined on bob/ctx" in message
    assert "(%%spin_remote bob/ctx a b) or define them on bob" in message
    with pytest.raises(UnboundNames, match="name 'z' is not defined on bob: pass it as an argument"):
        _check_bound({"z"}, {}, {}, "bob")
    _check_bound({"here"}, {"here": 1}, {}, "bob")


@pytest.mark.parametrize(("target", "split"), [("bob", ("bob", None)), ("bob/ctx-a", ("bob", "ctx-a"))])
def test_targets(target: str, split: tuple[str, str | None]) -> None:
    assert _split(target) == split


def test_bad_target() -> None:
    with pytest.raises(ValueError, match="PEER or PEER/CONTEXT"):
        _split("/ctx")
