"""Shared parts of the stress suite: scale, figures, hubs with extra options, raw sockets, workers."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from tests.support import REPO, HubServer

#: ``SPINDEL_STRESS=full`` runs the full sizes; otherwise the short form the normal test run uses.
FULL = os.environ.get("SPINDEL_STRESS", "").lower() == "full"

#: Figures of this session, by scenario; written to figures.json and shown as a table at the end.
FIGURES: dict[str, dict[str, Any]] = {}
FIGURES_PATH = Path(__file__).resolve().parent / "figures.json"


def scale(short: int, full: int) -> int:
    return full if FULL else short


def record(scenario: str, **figures: Any) -> None:
    """Keep figures of a scenario for the summary (and print them at once, for -s runs)."""
    FIGURES.setdefault(scenario, {}).update(figures)
    shown = ", ".join(f"{key}={value}" for key, value in figures.items())
    print(f"\n[stress] {scenario}: {shown}")


class StressHub(HubServer):
    """A hub subprocess with extra ``--SpindelHub.*`` options (kept across restarts)."""

    def __init__(self, root: Path, **options: Any) -> None:
        args = tuple(f"--SpindelHub.{key}={value}" for key, value in options.items())
        super().__init__(root, args=args)

    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def pack(header: dict[str, Any], body: bytes = b"") -> bytes:
    return msgpack.packb(header, use_bin_type=True) + body


def unpack(data: bytes) -> dict[str, Any]:
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(data)
    header = unpacker.unpack()
    assert isinstance(header, dict), header
    return header


class RawSocket:
    """A raw WebSocket to the hub, for frames no honest peer would send."""

    def __init__(self, ws: WebSocketClientConnection) -> None:
        self.ws = ws

    @classmethod
    async def open(
        cls, hub: HubServer, name: str | None = None, headers: dict[str, str] | None = None
    ) -> RawSocket:
        request = HTTPRequest(
            hub.ws_url, headers=headers if headers is not None else {"Authorization": f"token {hub.token}"}
        )
        sock = cls(await websocket_connect(request, max_message_size=2**27))
        if name is not None:
            await sock.send({"t": "hello", "name": name, "kind": "script", "session": f"raw-{name}"})
            welcome = await sock.recv_kind("welcome", "error")
            if welcome.get("t") != "welcome":
                await sock.close()
                raise RuntimeError(f"hello refused: {welcome}")
        return sock

    async def send(self, header: dict[str, Any], body: bytes = b"") -> None:
        await self.ws.write_message(pack(header, body), binary=True)

    async def send_raw(self, data: bytes) -> None:
        await self.ws.write_message(data, binary=True)

    async def recv(self, timeout: float = 10.0) -> dict[str, Any] | None:
        """The next frame's header, or None once the connection closed."""
        message = await asyncio.wait_for(self.ws.read_message(), timeout)
        if message is None:
            return None
        return unpack(message if isinstance(message, bytes) else message.encode())

    async def recv_kind(self, *kinds: str, timeout: float = 10.0) -> dict[str, Any]:
        """The next frame of one of ``kinds`` (events and acks in between are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            header = await self.recv(max(0.01, deadline - time.monotonic()))
            if header is None:
                raise ConnectionError(f"closed (code {self.ws.close_code}) while waiting for {kinds}")
            if header.get("t") in kinds:
                return header

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    async def close(self) -> None:
        self.ws.close()
        await asyncio.sleep(0)


def worker_env(hub: HubServer) -> dict[str, str]:
    env = hub.env()
    env.pop("JUPYTER_RUNTIME_DIR", None)
    return env


def start_worker(hub: HubServer, mode: str, **params: Any) -> subprocess.Popen[str]:
    """A plain Python process running ``tests/stress/worker.py MODE``, talking JSON lines on stdout."""
    params = {"url": hub.ws_url, "token": hub.token, **params}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.stress.worker", mode, json.dumps(params)],
        cwd=REPO,
        env=worker_env(hub),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """Wait for a worker and return its last JSON line; fail with its stderr if it failed."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"worker timed out after {timeout} s:\n{err[-3000:]}") from None
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise AssertionError(f"worker failed ({proc.returncode}):\n{out[-2000:]}\n{err[-3000:]}")
    return dict(json.loads(lines[-1]))


def stop_all(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
