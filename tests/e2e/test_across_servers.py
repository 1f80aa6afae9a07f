"""Remote calls between kernels of two Jupyter servers whose hubs joined over a real nats-server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from spindel_jupyter.peer.client import Peer
from tests.support import HubServer, Kernel, NatsServer, converges, meshed, reply_to, value_of, wait_until


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Hubs A, B and C in one mesh; alice (a kernel on A) calls bob (a kernel on B, serving alice@A)."""
    kernels: list[Kernel] = []
    with meshed(tmp_path_factory.mktemp("mesh"), "ABC") as (nats, servers):
        try:
            alice = servers["A"].start_notebook_kernel("alice.ipynb")
            bob = servers["B"].start_notebook_kernel("bob.ipynb")
            kernels += [alice, bob]
            alice.ok("%load_ext spindel_jupyter")
            bob.ok("%load_ext spindel_jupyter\n%spin_serve --allow alice@A\nsecret = 42\nimport time")
            wait_until(
                lambda: (
                    ("bob", "B") in {(p["name"], p["hub"]) for p in servers["A"].get("spindel/api/peers")}
                ),
                timeout=20,
                what="bob of B listed on A",
            )
            yield {"alice": alice, "bob": bob, "nats": nats, **servers}
        finally:
            for kernel in kernels:
                kernel.shutdown()


def test_a_cell_runs_on_a_kernel_of_another_server(mesh: dict[str, Any]) -> None:
    alice = mesh["alice"]
    alice.ok("x = 3")
    assert alice.ok("%%spin_remote bob@B x\nx * secret").text().strip() == "126"
    assert alice.ok("_").text().strip() == "126"


def test_a_bare_name_finds_the_only_peer_of_that_name_in_the_mesh(mesh: dict[str, Any]) -> None:
    alice = mesh["alice"]
    out = alice.ok("%%spin_remote bob\nprint('from', 'bob')\nsecret + 1")
    assert out.stdout == "from bob\n"
    assert out.text().strip() == "43"


def test_remote_functions_call_and_contexts_work_across_servers(mesh: dict[str, Any]) -> None:
    alice, bob = mesh["alice"], mesh["bob"]
    bob.ok("from spindel_jupyter import register_context\nregister_context('lab', {'owner': 'the lab'})")
    alice.ok(
        "from spindel_jupyter import remote, call\n"
        "@remote('bob@B')\ndef scaled(v: int, k: int = 2) -> int:\n    return v * k + secret\n"
    )
    assert alice.ok("scaled(1)").text().strip() == "44"
    assert alice.ok("await scaled.aio(1, k=10)").text().strip() == "52"
    assert (
        alice.ok("def plus(a, b):\n    return a + b + secret\ncall('bob@B', plus, 1, b=2)").text().strip()
        == "45"
    )
    assert alice.ok("%%spin_remote bob@B/lab\nowner").text().strip() == "'the lab'"
    peers = alice.ok("%spin_peers").html()
    assert "bob" in peers and ">B<" in peers and "lab" in peers


def test_output_errors_and_rich_results_come_across(mesh: dict[str, Any]) -> None:
    alice = mesh["alice"]
    out = alice.ok(
        "%%spin_remote bob@B\nimport sys\nfrom IPython.display import HTML, display\n"
        "print('to stdout')\nprint('to stderr', file=sys.stderr)\ndisplay(HTML('<b>bold</b>'))\n"
    )
    assert out.stdout == "to stdout\n" and "to stderr" in out.stderr
    assert "<b>bold</b>" in out.html()
    failed = alice.run("%%spin_remote bob@B\ndef inner():\n    raise ValueError('deep down')\ninner()")
    assert failed.error["ename"] == "RemoteError"
    assert "ValueError" in failed.error["evalue"] and "deep down" in failed.error["evalue"]
    assert any("inner()" in line for line in failed.error["traceback"])


def test_a_value_over_the_nats_payload_limit_crosses_in_chunks(mesh: dict[str, Any]) -> None:
    alice = mesh["alice"]
    alice.ok("blob = bytes(range(256)) * 12_000")  # 3 MB: three times NATS's default payload limit
    out = alice.ok(
        "%%spin_remote bob@B blob\nimport hashlib\n(len(blob), hashlib.sha256(blob).hexdigest(), blob)"
    )
    alice.ok("import hashlib\nexpected = (len(blob), hashlib.sha256(blob).hexdigest(), blob)")
    assert alice.ok("_ == expected").text().strip() == "True"
    assert out.error is None
    stats = mesh["A"].get("spindel/api/stats")["mesh"]
    assert stats["bytes_in"] >= 3_000_000 and stats["bytes_out"] >= 3_000_000


def test_a_timeout_interrupts_the_code_on_the_other_server(mesh: dict[str, Any]) -> None:
    alice, bob = mesh["alice"], mesh["bob"]
    started = time.monotonic()
    out = alice.run(
        "%%spin_remote bob@B --timeout 1\nfor i in range(100):\n    time.sleep(0.1)\nfinished = True"
    )
    assert out.error["ename"] == "RemoteTimeout"
    assert 1 <= time.monotonic() - started < 3
    assert alice.ok("%%spin_remote bob@B\nsecret").text().strip() == "42"  # it serves again at once
    assert bob.run("finished").error["ename"] == "NameError"  # interrupted there, not left running


def test_the_callers_interrupt_button_interrupts_the_code_on_the_other_server(mesh: dict[str, Any]) -> None:
    alice, bob = mesh["alice"], mesh["bob"]
    msg_id = alice.client.execute("%%spin_remote bob@B\ntime.sleep(30)\nslept = True")
    time.sleep(1.0)
    mesh["A"].request("POST", f"api/kernels/{alice.kernel_id}/interrupt")
    reply = alice.client.get_shell_msg(timeout=10)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = alice.client.get_shell_msg(timeout=10)
    assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
    assert alice.ok("%%spin_remote bob@B\nsecret").text().strip() == "42"  # bob is free again
    assert bob.run("slept").error["ename"] == "NameError"  # interrupted there


def test_an_unknown_peer_fails_at_once_naming_the_mesh_peers(mesh: dict[str, Any]) -> None:
    alice = mesh["alice"]
    for target in ("nobody", "nobody@B", "bob@Z"):
        started = time.monotonic()
        out = alice.run(f"%%spin_remote {target}\n1")
        assert time.monotonic() - started < 2
        assert out.error["ename"] == "PeerNotFound", out.error
        assert f"'{target}'" in out.error["evalue"] and "bob@B" in out.error["evalue"]


def test_an_ambiguous_name_lists_the_qualified_ones(mesh: dict[str, Any]) -> None:
    alice, c = mesh["alice"], mesh["C"]
    other = Peer(c.ws_url, "bob", c.token).start()
    try:
        wait_until(
            lambda: ("bob", "C") in {(p["name"], p["hub"]) for p in mesh["A"].get("spindel/api/peers")},
            timeout=20,
            what="the second bob listed on A",
        )
        out = alice.run("%%spin_remote bob\nsecret")
        assert out.error["ename"] == "AmbiguousPeer"
        assert "bob@B, bob@C" in out.error["evalue"]
        assert alice.ok("%%spin_remote bob@B\nsecret").text().strip() == "42"
    finally:
        other.close()


def test_a_peer_of_another_hub_is_served_only_when_allowed_by_name(mesh: dict[str, Any]) -> None:
    alice, bob = mesh["alice"], mesh["bob"]
    try:
        bob.ok("%spin_serve --allow '*'")
        out = alice.run("%%spin_remote bob@B\nsecret")
        assert out.error["ename"] == "NotServed"
        assert "a peer of another hub" in out.error["evalue"]
        assert "%spin_serve --allow *,alice@A" in out.error["evalue"]
    finally:
        bob.ok("%spin_serve --allow alice@A")
    assert alice.ok("%%spin_remote bob@B\nsecret").text().strip() == "42"


SYNC = "from spindel_jupyter import *\nfrom spindel_jupyter.core.crdt import *"


def test_a_crdt_topic_synced_on_two_servers_converges(mesh: dict[str, Any]) -> None:
    alice, bob = mesh["alice"], mesh["bob"]
    for kernel in (alice, bob):
        kernel.ok(
            f"{SYNC}\ncount = sync_signal('x/count', PNCounter())\ntags = sync_signal('x/tags', ORSet())"
        )
    alice.ok(
        "for _ in range(30):\n    count.update(lambda c: c.increment())\ntags.update(lambda s: s.add('a'))"
    )
    bob.ok(
        "for _ in range(12):\n    count.update(lambda c: c.increment())\ntags.update(lambda s: s.add('b'))"
    )
    converges([alice, bob], "int(count.value)", 42)
    converges([alice, bob], "sorted(tags.value)", ["a", "b"])
    bob.ok("tags.update(lambda s: s.remove('a'))")
    converges([alice, bob], "sorted(tags.value)", ["b"])
    # The hubs hold it too: a late joiner on a third server gets it at once.
    carol = mesh["C"].start_notebook_kernel("carol.ipynb")
    try:
        out = carol.ok(
            f"%load_ext spindel_jupyter\n{SYNC}\nm = subscribe_signal('x/count')\nprint(int(m.value))"
        )
        assert out.stdout.strip().splitlines()[-1] == "42"
    finally:
        carol.shutdown()


def test_plain_values_end_equal_on_both_servers_by_their_clocks(mesh: dict[str, Any]) -> None:
    alice, bob = mesh["alice"], mesh["bob"]
    for kernel in (alice, bob):
        kernel.ok(f"{SYNC}\nlevel = sync_signal('x/level', 0)")
    ids = [
        k.client.execute(f"for v in range(100):\n    level.set(({i}, v))") for i, k in enumerate((alice, bob))
    ]
    for kernel, _ in zip((alice, bob), ids, strict=True):
        kernel.client.get_shell_msg(timeout=30)
    wait_until(
        lambda: value_of(alice, "level.value") == value_of(bob, "level.value"),
        timeout=15,
        what="equal values",
    )
    assert value_of(alice, "level.value")[1] == 99  # the last write of one of them


def test_a_change_that_adds_nothing_fires_no_observer_on_the_other_server(mesh: dict[str, Any]) -> None:
    alice, bob = mesh["alice"], mesh["bob"]
    for kernel in (alice, bob):
        kernel.ok(f"{SYNC}\ncalls = []\nseen = sync_signal('x/seen', GSet())\nseen.observe(calls.append)")
    wait_until(lambda: topic(mesh["B"], "x/seen")["subscribers"] == 1, timeout=10, what="bob following")
    before_a, before_b = stats(mesh["A"]), stats(mesh["B"])
    alice.ok("for i in range(5):\n    seen.update(lambda s, i=i: s.add(i))")
    converges([bob], "len(seen.value)", 5)
    calls = value_of(bob, "len(calls)")
    assert 1 <= calls <= 5
    alice.ok("for i in range(5):\n    seen.update(lambda s, i=i: s.add(i))")  # nothing new
    time.sleep(1.0)
    assert value_of(bob, "len(calls)") == calls
    after_a, after_b = stats(mesh["A"]), stats(mesh["B"])
    # At most one NATS message per write, and each change reaches each follower on B once.
    assert 1 <= after_a["mesh"]["changes_out"] - before_a["mesh"]["changes_out"] <= 5
    applied = after_b["mesh"]["changes_applied"] - before_b["mesh"]["changes_applied"]
    assert after_b["changes_relayed"] - before_b["changes_relayed"] == applied  # bob is B's one follower
    assert calls <= applied  # changes arriving together: one observer call


def test_both_wrote_before_syncing_on_two_servers_end_with_the_union(mesh: dict[str, Any]) -> None:
    alice, bob = mesh["alice"], mesh["bob"]
    alice.ok(f"{SYNC}\nearly = GSet().add('from alice').add('both')\ns = sync_signal('x/early', early)")
    wait_until(lambda: topic(mesh["B"], "x/early"), timeout=10, what="B to hold alice's state")
    out = bob.ok(
        f"{SYNC}\nearly = GSet().add('from bob').add('both')\ns = sync_signal('x/early', early)\n"
        "print(sorted(s.value))"
    )
    assert out.stdout.strip().splitlines()[-1] == "['both', 'from alice', 'from bob']"  # one round trip
    converges([alice], "sorted(s.value)", ["both", "from alice", "from bob"])


def stats(hub: HubServer) -> dict[str, Any]:
    return dict(hub.get("spindel/api/stats"))


def topic(hub: HubServer, name: str) -> dict[str, Any]:
    return next((t for t in hub.get("spindel/api/topics") if t["name"] == name), {})


def test_a_server_killed_mid_call_gives_peer_lost_within_3_s(nats: NatsServer, servers: Any) -> None:
    a = servers("A", f"--SpindelHub.nats_url={nats.url}")
    b = servers("B", f"--SpindelHub.nats_url={nats.url}")
    alice = a.start_notebook_kernel("alice.ipynb")
    bob = b.start_notebook_kernel("bob.ipynb")
    try:
        alice.ok("%load_ext spindel_jupyter")
        bob.ok("%load_ext spindel_jupyter\n%spin_serve --allow alice@A")
        wait_until(lambda: "bob" in a.peer_names(), timeout=20, what="bob of B listed on A")
        msg_id = alice.client.execute("%%spin_remote bob@B\nimport time\ntime.sleep(60)")
        time.sleep(1.5)
        b.kill()
        killed = time.monotonic()
        reply = wait_until(lambda: reply_to(alice, msg_id), timeout=15, what="alice's reply")
        assert time.monotonic() - killed <= 3.0
        assert reply["content"]["ename"] == "PeerLost"
        assert "left the mesh" in reply["content"]["evalue"]
    finally:
        alice.shutdown()
        bob.shutdown()
