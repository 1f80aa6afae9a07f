"""SECURITY.md's table of who may do what across users, cell by cell, with real servers and kernels.

The teacher's Jupyter server and a student's, each acting for its user (as
JupyterHub starts them) with a hub of its own, joined over a real nats-server
where each hub is a NATS user that may publish only as itself. What is asked
for is the teacher's: her kernel ``lesson``, her topics, her workspaces. The
asker is a kernel of the same user (``ta``, on her server) or of another user
(``pupil``, on the student's server), using the public API as a notebook
would. Every cell checks the operation was allowed, or refused for that rule
(the refusal says why), and that a refusal changed nothing. The table's last
row needs JupyterHub: ``tests/e2e/test_jupyterhub.py`` has it.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support import HubServer, Kernel, NatsServer, converges, security_table, value_of, wait_until

SAME, OTHER = "same user", "another user"
COLUMNS = (SAME, OTHER)
ALLOWED, REFUSED = "allowed", "refused"
#: What a refusal raises in the asker's kernel.
REFUSALS = ("NotServed", "NotWritable", "Forbidden")
OWNED = "belongs to user teacher"
_ids = itertools.count()


class Refused(Exception):
    """The operation was refused for a rule (not failed for another reason)."""


@dataclass
class Classroom:
    teacher: HubServer
    student: HubServer
    lesson: Kernel
    askers: dict[str, Kernel]
    serving: str = ""

    def fresh(self, stem: str) -> str:
        return f"{stem}-{next(_ids)}"

    def name_of(self, who: str) -> str:
        """The asker's peer name as the teacher's kernel sees it."""
        return "ta" if who == SAME else "pupil@student"

    def server_of(self, who: str) -> HubServer:
        return self.teacher if who == SAME else self.student

    def ask(self, who: str, code: str, expect: str = "") -> Any:
        """Run ``code`` in the asker's kernel; its last line's value. A refusal raises
        :class:`Refused`; with ``expect``, only a refusal that says it."""
        lines = code.strip().splitlines()
        out = self.askers[who].run("\n".join([*lines[:-1], f"print(repr({lines[-1]}))"]))
        if out.error is not None:
            if out.error["ename"] in REFUSALS and expect in out.error["evalue"]:
                raise Refused(out.error["evalue"])
            raise AssertionError(f"{who}: {out.error['ename']}: {out.error['evalue']}")
        return eval(out.stdout.strip().splitlines()[-1])

    def serve(self, allow: str | None, functions: str = "") -> None:
        """The teacher's kernel serves again: ``--allow`` as given (None: no --allow), and only
        ``functions`` by name when given."""
        state = f"{allow} {functions}"
        if self.serving != state:
            line = "%spin_unserve\n%spin_serve" + ("" if allow is None else f" --allow {allow}")
            self.lesson.ok(line + (f" --functions {functions}" if functions else ""))
            self.serving = state

    def publish(self, stem: str) -> str:
        """A new workspace of the teacher's, published by her kernel; its name."""
        name = self.fresh(stem)
        self.lesson.ok(f"workspace.publish({name!r}, path='lesson.ipynb')")
        for server in (self.teacher, self.student):
            wait_until(lambda s=server: name in listed(s), what=f"{name} on {server.user}")
        return name

    def notebook(self, who: str) -> str:
        """A notebook file of the asker's own server, to publish from; its path."""
        path = f"{self.fresh('mine')}.ipynb"
        save(self.server_of(who), path, f"print({path!r})")
        return path


def listed(server: HubServer) -> list[str]:
    return [w["name"] for w in server.get("spindel/api/workspaces")]


def save(server: HubServer, path: str, source: str) -> None:
    cell = {"cell_type": "code", "id": "c0", "metadata": {}, "source": source, "outputs": []}
    notebook = {
        "cells": [{**cell, "execution_count": None}],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    (server.notebooks / path).write_text(json.dumps(notebook))


IMPORTS = (
    "%load_ext spindel_jupyter\nimport spindel_jupyter\n"
    "from spindel_jupyter import Signal, call, caller, export_signal, subscribe_signal, sync_signal\n"
    "from spindel_jupyter import workspace"
)
PID = "def pid():\n    import os\n    return os.getpid()\n"


@pytest.fixture(scope="module")
def classroom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Classroom]:
    root = tmp_path_factory.mktemp("across-users")
    nats = NatsServer.with_hub_users(root / "nats", ["teacher", "student"]).start()
    servers = nats.user_servers(root)
    kernels: list[Kernel] = []
    try:
        for server in servers.values():
            server.start()
        teacher, student = servers["teacher"], servers["student"]
        save(teacher, "lesson.ipynb", "x = 1")
        for server, name in ((teacher, "lesson"), (teacher, "ta"), (student, "pupil")):
            kernel = server.start_notebook_kernel(f"{name}.ipynb")
            kernels.append(kernel)
            kernel.ok(IMPORTS)
        lesson, ta, pupil = kernels
        lesson.ok(
            "answer_key = 42\n"
            "def grade(answer):\n    return answer == answer_key\n"
            "def whoami():\n    c = caller()\n    return [c.peer, c.user]\n"
        )
        wait_until(
            lambda: {"lesson", "ta"} <= {p["name"] for p in student.get("spindel/api/peers")},
            timeout=30,
            what="the teacher's peers seen on the student's server",
        )
        yield Classroom(teacher, student, lesson, {SAME: ta, OTHER: pupil})
    finally:
        for kernel in kernels:
            kernel.shutdown()
        for server in servers.values():
            server.stop()
        nats.stop()


def see_the_peers(room: Classroom, who: str) -> None:
    peers = room.ask(
        who, "[(p['name'], p['hub'], p['user']) for p in spindel_jupyter.current_peer().peers()]"
    )
    assert ("lesson", "teacher", "teacher") in peers, peers


def call_code(room: Classroom, who: str, allow: str | None) -> None:
    room.serve(allow)
    room.askers[who].ok(PID)
    assert (
        room.ask(who, "call('lesson@teacher', pid)", expect="does not serve calls from") == room.lesson.pid()
    )


def call_no_allow(room: Classroom, who: str) -> None:
    call_code(room, who, None)


def call_allow_naming(room: Classroom, who: str) -> None:
    call_code(room, who, room.name_of(who))


def call_allow_naming_the_user(room: Classroom, who: str) -> None:
    call_code(room, who, f"user:{room.server_of(who).user}")


def call_allow_naming_neither(room: Classroom, who: str) -> None:
    call_code(room, who, "someone-else,user:nobody")


def functions_for(room: Classroom, who: str) -> None:
    room.serve(f"user:{room.server_of(who).user}", functions="grade,whoami")


def call_a_served_function(room: Classroom, who: str) -> None:
    functions_for(room, who)
    assert room.ask(who, "call('lesson@teacher', 'grade', 42)") is True


def send_code_to_functions_only(room: Classroom, who: str) -> None:
    """Allowed if any of the three gets through; refused if each is."""
    functions_for(room, who)
    room.askers[who].ok(PID)
    reasons = []
    for attempt in ("pid", "'answer_key'", "'_private'", "'__class__'"):
        try:
            room.ask(who, f"call('lesson@teacher', {attempt})", expect="serve")
            return
        except Refused as exc:
            reasons.append(str(exc))
    assert value_of(room.lesson, "answer_key") == 42
    raise Refused("; ".join(reasons))


def pass_for_another(room: Classroom, who: str) -> None:
    """Allowed if what the caller writes in its call changes who the teacher's function is told calls."""
    functions_for(room, who)
    forged = {"kind": "named", "name": "whoami", "args": [], "user": "mallory", "from": "x", "peer": "x@y"}
    said = room.ask(
        who, f"spindel_jupyter.current_peer().request('lesson@teacher', 'call', {forged!r})['value']"
    )
    truth = [room.name_of(who), room.server_of(who).user]
    if said != truth:
        return
    raise Refused(f"the teacher's function was told {said}, the hubs' word, not the caller's")


def read_an_exported_topic(room: Classroom, who: str) -> None:
    topic = room.fresh("exported")
    room.lesson.ok(f"exported = export_signal({topic!r}, Signal(1))")
    room.askers[who].ok(f"mirror = subscribe_signal({topic!r})")
    converges([room.askers[who]], "mirror.value", 1)


def write_an_exported_topic(room: Classroom, who: str) -> None:
    topic = room.fresh("exported")
    room.lesson.ok(f"exported = export_signal({topic!r}, Signal(1))")
    write(room, who, topic)


def write_a_shared_topic(room: Classroom, who: str) -> None:
    topic = room.fresh("shared")
    room.lesson.ok(f"shared = sync_signal({topic!r}, 0)\nshared.set(1)")
    write(room, who, topic)
    converges([room.lesson], "shared.value", 5)


def write(room: Classroom, who: str, topic: str) -> None:
    """The asker syncs ``topic`` and writes 5 to it: on the teacher's hub, or refused, changing nothing."""
    server = room.server_of(who)
    wait_until(lambda: summary_of(server, topic) == "1", what=f"{topic} on {server.user}'s hub")
    try:
        room.ask(who, f"writer = sync_signal({topic!r})\nwriter.set(5)", expect=OWNED)
    except Refused:
        assert summary_of(room.teacher, topic) == "1"
        raise
    wait_until(lambda: summary_of(room.teacher, topic) == "5", what=f"{topic} written")


def summary_of(server: HubServer, topic: str) -> str | None:
    return next((str(t["summary"]) for t in server.get("spindel/api/topics") if t["name"] == topic), None)


def change_who_writes_a_topic(room: Classroom, who: str) -> None:
    topic = room.fresh("shared")
    room.lesson.ok(f"shared = sync_signal({topic!r}, 1)")
    server = room.server_of(who)
    wait_until(lambda: topic in [t["name"] for t in server.get("spindel/api/topics")])
    try:
        room.ask(who, f"sync_signal({topic!r}, others='read').value", expect="only teacher can change")
    except Refused:
        assert scope_of(room.teacher, topic) == "write"  # a refusal changed nothing
        raise
    wait_until(lambda: scope_of(room.teacher, topic) == "read", what=f"{topic} read-only to others")


def scope_of(server: HubServer, topic: str) -> str:
    return str(next(t for t in server.get("spindel/api/topics") if t["name"] == topic)["others"])


def follow_and_fork(room: Classroom, who: str) -> None:
    name = room.publish("lecture")
    room.ask(who, f"workspace.follow({name!r})['name']", expect=OWNED)
    room.ask(who, f"workspace.fork({name!r}, {room.fresh('fork')!r})['name']", expect=OWNED)


def refused_as_the_teachers(room: Classroom, who: str, name: str, code: str) -> None:
    """Run ``code``; a refusal must be for the workspace being the teacher's, and change nothing."""
    head = room.teacher.get(f"spindel/api/workspaces/{name}")["head"]
    try:
        room.ask(who, code, expect=OWNED)
    except Refused:
        assert room.teacher.get(f"spindel/api/workspaces/{name}")["head"] == head
        raise


def claim(room: Classroom, who: str) -> None:
    name = room.publish("lecture")
    refused_as_the_teachers(room, who, name, f"workspace.claim({name!r}, force=True)['name']")
    owner = room.teacher.get(f"spindel/api/workspaces/{name}")["owner"]["peer"]
    assert owner.split("@")[0] == "ta", owner


def take_the_lease(room: Classroom, who: str, name: str) -> None:
    """The same user takes the writer lease first, as anyone must to write (her kernel holds it)."""
    if who == SAME:
        room.ask(who, f"workspace.claim({name!r}, force=True)['name']")


def publish_onto(room: Classroom, who: str) -> None:
    name = room.publish("lecture")
    path = room.notebook(who)
    take_the_lease(room, who, name)
    refused_as_the_teachers(room, who, name, f"workspace.publish({name!r}, path={path!r})['name']")


def merge_into(room: Classroom, who: str) -> None:
    name = room.publish("lecture")
    fork = room.fresh("fork")
    room.ask(who, f"workspace.fork({name!r}, {fork!r}, into={fork + '.ipynb'!r})['name']")
    take_the_lease(room, who, name)
    refused_as_the_teachers(room, who, name, f"workspace.merge({fork!r})['head']")


def write_a_fork(room: Classroom, who: str) -> None:
    name = room.publish("lecture")
    fork = room.fresh("fork")
    path = f"{fork}.ipynb"
    room.ask(who, f"workspace.fork({name!r}, {fork!r}, into={path!r})['name']")
    save(room.server_of(who), path, "x = 2  # the fork's own")
    room.ask(who, f"workspace.publish({fork!r}, path={path!r})['name']", expect=OWNED)
    assert room.server_of(who).get(f"spindel/api/workspaces/{fork}")["user"] == room.server_of(who).user


ROWS: dict[str, tuple[Callable[[Classroom, str], None], tuple[str, str]]] = {
    "see the user's peers, with their hub and user": (see_the_peers, (ALLOWED, ALLOWED)),
    "call a kernel of the user that serves with no --allow": (call_no_allow, (ALLOWED, REFUSED)),
    "call a kernel of the user whose --allow names the caller": (call_allow_naming, (ALLOWED, ALLOWED)),
    "call a kernel of the user whose --allow names the caller's user (user:NAME)": (
        call_allow_naming_the_user,
        (ALLOWED, ALLOWED),
    ),
    "call a kernel of the user whose --allow names neither": (call_allow_naming_neither, (REFUSED, REFUSED)),
    "call a function the kernel serves by name (--functions), as a caller it allows": (
        call_a_served_function,
        (ALLOWED, ALLOWED),
    ),
    "send code, another name or a _-name to a kernel serving functions only": (
        send_code_to_functions_only,
        (REFUSED, REFUSED),
    ),
    "pass for another peer or user in a call (caller() is what the hubs stamped)": (
        pass_for_another,
        (REFUSED, REFUSED),
    ),
    "read a topic the user exports": (read_an_exported_topic, (ALLOWED, ALLOWED)),
    "write a topic the user exports (read-only to others)": (write_an_exported_topic, (ALLOWED, REFUSED)),
    "write a topic the user syncs (others='write')": (write_a_shared_topic, (ALLOWED, ALLOWED)),
    "change who else may write a topic of the user": (change_who_writes_a_topic, (ALLOWED, REFUSED)),
    "follow and fork a workspace of the user": (follow_and_fork, (ALLOWED, ALLOWED)),
    "claim the writer lease of a workspace of the user": (claim, (ALLOWED, REFUSED)),
    "publish a new head onto a workspace of the user": (publish_onto, (ALLOWED, REFUSED)),
    "merge a fork into a workspace of the user": (merge_into, (ALLOWED, REFUSED)),
    "write a fork one made of a workspace of the user": (write_a_fork, (ALLOWED, ALLOWED)),
}
#: Rows tested on a real JupyterHub, by the test of that name in tests/e2e/test_jupyterhub.py.
ON_JUPYTERHUB = {
    "open the user's Jupyter server (lab, files, kernels, terminals, the hub's routes)": (
        "test_a_user_opens_their_own_server_and_not_another_users",
        (ALLOWED, REFUSED),
    ),
}

CELLS = [
    pytest.param(row, who, expected, id=f"{row} | {who}")
    for row, (_, outcomes) in ROWS.items()
    for who, expected in zip(COLUMNS, outcomes, strict=True)
]


@pytest.mark.parametrize(("row", "who", "expected"), CELLS)
def test_cell(classroom: Classroom, row: str, who: str, expected: str) -> None:
    try:
        ROWS[row][0](classroom, who)
        outcome, reason = ALLOWED, ""
    except Refused as exc:
        outcome, reason = REFUSED, str(exc)
        assert reason, "a refusal says why"
    assert outcome == expected, reason


def test_security_md_shows_this_table() -> None:
    """SECURITY.md's table across users and the cells tested here (and on JupyterHub) are the same."""
    from tests.e2e import test_jupyterhub

    tested = {row: outcomes for row, (_, outcomes) in (ROWS | ON_JUPYTERHUB).items()}
    assert security_table(COLUMNS) == tested
    for test, _ in ON_JUPYTERHUB.values():
        assert callable(getattr(test_jupyterhub, test, None)), test
