"""The hub's topic store: handshake, relay rules, LWW order, durability and acks."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import random
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from spindel_jupyter.core import codes, wire
from spindel_jupyter.core.crdt import GSet, ORSet, replica
from spindel_jupyter.core.protocol import HUB
from spindel_jupyter.hub import durable, topics
from spindel_jupyter.hub.relay import Relay
from spindel_jupyter.hub.topics import FLUSH_DELAY, Scope, TopicStore
from tests.hub.conftest import Events
from tests.hub.test_relay import RecordingLink, join


def sub(
    relay: Relay, member: Any, topic: str, mode: str = "sync", kind: str | None = None, **extra: Any
) -> None:
    header = {"t": "sub", "id": 1, "topic": topic, "mode": mode, **({"kind": kind} if kind else {})}
    body = extra.pop("body", None)
    header.update(extra)
    relay.receive(member, wire.pack_frame(header, body))


def pub(relay: Relay, member: Any, topic: str, kind: str, body: bytes, seq: int = 1, **extra: Any) -> None:
    relay.receive(
        member, wire.pack_frame({"t": "pub", "topic": topic, "kind": kind, "seq": seq, **extra}, body)
    )


def delta(value: Any) -> bytes:
    d = value.delta()
    return wire.encode(d.state())


def pubs(link: RecordingLink) -> list[tuple[dict[str, Any], Any]]:
    return link.of("pub")


def record_acks(link: RecordingLink, events: Events) -> None:
    """Add each ACK ``link`` receives to ``events``, as ``("ack", (topic, seq))``."""
    send = link.send

    def recording_send(frame: bytes, body: wire.Buffer = b"") -> None:
        send(frame, body)
        header = link.frames[-1][0]
        if header["t"] == "ack":
            events.append(("ack", (header["topic"], header["seq"])))

    link.send = recording_send  # type: ignore[method-assign]


@pytest.fixture
def relay(tmp_path: Path) -> Relay:
    return Relay(1 << 20, TopicStore(tmp_path / "topics"))


def test_changes_reach_every_follower_but_the_sender(relay: Relay) -> None:
    (a, a_link), (b, b_link), (c, c_link) = join(relay, "a"), join(relay, "b"), join(relay, "c")
    for member in (a, b, c):
        sub(relay, member, "tags", kind="gset")
    pub(relay, a, "tags", "gset", delta(GSet().add("x")))
    assert pubs(a_link) == []
    for link in (b_link, c_link):
        header, body = pubs(link)[-1]
        assert header["from"] == "a" and GSet.from_state(body) == {"x"}


def test_a_change_that_adds_nothing_is_not_relayed(relay: Relay) -> None:
    (a, _), (b, b_link) = join(relay, "a"), join(relay, "b")
    sub(relay, a, "tags", kind="gset")
    sub(relay, b, "tags", kind="gset")
    pub(relay, a, "tags", "gset", delta(GSet().add("x")))
    pub(relay, a, "tags", "gset", delta(GSet().add("x")), seq=2)
    assert len(pubs(b_link)) == 1
    assert relay.topics.received == 2 and relay.topics.relayed == 1


def test_handshake_gives_each_side_what_it_lacks(relay: Relay) -> None:
    (a, a_link), (b, b_link) = join(relay, "a"), join(relay, "b")
    with replica("ra"):
        mine = ORSet().add("from a")
    with replica("rb"):
        theirs = ORSet().add("from b")
    sub(relay, a, "set", kind="orset", body=wire.encode(mine.state()))
    snap = a_link.of("snap")[-1]
    assert snap[0]["kind"] == "orset" and snap[1] is None  # the hub had nothing a lacked
    sub(relay, b, "set", kind="orset", body=wire.encode(theirs.state()))
    _, body = b_link.of("snap")[-1]
    assert ORSet.from_state(body) == {"from a"}  # the hub's state before b joined
    assert ORSet.from_state(pubs(a_link)[-1][1]) == {"from b"}  # b's state relayed to a
    assert relay.topics.topics["set"].state == {"from a", "from b"}


def test_lww_keeps_the_highest_stamp_whatever_the_order(relay: Relay) -> None:
    (a, _), (b, b_link) = join(relay, "a"), join(relay, "b")
    sub(relay, b, "level", kind="lww")
    pub(relay, a, "level", "lww", wire.encode("newer"), stamp=[200, 0, "a"])
    pub(relay, a, "level", "lww", wire.encode("older"), seq=2, stamp=[100, 5, "z"])
    pub(relay, a, "level", "lww", wire.encode("tie loses"), seq=3, stamp=[200, 0, "0"])
    assert [wire.decode(wire.encode(body)) for _, body in pubs(b_link)] == ["newer"]
    topic = relay.topics.topics["level"]
    assert wire.decode(topic.state) == "newer" and topic.stamp == (200, 0, "a")


def test_kind_mismatch_is_refused_naming_the_topic(relay: Relay) -> None:
    (a, _), (b, b_link) = join(relay, "a"), join(relay, "b")
    sub(relay, a, "t", kind="orset")
    sub(relay, b, "t", kind="lww")
    error = b_link.of("snap")[-1][0]["error"]
    assert error["code"] == codes.TOPIC_KIND
    assert "topic 't' holds orset values" in error["message"]
    pub(relay, b, "t", "gset", delta(GSet().add(1)))
    assert b_link.last("error")["code"] == codes.TOPIC_KIND


def test_unknown_kind_and_bad_state_are_errors(relay: Relay) -> None:
    a, link = join(relay, "a")
    pub(relay, a, "t", "teleporter", wire.encode([]))
    assert link.last("error")["code"] == codes.TOPIC_KIND
    pub(relay, a, "u", "gset", wire.encode({"not": "a gset"}))
    assert link.last("error")["code"] == codes.BAD_FRAME
    assert "a" in relay.members


def test_mirror_of_an_unwritten_topic_follows_once_written(relay: Relay) -> None:
    (a, _), (b, b_link) = join(relay, "a"), join(relay, "b")
    sub(relay, b, "later", mode="mirror")
    assert b_link.of("snap")[-1][0]["kind"] is None
    pub(relay, a, "later", "lww", wire.encode(7), stamp=[1, 0, "a"])
    assert pubs(b_link)[-1][1] == 7


def test_export_followers_receive_nothing(relay: Relay) -> None:
    (a, _), (b, b_link) = join(relay, "a"), join(relay, "b")
    sub(relay, b, "out", mode="export", kind="lww")
    pub(relay, a, "out", "lww", wire.encode(1), stamp=[1, 0, "a"])
    assert pubs(b_link) == []


def test_state_survives_a_restart_and_changes_are_acknowledged(tmp_path: Path) -> None:
    first = Relay(1 << 20, TopicStore(tmp_path / "topics"))
    a, link = join(first, "a")
    pub(first, a, "set", "gset", delta(GSet().add("kept")), seq=4)
    pub(first, a, "plain", "lww", wire.encode({"x": 1}), seq=9, stamp=[5, 0, "a"])
    acks = {(h["topic"], h["seq"]) for h, _ in link.of("ack")}
    assert acks == {("set", 4), ("plain", 9)}
    second = Relay(1 << 20, TopicStore(tmp_path / "topics"))
    assert second.topics.topics["set"].state == {"kept"}
    assert wire.decode(second.topics.topics["plain"].state) == {"x": 1}
    b, b_link = join(second, "b")
    sub(second, b, "set", kind="gset")
    assert GSet.from_state(b_link.of("snap")[-1][1]) == {"kept"}
    listed = {t["name"]: t for t in second.topics.list()}
    assert listed["set"]["kind"] == "gset" and listed["set"]["subscribers"] == 1 and listed["set"]["size"] > 0


def test_a_corrupt_topic_file_is_set_aside(tmp_path: Path) -> None:
    store = TopicStore(tmp_path / "topics")
    relay = Relay(1 << 20, store)
    a, _ = join(relay, "a")
    pub(relay, a, "set", "gset", delta(GSet().add(1)))
    (path,) = (tmp_path / "topics").glob("*.topic")
    path.write_bytes(b"\xc1garbage")
    reloaded = TopicStore(tmp_path / "topics")
    assert reloaded.topics == {}
    assert list((tmp_path / "topics").glob("*.corrupt"))


def test_followers_are_dropped_when_they_leave(relay: Relay) -> None:
    (a, _), (b, b_link) = join(relay, "a"), join(relay, "b")
    sub(relay, b, "t", kind="gset")
    relay.disconnect(b)
    pub(relay, a, "t", "gset", delta(GSet().add(1)))
    assert pubs(b_link) == [] and relay.topics.topics["t"].followers == {}


def test_ui_peers_hear_of_topic_changes_with_value_summaries(relay: Relay) -> None:
    a, _ = join(relay, "a")
    ui_link = RecordingLink()
    ui = relay.connect(ui_link)
    relay.receive(ui, wire.pack_frame({"t": "hello", "name": "lab", "kind": "ui", "session": "s"}))
    sub(relay, a, "level", kind="lww")
    pub(relay, a, "level", "lww", wire.encode({"threshold": 42}), stamp=[1, 0, "a"])
    events = [body for header, body in ui_link.of("event") if header["event"] == "topics"]
    assert events, "the UI peer was told"
    (level,) = events[-1]
    assert level["name"] == "level" and level["kind"] == "lww" and level["subscribers"] == 1
    assert level["summary"] == "{'threshold': 42}"
    before = len(a.link.frames)  # type: ignore[attr-defined]
    pub(relay, a, "level", "lww", wire.encode(7), seq=2, stamp=[2, 0, "a"])
    assert not [h for h, _ in a.link.frames[before:] if h["t"] == "event"]  # type: ignore[attr-defined]


def test_topics_are_capped_with_a_clear_error(tmp_path: Path) -> None:
    relay = Relay(1 << 20, TopicStore(tmp_path / "topics", max_topics=2))
    a, link = join(relay, "a")
    for name in ("t1", "t2", "t3"):
        pub(relay, a, name, "gset", delta(GSet().add(1)))
    assert link.last("error")["code"] == codes.TOO_MANY_TOPICS
    assert sorted(relay.topics.topics) == ["t1", "t2"]


def test_a_fork_copy_starts_from_the_original_and_folds_back(relay: Relay) -> None:
    a, _ = join(relay, "a")
    with replica("ra"):
        pub(relay, a, "tags", "orset", delta(ORSet().add("x")))
    pub(relay, a, "level", "lww", wire.encode(1), stamp=[5, 0, "a"])
    store = relay.topics
    store.copy("tags", "fork/tags")
    store.copy("level", "fork/level")
    assert store.topics["fork/tags"].state == {"x"}
    with replica("rb"):
        pub(relay, a, "fork/tags", "orset", delta(ORSet().add("y")))
    assert store.topics["tags"].state == {"x"}  # isolated after the fork
    pub(relay, a, "fork/level", "lww", wire.encode(9), stamp=[6, 0, "a"])
    b, b_link = join(relay, "b")
    sub(relay, b, "tags", kind="orset")
    sub(relay, b, "level", kind="lww")
    store.fold("fork/tags", "tags", take_source=False)
    store.fold("fork/level", "level", take_source=False)
    assert store.topics["tags"].state == {"x", "y"}  # CRDTs join back
    assert wire.decode(store.topics["level"].state) == 1  # a plain value only if taken
    store.fold("fork/level", "level", take_source=True)
    assert wire.decode(store.topics["level"].state) == 9
    assert store.topics["level"].stamp > (6, 0, "a")
    assert {h["topic"] for h, _ in pubs(b_link)} == {"tags", "level"}  # followers hear both


def test_an_ack_leaves_only_after_the_topic_file_is_fsynced(tmp_path: Path, disk: Events) -> None:
    relay = Relay(1 << 20, TopicStore(tmp_path / "topics"))
    a, link = join(relay, "a")
    record_acks(link, disk)
    pub(relay, a, "level", "lww", wire.encode(1), seq=3, stamp=[1, 0, "a"])
    (path,) = (tmp_path / "topics").glob("*.topic")
    rename, ack = disk.index(("rename", path)), disk.index(("ack", ("level", 3)))
    kind, written = disk[rename - 1]
    assert kind == "fsync" and written.name.startswith(f".{path.name}.")  # the file, before its rename
    assert rename < disk.index(("fsync", path.parent)) < ack


def test_leftovers_of_an_interrupted_write_are_swept_and_never_read(tmp_path: Path) -> None:
    first = Relay(1 << 20, TopicStore(tmp_path / "topics"))
    a, _ = join(first, "a")
    pub(first, a, "level", "lww", wire.encode(1), stamp=[1, 0, "a"])
    (path,) = (tmp_path / "topics").glob("*.topic")
    (path.parent / f".{path.name}.999.beef.tmp").write_bytes(b"\xc1half")
    (path.parent / f"{path.stem}.tmp").write_bytes(b"\xc1half")  # as older versions named them
    again = TopicStore(tmp_path / "topics")
    assert wire.decode(again.topics["level"].state) == 1
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_on_a_loop_groups_are_written_off_it_one_at_a_time_and_acked_after_their_fsync(
    tmp_path: Path, disk: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    writing, release = threading.Event(), threading.Event()
    recording_fsync = os.fsync

    def held_fsync(fd: int) -> None:
        if threading.current_thread() is not threading.main_thread():
            writing.set()
            release.wait(10)
        recording_fsync(fd)

    monkeypatch.setattr(os, "fsync", held_fsync)

    async def until(condition: Any) -> None:
        for _ in range(1000):
            if condition():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("timed out")

    async def scenario() -> TopicStore:
        loop = asyncio.get_running_loop()
        store = TopicStore(tmp_path / "topics", schedule=loop.call_later)
        relay = Relay(1 << 20, store)
        (a, a_link), (b, b_link) = join(relay, "a"), join(relay, "b")
        record_acks(a_link, disk)
        sub(relay, b, "level", kind="lww")
        pub(relay, a, "level", "lww", wire.encode(1), seq=1, stamp=[1, 0, "a"])
        await asyncio.to_thread(writing.wait, 10)  # the first group is held in its fsync
        pub(relay, a, "level", "lww", wire.encode(2), seq=2, stamp=[2, 0, "a"])
        store.flush()  # even asked for, the next group waits for this one
        await asyncio.sleep(FLUSH_DELAY * 3)
        assert [body for _, body in pubs(b_link)] == [1, 2]  # the loop went on relaying
        assert not [e for e in disk if e[0] in ("ack", "rename")]
        release.set()
        await until(lambda: ("ack", ("level", 2)) in disk)
        return store

    store = asyncio.run(scenario())
    store.close()
    (path,) = (tmp_path / "topics").glob("*.topic")
    directory = disk.index(("fsync", path.parent))
    assert disk.index(("rename", path)) < directory < disk.index(("ack", ("level", 1)))
    second = disk.index(("rename", path), directory)  # the next group only after the first is durable
    assert second < disk.index(("fsync", path.parent), second) < disk.index(("ack", ("level", 2)))
    assert wire.decode(TopicStore(tmp_path / "topics").topics["level"].state) == 2


def test_a_change_the_disk_refused_is_not_acknowledged_until_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay = Relay(1 << 20, TopicStore(tmp_path / "topics"))
    a, link = join(relay, "a")
    fsync, full = os.fsync, [True]

    def full_disk(fd: int) -> None:
        if full[0]:
            raise OSError(28, "No space left on device")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    pub(relay, a, "level", "lww", wire.encode(1), seq=5, stamp=[1, 0, "a"])
    assert link.of("ack") == [] and not list((tmp_path / "topics").iterdir())
    full[0] = False
    relay.topics.flush()
    assert [(h["topic"], h["seq"]) for h, _ in link.of("ack")] == [("level", 5)]
    assert wire.decode(TopicStore(tmp_path / "topics").topics["level"].state) == 1


def test_stored_is_done_only_once_every_change_so_far_is_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a fork or a merge answers with (its topics' copies) is durable before the answer."""
    writing, release = threading.Event(), threading.Event()
    fsync = os.fsync

    def held_fsync(fd: int) -> None:
        if threading.current_thread() is not threading.main_thread():
            writing.set()
            release.wait(10)
        fsync(fd)

    monkeypatch.setattr(os, "fsync", held_fsync)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        store = TopicStore(tmp_path / "topics", schedule=loop.call_later)
        relay = Relay(1 << 20, store)
        a, _ = join(relay, "a")
        pub(relay, a, "level", "lww", wire.encode(1), seq=1, stamp=[1, 0, "a"])
        await asyncio.to_thread(writing.wait, 10)
        store.copy("level", "fork/level")  # while the first group is being written
        stored = asyncio.ensure_future(store.stored())
        await asyncio.sleep(FLUSH_DELAY * 3)
        assert not stored.done()
        release.set()
        await asyncio.wait_for(stored, 10)
        assert wire.decode(TopicStore(tmp_path / "topics").topics["fork/level"].state) == 1
        store.close()

    asyncio.run(scenario())


# -- a CRDT topic's log ----------------------------------------------------------------------


def files(tmp_path: Path) -> tuple[Path, Path]:
    """The one topic's snapshot and log."""
    (snapshot,) = (tmp_path / "topics").glob("*.topic")
    return snapshot, snapshot.with_suffix(".log")


def adds(relay: Relay, member: Any, n: int, topic: str = "set", start: int = 0) -> None:
    """``n`` adds of ``x{i}``, one change each, from replica ``w``."""
    value = ORSet[str]()
    with replica("w"):
        for i in range(start, start + n):
            value = value.add(f"x{i}")
            pub(relay, member, topic, "orset", delta(value), seq=i + 1)
            value = value.clear_delta()


def reloaded(tmp_path: Path, topic: str = "set") -> Any:
    return TopicStore(tmp_path / "topics").topics[topic].state


def test_crdt_changes_are_appended_to_a_log_and_reload_to_the_same_state(tmp_path: Path) -> None:
    relay = Relay(1 << 20, TopicStore(tmp_path / "topics"))
    a, link = join(relay, "a")
    adds(relay, a, 1)
    snapshot, log = files(tmp_path)
    first = snapshot.read_bytes()
    assert not log.exists()  # a new topic is written whole
    adds(relay, a, 20, start=1)
    assert snapshot.read_bytes() == first  # the state is not written again: its changes are appended
    assert len(durable.Log(log).read()) == 20
    assert reloaded(tmp_path) == relay.topics.topics["set"].state == {f"x{i}" for i in range(21)}
    assert link.last("ack")["seq"] == 21


def test_the_log_is_compacted_once_it_outgrows_the_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(topics, "COMPACT_BYTES", 0)  # compacted as soon as it holds more than the state
    relay = Relay(1 << 20, TopicStore(tmp_path / "topics"))
    a, _ = join(relay, "a")
    adds(relay, a, 1)
    snapshot, log = files(tmp_path)
    sizes = []
    for i in range(1, 60):
        adds(relay, a, 1, start=i)
        sizes.append((snapshot.stat().st_size, log.stat().st_size if log.exists() else 0))
    assert any(after[1] < before[1] for before, after in itertools.pairwise(sizes))  # the log shrank
    assert sizes[-1][0] > sizes[0][0]  # into a larger snapshot
    assert all(changes <= state + 100 for state, changes in sizes)
    assert reloaded(tmp_path) == {f"x{i}" for i in range(60)}
    topic = relay.topics.topics["set"]
    assert topic.size == sum(sizes[-1]) and topic.info()["size"] == topic.size


def test_the_log_is_compacted_after_so_many_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(topics, "COMPACT_RECORDS", 5)
    relay = Relay(1 << 20, TopicStore(tmp_path / "topics"))
    a, _ = join(relay, "a")
    adds(relay, a, 12)
    _, log = files(tmp_path)
    assert len(durable.Log(log).read()) <= 5  # 11 changes appended: compacted once
    assert reloaded(tmp_path) == {f"x{i}" for i in range(12)}


def test_a_torn_record_at_the_end_of_the_log_is_ignored(tmp_path: Path) -> None:
    relay = Relay(1 << 20, TopicStore(tmp_path / "topics"))
    a, _ = join(relay, "a")
    adds(relay, a, 5)
    _, log = files(tmp_path)
    with open(log, "ab") as handle:  # a crash in the middle of the next append
        handle.write(durable.RECORD.pack(100, 0) + b"\x85half")
    again = Relay(1 << 20, TopicStore(tmp_path / "topics"))
    assert again.topics.topics["set"].state == {f"x{i}" for i in range(5)}
    b, _ = join(again, "b")
    adds(again, b, 1, start=5)  # appended after the last whole record: readable
    assert reloaded(tmp_path) == {f"x{i}" for i in range(6)}


class Crash(BaseException):
    """The hub dies here: nothing after it runs, no handler catches it."""


@pytest.mark.parametrize("step", ["write", "rename", "directory", "empty-log"])
def test_a_crash_between_the_steps_of_a_compaction_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    monkeypatch.setattr(topics, "COMPACT_RECORDS", 9)
    relay = Relay(1 << 20, TopicStore(tmp_path / "topics"))
    a, link = join(relay, "a")
    adds(relay, a, 10)  # a snapshot and a log of 9 records: the next change compacts
    acked = link.last("ack")["seq"]
    real_fsync, real_replace, real_truncate = os.fsync, os.replace, os.ftruncate

    def fsync(fd: int) -> None:
        target = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if (step == "write" and target.name.endswith(".tmp")) or (step == "directory" and target.is_dir()):
            raise Crash
        real_fsync(fd)

    def replace(source: Any, target: Any) -> None:
        if step == "rename":
            raise Crash
        real_replace(source, target)

    def ftruncate(fd: int, size: int) -> None:
        if step == "empty-log" and size == 0:
            raise Crash
        real_truncate(fd, size)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "ftruncate", ftruncate)
    with pytest.raises(Crash):
        adds(relay, a, 1, start=10)
    assert link.last("ack")["seq"] == acked  # the change was not acknowledged
    monkeypatch.undo()
    assert reloaded(tmp_path) >= {f"x{i}" for i in range(acked)}  # every acknowledged one is there


def test_an_ack_leaves_only_after_the_appended_change_is_fsynced(tmp_path: Path, disk: Events) -> None:
    relay = Relay(1 << 20, TopicStore(tmp_path / "topics"))
    a, link = join(relay, "a")
    record_acks(link, disk)
    adds(relay, a, 2)
    _, log = files(tmp_path)
    assert disk.index(("fsync", log)) < disk.index(("ack", ("set", 2)))
    assert disk.count(("fsync", log.parent)) == 2  # the snapshot's rename, then the new log


def test_a_topic_file_in_the_former_state_form_loads_and_takes_changes(tmp_path: Path) -> None:
    with replica("old"):
        value = ORSet([(1, "x"), "y"]).remove("y").add("z")
    state = value.state()
    former = {  # as hubs wrote it before: element -> set of dot pairs, the cloud a set of pairs
        "entries": {
            e: frozenset([(w, s)])
            for e, w, s in zip(state["elements"], state["dots"][::2], state["dots"][1::2], strict=True)
        },
        "vv": state["vv"],
        "cloud": frozenset(),
    }
    directory = tmp_path / "topics"
    directory.mkdir()
    name = hashlib.sha256(b"set").hexdigest()[:40]
    (directory / f"{name}.topic").write_bytes(
        wire.encode({"name": "set", "kind": "orset", "stamp": None, "state": former})
    )
    relay = Relay(1 << 20, TopicStore(directory))
    assert relay.topics.topics["set"].state == {(1, "x"), "z"}
    a, _ = join(relay, "a")
    adds(relay, a, 1)
    assert reloaded(tmp_path) == {(1, "x"), "z", "x0"}


def test_on_a_loop_changes_arriving_together_are_relayed_as_one(tmp_path: Path) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        store = TopicStore(tmp_path / "topics", schedule=loop.call_later)
        relay = Relay(1 << 20, store)
        (a, a_link), (b, b_link), (c, c_link) = join(relay, "a"), join(relay, "b"), join(relay, "c")
        for member in (a, b, c):
            sub(relay, member, "set", kind="orset")
        with replica("ra"):
            pub(relay, a, "set", "orset", delta(ORSet().add("a1")), seq=1)
            pub(relay, a, "set", "orset", delta(ORSet().add("a2")), seq=2)
        await asyncio.sleep(0.001)
        (header, body), *rest = pubs(b_link)
        assert rest == [] and header["from"] == "a" and ORSet.from_state(body) == {"a1", "a2"}
        assert pubs(a_link) == []  # one sender: not sent back to it
        with replica("rb"):
            pub(relay, b, "set", "orset", delta(ORSet().add("b1")), seq=1)
        with replica("rc"):
            pub(relay, c, "set", "orset", delta(ORSet().add("c1")), seq=1)
        await asyncio.sleep(0.001)
        for link in (a_link, b_link, c_link):  # several senders: everyone, the senders too
            header, body = pubs(link)[-1]
            assert header["from"] == HUB and ORSet.from_state(body) == {"b1", "c1"}
        await store.stored()
        assert {(h["topic"], h["seq"]) for h, _ in b_link.of("ack")} == {("set", 1)}
        assert store.topics["set"].state == {"a1", "a2", "b1", "c1"}
        store.close()

    asyncio.run(scenario())
    assert reloaded(tmp_path) == {"a1", "a2", "b1", "c1"}


# -- topics of users: whose a topic is, and who else writes it ---------------------------------------


def user_of(member: Any, user: str) -> Any:
    """``member`` as the hub admits a peer of ``user`` (the WebSocket handler stamps it so)."""
    member.user = user
    return member


def classroom(relay: Relay) -> tuple[Any, RecordingLink, Any, RecordingLink]:
    """A peer of user teacher and one of user student, on one hub."""
    (teacher, t_link), (student, s_link) = join(relay, "grader"), join(relay, "work")
    return user_of(teacher, "teacher"), t_link, user_of(student, "student"), s_link


def test_an_exported_topic_is_its_creators_and_read_only_to_other_users(relay: Relay) -> None:
    teacher, _, student, s_link = classroom(relay)
    sub(relay, teacher, "progress", mode="export", kind="lww", body=wire.encode(1), stamp=[5, 0, "grader"])
    sub(relay, student, "progress", mode="mirror")
    snap = s_link.of("snap")[-1]
    assert (snap[0]["owner"], snap[0]["others"], snap[1]) == ("teacher", "read", 1)
    listed = relay.topics.list()[0]
    assert (listed["owner"], listed["others"]) == ("teacher", "read")

    pub(relay, student, "progress", "lww", wire.encode(99), stamp=[9, 0, "work"])
    error = s_link.last("error")
    assert error["code"] == codes.NOT_WRITABLE and error["topic"] == "progress"
    assert error["message"] == (
        "topic 'progress' is read-only to user student: it belongs to user teacher; "
        "read it with subscribe_signal, or ask teacher to share it with others='write'"
    )
    assert wire.decode(relay.topics.topics["progress"].state) == 1  # unchanged for everyone
    assert s_link.of("ack") == [] and relay.topics.refused == 1
    pub(relay, teacher, "progress", "lww", wire.encode(2), stamp=[10, 0, "grader"])
    assert pubs(s_link)[-1][1] == 2  # the hub goes on serving everyone


def test_another_user_cannot_follow_a_read_only_topic_to_write_it_and_ships_nothing(relay: Relay) -> None:
    teacher, _, student, s_link = classroom(relay)
    with replica("rt"):
        sub(
            relay, teacher, "answers", mode="export", kind="orset", body=wire.encode(ORSet().add("a").state())
        )
    with replica("rs"):
        forged = wire.encode(ORSet().add("forged").state())
    for mode in ("sync", "export"):
        sub(relay, student, "answers", mode=mode, kind="orset", body=forged)
        error = s_link.of("snap")[-1][0]["error"]
        assert error["code"] == codes.NOT_WRITABLE and "belongs to user teacher" in error["message"]
    assert relay.topics.topics["answers"].state == {"a"}
    assert student not in relay.topics.topics["answers"].followers


def test_a_synced_topic_is_writable_by_other_users_unless_its_owner_says_read(relay: Relay) -> None:
    teacher, t_link, student, s_link = classroom(relay)
    sub(relay, teacher, "board", kind="lww")
    sub(relay, student, "board", kind="lww")
    assert s_link.of("snap")[-1][0]["others"] == "write"
    pub(relay, student, "board", "lww", wire.encode("hi"), stamp=[1, 0, "work"])
    assert pubs(t_link)[-1][1] == "hi"

    sub(relay, student, "board", kind="lww", others="read")  # only the owner's user says who writes
    error = s_link.of("snap")[-1][0]["error"]
    assert error["code"] == codes.NOT_WRITABLE
    assert "only teacher can change who else writes it" in error["message"]
    assert relay.topics.topics["board"].scope.others == "write"

    sub(relay, teacher, "board", kind="lww", others="read")
    assert relay.topics.topics["board"].scope.others == "read"
    pub(relay, student, "board", "lww", wire.encode("late"), seq=2, stamp=[2, 0, "work"])
    assert s_link.last("error")["code"] == codes.NOT_WRITABLE
    assert wire.decode(relay.topics.topics["board"].state) == "hi"


def test_the_owner_is_stamped_by_the_hub_and_peers_of_one_user_write_alike(relay: Relay) -> None:
    teacher, _, _, _ = classroom(relay)
    other, _ = join(relay, "grader2")
    user_of(other, "teacher")
    sub(relay, teacher, "t", mode="export", kind="lww", owner="student", user="student")
    assert relay.topics.topics["t"].scope.owner == "teacher"  # never taken from the frame
    pub(relay, other, "t", "lww", wire.encode(3), stamp=[1, 0, "grader2"])
    assert wire.decode(relay.topics.topics["t"].state) == 3


def test_whose_a_topic_is_survives_a_restart(tmp_path: Path) -> None:
    first = Relay(1 << 20, TopicStore(tmp_path / "topics"))
    teacher, _, _, _ = classroom(first)
    with replica("rt"):
        sub(first, teacher, "set", mode="export", kind="gset", body=wire.encode(GSet().add(1).state()))
    pub(first, teacher, "plain", "lww", wire.encode(1), stamp=[5, 0, "grader"])
    sub(first, teacher, "plain", kind="lww", others="read")
    second = Relay(1 << 20, TopicStore(tmp_path / "topics"))
    for name in ("set", "plain"):
        topic = second.topics.topics[name]
        assert (topic.scope.owner, topic.scope.others, topic.writer) == ("teacher", "read", "teacher")
    _, _, student, s_link = classroom(second)
    pub(second, student, "set", "gset", delta(GSet().add(2)))
    assert s_link.last("error")["code"] == codes.NOT_WRITABLE


def test_a_change_from_another_hub_is_refused_for_a_user_the_owner_did_not_let_write(relay: Relay) -> None:
    store = relay.topics
    teacher, _, _, _ = classroom(relay)
    sub(relay, teacher, "progress", mode="export", kind="lww", body=wire.encode(1), stamp=[5, 0, "grader"])
    scope = store.topics["progress"].scope
    # Another hub sends a write of its student, whatever scope it claims: refused here too.
    assert scope.created is not None
    later = (scope.created[0] + 1, 0, "B")
    for claimed in (scope, Scope("student", "write", later, later)):
        applied = store.merge_remote(
            "progress", "lww", [9, 0, "work"], wire.encode(99), HUB, False, claimed, "student"
        )
        assert not applied
    assert wire.decode(store.topics["progress"].state) == 1 and store.refused == 2
    assert store.topics["progress"].scope == scope  # a later creation elsewhere does not take it
    assert store.merge_remote(
        "progress", "lww", [9, 0, "grader"], wire.encode(2), HUB, False, scope, "teacher"
    )
    assert wire.decode(store.topics["progress"].state) == 2


def test_a_topic_first_heard_of_from_another_hub_is_whose_that_hub_says() -> None:
    store = TopicStore()
    scope = Scope("teacher", "read", (1, 0, "A"), (1, 0, "A"))
    store.merge_remote("progress", "lww", None, b"", HUB, True, scope, "teacher")  # its scope alone
    assert store.topics["progress"].scope == scope and store.topics["progress"].state is None
    assert not store.merge_remote(
        "progress", "lww", [2, 0, "w"], wire.encode(1), HUB, False, scope, "student"
    )
    shared = Scope("teacher", "write", (1, 0, "A"), (3, 0, "A"))  # the owner shared it since
    assert store.merge_remote("progress", "lww", [4, 0, "w"], wire.encode(5), HUB, False, shared, "student")
    assert store.topics["progress"].scope.others == "write"


stamps = st.tuples(st.integers(0, 5), st.integers(0, 2), st.sampled_from("AB"))


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["teacher", "student"]), stamps, st.sampled_from(["read", "write"]), stamps
        ),
        min_size=1,
        max_size=6,
    ),
    st.randoms(),
)
@example(  # two words on who else writes, stamped alike: every hub ends read-only
    heard=[("teacher", (0, 0, "A"), "read", (0, 0, "B")), ("teacher", (0, 0, "A"), "write", (0, 0, "B"))],
    random=random.Random(0),
)
def test_every_hub_ends_with_the_same_scope_whatever_order_it_hears_them(
    heard: list[tuple[str, Any, str, Any]], random: Any
) -> None:
    # A creation is one stamp and one owner; each mode change of it is stamped later.
    owners = {created: owner for owner, created, _, _ in heard}
    scopes = [Scope(owners[c], others, c, max(c, m)) for _, c, others, m in heard]
    shuffled = random.sample(scopes, len(scopes))
    one, other = Scope(), Scope()
    for scope in scopes:
        one = one.merged(scope)
    for scope in shuffled + shuffled:  # heard again, too
        other = other.merged(scope)
    assert one == other
    assert one.created == min(s.created for s in scopes)
