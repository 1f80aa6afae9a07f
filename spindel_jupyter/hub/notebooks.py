"""Workspaces meet notebook files: publish from, and write copies to, the server's contents.

The registry (:mod:`.workspaces`) knows nothing of files; this service reads
notebooks through the Jupyter server's contents manager to publish them, and
writes the copies that followers and forks get. A followed copy is read-only
(its cells are not editable) and is rewritten whole when its workspace's head
moves, so it is never half-updated.
"""

from __future__ import annotations

import asyncio
import logging
import os
import posixpath
from pathlib import Path
from typing import Any

import nbformat
from jupyter_server.utils import ensure_async

from ..errors import MergeConflict, SpindelError
from ..protocol import LWW
from . import durable
from .topics import TopicStore
from .workspaces import Registry, plain

log = logging.getLogger(__name__)

#: The server event a contents save emits (the hook for republishing on save).
SAVE_EVENT = "https://events.jupyter.org/jupyter_server/contents_service/v1"


class NotebookService:
    """Workspace operations on notebook paths of one Jupyter server."""

    def __init__(
        self,
        registry: Registry,
        contents: Any,
        root_dir: str,
        topics: TopicStore | None = None,
    ) -> None:
        self.registry = registry
        self.topics = topics or TopicStore()
        self.contents = contents
        self.root_dir = root_dir
        self._tasks: set[asyncio.Future[None]] = set()

    def contents_path(self, path: str) -> str:
        """A path relative to the server root, from an absolute one (a kernel's notebook) or not."""
        if os.path.isabs(path):
            path = os.path.relpath(path, self.root_dir)
        path = posixpath.normpath(path.replace(os.sep, "/")).lstrip("/")
        return "" if path == "." else path

    async def read(self, path: str) -> dict[str, Any]:
        model = await ensure_async(self.contents.get(path, type="notebook", content=True))
        return plain(model["content"])

    async def write(self, path: str, notebook: dict[str, Any]) -> None:
        """Write ``notebook`` at ``path`` whole: a temp file renamed over the old one.

        The contents manager's own save rewrites a file in place (a reader can
        see it half written), so copies are written here, beside it, atomically.
        """
        target = Path(self.root_dir, *path.split("/"))
        if not target.resolve().is_relative_to(Path(self.root_dir).resolve()):
            raise SpindelError(f"{path!r} is outside the server's root")
        text = nbformat.writes(nbformat.from_dict(notebook))
        await asyncio.to_thread(_replace, target, text)

    async def publish(
        self,
        name: str,
        path: str,
        peer: str,
        message: str = "",
        topics: list[str] | None = None,
        roles: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Publish the notebook at ``path`` with the current state of its synced ``topics``."""
        path = self.contents_path(path)
        notebook = await self.read(path)
        notebook.get("metadata", {}).pop("spindel", None)
        names = set(topics or []) | set(roles or {})
        if name in self.registry.workspaces:
            names |= set(self.registry.workspaces[name].get("topics") or [])
        for topic, role in (roles or {}).items():
            if role not in ("subscriber", "bidirectional"):
                raise SpindelError(f"topic role {role!r} for {topic!r}: use subscriber or bidirectional")
        states = self.topics.states(sorted(names))
        return self.registry.publish(name, notebook, peer, message, path=path, topics=states, roles=roles)

    async def fork(
        self, name: str, new: str, peer: str, path: str | None = None, wait: bool = True
    ) -> dict[str, Any]:
        """Fork ``name`` (a pointer in the registry, at once) and write the fork's notebook file.

        With ``wait=False`` the file is written after the answer: the fork itself
        costs the same whatever the notebook's size.
        """
        path = self.contents_path(path or f"forks/{new}.ipynb")
        await self._ensure_directory(posixpath.dirname(path))
        descriptor = self.registry.fork(name, new, peer, path=path)
        for original, copy in (descriptor.get("forked_topics") or {}).items():
            self.topics.copy(original, copy)
        self.registry.note_fork_stamps(new, {t: self.topics.stamp_of(t) for t in descriptor["forked_topics"]})
        descriptor = self.with_kinds(self.registry.get(new))
        writing = self._write_head(path, descriptor["head"])
        if wait:
            await writing
        else:
            task = asyncio.ensure_future(writing)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return descriptor

    async def _ensure_directory(self, directory: str) -> None:
        Path(self.root_dir, *[p for p in directory.split("/") if p]).mkdir(parents=True, exist_ok=True)

    async def _write_head(self, path: str, head: str) -> None:
        await self.write(path, self.registry.notebook(head))

    async def follow(self, name: str, peer: str, path: str | None = None) -> dict[str, Any]:
        path = self.contents_path(path or f"following/{name}.ipynb")
        await self._ensure_directory(posixpath.dirname(path))
        descriptor = self.registry.follow(name, peer, path)
        head = descriptor["head"]
        await self.write(path, _read_only(self.registry.notebook(head), name, head))
        return self.with_kinds(descriptor)

    def with_kinds(self, descriptor: dict[str, Any]) -> dict[str, Any]:
        """The descriptor with each topic's kind, so a follower knows how to wire it."""
        kinds = {t: self.topics.kind_of(t) for t in descriptor.get("topics") or []}
        return {**descriptor, "kinds": kinds}

    async def merge(
        self, fork: str, peer: str, strategy: str | None, force: bool, into: str | None = None
    ) -> dict[str, Any]:
        """Merge cells (registry) and topics: CRDT topics join back, plain ones follow the strategy."""
        source = self.registry.get(fork)
        forked = source.get("forked_topics") or {}
        stamps = source.get("fork_stamps") or {}
        take_theirs = force or strategy in ("theirs", "union")
        conflicts = []
        for original, copy in forked.items():
            if self.topics.kind_of(original) != LWW or strategy is not None or force:
                continue
            at_fork = stamps.get(original)
            ours_moved = _stamp(self.topics.stamp_of(original)) != _stamp(at_fork)
            theirs_moved = _stamp(self.topics.stamp_of(copy)) != _stamp(at_fork)
            if ours_moved and theirs_moved:
                conflicts.append(
                    {
                        "index": None,
                        "id": None,
                        "topic": original,
                        "base": None,
                        "ours": self.topics.value_text(original),
                        "theirs": self.topics.value_text(copy),
                    }
                )
            elif theirs_moved:
                take_theirs = True
        if conflicts:
            topics = ", ".join(c["topic"] for c in conflicts)
            raise MergeConflict(f"conflicting values of topic(s) {topics}: nothing was merged", conflicts)
        result = self.registry.merge(fork, peer, strategy, force, into)
        for original, copy in forked.items():
            self.topics.fold(copy, original, take_theirs)
        parent = result.get("workspace")
        if result.get("merged") and parent and parent.get("path"):
            await self.write(parent["path"], self.registry.notebook(result["head"]))
        return result

    async def head_moved(self, descriptor: dict[str, Any]) -> None:
        """Rewrite every follower's copy at the new head (whole, never half-updated)."""
        if not descriptor.get("followers"):
            return
        copy = _read_only(self.registry.notebook(descriptor["head"]), descriptor["name"], descriptor["head"])
        for follower in descriptor["followers"]:
            try:
                await self.write(follower["path"], copy)
            except Exception as exc:
                log.warning("spindel: could not update %s: %s", follower["path"], exc)

    async def saved(self, path: str) -> None:
        """A notebook was saved: republish the workspaces published from it."""
        for descriptor in self.registry.all():
            publisher = descriptor.get("publisher")
            if descriptor.get("path") == path and publisher:
                try:
                    await self.publish(descriptor["name"], path, publisher, "saved")
                except Exception as exc:
                    log.info("spindel: not republishing %s on save: %s", descriptor["name"], exc)


def _stamp(value: Any) -> tuple[Any, ...] | None:
    return tuple(value) if value is not None else None


def _replace(target: Path, text: str) -> None:
    durable.write_file(target, text.encode("utf-8"))


def _read_only(notebook: dict[str, Any], name: str, head: str) -> dict[str, Any]:
    copy = plain(notebook)
    copy.setdefault("metadata", {})["spindel"] = {"following": name, "head": head}
    for cell in copy["cells"]:
        cell.setdefault("metadata", {}).update({"editable": False, "deletable": False})
    return copy
