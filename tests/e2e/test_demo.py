"""The demo helpers on a shared server's hub: names that stay free, kernels that do not linger,
waits that say what they waited for."""

from __future__ import annotations

import os
import signal
import time

from tests.support import HubServer, Kernel

SETUP = "%load_ext spindel_jupyter\nfrom spindel_jupyter import demo\n"


def notebook(hub: HubServer, path: str) -> Kernel:
    kernel = hub.start_notebook_kernel(path)
    kernel.ok(SETUP)
    return kernel


def test_start_peer_replaces_its_own_and_refuses_a_name_that_another_notebook_holds(hub: HubServer) -> None:
    first, second = notebook(hub, "demo-first.ipynb"), notebook(hub, "demo-second.ipynb")
    try:
        first.ok("helper = demo.start_peer('demo-helper')")
        started = time.monotonic()
        out = second.run("demo.start_peer('demo-helper')")
        assert time.monotonic() - started < 5  # no kernel started to find out
        assert out.error is not None and out.error["ename"] == "NameTaken"
        assert (
            "a peer named 'demo-helper' is already connected to this hub: "
            "the demo kernel that demo-first.ipynb started" in out.error["evalue"]
        )
        assert "demo.start_peer('demo-helper-2')" in out.error["evalue"]

        # The same notebook starting it again gets a new one; the old handle says what happened.
        out = first.ok("again = demo.start_peer('demo-helper')\nprint(helper, again)")
        assert out.stdout.strip() == "<DemoPeer 'demo-helper' (stopped)> <DemoPeer 'demo-helper'>"
        assert hub.peer_names().count("demo-helper") == 1
        out = first.run("helper.run('1')")
        assert out.error is not None
        assert "'demo-helper' was stopped: start it again with demo.start_peer" in out.error["evalue"]

        # A notebook's kernel that dies takes its demo kernel along: the name is free again.
        os.kill(first.pid(), signal.SIGKILL)
        second.ok("helper = demo.start_peer('demo-helper')\nhelper.run('print(1 + 1)')")
        second.ok("helper.stop()")
        assert "demo-helper" not in hub.peer_names()  # gone once stop() returns
    finally:
        first.shutdown()
        second.shutdown()


def test_a_name_held_by_no_demo_kernel_is_refused_saying_so(hub: HubServer) -> None:
    holder, other = notebook(hub, "demo-holder.ipynb"), notebook(hub, "demo-other.ipynb")
    try:
        out = other.run("demo.start_peer('demo-holder')")
        assert out.error is not None and out.error["ename"] == "NameTaken"
        assert "a notebook's kernel or a script (no demo kernel)" in out.error["evalue"]
    finally:
        holder.shutdown()
        other.shutdown()


def test_waits_say_what_they_waited_for_and_what_they_saw_last(hub: HubServer) -> None:
    kernel = notebook(hub, "demo-waits.ipynb")
    try:
        out = kernel.run("x = 2\nawait demo.wait_until(lambda: x == 1, timeout=0.2)")
        assert out.error is not None
        assert out.error["evalue"] == "still waiting after 0.2 s for x == 1; last seen: x = 2"
        out = kernel.run("items = [1]\nawait demo.wait_until(lambda: len(items) > 2 and 'a' in items, 0.2)")
        assert out.error is not None
        assert out.error["evalue"].endswith("; last seen: len(items) = 1, items = [1]")
        kernel.ok("helper = demo.start_peer('demo-waiter')\nhelper.run('w = 2')")
        out = kernel.run("helper.wait_for('w == 3', timeout=0.2)")
        assert out.error is not None
        assert out.error["evalue"] == "on demo-waiter: still waiting after 0.2 s for w == 3; last seen: w = 2"
        kernel.ok("helper.stop()")
    finally:
        kernel.shutdown()


def test_fresh_name_skips_names_the_hub_keeps(hub: HubServer) -> None:
    kernel = notebook(hub, "demo-fresh.ipynb")
    try:
        assert kernel.ok("print(demo.fresh_name('fresh-demo'))").stdout.strip() == "fresh-demo"
        kernel.ok(
            "import spindel_jupyter.peer.sync as sync\n"
            "signal = sync.sync_signal('fresh-demo/x', 0)\n"
            "signal.set(1)\n"
            "sync.flush()"
        )
        assert kernel.ok("print(demo.fresh_name('fresh-demo'))").stdout.strip() == "fresh-demo-2"
        kernel.ok("demo.write_notebook('fresh-files/fresh-demo-2.ipynb', ['1'])")
        out = kernel.ok("print(demo.fresh_name('fresh-demo', folder='fresh-files'))")
        assert out.stdout.strip() == "fresh-demo-3"
    finally:
        kernel.shutdown()
