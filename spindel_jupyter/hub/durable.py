"""Durable file writes: what the hub acknowledges survives a crash and a power loss.

A file is replaced whole: its new content goes to a temporary file beside it
(``.NAME.PID.RANDOM.tmp``), which is fsynced, then renamed over it; the rename
itself is durable only once the directory is fsynced too. A crash leaves the
old file or the new one, never half of one, plus at most a temporary file,
which no reader opens and :func:`sweep` removes where the hub owns the
directory. Many files are written as one group (:class:`Batch`), each
directory fsynced once.

A :class:`Log` is appended to instead: records, each with its length and
checksum, written after the last whole one and fsynced. A crash in the middle
of an append leaves a torn last record, which reading ignores and cuts off.
"""

from __future__ import annotations

import logging
import os
import secrets
import struct
import zlib
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

SUFFIX = ".tmp"

#: A log record's header: the length of its payload and the payload's CRC-32.
RECORD = struct.Struct("<II")


class Log:
    """An append-only file of records, each with its length and checksum.

    Appends go right after the last whole record, and the file is cut there, so
    what a failed write left behind is overwritten. :meth:`read` ignores a torn
    last record (a crash in the middle of an append) and cuts it off.
    Used by one thread at a time.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        #: Bytes of whole records, and how many there are.
        self.size = 0
        self.records = 0

    def read(self) -> list[bytes]:
        """Every whole record's payload, in order ([] without a file); the rest is cut off."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            self.size = self.records = 0
            return []
        payloads: list[bytes] = []
        offset = 0
        while offset + RECORD.size <= len(data):
            length, checksum = RECORD.unpack_from(data, offset)
            start, end = offset + RECORD.size, offset + RECORD.size + length
            if end > len(data) or zlib.crc32(data[start:end]) != checksum:
                break
            payloads.append(data[start:end])
            offset = end
        if offset < len(data):
            log.warning(
                "spindel: %s: cutting off %d bytes after its last whole record (a write a crash interrupted)",
                self.path,
                len(data) - offset,
            )
            self._cut(offset)
        self.size, self.records = offset, len(payloads)
        return payloads

    def append(self, payloads: list[bytes]) -> bool:
        """Write records after the last whole one and fsync them; True if this made the file."""
        data = b"".join(part for payload in payloads for part in (_header(payload), payload))
        created = self.size == 0 and not self.path.exists()
        descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o666)
        try:
            written = 0
            while written < len(data):
                written += os.pwrite(descriptor, data[written:], self.size + written)
            os.ftruncate(descriptor, self.size + len(data))
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        self.size += len(data)
        self.records += len(payloads)
        return created

    def reset(self) -> None:
        """Empty the log, durably (once what it held is durable elsewhere)."""
        if self.path.exists():
            self._cut(0)
        self.size = self.records = 0

    def _cut(self, size: int) -> None:
        descriptor = os.open(self.path, os.O_WRONLY)
        try:
            os.ftruncate(descriptor, size)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _header(payload: bytes) -> bytes:
    return RECORD.pack(len(payload), zlib.crc32(payload))


class Batch:
    """Files replaced or appended to one by one and made durable together.

    :meth:`sync` fsyncs each directory once, then empties the logs whose content
    the group's files now hold.
    """

    def __init__(self) -> None:
        self._directories: dict[Path, None] = {}
        self._resets: list[Log] = []

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

    def append(self, target: Log, payloads: list[bytes]) -> None:
        """Append records to ``target`` (durable after sync, when this made the file)."""
        if target.append(payloads):
            self._directories[target.path.parent] = None

    def reset_after_sync(self, target: Log) -> None:
        """Empty ``target`` once every file of the group is durable (one of them holds what it held)."""
        self._resets.append(target)

    def sync(self) -> None:
        """Make every rename so far durable: fsync each directory written into, once; then empty the logs."""
        while self._directories:
            directory = next(iter(self._directories))
            fsync_directory(directory)
            del self._directories[directory]
        while self._resets:
            self._resets.pop(0).reset()


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
