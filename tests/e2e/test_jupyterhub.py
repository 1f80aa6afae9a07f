"""Two users of a real JupyterHub, each in a browser of their own: ``make demo-hub``'s deployment.

JupyterHub (its proxy from npm) with the demo's authenticator and local process
spawner, a nats-server from the wheel, and a single-user server per user whose
hub joins the mesh through the spawner's environment; Debian's chromium with
one browser context per user. The test fails, never skips, when chromium or
the proxy is missing: ``make install`` and CI bring both.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from spindel_jupyter.demo_hub import DemoHub, configurable_http_proxy
from tests.e2e.test_lab import ARTIFACTS, BIND, KERNELSPEC, code_cell, show_panel
from tests.support import REPO, free_port

NEWS_OFF = {"fetchNews": "false"}
#: The notebook in front.
ACTIVE = ".jp-NotebookPanel:not(.lm-mod-hidden)"


@pytest.fixture(scope="module")
def jupyterhub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoHub]:
    """``make demo-hub``'s JupyterHub, with its users' notebooks (and two more for the first test)."""
    configurable_http_proxy()  # fails here, naming what to install, when the proxy is missing
    hub = DemoHub(tmp_path_factory.mktemp("jupyterhub"), port=free_port(), notebooks=[REPO / "demo_hub"])
    for user in hub.users:
        settings = hub.home(user) / ".jupyter/lab/user-settings/@jupyterlab/apputils-extension"
        settings.mkdir(parents=True)
        (settings / "notification.jupyterlab-settings").write_text(json.dumps(NEWS_OFF))
    lecture = [code_cell("intro", "x = 1"), code_cell("work", "")]
    write_notebook(hub.home("teacher") / "lecture.ipynb", lecture)
    write_notebook(hub.home("student") / "mine.ipynb", [])
    hub.start()
    yield hub
    hub.stop()


def write_notebook(path: Path, cells: list[dict[str, Any]]) -> None:
    notebook = {"cells": cells, "metadata": {"kernelspec": KERNELSPEC}, "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(notebook))


def sign_in(browser: Browser, hub: DemoHub, user: str, cleanup: ExitStack, notebook: str = "") -> Page:
    """A browser context of ``user``'s own, signed in to JupyterHub, on their lab (spawned now, or
    already running), with ``notebook`` open if one is named."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    cleanup.callback(context.close)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    cleanup.callback(lambda: _no_errors(user, errors))
    page.goto(f"{hub.url}hub/login")
    page.fill("#username_input", user)
    page.fill("#password_input", "not the password")
    page.click("#login_submit")
    expect(page.locator(".login_error")).to_contain_text("Invalid", timeout=30_000)
    page.fill("#username_input", user)
    page.fill("#password_input", hub.passwords[user])
    page.click("#login_submit")
    page.wait_for_url(f"**/user/{user}/lab**", timeout=120_000)
    expect(page.locator(".jp-SpindelStatus")).to_contain_text("Spindel:", timeout=60_000)
    if notebook:
        open_tree(page, hub, notebook)
    return page


def open_tree(page: Page, hub: DemoHub, notebook: str) -> None:
    """Load the lab afresh with ``notebook`` (of the signed-in user) open, its kernel idle."""
    user = page.url.split("/user/")[1].split("/")[0]
    page.goto(f"{hub.url}user/{user}/lab/tree/{notebook}?reset")
    expect(page.locator("#jp-main-statusbar")).to_contain_text(notebook, timeout=60_000)
    expect(page.locator("#jp-main-statusbar")).to_contain_text("Idle", timeout=60_000)


def _failed(browser: Browser, hub: DemoHub, request: pytest.FixtureRequest) -> None:
    """A screenshot of each user's page, and the end of JupyterHub's log."""
    ARTIFACTS.mkdir(exist_ok=True)
    for page in (p for c in browser.contexts for p in c.pages):
        user = "teacher" if "/user/teacher/" in page.url else "student"
        page.screenshot(path=str(ARTIFACTS / f"{request.node.name}-{user}-failure.png"))
    sys.stderr.write(f"JupyterHub log tail:\n{hub.hub_log.read_text()[-5000:]}\n")


def _no_errors(user: str, errors: list[str]) -> None:
    assert not errors, f"errors in {user}'s page: {errors}"


def open_notebook(page: Page, name: str) -> None:
    page.locator(".jp-DirListing-item", has_text=name).dblclick()
    expect(page.locator(f"{ACTIVE} .jp-Notebook")).to_be_visible()
    expect(page.locator("#jp-main-statusbar")).to_contain_text("Idle", timeout=60_000)


def run_cell(page: Page, code: str) -> None:
    """Type ``code`` into the last cell of the notebook in front and run it with Shift+Enter."""
    page.locator(f"{ACTIVE} .jp-CodeCell").last.locator(".cm-content").click()
    page.keyboard.insert_text(code)
    page.keyboard.press("Shift+Enter")


def last_output(page: Page) -> Locator:
    """The output of the last cell that has one: cells run in order, the one just run."""
    return page.locator(f"{ACTIVE} .jp-CodeCell .jp-OutputArea-output").last


def run_all(page: Page) -> None:
    """Run every cell of the notebook in front; return once each has run (cells tagged
    raises-exception do not stop the others)."""
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name=re.compile(r"^Run All Cells(\s|$)")).click()
    prompts = page.locator(f"{ACTIVE} .jp-CodeCell .jp-InputPrompt")
    expect(prompts.filter(has_text=re.compile(r"^\[[ *]\]:$"))).to_have_count(0, timeout=120_000)


@pytest.mark.timeout(600)
def test_two_users_publish_follow_sync_a_slider_and_call_only_once_allowed(
    jupyterhub: DemoHub, browser: Browser, request: pytest.FixtureRequest
) -> None:
    hub = jupyterhub
    with ExitStack() as cleanup:
        try:
            teacher = sign_in(browser, hub, "teacher", cleanup)
            student = sign_in(browser, hub, "student", cleanup)

            # The teacher publishes her notebook; her kernel (peer "lecture" of hub "teacher") holds it.
            open_notebook(teacher, "lecture.ipynb")
            teacher.locator(f"{ACTIVE} .jp-CodeCell").first.locator(".cm-content").click()
            teacher.keyboard.press("Shift+Enter")  # x = 1
            run_cell(teacher, "%load_ext spindel_jupyter\n%spin_publish lecture")
            expect(last_output(teacher)).to_contain_text("published", timeout=30_000)

            # The student follows it from the panel: a read-only copy in his server, open in his lab.
            panel = show_panel(student)
            row = panel.locator('[data-workspace="lecture"]')
            expect(row.locator(".jp-SpindelPanel-owner")).to_have_text("lecture@teacher", timeout=30_000)
            row.get_by_role("button", name="Follow lecture").click()
            badge = student.locator(f"{ACTIVE} .jp-SpindelFollowing")
            expect(badge).to_have_text("Following lecture - read-only", timeout=30_000)
            followed = student.locator(f"{ACTIVE} .jp-Notebook")
            expect(followed).to_contain_text("x = 1")

            # She saves a change: it arrives in the student's open copy.
            run_cell(teacher, "print('a change the student sees')")
            teacher.keyboard.press("Control+s")
            expect(followed).to_contain_text("a change the student sees", timeout=30_000)

            # A slider bound to one topic in both users' notebooks moves across users.
            run_cell(teacher, BIND + "w")
            slider = teacher.locator(".jp-OutputArea .widget-slider")
            expect(slider).to_be_visible(timeout=30_000)
            open_tree(student, hub, "mine.ipynb")
            run_cell(student, "%load_ext spindel_jupyter\n" + BIND + "w")
            theirs = student.locator(f"{ACTIVE} .widget-slider")
            expect(theirs).to_be_visible(timeout=30_000)
            handle = slider.locator(".noUi-handle")
            handle.focus()
            for _ in range(5):
                handle.press("ArrowRight")
            expect(slider.locator(".widget-readout")).to_have_text("5")
            expect(theirs.locator(".widget-readout")).to_have_text("5", timeout=30_000)

            # The student's call into the teacher's kernel: refused while she serves only her own peers,
            # run once she allows his user.
            run_cell(teacher, "%spin_serve")
            expect(last_output(teacher)).to_contain_text("serving", timeout=30_000)
            call = "%%spin_remote lecture@teacher\nprint('from the teacher:', x * 10)"
            run_cell(student, call)
            refusal = last_output(student)
            expect(refusal).to_contain_text("user:student", timeout=30_000)
            expect(refusal).not_to_contain_text("from the teacher:")
            run_cell(teacher, "%spin_serve --allow user:student")
            expect(last_output(teacher)).to_contain_text("user:student", timeout=30_000)
            run_cell(student, call)
            expect(last_output(student)).to_contain_text("from the teacher: 10", timeout=30_000)
            ARTIFACTS.mkdir(exist_ok=True)
            teacher.screenshot(path=str(ARTIFACTS / "jupyterhub-teacher.png"))
            student.screenshot(path=str(ARTIFACTS / "jupyterhub-student.png"))
        except BaseException:
            _failed(browser, hub, request)
            raise


@pytest.mark.timeout(600)
def test_the_lesson_and_the_homework_of_make_demo_hub_run_by_hand(
    jupyterhub: DemoHub, browser: Browser, request: pytest.FixtureRequest
) -> None:
    """The teacher serves grade and hint functions-only; the student calls them and is refused code;
    the teacher sees the student's progress in her synced LWWMap."""
    hub = jupyterhub
    with ExitStack() as cleanup:
        try:
            teacher = sign_in(browser, hub, "teacher", cleanup, "lesson.ipynb")
            run_all(teacher)
            expect(teacher.locator(ACTIVE)).to_contain_text("serving only the functions grade, hint")
            student = sign_in(browser, hub, "student", cleanup, "homework.ipynb")
            run_all(student)
            homework = student.locator(ACTIVE)
            expect(homework).to_contain_text("7 + 7 + 7 + 7 + 7 + 7")
            expect(homework).to_contain_text("not yet: try again")
            expect(homework).to_contain_text("right!")
            errors = homework.locator(".jp-OutputArea-output[data-mime-type$='stderr']")
            expect(errors).to_have_count(2)
            expect(errors.first).to_contain_text("NotServed")
            expect(errors.last).to_contain_text("NotServed")

            # His panel lists her progress topic as hers, read-only to him.
            topic = show_panel(student).locator('[data-topic="progress"]')
            expect(topic).to_contain_text("teacher's, read-only to others", timeout=30_000)
            expect(topic).to_have_attribute("title", re.compile("user teacher's: other users only read it"))

            # The teacher runs the progress cell again: the student's two tries, solved.
            teacher.locator(f"{ACTIVE} .jp-CodeCell").last.locator(".cm-content").click()
            teacher.keyboard.press("Shift+Enter")
            row = teacher.locator(f"{ACTIVE} .jp-OutputArea-output tr", has_text="student")
            expect(row).to_contain_text("2", timeout=30_000)
            expect(row).to_contain_text("True")
            teacher.screenshot(path=str(ARTIFACTS / "jupyterhub-lesson.png"))
        except BaseException:
            _failed(browser, hub, request)
            raise


def opens(page: Page, url: str) -> bool:
    """Whether ``page``'s user gets ``url`` (an HTTP route), or opens it (a WebSocket)."""
    if url.startswith("ws"):
        script = """url => new Promise(done => {
            const socket = new WebSocket(url);
            socket.onopen = () => { socket.close(); done(true); };
            socket.onerror = () => done(false);
        })"""
        return bool(page.evaluate(script, url))
    status = page.request.get(url, max_redirects=0).status
    assert status in (200, 302, 403), f"{url}: {status}"
    return status == 200


def test_a_user_opens_their_own_server_and_not_another_users(
    jupyterhub: DemoHub, browser: Browser, request: pytest.FixtureRequest
) -> None:
    """The teacher's lab, files, kernels, terminals and hub (REST and WebSocket): hers, not the student's."""
    hub = jupyterhub
    server = f"{hub.url}user/teacher/"
    routes = [
        f"{server}lab",
        f"{server}api/contents",
        f"{server}api/kernels",
        f"{server}api/terminals",
        f"{server}spindel/api/peers",
        f"{server}spindel/api/workspaces",
        f"ws{server.removeprefix('http')}spindel/ws",
    ]
    with ExitStack() as cleanup:
        try:
            for user, expected in (("teacher", True), ("student", False)):
                page = sign_in(browser, hub, user, cleanup)
                got = {route: opens(page, route) for route in routes}
                assert got == dict.fromkeys(routes, expected), user
        except BaseException:
            _failed(browser, hub, request)
            raise
