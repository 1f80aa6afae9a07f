"""The workspace registry: publish, leases, forks, three-way merges, restarts."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from spindel_jupyter.core import wire
from spindel_jupyter.core.errors import MergeConflict, NotWritable, WorkspaceExists, WorkspaceNotFound
from spindel_jupyter.core.protocol import LWW
from spindel_jupyter.demo import code_notebook as notebook
from spindel_jupyter.hub.store import NodeStore
from spindel_jupyter.hub.topics import Scope, Topic, TopicStore
from spindel_jupyter.hub.workspaces import Registry, normalized, plain
from tests.hub.conftest import Events


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry(tmp_path: Path, clock: Clock) -> Registry:
    return Registry(tmp_path / "ws", NodeStore(tmp_path / "nodes"), lease_seconds=60, clock=clock)


def sources(registry: Registry, name: str) -> list[str]:
    return [c["source"] for c in registry.notebook(registry.get(name)["head"])["cells"]]


def test_publish_and_read_back(registry: Registry) -> None:
    descriptor = registry.publish("lec", notebook("a = 1", "b = 2"), "teacher", "first")
    assert descriptor["owner"]["peer"] == "teacher"
    assert sources(registry, "lec") == ["a = 1", "b = 2"]
    commit = registry.store.get(descriptor["head"])
    assert commit["author"] == "teacher" and commit["message"] == "first" and commit["parents"] == []


def test_identical_cells_are_stored_once_and_republishing_the_same_is_a_no_op(registry: Registry) -> None:
    registry.publish("lec", notebook("same", "same", "other"), "teacher")
    assert registry.store.stats()["nodes"] == 3  # two cells and a commit
    head = registry.get("lec")["head"]
    assert registry.publish("lec", notebook("same", "same", "other"), "teacher")["head"] == head


def test_cells_stored_ahead_of_a_publish_are_the_ones_its_commit_names(registry: Registry) -> None:
    """As read through the contents manager (code cells marked trusted), each cell is stored once."""
    read = notebook("a = 1", "b = 2", "c = 3")
    for cell in read["cells"]:
        cell["metadata"]["trusted"] = True
    registry.store_cells(read)
    registry.publish("w", read, "t")
    assert registry.store.count == 3 + 1  # three cells and the commit, nothing stored twice


def test_a_notebook_as_the_contents_api_reads_it_is_normalized_as_nbformat_would() -> None:
    """The quick way (nothing to convert) gives what reading it again through nbformat gives."""
    kernelspec = {"name": "python3", "display_name": "Python 3"}
    nb = nbformat.v4.new_notebook(metadata={"signature": "x", "kernelspec": kernelspec})
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Title\ntext"),
        nbformat.v4.new_code_cell(
            "print(1)\n1",
            outputs=[
                nbformat.v4.new_output("stream", name="stdout", text="1\n2\n"),
                nbformat.v4.new_output("execute_result", {"text/plain": "1", "application/json": [1, 2]}),
                nbformat.v4.new_output(
                    "display_data", {"image/png": "iVBOR", "text/html": "<b>a</b>\n<i>b</i>"}
                ),
            ],
        ),
    ]
    read = plain(nbformat.reads(nbformat.writes(nb), as_version=4))  # as the contents manager reads a file
    for cell in read["cells"]:
        cell["metadata"]["trusted"] = True  # and marks it
    slow = plain(nbformat.reads(json.dumps(read), as_version=4))
    assert normalized(read) == slow
    assert (
        normalized(nbformat.writes(nb) and json.loads(nbformat.writes(nb))) == slow
    )  # lines split: slow way
    assert "trusted" not in slow["cells"][1]["metadata"] and "signature" not in slow["metadata"]


def test_lease_one_writer_at_a_time(registry: Registry, clock: Clock) -> None:
    registry.publish("lec", notebook("a"), "teacher")
    with pytest.raises(NotWritable, match="held by 'teacher'"):
        registry.publish("lec", notebook("b"), "student")
    with pytest.raises(NotWritable):
        registry.claim("lec", "student")
    clock.now += 61
    assert registry.get("lec")["owner"] is None  # expired
    assert registry.claim("lec", "student")["owner"]["peer"] == "student"
    registry.publish("lec", notebook("b"), "student")
    assert sources(registry, "lec") == ["b"]


def test_fork_copies_no_content(registry: Registry) -> None:
    registry.publish("lec", notebook(*[f"x = {i}" for i in range(50)]), "teacher")
    before = registry.store.stats()
    fork = registry.fork("lec", "lec-alice", "alice")
    assert registry.store.stats() == before
    assert fork["head"] == registry.get("lec")["head"]
    assert fork["fork_of"] == {"workspace": "lec", "head": fork["head"]}
    assert fork["owner"]["peer"] == "alice"
    with pytest.raises(WorkspaceExists):
        registry.fork("lec", "lec-alice", "bob")
    with pytest.raises(WorkspaceNotFound, match="no workspace named 'nope'"):
        registry.fork("nope", "x", "bob")


def forked(registry: Registry, base: tuple[str, ...], ours: tuple[str, ...], theirs: tuple[str, ...]) -> None:
    registry.publish("lec", notebook(*base), "teacher")
    registry.fork("lec", "lec-alice", "alice")
    registry.publish("lec", notebook(*ours), "teacher")
    registry.publish("lec-alice", notebook(*theirs), "alice")


BASE = ("a = 1", "b = 2", "c = 3")
OURS = ("a = 1", "b = 20", "c = 3")
THEIRS = ("a = 1", "b = 200", "c = 30")  # b conflicts with ours, c does not


def test_clean_three_way_merge(registry: Registry) -> None:
    forked(registry, BASE, ("a = 10", "b = 2", "c = 3"), ("a = 1", "b = 2", "c = 30", "d"))
    result = registry.merge("lec-alice", "teacher")
    assert result["merged"]
    assert sources(registry, "lec") == ["a = 10", "b = 2", "c = 30", "d"]
    assert registry.merge("lec-alice", "teacher")["merged"] is False  # nothing new since


def test_conflict_aborts_everything_and_lists_the_cells(registry: Registry) -> None:
    forked(registry, BASE, OURS, THEIRS)
    head = registry.get("lec")["head"]
    with pytest.raises(MergeConflict) as info:
        registry.merge("lec-alice", "teacher")
    assert registry.get("lec")["head"] == head  # nothing changed, not even the clean cell
    (row,) = info.value.conflicts
    assert (row["index"], row["base"], row["ours"], row["theirs"]) == (1, "b = 2", "b = 20", "b = 200")


@pytest.mark.parametrize(
    ("strategy", "force", "expected"),
    [
        ("ours", False, ["a = 1", "b = 20", "c = 30"]),
        ("theirs", False, ["a = 1", "b = 200", "c = 30"]),
        ("union", False, ["a = 1", "b = 20", "b = 200", "c = 30"]),
        (None, True, ["a = 1", "b = 200", "c = 30"]),
    ],
)
def test_strategies_settle_conflicts(
    registry: Registry, strategy: str | None, force: bool, expected: list[str]
) -> None:
    forked(registry, BASE, OURS, THEIRS)
    assert registry.merge("lec-alice", "teacher", strategy, force)["merged"]
    assert sources(registry, "lec") == expected


def test_merge_needs_the_parents_lease(registry: Registry) -> None:
    forked(registry, ("a",), ("a",), ("b",))
    with pytest.raises(NotWritable):
        registry.merge("lec-alice", "alice")


def test_cold_restart_rebuilds_every_head(tmp_path: Path, registry: Registry, clock: Clock) -> None:
    forked(registry, ("a = 1",), ("a = 2",), ("a = 1", "b"))
    reopened = Registry(tmp_path / "ws", NodeStore(tmp_path / "nodes"), lease_seconds=60, clock=clock)
    assert reopened.all() == registry.all()
    assert sources(reopened, "lec-alice") == ["a = 1", "b"]
    assert reopened.merge("lec-alice", "teacher")["merged"]


def test_new_heads_are_reported(registry: Registry) -> None:
    heads: list[str] = []
    registry.on_head = lambda d: heads.append(d["head"])
    registry.publish("lec", notebook("a"), "teacher")
    registry.fork("lec", "f", "alice")
    assert len(heads) == 1


def test_commits_carry_synced_topic_states(registry: Registry) -> None:
    topics = {"lab/level": {"kind": "lww", "stamp": [1, 0, "t"], "state": b"\x05"}}
    descriptor = registry.publish("lec", notebook("a"), "teacher", topics=topics)
    assert descriptor["topics"] == ["lab/level"]
    assert registry.store.get(descriptor["head"])["topics"] == topics


def test_a_connected_owner_keeps_the_lease_and_it_runs_out_after_it_leaves(
    registry: Registry, clock: Clock
) -> None:
    online = {"teacher"}
    registry.connected = lambda peer: peer in online
    registry.publish("lec", notebook("a"), "teacher")
    clock.now += 3600
    with pytest.raises(NotWritable, match="held by 'teacher'"):
        registry.claim("lec", "student")  # still connected: still the writer
    online.clear()
    registry.peer_left("teacher")
    with pytest.raises(NotWritable):
        registry.claim("lec", "student")  # the lease runs lease_seconds more
    clock.now += 61
    assert registry.get("lec")["owner"] is None


def test_no_owner_means_read_only_until_claimed(registry: Registry, clock: Clock) -> None:
    registry.publish("lec", notebook("a"), "teacher")
    clock.now += 61
    with pytest.raises(NotWritable, match=r"no writer .*%spin_claim lec"):
        registry.publish("lec", notebook("b"), "teacher")
    registry.claim("lec", "teacher")
    registry.publish("lec", notebook("b"), "teacher")
    assert sources(registry, "lec") == ["b"]


def test_claim_by_force_takes_a_held_lease(registry: Registry) -> None:
    registry.publish("lec", notebook("a"), "teacher")
    assert registry.claim("lec", "admin", force=True)["owner"]["peer"] == "admin"
    with pytest.raises(NotWritable):
        registry.publish("lec", notebook("b"), "teacher")


def test_topics_keep_their_roles_and_forks_get_their_own(registry: Registry) -> None:
    states = {"lab/tags": {"kind": "orset", "stamp": None, "state": {}}}
    registry.publish("lec", notebook("a"), "teacher", topics=states, roles={"lab/tags": "bidirectional"})
    assert registry.get("lec")["roles"] == {"lab/tags": "bidirectional"}
    fork = registry.fork("lec", "lec-alice", "alice")
    assert fork["forked_topics"] == {"lab/tags": "lec-alice/lab/tags"}
    assert fork["topics"] == ["lec-alice/lab/tags"]
    assert fork["roles"] == {"lec-alice/lab/tags": "bidirectional"}


def test_merge_into_another_workspace(registry: Registry) -> None:
    forked(registry, ("a",), ("a",), ("a", "b"))
    registry.publish("other", notebook("a"), "teacher")
    assert registry.merge("lec-alice", "teacher", into="other")["merged"]
    assert sources(registry, "other") == ["a", "b"]
    assert sources(registry, "lec") == ["a"]


def test_a_refused_merge_says_to_ask_the_writer_not_to_fork(registry: Registry, clock: Clock) -> None:
    registry.publish("lec", notebook("a = 1"), "teacher")
    registry.fork("lec", "lec-s", "student")
    registry.publish("lec-s", notebook("a = 2"), "student")
    with pytest.raises(NotWritable) as refused:
        registry.merge("lec-s", "student")
    assert "only 'teacher' can merge 'lec-s'" in str(refused.value) and "%spin_merge lec-s" in str(
        refused.value
    )
    assert "fork" not in str(refused.value).replace("lec-s", "")
    clock.now += 3600  # the teacher's lease ended
    with pytest.raises(NotWritable, match=r"claim it \(%spin_claim lec\) then merge 'lec-s' again"):
        registry.merge("lec-s", "student")


def test_publish_makes_the_cells_then_the_commit_then_the_descriptor_durable(
    tmp_path: Path, registry: Registry, disk: Events
) -> None:
    head = registry.publish("lec", notebook("a = 1", "b = 2"), "teacher")["head"]
    nodes = [registry.store.directory / key[:2] / key[2:] for key, _ in registry.store.get(head)["cells"]]
    nodes.append(registry.store.directory / head[:2] / head[2:])
    descriptor = tmp_path / "ws" / "lec.json"
    assert [p for kind, p in disk if kind == "rename"] == [*nodes, descriptor]
    before = {p for kind, p in disk[: disk.index(("rename", descriptor))] if kind == "fsync"}
    assert {p.parent for p in nodes} <= before
    assert disk[-1] == ("fsync", descriptor.parent)  # durable before publish returns


def test_a_fork_writes_its_descriptor_once_with_the_stamps_of_its_topics(
    registry: Registry, disk: Events
) -> None:
    registry.topics.topics["lec/level"] = Topic("lec/level", LWW, wire.encode(3), (7, 0, "teacher"))
    registry.publish("lec", notebook("a = 1"), "teacher", topics={"lec/level": {"kind": "lww"}})
    disk.clear()
    fork = registry.fork("lec", "lec-s", "student")
    assert fork["fork_stamps"] == {"lec/level": [7, 0, "teacher"]}
    assert [e for e in disk if e[0] == "rename"] == [("rename", registry.directory / "lec-s.json")]


def test_cells_stored_ahead_of_a_publish_leave_it_only_its_commit_to_write(
    registry: Registry, disk: Events
) -> None:
    content = notebook("a = 1", "b = 2", "c = 3")
    registry.store_cells(content)
    cells = [e for e in disk if e[0] == "rename"]
    assert len(cells) == 3
    disk.clear()
    registry.publish("lec", content, "teacher")
    nodes = [e for e in disk if e[0] == "rename" and e[1].parent.parent == registry.store.directory]
    assert len(nodes) == 1  # the commit


# -- workspaces of users: the publisher's user writes, other users fork ----------------------------


def test_a_workspace_is_its_publishers_users_and_read_only_to_other_users(
    registry: Registry, clock: Clock
) -> None:
    published = registry.publish("lecture", notebook("a = 1"), "grader", user="teacher")
    assert published["user"] == "teacher"
    refusal = (
        "workspace 'lecture' belongs to user teacher and is read-only to user student: "
        "fork it (%spin_fork lecture NEW) and write the fork"
    )
    clock.now += 3600  # the teacher's lease has ended: still not the student's to take
    with pytest.raises(NotWritable) as publishing:
        registry.publish("lecture", notebook("mine"), "work", user="student")
    assert str(publishing.value) == refusal
    for force in (False, True):
        with pytest.raises(NotWritable, match="belongs to user teacher"):
            registry.claim("lecture", "work", force=force, user="student")
    assert sources(registry, "lecture") == ["a = 1"] and registry.get("lecture")["owner"] is None

    # Reading, following and forking stay open; the fork is the student's, and theirs to write.
    registry.follow("lecture", "work", None)
    fork = registry.fork("lecture", "lecture-s", "work", user="student")
    assert fork["user"] == "student"
    registry.publish("lecture-s", notebook("a = 2"), "work", user="student")
    with pytest.raises(NotWritable, match="belongs to user student and is read-only to user teacher"):
        registry.publish("lecture-s", notebook("a = 3"), "grader", user="teacher")

    # Merging into the teacher's workspace is the teacher's to do.
    with pytest.raises(NotWritable) as merging:
        registry.merge("lecture-s", "work", user="student")
    assert str(merging.value) == (
        "workspace 'lecture' belongs to user teacher and is read-only to user student: "
        "ask teacher to merge it (%spin_merge lecture-s)"
    )
    registry.claim("lecture", "grader", user="teacher")
    assert registry.merge("lecture-s", "grader", user="teacher")["merged"]
    assert sources(registry, "lecture") == ["a = 2"]


def test_peers_of_one_user_share_a_workspace_as_before(registry: Registry) -> None:
    registry.publish("lecture", notebook("a"), "grader", user="teacher")
    registry.claim("lecture", "helper", force=True, user="teacher")
    registry.publish("lecture", notebook("b"), "helper", user="teacher")
    assert sources(registry, "lecture") == ["b"]


def test_a_forks_topics_are_the_forkers_and_a_merge_brings_back_only_what_they_may_write(
    tmp_path: Path, clock: Clock
) -> None:
    topics = TopicStore()
    registry = Registry(tmp_path / "ws", NodeStore(tmp_path / "nodes"), 60, clock, topics)
    topics.merge_remote(
        "score",
        LWW,
        [1, 0, "t"],
        wire.encode(1),
        "@hub",
        False,
        Scope("teacher", "read", (1, 0, "A"), (1, 0, "A")),
        "teacher",
    )
    states = topics.states(["score"])
    registry.publish("lecture", notebook("a"), "grader", topics=states, user="teacher")
    registry.fork("lecture", "lecture-s", "work", user="student")
    copy = topics.topics["lecture-s/score"]
    assert (copy.scope.owner, copy.scope.others) == ("student", "read")
    registry.claim("lecture", "grader", user="teacher")
    topics.merge_remote("lecture-s/score", LWW, [9, 0, "w"], wire.encode(7), "@hub", False, None, "student")
    assert registry.merge("lecture-s", "grader", strategy="theirs", user="teacher")["merged"]
    assert wire.decode(topics.topics["score"].state) == 7
    # A workspace of no one in particular whose topic is another user's: that topic is not folded in.
    registry.publish("open", notebook("a"), "work", topics=states, user="")
    registry.fork("open", "open-s", "work", user="student")
    topics.merge_remote("open-s/score", LWW, [20, 0, "w"], wire.encode(8), "@hub", False, None, "student")
    with pytest.raises(NotWritable, match="topic 'score' is read-only to user student"):
        registry.merge("open-s", "work", strategy="theirs", user="student")
    assert wire.decode(topics.topics["score"].state) == 7
