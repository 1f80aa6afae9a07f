"""Synced signals between real kernels through a real hub: CRDTs, LWW, widgets, restarts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import HubServer, Kernel, converges, start_kernel, value_of, wait_until

SETUP = "%load_ext spindel_jupyter\nfrom spindel_jupyter import *\nfrom spindel_jupyter.core.crdt import *"


@pytest.fixture(scope="module")
def kernels(hub: HubServer) -> Iterator[list[Kernel]]:
    started = [hub.start_notebook_kernel(f"sync/k{i}.ipynb") for i in range(1, 6)]
    for kernel in started:
        kernel.ok(SETUP)
    yield started
    for kernel in started:
        kernel.shutdown()


def test_two_writers_reach_the_union(kernels: list[Kernel]) -> None:
    k1, k2 = kernels[:2]
    for kernel in (k1, k2):
        kernel.ok("tags = sync_signal('t1/tags', ORSet())")
    k1.ok("tags.update(lambda s: s.add('cleaned'))")
    k2.ok("tags.update(lambda s: s.add('plotted'))")
    converges([k1, k2], "sorted(tags.value)", ["cleaned", "plotted"])
    k1.ok("tags.update(lambda s: s.remove('cleaned'))")
    converges([k1, k2], "sorted(tags.value)", ["plotted"])


def test_fan_in_through_the_hub(kernels: list[Kernel], hub: HubServer) -> None:
    trio = kernels[:3]
    for kernel in trio:
        kernel.ok("count = sync_signal('t2/count', PNCounter())")
    for i, kernel in enumerate(trio, start=1):
        kernel.ok(f"for _ in range({i * 10}):\n    count.update(lambda c: c.increment())")
    kernels[0].ok("count.update(lambda c: c.decrement(5))")
    converges(trio, "int(count.value)", 55)
    topics = {t["name"]: t for t in hub.get("spindel/api/topics")}
    assert topics["t2/count"]["kind"] == "pncounter"
    assert topics["t2/count"]["subscribers"] == 3 and topics["t2/count"]["size"] > 0


def test_lww_concurrent_bursts_end_equal_everywhere(kernels: list[Kernel]) -> None:
    trio = kernels[:3]
    for kernel in trio:
        kernel.ok("level = sync_signal('t3/level', 0)")
    ids = [trio[i].client.execute(f"for v in range(200):\n    level.set(({i}, v))") for i in range(3)]
    for kernel, _ in zip(trio, ids, strict=True):
        kernel.client.get_shell_msg(timeout=30)
    time.sleep(0.5)
    finals = [value_of(k, "level.value") for k in trio]
    assert finals[0] == finals[1] == finals[2]
    assert finals[0][1] == 199  # the last write of one of the writers
    mirror = kernels[3].ok("m = subscribe_signal('t3/level')\nprint(repr(m.value))").stdout.strip()
    assert eval(mirror) == finals[0]  # the hub holds the same winner


def test_both_wrote_before_syncing_end_with_the_union(kernels: list[Kernel]) -> None:
    k1, k2 = kernels[:2]
    k1.ok("early = GSet().add('from k1').add('both')")
    k2.ok("early = GSet().add('from k2').add('both')")
    k1.ok("s = sync_signal('t4/early', early)")
    out = k2.ok("s = sync_signal('t4/early', early)\nprint(sorted(s.value))")  # one round trip
    assert out.stdout.strip() == "['both', 'from k1', 'from k2']"
    converges([k1], "sorted(s.value)", ["both", "from k1", "from k2"])


def test_late_joiner_converges_with_every_writer_gone(hub: HubServer, kernels: list[Kernel]) -> None:
    writers = [hub.start_notebook_kernel(f"sync/writer{i}.ipynb") for i in range(2)]
    try:
        for i, writer in enumerate(writers):
            writer.ok(SETUP)
            writer.ok(f"g = sync_signal('t5/late', GSet())\ng.update(lambda s: s.add({i}).add('w{i}'))")
            writer.ok(f"m = sync_signal('t5/map', LWWMap())\nm.update(lambda v: v.set('k{i}', {i}))")
            writer.ok("plain = sync_signal('t5/plain', 0)\nplain.set(plain.value + 1 if False else 'last')")
            writer.ok("from spindel_jupyter import sync\nsync.flush()")
    finally:
        for writer in writers:
            writer.shutdown()
    wait_until(lambda: not {"writer0", "writer1"} & set(hub.peer_names()), what="writers gone")
    late = kernels[4]
    out = late.ok(
        "g = sync_signal('t5/late', GSet())\nm = sync_signal('t5/map', LWWMap())\n"
        "p = subscribe_signal('t5/plain')\nprint(sorted(map(str, g.value)), m.value, p.value)"
    )
    assert out.stdout.strip() == "['0', '1', 'w0', 'w1'] LWWMap({'k0': 0, 'k1': 1}) last"


def test_mirror_is_read_only_and_export_takes_nothing(kernels: list[Kernel]) -> None:
    k1, k2 = kernels[:2]
    k1.ok("src = Signal(1)\nexport_signal('t6/out', src)\nsrc.set(2)")
    k2.ok("mirror = subscribe_signal('t6/out')")
    converges([k2], "mirror.value", 2)
    out = k2.run("mirror.set(5)")
    assert out.error is not None and "read-only" in out.error["evalue"]
    k2.ok("writer = sync_signal('t6/out', 0)\nwriter.set(99)")
    time.sleep(0.5)
    assert value_of(k1, "src.value") == 2  # exported, not subscribed


def test_an_exported_value_reaches_subscribers_before_any_change(kernels: list[Kernel]) -> None:
    k1, k2 = kernels[:2]
    k1.ok("level = export_signal('t6/level', Signal(7))")
    k2.ok("seen = subscribe_signal('t6/level')")
    converges([k2], "seen.value", 7)
    k1.ok("level.set(8)")
    converges([k2], "seen.value", 8)


def test_no_op_changes_no_observer_call_and_frames_stay_bounded(
    kernels: list[Kernel], hub: HubServer
) -> None:
    for kernel in kernels:
        kernel.ok("calls = []\nmesh = sync_signal('t7/mesh', GSet())\nmesh.observe(calls.append)")
    before = hub.get("spindel/api/stats")
    writer, others = kernels[0], kernels[1:]
    writer.ok("for i in range(10):\n    mesh.update(lambda s, i=i: s.add(i))")
    converges(kernels, "len(mesh.value)", 10)
    calls = [value_of(kernel, "len(calls)") for kernel in others]
    assert all(1 <= n <= 10 for n in calls)  # at most one per change (changes arriving together: one)
    writer.ok("for i in range(10):\n    mesh.update(lambda s, i=i: s.add(i))")  # nothing new
    time.sleep(1.0)
    assert [value_of(kernel, "len(calls)") for kernel in others] == calls  # no call for a no-op
    after = hub.get("spindel/api/stats")
    relayed = after["changes_relayed"] - before["changes_relayed"]
    received = after["changes_received"] - before["changes_received"]
    assert received <= 20  # the writer's own changes only: no peer re-publishes what it applied
    # Each real change reaches each other peer once (changes arriving together: in one frame).
    assert len(others) <= relayed <= 10 * len(others) and relayed % len(others) == 0


def test_unencodable_value_is_refused_at_set(kernels: list[Kernel]) -> None:
    k1 = kernels[0]
    out = k1.run("bad = sync_signal('t8/bad', 1)\nbad.set(object())")
    assert out.error["ename"] == "EncodeError"
    assert "t8/bad" in out.error["evalue"] and "object" in out.error["evalue"]
    assert value_of(k1, "bad.value") == 1


def test_kind_mismatch_is_a_clear_error(kernels: list[Kernel]) -> None:
    k1, k2 = kernels[:2]
    k1.ok("kinds = sync_signal('t9/kind', ORSet())")
    out = k2.run("sync_signal('t9/kind', 5)")
    assert out.error is not None
    assert "orset" in out.error["evalue"] and "t9/kind" in out.error["evalue"]


def test_widgets_move_together_both_ways(kernels: list[Kernel]) -> None:
    k1, k2 = kernels[:2]
    for kernel in (k1, k2):
        kernel.ok(
            "from ipywidgets import IntSlider, Dropdown\nw = IntSlider()\n"
            "d = Dropdown(options=['a', 'b', 'c'])\n"
            "sw = bind_widget(w, 't10/threshold')\nsd = bind_widget(d, 't10/choice')"
        )
    k1.ok("w.value = 30")
    converges([k2], "w.value", 30)
    k2.ok("w.value = 70\nd.value = 'c'")
    converges([k1], "(w.value, d.value)", (70, "c"))
    k2.ok(
        "label = __import__('ipywidgets').Label()\n"
        "bind_widget(label, 't10/threshold', transform=lambda v: f'{v}%')"
    )
    converges([k2], "label.value", "70%")
    k1.ok("unbind_widget(w)\nw.value = 5")
    time.sleep(0.5)
    assert value_of(k2, "w.value") == 70  # unbound: no longer synced


def test_hub_restart_keeps_state_and_writes_made_while_down(own_hub: HubServer) -> None:
    env = {"SPINDEL_HUB_URL": own_hub.ws_url, "SPINDEL_TOKEN": own_hub.token}
    a, b = (start_kernel({**env, "SPINDEL_PEER": name}) for name in ("east", "west"))
    try:
        for kernel in (a, b):
            kernel.ok(SETUP + "\nfrom spindel_jupyter import sync\ns = sync_signal('r/set', ORSet())")
        a.ok("s.update(lambda v: v.add('before'))\nlast = sync_signal('r/last', 'x')\nlast.set('acked')")
        a.ok("sync.flush()")
        own_hub.kill()
        a.ok("s.update(lambda v: v.add('while down'))")
        own_hub.start()
        wait_until(lambda: sorted(own_hub.peer_names()) == ["east", "west"], timeout=15, what="both back")
        converges([a, b], "sorted(s.value)", ["before", "while down"], timeout=15)
        fresh = start_kernel({**env, "SPINDEL_PEER": "north"})
        try:
            out = fresh.ok(SETUP + "\ns = sync_signal('r/set', ORSet())\nprint(sorted(s.value))")
            assert out.stdout.strip().endswith("['before', 'while down']")
            assert value_of(fresh, "subscribe_signal('r/last').value") == "acked"
        finally:
            fresh.shutdown()
    finally:
        a.shutdown()
        b.shutdown()


def test_custom_crdt_held_by_a_hub_configured_for_it(tmp_path: Path) -> None:
    server = HubServer(tmp_path / "hub", args=("--SpindelHub.crdt_modules=tests.custom_crdt",)).start()
    env = {"SPINDEL_HUB_URL": server.ws_url, "SPINDEL_TOKEN": server.token}
    kernels = [start_kernel({**env, "SPINDEL_PEER": name}) for name in ("hi", "lo")]
    try:
        setup = SETUP + "\nfrom tests.custom_crdt import MaxRegister\nm = sync_signal('c/max', MaxRegister())"
        for kernel in kernels:
            kernel.ok(setup)
        kernels[0].ok("m.update(lambda r: r.set(7))")
        kernels[1].ok("m.update(lambda r: r.set(3))")
        converges(kernels, "m.value.value", 7)
        kinds = {t["name"]: t["kind"] for t in server.get("spindel/api/topics")}
        assert kinds["c/max"] == "maxregister"
    finally:
        for kernel in kernels:
            kernel.shutdown()
        server.stop()
