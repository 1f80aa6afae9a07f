"""Helpers that make demo notebooks self-contained: a hub and a second kernel on demand.

In a Jupyter server with the extension, the notebook's kernel is already
connected and :func:`start_peer` adds a kernel to that same hub. Run anywhere
else (nbval, a plain ``jupyter execute``), :func:`ensure_hub` first starts a
private hub - a Jupyter server subprocess on a free port with a fresh token -
and connects this kernel to it. Helper processes log to files, never to the
notebook.
"""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_client.manager import KernelManager

from . import client
from .errors import SpindelError

_private_hub: subprocess.Popen[bytes] | None = None
_peers: list[DemoPeer] = []
_workdir = Path(tempfile.mkdtemp(prefix="spindel-demo-"))


def _die_with_parent() -> None:
    """In a child: get SIGTERM when the notebook's kernel dies, so nothing is left behind."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_hub(timeout: float = 60.0) -> client.Peer:
    """This kernel's peer, connected to the server's hub or to a private one started now."""
    global _private_hub
    try:
        return client.current_peer()
    except SpindelError:
        pass
    if os.environ.get(client.ENV_URL):
        return client.connect()
    port, token = _free_port(), secrets.token_hex(16)
    log = (_workdir / "hub.log").open("ab")
    _private_hub = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyter_server",
            "--no-browser",
            f"--port={port}",
            "--port-retries=0",
            "--ip=127.0.0.1",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={_workdir}",
            f"--SpindelHub.store_dir={_workdir / 'store'}",
        ]
        + (["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )
    atexit.register(stop_all)
    _wait_for_http(f"http://127.0.0.1:{port}/api/status?token={token}", timeout)
    url = f"ws://127.0.0.1:{port}/spindel/ws"
    os.environ[client.ENV_URL] = url
    os.environ[client.ENV_TOKEN] = token
    # A stable name, so a notebook run outside a server always shows the same peers.
    return client.connect(url, name=os.environ.get(client.ENV_PEER) or "notebook", token=token)


def _wait_for_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if _private_hub is not None and _private_hub.poll() is not None:
            raise SpindelError(f"the private hub exited; see {_workdir / 'hub.log'}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise SpindelError(f"the private hub did not start within {timeout} s") from None
            time.sleep(0.1)


@dataclass
class Execution:
    """What running one cell on a kernel produced."""

    stdout: str = ""
    stderr: str = ""
    data: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, Any] | None = None

    def text(self) -> str:
        return "".join(d.get("text/plain", "") + "\n" for d in self.data)

    def html(self) -> str:
        return "".join(d.get("text/html", "") for d in self.data)


def execute(kernel: Any, code: str, timeout: float = 60.0) -> Execution:
    """Run ``code`` through a jupyter_client blocking client and collect its outputs."""
    out = Execution()

    def collect(msg: dict[str, Any]) -> None:
        kind, content = msg["header"]["msg_type"], msg["content"]
        if kind == "stream":
            if content["name"] == "stdout":
                out.stdout += content["text"]
            else:
                out.stderr += content["text"]
        elif kind in ("execute_result", "display_data"):
            out.data.append(content["data"])
        elif kind == "error":
            out.error = content

    reply = kernel.execute_interactive(code, timeout=timeout, output_hook=collect, allow_stdin=False)
    if reply["content"]["status"] == "error" and out.error is None:
        out.error = reply["content"]  # e.g. a UsageError, shown on stderr without an error message
    return out


class DemoPeer:
    """A second kernel connected to the same hub, driven from this notebook."""

    def __init__(self, name: str, manager: KernelManager, kernel: Any) -> None:
        self.name = name
        self._manager = manager
        self._client = kernel

    def __repr__(self) -> str:
        return f"<DemoPeer {self.name!r}>"

    def run(self, code: str, timeout: float = 60.0) -> None:
        """Run ``code`` as a cell on this kernel; what it prints is printed here."""
        text = self._output(code, timeout)
        if text:
            print(text)

    def _output(self, code: str, timeout: float = 60.0) -> str:
        result = execute(self._client, code, timeout)
        if result.error:
            raise SpindelError(f"on {self.name}: {result.error.get('ename')}: {result.error.get('evalue')}")
        return result.stdout.rstrip("\n")

    def wait_for(self, expression: str, timeout: float = 10.0) -> str:
        """Poll ``expression`` on this kernel until it is true (changes take a moment to arrive)."""
        deadline = time.monotonic() + timeout
        while True:
            if self._output(f"print(bool({expression}))") == "True":
                return expression
            if time.monotonic() > deadline:
                raise SpindelError(f"on {self.name}: {expression} still false after {timeout} s")
            time.sleep(0.05)

    def stop(self) -> None:
        """Shut the kernel down (it leaves the hub's peer list)."""
        if self in _peers:
            _peers.remove(self)
        self._client.stop_channels()
        self._manager.shutdown_kernel(now=True)


def start_peer(name: str, timeout: float = 60.0) -> DemoPeer:
    """Start a kernel named ``name`` on this notebook's hub (starting a private hub if needed)."""
    me = ensure_hub()
    env = {
        **os.environ,
        client.ENV_URL: me.url,
        client.ENV_TOKEN: me.token,
        client.ENV_PEER: name,
    }
    env.pop("JPY_SESSION_NAME", None)
    log = (_workdir / f"{name}.log").open("ab")
    manager = KernelManager(kernel_name="python3")
    manager.start_kernel(env=env, stdout=log, stderr=log, cwd=str(_workdir))
    kernel = manager.blocking_client()
    kernel.start_channels()
    kernel.wait_for_ready(timeout=timeout)
    peer = DemoPeer(name, manager, kernel)
    _peers.append(peer)
    peer._output("%load_ext spindel_jupyter")
    return peer


def _server_request(method: str, path: str, body: Any = None) -> Any:
    """A request to the hub's Jupyter server (its REST API), with this kernel's token."""
    url = os.environ.get(client.ENV_URL, "")
    if not url:
        raise SpindelError("no hub: run demo.ensure_hub() or start_peer() first")
    base = url.replace("ws://", "http://", 1).replace("wss://", "https://", 1).removesuffix("spindel/ws")
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Authorization", f"token {os.environ.get(client.ENV_TOKEN, '')}")
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read().decode()
    return json.loads(text) if text else None


def code_notebook(*sources: str) -> dict[str, Any]:
    """The content of a notebook (nbformat 4.5) of unexecuted code cells with these sources."""
    cells: list[dict[str, Any]] = [
        {
            "id": f"cell-{i}",
            "cell_type": "code",
            "source": s,
            "metadata": {},
            "outputs": [],
            "execution_count": None,
        }
        for i, s in enumerate(sources)
    ]
    return {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def write_notebook(path: str, sources: list[str]) -> None:
    """Save a notebook of code cells at ``path`` (relative to the server root), as the lab would."""
    ensure_hub()
    directory = str(Path(path).parent)
    if directory != ".":
        parts = Path(directory).parts
        for depth in range(1, len(parts) + 1):
            sub = "/".join(parts[:depth])
            try:
                _server_request("GET", f"api/contents/{sub}?content=0")
            except urllib.error.HTTPError:
                _server_request("PUT", f"api/contents/{sub}", {"type": "directory"})
    content = code_notebook(*sources)
    _server_request("PUT", f"api/contents/{path}", {"type": "notebook", "format": "json", "content": content})


def read_notebook(path: str) -> list[str]:
    """The cell sources of the notebook at ``path`` (relative to the server root)."""
    model = _server_request("GET", f"api/contents/{path}")
    return [cell["source"] for cell in model["content"]["cells"]]


async def wait_until(predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    """Await until ``predicate()`` is true here.

    Changes from other kernels land between cells, or while a cell awaits: so
    this awaits (``await demo.wait_until(...)``) instead of blocking the kernel.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SpindelError(f"still waiting after {timeout} s")
        await asyncio.sleep(0.02)


def stop_all() -> None:
    """Stop every demo kernel and the private hub, if one was started."""
    global _private_hub
    for peer in list(_peers):
        try:
            peer.stop()
        except Exception:
            pass
    if _private_hub is not None:
        client.disconnect()
        _private_hub.terminate()
        try:
            _private_hub.wait(10)
        except subprocess.TimeoutExpired:
            _private_hub.kill()
        _private_hub = None
