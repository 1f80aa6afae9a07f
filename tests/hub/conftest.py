"""Fixtures of the hub's tests: what reached the disk, and in which order."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

#: ``(what, on)`` in the order it happened: ``("fsync", path)``, ``("rename", target)``; tests add their own.
Events = list[tuple[str, Any]]


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> Events:
    """Records every fsync (named by the file or directory it was called on) and rename."""
    events: Events = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(fd: int) -> None:
        fsync(fd)
        events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}"))))

    def recording_replace(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        replace(source, target)
        events.append(("rename", Path(target)))

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    return events
