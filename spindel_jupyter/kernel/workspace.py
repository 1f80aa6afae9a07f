"""Workspaces from a kernel: publish this notebook, follow, fork and merge, through the hub.

The hub is the registry (see :mod:`spindel_jupyter.hub.workspaces`); these calls
travel over the peer's connection, so the hub knows for sure which peer asks,
and the lease is enforced per peer.

A peer of the hub's own server lets the hub read and write the notebook files
there. An invited peer (which may run anywhere) sends its notebook's content
when it publishes, and writes the copies it follows or forks itself, where it
runs; its followed copies are rewritten here at every new head.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from ..core import crdt
from ..core.errors import NotWritable, SpindelError
from ..core.protocol import LWW, OWN
from ..core.signals import Signal
from ..peer import client, sync
from . import session
from .display import Table

log = logging.getLogger(__name__)

TIMEOUT = 60.0


def _op(op: str, **arguments: Any) -> Any:
    return client.current_peer().request(None, f"workspace.{op}", arguments, timeout=TIMEOUT)


def notebook_path() -> str:
    """This kernel's notebook (absolute), as the server told the kernel; error if there is none."""
    path = session.notebook_file()
    if not path:
        raise SpindelError(
            "this kernel does not know its notebook: pass the notebook's path (relative to the server root)"
        )
    return path


#: The signals wired for each followed or forked workspace: workspace -> topic -> Signal.
signals: dict[str, dict[str, Signal[Any]]] = {}


def publish(
    name: str, path: str | None = None, message: str = "", topics: dict[str, str] | None = None
) -> dict[str, Any]:
    """Publish the (saved) notebook as workspace ``name``'s new head; saves republish it.

    The states of the topics this kernel syncs go with it. ``topics`` adds
    topics with the role followers wire them by: ``subscriber`` (a read-only
    mirror, the default) or ``bidirectional`` (synced both ways).
    """
    roles = dict(topics or {})
    names = sorted(set(sync.followed_topics()) | set(roles))
    arguments: dict[str, Any] = {"name": name, "message": message, "topics": names, "roles": roles}
    source = path or notebook_path()
    if _on_hub_server():
        arguments["path"] = source
    else:
        arguments["notebook"] = json.loads(Path(source).read_text(encoding="utf-8"))
    return dict(_op("publish", **arguments))


def follow(name: str, into: str | None = None) -> dict[str, Any]:
    """A read-only copy of ``name`` (default ``following/NAME.ipynb``) that moves to every new head.

    The workspace's topics are wired here by role: a read-only mirror for
    ``subscriber`` topics, synced both ways for ``bidirectional`` ones (see ``signals``).
    """
    path = _near(into or f"following/{name}.ipynb")
    if _on_hub_server():
        descriptor = dict(_op("follow", name=name, path=path))
    else:
        descriptor = dict(_op("follow", name=name, deliver=True))
        _following[name] = Path(path)
        write_notebook(Path(path), descriptor.pop("notebook"))
        descriptor["copy"] = path
    _wire(name, descriptor, prefix="", writable=False)
    return descriptor


def fork(name: str, new: str | None = None, into: str | None = None) -> dict[str, Any]:
    """Your own editable copy of ``name`` (file ``forks/NEW.ipynb``), at once: no content is copied."""
    new = new or f"{name}-{_me()}"
    path = _near(into or f"forks/{new}.ipynb")
    if _on_hub_server():
        descriptor = dict(_op("fork", name=name, new=new, path=path))
    else:
        descriptor = dict(_op("fork", name=name, new=new, deliver=True))
        write_notebook(Path(path), descriptor.pop("notebook"), exclusive=True)
        descriptor["path"] = path
    _wire(new, descriptor, prefix=f"{new}/", writable=True)  # the fork's own copies, yours to write
    return descriptor


def merge(
    fork_name: str, strategy: str | None = None, force: bool = False, into: str | None = None
) -> dict[str, Any]:
    """Merge a fork into its parent (or ``into``); raises MergeConflict, changing nothing, on conflicts."""
    return dict(_op("merge", name=fork_name, strategy=strategy, force=force, into=into))


def claim(name: str, force: bool = False) -> dict[str, Any]:
    """Take the writer lease of ``name`` (an ended one; any with ``force``)."""
    return dict(_op("claim", name=name, force=force))


def workspaces() -> list[dict[str, Any]]:
    """Every workspace of the hub."""
    return list(_op("list"))


def table(items: list[dict[str, Any]]) -> Table:
    """Workspaces as a table: name, writer, head and its time, fork of, followers."""
    rows = []
    for item in items:
        owner = (item.get("owner") or {}).get("peer") or "-"
        fork_of = (item.get("fork_of") or {}).get("workspace") or "-"
        head = (item.get("head") or "")[:12] + (" (copies here behind)" if item.get("behind") else "")
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(item.get("updated") or 0))
        rows.append([item["name"], owner, head, when, fork_of, len(item.get("followers") or [])])
    columns = ["workspace", "writer", "head", "head time", "fork of", "followers"]
    return Table(columns, rows, title=f"{len(rows)} workspaces")


def _wire(name: str, descriptor: dict[str, Any], prefix: str, writable: bool) -> None:
    roles, kinds = descriptor.get("roles") or {}, descriptor.get("kinds") or {}
    wired: dict[str, Signal[Any]] = {}
    for topic in descriptor.get("topics") or []:
        kind = kinds.get(topic)
        signal = None
        if writable or roles.get(topic) == "bidirectional":
            start = crdt.type_for(kind)() if kind and kind != LWW else None
            with contextlib.suppress(NotWritable):  # another user's topic, shared read-only: mirrored
                signal = sync.sync_signal(topic, start)
        if signal is None:
            signal = sync.subscribe_signal(topic)
        wired[topic.removeprefix(prefix)] = signal
    signals[name] = wired


def _me() -> str:
    return client.current_peer().name


def _on_hub_server() -> bool:
    """Whether the hub reads and writes notebooks for this peer (it is one of its server's own)."""
    return client.current_peer().scope == OWN


#: Copies this peer keeps of workspaces it follows (invited peers write them themselves).
_following: dict[str, Path] = {}


def write_notebook(path: Path, notebook: dict[str, Any], exclusive: bool = False) -> None:
    """Write a notebook whole (a temporary file renamed over the old one); ``exclusive``: only a new file."""
    if exclusive and path.exists():
        raise SpindelError(f"{path} already exists: nothing was written; pick another file with --into")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def _refresh(descriptor: Any) -> None:
    """A followed workspace has a new head: rewrite this peer's own copy of it."""
    if not isinstance(descriptor, dict) or "notebook" not in descriptor:
        return
    path = _following.get(str(descriptor.get("name")))
    if path is not None:
        try:
            write_notebook(path, descriptor["notebook"])
        except OSError as exc:
            log.warning("spindel: could not update %s: %s", path, exc)


def _listen(peer: client.Peer) -> None:
    peer.listen("workspace", _refresh)


client.on_new_peer(_listen)


def _near(path: str) -> str:
    """A relative ``path`` next to this kernel's notebook (else relative to the server root)."""
    notebook = session.notebook_file()
    if os.path.isabs(path) or not notebook:
        return path
    return str(Path(notebook).parent / path)
