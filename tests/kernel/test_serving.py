"""Serving: who may call, and how the names a body is missing are reported."""

from __future__ import annotations

import pytest

from spindel_jupyter.core.errors import NotServed, UnboundNames
from spindel_jupyter.core.protocol import INVITED, MESH, OP_CALL, OWN
from spindel_jupyter.kernel.executor import Executor
from spindel_jupyter.kernel.serving import EVERYONE, _check_bound, _Server
from spindel_jupyter.peer.client import Incoming


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


def test_callers_are_checked_against_the_allow_list() -> None:
    server = _Server(Executor())
    own, guest = Incoming("alice", OP_CALL, {}, 1, OWN), Incoming("guest", OP_CALL, {}, 2, INVITED)
    server.check_caller("bob", own)
    with pytest.raises(NotServed, match="run %spin_serve --allow guest on bob"):
        server.check_caller("bob", guest)
    server.allow = {"guest"}
    server.check_caller("bob", guest)
    with pytest.raises(NotServed, match=r"it allows: guest\).*--allow alice,guest"):
        server.check_caller("bob", own)
    server.allow = {EVERYONE}
    server.check_caller("bob", own)
    server.check_caller("bob", guest)


def test_a_user_in_the_allow_list_lets_in_every_peer_acting_for_that_user_on_any_hub() -> None:
    server = _Server(Executor())
    server.allow = {"user:student"}
    for caller in (
        Incoming("work", OP_CALL, {}, 1, OWN, user="student"),
        Incoming("guest", OP_CALL, {}, 2, INVITED, user="student"),
        Incoming("work@B", OP_CALL, {}, 3, MESH, user="student"),
    ):
        server.check_caller("grader", caller)
    for caller in (
        Incoming("work", OP_CALL, {}, 4, OWN, user="other"),
        Incoming("user:student", OP_CALL, {}, 5, INVITED, user=""),  # a name is not a user
        Incoming("work@C", OP_CALL, {}, 6, MESH, user="someone"),
    ):
        with pytest.raises(NotServed):
            server.check_caller("grader", caller)
