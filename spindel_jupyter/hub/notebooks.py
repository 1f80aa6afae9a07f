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

In a mesh of hubs the registry is shared (:mod:`.mesh_registry`) and each hub
has its own node store: before reading a head, the hub fetches the nodes of it
that it lacks (:mod:`.node_sync`), and it writes a copy only once every node
of that head is here, so nobody sees a torn notebook.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import posixpath
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

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


class Shared(Protocol):
    """The registry shared by the hubs of a mesh (:class:`.mesh_registry.MeshRegistry`)."""

    async def write(self, operation: Callable[[], Any]) -> Any:
        """Run ``operation`` on this hub's copy and write what it changed (again, if raced)."""

    async def fetch(self, head: str, hub: str) -> None:
        """Have every node of commit ``head`` here (made on ``hub``), each verified."""


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
        #: The mesh's shared registry, when this hub is in one (None: the registry is this hub's).
        self.shared: Shared | None = None
        #: Workspaces whose newest head could not be brought here: why (their copies stay as they were).
        self.behind: dict[str, str] = {}
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
        return [self.described(d) for d in self.registry.all()]

    def get(self, actor: Actor, name: str) -> dict[str, Any]:
        return self.described(self.registry.get(name))

    async def claim(self, actor: Actor, name: str, force: bool = False) -> dict[str, Any]:
        who = self.who(actor)
        return await self.change(lambda: self.registry.claim(name, who, bool(force), actor.user))

    # -- the registry, alone or shared ----------------------------------------------------

    def who(self, actor: Actor) -> str:
        """How the registry names ``actor``: in a mesh, with its hub (``alice@A``)."""
        return self.registry.qualified(actor.name)

    async def change(self, operation: Callable[[], Any]) -> Any:
        """Run a registry operation: here, or on the mesh's shared registry."""
        if self.shared is None:
            return operation()
        return await self.shared.write(operation)

    def change_later(self, operation: Callable[[], Any]) -> None:
        """Run a registry operation in the background (for hooks that cannot wait)."""
        if self.shared is None:
            operation()
        else:
            self._spawn(self.change(operation), "updating the shared registry of workspaces")

    async def fetched(self, descriptor: dict[str, Any], head: str | None = None) -> None:
        """Have the nodes of ``head`` (default: the descriptor's) here, from the hub that made it."""
        if self.shared is not None:
            await self.shared.fetch(head or descriptor["head"], descriptor.get("hub") or "")

    def described(self, descriptor: dict[str, Any]) -> dict[str, Any]:
        """A descriptor as this hub shows it: with why its copies here are behind, if they are."""
        reason = self.behind.get(descriptor["name"])
        return {**descriptor, "behind": reason} if reason else descriptor

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
        if name in self.registry.workspaces:  # the new head's parent is compared with it: it must be here
            await self.fetched(self.registry.workspaces[name])
        who = self.who(actor)
        return await self.change(
            lambda: self.registry.publish(
                name, content, who, str(message), path=path, topics=states, roles=roles, user=actor.user
            )
        )

    async def follow(
        self, actor: Actor, name: str, path: str | None = None, deliver: bool = False
    ) -> dict[str, Any]:
        """Follow ``name``: the hub keeps a read-only copy at ``path`` on the server, or with
        ``deliver`` sends the notebook (now and at every new head) to write where the follower runs."""
        who = self.who(actor)
        if deliver:
            await self.fetched(self.registry.get(name))
            descriptor = await self.change(lambda: self.registry.follow(name, who, None))
            await self.fetched(descriptor)
            notebook = read_only(self.registry.notebook(descriptor["head"]), name, descriptor["head"])
            return {**self.with_kinds(descriptor), "notebook": self.openable(notebook)}
        require(actor, "write_file")
        path = self.contents_path(path or f"following/{name}.ipynb")
        await self.fetched(self.registry.get(name))
        await self._check_writable(path, name)
        descriptor = await self.change(lambda: self.registry.follow(name, who, path))
        head = descriptor["head"]
        await self.fetched(descriptor)
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
        who = self.who(actor)
        descriptor = await self.change(
            lambda: self.registry.fork(name, new, who, path=None if deliver else path, user=actor.user)
        )
        await self.topics.stored()  # the fork's own topics are durable before it is answered
        descriptor = self.with_kinds(descriptor)
        if deliver:
            await self.fetched(descriptor)
            return {**descriptor, "notebook": self.openable(self.registry.notebook(descriptor["head"]))}
        assert path is not None
        writing = self._write_head(path, descriptor)
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
        parent = self.registry.get(parent_name) if parent_name else None
        if parent:  # whose it is, before where its file is
            self.registry.check_user(parent, actor.user, merging=name)
        if parent and parent.get("path"):
            require(actor, "merge_into_file")
            if not self.registry.file_here(parent):
                raise Forbidden(
                    f"the notebook of {parent_name!r} is a file on the server of hub "
                    f"{parent.get('path_hub')!r}, and only that server's own peers merge into it: "
                    f"ask one of them to run %spin_merge {name}"
                )
        if parent and source.get("fork_of"):  # the three heads of the merge must be here
            for descriptor, head in ((source, source["fork_of"]["head"]), (source, None), (parent, None)):
                await self.fetched(descriptor, head)
        who = self.who(actor)
        result = await self.change(
            lambda: self.registry.merge(name, who, strategy, bool(force), into, actor.user)
        )
        await self.topics.stored()  # the topics merged back are durable before it is answered
        merged = result.get("workspace")
        moved = parent is None or result.get("head") != parent.get("head")  # topics alone leave the file be
        if result.get("merged") and moved and merged and self.registry.file_here(merged):
            await self.write(merged["path"], self.registry.notebook(result["head"]))
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
        await asyncio.to_thread(_replace, target, notebook)

    async def _write_head(self, path: str, descriptor: dict[str, Any]) -> None:
        """Write the notebook of the descriptor's head at ``path`` (read from the store only now:
        with ``wait=False`` a fork answers first, whatever the notebook's size)."""
        await self.fetched(descriptor)
        await self.write(path, self.registry.notebook(descriptor["head"]))

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
                followers = [f for f in descriptor.get("followers") or [] if self.registry.here(f)]
                if followers:  # else nobody here needs the notebook read back
                    head = descriptor["head"]
                    if not await self._bring(descriptor):
                        return
                    notebook = self.openable(read_only(self.registry.notebook(head), name, head))
                for follower in followers:
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

    async def _bring(self, descriptor: dict[str, Any]) -> bool:
        """Fetch the nodes of a new head made on another hub; if that fails, the copies here stay as
        they were, and the workspace says why (in its descriptor here, the log and to its followers)."""
        name = descriptor["name"]
        try:
            await self.fetched(descriptor)
        except Exception as exc:
            reason = (
                "the copies here stay at the last head this hub has: "
                f"cannot fetch head {descriptor['head'][:12]} ({exc})"
            )
            log.warning("spindel: workspace %r: %s", name, reason)
            self.behind[name] = reason
            self.announce({**descriptor, "behind": reason}, {})
            return False
        self.behind.pop(name, None)
        return True

    def retry_behind(self) -> None:
        """Try again to bring the workspaces that are behind (a hub came back to the mesh)."""
        for name in list(self.behind):
            if name in self.registry.workspaces:
                self.head_moved(self.registry.get(name))

    async def saved(self, path: str) -> None:
        """A notebook was saved: republish the workspaces published from it."""
        for descriptor in self.registry.all():
            publisher = descriptor.get("publisher")
            if self.registry.file_here(descriptor) == path and publisher:
                try:
                    actor = Actor(self.registry.local_name(publisher), OWN, self.server_user)
                    await self.publish(actor, descriptor["name"], path)
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


def _replace(target: Path, notebook: dict[str, Any]) -> None:
    """Write ``notebook`` as nbformat writes a file, over ``target`` (on a thread: for a large
    notebook, making the text is most of the work)."""
    text = nbformat.writes(nbformat.from_dict(notebook))
    durable.make_directory(target.parent)
    durable.write_file(target, text.encode("utf-8"))


def read_only(notebook: dict[str, Any], name: str, head: str) -> dict[str, Any]:
    """A followed copy: marked with its workspace and head, its cells not editable."""
    copy = plain(notebook)
    copy.setdefault("metadata", {})["spindel"] = {"following": name, "head": head}
    for cell in copy["cells"]:
        cell.setdefault("metadata", {}).update({"editable": False, "deletable": False})
    return copy
