"""The registry shared by the hubs of a mesh: one KV bucket, compare-and-swap, every hub's copy.

Hubs here are the registry side of a hub without its Jupyter server, over a real nats-server.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spindel_jupyter.core.errors import NotWritable, SpindelError, WorkspaceExists
from spindel_jupyter.hub.mesh import REGISTRY_BUCKET, Mesh
from spindel_jupyter.hub.mesh_registry import MeshRegistry, adopted, key_of, name_of
from spindel_jupyter.hub.node_sync import NodeSync
from spindel_jupyter.hub.store import NodeStore
from spindel_jupyter.hub.workspaces import Registry
from tests.support import NatsServer, in_mesh, until

NOTEBOOK = {"cells": [{"cell_type": "code", "source": "x = 1", "metadata": {}, "outputs": []}]}
KV_KEY = re.compile(r"[-/_=.a-zA-Z0-9]+")


@given(st.text(min_size=1, max_size=40))
def test_any_workspace_name_is_a_kv_key_and_back(name: str) -> None:
    key = key_of(name)
    assert KV_KEY.fullmatch(key) and "." not in key
    assert name_of(key) == name


def test_a_descriptor_made_alone_names_its_hub_when_adopted() -> None:
    alone = {
        "name": "w",
        "head": "h",
        "path": "w.ipynb",
        "owner": {"peer": "alice", "expires": 1.0},
        "publisher": "alice",
        "followers": [
            {"peer": "bob", "path": "following/w.ipynb"},
            {"peer": "eve@C", "path": None, "hub": "C"},
        ],
    }
    out = adopted(alone, "A")
    assert (out["hub"], out["path_hub"], out["owner"]["peer"], out["publisher"]) == (
        "A",
        "A",
        "alice@A",
        "alice@A",
    )
    assert out["followers"] == [
        {"peer": "bob@A", "path": "following/w.ipynb", "hub": "A"},
        {"peer": "eve@C", "path": None, "hub": "C"},
    ]
    assert alone["owner"]["peer"] == "alice"  # the original is left as it was


class Hub:
    """The registry side of one hub."""

    def __init__(self, name: str, url: str, root: Path) -> None:
        self.mesh = Mesh(url, name)
        self.registry = Registry(
            root / name / "workspaces", NodeStore(root / name / "nodes"), lease_seconds=60
        )
        self.registry.hub = name
        self.heads: list[str] = []
        self.registry.on_head = lambda d: self.heads.append(d["name"])
        self.shared = MeshRegistry(self.mesh, self.registry, NodeSync(self.mesh, self.registry.store))
        self.mesh.parts += [self.shared.nodes, self.shared]

    def write(self, operation: Callable[[Registry], Any]) -> Awaitable[Any]:
        return self.shared.write(lambda: operation(self.registry))


def run(
    nats: NatsServer, root: Path, names: str, scenario: Callable[[dict[str, Hub]], Awaitable[None]]
) -> None:
    hubs = {name: Hub(name, nats.url, root) for name in names}
    in_mesh(hubs, lambda h: all(hub.shared.live for hub in h.values()), scenario)


def test_a_change_on_one_hub_reaches_every_hubs_copy(nats: NatsServer, tmp_path: Path) -> None:
    async def scenario(h: dict[str, Hub]) -> None:
        a, b = h["A"], h["B"]
        await a.write(lambda r: r.publish("lecture", NOTEBOOK, "alice@A"))
        await until(lambda: "lecture" in b.registry.workspaces, "lecture on B")
        described = b.registry.get("lecture")
        assert (described["hub"], described["owner"]["peer"]) == ("A", "alice@A")
        assert b.heads == ["lecture"]  # B heard of its head (its followers' copies would be written)
        await b.write(lambda r: r.follow("lecture", "bob@B", "following/lecture.ipynb"))
        await until(lambda: a.registry.get("lecture")["followers"] != [], "B's follower on A")
        assert a.registry.get("lecture")["followers"] == [
            {"peer": "bob@B", "path": "following/lecture.ipynb", "hub": "B"}
        ]

    run(nats, tmp_path, "AB", scenario)


def test_hubs_racing_end_with_one_winner_and_the_loser_refused_as_on_one_hub(
    nats: NatsServer, tmp_path: Path
) -> None:
    async def scenario(h: dict[str, Hub]) -> None:
        a, b = h["A"], h["B"]
        await a.write(lambda r: r.publish("base", NOTEBOOK, "alice@A"))
        await until(lambda: "base" in b.registry.workspaces, "base on B")
        for i in range(20):
            results = await asyncio.gather(
                a.write(lambda r, i=i: r.fork("base", f"f{i}", "alice@A")),
                b.write(lambda r, i=i: r.fork("base", f"f{i}", "bob@B")),
                return_exceptions=True,
            )
            assert sum(isinstance(r, WorkspaceExists) for r in results) == 1, results
            results = await asyncio.gather(
                a.write(lambda r, i=i: r.publish(f"p{i}", NOTEBOOK, "alice@A")),
                b.write(lambda r, i=i: r.publish(f"p{i}", NOTEBOOK, "bob@B")),
                return_exceptions=True,
            )
            assert sum(isinstance(r, NotWritable) for r in results) == 1, results
        assert a.shared.counts["registry_races"] + b.shared.counts["registry_races"] > 0
        await until(lambda: all(f"p{i}" in b.registry.workspaces for i in range(20)), "every publish on B")
        assert {n: d["owner"]["peer"] for n, d in a.registry.workspaces.items()} == {
            n: d["owner"]["peer"] for n, d in b.registry.workspaces.items()
        }

    run(nats, tmp_path, "AB", scenario)


def test_out_of_the_mesh_a_hub_reads_its_copy_and_refuses_writes_saying_why(
    nats: NatsServer, tmp_path: Path
) -> None:
    async def scenario(h: dict[str, Hub]) -> None:
        a = h["A"]
        await a.write(lambda r: r.publish("kept", NOTEBOOK, "alice@A"))
        nats.stop()
        await until(lambda: not a.shared.live, "A to leave the mesh")
        assert (await a.write(lambda r: r.get("kept")))["name"] == "kept"  # reading needs no mesh
        with pytest.raises(SpindelError, match=r"not in it now .*try again once it has joined"):
            await a.write(lambda r: r.claim("kept", "alice@A"))
        nats.start()
        await until(lambda: a.shared.live, "A back in the mesh", timeout=30)
        await a.write(lambda r: r.claim("kept", "alice@A"))

    run(nats, tmp_path, "A", scenario)


def test_a_hub_puts_in_the_registry_what_only_it_knows(nats: NatsServer, tmp_path: Path) -> None:
    """Its workspaces from before it joined, or all of them if the bucket was lost."""
    alone = Registry(tmp_path / "A" / "workspaces", NodeStore(tmp_path / "A" / "nodes"))
    alone.publish("old", NOTEBOOK, "alice", path="old.ipynb")

    async def scenario(h: dict[str, Hub]) -> None:
        b = h["B"]
        await until(lambda: "old" in b.registry.workspaces, "A's old workspace on B")
        assert b.registry.get("old")["owner"]["peer"] == "alice@A"
        assert b.registry.get("old")["path_hub"] == "A"

    run(nats, tmp_path, "AB", scenario)

    # NATS comes back without its store: the hubs put their copies back.
    nats.stop()
    store = nats.root / "jetstream"
    for path in sorted(store.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()

    async def after(h: dict[str, Hub]) -> None:
        await until(lambda: "old" in h["B"].registry.workspaces, "old back in the registry")
        assert h["B"].registry.get("old")["hub"] == "A"

    nats.start()
    run(nats, tmp_path, "B", after)


def test_what_is_not_a_descriptor_in_the_bucket_is_ignored_and_the_rest_is_served(
    nats: NatsServer, tmp_path: Path
) -> None:
    """A hub that does not keep to the rules cannot break the registry for the others."""

    async def scenario(h: dict[str, Hub]) -> None:
        import json

        import nats as nats_py

        a = h["A"]
        nc = await nats_py.connect(nats.url)
        kv = await nc.jetstream().key_value(REGISTRY_BUCKET)
        good = {"name": "good", "head": "h", "followers": [], "owner": None}
        for key, value in [
            ("junk", b"not json"),
            ("wrong-name", json.dumps(good).encode()),  # another workspace's descriptor under this key
            ("bad-owner", json.dumps({**good, "name": "bad-owner", "owner": "me"}).encode()),
            ("bad-followers", json.dumps({**good, "name": "bad-followers", "followers": [1]}).encode()),
            ("good", json.dumps(good).encode()),
        ]:
            await kv.put(key, value)
        await nc.close()
        await until(lambda: "good" in a.registry.workspaces, "the good descriptor")
        assert sorted(a.registry.workspaces) == ["good"]
        assert [d["name"] for d in a.registry.all()] == ["good"]

    run(nats, tmp_path, "A", scenario)


def test_a_write_asked_while_the_hub_is_joining_waits_for_it(nats: NatsServer, tmp_path: Path) -> None:
    """As when a server has just started: the first write waits for the registry instead of failing."""
    hubs = {"A": Hub("A", nats.url, tmp_path)}

    async def scenario(h: dict[str, Hub]) -> None:
        assert not h["A"].shared.live  # asked before the hub joined
        await h["A"].write(lambda r: r.publish("early", NOTEBOOK, "alice@A"))
        assert h["A"].registry.revisions["early"] > 0  # in the shared registry

    in_mesh(hubs, lambda h: True, scenario)
