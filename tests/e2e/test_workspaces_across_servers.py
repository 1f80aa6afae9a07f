"""Workspaces across Jupyter servers whose hubs joined over a real nats-server: one registry, nodes
fetched only when missing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.test_workspaces import post, save, sources
from tests.support import HubServer, NatsServer, wait_until


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, HubServer]]:
    """Hubs A (the teacher's server), B and C (students' servers) in one mesh."""
    root = tmp_path_factory.mktemp("mesh")
    nats = NatsServer(root / "nats").start()
    servers = {
        name: HubServer(
            root / name, args=(f"--SpindelHub.hub_name={name}", f"--SpindelHub.nats_url={nats.url}")
        )
        for name in "ABC"
    }
    try:
        for server in servers.values():
            server.start()
        for server in servers.values():
            wait_until(lambda s=server: len(s.get("spindel/api/stats")["mesh"]["hubs"]) == 3, 20, what="mesh")  # type: ignore[misc]
        yield servers
    finally:
        for server in servers.values():
            server.stop()
        nats.stop()


def sync(hub: HubServer) -> dict[str, int]:
    return dict(hub.get("spindel/api/stats")["sync"])


def nodes(hub: HubServer) -> int:
    return int(hub.get("spindel/api/stats")["store"]["nodes"])


def listed(hub: HubServer, name: str) -> dict[str, Any] | None:
    return next((w for w in hub.get("spindel/api/workspaces") if w["name"] == name), None)


def test_a_200_cell_workspace_followed_from_another_server_fetches_each_node_once(
    mesh: dict[str, HubServer],
) -> None:
    a, b = mesh["A"], mesh["B"]
    cells = [f"x{i} = {i}  # cell {i}" for i in range(200)]
    save(a, "lecture3.ipynb", *cells)
    assert post(a, "spindel/api/workspaces", {"name": "lecture3", "path": "lecture3.ipynb"})[0] == 200
    wait_until(lambda: listed(b, "lecture3") is not None, what="lecture3 listed on B")
    before = sync(b)
    status, answer = post(b, "spindel/api/workspaces/lecture3/follow", {})
    assert status == 200, answer
    assert answer["copy"] == "following/lecture3.ipynb"
    assert sources(b, "following/lecture3.ipynb") == cells
    after = sync(b)
    assert after["nodes_fetched"] - before["nodes_fetched"] == 201  # 200 cells and the commit, once each
    assert after["bytes_fetched"] > before["bytes_fetched"]

    # The publisher edits one cell and saves: B's copy follows, fetching the new cell and commit only.
    cells[57] = "x57 = 'changed'"
    save(a, "lecture3.ipynb", *cells)
    wait_until(lambda: sources(b, "following/lecture3.ipynb")[57] == cells[57], 20, what="B's copy updated")
    assert sources(b, "following/lecture3.ipynb") == cells
    assert sync(b)["nodes_fetched"] - after["nodes_fetched"] <= 2


def test_forking_on_another_server_adds_no_node_and_merging_back_moves_only_new_nodes(
    mesh: dict[str, HubServer],
) -> None:
    a, c = mesh["A"], mesh["C"]
    save(a, "lesson.ipynb", *[f"y{i} = {i}" for i in range(20)])
    assert post(a, "spindel/api/workspaces", {"name": "lesson", "path": "lesson.ipynb"})[0] == 200
    wait_until(lambda: listed(c, "lesson") is not None, what="lesson listed on C")
    assert post(c, "spindel/api/workspaces/lesson/follow", {})[0] == 200
    counts = {hub: nodes(server) for hub, server in mesh.items()}
    fetched = sync(c)["nodes_fetched"]
    status, fork = post(c, "spindel/api/workspaces/lesson/fork", {"new": "lesson-carol"})
    assert status == 200, fork
    assert {hub: nodes(server) for hub, server in mesh.items()} == counts
    assert sync(c)["nodes_fetched"] == fetched
    assert sources(c, "forks/lesson-carol.ipynb")[3] == "y3 = 3"
    wait_until(lambda: listed(a, "lesson-carol") is not None, what="the fork listed on A")

    # Carol edits two cells of her fork on C and publishes it; A merges it back, fetching only those.
    edited = [f"y{i} = {i}" for i in range(20)]
    edited[4], edited[9] = "y4 = 'carol'", "y9 = 'carol'"
    save(c, "forks/lesson-carol.ipynb", *edited)
    wait_until(
        lambda: listed(a, "lesson-carol")["head"] != listed(a, "lesson")["head"], what="fork's head on A"
    )  # type: ignore[index]
    served = sync(c)["nodes_served"]
    before = sync(a)["nodes_fetched"]
    status, merged = post(a, "spindel/api/workspaces/lesson-carol/merge", {})
    assert status == 200, merged
    assert merged["merged"] is True
    assert sync(a)["nodes_fetched"] - before == 3  # two new cells and the fork's commit
    assert sync(c)["nodes_served"] - served == 3
    assert sources(a, "lesson.ipynb") == edited
