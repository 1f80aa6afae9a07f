"""The JupyterLab extension in a real browser: the Spindel panel, live, against real kernels; and
the demo notebooks, run again and again in the lab that ``make demo`` starts.

Drives Debian's chromium through pip ``playwright`` (no browser download). The
test fails, never skips, when chromium is missing: CI installs it.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import re
import subprocess
import sys
import time
import urllib.error
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from spindel_jupyter.peer.client import Peer
from tests.support import BASE_URL, REPO, HubServer, Kernel, NatsServer, wait_until

ARTIFACTS = REPO / "test-artifacts"
DEMOS = REPO / "demo_notebooks"
TOPIC = "lab/threshold"
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
BIND = (
    "from ipywidgets import IntSlider\n"
    "from spindel_jupyter import bind_widget\n"
    "w = IntSlider(description='threshold')\n"
    f"signal = bind_widget(w, {TOPIC!r})\n"
)


class LabServer(HubServer):
    """``jupyter lab`` instead of ``jupyter server``: same dirs, port, token and base URL as HubServer."""

    def start(self) -> LabServer:
        # No "get Jupyter news?" toast over the page.
        settings = self.root / "user-settings" / "@jupyterlab" / "apputils-extension"
        settings.mkdir(parents=True, exist_ok=True)
        (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
        cmd = [
            sys.executable,
            "-m",
            "jupyterlab",
            "--allow-root",
            "--no-browser",
            f"--port={self.port}",
            "--port-retries=0",
            "--ip=127.0.0.1",
            f"--ServerApp.base_url={BASE_URL}",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.notebooks}",
            f"--LabApp.workspaces_dir={self.root / 'workspaces'}",
            f"--LabApp.user_settings_dir={self.root / 'user-settings'}",
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            f"--SpindelHub.store_dir={self.root / 'store'}",
            *self.args,
        ]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(cmd, env=self.env(), stdout=log, stderr=subprocess.STDOUT)
        wait_until(self._ready, timeout=30, what=f"jupyter lab on port {self.port} (log: {self.log_path})")
        return self

    def create_notebook(self, path: str, cells: list[dict[str, Any]] | None = None) -> None:
        content = {
            "cells": cells or [],
            "metadata": {"kernelspec": KERNELSPEC},
            "nbformat": 4,
            "nbformat_minor": 5,
        }
        self.save_notebook(path, content)

    def save_notebook(self, path: str, content: dict[str, Any]) -> None:
        """A save through the contents API, as the lab makes it (a published notebook republishes)."""
        self.request("PUT", f"api/contents/{path}", {"type": "notebook", "content": content})

    def notebook(self, path: str) -> dict[str, Any]:
        return self.get(f"api/contents/{path}?type=notebook&content=1")["content"]

    def saved_notebook(self, path: str) -> dict[str, Any]:
        """The notebook once a save under way is complete (the server writes the file in place)."""

        def readable() -> dict[str, Any] | None:
            try:
                return self.notebook(path)
            except urllib.error.HTTPError as exc:
                if exc.code == 400:  # read halfway through the save
                    return None
                raise

        return dict(wait_until(readable, timeout=20, what=f"{path} readable after its save"))

    def exists(self, path: str) -> bool:
        try:
            self.get(f"api/contents/{path}?content=0")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return False
            raise
        return True

    def workspace(self, name: str) -> dict[str, Any]:
        return self.get(f"spindel/api/workspaces/{name}")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[LabServer]:
    server = LabServer(tmp_path / "lab").start()
    yield server
    server.stop()


def run_cell(page: Page, code: str) -> None:
    """Type ``code`` into the notebook's last cell and run it with Shift+Enter."""
    editor = page.locator(".jp-Notebook .jp-CodeCell").last.locator(".cm-content")
    editor.click()
    page.keyboard.insert_text(code)
    page.keyboard.press("Shift+Enter")


@contextmanager
def browsing(browser: Browser, lab: LabServer, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh page; it must end with no script errors in it. On failure: a screenshot of the page
    and the tail of the server's log."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
        assert not errors, f"errors in the page: {errors}"
    except BaseException:
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / f"{request.node.name}-failure.png"
        page.screenshot(path=str(shot))
        sys.stderr.write(f"screenshot: {shot}\nserver log tail:\n{lab.log_path.read_text()[-3000:]}\n")
        raise
    finally:
        context.close()


def code_cell(cell_id: str, source: str) -> dict[str, Any]:
    return {
        "cell_type": "code",
        "id": cell_id,
        "metadata": {},
        "source": source,
        "outputs": [],
        "execution_count": None,
    }


def with_source(notebook: dict[str, Any], cell_id: str, source: str) -> dict[str, Any]:
    """``notebook`` with the source of the cell ``cell_id`` replaced."""
    for cell in notebook["cells"]:
        if cell.get("id") == cell_id:
            cell["source"] = source
            return notebook
    raise AssertionError(f"no cell {cell_id!r} in {[c.get('id') for c in notebook['cells']]}")


def sources(notebook: dict[str, Any]) -> str:
    return "\n".join(
        c["source"] if isinstance(c["source"], str) else "".join(c["source"]) for c in notebook["cells"]
    )


def show_panel(page: Page) -> Any:
    """Show the Spindel panel from its sidebar tab (the palette is the other test's way)."""
    page.get_by_role("tab", name="Spindel").click()
    panel = page.locator("#spindel-panel")
    expect(panel).to_be_visible()
    return panel


def value_of(kernel: Kernel, expression: str) -> Any:
    return json.loads(kernel.ok(f"import json; print(json.dumps({expression}))").stdout.strip())


def test_panel_shows_peers_and_topics_live_and_the_slider_syncs(
    lab: LabServer, browser: Browser, request: pytest.FixtureRequest
) -> None:
    for name in ("a.ipynb", "b.ipynb"):
        lab.create_notebook(name)
    with browsing(browser, lab, request) as page, ExitStack() as cleanup:
        page.goto(f"{lab.http_url}lab?reset&token={lab.token}")
        status = page.locator(".jp-SpindelStatus")
        expect(status).to_have_text("Spindel: 1 peer", timeout=30_000)  # the page itself, connected

        # Notebook A, in the page: open it, wait for its kernel, bind a slider.
        page.locator(".jp-DirListing-item", has_text="a.ipynb").dblclick()
        expect(page.locator("#jp-main-statusbar")).to_contain_text("Idle", timeout=30_000)
        run_cell(page, "%load_ext spindel_jupyter")
        run_cell(page, BIND + "w")
        slider = page.locator(".jp-OutputArea .widget-slider")
        expect(slider).to_be_visible(timeout=20_000)

        # Notebook B: its kernel started through the server, driven over its connection file.
        kernel_b = lab.start_notebook_kernel("b.ipynb")
        cleanup.callback(kernel_b.shutdown)
        kernel_b.ok("%load_ext spindel_jupyter\n" + BIND)

        # The panel, opened from the command palette, lists both kernels and the topic.
        page.keyboard.press("Control+Shift+C")
        page.keyboard.type("Spindel: Show panel")
        page.keyboard.press("Enter")
        panel = page.locator("#spindel-panel")
        expect(panel).to_be_visible()
        expect(panel.locator(".jp-SpindelPanel-reconnect")).to_be_focused()  # keyboard users land in it
        expect(panel.locator(".jp-SpindelPanel-status")).to_contain_text("Connected as lab-")
        peer_a = panel.locator('[data-peer="a"]')
        peer_b = panel.locator('[data-peer="b"]')
        expect(peer_a).to_contain_text("(this notebook)", timeout=10_000)
        expect(peer_a).to_contain_text("kernel")
        expect(peer_b).to_be_visible(timeout=10_000)
        expect(peer_b).not_to_contain_text("(this notebook)")
        expect(status).to_have_text("Spindel: 3 peers")
        topic = panel.locator(f'[data-topic="{TOPIC}"]')
        expect(topic).to_contain_text("LWW", timeout=10_000)
        expect(topic).to_contain_text("2 subscribers")

        # Moving the slider in the page (keyboard) moves kernel B's slider.
        handle = slider.locator(".noUi-handle")
        handle.focus()
        for _ in range(5):
            handle.press("ArrowRight")
        expect(slider.locator(".widget-readout")).to_have_text("5")
        wait_until(
            lambda: value_of(kernel_b, "w.value") == 5, timeout=10, interval=0.1, what="B's slider at 5"
        )
        expect(topic.locator(".jp-SpindelPanel-summary")).to_have_text("5")  # pushed, not polled
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "lab-panel.png"))
        panel.screenshot(path=str(ARTIFACTS / "lab-panel-closeup.png"))

        # B leaves: the panel drops it at once.
        kernel_b.shutdown()
        expect(peer_b).to_have_count(0, timeout=10_000)
        expect(status).to_have_text("Spindel: 2 peers")


@contextmanager
def lab_and_another_server(tmp_path: Path) -> Iterator[tuple[LabServer, HubServer]]:
    """A lab (hub A) and another Jupyter server (hub B) joined over a nats-server of their own."""
    with ExitStack() as cleanup:
        nats = NatsServer(tmp_path / "nats").start()
        cleanup.callback(nats.stop)
        mesh = (f"--SpindelHub.nats_url={nats.url}",)
        lab = LabServer(tmp_path / "lab", args=(*mesh, "--SpindelHub.hub_name=A")).start()
        cleanup.callback(lab.stop)
        other = HubServer(tmp_path / "other", args=(*mesh, "--SpindelHub.hub_name=B")).start()
        cleanup.callback(other.stop)
        yield lab, other


def test_the_panel_lists_the_peers_of_another_hub_with_their_hub(
    tmp_path: Path, browser: Browser, request: pytest.FixtureRequest
) -> None:
    with lab_and_another_server(tmp_path) as (lab, other), ExitStack() as cleanup:
        bob = Peer(other.ws_url, "bob", other.token).start()
        cleanup.callback(bob.close)
        with browsing(browser, lab, request) as page:
            page.goto(f"{lab.http_url}lab?reset&token={lab.token}")
            panel = show_panel(page)
            bob_item = panel.locator(".jp-SpindelPanel-peer[data-peer='bob']")
            expect(bob_item).to_contain_text("on B", timeout=30_000)
            expect(bob_item).to_have_attribute(
                "title", re.compile(f"acting for user {re.escape(getpass.getuser())}")
            )
            # Grouped by hub, this server's first, each heading followed by its peers.
            headings = panel.locator(".jp-SpindelPanel-hub")
            expect(headings).to_have_text(["A (this server)1 peer", "B1 peer"])
            after_b = panel.locator(".jp-SpindelPanel-hub[data-hub='B'] + .jp-SpindelPanel-peer")
            expect(after_b).to_have_attribute("data-peer", "bob")
            bob.close()
            expect(bob_item).to_have_count(0, timeout=30_000)
            expect(headings).to_have_count(0)  # one hub left: no headings


def test_a_workspace_of_another_server_is_followed_from_the_panel(
    tmp_path: Path, browser: Browser, request: pytest.FixtureRequest
) -> None:
    with lab_and_another_server(tmp_path) as (lab, other), ExitStack() as cleanup:
        bob = Peer(other.ws_url, "bob", other.token).start()
        cleanup.callback(bob.close)
        notebook = {
            "cells": [code_cell("intro", "x = 1")],
            "metadata": {},
            "nbformat": 4,
            "nbformat_minor": 5,
        }
        bob.request(None, "workspace.publish", {"name": "remote-lesson", "notebook": notebook}, timeout=30)
        with browsing(browser, lab, request) as page:
            page.goto(f"{lab.http_url}lab?reset&token={lab.token}")
            panel = show_panel(page)
            row = panel.locator('[data-workspace="remote-lesson"]')
            # Its writer is bob of hub B, connected there: the lease is held, nothing to claim.
            expect(row.locator(".jp-SpindelPanel-owner")).to_have_text("bob@B", timeout=30_000)
            expect(row.locator(".jp-SpindelPanel-owner")).to_have_attribute("data-writable", "true")
            expect(row.get_by_role("button", name="Claim remote-lesson")).to_have_count(0)

            # Follow: this server's hub fetches the notebook from B's and writes the copy here.
            row.get_by_role("button", name="Follow remote-lesson").click()
            wait_until(lambda: lab.exists("following/remote-lesson.ipynb"), timeout=20, what="the copy on A")
            badge = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-SpindelFollowing")
            expect(badge).to_have_text("Following remote-lesson - read-only", timeout=20_000)
            followed = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook")
            expect(followed).to_contain_text("x = 1")

            # Bob publishes a new head on B: the copy open on A reloads by itself.
            notebook["cells"] = [code_cell("intro", "x = 2  # from B")]
            bob.request(
                None, "workspace.publish", {"name": "remote-lesson", "notebook": notebook}, timeout=30
            )
            expect(followed).to_contain_text("x = 2  # from B", timeout=20_000)

            # Bob leaves B: his lease runs on, and the panel says until when.
            bob.close()
            claim = row.get_by_role("button", name="Claim remote-lesson")
            expect(claim).to_be_disabled(timeout=30_000)
            expect(claim).to_have_attribute("title", re.compile("bob@B has left"))


def test_workspaces_follow_fork_and_merge_with_conflicts_from_the_panel(
    lab: LabServer, browser: Browser, request: pytest.FixtureRequest
) -> None:
    lab.create_notebook("lesson.ipynb", [code_cell("intro", "x = 1"), code_cell("work", "y = x + 1")])
    with browsing(browser, lab, request) as page, ExitStack() as cleanup:
        # The teacher's kernel (a session of lesson.ipynb) publishes it: its peer holds the lease.
        lesson = lab.start_notebook_kernel("lesson.ipynb")
        cleanup.callback(lesson.shutdown)
        lesson.ok("%load_ext spindel_jupyter\n%spin_publish lesson")
        assert lab.workspace("lesson")["owner"]["peer"] == "lesson"

        page.goto(f"{lab.http_url}lab?reset&token={lab.token}")
        expect(page.locator(".jp-SpindelStatus")).to_have_text("Spindel: 2 peers", timeout=30_000)
        panel = show_panel(page)
        row = panel.locator('[data-workspace="lesson"]')
        expect(row).to_contain_text("lesson", timeout=10_000)  # fetched at connect
        expect(row.locator(".jp-SpindelPanel-owner")).to_have_text("lesson")
        expect(row).to_contain_text("0 followers")

        # Follow: the hub writes a read-only copy, the page opens it with the badge.
        row.get_by_role("button", name="Follow lesson").click()
        wait_until(lambda: lab.exists("following/lesson.ipynb"), timeout=10, what="following/lesson.ipynb")
        badge = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-SpindelFollowing")
        expect(badge).to_have_text("Following lesson - read-only", timeout=20_000)
        expect(row).to_contain_text("1 follower")  # pushed by the hub
        followed = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook")
        expect(followed).to_contain_text("y = x + 1")

        # The teacher saves: the workspace republishes and the open copy reloads by itself.
        lab.save_notebook("lesson.ipynb", with_source(lab.notebook("lesson.ipynb"), "intro", "x = 2  # v2"))
        expect(followed).to_contain_text("x = 2  # v2", timeout=15_000)
        expect(badge).to_be_visible()

        # Fork, named in JupyterLab's input dialog.
        row.get_by_role("button", name="Fork lesson").click()
        name_input = page.locator(".jp-Dialog input")
        expect(name_input).to_be_visible()
        name_input.fill("lesson-fork")
        page.locator(".jp-Dialog").get_by_role("button", name="Fork").click()
        wait_until(lambda: lab.exists("forks/lesson-fork.ipynb"), timeout=10, what="forks/lesson-fork.ipynb")
        fork_row = panel.locator('[data-workspace="lesson-fork"]')
        expect(fork_row).to_contain_text("fork of lesson", timeout=10_000)
        expect(row.get_by_role("button", name="Merge lesson")).to_have_count(0)  # only forks merge

        # The teacher's kernel is connected and holds the lease: the page offers no Claim.
        expect(row.get_by_role("button", name="Claim lesson")).to_have_count(0)

        # Conflicting edits of the same cell: saves republish each (the lesson as its kernel's peer).
        before = lab.workspace("lesson")["head"]
        lab.save_notebook("lesson.ipynb", with_source(lab.notebook("lesson.ipynb"), "work", "y = 'teacher'"))
        fork = lab.workspace("lesson-fork")
        lab.save_notebook(
            "forks/lesson-fork.ipynb",
            with_source(lab.notebook("forks/lesson-fork.ipynb"), "work", "y = 'student'"),
        )
        wait_until(
            lambda: (
                lab.workspace("lesson")["head"] != before
                and lab.workspace("lesson-fork")["head"] != fork["head"]
            ),
            timeout=10,
            what="both saves republished",
        )

        # Merge as the teacher: lesson.ipynb is the current notebook, so its kernel's peer acts.
        page.get_by_role("tab", name="File Browser").click()  # in the panel's place
        listing = page.locator(".jp-FileBrowser .jp-DirListing-itemText")
        page.locator(".jp-FileBrowser .jp-BreadCrumbs-home").click()
        expect(listing.get_by_text("forks", exact=True)).to_be_visible()  # at the root
        listing.get_by_text("lesson.ipynb", exact=True).dblclick()
        expect(page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook")).to_contain_text(
            "y = 'teacher'", timeout=20_000
        )
        show_panel(page)
        expect(panel.locator('[data-peer="lesson"]')).to_contain_text("(this notebook)", timeout=20_000)
        fork_row.get_by_role("button", name="Merge lesson-fork").click()
        dialog = page.locator(".jp-Dialog")
        conflict = dialog.locator(".jp-SpindelMerge-conflict")
        expect(conflict).to_have_count(1, timeout=10_000)
        expect(conflict.locator(".jp-SpindelMerge-base")).to_contain_text("y = x + 1")
        expect(conflict.locator(".jp-SpindelMerge-ours")).to_contain_text("y = 'teacher'")
        expect(conflict.locator(".jp-SpindelMerge-theirs")).to_contain_text("y = 'student'")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "lab-merge-conflict.png"))
        assert "student" not in sources(lab.notebook("lesson.ipynb"))  # nothing changes before a choice
        dialog.get_by_role("button", name="Union").click()
        expect(dialog).to_have_count(0)
        wait_until(
            lambda: (
                "y = 'student'" in (text := sources(lab.notebook("lesson.ipynb"))) and "y = 'teacher'" in text
            ),
            timeout=10,
            what="lesson.ipynb with both versions of the cell",
        )


def test_a_launcher_notebook_renamed_becomes_that_peer_and_the_panel_keeps_up(
    tmp_path: Path, browser: Browser, request: pytest.FixtureRequest
) -> None:
    lab = LabServer(tmp_path / "lab", args=("--SpindelHub.lease_seconds=4",)).start()
    with ExitStack() as cleanup, browsing(browser, lab, request) as page:
        cleanup.callback(lab.stop)
        page.goto(f"{lab.http_url}lab?reset&token={lab.token}")
        expect(page.locator(".jp-SpindelStatus")).to_have_text("Spindel: 1 peer", timeout=30_000)

        # A notebook made from the Launcher, then renamed, as everyone does: the peer follows the name.
        page.locator('.jp-LauncherCard[data-category="Notebook"]').first.click()
        expect(page.locator("#jp-main-statusbar")).to_contain_text("Idle", timeout=30_000)
        run_cell(page, "%load_ext spindel_jupyter")
        expect(page.locator(".jp-OutputArea-output").last).to_contain_text("as 'Untitled'", timeout=20_000)
        menu(page, "File", "Rename Notebook…")
        rename = page.locator(".jp-Dialog input")
        expect(rename).to_be_visible()
        rename.fill("week3-analysis.ipynb")
        page.locator(".jp-Dialog").get_by_role("button", name="Rename").click()
        panel = show_panel(page)
        expect(panel.locator('[data-peer="week3-analysis"]')).to_contain_text(
            "(this notebook)", timeout=15_000
        )
        name = panel.locator('[data-peer="week3-analysis"] .jp-SpindelPanel-name')
        assert name.evaluate("e => e.scrollWidth <= e.clientWidth"), (
            "the name is cut to make room for the mark"
        )
        expect(panel.locator('[data-peer="Untitled"]')).to_have_count(0)
        run_cell(page, "%spin_peers")
        expect(page.locator(".jp-OutputArea-output").last).to_contain_text(
            "week3-analysis (you)", timeout=20_000
        )

        # Another kernel publishes: while it is connected and holds the lease, nobody is offered Claim.
        writer = lab.start_notebook_kernel("writer.ipynb")
        cleanup.callback(writer.shutdown)
        writer.ok("%load_ext spindel_jupyter\n%spin_publish notes")
        row = panel.locator('[data-workspace="notes"]')
        expect(row.locator(".jp-SpindelPanel-owner")).to_have_text("writer", timeout=10_000)
        expect(row.get_by_role("button", name="Claim notes")).to_have_count(0)

        # Fork it from the panel (as week3-analysis): the fork opens with a kernel, no kernel picker.
        row.get_by_role("button", name="Fork notes").click()
        page.locator(".jp-Dialog").get_by_role("button", name="Fork").click()
        fork_row = panel.locator('[data-workspace="notes-week3-analysis"]')
        expect(fork_row).to_contain_text("fork of notes", timeout=10_000)
        expect(page.get_by_role("tab", name="notes-week3-analysis.ipynb")).to_be_visible(timeout=20_000)
        expect(page.locator("#jp-main-statusbar")).to_contain_text("Idle", timeout=30_000)
        expect(page.locator(".jp-Dialog")).to_have_count(0)

        # Merging needs the writer: the refusal says so, whole, behind Details (not cut mid-sentence).
        fork_row.get_by_role("button", name="Merge notes-week3-analysis").click()
        toast = page.get_by_text("Spindel: could not merge 'notes-week3-analysis' (see Details)")
        expect(toast).to_be_visible(timeout=10_000)
        page.get_by_role("button", name="Details").click()
        details = page.locator(".jp-Dialog")
        expect(details).to_contain_text("so only 'writer' can merge 'notes-week3-analysis'")
        expect(details).to_contain_text("ask them to run %spin_merge notes-week3-analysis")
        expect(details).not_to_contain_text("fork it")
        details.get_by_role("button", name="Close").click()

        # The writer leaves: its lease runs out without a push, and the row shows it when it does.
        writer.shutdown()
        expect(row.get_by_role("button", name="Claim notes")).to_be_disabled(timeout=10_000)
        expect(row.locator(".jp-SpindelPanel-owner")).to_have_text("read-only", timeout=15_000)
        expect(row.get_by_role("button", name="Claim notes")).to_be_enabled()


def tracked_demo_files() -> dict[str, str]:
    """Every file under demo_notebooks/ with the SHA-256 of its bytes."""
    return {
        str(path.relative_to(DEMOS)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(DEMOS.rglob("*"))
        if path.is_file()
    }


def menu(page: Page, top: str, item: str) -> None:
    """Pick ``item`` from the menu bar's menu ``top`` (an item's name ends with its shortcut, if any)."""
    page.get_by_role("menuitem", name=top, exact=True).click()
    page.get_by_role("menuitem", name=re.compile(rf"^{re.escape(item)}(\s|$)")).click()


def open_notebook(page: Page, name: str) -> None:
    """Open ``name`` from the file browser (at the root, where the demos are) and wait for its kernel."""
    page.locator(".jp-DirListing-item", has_text=name).dblclick()
    expect(page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook")).to_be_visible()
    expect(page.locator("#jp-main-statusbar")).to_contain_text("Idle", timeout=60_000)


def run_all(page: Page, lab: LabServer, name: str, restart: bool = False) -> float:
    """Run All Cells of the open notebook ``name`` (or restart its kernel first), save it, and fail
    unless every code cell ran and only the cells tagged raises-exception show an error; the seconds
    the run took."""
    prompts = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputPrompt")
    status = page.locator("#jp-main-statusbar")
    started = time.monotonic()
    if restart:
        menu(page, "Run", "Restart Kernel and Run All Cells…")
        page.locator(".jp-Dialog .jp-mod-accept").click()
    else:
        menu(page, "Run", "Run All Cells")
    expect(prompts.filter(has_text="*")).not_to_have_count(0, timeout=30_000)  # it started
    # Done when every cell has its number. At an error in a raises-exception cell the cells below lose
    # their [*] while the kernel still runs them; a run that stopped leaves them unnumbered, and the
    # kernel idle.
    idle_since: float | None = None
    while True:
        texts = [t.strip() for t in prompts.all_text_contents()]
        if all(re.fullmatch(r"\[\d+\]:", t) for t in texts):
            break
        settled = not any("*" in t for t in texts) and "Idle" in status.inner_text()
        idle_since = (idle_since or time.monotonic()) if settled else None
        if idle_since is not None and time.monotonic() - idle_since > 3:
            break
        if time.monotonic() - started > 180:
            raise AssertionError(f"{name}: still running after 180 s: {texts}")
        time.sleep(0.2)
    took = time.monotonic() - started
    expect(status).to_contain_text("Idle")
    saved = lab.get(f"api/contents/{name}?content=0")["last_modified"]
    page.keyboard.press("Control+s")
    wait_until(
        lambda: lab.get(f"api/contents/{name}?content=0")["last_modified"] != saved,
        timeout=20,
        what=f"{name} saved",
    )
    problems = []
    for cell in lab.saved_notebook(name)["cells"]:
        if cell["cell_type"] != "code":
            continue
        errors = [f"{o['ename']}: {o['evalue']}" for o in cell["outputs"] if o["output_type"] == "error"]
        expected = "raises-exception" in cell["metadata"].get("tags", [])
        if cell["execution_count"] is None:
            problems.append(f"cell {cell['id']} did not run")
        elif bool(errors) != expected:
            problems.append(f"cell {cell['id']}: {errors or 'no error, but it is tagged raises-exception'}")
    assert not problems, f"{name}{' after a kernel restart' if restart else ''}: {problems}"
    return took


@pytest.mark.timeout(600)
def test_every_demo_notebook_runs_again_in_the_lab_and_the_tracked_ones_stay_as_they_are(
    tmp_path: Path, browser: Browser, request: pytest.FixtureRequest
) -> None:
    """``make demo``'s lab, one hub: each demo with Run All twice in a row, two after restarting
    their kernel, two after restarting the server; demo_notebooks/ is left byte for byte as it was."""
    before = tracked_demo_files()
    lab = LabServer(tmp_path / "lab")
    subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-s",
            "-C",
            str(REPO),
            f"DEMO_DIR={lab.notebooks}",
            "demo-notebooks",
        ],
        check=True,
    )
    names = sorted(path.name for path in DEMOS.glob("*.ipynb"))
    assert sorted(p.name for p in lab.notebooks.glob("*.ipynb")) == names
    lab.start()
    timings: list[str] = []
    with ExitStack() as cleanup, browsing(browser, lab, request) as page:
        cleanup.callback(lab.stop)
        page.goto(f"{lab.http_url}lab?reset&token={lab.token}")
        for name in names:
            open_notebook(page, name)
            for _ in range(2):
                timings.append(f"{name} {run_all(page, lab, name):.1f} s")
            menu(page, "File", "Close Tab")  # its kernel runs on, as when a user moves on
        for name in ("02-synced-widgets.ipynb", "03-workspaces.ipynb"):
            open_notebook(page, name)
            timings.append(f"{name} (kernel restarted) {run_all(page, lab, name, restart=True):.1f} s")
            menu(page, "File", "Close Tab")
        lab.stop()
        lab.start()  # same port, root and store: what the hub keeps is still there
        page.goto(f"{lab.http_url}lab?reset&token={lab.token}")
        for name in ("03-workspaces.ipynb", "02-synced-widgets.ipynb"):
            open_notebook(page, name)
            timings.append(f"{name} (server restarted) {run_all(page, lab, name):.1f} s")
            menu(page, "File", "Close Tab")
        sys.stderr.write("Run All took: " + ", ".join(timings) + "\n")
    assert tracked_demo_files() == before, "the tracked demo notebooks changed"
