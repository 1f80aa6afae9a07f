"""Faults of workspaces shared across servers, with real processes: the publisher's server away, a
corrupt node, NATS restarted, a hub restarted cold."""

from __future__ import annotations

import json
from typing import Any

from spindel_jupyter.hub.store import NodeStore
from tests.e2e.test_workspaces import post, save, sources
from tests.e2e.test_workspaces_across_servers import listed, sync
from tests.support import Cuttable, HubServer, NatsServer, wait_until


def joined(*hubs: HubServer) -> None:
    for hub in hubs:
        wait_until(
            lambda h=hub: len(h.get("spindel/api/stats")["mesh"]["hubs"]) == len(hubs),  # type: ignore[misc]
            30,
            what="the mesh",
        )


def store_of(hub: HubServer) -> NodeStore:
    return NodeStore(hub.root / "store" / "nodes")


def head_is_whole(hub: HubServer, head: str) -> bool:
    """Whether ``hub``'s store has every node of commit ``head``, each as its hash says."""
    store = store_of(hub)
    if not store.has(head):
        return False
    commit = store.get(head)
    for key, _ in commit["cells"]:
        store.get(key)  # raises if missing or corrupt
    return True


def test_followers_keep_their_copy_while_the_publishers_server_is_away_and_catch_up_when_it_returns(
    nats: NatsServer, servers: Any
) -> None:
    cut = Cuttable(nats.port)
    try:
        a = servers("A", f"--SpindelHub.nats_url={nats.url}")
        b = servers("B", f"--SpindelHub.nats_url={cut.url}")
        joined(a, b)
        save(a, "lecture.ipynb", "a = 1", "b = 2")
        assert post(a, "spindel/api/workspaces", {"name": "lecture", "path": "lecture.ipynb"})[0] == 200
        wait_until(lambda: listed(b, "lecture") is not None, what="lecture on B")
        assert post(b, "spindel/api/workspaces/lecture/follow", {})[0] == 200
        assert sources(b, "following/lecture.ipynb") == ["a = 1", "b = 2"]

        cut.cut()  # B is out of the mesh while A saves a new head, then A's server dies
        wait_until(lambda: b.get("spindel/api/stats")["mesh"]["state"] != "connected", 20, what="B cut off")
        head = listed(a, "lecture")["head"]  # type: ignore[index]
        save(a, "lecture.ipynb", "a = 1", "b = 'new'")
        wait_until(lambda: listed(a, "lecture")["head"] != head, what="A's new head")  # type: ignore[index]
        new_head = listed(a, "lecture")["head"]  # type: ignore[index]
        a.kill()
        cut.heal()

        # B learns of the new head from the registry but cannot fetch it: its copy stays whole, and says why.
        wait_until(lambda: (listed(b, "lecture") or {}).get("behind"), 30, what="B saying it is behind")
        described = listed(b, "lecture")
        assert described is not None and described["head"] == new_head
        assert "cannot fetch head" in described["behind"] and "asked: none" in described["behind"]
        assert sources(b, "following/lecture.ipynb") == ["a = 1", "b = 2"]

        a.start()  # the same store: it has the head's nodes; B fetches them once A is back
        wait_until(
            lambda: sources(b, "following/lecture.ipynb") == ["a = 1", "b = 'new'"], 40, what="B updated"
        )
        assert "behind" not in listed(b, "lecture")  # type: ignore[operator]
    finally:
        cut.close()


def test_a_node_that_fails_its_hash_is_refused_and_fetched_from_another_hub(
    nats: NatsServer, servers: Any
) -> None:
    a, b, c = (servers(name, f"--SpindelHub.nats_url={nats.url}") for name in "ABC")
    joined(a, b, c)
    save(a, "shared.ipynb", "s = 1", "t = 2", "u = 3")
    save(a, "only-a.ipynb", "o = 1", "p = 2")
    for name in ("shared", "only-a"):
        assert post(a, "spindel/api/workspaces", {"name": name, "path": f"{name}.ipynb"})[0] == 200
    wait_until(lambda: listed(c, "only-a") is not None and listed(b, "only-a") is not None, what="listed")
    assert post(c, "spindel/api/workspaces/shared/follow", {})[0] == 200  # C has the nodes too

    for name in ("shared", "only-a"):  # a disk fault on A: the first cell's node no longer matches its hash
        commit = store_of(a).get(listed(a, name)["head"])  # type: ignore[index]
        key = commit["cells"][0][0]
        (a.root / "store" / "nodes" / key[:2] / key[2:]).write_bytes(b"\x91\xa5wrong")

    served = sync(c)["nodes_served"]
    status, answer = post(b, "spindel/api/workspaces/shared/follow", {})
    assert status == 200, answer
    assert sources(b, "following/shared.ipynb") == ["s = 1", "t = 2", "u = 3"]
    assert sync(b)["nodes_refused"] == 1
    assert sync(c)["nodes_served"] - served == 1  # the refused node, from the other hub that has it

    # Nobody else has it: the follow fails, says which node and whom it asked, and writes nothing.
    status, answer = post(b, "spindel/api/workspaces/only-a/follow", {})
    assert status == 400, answer
    assert "could not be fetched" in answer["message"] and "asked: A, C" in answer["message"]
    assert sync(b)["nodes_refused"] == 2
    assert not (b.notebooks / "following" / "only-a.ipynb").exists()


def test_nats_restarted_with_its_store_keeps_the_registry(nats: NatsServer, servers: Any) -> None:
    a, b = (servers(name, f"--SpindelHub.nats_url={nats.url}") for name in "AB")
    joined(a, b)
    save(a, "before.ipynb", "before = 1")
    assert post(a, "spindel/api/workspaces", {"name": "before", "path": "before.ipynb"})[0] == 200
    wait_until(lambda: listed(b, "before") is not None, what="before on B")
    registry = {w["name"]: w["head"] for w in a.get("spindel/api/workspaces")}

    nats.stop()  # kill -9
    wait_until(lambda: a.get("spindel/api/stats")["mesh"]["state"] != "connected", 20, what="A to notice")
    nats.start()
    joined(a, b)
    for hub in (a, b):
        wait_until(
            lambda h=hub: {w["name"]: w["head"] for w in h.get("spindel/api/workspaces")} == registry,  # type: ignore[misc]
            20,
            what="the registry as it was",
        )
    assert post(b, "spindel/api/workspaces/before/follow", {})[0] == 200
    assert sources(b, "following/before.ipynb") == ["before = 1"]
    save(b, "after.ipynb", "after = 1")
    assert post(b, "spindel/api/workspaces", {"name": "after", "path": "after.ipynb"})[0] == 200
    status, answer = post(a, "spindel/api/workspaces", {"name": "after", "path": "before.ipynb"})
    assert status == 409 and "@B" in answer["message"], answer  # the registry still decides between hubs


def test_a_hub_restarted_cold_brings_its_store_and_copies_to_the_registrys_heads(
    nats: NatsServer, servers: Any
) -> None:
    a, b = (servers(name, f"--SpindelHub.nats_url={nats.url}") for name in "AB")
    joined(a, b)
    save(a, "notes.ipynb", "n = 1", "m = 2")
    assert post(a, "spindel/api/workspaces", {"name": "notes", "path": "notes.ipynb"})[0] == 200
    wait_until(lambda: listed(b, "notes") is not None, what="notes on B")
    assert post(b, "spindel/api/workspaces/notes/follow", {})[0] == 200

    b.kill()
    save(a, "notes.ipynb", "n = 1", "m = 'while B was down'")
    save(a, "notes.ipynb", "n = 'twice'", "m = 'while B was down'")
    b.start()
    wait_until(
        lambda: sources(b, "following/notes.ipynb") == ["n = 'twice'", "m = 'while B was down'"],
        40,
        what="copy",
    )
    head = listed(a, "notes")["head"]  # type: ignore[index]
    copy = json.loads((b.notebooks / "following" / "notes.ipynb").read_text())
    assert copy["metadata"]["spindel"]["head"] == head == listed(b, "notes")["head"]  # type: ignore[index]
    assert head_is_whole(b, head)
    assert sync(b)["nodes_fetched"] == 3  # the new head's commit and its two new cells, fetched once

    # A crash between taking a new head and bringing it here: the copy and a node of the head are not
    # here, while this hub's copy of the registry already names the head. Restarted, it mends both.
    b.kill()
    stale = (b.notebooks / "following" / "notes.ipynb").read_text().replace("twice", "stale")
    (b.notebooks / "following" / "notes.ipynb").write_text(stale)
    key = store_of(b).get(head)["cells"][0][0]
    (b.root / "store" / "nodes" / key[:2] / key[2:]).unlink()
    b.start()
    wait_until(lambda: sources(b, "following/notes.ipynb")[0] == "n = 'twice'", 40, what="the copy mended")
    assert head_is_whole(b, head)
