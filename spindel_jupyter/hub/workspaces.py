"""The registry of workspaces: published notebooks, their forks, merges and writer leases.

A workspace is a descriptor ``{name, user, owner, head, fork_of, topics,
created, updated, path, followers}`` kept as a JSON file; its content is nodes in the
:class:`~.store.NodeStore`: one node per cell (so identical cells are stored
once) and one commit node per version (parents, cell keys and ids, notebook
metadata, synced-topic states, author, time, message). A fork is only a new
descriptor pointing at the parent's head: it copies no cell, and starts its
own copies of the workspace's topics. A merge is three-way against the fork's
base and changes nothing when it finds a conflict, unless a strategy or force
is given (the rules of both are in :mod:`.merging`). One peer at a time holds a
workspace's writer lease; others get :class:`NotWritable`. A workspace belongs
to the user who published it (a fork to the user who forked it): the peers of
other users read, follow and fork it, and never write it - publish onto it,
claim its lease, merge into it (:func:`~.access.check_workspace_write`).

Plain Python: the handlers and the hub's ops call it, and it reports new heads
to ``on_head`` so the server can write followers' copies.

Alone, the descriptors are this hub's files. In a mesh of hubs they are one
registry shared by all (:mod:`.mesh_registry`): an operation runs here on this
hub's copy inside :meth:`Registry.collecting`, and what it changed is written
to the shared registry only if nobody changed it meanwhile (else it runs
again). Where things are is then named by hub: the hub that made a head (whose
store has its nodes), the hub whose server has a workspace's file, and each
follower's hub (the one that writes its copy).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nbformat

from ..core.errors import NotWritable, SpindelError, WorkspaceExists, WorkspaceNotFound
from . import durable, merging
from .access import check_workspace_write
from .store import NodeStore
from .topics import TopicStore

log = logging.getLogger(__name__)

_NAME = re.compile(r"[\w][\w.\-]{0,127}")


class Registry:
    """Workspace descriptors, persisted one JSON file each, over a node store."""

    def __init__(
        self,
        directory: Path,
        store: NodeStore,
        lease_seconds: float = 300.0,
        clock: Callable[[], float] = time.time,
        topics: TopicStore | None = None,
    ) -> None:
        self.directory = directory
        self.store = store
        #: The hub's topics: a fork copies its workspace's, a merge brings them back.
        self.topics = topics or TopicStore()
        self.lease_seconds = lease_seconds
        self.clock = clock
        #: Called with the descriptor when a workspace gets a new head; on any other change, on_change.
        self.on_head: Callable[[dict[str, Any]], None] | None = None
        self.on_change: Callable[[], None] | None = None
        #: Whether a peer is connected now (its leases stay renewed while it is).
        self.connected: Callable[[str], bool] = lambda peer: False
        #: This hub's name in a mesh of hubs ("" alone): where heads, files and copies made here are.
        self.hub = ""
        #: Peers of other hubs seen leaving the mesh: until when their leases last (their own hub,
        #: which would say so, may be gone).
        self.departed: dict[str, float] = {}
        #: Each descriptor's revision in the shared registry (in a mesh).
        self.revisions: dict[str, int] = {}
        self._pending: list[dict[str, Any]] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        self.workspaces: dict[str, dict[str, Any]] = {}
        for path in sorted(directory.glob("*.json")):
            try:
                descriptor = json.loads(path.read_text())
                self.workspaces[descriptor["name"]] = descriptor
            except (OSError, ValueError, KeyError) as exc:
                log.error("spindel: ignoring unreadable workspace file %s: %s", path.name, exc)

    # -- reading -------------------------------------------------------------------

    def all(self) -> list[dict[str, Any]]:
        return [self._public(d) for _, d in sorted(self.workspaces.items())]

    def get(self, name: str) -> dict[str, Any]:
        return self._public(self._descriptor(name))

    def notebook(self, head: str) -> dict[str, Any]:
        """The notebook (nbformat JSON) of commit ``head``; every node is read and verified first."""
        commit = self.store.get(head)
        cells = []
        for key, cell_id in commit["cells"]:
            cell = dict(self.store.get(key))
            cell["id"] = cell_id
            cells.append(cell)
        return {
            "cells": cells,
            "metadata": commit["metadata"],
            "nbformat": commit["nbformat"],
            "nbformat_minor": commit["nbformat_minor"],
        }

    # -- writing -------------------------------------------------------------------

    def publish(
        self,
        name: str,
        notebook: dict[str, Any],
        peer: str,
        message: str = "",
        path: str | None = None,
        topics: dict[str, Any] | None = None,
        roles: dict[str, str] | None = None,
        user: str = "",
    ) -> dict[str, Any]:
        """Store ``notebook`` as the new head of ``name`` (creating it, as ``user``'s); only the lease
        holder, a peer of that user, may.

        ``topics`` are the states of the notebook's synced topics, kept in the
        commit; ``roles`` says how followers wire each (subscriber or bidirectional).
        """
        _check_name(name)
        descriptor = self.workspaces.get(name)
        if descriptor is not None:
            self._check_writer(descriptor, peer, user)
        parents = [descriptor["head"]] if descriptor and descriptor.get("head") else []
        same_as = parents[0] if parents else None
        head = self._commit(normalized(notebook), parents, peer, message, topics or {}, same_as)
        if head is None:
            assert descriptor is not None
            return self._public(descriptor)  # publishing what is already there changes nothing
        now = self.clock()
        if descriptor is None:
            descriptor = {
                "name": name,
                "user": user,
                "owner": None,
                "head": head,
                "fork_of": None,
                "topics": sorted(topics or {}),
                "created": now,
                "updated": now,
                "path": path,
                "followers": [],
            }
            self.workspaces[name] = descriptor
        descriptor["head"] = head
        descriptor["hub"] = self.hub  # whose store has the head's nodes
        descriptor["updated"] = now
        descriptor["owner"] = {"peer": peer, "expires": now + self.lease_seconds}
        if path is not None:
            descriptor["path"] = path
            descriptor["path_hub"] = self.hub
            descriptor["publisher"] = peer  # saves of that file republish as this peer
        if topics:
            descriptor["topics"] = sorted(set(descriptor.get("topics") or []) | set(topics))
        if roles:
            descriptor["roles"] = {**(descriptor.get("roles") or {}), **roles}
            descriptor["topics"] = sorted(set(descriptor.get("topics") or []) | set(roles))
        self._saved(descriptor, new_head=True)
        return self._public(descriptor)

    def fork(self, name: str, new: str, peer: str, path: str | None = None, user: str = "") -> dict[str, Any]:
        """A new workspace ``new`` at ``name``'s head, ``user``'s, its lease held by ``peer``: a pointer,
        no cell copied; the workspace's topics are copied, the fork's own from now on (see
        :mod:`.merging`)."""
        _check_name(new)
        parent = self._descriptor(name)
        if new in self.workspaces:
            raise WorkspaceExists(f"a workspace named {new!r} already exists; pick another name")
        now = self.clock()
        descriptor = {
            "name": new,
            "user": user,
            "owner": {"peer": peer, "expires": now + self.lease_seconds},
            "head": parent["head"],
            "hub": parent.get("hub", ""),
            "fork_of": {"workspace": name, "head": parent["head"]},
            **merging.fork_topics(self.topics, parent, new),
            "created": now,
            "updated": now,
            "path": path,
            "path_hub": self.hub,
            "publisher": peer if path else None,
            "followers": [],
        }
        self.workspaces[new] = descriptor
        self._saved(descriptor, new_head=False)
        merging.copy_topics(self.topics, descriptor)
        return self._public(descriptor)

    def store_cells(self, notebook: dict[str, Any]) -> None:
        """Store the cells of ``notebook`` durably, ahead of its publish (safe on another thread:
        the publish then finds them stored and writes only its commit)."""
        batch = durable.Batch()
        for cell in normalized(notebook).get("cells", []):  # as the commit will name them
            self.store.put(_content(cell), batch)
        batch.sync()

    def claim(self, name: str, peer: str, force: bool = False, user: str = "") -> dict[str, Any]:
        """Take (or renew) the lease of ``name`` for ``peer`` of ``user``; refused to the peers of other
        users, and while another peer holds it, unless forced."""
        descriptor = self._descriptor(name)
        self.check_user(descriptor, user)
        holder = self._holder(descriptor)
        if holder not in (None, peer):
            if not force:
                self._check_writer(descriptor, peer, user)
            log.warning("spindel: %r took the lease of workspace %r from %r by force", peer, name, holder)
        descriptor["owner"] = {"peer": peer, "expires": self.clock() + self.lease_seconds}
        self._saved(descriptor, new_head=False)
        return self._public(descriptor)

    def follow(self, name: str, peer: str, path: str | None) -> dict[str, Any]:
        """Record that ``peer`` follows ``name`` in the server's notebook at ``path``, or, with no
        path, in a copy of its own that it gets with every new head."""
        descriptor = self._descriptor(name)

        def same(f: dict[str, Any]) -> bool:
            if path:
                return bool(f["path"] == path and self.here(f))
            return not f["path"] and f["peer"] == peer

        followers = [f for f in descriptor["followers"] if not same(f)]
        descriptor["followers"] = [*followers, {"peer": peer, "path": path, "hub": self.hub}]
        self._saved(descriptor, new_head=False)
        return self._public(descriptor)

    def here(self, entry: dict[str, Any], field: str = "hub") -> bool:
        """Whether ``entry`` (a follower, or a descriptor's file with ``path_hub``) is on this hub."""
        return entry.get(field, "") in ("", self.hub)

    def qualified(self, peer: str) -> str:
        """How the registry names a peer of this hub: in a mesh, with the hub (``alice@A``)."""
        return peer if not self.hub or "@" in peer else f"{peer}@{self.hub}"

    def local_name(self, peer: str) -> str:
        """The name on this hub of a peer the registry names (``alice@A`` is ``alice`` on hub A)."""
        suffix = f"@{self.hub}"
        return peer[: -len(suffix)] if self.hub and peer.endswith(suffix) else peer

    def file_here(self, descriptor: dict[str, Any]) -> str | None:
        """The path of ``descriptor``'s notebook file if it is on this hub's server."""
        path = descriptor.get("path")
        return path if path and self.here(descriptor, "path_hub") else None

    def binds(self, name: str, path: str) -> bool:
        """Whether the server's file ``path`` is one the hub keeps for workspace ``name``: the
        notebook it is published from or forked into, or a follower's copy."""
        descriptor = self.workspaces.get(name)
        if descriptor is None:
            return False
        return self.file_here(descriptor) == path or any(
            f["path"] == path and self.here(f) for f in descriptor["followers"]
        )

    def merge(
        self,
        fork: str,
        peer: str,
        strategy: str | None = None,
        force: bool = False,
        into: str | None = None,
        user: str = "",
    ) -> dict[str, Any]:
        """Merge ``fork`` back into the workspace it was forked from: cells three-way against the
        fork base, topics by their kind (see :mod:`.merging`).

        Any conflict aborts the whole merge with :class:`MergeConflict` listing
        the conflicting cells or topics, unless ``strategy`` (ours, theirs, union)
        or ``force`` (theirs wins) is given. Needs the parent's lease, held by a peer of the user
        whose the parent is, and the topics it brings back to be that user's to write.
        """
        merging.check_strategy(strategy)
        source = self._descriptor(fork)
        if not source.get("fork_of"):
            raise SpindelError(f"{fork!r} is not a fork: merge a fork into the workspace it came from")
        parent = self._descriptor(into or source["fork_of"]["workspace"])
        self._check_writer(parent, peer, user, merging=fork)
        folds = merging.topics_back(self.topics, source, strategy, force)
        for _, original, _ in folds:
            self.topics.check_write(original, user)
        result = self._merge_cells(source, parent, peer, strategy, force)
        folded = [self.topics.fold(forked, original, theirs, user) for forked, original, theirs in folds]
        if any(folded) and not result["merged"]:
            reason = f"only the topics of {fork!r} had changes: they were merged back; its cells had none"
            result = {**result, "merged": True, "reason": reason, "workspace": self._public(parent)}
        # Settled now, whoever won: the next merge compares the topics with this one. The fork is
        # saved once, with its new base of cells (_merge_cells) and of topics.
        stamps = merging.merge_stamps(self.topics, folds)
        if result["merged"] or stamps != source.get("merge_stamps"):
            source["merge_stamps"] = stamps
            self._saved(source, new_head=False)
        return result

    def _merge_cells(
        self, source: dict[str, Any], parent: dict[str, Any], peer: str, strategy: str | None, force: bool
    ) -> dict[str, Any]:
        fork = source["name"]
        base_head, ours_head, theirs_head = source["fork_of"]["head"], parent["head"], source["head"]
        if theirs_head == base_head:
            return {"merged": False, "head": ours_head, "reason": f"{fork!r} has no changes to merge"}
        base, ours, theirs = (self.notebook(h) for h in (base_head, ours_head, theirs_head))
        # When nothing changed on the parent, the fork is taken as it is.
        if ours_head == base_head:
            merged = theirs
        else:
            merged = normalized(merging.three_way(base, ours, theirs, strategy, force))
        message = f"merge {fork} into {parent['name']}"
        head = self._commit(merged, [ours_head, theirs_head], peer, message, {})
        parent["head"] = head
        parent["hub"] = self.hub
        parent["updated"] = self.clock()
        # The fork's merged head is now in the parent: it is the base of the next merge.
        source["fork_of"] = {"workspace": parent["name"], "head": theirs_head}
        self._saved(parent, new_head=True)
        return {"merged": True, "head": head, "workspace": self._public(parent)}

    # -- internals -----------------------------------------------------------------

    def _descriptor(self, name: str) -> dict[str, Any]:
        try:
            return self.workspaces[name]
        except KeyError:
            known = ", ".join(sorted(self.workspaces)) or "none"
            raise WorkspaceNotFound(f"no workspace named {name!r} (known: {known})") from None

    def _holder(self, descriptor: dict[str, Any]) -> str | None:
        """The peer holding the lease: renewed while it is connected, expiring after it leaves."""
        owner = descriptor.get("owner")
        if not owner:
            return None
        peer, now = owner["peer"], self.clock()
        if self.connected(peer) or owner["expires"] > now or self.departed.get(peer, -1e300) > now:
            return str(peer)
        return None

    def _check_writer(
        self, descriptor: dict[str, Any], peer: str, user: str, merging: str | None = None
    ) -> None:
        """Pass if ``peer`` (of ``user``) may write the workspace and holds its lease; else say why, and
        what to do (merging: not to fork)."""
        self.check_user(descriptor, user, merging)
        holder = self._holder(descriptor)
        name = descriptor["name"]
        if holder == peer:
            return
        if holder is None:
            instead = f"then merge {merging!r} again" if merging else "or fork it to write your own copy"
            raise NotWritable(
                f"workspace {name!r} has no writer (its lease ended): claim it (%spin_claim {name}) {instead}"
            )
        if merging:
            raise NotWritable(
                f"workspace {name!r} is held by {holder!r}, so only {holder!r} can merge {merging!r} "
                f"into it: ask them to run %spin_merge {merging}, or claim {name!r} once {holder!r} "
                "has left and the lease has ended"
            )
        raise NotWritable(
            f"workspace {name!r} is held by {holder!r}; fork it to edit your own copy, "
            f"or claim it once {holder!r} has left and the lease has ended"
        )

    @staticmethod
    def check_user(descriptor: dict[str, Any], user: str, merging: str | None = None) -> None:
        """Pass if the peers of ``user`` may write the workspace (``merging``: that fork into it)."""
        check_workspace_write(descriptor["name"], descriptor.get("user") or "", user, merging)

    def peer_renamed(self, old: str, new: str) -> None:
        """A peer was renamed: its leases, published notebooks and followed copies go with it."""
        for descriptor in self.workspaces.values():
            changed = False
            owner = descriptor.get("owner")
            if owner and owner["peer"] == old:
                owner["peer"], changed = new, True
            if descriptor.get("publisher") == old:
                descriptor["publisher"], changed = new, True
            for follower in descriptor.get("followers") or []:
                if follower["peer"] == old:
                    follower["peer"], changed = new, True
            if changed:
                self._saved(descriptor, new_head=False)

    def peer_left(self, peer: str) -> None:
        """Leases of a peer that left run for ``lease_seconds`` more, then end."""
        for descriptor in self.workspaces.values():
            owner = descriptor.get("owner")
            if owner and owner["peer"] == peer:
                owner["expires"] = self.clock() + self.lease_seconds
                self._saved(descriptor, new_head=False)

    def _commit(
        self,
        notebook: dict[str, Any],
        parents: list[str],
        peer: str,
        message: str,
        topics: dict[str, Any],
        same_as: str | None = None,
    ) -> str | None:
        """Store the cells, then the commit; None (no commit) if ``same_as`` has exactly this content."""
        cells = [[self.store.put(_content(cell)), cell.get("id") or ""] for cell in notebook.get("cells", [])]
        metadata = notebook.get("metadata", {})
        if same_as is not None:
            head = self.store.get(same_as)
            if head["cells"] == cells and head["metadata"] == metadata and head["topics"] == topics:
                return None
        commit = {
            "parents": parents,
            "cells": cells,
            "metadata": metadata,
            "nbformat": notebook.get("nbformat", 4),
            "nbformat_minor": notebook.get("nbformat_minor", 5),
            "topics": topics,
            "author": peer,
            "time": self.clock(),
            "message": message,
        }
        return self.store.put(commit)  # written last: a head is complete once it exists

    def _saved(self, descriptor: dict[str, Any], new_head: bool) -> None:
        """Write ``descriptor`` durably, after the nodes it names: a reply follows only once both are.

        Inside :meth:`collecting` it is only collected, for the shared registry to write.
        """
        self.store.sync()
        if self._pending is not None:
            self._pending.append(copy.deepcopy(descriptor))
            return
        self._write(descriptor)
        # A new head is announced by whoever writes its copies, once they are written.
        if new_head and self.on_head is not None:
            self.on_head(self._public(descriptor))
        elif self.on_change is not None:
            self.on_change()

    def _write(self, descriptor: dict[str, Any]) -> None:
        path = self.directory / f"{descriptor['name']}.json"
        durable.write_file(path, json.dumps(descriptor, indent=1).encode())

    # -- shared by a mesh of hubs ----------------------------------------------------------

    @contextlib.contextmanager
    def collecting(self) -> Iterator[list[dict[str, Any]]]:
        """Run an operation on this hub's copy of a shared registry: the descriptors it changes are
        collected (for the shared registry to write, each at its revision here), and this copy is
        left as it was - it changes when the shared registry says so (:meth:`arrived`)."""
        before = {name: copy.deepcopy(d) for name, d in self.workspaces.items()}
        pending: list[dict[str, Any]] = []
        self._pending = pending
        try:
            yield pending
        finally:
            self._pending = None
            self.workspaces = before

    def arrived(self, descriptor: dict[str, Any], revision: int) -> None:
        """The shared registry holds ``descriptor`` at ``revision``: take it unless this copy is newer."""
        name = descriptor["name"]
        if revision <= self.revisions.get(name, 0):
            return
        before = self.workspaces.get(name)
        self.revisions[name] = revision
        if before == descriptor:
            return  # as this hub has it already (a replay after joining): nothing to write or tell
        self.workspaces[name] = descriptor
        self._write(descriptor)  # this hub's copy, for when the mesh is out of reach
        if (before or {}).get("head") != descriptor.get("head") and self.on_head is not None:
            self.on_head(self._public(descriptor))
        elif self.on_change is not None:
            self.on_change()

    def _public(self, descriptor: dict[str, Any]) -> dict[str, Any]:
        view = copy.deepcopy(descriptor)
        if self._holder(descriptor) is None:
            view["owner"] = None  # an ended lease is no lease
        return view


def _content(cell: dict[str, Any]) -> dict[str, Any]:
    """A cell without its id: identical cells are one node, their ids live in the commit."""
    return {key: value for key, value in cell.items() if key != "id"}


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SpindelError(f"invalid workspace name {name!r}: use letters, digits, '_', '.' or '-'")


def normalized(notebook: Any) -> dict[str, Any]:
    """A notebook as plain JSON data with each source a single string (as the contents API gives),
    without what nbformat never stores (a cell's ``trusted`` mark, a signature)."""
    if isinstance(notebook, dict) and _is_normal(notebook):
        return _without_transient(plain(notebook))  # as the contents API read it: nothing to convert
    text = json.dumps(notebook) if isinstance(notebook, dict) else nbformat.writes(notebook)
    return plain(nbformat.reads(text, as_version=4))


_TRANSIENT = ("orig_nbformat", "orig_nbformat_minor", "signature")


def _is_normal(notebook: dict[str, Any]) -> bool:
    """Whether nbformat would read ``notebook`` back unchanged but for transient fields: format 4.5 or
    later, every cell with an id, and no text split in lines (as nbformat writes it to files)."""
    if notebook.get("nbformat") != 4 or not isinstance(notebook.get("nbformat_minor"), int):
        return False
    if notebook["nbformat_minor"] < 5 or not isinstance(notebook.get("metadata"), dict):
        return False
    for cell in notebook.get("cells") or []:
        if (
            not isinstance(cell, dict)
            or not isinstance(cell.get("id"), str)
            or not isinstance(cell.get("source"), str)
        ):
            return False
        if cell.get("attachments") or any(_split(output) for output in cell.get("outputs") or []):
            return False
    return isinstance(notebook.get("cells"), list)


def _split(output: Any) -> bool:
    """Whether an output holds text split in lines (or is not an output at all)."""
    if not isinstance(output, dict):
        return True
    if isinstance(output.get("text"), list):
        return True
    return any(isinstance(value, list) for value in (output.get("data") or {}).values())


def _without_transient(notebook: dict[str, Any]) -> dict[str, Any]:
    for key in _TRANSIENT:
        notebook["metadata"].pop(key, None)
    for cell in notebook["cells"]:
        if isinstance(cell.get("metadata"), dict):
            cell["metadata"].pop("trusted", None)
    return notebook


def plain(node: Any) -> Any:
    """nbformat's NotebookNode (and any nested data) as plain dicts and lists."""
    if isinstance(node, dict):
        return {key: plain(value) for key, value in node.items()}
    if isinstance(node, list):
        return [plain(item) for item in node]
    return node
