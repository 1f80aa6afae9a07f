"""Workspaces meet notebook files: the workspace operations, as peers and REST call them.

The registry (:mod:`.workspaces`) knows nothing of files; this service reads
notebooks through the Jupyter server's contents manager to publish them, and
writes the copies that followers and forks get. A followed copy is read-only
(its cells are not editable) and is rewritten whole when its workspace's head
moves, so it is never half-updated; a new head is announced once every copy of
it is written.

Every operation checks who asks (:mod:`.access`): only the server's own peers
make the hub read or write the server's files. Anyone may instead send a
notebook's content (publish) or take it back in the answer (follow and fork
with ``deliver``), and write it where they run. The hub writes a file only if
it does not exist yet or the hub wrote it for that same workspace.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import posixpath
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nbformat
from jupyter_server.services.contents.fileio import FileManagerMixin
from jupyter_server.utils import ensure_async

from ..core.errors import SpindelError
from ..core.protocol import OWN
from . import durable
from .access import Actor, Forbidden, acting, require
from .workspaces import Registry, normalized, plain

log = logging.getLogger(__name__)

#: The server event a contents save emits (the hook for republishing on save).
SAVE_EVENT = "https://events.jupyter.org/jupyter_server/contents_service/v1"

#: Called once a new head's copies are written: (descriptor, its read-only notebook).
Announce = Callable[[dict[str, Any], dict[str, Any]], None]


class NotebookService:
    """Workspace operations on notebook paths of one Jupyter server."""

    def __init__(self, registry: Registry, contents: Any, root_dir: str) -> None:
        self.registry = registry
        self.topics = registry.topics
        self.contents = contents
        self.root_dir = root_dir
        #: Where announcements of new heads go (the app tells followers and the lab).
        self.announce: Announce = lambda descriptor, notebook: None
        #: The user the server's own saves republish as.
        self.server_user = ""
        #: The kernel a notebook the hub writes or sends opens with, when it names none.
        self.kernelspec: dict[str, str] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        self._newest: dict[str, dict[str, Any]] = {}
        self._ops: dict[str, Callable[..., Any]] = {
            "list": self.all,
            "get": self.get,
            "publish": self.publish,
            "follow": self.follow,
            "fork": self.fork,
            "merge": self.merge,
            "claim": self.claim,
        }

    # -- the operations ------------------------------------------------------------------

    async def operate(self, op: str, actor: Actor, arguments: Any, members: Any) -> Any:
        """Run workspace operation ``op`` for ``actor`` (or for the peer its ``as`` names)."""
        fn = self._ops.get(op)
        if fn is None:
            raise SpindelError(f"no workspace operation {op!r} (known: {', '.join(sorted(self._ops))})")
        arguments = dict(arguments) if isinstance(arguments, dict) else {}
        if "peer" in arguments:
            raise SpindelError(
                "the hub takes who acts from the connection or the login, not from the request: "
                "drop 'peer' (use 'as' to act for one of your own peers)"
            )
        actor = acting(actor, arguments.pop("as", None), members)
        try:
            inspect.signature(fn).bind(actor, **arguments)
        except TypeError as exc:
            raise SpindelError(f"bad arguments for workspace.{op}: {exc}") from None
        result = fn(actor, **arguments)
        return await result if inspect.isawaitable(result) else result

    def all(self, actor: Actor) -> list[dict[str, Any]]:
        return self.registry.all()

    def get(self, actor: Actor, name: str) -> dict[str, Any]:
        return self.registry.get(name)

    def claim(self, actor: Actor, name: str, force: bool = False) -> dict[str, Any]:
        return self.registry.claim(name, actor.name, bool(force))

    async def publish(
        self,
        actor: Actor,
        name: str,
        path: str | None = None,
        notebook: dict[str, Any] | None = None,
        message: str = "",
        topics: list[str] | None = None,
        roles: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Publish a notebook - the file at ``path`` on the server, or its ``notebook`` content - with
        the current state of its synced ``topics``."""
        if (path is None) == (notebook is None):
            raise SpindelError("publish takes the notebook's 'path' on the server or its 'notebook' content")
        if path is not None:
            require(actor, "publish_from_file")
            path = self.contents_path(path)
            content = await self.read(path)
        else:
            content = _notebook_content(notebook)
        content.get("metadata", {}).pop("spindel", None)
        names = set(topics or []) | set(roles or {})
        if name in self.registry.workspaces:
            names |= set(self.registry.workspaces[name].get("topics") or [])
        for topic, role in (roles or {}).items():
            if role not in ("subscriber", "bidirectional"):
                raise SpindelError(f"topic role {role!r} for {topic!r}: use subscriber or bidirectional")
        states = self.topics.states(sorted(names))
        # The cells' files are written and fsynced off the event loop; the commit, after, on it.
        await asyncio.to_thread(self.registry.store_cells, content)
        return self.registry.publish(
            name, content, actor.name, str(message), path=path, topics=states, roles=roles
        )

    async def follow(
        self, actor: Actor, name: str, path: str | None = None, deliver: bool = False
    ) -> dict[str, Any]:
        """Follow ``name``: the hub keeps a read-only copy at ``path`` on the server, or with
        ``deliver`` sends the notebook (now and at every new head) to write where the follower runs."""
        if deliver:
            descriptor = self.registry.follow(name, actor.name, None)
            notebook = read_only(self.registry.notebook(descriptor["head"]), name, descriptor["head"])
            return {**self.with_kinds(descriptor), "notebook": self.openable(notebook)}
        require(actor, "write_file")
        path = self.contents_path(path or f"following/{name}.ipynb")
        self.registry.get(name)
        await self._check_writable(path, name)
        descriptor = self.registry.follow(name, actor.name, path)
        head = descriptor["head"]
        await self.write(path, read_only(self.registry.notebook(head), name, head))
        return {**self.with_kinds(descriptor), "copy": path}

    async def fork(
        self,
        actor: Actor,
        name: str,
        new: str,
        path: str | None = None,
        wait: bool = True,
        deliver: bool = False,
    ) -> dict[str, Any]:
        """Fork ``name`` (a pointer in the registry, at once) and write the fork's notebook file, or
        with ``deliver`` send it to write where the forker runs.

        With ``wait=False`` the file is written after the answer: the fork itself
        costs the same whatever the notebook's size.
        """
        if not deliver:
            require(actor, "write_file")
            path = self.contents_path(path or f"forks/{new}.ipynb")
            self.registry.get(name)
            await self._check_writable(path, new)
        descriptor = self.registry.fork(name, new, actor.name, path=None if deliver else path)
        await self.topics.stored()  # the fork's own topics are durable before it is answered
        descriptor = self.with_kinds(descriptor)
        if deliver:
            return {**descriptor, "notebook": self.openable(self.registry.notebook(descriptor["head"]))}
        assert path is not None
        writing = self._write_head(path, descriptor["head"])
        if wait:
            await writing
        else:
            self._spawn(writing, f"writing the fork {new!r} to {path}")
        return descriptor

    async def merge(
        self,
        actor: Actor,
        name: str,
        strategy: str | None = None,
        force: bool = False,
        into: str | None = None,
    ) -> dict[str, Any]:
        """Merge fork ``name`` back (cells and topics, in the registry), then the parent's notebook
        file if it has one."""
        source = self.registry.get(name)
        parent_name = into or (source.get("fork_of") or {}).get("workspace")
        parent_path = self.registry.get(parent_name).get("path") if parent_name else None
        if parent_path:
            require(actor, "merge_into_file")
        result = self.registry.merge(name, actor.name, strategy, bool(force), into)
        await self.topics.stored()  # the topics merged back are durable before it is answered
        parent = result.get("workspace")
        if result.get("merged") and parent and parent.get("path"):
            await self.write(parent["path"], self.registry.notebook(result["head"]))
        return result

    # -- files -----------------------------------------------------------------------------

    def contents_path(self, path: str) -> str:
        """A path relative to the server root, from an absolute one (a kernel's notebook) or not."""
        if os.path.isabs(path):
            path = os.path.relpath(path, self.root_dir)
        path = posixpath.normpath(path.replace(os.sep, "/")).lstrip("/")
        return "" if path == "." else path

    async def read(self, path: str) -> dict[str, Any]:
        model = await ensure_async(self.contents.get(path, type="notebook", content=True))
        return plain(model["content"])

    async def _check_writable(self, path: str, workspace: str) -> None:
        """Refuse ``path`` unless it is new or a file the hub wrote (or published) for ``workspace``."""
        if path.startswith("../") or path == "..":
            raise Forbidden(f"{path!r} is outside the server's root: nothing was written")
        if self.registry.binds(workspace, path):
            return
        if await ensure_async(self.contents.file_exists(path)):
            raise Forbidden(
                f"{path} already exists and is not a copy the hub keeps for workspace {workspace!r}: "
                "nothing was written; pick another file with --into (or 'path'), or move it away"
            )

    async def write(self, path: str, notebook: dict[str, Any]) -> None:
        """Write ``notebook`` at ``path`` whole, never half-updated.

        On a plain file system a temporary file is renamed over the old one (the
        contents manager's own save rewrites in place, so a reader could see it half
        written); any other contents manager is written through.
        """
        notebook = self.openable(notebook)
        if not isinstance(self.contents, FileManagerMixin):
            await self._ensure_directory(posixpath.dirname(path))
            model = {"type": "notebook", "format": "json", "content": notebook}
            await ensure_async(self.contents.save(model, path))
            return
        root = Path(getattr(self.contents, "root_dir", "") or self.root_dir)
        target = Path(root, *path.split("/"))
        if not target.resolve().is_relative_to(root.resolve()):
            raise Forbidden(f"{path!r} is outside the server's root: nothing was written")
        text = nbformat.writes(nbformat.from_dict(notebook))
        await asyncio.to_thread(_replace, target, text)

    async def _write_head(self, path: str, head: str) -> None:
        """Write the notebook of commit ``head`` at ``path`` (read from the store only now: with
        ``wait=False`` a fork answers first, whatever the notebook's size)."""
        await self.write(path, self.registry.notebook(head))

    async def _ensure_directory(self, directory: str) -> None:
        parts = [p for p in directory.split("/") if p]
        for depth in range(1, len(parts) + 1):
            folder = "/".join(parts[:depth])
            if not await ensure_async(self.contents.dir_exists(folder)):
                await ensure_async(self.contents.save({"type": "directory"}, folder))

    def openable(self, notebook: dict[str, Any]) -> dict[str, Any]:
        """``notebook`` naming a kernel to open with (the server's default one if it names none)."""
        metadata = notebook.get("metadata") or {}
        if metadata.get("kernelspec") or not self.kernelspec:
            return notebook
        return {**notebook, "metadata": {**metadata, "kernelspec": dict(self.kernelspec)}}

    def with_kinds(self, descriptor: dict[str, Any]) -> dict[str, Any]:
        """The descriptor with each topic's kind, so a follower knows how to wire it."""
        kinds = {t: self.topics.kind_of(t) for t in descriptor.get("topics") or []}
        return {**descriptor, "kinds": kinds}

    # -- new heads ---------------------------------------------------------------------------

    def head_moved(self, descriptor: dict[str, Any]) -> None:
        """A workspace has a new head: rewrite its followers' copies, then announce it.

        One writer per workspace, always at the newest head: copies never go back
        to an older head, and nobody hears of a head before its copies are written.
        """
        name = descriptor["name"]
        running = name in self._newest
        self._newest[name] = descriptor
        if not running:
            self._spawn(self._write_heads(name), f"updating the copies of workspace {name!r}")

    async def _write_heads(self, name: str) -> None:
        try:
            while True:
                descriptor = self._newest[name]
                notebook: dict[str, Any] = {}
                if descriptor.get("followers"):  # else nobody needs the notebook read back
                    head = descriptor["head"]
                    notebook = self.openable(read_only(self.registry.notebook(head), name, head))
                for follower in descriptor.get("followers") or []:
                    if follower.get("path"):
                        try:
                            await self.write(follower["path"], notebook)
                        except Exception as exc:
                            log.warning("spindel: could not update %s: %s", follower["path"], exc)
                if self._newest[name] is descriptor:
                    self.announce(descriptor, notebook)
                    return
        finally:
            self._newest.pop(name, None)

    async def saved(self, path: str) -> None:
        """A notebook was saved: republish the workspaces published from it."""
        for descriptor in self.registry.all():
            publisher = descriptor.get("publisher")
            if descriptor.get("path") == path and publisher:
                try:
                    await self.publish(Actor(publisher, OWN, self.server_user), descriptor["name"], path)
                except Exception as exc:
                    log.info("spindel: not republishing %s on save: %s", descriptor["name"], exc)

    def _spawn(self, work: Awaitable[Any], what: str) -> None:
        """Run ``work`` in the background; a failure is logged with what it was doing."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)

        def done(task: asyncio.Future[Any]) -> None:
            self._tasks.discard(task)
            if not task.cancelled() and task.exception() is not None:
                log.error("spindel: failed %s", what, exc_info=task.exception())

        task.add_done_callback(done)


def _notebook_content(notebook: Any) -> dict[str, Any]:
    """Notebook content sent by a peer, checked to be a valid notebook."""
    if not isinstance(notebook, dict):
        raise SpindelError("'notebook' must be a notebook's JSON content (a map with 'cells')")
    try:
        content = normalized(notebook)
        nbformat.validate(nbformat.from_dict(content))
    except Exception as exc:
        raise SpindelError(f"'notebook' is not a valid notebook: {exc}") from None
    return content


def _replace(target: Path, text: str) -> None:
    durable.make_directory(target.parent)
    durable.write_file(target, text.encode("utf-8"))


def read_only(notebook: dict[str, Any], name: str, head: str) -> dict[str, Any]:
    """A followed copy: marked with its workspace and head, its cells not editable."""
    copy = plain(notebook)
    copy.setdefault("metadata", {})["spindel"] = {"following": name, "head": head}
    for cell in copy["cells"]:
        cell.setdefault("metadata", {}).update({"editable": False, "deletable": False})
    return copy
