"""Faults of the mesh, with real processes: NATS killed and restarted, a hub cut off, a server killed."""

from __future__ import annotations

import itertools
from typing import Any

from spindel_jupyter.hub.mesh import TOPICS_STREAM
from spindel_jupyter.hub.mesh_topics import topic_subject
from tests.support import Cuttable, HubServer, Kernel, NatsServer, converges, value_of, wait_until

SYNC = "%load_ext spindel_jupyter\nfrom spindel_jupyter import *\nfrom spindel_jupyter.core.crdt import *"


def state(hub: HubServer) -> str:
    return str(hub.get("spindel/api/stats")["mesh"]["state"])


def syncing(hub: HubServer, notebook: str) -> Kernel:
    """A kernel of ``hub`` following the fault tests' topics, observing the counter's values."""
    kernel = hub.start_notebook_kernel(notebook)
    kernel.ok(
        f"{SYNC}\ncount = sync_signal('faults/count', PNCounter())\nlevel = sync_signal('faults/level', '')\n"
        "seen = []\ncount.observe(lambda v: seen.append(int(v)))"
    )
    return kernel


def stream_subjects(nats: NatsServer) -> dict[str, int]:
    """How many messages the topics' stream holds, per subject."""
    import asyncio

    import nats as nats_py

    async def ask() -> dict[str, int]:
        nc = await nats_py.connect(nats.url)
        try:
            info = await nc.jetstream().stream_info(TOPICS_STREAM, subjects_filter="spindel.topics.>")
            return dict(info.state.subjects or {})
        finally:
            await nc.close()

    return asyncio.run(ask())


def no_value_seen_twice_in_a_row(kernel: Kernel) -> None:
    """An observer fires once per change: never twice for the same one (a replayed change adds nothing)."""
    seen = value_of(kernel, "seen")
    assert all(a != b for a, b in itertools.pairwise(seen)), seen


def test_nats_killed_and_restarted_with_its_store(nats: NatsServer, servers: Any) -> None:
    a = servers("A", f"--SpindelHub.nats_url={nats.url}")
    b = servers("B", f"--SpindelHub.nats_url={nats.url}")
    alice, bob, carol = (
        syncing(a, "alice.ipynb"),
        syncing(b, "bob.ipynb"),
        a.start_notebook_kernel("carol.ipynb"),
    )
    try:
        carol.ok("%load_ext spindel_jupyter\n%spin_serve\nanswer = 42")
        alice.ok("for _ in range(3):\n    count.update(lambda c: c.increment())")
        bob.ok("count.update(lambda c: c.increment())")
        converges([alice, bob], "int(count.value)", 4, timeout=30)

        nats.stop()  # kill -9
        wait_until(lambda: state(a) == state(b) == "disconnected", timeout=20, what="the hubs to notice")
        # Each server goes on serving its own: calls and topics between its own kernels.
        assert alice.ok("%%spin_remote carol\nanswer").text().strip() == "42"
        alice.ok("for _ in range(5):\n    count.update(lambda c: c.increment())\nlevel.set('from alice')")
        bob.ok("for _ in range(7):\n    count.update(lambda c: c.increment())")
        assert value_of(alice, "int(count.value)") == 9 and value_of(bob, "int(count.value)") == 11

        nats.start()  # the same port and store
        wait_until(lambda: state(a) == state(b) == "connected", timeout=30, what="the hubs to join again")
        converges([alice, bob], "int(count.value)", 16, timeout=30)
        converges([alice, bob], "level.value", "from alice", timeout=30)
        assert value_of(bob, "int(count.value)") == 16
        for kernel in (alice, bob):
            no_value_seen_twice_in_a_row(kernel)
    finally:
        for kernel in (alice, bob, carol):
            kernel.shutdown()


def test_a_hub_cut_off_while_both_sides_write_ends_equal(nats: NatsServer, servers: Any) -> None:
    link = Cuttable(nats.port)
    try:
        a = servers("A", f"--SpindelHub.nats_url={link.url}")
        b = servers("B", f"--SpindelHub.nats_url={nats.url}")
        alice, bob = syncing(a, "alice.ipynb"), syncing(b, "bob.ipynb")
        try:
            alice.ok("count.update(lambda c: c.increment())")
            converges([alice, bob], "int(count.value)", 1, timeout=30)

            link.cut()
            wait_until(lambda: state(a) == "disconnected", timeout=20, what="A to notice it is cut off")
            wait_until(lambda: "A" not in b.get("spindel/api/stats")["mesh"]["hubs"], timeout=10, what="B")
            alice.ok(
                "for _ in range(10):\n    count.update(lambda c: c.increment())\nlevel.set('alice, cut off')"
            )
            bob.ok("for _ in range(20):\n    count.update(lambda c: c.increment())")
            bob.ok("import time\ntime.sleep(0.05)\nlevel.set('bob, later')")  # the later write wins

            link.heal()
            wait_until(lambda: state(a) == "connected", timeout=30, what="A to join again")
            converges([alice, bob], "int(count.value)", 31, timeout=30)
            converges([alice, bob], "level.value", "bob, later", timeout=30)
            for kernel in (alice, bob):
                no_value_seen_twice_in_a_row(kernel)
            # A's snapshots on its return rolled up its earlier messages: one per topic is left of A's.
            kept = stream_subjects(nats)
            of = topic_subject
            assert kept[of("faults/count", "A")] == kept[of("faults/level", "A")] == 1, kept
            assert kept[of("faults/count", "B")] >= 1  # B's own, beside them
        finally:
            alice.shutdown()
            bob.shutdown()
    finally:
        link.close()
