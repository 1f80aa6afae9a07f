"""The JupyterLab extension in a real browser: the Spindel panel, live, against real kernels.

Drives Debian's chromium through pip ``playwright`` (no browser download). The
test fails, never skips, when chromium is missing: CI installs it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.support import BASE_URL, REPO, HubServer, Kernel, wait_until

ARTIFACTS = REPO / "test-artifacts"
TOPIC = "lab/threshold"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
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

    def create_notebook(self, path: str) -> None:
        content = {"cells": [], "metadata": {"kernelspec": KERNELSPEC}, "nbformat": 4, "nbformat_minor": 5}
        self.request("PUT", f"api/contents/{path}", {"type": "notebook", "content": content})


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[LabServer]:
    server = LabServer(tmp_path / "lab").start()
    yield server
    server.stop()


@pytest.fixture
def browser() -> Iterator[Browser]:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed (apt-get install -y chromium): the browser test does not skip")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def run_cell(page: Page, code: str) -> None:
    """Type ``code`` into the notebook's last cell and run it with Shift+Enter."""
    editor = page.locator(".jp-Notebook .jp-CodeCell").last.locator(".cm-content")
    editor.click()
    page.keyboard.insert_text(code)
    page.keyboard.press("Shift+Enter")


def value_of(kernel: Kernel, expression: str) -> Any:
    return json.loads(kernel.ok(f"import json; print(json.dumps({expression}))").stdout.strip())


def test_panel_shows_peers_and_topics_live_and_the_slider_syncs(
    lab: LabServer, browser: Browser, request: pytest.FixtureRequest
) -> None:
    for name in ("a.ipynb", "b.ipynb"):
        lab.create_notebook(name)
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    kernel_b: Kernel | None = None
    try:
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
        kernel_b = None
        expect(peer_b).to_have_count(0, timeout=10_000)
        expect(status).to_have_text("Spindel: 2 peers")
        assert not errors, f"errors in the page: {errors}"
    except BaseException:
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / f"{request.node.name}-failure.png"
        page.screenshot(path=str(shot))
        sys.stderr.write(f"screenshot: {shot}\nserver log tail:\n{lab.log_path.read_text()[-3000:]}\n")
        raise
    finally:
        if kernel_b is not None:
            kernel_b.shutdown()
        context.close()
