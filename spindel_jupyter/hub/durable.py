"""Durable file writes: what the hub acknowledges survives a crash and a power loss.

A file is replaced whole: its new content goes to a temporary file beside it
(``.NAME.PID.RANDOM.tmp``), which is fsynced, then renamed over it; the rename
itself is durable only once the directory is fsynced too. A crash leaves the
old file or the new one, never half of one, plus at most a temporary file,
which no reader opens and :func:`sweep` removes where the hub owns the
directory. Many files are written as one group (:class:`Batch`), each
directory fsynced once.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

SUFFIX = ".tmp"


class Batch:
    """Files replaced one by one and made durable together: :meth:`sync` fsyncs each directory once."""

    def __init__(self) -> None:
        self._directories: dict[Path, None] = {}

    def write(self, path: Path, data: bytes) -> None:
        """Replace ``path`` by ``data``: a fsynced temporary file renamed over it (durable after sync)."""
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{SUFFIX}")
        try:
            with open(temporary, "xb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        self._directories[path.parent] = None

    def sync(self) -> None:
        """Make every rename so far durable: fsync each directory written into, once."""
        while self._directories:
            directory = next(iter(self._directories))
            fsync_directory(directory)
            del self._directories[directory]


def write_files(files: Iterable[tuple[Path, bytes]]) -> None:
    """Replace each ``(path, data)`` whole, all durable on return: one fsync per file and per directory."""
    batch = Batch()
    for path, data in files:
        batch.write(path, data)
    batch.sync()


def write_file(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` whole, durable on return."""
    write_files([(path, data)])


def fsync_directory(directory: Path) -> None:
    """Make the entries of ``directory`` durable: the files renamed or made in it."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def make_directory(directory: Path) -> None:
    """Create ``directory`` (and its missing parents) durably: each new entry's parent is fsynced."""
    if directory.is_dir():
        return
    make_directory(directory.parent)
    directory.mkdir(exist_ok=True)
    fsync_directory(directory.parent)


def sweep(directory: Path, pattern: str = "*" + SUFFIX) -> None:
    """Remove the temporary files a crash left in ``directory`` (names matching ``pattern``)."""
    for leftover in directory.glob(pattern):
        log.info("spindel: removing %s, left by an interrupted write", leftover)
        leftover.unlink(missing_ok=True)
