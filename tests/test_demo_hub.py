"""``make demo-hub``'s JupyterHub settings: who signs in, what each user's server gets, what stays."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from traitlets.config import Config

from spindel_jupyter.demo_hub import SETTINGS, DemoAuthenticator, Settings, configure, nats_config
from spindel_jupyter.hub.mesh import permissions


def sign_in(authenticator: DemoAuthenticator, user: str, password: str) -> str | None:
    return asyncio.run(authenticator.authenticate(None, {"username": user, "password": password}))


def test_each_user_signs_in_with_their_own_password_only() -> None:
    authenticator = DemoAuthenticator(passwords={"teacher": "apple", "student": "pear"})
    assert sign_in(authenticator, "teacher", "apple") == "teacher"
    assert sign_in(authenticator, "student", "pear") == "student"
    assert sign_in(authenticator, "student", "apple") is None
    assert sign_in(authenticator, "teacher", "") is None
    assert sign_in(authenticator, "mallory", "apple") is None
    assert authenticator.allowed_users == {"teacher", "student"}


def test_passwords_are_made_once_and_kept_private(tmp_path: Path) -> None:
    first = Settings.load_or_make(tmp_path, ["teacher", "student"])
    first.save(tmp_path)
    again = Settings.load_or_make(tmp_path, ["teacher", "student", "ta"])
    assert again.passwords["teacher"] == first.passwords["teacher"]
    assert again.nats_passwords["student"] == first.nats_passwords["student"]
    assert set(again.passwords) == {"teacher", "student", "ta"}
    assert len(set(again.passwords.values())) == 3
    assert (tmp_path / SETTINGS).stat().st_mode & 0o077 == 0


def test_each_users_hub_joins_the_mesh_as_a_nats_user_that_publishes_only_as_itself(tmp_path: Path) -> None:
    settings = Settings.load_or_make(tmp_path, ["teacher", "student"])
    settings.nats_port = 4333
    settings.save(tmp_path)
    users = nats_config(settings)["accounts"]["SPINDEL"]["users"]
    assert {u["user"]: u["permissions"] for u in users} == {
        "teacher": permissions("teacher"),
        "student": permissions("student"),
    }
    c = Config()
    configure(c, tmp_path)
    environment = c.Spawner.environment["SPINDEL_NATS_URL"]
    spawner = SimpleNamespace(user=SimpleNamespace(name="student"))
    assert environment(spawner) == f"nats://student:{settings.nats_passwords['student']}@127.0.0.1:4333"
    assert c.DemoAuthenticator.passwords == settings.passwords
    assert c.SimpleLocalProcessSpawner.home_dir_template == str(tmp_path.resolve() / "users" / "{username}")
    assert json.loads((tmp_path / SETTINGS).read_text())["nats_port"] == 4333


def test_a_port_already_in_use_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        state = tmp_path / "state"
        done = subprocess.run(
            [sys.executable, "-m", "spindel_jupyter.demo_hub", "--dir", str(state), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert f"demo-hub: port {port} is in use" in done.stderr
    assert f"HUB_PORT={port + 1} make demo-hub" in done.stderr
    assert "Traceback" not in done.stderr
    assert not state.exists()  # nothing made, nothing started
