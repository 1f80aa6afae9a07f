"""Workspaces end to end: a teacher publishes, a student follows, forks and is merged back."""

from __future__ import annotations

import json
import time
import urllib.error
from collections.abc import Iterator
from typing import Any

import nbformat
import pytest

from tests.support import HubServer, Kernel, wait_until


def save(hub: HubServer, path: str, *sources: str) -> None:
    """Save a notebook through the contents API, as the lab does."""
    (hub.notebooks / path).parent.mkdir(parents=True, exist_ok=True)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell{i}"
    content = json.loads(nbformat.writes(nb))
    hub.request("PUT", f"api/contents/{path}", {"type": "notebook", "format": "json", "content": content})


def cells(hub: HubServer, path: str) -> list[dict[str, Any]]:
    return list(hub.get(f"api/contents/{path}")["content"]["cells"])


def sources(hub: HubServer, path: str) -> list[str]:
    return [c["source"] for c in cells(hub, path)]


def post(hub: HubServer, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    try:
        return 200, hub.request("POST", path, body)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def classroom(hub: HubServer) -> Iterator[tuple[Kernel, Kernel]]:
    save(hub, "class/lecture3.ipynb", "a = 1", "b = 2", "c = 3")
    teacher = hub.start_notebook_kernel("class/lecture3.ipynb")
    save(hub, "class/alice.ipynb")
    student = hub.start_notebook_kernel("class/alice.ipynb")
    for kernel in (teacher, student):
        kernel.ok("%load_ext spindel_jupyter")
    yield teacher, student
    teacher.shutdown()
    student.shutdown()


def test_publish_follow_fork_and_merge(hub: HubServer, classroom: tuple[Kernel, Kernel]) -> None:
    teacher, student = classroom
    teacher.ok(
        "from spindel_jupyter import sync_signal\nlevel = sync_signal('lecture3/level', 0)\nlevel.set(5)"
    )
    out = teacher.ok("from spindel_jupyter import sync\nsync.flush()\n%spin_publish lecture3 -m 'week 3'")
    assert "published 'lecture3'" in out.stdout and "class/lecture3.ipynb" in out.stdout
    assert hub.get("spindel/api/workspaces/lecture3")["topics"] == ["lecture3/level"]  # its synced state

    out = student.ok("%spin_follow lecture3")
    assert "class/following/lecture3.ipynb" in out.stdout
    student.ok(
        "import spindel_jupyter as sj\nheads = []\nsj.current_peer().listen('workspace', heads.append)"
    )
    copy = cells(hub, "class/following/lecture3.ipynb")
    assert [c["source"] for c in copy] == ["a = 1", "b = 2", "c = 3"]
    assert all(c["metadata"]["editable"] is False for c in copy)  # read-only

    # the teacher saves: the workspace is republished and the follower's copy moves, whole
    save(hub, "class/lecture3.ipynb", "a = 1", "b = 20", "c = 3")
    wait_until(
        lambda: sources(hub, "class/following/lecture3.ipynb")[1] == "b = 20", what="the copy to follow"
    )
    wait_until(lambda: int(student.ok("print(len(heads))").stdout) >= 1, what="the follower to be told")

    out = student.ok("%spin_fork lecture3")
    assert "as 'lecture3-alice'" in out.stdout
    assert sources(hub, "class/forks/lecture3-alice.ipynb") == ["a = 1", "b = 20", "c = 3"]
    fork = hub.get("spindel/api/workspaces/lecture3-alice")
    assert fork["fork_of"]["workspace"] == "lecture3" and fork["owner"]["peer"] == "alice"

    # the student edits her copy; the teacher merges cleanly
    save(hub, "class/forks/lecture3-alice.ipynb", "a = 1", "b = 20", "c = 30", "d = 4")
    wait_until(
        lambda: hub.get("spindel/api/workspaces/lecture3-alice")["head"] != fork["head"], what="republish"
    )
    out = teacher.ok("%spin_merge lecture3-alice")
    assert "merged 'lecture3-alice'" in out.stdout
    assert sources(hub, "class/lecture3.ipynb") == ["a = 1", "b = 20", "c = 30", "d = 4"]
    wait_until(
        lambda: len(sources(hub, "class/following/lecture3.ipynb")) == 4, what="the follower to see it"
    )


def test_conflicting_merge_changes_nothing_until_a_strategy(
    hub: HubServer, classroom: tuple[Kernel, Kernel]
) -> None:
    teacher, student = classroom
    save(hub, "class/quiz.ipynb", "q = 1", "r = 2")
    teacher.ok("%spin_publish quiz --path class/quiz.ipynb")
    student.ok("%spin_fork quiz quiz-alice")
    forked = hub.get("spindel/api/workspaces/quiz")["head"]  # the fork's head too, at first
    save(hub, "class/quiz.ipynb", "q = 10", "r = 2")
    save(hub, "class/forks/quiz-alice.ipynb", "q = 100", "r = 2")
    wait_until(
        lambda: all(
            hub.get(f"spindel/api/workspaces/{name}")["head"] != forked for name in ("quiz", "quiz-alice")
        ),
        what="both saves republished",
    )
    head = hub.get("spindel/api/workspaces/quiz")["head"]
    out = teacher.run("%spin_merge quiz-alice")
    assert out.error is not None and out.error["ename"] == "MergeConflict"
    assert "<pre>q = 10</pre>" in out.html() and "<pre>q = 100</pre>" in out.html()  # side by side
    assert hub.get("spindel/api/workspaces/quiz")["head"] == head
    status, body = post(hub, "spindel/api/workspaces/quiz-alice/merge", {"as": "lecture3"})
    assert status == 409 and body["conflicts"][0]["theirs"] == "q = 100"
    teacher.ok("%spin_merge quiz-alice --strategy union")
    assert sources(hub, "class/quiz.ipynb") == ["q = 10", "q = 100", "r = 2"]


def test_only_the_lease_holder_publishes(hub: HubServer, classroom: tuple[Kernel, Kernel]) -> None:
    teacher, student = classroom
    save(hub, "class/notes.ipynb", "x = 1")
    teacher.ok("%spin_publish notes --path class/notes.ipynb")
    out = student.run("%spin_publish notes --path class/notes.ipynb")
    assert out.error is not None and "held by 'lecture3'" in out.error["evalue"]
    status, body = post(hub, "spindel/api/workspaces/notes/claim", {"as": "alice"})
    assert status == 409 and body["code"] == "not_writable"


def test_rest_lists_gets_and_reports_unknown_names(hub: HubServer, classroom: tuple[Kernel, Kernel]) -> None:
    teacher, _ = classroom
    teacher.ok("%spin_workspaces")
    out = teacher.run("%spin_follow nosuch")
    assert out.error is not None and out.error["ename"] == "WorkspaceNotFound"
    assert "no workspace named 'nosuch'" in out.error["evalue"]
    assert out.error["traceback"] == [f"WorkspaceNotFound: {out.error['evalue']}"]  # one line, as before
    names = [w["name"] for w in hub.get("spindel/api/workspaces")]
    assert "lecture3" in names
    with pytest.raises(urllib.error.HTTPError) as info:
        hub.get("spindel/api/workspaces/nope")
    assert info.value.code == 404
    nodes = hub.get("spindel/api/stats")["store"]["nodes"]
    status, body = post(hub, "spindel/api/workspaces/lecture3/fork", {"new": "lecture3-rest"})
    assert status == 200 and body["fork_of"]["workspace"] == "lecture3"
    assert hub.get("spindel/api/stats")["store"]["nodes"] == nodes  # a fork adds no content node
    store = hub.get("spindel/api/stats")["store"]
    assert store["nodes"] > 0 and store["bytes"] > 0


def test_a_follower_never_reads_a_torn_notebook(hub: HubServer, classroom: tuple[Kernel, Kernel]) -> None:
    teacher, student = classroom
    save(hub, "class/live.ipynb", "v = 0")
    teacher.ok("%spin_publish live --path class/live.ipynb")
    student.ok("%spin_follow live --into following/live.ipynb")
    copy = hub.notebooks / "class/following/live.ipynb"
    versions = [[f"v = {i}", f"w = {i}" * (i % 3 + 1)] for i in range(1, 26)]
    allowed = {("v = 0",), *(tuple(v) for v in versions)}
    seen: set[tuple[str, ...]] = set()
    started = time.monotonic()
    for version in versions:
        save(hub, "class/live.ipynb", *version)
        for _ in range(3):  # read the file directly, as any reader would, while heads move
            nb = nbformat.reads(copy.read_text(), as_version=4)  # never invalid JSON, never torn
            shown = tuple(c.source for c in nb.cells)
            assert shown in allowed, shown
            seen.add(shown)
    wait_until(lambda: tuple(sources(hub, "class/following/live.ipynb")) == tuple(versions[-1]), timeout=10)
    assert time.monotonic() - started < 30 and len(seen) > 1


def test_a_save_reaches_the_follower_within_2s(hub: HubServer, classroom: tuple[Kernel, Kernel]) -> None:
    teacher, student = classroom
    save(hub, "class/quick.ipynb", "q = 0")
    teacher.ok("%spin_publish quick --path class/quick.ipynb")
    student.ok("%spin_follow quick")
    save(hub, "class/quick.ipynb", "q = 1")
    wait_until(lambda: sources(hub, "class/following/quick.ipynb") == ["q = 1"], timeout=2, interval=0.02)


def test_claim_after_the_writer_leaves(hub: HubServer) -> None:
    save(hub, "class/handover.ipynb", "h = 1")
    writer = hub.start_notebook_kernel("class/handover.ipynb")
    writer.ok("%load_ext spindel_jupyter\n%spin_publish handover")
    writer.shutdown()
    reader = hub.start_notebook_kernel("class/reader.ipynb")
    try:
        reader.ok("%load_ext spindel_jupyter")
        out = reader.run("%spin_claim handover")
        assert out.error is not None and "held by 'handover'" in out.error["evalue"]  # lease still running
        assert "now write" in reader.ok("%spin_claim handover --force").stdout
        reader.ok("%spin_publish handover --path class/handover.ipynb")
    finally:
        reader.shutdown()


def test_registry_survives_a_restart_and_corrupt_nodes_are_refused(own_hub: HubServer) -> None:
    save(own_hub, "lesson.ipynb", "x = 1", "y = 2")
    kernel = own_hub.start_notebook_kernel("lesson.ipynb")
    kernel.ok("%load_ext spindel_jupyter\n%spin_publish lesson\n%spin_fork lesson lesson-b")
    kernel.shutdown()
    before = own_hub.get("spindel/api/workspaces")
    own_hub.stop()
    own_hub.start()
    assert own_hub.get("spindel/api/workspaces") == before
    head = before[0]["head"]
    node = own_hub.root / "store" / "nodes" / head[:2] / head[2:]
    node.write_bytes(node.read_bytes()[:-3] + b"xyz")
    status, body = post(own_hub, "spindel/api/workspaces/lesson/follow", {})
    assert status == 400 and body["code"] == "corrupt_node" and head[:12] in body["message"]


def test_workspace_topics_are_wired_by_role_forked_and_merged(
    hub: HubServer, classroom: tuple[Kernel, Kernel]
) -> None:
    teacher, student = classroom
    save(hub, "class/signals.ipynb", "s = 1")
    teacher.ok(
        "from spindel_jupyter import sync_signal, sync\nfrom spindel_jupyter.core.crdt import ORSet\n"
        "tags = sync_signal('sig/tags', ORSet())\ntags.update(lambda s: s.add('intro'))\n"
        "level = sync_signal('sig/level', 0)\nlevel.set(3)\nsync.flush()"
    )
    teacher.ok(
        "%spin_publish signals --path class/signals.ipynb --topic sig/tags:bidirectional --topic sig/level"
    )
    assert hub.get("spindel/api/workspaces/signals")["roles"] == {
        "sig/tags": "bidirectional",
        "sig/level": "subscriber",
    }
    student.ok(
        "%spin_follow signals\nfrom spindel_jupyter import sync, workspace\nw = workspace.signals['signals']"
    )
    assert (
        student.ok("print(sorted(w['sig/tags'].value), w['sig/level'].value)").stdout.strip() == "['intro'] 3"
    )
    assert student.run("w['sig/level'].set(5)").error is not None  # a subscriber topic is a read-only mirror
    student.ok("w['sig/tags'].update(lambda s: s.add('from student'))")  # bidirectional: reaches the teacher
    wait_until(
        lambda: "from student" in teacher.ok("print(sorted(tags.value))").stdout, what="teacher sees it"
    )

    student.ok("%spin_fork signals signals-alice\nf = workspace.signals['signals-alice']")
    student.ok("f['sig/tags'].update(lambda s: s.add('fork only'))\nf['sig/level'].set(9)\nsync.flush()")
    assert "fork only" not in teacher.ok("print(sorted(tags.value))").stdout  # isolated until merged
    teacher.ok("level.set(7)\nsync.flush()")
    out = teacher.run("%spin_merge signals-alice")  # both changed the plain topic: a conflict
    assert out.error is not None and "sig/level" in out.error["evalue"]
    teacher.ok("%spin_merge signals-alice --strategy theirs")
    wait_until(
        lambda: "fork only" in teacher.ok("print(sorted(tags.value))").stdout, what="the CRDT joined back"
    )
    wait_until(lambda: teacher.ok("print(level.value)").stdout.strip() == "9", what="the fork's value taken")
