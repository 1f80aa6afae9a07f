"""The registry of workspaces shared by the hubs of a mesh: one JetStream KV bucket, compare-and-swap.

Each workspace's descriptor (leases included) is one key of the bucket
``SPINDEL_WORKSPACES``. Every hub watches the bucket and keeps a copy of it
(:meth:`.Registry.arrived`), on which its operations run as they would alone
(:meth:`.Registry.collecting`). What an operation changed is then written at
the revision it was read at: of two hubs racing to publish, fork under one
name or claim one lease, one writes, and the other runs its operation again on
the winner's descriptor - and is refused as it would have been on one hub.

A hub's copy is also kept on its disk, so a hub out of the mesh still lists
and reads what it knew; it writes only once back. A hub that joins puts in the
bucket what only it knows (its workspaces from before it joined, or all of
them if the bucket was lost), and brings its followers' copies up to the
registry's heads. Nodes move by :mod:`.node_sync`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Callable
from typing import Any

from ..core.errors import SpindelError
from .mesh import REGISTRY_BUCKET, REGISTRY_STREAM, Mesh, reason
from .node_sync import NodeSync
from .workspaces import Registry

log = logging.getLogger(__name__)

#: Times an operation runs again after losing a race, before it gives up.
ATTEMPTS = 50
#: Seconds a write waits for the hub to join the registry (at start, or back after NATS was away).
JOIN_WAIT = 5.0

_KEPT = re.compile(r"[A-Za-z0-9_\-]")


def key_of(name: str) -> str:
    """Workspace ``name`` as a KV key: characters other than letters, digits, ``_`` and ``-`` as ``=XX``."""
    return "".join(c if _KEPT.fullmatch(c) else "".join(f"={b:02x}" for b in c.encode()) for c in name)


def name_of(key: str) -> str:
    """The workspace name a KV key stands for (the inverse of :func:`key_of`)."""
    return re.sub(r"(?:=[0-9a-f]{2})+", lambda m: bytes.fromhex(m.group().replace("=", "")).decode(), key)


class MeshRegistry:
    """This hub's side of the shared registry: its copy, kept by a watch, and its writes."""

    def __init__(self, mesh: Mesh, registry: Registry, nodes: NodeSync) -> None:
        self.mesh = mesh
        self.registry = registry
        self.nodes = nodes
        #: Following the bucket, caught up with it.
        self.live = False
        self._live = asyncio.Event()
        #: Called once caught up after joining (first: since the hub started).
        self.on_joined: Callable[[bool], None] = lambda first: None
        self._kv: Any = None
        self._subscription: Any = None
        self._joins = 0
        self.counts = {"registry_writes": 0, "registry_races": 0}

    def stats(self) -> dict[str, int]:
        return dict(self.counts)

    # -- operations ---------------------------------------------------------------------------

    async def write(self, operation: Callable[[], Any]) -> Any:
        """Run ``operation`` on this hub's copy, then write each descriptor it changed at the revision
        it read; if another hub wrote one meanwhile, take theirs and run the operation again."""
        for _ in range(ATTEMPTS):
            with self.registry.collecting() as changed:
                result = operation()
            if not changed:
                return result
            if not self.live:
                await self._joining()
                continue  # the copy may have moved while joining: run the operation again on it
            kv = self._kv
            try:
                for descriptor in changed:
                    await self._put(kv, descriptor)
            except _Raced as raced:
                self.counts["registry_races"] += 1
                await self._refresh(kv, raced.name)
                continue
            except Exception as exc:
                raise SpindelError(
                    f"the shared registry of workspaces cannot be written now: {reason(exc)}"
                ) from None
            return result
        raise SpindelError(
            f"the shared registry of workspaces changed {ATTEMPTS} times while writing: try again"
        )

    async def _joining(self) -> None:
        """Wait up to ``JOIN_WAIT`` s for this hub to (re)join the registry (it does so at start, and
        after NATS was out of reach); else say why it cannot write."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._live.wait(), JOIN_WAIT)
        if not self.live:
            raise SpindelError(
                "workspaces are shared by the hubs of the mesh, and this hub is not in it now "
                f"({self.mesh.problem or 'joining'}): try again once it has joined"
            )

    async def fetch(self, head: str, hub: str) -> None:
        """Have every node of ``head`` here (see :meth:`.NodeSync.fetch`)."""
        await self.nodes.fetch(head, hub)

    async def _put(self, kv: Any, descriptor: dict[str, Any]) -> None:
        from nats.js.errors import KeyWrongLastSequenceError

        name = descriptor["name"]
        try:
            revision = await kv.update(
                key_of(name), _encoded(descriptor), last=self.registry.revisions.get(name, 0)
            )
        except KeyWrongLastSequenceError:
            raise _Raced(name) from None
        self.counts["registry_writes"] += 1
        self.registry.arrived(descriptor, revision)

    async def _refresh(self, kv: Any, name: str) -> None:
        from nats.js.errors import KeyNotFoundError

        with contextlib.suppress(KeyNotFoundError):
            entry = await kv.get(key_of(name))
            self._take(name, entry.value, entry.revision)

    def _take(self, name: str, value: bytes, revision: int) -> None:
        """Take the descriptor the bucket holds for ``name``, if it is one (a hub that does not keep
        to the rules must not break the registry for every other hub)."""
        try:
            descriptor = json.loads(value)
            check_descriptor(descriptor, name)
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("spindel: ignored workspace %r of the shared registry: %s", name, exc)
            return
        self.registry.arrived(descriptor, revision)

    # -- in the mesh ---------------------------------------------------------------------------

    async def joined(self, nc: Any) -> None:
        """Open (or make) the bucket, catch up with it, put in what only this hub knows, then follow it."""
        from nats.js.api import DeliverPolicy, KeyValueConfig, StorageType

        js = nc.jetstream()
        self.registry.revisions.clear()  # the bucket's revisions are the ones that count (it may be new)
        try:
            kv = await js.create_key_value(
                KeyValueConfig(bucket=REGISTRY_BUCKET, history=1, storage=StorageType.FILE)
            )
        except Exception as exc:
            try:
                kv = await js.key_value(REGISTRY_BUCKET)
            except Exception:
                raise ConnectionError(
                    "workspaces are not shared with the mesh: cannot create or find the JetStream KV "
                    f"bucket {REGISTRY_BUCKET} ({reason(exc)}); it needs JetStream on the NATS server "
                    "(nats-server -js)"
                ) from None
        info = await js.stream_info(REGISTRY_STREAM)
        until = info.state.last_seq
        caught_up = asyncio.Event()
        if until == 0 or info.state.messages == 0:
            caught_up.set()

        async def on_entry(msg: Any) -> None:
            if not (msg.header and msg.header.get("KV-Operation")):  # a delete or purge: nothing to take
                self._take(
                    name_of(msg.subject[len(f"$KV.{REGISTRY_BUCKET}.") :]),
                    msg.data,
                    msg.metadata.sequence.stream,
                )
            if msg.metadata.num_pending == 0:
                caught_up.set()

        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
        self._subscription = await js.subscribe(
            f"$KV.{REGISTRY_BUCKET}.>",
            stream=REGISTRY_STREAM,
            cb=on_entry,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        )
        await caught_up.wait()
        self._kv = kv
        for name, descriptor in sorted(self.registry.workspaces.items()):
            if not self.registry.revisions.get(name):
                await self._adopt(kv, descriptor)
        self.live = True
        self._live.set()
        self._joins += 1
        log.info("spindel: workspaces follow the mesh's registry (%d known)", len(self.registry.workspaces))
        self.on_joined(self._joins == 1)

    async def _adopt(self, kv: Any, descriptor: dict[str, Any]) -> None:
        """Put in the shared registry a workspace only this hub knows, naming this hub where it is here."""
        from nats.js.errors import KeyWrongLastSequenceError

        descriptor = adopted(descriptor, self.registry.hub)
        try:
            revision = await kv.create(key_of(descriptor["name"]), _encoded(descriptor))
        except KeyWrongLastSequenceError:
            log.warning(
                "spindel: workspace %r of this hub is also in the mesh's registry: the mesh's is kept",
                descriptor["name"],
            )
            await self._refresh(kv, descriptor["name"])
            return
        self.registry.arrived(descriptor, revision)

    def left(self) -> None:
        self.live = False
        self._live.clear()
        self._subscription = None


class _Raced(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def check_descriptor(descriptor: Any, name: str) -> None:
    """Raise ValueError unless ``descriptor`` is a workspace descriptor named ``name``, with the
    fields every hub reads of it."""
    if not isinstance(descriptor, dict) or descriptor.get("name") != name:
        raise ValueError(f"not the descriptor of {name!r}")
    if not isinstance(descriptor.get("head"), str) or not isinstance(descriptor.get("followers"), list):
        raise ValueError("no head or no followers")
    owner = descriptor.get("owner")
    if owner is not None and not (_has(owner, "peer", str) and _has(owner, "expires", int | float)):
        raise ValueError("an owner without a peer or an end")
    for follower in descriptor["followers"]:
        if not (_has(follower, "peer", str) and _has(follower, "path", str | None)):
            raise ValueError("a follower without a peer or with a bad path")


def _has(entry: Any, field: str, kind: Any) -> bool:
    return isinstance(entry, dict) and isinstance(entry.get(field), kind)


def adopted(descriptor: dict[str, Any], hub: str) -> dict[str, Any]:
    """A descriptor made by a hub alone, as the mesh names things: its peers as ``NAME@HUB``, its
    head, file and copies on ``hub``."""

    def qualified(peer: str | None) -> str | None:
        return peer if not peer or "@" in peer else f"{peer}@{hub}"

    out = json.loads(json.dumps(descriptor))
    out["hub"] = out.get("hub") or hub
    if out.get("path"):
        out["path_hub"] = out.get("path_hub") or hub
    if out.get("owner"):
        out["owner"]["peer"] = qualified(out["owner"]["peer"])
    out["publisher"] = qualified(out.get("publisher"))
    for follower in out.get("followers") or []:
        follower["peer"] = qualified(follower["peer"])
        follower["hub"] = follower.get("hub") or hub
    return out


def _encoded(descriptor: dict[str, Any]) -> bytes:
    return json.dumps(descriptor, separators=(",", ":")).encode()
