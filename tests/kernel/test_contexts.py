"""Named execution contexts and forks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from spindel_jupyter.kernel import contexts


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    yield
    for name in contexts.list_contexts()[1:]:
        contexts.unregister_context(name)


def test_default_is_main_namespace_outside_ipython() -> None:
    import __main__

    assert contexts.namespace("default") is __main__.__dict__


def test_register_and_list() -> None:
    ns = contexts.register_context("b-ctx", {"x": 1})
    contexts.register_context("a-ctx")
    assert contexts.list_contexts() == ["default", "a-ctx", "b-ctx"]
    assert contexts.namespace("b-ctx") is ns
    assert contexts.namespace("a-ctx") == {}


def test_fork_is_isolated_for_rebinding_and_shares_mutables() -> None:
    base = contexts.register_context("base", {"n": 1, "items": []})
    fork = contexts.fork_context("base", "fork")
    fork["n"] = 2
    fork["new"] = True
    fork["items"].append("shared")
    assert base["n"] == 1 and "new" not in base
    assert base["items"] == ["shared"]


def test_unknown_context_names_the_known_ones() -> None:
    contexts.register_context("known")
    with pytest.raises(KeyError, match="no context named 'nope' \\(known: default, known\\)"):
        contexts.namespace("nope")


@pytest.mark.parametrize("name", ["", "a/b", "default"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        contexts.register_context(name)


def test_listeners_hear_registrations() -> None:
    heard: list[str] = []
    contexts.on_register(heard.append)
    contexts.register_context("loud")
    assert heard[-1] == "loud"
