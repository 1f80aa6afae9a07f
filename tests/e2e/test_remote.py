"""%%spin_remote and @remote between real kernels through a real hub."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import HubServer, Kernel, reply_to, wait_until


@pytest.fixture(scope="module")
def trio(hub: HubServer) -> Iterator[tuple[Kernel, Kernel, Kernel]]:
    """alice calls; bob and carol serve."""
    alice = hub.start_notebook_kernel("remote/alice.ipynb")
    bob = hub.start_notebook_kernel("remote/bob.ipynb")
    carol = hub.start_notebook_kernel("remote/carol.ipynb")
    for kernel in (alice, bob, carol):
        kernel.ok("%load_ext spindel_jupyter")
    bob.ok("%spin_serve\nsecret = 42\nimport time\nimport asyncio")
    carol.ok("%spin_serve\nsecret = 1000\nimport time\nimport asyncio")
    yield alice, bob, carol
    for kernel in (alice, bob, carol):
        kernel.shutdown()


def test_value_comes_back_shown_like_a_local_result(trio: Any) -> None:
    alice, _, _ = trio
    out = alice.ok("x = 3")
    out = alice.ok("%%spin_remote bob x\nx * secret")
    assert out.text().strip() == "126"
    assert alice.ok("_").text().strip() == "126"  # it is the cell's result, as a local one


def test_none_shows_nothing_and_statements_build_remote_state(trio: Any) -> None:
    alice, bob, _ = trio
    out = alice.ok("%%spin_remote bob\nbuilt = [1, 2, 3]")
    assert out.data == [] and out.stdout == ""
    assert bob.ok("built").text().strip() == "[1, 2, 3]"


def test_arguments_do_not_leak_unless_assigned(trio: Any) -> None:
    alice, bob, _ = trio
    alice.ok("visitor = 'from alice'\nkept = 'also from alice'")
    alice.ok("%%spin_remote bob visitor kept\nkept = kept.upper()\nlen(visitor)")
    assert bob.run("visitor").error["ename"] == "NameError"
    assert bob.ok("kept").text().strip() == "'ALSO FROM ALICE'"


def test_name_equals_expression_evaluates_in_the_caller(trio: Any) -> None:
    alice, _, _ = trio
    alice.ok("values = [1, 2, 3, 4]")
    out = alice.ok("%%spin_remote bob n=len(values) total=sum(values)\n(n, total, secret)")
    assert out.text().strip() == "(4, 10, 42)"
    # An expression is one argument, spaces and all, as a user would write it in Python.
    out = alice.ok("%%spin_remote bob part=values[1: 3] s='a b' d={'k': max(1, 2)}\n(part, s, d)")
    assert out.text().strip() == "([2, 3], 'a b', {'k': 2})"


def test_missing_local_argument_is_a_usage_error_before_sending(trio: Any) -> None:
    alice, bob, _ = trio
    out = alice.run("%%spin_remote bob not_defined_here\nran_anyway = True")
    assert out.error["ename"] == "UsageError"
    assert "'not_defined_here' is not defined here" in out.error["evalue"]
    assert bob.run("ran_anyway").error["ename"] == "NameError"


def test_unbound_names_are_all_listed_and_nothing_runs(trio: Any) -> None:
    alice, bob, _ = trio
    out = alice.run(
        "%%spin_remote bob\nside_effect = 1\nprint('started')\n[f(v) for v in nowhere] + [secret, elsewhere]"
    )
    assert out.error["ename"] == "UnboundNames"
    message = out.error["evalue"]
    assert "'elsewhere', 'f', 'nowhere'" in message
    assert "pass them as arguments (%%spin_remote bob elsewhere f nowhere) or define them on bob" in message
    assert "started" not in out.stdout
    assert bob.run("side_effect").error["ename"] == "NameError"


def test_remote_exception_fails_the_cell_with_the_remote_traceback(trio: Any) -> None:
    alice, _, _ = trio
    out = alice.run("%%spin_remote bob\ndef inner():\n    raise ValueError('boom from bob')\ninner()")
    assert out.error["ename"] == "RemoteError"
    trace = "\n".join(out.error["traceback"])
    assert "RemoteError from peer 'bob'" in trace
    assert "raise ValueError('boom from bob')" in trace and "in inner" in trace
    assert "ValueError: boom from bob" in trace
    assert trace.count("ValueError: boom from bob") == 1
    assert "spindel_jupyter" not in trace  # only the user's frames


def test_output_streams_while_the_call_runs(trio: Any) -> None:
    alice, _, _ = trio
    arrivals: list[tuple[float, str]] = []

    def hook(msg: dict[str, Any]) -> None:
        if msg["header"]["msg_type"] == "stream":
            arrivals.append((time.monotonic(), msg["content"]["text"]))

    started = time.monotonic()
    code = "%%spin_remote bob\nprint('first', flush=True)\ntime.sleep(1.5)\nprint('second')"
    alice.client.execute_interactive(code, output_hook=hook, timeout=30)
    ended = time.monotonic()
    text = "".join(t for _, t in arrivals)
    assert "first" in text and "second" in text
    first_at = next(at for at, t in arrivals if "first" in t)
    assert ended - first_at > 1.0, "the first line arrived well before the call ended"
    assert first_at - started < ended - started - 1.0


def test_stderr_and_display_stream_back(trio: Any) -> None:
    alice, _, _ = trio
    out = alice.ok(
        "%%spin_remote bob\nimport sys\nprint('careful', file=sys.stderr)\n"
        "from IPython.display import display, HTML\ndisplay(HTML('<b>bold from bob</b>'))"
    )
    assert "careful" in out.stderr
    assert "<b>bold from bob</b>" in out.html()


def test_contexts_default_and_named(trio: Any) -> None:
    alice, bob, _ = trio
    bob.ok(
        "from spindel_jupyter import register_context\n"
        "register_context('ctx-a', {'who': 'a'})\nregister_context('ctx-b', {'who': 'b'})\nwho = 'default'"
    )
    out = alice.run("%%spin_remote bob/ctx-z\nwho")
    assert out.error is not None and out.error["ename"] == "NotServed"
    assert "does not serve context 'ctx-z'" in out.error["evalue"] and "ctx-a" in out.error["evalue"]
    assert alice.ok("%%spin_remote bob/ctx-a\nwho").text().strip() == "'a'"
    assert alice.ok("%%spin_remote bob/ctx-b\nwho").text().strip() == "'b'"
    assert alice.ok("%%spin_remote bob\nwho").text().strip() == "'default'"
    peers = alice.ok("%spin_peers").text()
    assert "ctx-a" in peers and "ctx-b" in peers


def test_fork_context_isolation(trio: Any) -> None:
    alice, bob, _ = trio
    bob.ok(
        "from spindel_jupyter import fork_context, register_context\n"
        "base = register_context('base', {'n': 1, 'shared': []})\nfork_context('base', 'fork')\n"
        "%spin_serve --context base\n%spin_serve --context fork"
    )
    alice.ok("%%spin_remote bob/fork\nn = 2\nshared.append('from fork')")
    assert alice.ok("%%spin_remote bob/base\nn").text().strip() == "1"
    assert alice.ok("%%spin_remote bob/fork\nn").text().strip() == "2"
    assert alice.ok("%%spin_remote bob/base\nshared").text().strip() == "['from fork']"


def test_numpy_array_round_trip(trio: Any) -> None:
    alice, _, _ = trio
    alice.ok("import numpy as np\na = np.arange(12.0).reshape(3, 4)")
    alice.ok("%%spin_remote bob a -o doubled\na * 2")
    out = alice.ok("print(type(doubled).__name__, doubled.dtype, doubled.shape, (doubled == a * 2).all())")
    assert out.stdout.strip() == "ndarray float64 (3, 4) True"


def test_output_variable_stores_instead_of_showing(trio: Any) -> None:
    alice, _, _ = trio
    out = alice.ok("%%spin_remote bob -o answer\nsecret + 1")
    assert out.data == []
    assert alice.ok("answer").text().strip() == "43"


def test_remote_figure_is_displayed_as_an_image(trio: Any) -> None:
    alice, _, _ = trio
    out = alice.ok(
        "%%spin_remote bob\nimport matplotlib.pyplot as plt\n"
        "fig, ax = plt.subplots(figsize=(2, 2))\nax.plot([1, 3, 2])\nfig"
    )
    assert any("image/png" in d for d in out.data)


def test_unsendable_result_shows_its_rich_display_and_refuses_output_var(trio: Any) -> None:
    alice, bob, _ = trio
    bob.ok(
        "class Report:\n"
        "    def _repr_html_(self):\n        return '<table><tr><td>report</td></tr></table>'\n"
        "    def __repr__(self):\n        return 'Report()'"
    )
    out = alice.ok("%%spin_remote bob\nReport()")
    assert "<td>report</td>" in out.html()
    out = alice.run("%%spin_remote bob -o r\nReport()")
    assert out.error["ename"] == "UsageError"
    assert "Report" in out.error["evalue"] and "cannot be sent back" in out.error["evalue"]


def test_remote_function_sync_and_awaitable_and_gather(trio: Any) -> None:
    alice, _, _ = trio
    alice.ok(
        "from spindel_jupyter import remote, call\n"
        "import asyncio\n"
        "@remote('bob')\ndef scaled(v: int, k: int = 2) -> int:\n    return v * k + secret\n"
        "async def later(v):\n    await asyncio.sleep(1.0)\n    return v + secret\n"
        "on_bob, on_carol = remote('bob')(later), remote('carol')(later)\n"
    )
    assert alice.ok("scaled(1)").text().strip() == "44"
    assert alice.ok("await scaled.aio(1, k=10)").text().strip() == "52"
    start = alice.ok("import time\nt0 = time.monotonic()")
    out = alice.ok("r = await asyncio.gather(on_bob.aio(1), on_carol.aio(2))\nr, time.monotonic() - t0")
    result, elapsed = eval(out.text().strip())
    assert result == [43, 1002]
    assert elapsed < 1.8  # two 1-second calls on two peers ran at the same time
    assert start.error is None
    assert (
        alice.ok("def plus(a, b):\n    return a + b + secret\ncall('bob', plus, 1, b=2)").text().strip()
        == "45"
    )
    # a remote function, sent somewhere else
    assert alice.ok("call('carol', scaled, 1)").text().strip() == "1002"


def test_remote_function_globals_must_resolve_remotely(trio: Any) -> None:
    alice, _, _ = trio
    out = alice.run(
        "local_only = 5\n@remote('bob')\ndef uses_local():\n    return local_only + secret\nuses_local()"
    )
    assert out.error["ename"] == "UnboundNames"
    assert "'local_only'" in out.error["evalue"]


def test_unknown_peer_fails_at_once_listing_peers(trio: Any) -> None:
    alice, _, _ = trio
    started = time.monotonic()
    out = alice.run("%%spin_remote nobody\n1")
    assert time.monotonic() - started < 2
    assert out.error["ename"] == "PeerNotFound"
    assert "'nobody'" in out.error["evalue"] and "bob" in out.error["evalue"]


def test_timeout_interrupts_the_remote_then_it_serves_again(trio: Any) -> None:
    alice, bob, _ = trio
    started = time.monotonic()
    out = alice.run(
        "%%spin_remote bob --timeout 1\nfor i in range(100):\n    time.sleep(0.1)\nfinished = True"
    )
    assert out.error["ename"] == "RemoteTimeout"
    assert 1 <= time.monotonic() - started < 3
    assert alice.ok("%%spin_remote bob\nsecret").text().strip() == "42"
    assert bob.run("finished").error["ename"] == "NameError"  # it was interrupted, not left running


def test_callers_interrupt_button_interrupts_the_remote(trio: Any, hub: HubServer) -> None:
    alice, bob, _ = trio
    msg_id = alice.client.execute("%%spin_remote bob\ntime.sleep(30)\nslept = True")
    time.sleep(1.0)
    hub.request("POST", f"api/kernels/{alice.kernel_id}/interrupt")
    reply = alice.client.get_shell_msg(timeout=10)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = alice.client.get_shell_msg(timeout=10)
    assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
    started = time.monotonic()
    assert alice.ok("%%spin_remote bob\nsecret").text().strip() == "42"
    assert time.monotonic() - started < 5
    assert bob.run("slept").error["ename"] == "NameError"


def test_call_into_a_busy_kernel_is_queued_and_reported(trio: Any) -> None:
    alice, bob, _ = trio
    bob.client.execute("time.sleep(2)\nbusy_done = time.monotonic()")
    time.sleep(0.3)
    out = alice.ok("%%spin_remote bob\ntime.monotonic() - busy_done")
    assert "queued" in out.text() + out.html()
    assert float(out.data[-1]["text/plain"]) >= 0  # ran after bob's own cell finished
    bob.client.get_shell_msg(timeout=10)


def test_serving_is_opt_in_and_respects_the_allow_list(hub: HubServer, trio: Any) -> None:
    alice, _, _ = trio
    dave = hub.start_notebook_kernel("remote/dave.ipynb")
    try:
        dave.ok("%load_ext spindel_jupyter\nprivate = 1")
        out = alice.run("%%spin_remote dave\nprivate")
        assert "dave' does not serve remote calls; run %spin_serve there" in out.error["evalue"]
        dave.ok("%spin_serve --allow carol")
        out = alice.run("%%spin_remote dave\nprivate")
        assert out.error["ename"] == "NotServed"
        assert "does not serve calls from 'alice'" in out.error["evalue"]
        dave.ok("%spin_serve --allow carol,alice")
        assert alice.ok("%%spin_remote dave\nprivate").text().strip() == "1"
        dave.ok("%spin_unserve")
        out = alice.run("%%spin_remote dave\nprivate")
        assert "does not serve remote calls" in out.error["evalue"]
    finally:
        dave.shutdown()


def test_serving_kernel_killed_mid_call_gives_peer_lost_within_2s(hub: HubServer, trio: Any) -> None:
    alice, _, _ = trio
    eve = hub.start_notebook_kernel("remote/eve.ipynb")
    try:
        eve.ok("%load_ext spindel_jupyter\n%spin_serve")
        pid = eve.pid()
        msg_id = alice.client.execute("%%spin_remote eve\nimport time\ntime.sleep(60)")
        time.sleep(1.0)
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        reply = wait_until(lambda: reply_to(alice, msg_id), timeout=10, what="alice's reply")
        assert time.monotonic() - killed < 2
        assert reply["content"]["ename"] == "PeerLost"
    finally:
        eve.shutdown()


def test_top_level_await_and_a_progress_line_for_long_calls(trio: Any) -> None:
    alice, _, _ = trio
    out = alice.ok("%%spin_remote bob\nimport asyncio\nawait asyncio.sleep(3.5)\n'awaited'")
    assert out.data[-1]["text/plain"] == "'awaited'"
    shown = out.text() + out.html()
    assert "running on bob" in shown  # a call past a few seconds says it is still running
