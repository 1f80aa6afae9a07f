"""Peers of several users: each carries the user its server admitted it for, and a kernel serves a
user's peers by the user's name (``--allow user:NAME``), across servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spindel_jupyter.core.errors import NotServed
from spindel_jupyter.peer.client import Peer
from tests.support import HubServer, NatsServer, wait_until


@pytest.fixture(scope="module")
def classroom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The teacher's server (hub and user ``teacher``) and a student's (``student``), in one mesh."""
    root: Path = tmp_path_factory.mktemp("users")
    nats = NatsServer(root / "nats").start()
    servers = {
        user: HubServer(
            root / user,
            args=(f"--SpindelHub.hub_name={user}", f"--SpindelHub.nats_url={nats.url}"),
            user=user,
        )
        for user in ("teacher", "student")
    }
    try:
        for server in servers.values():
            server.start()
        teacher, student = servers["teacher"], servers["student"]
        grader = teacher.start_notebook_kernel("grader.ipynb")
        grader.ok("%load_ext spindel_jupyter\n%spin_serve --allow user:student\nanswer = 42")
        work = Peer(student.ws_url, "work", student.token, kind="script", session="work").start()
        helper = Peer(teacher.ws_url, "helper", teacher.token, kind="script", session="helper").start()
        wait_until(
            lambda: {"grader", "helper"} <= {p["name"] for p in work.peers()},
            timeout=20,
            what="A's peers seen",
        )
        yield {"grader": grader, "work": work, "helper": helper, **servers}
        work.close()
        helper.close()
        grader.shutdown()
    finally:
        for server in servers.values():
            server.stop()
        nats.stop()


def call(peer: Peer, target: str) -> int:
    body = {"kind": "cell", "source": "answer", "args": {}}
    return int(peer.request(target, "call", body, timeout=30)["value"])


def test_every_peer_carries_the_user_its_server_admitted_it_for(classroom: dict[str, Any]) -> None:
    listed = {(p["name"], p["hub"]): p["user"] for p in classroom["work"].peers()}
    assert listed[("grader", "teacher")] == "teacher"
    assert listed[("helper", "teacher")] == "teacher"
    assert listed[("work", "student")] == "student"
    out = classroom["grader"].ok("%spin_peers").html()
    assert ">user<" in out and ">student<" in out  # the table shows each peer's user


def test_a_kernel_serves_the_peers_of_a_user_it_allows_by_name_on_any_hub(classroom: dict[str, Any]) -> None:
    assert call(classroom["work"], "grader@teacher") == 42  # a peer of the student's server
    with pytest.raises(NotServed, match="does not serve calls from 'helper'"):
        call(classroom["helper"], "grader")  # the teacher's own script is not the student
