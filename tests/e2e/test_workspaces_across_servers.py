"""Workspaces across Jupyter servers whose hubs joined over a real nats-server: one registry, nodes
fetched only when missing."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import nbformat
import pytest

from spindel_jupyter.peer.client import Peer
from tests.e2e.test_workspaces import post, save, sources
from tests.support import HubServer, meshed, wait_until


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, HubServer]]:
    """Hubs A (the teacher's server), B and C (students' servers) in one mesh."""
    with meshed(tmp_path_factory.mktemp("mesh"), "ABC") as (_, servers):
        yield servers


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
    edit = {key: sync(b)[key] - after[key] for key in ("nodes_fetched", "bytes_fetched")}
    assert edit["nodes_fetched"] <= 2
    # The new commit came as its change from the one B has: the edit moved a sliver of the notebook.
    assert edit["bytes_fetched"] < 0.05 * (after["bytes_fetched"] - before["bytes_fetched"]), edit


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


LEASE = 3.0


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Hubs D and E in one mesh, whose writer leases last 3 s after their holder left."""
    with meshed(tmp_path_factory.mktemp("pair"), "DE", f"--SpindelHub.lease_seconds={LEASE}") as (
        nats,
        servers,
    ):
        yield {"nats": nats, **servers}


def notebook(*sources: str) -> dict[str, Any]:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    return json.loads(nbformat.writes(nb))


def race(servers: list[HubServer], path: str, bodies: list[dict[str, Any]]) -> list[int]:
    """POST to each server at once (its own body): the statuses, in the servers' order."""
    start = threading.Barrier(len(servers))

    def one(server: HubServer, body: dict[str, Any]) -> int:
        start.wait()
        return post(server, path, body)[0]

    with ThreadPoolExecutor(len(servers)) as pool:
        return list(pool.map(one, servers, bodies))


def test_two_hubs_racing_to_publish_fork_or_claim_end_with_exactly_one_winner(pair: dict[str, Any]) -> None:
    d, e = pair["D"], pair["E"]
    races = lambda: sum(s.get("spindel/api/stats")["mesh"]["registry_races"] for s in (d, e))  # noqa: E731
    assert post(d, "spindel/api/workspaces", {"name": "race-base", "notebook": notebook("x = 1")})[0] == 200
    wait_until(lambda: listed(e, "race-base") is not None, what="race-base on E")
    outcomes = []
    for i in range(50):
        published = race([d, e], "spindel/api/workspaces", [
            {"name": f"race-pub-{i}", "notebook": notebook(f"p = {i}", "# from D")},
            {"name": f"race-pub-{i}", "notebook": notebook(f"p = {i}", "# from E")},
        ])  # fmt: skip
        forked = race([d, e], "spindel/api/workspaces/race-base/fork", [{"new": f"race-fork-{i}"}] * 2)
        outcomes.append((published, forked))
    for published, forked in outcomes:
        assert sorted(published) == [200, 409] and sorted(forked) == [200, 409], outcomes
    for i, (published, _) in enumerate(outcomes):
        winner = "D" if published[0] == 200 else "E"
        for server in (d, e):  # both hubs agree on the winner, and its content is the head
            wait_until(
                lambda s=server, i=i, w=winner: listed(s, f"race-pub-{i}")["hub"] == w, what="agreement"
            )  # type: ignore[index,misc]

    # Claims: 50 workspaces whose lease ended (their publisher is a REST request, not a connected peer).
    for i in range(50):
        assert (
            post(d, "spindel/api/workspaces", {"name": f"race-claim-{i}", "notebook": notebook("c = 1")})[0]
            == 200
        )
    wait_until(lambda: listed(e, "race-claim-49") is not None, what="claims listed on E")
    time.sleep(LEASE + 0.5)
    claims = [race([d, e], f"spindel/api/workspaces/race-claim-{i}/claim", [{}, {}]) for i in range(50)]
    assert all(sorted(c) == [200, 409] for c in claims), claims
    for i, claim in enumerate(claims):
        holder = listed(d, f"race-claim-{i}")["owner"]["peer"]  # type: ignore[index]
        assert holder.endswith("@D" if claim[0] == 200 else "@E")
    assert races() > 0  # the hubs did race (each loser ran its operation again on the winner's descriptor)


def test_a_lease_is_held_while_its_peer_is_connected_to_any_hub_and_ends_lease_seconds_after_it_left(
    pair: dict[str, Any],
) -> None:
    d, e = pair["D"], pair["E"]
    alice = Peer(d.ws_url, "lease-alice", d.token, kind="script", session="lease-alice").start()
    try:
        alice.request(None, "workspace.publish", {"name": "held", "notebook": notebook("h = 1")}, timeout=30)
        wait_until(lambda: listed(e, "held") is not None, what="held on E")
        time.sleep(LEASE + 0.5)  # longer than a lease: still held, alice is connected to D
        status, answer = post(e, "spindel/api/workspaces/held/claim", {})
        assert status == 409 and "lease-alice@D" in answer["message"], answer
    finally:
        alice.close()
    left = time.monotonic()
    wait_until(lambda: listed(e, "held")["owner"]["expires"] > time.time(), what="the lease running on")  # type: ignore[index]
    status, answer = post(e, "spindel/api/workspaces/held/claim", {})
    assert status == 409 and "lease-alice@D" in answer["message"], answer
    wait_until(lambda: post(e, "spindel/api/workspaces/held/claim", {})[0] == 200, LEASE + 5, what="claimed")
    assert time.monotonic() - left >= LEASE - 0.5
    assert listed(d, "held")["owner"]["peer"].endswith("@E")  # type: ignore[index]


def summary(hub: HubServer, topic: str) -> str:
    return next((t["summary"] for t in hub.get("spindel/api/topics") if t["name"] == topic), "")


def test_magics_and_workspace_topics_work_across_servers(mesh: dict[str, HubServer]) -> None:
    """The single-server scenario with the teacher on A and the student on B: follow, roles, fork, merge."""
    a, b = mesh["A"], mesh["B"]
    save(a, "class/signals.ipynb", "s = 1")
    save(b, "class/alice.ipynb")
    teacher = a.start_notebook_kernel("class/signals.ipynb")
    student = b.start_notebook_kernel("class/alice.ipynb")
    try:
        teacher.ok(
            "%load_ext spindel_jupyter\nfrom spindel_jupyter import sync_signal, sync\n"
            "from spindel_jupyter.core.crdt import ORSet\n"
            "tags = sync_signal('sig/tags', ORSet())\ntags.update(lambda s: s.add('intro'))\n"
            "level = sync_signal('sig/level', 0)\nlevel.set(3)\nsync.flush()"
        )
        teacher.ok("%spin_publish signals --topic sig/tags:bidirectional --topic sig/level")
        wait_until(lambda: listed(b, "signals") is not None, what="signals listed on B")
        out = student.ok(
            "%load_ext spindel_jupyter\n%spin_follow signals\n"
            "from spindel_jupyter import sync, workspace\nw = workspace.signals['signals']"
        )
        assert "class/following/signals.ipynb" in out.stdout
        assert sources(b, "class/following/signals.ipynb") == ["s = 1"]  # in B's root
        follower = listed(a, "signals")["followers"][0]  # type: ignore[index]
        assert follower == {"peer": "alice@B", "path": "class/following/signals.ipynb", "hub": "B"}
        wait_until(
            lambda: (
                student.ok("print(sorted(w['sig/tags'].value), w['sig/level'].value)").stdout.strip()
                == "['intro'] 3"
            ),
            what="the topics on B",
        )
        assert student.run("w['sig/level'].set(5)").error is not None  # a subscriber topic: read-only
        student.ok("w['sig/tags'].update(lambda s: s.add('from student'))")  # bidirectional: reaches A
        wait_until(lambda: "from student" in teacher.ok("print(sorted(tags.value))").stdout, what="on A")

        # The teacher saves: B's copy moves and its follower is told.
        student.ok(
            "import spindel_jupyter as sj\nheads = []\nsj.current_peer().listen('workspace', heads.append)"
        )
        save(a, "class/signals.ipynb", "s = 2")
        wait_until(lambda: sources(b, "class/following/signals.ipynb") == ["s = 2"], what="B's copy")
        wait_until(lambda: int(student.ok("print(len(heads))").stdout) >= 1, what="the follower told")

        # A fork on B has its own topics; merged back on A, the CRDT joins and the plain value comes back.
        student.ok("%spin_fork signals signals-alice\nf = workspace.signals['signals-alice']")
        assert sources(b, "class/forks/signals-alice.ipynb") == ["s = 2"]
        student.ok("f['sig/tags'].update(lambda s: s.add('fork only'))\nf['sig/level'].set(9)\nsync.flush()")
        wait_until(lambda: "fork only" in summary(a, "signals-alice/sig/tags"), what="the fork's topic on A")
        wait_until(lambda: summary(a, "signals-alice/sig/level") == "9", what="the fork's value on A")
        assert "fork only" not in teacher.ok("print(sorted(tags.value))").stdout  # isolated until merged
        out = teacher.ok("%spin_merge signals-alice")
        assert "merged 'signals-alice'" in out.stdout
        wait_until(lambda: "fork only" in teacher.ok("print(sorted(tags.value))").stdout, what="joined")
        wait_until(lambda: teacher.ok("print(level.value)").stdout.strip() == "9", what="the fork's value")
        wait_until(lambda: "fork only" in student.ok("print(sorted(w['sig/tags'].value))").stdout, what="B")
    finally:
        teacher.shutdown()
        student.shutdown()
