"""Serving: who may call, who called, and how the names a body is missing are reported."""

from __future__ import annotations

import asyncio
import concurrent.futures
import getpass
import re
import socket
from collections.abc import Iterator
from typing import Any

import pytest

import spindel_jupyter
from spindel_jupyter.core.errors import NotServed, UnboundNames
from spindel_jupyter.core.home import home
from spindel_jupyter.core.protocol import INVITED, MESH, OP_CALL, OWN
from spindel_jupyter.kernel.contexts import register_context, unregister_context
from spindel_jupyter.kernel.executor import Executor
from spindel_jupyter.kernel.serving import (
    EVERYONE,
    NAMED,
    Caller,
    _check_bound,
    _Server,
    caller,
    serve,
    unserve,
)
from spindel_jupyter.peer.client import Incoming, Peer
from tests.support import HubServer


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
    for incoming in (
        Incoming("work", OP_CALL, {}, 1, OWN, user="student"),
        Incoming("guest", OP_CALL, {}, 2, INVITED, user="student"),
        Incoming("work@B", OP_CALL, {}, 3, MESH, user="student"),
    ):
        server.check_caller("grader", incoming)
    for incoming in (
        Incoming("work", OP_CALL, {}, 4, OWN, user="other"),
        Incoming("user:student", OP_CALL, {}, 5, INVITED, user=""),  # a name is not a user
        Incoming("work@C", OP_CALL, {}, 6, MESH, user="someone"),
    ):
        with pytest.raises(NotServed):
            server.check_caller("grader", incoming)


def test_a_kernel_serving_functions_refuses_code_other_names_and_malformed_calls_before_anything_runs() -> (
    None
):
    server = _Server(Executor())
    server.functions = {"grade", "hint"}
    server.check_kind("grader", {"kind": NAMED, "name": "grade", "args": [42], "kwargs": {"strict": True}})
    refused = [
        ({"kind": "cell", "source": "open('/etc/passwd').read()", "args": {}}, "runs no code sent to it"),
        ({"kind": "function", "source": "def grade(a):\n    return 100", "name": "grade"}, "runs no code"),
        ({"source": "solutions"}, "runs no code"),
        ({"kind": NAMED, "name": "solutions"}, "does not serve a function 'solutions'"),
        ({"kind": NAMED, "name": "__import__", "args": ["os"]}, "does not serve a function '__import__'"),
        ({"kind": NAMED, "name": "grade.__globals__"}, "does not serve a function"),
        ({"kind": NAMED, "name": ["grade"]}, "does not serve a function"),
        ({"kind": NAMED, "name": "grade", "args": "42"}, "takes a list of arguments"),
        ({"kind": NAMED, "name": "grade", "kwargs": {1: 2}}, "takes a list of arguments"),
    ]
    for body, why in refused:
        with pytest.raises(NotServed, match=re.escape(why)):
            server.check_kind("grader", body)


def test_a_kernel_serving_code_refuses_calls_by_name() -> None:
    with pytest.raises(NotServed, match="serves code, not functions by name"):
        _Server(Executor()).check_kind("bob", {"kind": NAMED, "name": "f"})


# -- who called: a real hub, this process serving, two peers calling at once ---------------------


async def whoami(tag: str) -> list[Any]:
    """Served: who called, before and after awaiting (when the other call may come in)."""
    first = caller()
    assert first is not None
    await asyncio.sleep(0.05)
    return [tag, first.peer, first.user, first.hub, caller() == first]


@pytest.fixture
def classroom(hub: HubServer) -> Iterator[dict[str, Peer]]:
    """This process serving context ``class`` as peer ``who-teacher``, and two students' peers."""
    teacher = spindel_jupyter.connect(hub.ws_url, name="who-teacher", token=hub.token)
    students = {
        name: Peer(hub.ws_url, name, hub.token, kind="script", session=name).start()
        for name in ("who-ada", "who-grace")
    }
    register_context("class", {"whoami": whoami, "caller": caller})
    try:
        yield {"teacher": teacher, **students}
    finally:
        unserve()
        unregister_context("class")
        for student in students.values():
            student.close()
        spindel_jupyter.disconnect()


def ask(student: Peer, body: dict[str, Any]) -> Any:
    return student.request("who-teacher", OP_CALL, {**body, "context": "class"}, timeout=30)["value"]


def test_served_code_knows_who_calls_it_for_that_call_only(
    classroom: dict[str, Peer], hub: HubServer
) -> None:
    me = classroom["teacher"]
    assert me.hub == f"{socket.gethostname()}:{hub.port}"  # the hub says its name when a peer joins
    user = getpass.getuser()  # the hub's server runs for this user
    serve(context="class", functions=["whoami"])
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        calls = [
            pool.submit(ask, classroom[name], {"kind": NAMED, "name": "whoami", "args": [name[4:]]})
            for name in ("who-ada", "who-grace")
        ]
        answers = [call.result(30) for call in calls]
    assert answers == [["ada", "who-ada", user, me.hub, True], ["grace", "who-grace", user, me.hub, True]]

    # A cell sent to a kernel serving code knows too, an awaiting one as well.
    serve(context="class")
    cell = "import asyncio\nawait asyncio.sleep(0.01)\nc = caller()\n[c.peer, c.user, c.hub]"
    assert ask(classroom["who-ada"], {"kind": "cell", "source": cell, "args": {}}) == [
        "who-ada",
        user,
        me.hub,
    ]

    # Outside a call there is no caller: here, and on the thread served code runs on.
    assert caller() is None
    seen: concurrent.futures.Future[Caller | None] = concurrent.futures.Future()
    home().call(lambda: seen.set_result(caller()))
    assert seen.result(5) is None
