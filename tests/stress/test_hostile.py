"""Scenarios 1 and 2: a fuzzed hub keeps serving everyone; a forged sender gets nowhere."""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from tornado.websocket import WebSocketClosedError

from spindel_jupyter.core import wire
from spindel_jupyter.core.errors import NotServed
from spindel_jupyter.peer.client import Peer
from tests.stress.common import RawSocket, StressHub, percentile, record, scale
from tests.stress.fuzz import Case, Fuzzer
from tests.support import Kernel, start_kernel, wait_until

MiB = 1024 * 1024
SENTINEL = 10**12


class Honest:
    """Two honest peers: ``ping`` calls ``pong`` in a loop while the hub is attacked."""

    def __init__(self, hub: StressHub) -> None:
        self.received: list[tuple[str, str, str]] = []  # (receiver, op, sender) of what the fuzzer sent
        self.peers = {
            name: Peer(hub.ws_url, name, hub.token, kind="script").start() for name in ("ping", "pong")
        }
        for name, peer in self.peers.items():
            for op in ("echo", "note"):
                peer.handle(op, lambda m, name=name: self.received.append((name, m.op, m.sender)) or m.body)
        self.peers["pong"].handle("pingpong", lambda m: m.body)
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        ping = self.peers["ping"]
        i = 0
        deadline = time.monotonic() + 600
        while not self._stop.is_set() and time.monotonic() < deadline:
            i += 1
            started = time.perf_counter()
            try:
                assert ping.request("pong", "pingpong", i, timeout=5) == i
                self.latencies.append(time.perf_counter() - started)
            except Exception as exc:  # counted, and the test fails on any
                self.failures.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.002)

    def __enter__(self) -> Honest:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(10)
        for peer in self.peers.values():
            peer.close()


def _check(case: Case, got: list[dict[str, Any]]) -> str | None:
    """Why ``got`` is not the answer the protocol gives ``case`` (None if it is)."""
    kinds = [h.get("t") for h in got]
    if case.expect == "none":
        return None if not got else f"expected nothing, got {kinds}"
    if case.expect == "error?":
        return None if kinds in ([], ["error"]) else f"expected at most an error, got {kinds}"
    if len(got) != 1:
        return f"expected one {case.expect}, got {kinds}"
    header = got[0]
    if case.expect == "error":
        if header.get("t") != "error" or (case.code and header.get("code") != case.code):
            return f"expected error {case.code}, got {header}"
        return None
    if header.get("t") != case.expect or header.get("re") != case.rid:
        return f"expected {case.expect} to {case.rid}, got {header}"
    error = header.get("error")
    if case.code == "ok" and error is not None:
        return f"expected a result, got error {error}"
    if case.code not in (None, "ok") and (not isinstance(error, dict) or error.get("code") != case.code):
        return f"expected error {case.code}, got {error}"
    return None


async def _fuzz(hub: StressHub, seed: int, count: int) -> dict[str, Any]:
    fuzzer = Fuzzer(seed, MiB)
    sock = await RawSocket.open(hub, "fuzzer")
    violations: list[str] = []
    by_kind: dict[str, int] = {}
    awaiting_peers: set[int] = set()
    drops = done = 0
    batch = 25
    while done < count:
        cases = [fuzzer.case() for _ in range(min(batch, count - done))]
        for k, case in enumerate(cases):
            by_kind[case.kind] = by_kind.get(case.kind, 0) + 1
            if case.peer_reply:
                awaiting_peers.add(case.rid or 0)
            await sock.send_raw(case.data)
            await sock.send({"t": "req", "id": SENTINEL + done + k, "op": "peers"})
        for k, case in enumerate(cases):
            got: list[dict[str, Any]] = []
            while True:
                header = await sock.recv(timeout=30)
                if header is None:
                    break
                kind = header.get("t")
                if kind == "rep" and header.get("re") == SENTINEL + done + k:
                    break
                if kind in ("event", "ack", "pub"):
                    continue
                if (
                    kind == "rep"
                    and header.get("re") in awaiting_peers
                    and header.get("from") in ("ping", "pong")
                ):
                    awaiting_peers.discard(header["re"])
                    continue
                got.append(header)
            if header is None:  # the hub dropped the hostile connection
                drops += 1
                violations.append(
                    f"frame {done + k} ({case.kind}, {case.extra}) closed the connection "
                    f"(code {sock.close_code}): {case.data[:120]!r}"
                )
                awaiting_peers.clear()
                sock = await RawSocket.open(hub, "fuzzer")
                break
            problem = _check(case, got)
            if problem:
                violations.append(
                    f"frame {done + k} ({case.kind}, {case.extra}): {problem}: {case.data[:120]!r}"
                )
        done += len(cases)
    deadline = time.monotonic() + 10
    while awaiting_peers and time.monotonic() < deadline:
        header = await sock.recv(timeout=10)
        if header is not None and header.get("t") == "rep":
            awaiting_peers.discard(header.get("re"))  # type: ignore[arg-type]
    if awaiting_peers:
        violations.append(f"requests relayed to honest peers never answered: {sorted(awaiting_peers)[:10]}")
    # The hostile connection still works for honest use.
    await sock.send({"t": "req", "id": 1, "op": "pingpong", "to": "pong"}, wire.encode("still here"))
    reply = await sock.recv_kind("rep")
    assert reply["re"] == 1 and "error" not in reply, reply
    await sock.close()
    return {"violations": violations, "drops": drops, "by_kind": by_kind}


@pytest.mark.timeout(scale(120, 900))
def test_fuzzed_hub_keeps_serving(stress_hub: StressHub) -> None:
    seed = int(os.environ.get("SPINDEL_STRESS_SEED", random.randrange(2**32)))
    count = scale(1000, 5000)
    print(f"\n[stress] fuzz seed {seed} (rerun with SPINDEL_STRESS_SEED={seed})")
    process = psutil.Process(stress_hub.pid())
    rss_before = process.memory_info().rss
    started = time.monotonic()
    with Honest(stress_hub) as honest:
        time.sleep(0.3)
        result = asyncio.run(_fuzz(stress_hub, seed, count))
        time.sleep(0.3)
    elapsed = time.monotonic() - started
    rss_after = process.memory_info().rss
    assert stress_hub.alive() and stress_hub.get("api/status") is not None
    p99 = percentile(honest.latencies, 0.99)
    record(
        "1_fuzz",
        seed=seed,
        frames=count,
        frames_per_s=round(count / elapsed),
        violations=len(result["violations"]),
        dropped_connections=result["drops"],
        pingpong_calls=len(honest.latencies),
        pingpong_failures=len(honest.failures),
        pingpong_p50_ms=round(1000 * percentile(honest.latencies, 0.5), 2),
        pingpong_p99_ms=round(1000 * p99, 2),
        hub_rss_growth_mb=round((rss_after - rss_before) / MiB, 1),
    )
    assert not result["violations"], f"seed {seed}: " + "\n".join(result["violations"][:15])
    assert not honest.failures, honest.failures[:5]
    assert len(honest.latencies) > 20 and p99 < 1.0
    assert rss_after - rss_before < 100 * MiB
    forged = [r for r in honest.received if r[2] != "fuzzer"]
    assert honest.received and not forged, forged[:5]  # every frame of the fuzzer arrives as its own


def test_connection_level_abuse(stress_hub: StressHub) -> None:
    async def main() -> None:
        quiet = await RawSocket.open(stress_hub)  # no hello yet
        await quiet.send({"t": "req", "id": 7, "op": "peers"})
        reply = await quiet.recv_kind("rep")
        assert reply["re"] == 7 and reply["error"]["code"] == "hello_first"
        await quiet.send({"t": "msg", "op": "x", "to": "pong"})
        assert (await quiet.recv_kind("error"))["code"] == "hello_first"
        await quiet.close()
        taken = await RawSocket.open(stress_hub, "abuser")
        twin = await RawSocket.open(stress_hub)
        await twin.send({"t": "hello", "name": "abuser", "kind": "script", "session": "another"})
        assert (await twin.recv_kind("error"))["code"] == "name_taken"
        await twin.close()
        # Far over the limit (over twice max_frame_bytes): cut off by the server, the hub lives on.
        try:
            await taken.send_raw(b"\x80" + b"\x00" * (3 * MiB))
        except WebSocketClosedError:
            pass  # closed while the frame was still being written
        for _ in range(100):  # peer events may come first
            if await taken.recv(timeout=10) is None:
                break
        # 1009 (message too big), or no code when the reset beats the close frame to us
        assert taken.close_code in (1009, None)
        again = await RawSocket.open(stress_hub, "abuser")
        await again.send({"t": "req", "id": 1, "op": "peers"})
        assert (await again.recv_kind("rep"))["re"] == 1
        await again.close()

    asyncio.run(main())
    assert stress_hub.alive() and stress_hub.get("api/status") is not None


def test_optional_int_field_refuses_bool(stress_hub: StressHub) -> None:
    async def main() -> dict[str, Any]:
        sock = await RawSocket.open(stress_hub, "boolean")
        header = {"t": "sub", "id": 5, "topic": "fz/bool", "mode": "sync", "kind": "gset", "seq": True}
        await sock.send(header, wire.encode(["x"]))
        answer = await sock.recv_kind("error", "snap")
        await sock.close()
        return answer

    answer = asyncio.run(main())
    assert answer.get("t") == "error" and answer.get("code") == "bad_frame", answer


@pytest.fixture(scope="module")
def guarded(stress_hub: StressHub) -> Iterator[Kernel]:
    kernel = start_kernel(
        {"SPINDEL_HUB_URL": stress_hub.ws_url, "SPINDEL_TOKEN": stress_hub.token, "SPINDEL_PEER": "guarded"}
    )
    try:
        kernel.ok("%load_ext spindel_jupyter\n%spin_serve --allow alice\nsecret = 42")
        yield kernel
    finally:
        kernel.shutdown()


def test_impersonation_is_refused(stress_hub: StressHub, guarded: Kernel) -> None:
    alice = Peer(stress_hub.ws_url, "alice", stress_hub.token, kind="script").start()
    notes: list[str] = []
    alice.handle("note", lambda m: notes.append(m.sender))
    body = {"kind": "cell", "source": "secret", "args": {}, "context": None}
    try:
        assert alice.request("guarded", "call", body, timeout=30)["value"] == 42  # the real alice may

        async def forge() -> dict[str, Any]:
            sock = await RawSocket.open(stress_hub, "mallory")
            await sock.send(
                {"t": "req", "id": 1, "op": "call", "to": "guarded", "from": "alice"}, wire.encode(body)
            )
            reply = await sock.recv_kind("rep", timeout=30)
            await sock.send({"t": "msg", "op": "note", "to": "alice", "from": "bob"}, wire.encode("hi"))
            await sock.send({"t": "req", "id": 2, "op": "peers"})  # the msg is relayed before this answer
            await sock.recv_kind("rep")
            await sock.close()
            return reply

        reply = asyncio.run(forge())
        assert reply["from"] == "guarded" and reply["error"]["code"] == NotServed.code, reply
        assert "does not serve calls from 'mallory'" in reply["error"]["message"]
        wait_until(lambda: notes, timeout=5, what="the relayed note")
        assert notes == ["mallory"]  # stamped with the true sender, not the forged one
        assert guarded.ok("print(secret)").stdout.strip() == "42"  # nothing ran there
    finally:
        alice.close()
    record("2_impersonation", forged_call_refused=True, forged_msg_sender=notes[0])
