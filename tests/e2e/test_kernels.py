"""Kernels as peers: auto-connect, peer lists, names, crashes and hub restarts."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from tests.support import HubServer, Kernel, start_kernel, wait_until


@pytest.fixture(scope="module")
def notebooks(hub: HubServer) -> Iterator[tuple[Kernel, Kernel]]:
    """Two notebooks opened in the server, as the lab would open them."""
    alice = hub.start_notebook_kernel("team/alice.ipynb")
    bob = hub.start_notebook_kernel("bob analysis.ipynb")
    yield alice, bob
    alice.shutdown()
    bob.shutdown()


def test_load_ext_connects_with_nothing_typed(hub: HubServer, notebooks: tuple[Kernel, Kernel]) -> None:
    alice, bob = notebooks
    assert "connected to the hub as 'alice'" in alice.ok("%load_ext spindel_jupyter").stdout
    assert "connected to the hub as 'bob-analysis'" in bob.ok("%load_ext spindel_jupyter").stdout
    names = hub.peer_names()
    assert "alice" in names and "bob-analysis" in names
    kinds = {p["name"]: p["kind"] for p in hub.get("spindel/api/peers")}
    assert kinds["alice"] == kinds["bob-analysis"] == "kernel"


def test_spin_peers_shows_the_others_as_a_table(notebooks: tuple[Kernel, Kernel]) -> None:
    alice, bob = notebooks
    out = alice.ok("%spin_peers")
    html = out.html()
    assert "<table" in html
    assert "alice (you)" in html and "bob-analysis" in html
    assert "bob-analysis" in out.text() and "connected since" in out.text()
    # ...and the same from plain Python in the kernel
    names = bob.ok(
        "import spindel_jupyter; print(sorted(p['name'] for p in spindel_jupyter.current_peer().peers()))"
    )
    assert "'alice'" in names.stdout and "'bob-analysis'" in names.stdout


def test_taken_name_gets_the_clear_error(hub: HubServer, notebooks: tuple[Kernel, Kernel]) -> None:
    carol = hub.start_notebook_kernel("carol.ipynb")
    try:
        carol.ok("%load_ext spindel_jupyter")
        out = carol.run("%spin_connect --as alice")
        assert out.error is not None and out.error["ename"] == "UsageError"
        assert "name 'alice' is already connected; use %spin_connect --as OTHER" in out.error["evalue"]
        assert "carol" in hub.peer_names()  # the old connection is kept
        assert "as 'carol2'" in carol.ok("%spin_connect --as carol2").stdout
        wait_until(lambda: "carol" not in hub.peer_names(), what="the old name to leave")
    finally:
        carol.shutdown()


def test_bad_magic_usage_is_a_usage_error(notebooks: tuple[Kernel, Kernel]) -> None:
    alice, _ = notebooks
    for line in ("%spin_peers extra", "%spin_connect --as 'no spaces allowed'", "%spin_connect --bogus"):
        out = alice.run(line)
        assert out.error is not None and out.error["ename"] == "UsageError", line


def test_killed_kernel_leaves_the_peer_list_within_2s(hub: HubServer) -> None:
    doomed = hub.start_notebook_kernel("doomed.ipynb")
    try:
        doomed.ok("%load_ext spindel_jupyter")
        assert "doomed" in hub.peer_names()
        pid = doomed.pid()
        os.kill(pid, signal.SIGKILL)
        started = time.monotonic()
        wait_until(lambda: "doomed" not in hub.peer_names(), timeout=2, interval=0.02, what="doomed to leave")
        assert time.monotonic() - started < 2
    finally:
        doomed.shutdown()


def test_unload_ext_disconnects(hub: HubServer) -> None:
    kernel = hub.start_notebook_kernel("brief.ipynb")
    try:
        kernel.ok("%load_ext spindel_jupyter")
        assert "brief" in hub.peer_names()
        kernel.ok("%unload_ext spindel_jupyter")
        wait_until(lambda: "brief" not in hub.peer_names(), what="brief to leave")
    finally:
        kernel.shutdown()


def test_kernels_reconnect_by_themselves_after_the_server_restarts(own_hub: HubServer) -> None:
    env = {"SPINDEL_HUB_URL": own_hub.ws_url, "SPINDEL_TOKEN": own_hub.token}
    kernels = [start_kernel({**env, "SPINDEL_PEER": name}) for name in ("north", "south")]
    try:
        for kernel in kernels:
            kernel.ok("%load_ext spindel_jupyter")
        assert sorted(own_hub.peer_names()) == ["north", "south"]
        own_hub.stop()
        own_hub.start()
        wait_until(
            lambda: sorted(own_hub.peer_names()) == ["north", "south"], timeout=15, what="both kernels back"
        )
        out = kernels[0].ok("%spin_peers")
        assert "south" in out.text()
    finally:
        for kernel in kernels:
            kernel.shutdown()


def test_kernel_peers_carry_their_kernel_id(hub: HubServer, notebooks: tuple[Kernel, Kernel]) -> None:
    alice, _ = notebooks
    kernels = {p["name"]: p["kernel"] for p in hub.get("spindel/api/peers")}
    assert kernels["alice"] == alice.kernel_id


def test_the_peer_name_follows_the_notebook_when_it_is_renamed_or_moved(hub: HubServer) -> None:
    untitled = hub.start_notebook_kernel("rename/Untitled.ipynb")
    explicit = hub.start_notebook_kernel("rename/Untitled1.ipynb")
    try:
        assert "as 'Untitled'" in untitled.ok("%load_ext spindel_jupyter").stdout
        explicit.ok("%load_ext spindel_jupyter\n%spin_connect --as fixed-name")
        hub.request("PATCH", "api/contents/rename/Untitled.ipynb", {"path": "rename/carla.ipynb"})
        hub.request("PATCH", "api/contents/rename/Untitled1.ipynb", {"path": "rename/other.ipynb"})
        wait_until(lambda: "carla" in hub.peer_names(), what="the peer to be renamed after its notebook")
        assert "Untitled" not in hub.peer_names() and "fixed-name" in hub.peer_names()  # explicit names stay
        assert "carla (you)" in untitled.ok("%spin_peers").html()
        untitled.ok("%spin_serve")
        assert explicit.ok("%%spin_remote carla\n6 * 7").text().strip() == "42"
        # moved with its folder, then reconnecting (as after a hub restart): the new name holds
        hub.request("PATCH", "api/contents/rename", {"path": "renamed"})
        wait_until(lambda: "carla" in hub.peer_names() and "Untitled" not in hub.peer_names())
        untitled.ok("import spindel_jupyter as sj\nsj.connect()")
        assert "carla" in hub.peer_names()
        assert (
            untitled.ok("from spindel_jupyter.kernel import session\nprint(session.notebook_file())")
            .stdout.strip()
            .endswith("renamed/carla.ipynb")
        )
    finally:
        untitled.shutdown()
        explicit.shutdown()
