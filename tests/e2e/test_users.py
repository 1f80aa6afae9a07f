"""Peers of several users: each carries the user its server admitted it for, and a kernel serves a
user's peers by the user's name (``--allow user:NAME``), across servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spindel_jupyter.core.errors import NotServed
from spindel_jupyter.peer.client import Peer
from tests.support import HubServer, NatsServer, value_of, wait_until


@pytest.fixture(scope="module")
def classroom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The teacher's server (hub and user ``teacher``) and a student's (``student``), in one mesh."""
    root: Path = tmp_path_factory.mktemp("users")
    nats = NatsServer(root / "nats").start()
    servers = {
        user: HubServer(
            root / user,
            args=(f"--SpindelHub.hub_name={user}", f"--SpindelHub.nats_url={nats.url}"),
            user=user,
        )
        for user in ("teacher", "student")
    }
    try:
        for server in servers.values():
            server.start()
        teacher, student = servers["teacher"], servers["student"]
        grader = teacher.start_notebook_kernel("grader.ipynb")
        grader.ok("%load_ext spindel_jupyter\n%spin_serve --allow user:student\nanswer = 42")
        work = Peer(student.ws_url, "work", student.token, kind="script", session="work").start()
        helper = Peer(teacher.ws_url, "helper", teacher.token, kind="script", session="helper").start()
        wait_until(
            lambda: {"grader", "helper"} <= {p["name"] for p in work.peers()},
            timeout=20,
            what="A's peers seen",
        )
        yield {"grader": grader, "work": work, "helper": helper, **servers}
        work.close()
        helper.close()
        grader.shutdown()
    finally:
        for server in servers.values():
            server.stop()
        nats.stop()


def call(peer: Peer, target: str) -> int:
    body = {"kind": "cell", "source": "answer", "args": {}}
    return int(peer.request(target, "call", body, timeout=30)["value"])


def test_every_peer_carries_the_user_its_server_admitted_it_for(classroom: dict[str, Any]) -> None:
    listed = {(p["name"], p["hub"]): p["user"] for p in classroom["work"].peers()}
    assert listed[("grader", "teacher")] == "teacher"
    assert listed[("helper", "teacher")] == "teacher"
    assert listed[("work", "student")] == "student"
    out = classroom["grader"].ok("%spin_peers").html()
    assert ">user<" in out and ">student<" in out  # the table shows each peer's user


def test_a_kernel_serves_the_peers_of_a_user_it_allows_by_name_on_any_hub(classroom: dict[str, Any]) -> None:
    assert call(classroom["work"], "grader@teacher") == 42  # a peer of the student's server
    with pytest.raises(NotServed, match="does not serve calls from 'helper'"):
        call(classroom["helper"], "grader")  # the teacher's own script is not the student


def test_a_kernel_serving_functions_only_runs_them_and_nothing_a_hostile_caller_sends(
    classroom: dict[str, Any], tmp_path: Path
) -> None:
    grader, work = classroom["grader"], classroom["work"]
    marker = tmp_path / "ran"
    grader.ok(
        "solutions = {'q1': 42}\n"
        "def grade(answer, question='q1'):\n"
        "    return 'right' if answer == solutions[question] else 'try again'\n"
        "%spin_serve --functions grade --allow user:student"
    )
    # A kernel on the student's server calls it by name: the name and the arguments travel, no code.
    student = classroom["student"].start_notebook_kernel("work.ipynb")
    try:
        student.ok(
            "%load_ext spindel_jupyter\nfrom spindel_jupyter import functions\n"
            "grader = functions('grader@teacher')"
        )
        assert student.ok("grader.grade(41)").text().strip() == "'try again'"
        assert student.ok("grader.grade(answer=42, question='q1')").text().strip() == "'right'"
        out = student.run("grader.solutions()")
        assert out.error is not None and "does not serve a function 'solutions'" in out.error["evalue"]
        out = student.run("grader.__class__.__name__")  # a dunder is never asked for
        assert out.error is None and out.text().strip() == "'Functions'"
    finally:
        student.shutdown()

    # A hostile caller sends what it likes: code, other names, dunders. Nothing runs.
    escape = f"open({str(marker)!r}, 'w').write('x')"
    for body in (
        {"kind": "cell", "source": escape, "args": {}},
        {"kind": "function", "source": f"def grade(a):\n    {escape}\n    return 1", "name": "grade"},
        {"kind": "named", "name": "eval", "args": [escape]},
        {"kind": "named", "name": "__builtins__"},
        {"kind": "named", "name": "solutions"},
        {"kind": "named", "name": "grade", "args": escape},
    ):
        with pytest.raises(NotServed):
            work.request("grader@teacher", "call", body, timeout=30)
    assert not marker.exists()
    assert grader.ok("solutions").text().strip() == "{'q1': 42}"
    for line, why in (
        ("%spin_serve --functions nosuch", "'nosuch' is not a function defined here"),
        ("%spin_serve --functions _private", "serve functions by their public names"),
    ):
        out = grader.run(line)
        assert out.error is not None and why in out.error["evalue"], out.error
    grader.ok("%spin_serve --allow user:student")  # back to serving code, as the other tests expect


def test_a_served_function_knows_who_calls_it_as_the_hubs_stamped_it(classroom: dict[str, Any]) -> None:
    grader, work, helper = classroom["grader"], classroom["work"], classroom["helper"]
    grader.ok(
        "from spindel_jupyter import caller\n"
        "progress = {}\n"
        "def grade(answer):\n"
        "    who = caller()\n"
        "    progress[who.user] = answer == 42\n"
        "    return [who.peer, who.user, who.hub]\n"
        "%spin_serve --functions grade --allow user:student,helper"
    )
    # A kernel of the student's server calls it by name; a peer of the teacher's own server too.
    student = classroom["student"].start_notebook_kernel("homework.ipynb")
    try:
        student.ok("%load_ext spindel_jupyter\nfrom spindel_jupyter import call")
        assert value_of(student, "call('grader@teacher', 'grade', 42)") == [
            "homework@student",
            "student",
            "student",
        ]
    finally:
        student.shutdown()
    named = {"kind": "named", "name": "grade", "args": [41]}
    assert helper.request("grader", "call", named, timeout=30)["value"] == ["helper", "teacher", "teacher"]
    # What a caller writes in its call is not who it is.
    forged = {**named, "user": "teacher", "from": "helper", "peer": "helper@teacher"}
    assert work.request("grader@teacher", "call", forged, timeout=30)["value"] == [
        "work@student",
        "student",
        "student",
    ]
    assert value_of(grader, "(caller(), progress)") == (None, {"student": False, "teacher": False})

    # A kernel serving code tells the cells it runs too; back to that, as the other tests expect.
    grader.ok("%spin_serve --allow user:student")
    cell = {"kind": "cell", "source": "c = caller()\n[c.peer, c.user, c.hub]", "args": {}}
    assert work.request("grader@teacher", "call", cell, timeout=30)["value"] == [
        "work@student",
        "student",
        "student",
    ]
