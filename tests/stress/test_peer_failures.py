"""Scenario 5: a serving kernel killed mid-call, and one that hangs; the hub's heartbeat notices."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time
from collections.abc import Iterator

import pytest

from spindel_jupyter.core.errors import PeerLost, RemoteTimeout
from spindel_jupyter.peer.client import Peer
from tests.stress.common import StressHub, record
from tests.support import Kernel, start_kernel, wait_until

CELL = {"kind": "cell", "args": {}, "context": None}


def _serving_kernel(hub: StressHub, name: str) -> Kernel:
    kernel = start_kernel({"SPINDEL_HUB_URL": hub.ws_url, "SPINDEL_TOKEN": hub.token, "SPINDEL_PEER": name})
    kernel.ok("%load_ext spindel_jupyter\n%spin_serve")
    return kernel


@pytest.fixture
def caller(stress_hub: StressHub) -> Iterator[Peer]:
    peer = Peer(stress_hub.ws_url, "caller", stress_hub.token, kind="script").start()
    try:
        yield peer
    finally:
        peer.close()


def test_killed_serving_kernel_gives_peer_lost_within_2s(stress_hub: StressHub, caller: Peer) -> None:
    victim = _serving_kernel(stress_hub, "victim")
    try:
        pid = victim.pid()
        assert caller.request("victim", "call", {**CELL, "source": "6 * 7"}, timeout=30) == {"value": 42}
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            call = pool.submit(
                caller.request, "victim", "call", {**CELL, "source": "import time\ntime.sleep(60)"}, 30
            )
            time.sleep(1.0)  # the call is running there
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            with pytest.raises(PeerLost):
                call.result(10)
            lost_after = time.monotonic() - killed
    finally:
        victim.shutdown()
    record("5_peer_crash", peer_lost_after_s=round(lost_after, 3))
    assert lost_after < 2.0


@pytest.fixture(scope="module")
def hung(stress_hub: StressHub) -> Iterator[tuple[Kernel, float]]:
    """A serving kernel, then SIGSTOPped (SIGCONT and shut down at the end)."""
    sleeper = _serving_kernel(stress_hub, "sleeper")
    pid = sleeper.pid()
    stopped = False
    try:
        probe = Peer(stress_hub.ws_url, "prober", stress_hub.token, kind="script").start()
        try:
            assert probe.request("sleeper", "call", {**CELL, "source": "1"}, timeout=30) == {"value": 1}
        finally:
            probe.close()
        os.kill(pid, signal.SIGSTOP)
        stopped = True
        yield sleeper, time.monotonic()
    finally:
        if stopped:
            os.kill(pid, signal.SIGCONT)
        sleeper.shutdown()


def test_hung_serving_kernel_gives_remote_timeout(hung: tuple[Kernel, float], caller: Peer) -> None:
    timeout = 1.5
    started = time.monotonic()
    with pytest.raises(RemoteTimeout):
        caller.request("sleeper", "call", {**CELL, "source": "2"}, timeout=timeout)
    timed_out = time.monotonic() - started
    record("5_peer_hang", remote_timeout_after_s=round(timed_out, 3), call_timeout_s=timeout)
    assert timeout <= timed_out < timeout + 1.0


def test_hub_heartbeat_drops_the_hung_peer(stress_hub: StressHub, hung: tuple[Kernel, float]) -> None:
    """ping_interval=1, ping_timeout=3: the stopped peer leaves /spindel/api/peers within ~5 s."""
    _, since = hung
    wait_until(
        lambda: "sleeper" not in stress_hub.peer_names(), timeout=15, interval=0.1, what="sleeper dropped"
    )
    dropped = time.monotonic() - since
    record("5_peer_hang", heartbeat_drop_after_s=round(dropped, 2))
    assert dropped < 5.5
