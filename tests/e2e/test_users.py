"""Peers of several users: each carries the user its server admitted it for, and a kernel serves a
user's peers by the user's name (``--allow user:NAME``), across servers. A user's topics and
workspaces are that user's: other users read them, and write them only as the owner lets them (a
topic shared with ``others='write'``) or through a fork."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spindel_jupyter.core import codes, wire
from spindel_jupyter.core.errors import NotServed
from spindel_jupyter.core.protocol import ERROR, SNAP
from spindel_jupyter.peer.client import Peer
from tests.e2e.test_workspaces import post, save, sources
from tests.support import HubServer, Kernel, NatsServer, converges, value_of, wait_until


@pytest.fixture(scope="module")
def classroom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The teacher's server (hub and user ``teacher``) and a student's (``student``), in one mesh."""
    root: Path = tmp_path_factory.mktemp("users")
    nats = NatsServer(root / "nats").start()
    servers = nats.user_servers(root)
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


# -- scoped data: topics and workspaces of a user, read-only to the others --------------------------


@pytest.fixture(scope="module")
def learner(classroom: dict[str, Any]) -> Iterator[Kernel]:
    """A kernel of the student's server."""
    kernel = classroom["student"].start_notebook_kernel("learner.ipynb")
    kernel.ok("%load_ext spindel_jupyter\nfrom spindel_jupyter import Signal, subscribe_signal, sync_signal")
    yield kernel
    kernel.shutdown()


def topic(server: HubServer, name: str) -> dict[str, Any] | None:
    return next((t for t in server.get("spindel/api/topics") if t["name"] == name), None)


READ_ONLY = (
    "topic 'progress' is read-only to user student: it belongs to user teacher; "
    "read it with subscribe_signal, or ask teacher to share it with others='write'"
)


def test_a_topic_the_teacher_exports_is_read_by_the_student_and_never_written(
    classroom: dict[str, Any], learner: Kernel
) -> None:
    grader, student = classroom["grader"], classroom["student"]
    grader.ok(
        "from spindel_jupyter import Signal, export_signal\nprogress = export_signal('progress', Signal(1))"
    )
    learner.ok("progress = subscribe_signal('progress')")
    grader.ok("progress.set(2)")
    converges([learner], "progress.value", 2)
    wait_until(lambda: (topic(student, "progress") or {}).get("owner") == "teacher", what="the owner on B")
    assert {k: topic(student, "progress")[k] for k in ("owner", "others")} == {
        "owner": "teacher",
        "others": "read",
    }

    out = learner.run("sync_signal('progress', 5)")  # a student's kernel that would write it
    assert out.error is not None and out.error["ename"] == "NotWritable", out.error
    assert out.error["evalue"] == READ_ONLY
    out = learner.run("progress.set(5)")  # the mirror, as before
    assert out.error is not None and out.error["ename"] == "NotWritable"

    # A hostile peer of the student's server sends the frames itself: its hub refuses them.
    hostile = Peer(student.ws_url, "hostile", student.token, kind="script", session="hostile")
    refusals: list[dict[str, Any]] = []
    hostile.on_frame(ERROR, lambda header, body: refusals.append(header))
    hostile.on_frame(SNAP, lambda header, body: refusals.append(header))
    hostile.start()
    try:
        forged = wire.encode(666)
        hostile.send_frame(
            {"t": "pub", "topic": "progress", "kind": "lww", "seq": 1, "stamp": [2**40, 0, "x"]}, forged
        )
        sub = {
            "t": "sub",
            "id": 7,
            "topic": "progress",
            "mode": "sync",
            "kind": "lww",
            "stamp": [2**40, 0, "x"],
        }
        hostile.send_frame(sub, forged)
        hostile.send_frame({**sub, "id": 8, "mode": "mirror", "others": "write"}, None)
        wait_until(lambda: len(refusals) == 3, what="the hub's three answers")
    finally:
        hostile.close()
    pub_refused, sub_refused, mode_refused = refusals
    assert pub_refused["code"] == codes.NOT_WRITABLE and pub_refused["topic"] == "progress"
    assert pub_refused["message"] == READ_ONLY
    assert sub_refused["error"]["message"] == READ_ONLY
    assert "only teacher can change who else writes it" in mode_refused["error"]["message"]
    assert student.get("spindel/api/stats")["changes_refused"] >= 1

    # The teacher's value is unchanged, for everyone; the teacher goes on writing.
    assert value_of(grader, "progress.value") == 2
    assert topic(classroom["teacher"], "progress")["summary"] == "2"
    assert value_of(learner, "progress.value") == 2
    grader.ok("progress.set(3)")
    converges([learner], "progress.value", 3)


def test_a_topic_the_teacher_shares_with_others_write_is_the_students_to_write_until_made_read_only(
    classroom: dict[str, Any], learner: Kernel
) -> None:
    grader, student = classroom["grader"], classroom["student"]
    grader.ok("from spindel_jupyter import sync_signal\nboard = sync_signal('board', 0)\nboard.set(1)")
    wait_until(lambda: topic(student, "board") is not None, what="the board on B")
    learner.ok("board = sync_signal('board')")
    converges([learner], "board.value", 1)
    learner.ok("board.set(5)")
    converges([grader], "board.value", 5)

    # The teacher makes it read-only to others: the student's next write is refused by the hubs,
    # the student's kernel says so and takes the teacher's value back, and writes no more.
    grader.ok("board = sync_signal('board', board, others='read')")
    wait_until(lambda: topic(student, "board")["others"] == "read", what="the new scope on B")
    learner.ok("board.set(6)")
    converges([learner], "board.value", 5)
    out = learner.run("board.set(7)")
    assert out.error is not None and out.error["ename"] == "NotWritable"
    assert "it belongs to user teacher" in out.error["evalue"]
    assert value_of(grader, "board.value") == 5
    grader.ok("board.set(8)")
    converges([learner], "board.value", 8)


def workspace_refusal(name: str, user: str = "student") -> str:
    return (
        f"workspace {name!r} belongs to user teacher and is read-only to user {user}: "
        f"fork it (%spin_fork {name} NEW) and write the fork"
    )


def test_the_teachers_workspace_is_read_only_to_the_student_who_forks_to_write(
    classroom: dict[str, Any], learner: Kernel
) -> None:
    teacher, student, grader = classroom["teacher"], classroom["student"], classroom["grader"]
    save(teacher, "lecture.ipynb", "a = 1", "b = 2")
    status, published = post(teacher, "spindel/api/workspaces", {"name": "lecture", "path": "lecture.ipynb"})
    assert status == 200 and published["user"] == "teacher", published
    wait_until(
        lambda: any(w["name"] == "lecture" for w in student.get("spindel/api/workspaces")),
        what="lecture on B",
    )
    head = published["head"]

    # REST requests of the student's server.
    notebook = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    for path, body in (
        ("spindel/api/workspaces", {"name": "lecture", "notebook": notebook}),
        ("spindel/api/workspaces/lecture/claim", {"force": True}),
    ):
        status, answer = post(student, path, body)
        assert (status, answer["code"], answer["message"]) == (
            409,
            codes.NOT_WRITABLE,
            workspace_refusal("lecture"),
        )

    # The magics and the Python API of a student's kernel.
    for line in ("%spin_publish lecture", "%spin_claim lecture --force"):
        out = learner.run(line)
        assert out.error is not None and out.error["ename"] == "NotWritable", (line, out.error)
        assert out.error["evalue"] == workspace_refusal("lecture")
    out = learner.run("from spindel_jupyter import workspace\nworkspace.claim('lecture', force=True)")
    assert out.error is not None and out.error["evalue"] == workspace_refusal("lecture")

    # Reading, following and forking stay open; the fork is the student's to write.
    assert post(student, "spindel/api/workspaces/lecture/follow", {})[0] == 200
    learner.ok("%spin_fork lecture lecture-student")
    fork = student.get("spindel/api/workspaces/lecture-student")
    assert fork["user"] == "student"
    save(student, "forks/lecture-student.ipynb", "a = 1", "b = 20")
    status, answer = post(
        student,
        "spindel/api/workspaces",
        {"name": "lecture-student", "path": "forks/lecture-student.ipynb", "as": "learner"},
    )
    assert status == 200, answer

    # Merging into the teacher's workspace is the teacher's: refused to the student, done by the teacher.
    status, answer = post(student, "spindel/api/workspaces/lecture-student/merge", {})
    assert status == 409 and "ask teacher to merge it (%spin_merge lecture-student)" in answer["message"]
    out = learner.run("%spin_merge lecture-student")
    assert out.error is not None and "belongs to user teacher" in out.error["evalue"]
    assert teacher.get("spindel/api/workspaces/lecture")["head"] == head  # unchanged by the student
    wait_until(
        lambda: teacher.get("spindel/api/workspaces/lecture-student")["head"] != head, what="the fork on A"
    )
    status, answer = post(teacher, "spindel/api/workspaces/lecture-student/merge", {})
    assert status == 200 and answer["merged"], answer
    assert sources(teacher, "lecture.ipynb") == ["a = 1", "b = 20"]
    # The teacher's own peers write it as before (the grader kernel's user is the teacher).
    assert (
        grader.ok("from spindel_jupyter import workspace\nworkspace.claim('lecture', force=True)['user']")
        .text()
        .strip()
        == "'teacher'"
    )
