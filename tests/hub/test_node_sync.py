"""Nodes between hubs: fetched only when missing, once, verified, from another hub when one fails.

Hubs here are the mesh and node sync of a hub without its Jupyter server, over a real nats-server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spindel_jupyter.core import wire
from spindel_jupyter.core.errors import MissingNode
from spindel_jupyter.hub import node_sync
from spindel_jupyter.hub.mesh import Mesh
from spindel_jupyter.hub.node_sync import NodeSync, apply_delta, commit_delta, nodes_subject
from spindel_jupyter.hub.store import NodeStore
from tests.support import NatsServer, in_mesh, until


class Hub:
    """The node side of one hub: its store, its mesh and its node sync."""

    def __init__(self, name: str, url: str, root: Path) -> None:
        self.store = NodeStore(root / name)
        self.mesh = Mesh(url, name)
        self.sync = NodeSync(self.mesh, self.store)
        self.mesh.parts.append(self.sync)

    def head(self, cells: list[str], parents: tuple[str, ...] = ()) -> str:
        """A commit of cells with these sources (after ``parents``), stored here; its key."""
        keys = [self.store.put({"cell_type": "code", "source": s, "metadata": {}}) for s in cells]
        commit = {"cells": [[k, f"c{i}"] for i, k in enumerate(keys)], "parents": list(parents), "time": 1.5}
        head = self.store.put(commit)
        self.store.sync()
        return head

    def corrupt(self, key: str) -> None:
        (self.store.directory / key[:2] / key[2:]).write_bytes(b"\x91\xa5wrong")


def run(
    nats: NatsServer, root: Path, names: str, scenario: Callable[[dict[str, Hub]], Awaitable[None]]
) -> None:
    hubs = {name: Hub(name, nats.url, root) for name in names}
    in_mesh(hubs, lambda h: all(hub.mesh.hubs() == sorted(names) for hub in h.values()), scenario)


def test_a_head_is_fetched_once_each_node_and_only_what_is_missing(nats: NatsServer, tmp_path: Path) -> None:
    async def scenario(h: dict[str, Hub]) -> None:
        a, b = h["A"], h["B"]
        cells = [f"x{i} = {i}" for i in range(50)]
        head = a.head(cells)
        await b.sync.fetch(head, "A")
        assert b.sync.counts["nodes_fetched"] == 51
        assert b.sync.counts["bytes_fetched"] == sum(
            len(b.store.raw(k) or b"") for k in [head, *(k for k, _ in b.store.get(head)["cells"])]
        )
        await b.sync.fetch(head, "A")  # all here: nothing asked
        assert b.sync.counts["nodes_fetched"] == 51 and a.sync.counts["nodes_served"] == 51
        cells[7] = "x7 = 'changed'"
        await b.sync.fetch(a.head(cells), "A")
        assert b.sync.counts["nodes_fetched"] == 53  # the changed cell and the new commit

    run(nats, tmp_path, "AB", scenario)


def test_fetches_of_one_head_at_once_ask_for_each_node_once(nats: NatsServer, tmp_path: Path) -> None:
    async def scenario(h: dict[str, Hub]) -> None:
        a, b = h["A"], h["B"]
        head = a.head([f"y{i}" for i in range(30)])
        await b.sync.fetch(head, "A")  # the commit first, so both below ask for cells at once
        cells = a.head([f"z{i}" for i in range(30)])
        await asyncio.gather(*(b.sync.fetch(cells, "A") for _ in range(5)))
        assert b.sync.counts["nodes_fetched"] == 31 + 31
        assert a.sync.counts["nodes_served"] == 31 + 31

    run(nats, tmp_path, "AB", scenario)


def test_a_node_that_fails_its_hash_is_refused_and_fetched_from_the_next_hub(
    nats: NatsServer, tmp_path: Path
) -> None:
    async def scenario(h: dict[str, Hub]) -> None:
        a, b, c = h["A"], h["B"], h["C"]
        head = a.head(["p = 1", "q = 2"])
        await c.sync.fetch(head, "A")
        a.corrupt(a.store.get(head)["cells"][1][0])
        await b.sync.fetch(head, "A")
        assert b.sync.counts["nodes_refused"] == 1
        assert c.sync.counts["nodes_served"] == 1
        assert [b.store.get(k)["source"] for k, _ in b.store.get(head)["cells"]] == ["p = 1", "q = 2"]

    run(nats, tmp_path, "ABC", scenario)


def test_a_node_no_hub_has_fails_naming_it_and_the_hubs_asked(nats: NatsServer, tmp_path: Path) -> None:
    async def scenario(h: dict[str, Hub]) -> None:
        a, b = h["A"], h["B"]
        head = a.head(["only = 1"])
        a.corrupt(a.store.get(head)["cells"][0][0])
        with pytest.raises(MissingNode, match=r"1 node\(s\) of head .* could not be fetched.*asked: A, C"):
            await b.sync.fetch(head, "A")
        with pytest.raises(MissingNode, match=r"asked: A, C\)"):
            await b.sync.fetch("f" * 64, "Z")  # a hub not in the mesh is not asked; the others are
        assert not b.store.has(a.store.get(head)["cells"][0][0])

    run(nats, tmp_path, "ABC", scenario)


def test_a_node_larger_than_a_nats_message_crosses(nats: NatsServer, tmp_path: Path) -> None:
    async def scenario(h: dict[str, Hub]) -> None:
        a, b = h["A"], h["B"]
        head = a.head(["big = '" + "x" * 3_000_000 + "'", "small = 1"])
        await b.sync.fetch(head, "A")
        assert len(b.store.get(b.store.get(head)["cells"][0][0])["source"]) > 3_000_000

    run(nats, tmp_path, "AB", scenario)


def test_an_ask_names_nodes_by_hash_only_and_a_malformed_one_is_dropped(
    nats: NatsServer, tmp_path: Path
) -> None:
    """Another hub cannot make this one read a file by naming it: an ask is a list of 32-byte hashes."""

    async def scenario(h: dict[str, Hub]) -> None:
        import nats as nats_py

        a = h["A"]
        head = a.head(["fine = 1"])
        nc = await nats_py.connect(nats.url)
        answers: list[tuple[dict[str, Any], bytes]] = []

        async def received(msg: Any) -> None:
            header, body = wire.unpack_frame(memoryview(msg.data)[1:])
            answers.append((header, bytes(body)))

        await nc.subscribe(nodes_subject("X", "A"), cb=received)
        ask = nodes_subject("A", "X")
        await nc.publish(ask, b"\x00" + wire.pack_frame({"want": 1}) + b"../../secret")  # not 32-byte keys
        await nc.publish(ask, b"\x00" + wire.pack_frame({"want": 2}) + bytes(32) + bytes.fromhex(head))
        await until(lambda: any(header.get("done") == 2 for header, _ in answers), "A's answer")
        await nc.close()
        assert [header for header, _ in answers] == [{"have": 2}, {"done": 2}]  # nothing for the first
        assert answers[0][1][:32] == bytes.fromhex(head)  # only the node it has, by its hash

    run(nats, tmp_path, "A", scenario)


def test_a_commit_after_one_the_asker_has_moves_as_its_change(nats: NatsServer, tmp_path: Path) -> None:
    """A one-cell change of a 2,000-cell notebook moves the cell and a delta, not a 2,000-entry commit."""

    async def scenario(h: dict[str, Hub]) -> None:
        a, b = h["A"], h["B"]
        cells = [f"x{i} = {i}" for i in range(2000)]
        first = a.head(cells)
        await b.sync.fetch(first, "A")
        whole_commit = len(a.store.raw(first) or b"")
        before = b.sync.counts["bytes_fetched"]
        cells[1234] = "x1234 = 'changed'"
        second = a.head(cells, parents=(first,))
        await b.sync.fetch(second, "A")
        assert b.sync.counts["nodes_fetched"] == 2001 + 2
        moved = b.sync.counts["bytes_fetched"] - before
        assert moved < whole_commit / 50, (moved, whole_commit)
        assert b.store.raw(second) == a.store.raw(second)  # rebuilt exactly (and checked by its hash)

    run(nats, tmp_path, "AB", scenario)


def test_a_delta_that_does_not_rebuild_the_commit_is_asked_for_whole(
    nats: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def wrong(base: dict[str, Any], commit: dict[str, Any]) -> dict[str, Any]:
        return {**commit_delta(base, commit), "cells": []}  # forgets the changed cell

    monkeypatch.setattr(node_sync, "commit_delta", wrong)

    async def scenario(h: dict[str, Hub]) -> None:
        a, b = h["A"], h["B"]
        first = a.head(["p = 1", "q = 2"])
        await b.sync.fetch(first, "A")
        second = a.head(["p = 1", "q = 3"], parents=(first,))
        await b.sync.fetch(second, "A")
        assert b.store.raw(second) == a.store.raw(second)
        assert b.sync.counts["nodes_refused"] == 0  # not the source's fault: a delta is only a way to send
        assert a.sync.counts["nodes_served"] == 3 + 1 + 2  # first head, the delta, then whole, and the cell

    run(nats, tmp_path, "AB", scenario)


entries = st.lists(st.tuples(st.sampled_from("abcdef"), st.sampled_from("uvw")).map(list), max_size=30)


@given(entries, entries, st.dictionaries(st.sampled_from(["time", "message", "x"]), st.integers()))
def test_a_commit_delta_rebuilds_the_commit(old: list[Any], new: list[Any], fields: dict[str, int]) -> None:
    base = {"cells": old, "parents": [], "time": 1, "message": "m"}
    commit = {"cells": new, "parents": ["p"], **fields}
    assert apply_delta(base, commit_delta(base, commit)) == commit
