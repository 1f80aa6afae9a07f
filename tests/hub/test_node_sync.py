"""Nodes between hubs: fetched only when missing, once, verified, from another hub when one fails.

Hubs here are the mesh and node sync of a hub without its Jupyter server, over a real nats-server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from spindel_jupyter.core import wire
from spindel_jupyter.core.errors import MissingNode
from spindel_jupyter.hub.mesh import Mesh
from spindel_jupyter.hub.node_sync import NodeSync, nodes_subject
from spindel_jupyter.hub.store import NodeStore
from tests.support import NatsServer


class Hub:
    """The node side of one hub: its store, its mesh and its node sync."""

    def __init__(self, name: str, url: str, root: Path) -> None:
        self.store = NodeStore(root / name)
        self.mesh = Mesh(url, name)
        self.sync = NodeSync(self.mesh, self.store)
        self.mesh.parts.append(self.sync)

    def head(self, cells: list[str]) -> str:
        """A commit of cells with these sources, stored here; its key."""
        keys = [self.store.put({"cell_type": "code", "source": s, "metadata": {}}) for s in cells]
        head = self.store.put({"cells": [[k, f"c{i}"] for i, k in enumerate(keys)], "parents": []})
        self.store.sync()
        return head

    def corrupt(self, key: str) -> None:
        (self.store.directory / key[:2] / key[2:]).write_bytes(b"\x91\xa5wrong")


@contextlib.asynccontextmanager
async def hubs(nats: NatsServer, root: Path, names: str) -> AsyncIterator[dict[str, Hub]]:
    made = {name: Hub(name, nats.url, root) for name in names}
    for hub in made.values():
        hub.mesh.start()
    try:
        await until(lambda: all(hub.mesh.hubs() == sorted(names) for hub in made.values()), "the mesh")
        yield made
    finally:
        for hub in made.values():
            await hub.mesh.close()


async def until(predicate: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def run(
    nats: NatsServer, root: Path, names: str, scenario: Callable[[dict[str, Hub]], Awaitable[None]]
) -> None:
    async def main() -> None:
        async with hubs(nats, root, names) as made:
            await scenario(made)

    asyncio.run(main())


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


def test_an_ask_for_what_is_not_a_node_key_reads_nothing(nats: NatsServer, tmp_path: Path) -> None:
    """Another hub cannot make this one read a file by naming it as a node: only node keys are read."""
    (tmp_path / "secret").write_text("not a node")

    async def scenario(h: dict[str, Hub]) -> None:
        import nats as nats_py

        a = h["A"]
        head = a.head(["fine = 1"])
        nc = await nats_py.connect(nats.url)
        answers: list[dict[str, Any]] = []

        async def received(msg: Any) -> None:
            answers.append(wire.unpack_frame(memoryview(msg.data)[1:])[0])

        await nc.subscribe(nodes_subject("X", "A"), cb=received)
        traversal = "../" * 5 + "secret"
        keys = [traversal, traversal.ljust(64, "/"), "../A/" + head[2:], head]
        await nc.publish(nodes_subject("A", "X"), b"\x00" + wire.pack_frame({"want": 1, "keys": keys}))
        await until(lambda: any("done" in answer for answer in answers), "A's answer")
        await nc.close()
        served = [key for answer in answers for key in answer.get("keys") or []]
        assert served == [head]

    run(nats, tmp_path, "A", scenario)
