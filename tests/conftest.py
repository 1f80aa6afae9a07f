"""Shared fixtures: an in-process server (pytest-jupyter) and real server subprocesses."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import HubServer, NatsServer

pytest_plugins = ("pytest_jupyter.jupyter_server",)

_SPINDEL_ENV = ("SPINDEL_HUB_URL", "SPINDEL_TOKEN", "SPINDEL_PEER", "JPY_SESSION_NAME")


@pytest.fixture
def jp_server_config() -> dict[str, object]:
    return {"ServerApp": {"jpserver_extensions": {"spindel_jupyter": True}}}


@pytest.fixture
def jp_base_url() -> str:
    return "/a%40b/"


@pytest.fixture(autouse=True)
def _restore_spindel_env() -> Iterator[None]:
    """The in-process server exports the hub's URL into os.environ; undo it after each test."""
    saved = {key: os.environ.get(key) for key in _SPINDEL_ENV}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    """One Jupyter server subprocess with the hub, shared by the tests that only add peers."""
    server = HubServer(tmp_path_factory.mktemp("hub")).start()
    yield server
    server.stop()


@pytest.fixture
def own_hub(tmp_path: Path) -> Iterator[HubServer]:
    """A server of the test's own, for tests that kill or restart it."""
    server = HubServer(tmp_path / "hub").start()
    yield server
    server.stop()


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A real nats-server with JetStream, for the test alone."""
    server = NatsServer(tmp_path / "nats").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Any]:
    """``servers(NAME, *args)`` starts a Jupyter server whose hub is named NAME; all stop after the test."""
    started: list[HubServer] = []

    def start(name: str, *args: str) -> HubServer:
        hub = HubServer(tmp_path / name, args=(f"--SpindelHub.hub_name={name}", *args)).start()
        started.append(hub)
        return hub

    try:
        yield start
    finally:
        for hub in started:
            hub.stop()
