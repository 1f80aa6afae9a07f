"""The magics' argument parsing: usage lines and quoting, as a user types them."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from spindel_jupyter.kernel.magics import SpindelMagics, _parsed, _words

VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


def test_the_cell_magic_usage_names_it_with_two_percent_signs() -> None:
    assert SpindelMagics.spin_remote.parser.format_usage().split()[1] == "%%spin_remote"
    assert "%%spin_remote [-o VAR]" in (SpindelMagics.spin_remote.__doc__ or "")


def test_quotes_are_taken_off_as_a_shell_would() -> None:
    assert _parsed(SpindelMagics.spin_serve, "--allow '*'").allow == "*"
    assert _parsed(SpindelMagics.spin_serve, '--allow "alice,bob"').allow == "alice,bob"
    assert _parsed(SpindelMagics.spin_invite, "--as maria").name == "maria"
    args = _parsed(SpindelMagics.spin_remote, "bob x y='ab'")
    assert (args.target, args.names) == ("bob", ["x", "y='ab'"])  # an expression keeps its quotes


def test_options_may_come_anywhere_on_the_line() -> None:
    for line in ("bob -o res x y=2", "-o res bob x y=2", "bob x -o res y=2", "bob x y=2 -o res"):
        args = _parsed(SpindelMagics.spin_remote, line)
        assert (args.target, args.names, args.output) == ("bob", ["x", "y=2"], "res"), line
    args = _parsed(SpindelMagics.spin_remote, "bob --timeout 5 x")
    assert (args.names, args.timeout) == (["x"], 5.0)


def test_an_expression_with_spaces_is_one_argument() -> None:
    line = "bob x=f(1, 2) s='a b' d={'k': [1, 2]} t=\"it's\" -o res"
    args = _parsed(SpindelMagics.spin_remote, line)
    assert args.names == ["x=f(1, 2)", "s='a b'", "d={'k': [1, 2]}", 't="it\'s"']
    assert args.output == "res"
    args = _parsed(SpindelMagics.spin_remote, "bob   x  y='a \\' b'  ")  # an escaped quote does not end it
    assert args.names == ["x", "y='a \\' b'"]


GAPS = st.lists(st.sampled_from([" ", "  ", "\t"]), min_size=5, max_size=5)


@given(st.lists(VALUES, max_size=4), GAPS)
def test_any_python_literal_is_one_argument_whatever_the_spaces(values: list[Any], gaps: list[str]) -> None:
    arguments = [f"v{i}={value!r}" for i, value in enumerate(values)]
    spaced = (gap + argument for gap, argument in zip(gaps[1:], arguments, strict=False))
    assert _words(gaps[0] + "bob" + "".join(spaced)) == ["bob", *arguments]
