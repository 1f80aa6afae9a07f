"""Fixtures of the stress suite, and the figures it reports at the end of the session."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.stress.common import FIGURES, FIGURES_PATH, FULL, StressHub

MiB = 1024 * 1024


@pytest.fixture(scope="session")
def stress_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StressHub]:
    """The hub the hostile and heartbeat scenarios share: small frames, fast heartbeats."""
    hub = StressHub(
        tmp_path_factory.mktemp("stress-hub"), max_frame_bytes=MiB, ping_interval=1, ping_timeout=3
    )
    try:
        yield hub.start()
    finally:
        hub.stop()


@pytest.fixture(scope="session")
def limits_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StressHub]:
    """A hub with tiny limits (and a second server, for the auth matrix's foreign cookie)."""
    hub = StressHub(
        tmp_path_factory.mktemp("limits-hub"), max_peers=3, max_topics=2, max_frame_bytes=64 * 1024
    )
    try:
        yield hub.start()
    finally:
        hub.stop()


_started = time.monotonic()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    payload = {"mode": "full" if FULL else "short", "seconds": round(time.monotonic() - _started, 1)}
    FIGURES_PATH.write_text(json.dumps({**payload, "scenarios": FIGURES}, indent=1, default=str) + "\n")
    write = terminalreporter.write_line
    terminalreporter.section(f"spindel stress figures ({payload['mode']})")
    width = max(len(f"{s}.{k}") for s, figures in FIGURES.items() for k in figures)
    for scenario, figures in FIGURES.items():
        for key, value in figures.items():
            write(f"{scenario + '.' + key:<{width}}  {value}")
    write(f"(written to {FIGURES_PATH})")
