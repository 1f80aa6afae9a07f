"""Forks and merges: the fork's own topics, and how they come back (CRDTs join, plain values by stamps)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from spindel_jupyter.core import wire
from spindel_jupyter.core.crdt import ORSet, replica
from spindel_jupyter.core.errors import MergeConflict, SpindelError
from spindel_jupyter.demo import code_notebook as notebook
from spindel_jupyter.hub import merging
from spindel_jupyter.hub.relay import Relay
from spindel_jupyter.hub.store import NodeStore
from spindel_jupyter.hub.topics import TopicStore
from spindel_jupyter.hub.workspaces import Registry
from tests.hub.test_relay import join
from tests.hub.test_topics import delta, pub


class Hub:
    """A registry over the topics of a relay, and a peer that writes them."""

    def __init__(self, tmp_path: Path) -> None:
        self.relay = Relay(1 << 20, TopicStore())
        self.registry = Registry(tmp_path / "ws", NodeStore(tmp_path / "nodes"), topics=self.relay.topics)
        self.peer, _ = join(self.relay, "teacher")
        self.time = 0

    def set(self, topic: str, value: Any) -> None:
        """A plain topic written now (each write later than the one before)."""
        self.time += 1
        pub(self.relay, self.peer, topic, "lww", wire.encode(value), stamp=[self.time, 0, "teacher"])

    def tag(self, topic: str, tag: str) -> None:
        with replica(f"r-{tag}"):
            pub(self.relay, self.peer, topic, "orset", delta(ORSet().add(tag)))

    def value(self, topic: str) -> Any:
        state = self.relay.topics.topics[topic].state
        return wire.decode(state) if isinstance(state, bytes) else state

    def publish_and_fork(self, *topics: str) -> None:
        self.registry.publish(
            "lec", notebook("a = 1"), "teacher", topics=self.relay.topics.states(list(topics))
        )
        self.registry.fork("lec", "lec-s", "teacher")


@pytest.fixture
def hub(tmp_path: Path) -> Hub:
    return Hub(tmp_path)


def test_a_fork_gets_its_own_copy_of_each_topic_and_their_stamps_at_fork(hub: Hub) -> None:
    hub.set("level", 1)
    hub.tag("tags", "x")
    hub.registry.publish("lec", notebook("a"), "t", topics={"level": {}}, roles={"tags": "bidirectional"})
    fork = hub.registry.fork("lec", "lec-s", "teacher")
    assert fork["forked_topics"] == {"level": "lec-s/level", "tags": "lec-s/tags"}
    assert fork["roles"] == {"lec-s/tags": "bidirectional"}
    assert fork["fork_stamps"] == {"level": [1, 0, "teacher"], "tags": None}
    assert hub.value("lec-s/level") == 1 and hub.value("lec-s/tags") == {"x"}
    hub.set("lec-s/level", 2)
    assert hub.value("level") == 1  # isolated until merged


def test_crdt_topics_join_back_even_when_no_cell_changed(hub: Hub) -> None:
    hub.tag("tags", "x")
    hub.publish_and_fork("tags")
    hub.tag("lec-s/tags", "fork")
    hub.tag("tags", "parent")
    head = hub.registry.get("lec")["head"]
    result = hub.registry.merge("lec-s", "teacher")
    assert result["merged"] is True and result["head"] == head  # no cell to merge, the head stays ...
    assert "only the topics of 'lec-s'" in result["reason"]
    assert hub.value("tags") == {"x", "fork", "parent"}  # ... but the topic joined back


def test_a_fork_with_no_change_at_all_merges_nothing(hub: Hub) -> None:
    hub.tag("tags", "x")
    hub.publish_and_fork("tags")
    result = hub.registry.merge("lec-s", "teacher")
    assert result["merged"] is False and "no changes to merge" in result["reason"]


def test_a_plain_topic_changed_on_both_sides_is_a_conflict_and_nothing_is_merged(hub: Hub) -> None:
    hub.set("level", 1)
    hub.tag("tags", "x")
    hub.publish_and_fork("level", "tags")
    hub.registry.publish("lec-s", notebook("a = 2"), "teacher")
    hub.tag("lec-s/tags", "fork")
    hub.set("level", 7)
    hub.set("lec-s/level", 9)
    head = hub.registry.get("lec")["head"]
    with pytest.raises(MergeConflict, match="level") as conflict:
        hub.registry.merge("lec-s", "teacher")
    assert conflict.value.conflicts == [
        {"index": None, "id": None, "topic": "level", "base": None, "ours": "7", "theirs": "9"}
    ]
    assert hub.registry.get("lec")["head"] == head  # no cell ...
    assert hub.value("level") == 7 and hub.value("tags") == {"x"}  # ... and no topic came back


@pytest.mark.parametrize(
    ("strategy", "force", "level"), [("ours", False, 7), ("theirs", False, 9), (None, True, 9)]
)
def test_a_strategy_or_force_settles_a_plain_topic_conflict(
    hub: Hub, strategy: str | None, force: bool, level: int
) -> None:
    hub.set("level", 1)
    hub.publish_and_fork("level")
    hub.set("level", 7)
    hub.set("lec-s/level", 9)
    hub.registry.merge("lec-s", "teacher", strategy, force)
    assert hub.value("level") == level
    result = hub.registry.merge("lec-s", "teacher")  # settled once: not a conflict again
    assert result["merged"] is False and hub.value("level") == level


@pytest.mark.parametrize(
    ("strategy", "force"), [(None, False), ("ours", False), ("theirs", False), ("union", False), (None, True)]
)
def test_a_plain_topic_comes_back_from_the_side_that_changed_it_whatever_the_strategy(
    hub: Hub, strategy: str | None, force: bool
) -> None:
    """Each topic on its own; a strategy only settles topics both sides changed."""
    hub.set("level", 1)
    hub.set("mode", "quiz")
    hub.publish_and_fork("level", "mode")
    hub.set("lec-s/level", 9)  # only the fork changed the level ...
    hub.set("mode", "exam")  # ... and only the parent the mode
    hub.registry.merge("lec-s", "teacher", strategy, force)
    assert (hub.value("level"), hub.value("mode")) == (9, "exam")


def test_a_plain_topic_the_fork_started_comes_back(hub: Hub) -> None:
    hub.registry.publish("lec", notebook("a = 1"), "teacher", topics={"level": {}})  # no value yet
    fork = hub.registry.fork("lec", "lec-s", "teacher")
    assert fork["fork_stamps"] == {"level": None}
    hub.set("lec-s/level", 9)
    hub.registry.merge("lec-s", "teacher")
    assert hub.value("level") == 9


def test_a_fork_merged_again_compares_its_plain_topics_with_the_last_merge_not_the_fork(hub: Hub) -> None:
    hub.set("level", 1)
    hub.publish_and_fork("level")
    hub.set("lec-s/level", 2)
    hub.registry.merge("lec-s", "teacher")
    assert hub.value("level") == 2
    hub.time = int(time.time() * 1000) + 60_000  # later than the stamp the merge gave the parent's value

    # Nothing changed since: nothing to merge, and no conflict with what the last merge did.
    result = hub.registry.merge("lec-s", "teacher")
    assert result["merged"] is False and "no changes to merge" in result["reason"]

    hub.set("lec-s/level", 3)  # only the fork changed it since the last merge: it comes back
    hub.registry.merge("lec-s", "teacher")
    assert hub.value("level") == 3

    hub.set("level", 4)  # only the parent: it stays
    hub.registry.publish("lec-s", notebook("a = 5"), "teacher")
    hub.registry.merge("lec-s", "teacher")
    assert hub.value("level") == 4

    hub.set("level", 6)  # both sides since the last merge: a conflict, settled by a strategy ...
    hub.set("lec-s/level", 7)
    with pytest.raises(MergeConflict, match="level"):
        hub.registry.merge("lec-s", "teacher")
    hub.registry.merge("lec-s", "teacher", strategy="ours")
    assert hub.value("level") == 6

    hub.registry.publish("lec-s", notebook("a = 8"), "teacher")  # ... once: it is not asked again
    hub.registry.merge("lec-s", "teacher")
    assert hub.value("level") == 6


def test_an_unknown_strategy_is_refused_before_anything_is_compared() -> None:
    with pytest.raises(SpindelError, match="unknown strategy 'mine': use one of ours, theirs, union"):
        merging.check_strategy("mine")


@pytest.mark.parametrize(
    ("strategy", "force"), [(None, False), ("ours", False), ("theirs", False), ("union", False), (None, True)]
)
def test_nbdime_decides_a_merge_once_and_the_strategy_settles_its_conflicts(
    monkeypatch: pytest.MonkeyPatch, strategy: str | None, force: bool
) -> None:
    import nbdime.merging.notebooks

    decide = nbdime.merging.notebooks.decide_merge_with_diff
    calls: list[None] = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(None)
        return decide(*args, **kwargs)

    monkeypatch.setattr(nbdime.merging.notebooks, "decide_merge_with_diff", counted)
    base, ours, theirs = (
        notebook("a = 1", "b = 2"),
        notebook("a = 1", "b = 20"),
        notebook("a = 10", "b = 200"),
    )
    if strategy is None and not force:
        with pytest.raises(MergeConflict):
            merging.three_way(base, ours, theirs, strategy, force)
    else:
        merged = merging.three_way(base, ours, theirs, strategy, force)
        assert merged["cells"][0]["source"] == "a = 10"  # the clean change is in, whoever wins the conflict
    assert len(calls) == 1
