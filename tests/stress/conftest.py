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
    """Show the figures; a full-size run also keeps them in figures.json (a short one leaves it be)."""
    if not FIGURES:
        return
    mode = "full" if FULL else "short"
    write = terminalreporter.write_line
    terminalreporter.section(f"spindel stress figures ({mode})")
    width = max(len(f"{s}.{k}") for s, figures in FIGURES.items() for k in figures)
    for scenario, figures in FIGURES.items():
        for key, value in figures.items():
            write(f"{scenario + '.' + key:<{width}}  {value}")
    if not FULL:
        write(f"(a short run: {FIGURES_PATH.name} keeps the figures of the last full-size run)")
        return
    try:  # scenarios this run did not cover keep their last full-size figures
        last = json.loads(FIGURES_PATH.read_text())
        kept, last_seconds = dict(last["scenarios"]), last["seconds"]
    except (OSError, ValueError, KeyError, TypeError):
        kept, last_seconds = {}, None
    # "seconds" is the time of a run of every scenario, not of a partial one.
    seconds = last_seconds if set(kept) - set(FIGURES) else round(time.monotonic() - _started, 1)
    payload = {"mode": mode, "seconds": seconds, "scenarios": {**kept, **FIGURES}}
    FIGURES_PATH.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    write(f"(written to {FIGURES_PATH})")
