"""The mesh: this hub joined with the hubs of other Jupyter servers over NATS.

Without ``c.SpindelHub.nats_url`` the hub works alone and none of this runs.
With it, the hub connects with nats-py and keeps trying while NATS cannot be
reached (saying why in the log), serving its own peers all along.

Subjects (each name is one subject token, see :func:`token`):

``spindel.hubs.HUB``          HUB's announcement: its peers, every ``HEARTBEAT`` s and on change.
                               A hub not heard from for ``HUB_TTL`` s has left.
``spindel.frames.TO.FROM``    frames from the peers of hub FROM to those of hub TO (calls, replies,
                               streamed output, cancels), in order.
``spindel.topics.TOPIC.HUB``  changes to a topic made on HUB (:mod:`.mesh_topics`).
``spindel.nodes.TO.FROM``     asks for workspace nodes and their answers (:mod:`.node_sync`).
``$KV.SPINDEL_WORKSPACES.*``  the shared registry of workspaces (:mod:`.mesh_registry`).

A message larger than NATS's payload limit goes as chunks, in order, each
marked as the last or not (a publisher's messages on one subject arrive in order).

The sending hub is read from the subject, never from the message: with one
NATS user per hub, each allowed to publish only on subjects ending in its own
name (``docs/federation.md``), a hub cannot speak for another.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from ..core import wire
from ..core.retry import Backoff

log = logging.getLogger(__name__)

PREFIX = "spindel"
#: The JetStream stream of topic changes (:mod:`.mesh_topics`).
TOPICS_STREAM = "SPINDEL_TOPICS"
#: The JetStream KV bucket of workspace descriptors (:mod:`.mesh_registry`), and its stream.
REGISTRY_BUCKET = "SPINDEL_WORKSPACES"
REGISTRY_STREAM = f"KV_{REGISTRY_BUCKET}"
#: Seconds between a hub's announcements, and how long one is believed without the next.
HEARTBEAT = 0.5
HUB_TTL = 2.0
_TICK = 0.25

_BACKOFF_FIRST = 0.2
_BACKOFF_MAX = 5.0

ALONE, CONNECTING, CONNECTED, DISCONNECTED = "alone", "connecting", "connected", "disconnected"

# The first byte of a frame's NATS message: the frame's last (or only) chunk, or one with more to come.
_LAST, _MORE = b"\x00", b"\x01"


_PLAIN = re.compile(r"[A-Za-z0-9_\-:@]")


@functools.lru_cache(maxsize=4096)
def token(name: str) -> str:
    """``name`` as one NATS subject token: ``.``, ``*``, ``>``, ``~`` and whitespace escaped as ``~XX``."""
    return "".join(c if _PLAIN.fullmatch(c) else "".join(f"~{b:02x}" for b in c.encode()) for c in name)


def untoken(text: str) -> str:
    """The name a subject token stands for (the inverse of :func:`token`)."""
    if "~" not in text:
        return text
    out, i = bytearray(), 0
    while i < len(text):
        if text[i] == "~":
            out.append(int(text[i + 1 : i + 3], 16))
            i += 3
        else:
            out.extend(text[i].encode())
            i += 1
    return out.decode()


def hubs_subject(hub: str) -> str:
    return f"{PREFIX}.hubs.{token(hub)}"


def frames_subject(to_hub: str, from_hub: str) -> str:
    return f"{PREFIX}.frames.{token(to_hub)}.{token(from_hub)}"


class Part(Protocol):
    """Something more the hub does in the mesh while connected (topics: :mod:`.mesh_topics`)."""

    async def joined(self, nc: Any) -> None:
        """The hub is connected through ``nc`` (a nats-py client); runs until it returns or is cancelled."""

    def left(self) -> None:
        """The connection is gone."""

    def stats(self) -> dict[str, int]:
        """Counters for ``/spindel/api/stats``."""


class Mesh:
    """This hub's membership of the mesh: its connection to NATS, the hubs it sees, and the frames
    its peers exchange with theirs."""

    def __init__(
        self, url: str, hub_name: str, credentials: str = "", max_frame_bytes: int = 64 << 20
    ) -> None:
        self.url = url
        self.hub_name = hub_name
        self.credentials = credentials
        self.max_frame_bytes = max_frame_bytes
        self.state = CONNECTING
        #: Why the last attempt to reach NATS failed ("" once connected).
        self.problem = ""
        #: The other hubs heard from: their last announcement, and when it came (monotonic).
        self._hubs: dict[str, tuple[dict[str, Any], float]] = {}
        #: This hub's own peers, as announced to the mesh.
        self._peers: list[dict[str, Any]] = []
        self._changed: asyncio.Event | None = None
        #: Called when the hubs of the mesh or their peers changed.
        self.on_peers: Callable[[], None] = lambda: None
        #: Called with (hub, frame) for each frame a peer of another hub sent to one of this hub's.
        self.on_frame: Callable[[str, wire.Buffer], None] = lambda hub, frame: None
        self._outbox: deque[tuple[str, wire.Buffer, wire.Buffer, dict[str, str] | None]] = deque()
        self._draining = False
        self._finishing: set[asyncio.Task[None]] = set()
        self._chunks = Chunks(max_frame_bytes)
        #: What else runs while connected.
        self.parts: list[Part] = []
        #: Frames and bytes this hub sent to and received from other hubs.
        self.counts = {"frames_out": 0, "frames_in": 0, "bytes_out": 0, "bytes_in": 0}
        self._nc: Any = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Join in the background, on the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Leave: the other hubs are told at once, the connection closes."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        nc, self._nc = self._nc, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.publish(hubs_subject(self.hub_name), json.dumps({"left": True}).encode())
                await nc.flush(timeout=1)
            with contextlib.suppress(Exception):
                await nc.close()

    def set_peers(self, peers: list[dict[str, Any]]) -> None:
        """This hub's own peers changed: announce them now."""
        self._peers = [_announced(peer) for peer in peers]
        if self._changed is not None:
            self._changed.set()

    def peers(self) -> list[dict[str, Any]]:
        """The peers of the mesh's other hubs, as last seen, each with its hub."""
        return [
            {**peer, "hub": hub, "local": False}
            for hub, (entry, _) in sorted(self._hubs.items())
            for peer in entry.get("peers") or []
            if isinstance(peer, dict) and isinstance(peer.get("name"), str)
        ]

    def hubs(self) -> list[str]:
        """The hubs of the mesh, this one included, as last seen."""
        return sorted([*self._hubs, self.hub_name]) if self.state == CONNECTED else []

    def reaches(self, hub: str) -> bool:
        """Whether frames sent to ``hub`` can arrive now."""
        return hub in self._hubs and self._nc is not None

    def send(self, hub: str, frame: bytes, body: wire.Buffer = b"") -> None:
        """Send ``frame`` (and ``body``) to ``hub``, in order; dropped if the mesh is out of reach.

        Never blocks (see :meth:`publish`). What waits for a reply learns of a hub
        out of reach through :attr:`on_peers` (it leaves the list).
        """
        if self._nc is None:
            return
        self.counts["frames_out"] += 1
        self.counts["bytes_out"] += len(frame) + len(body)
        self.publish(frames_subject(hub, self.hub_name), frame, body)

    def publish(
        self, subject: str, data: wire.Buffer, more: wire.Buffer = b"", headers: dict[str, str] | None = None
    ) -> None:
        """Publish ``data`` then ``more`` as one message on ``subject`` (in chunks if need be), in
        the order of the calls: now, unless NATS's buffer is full, then as soon as it takes more.

        Dropped when out of the mesh: what waits for it learns so otherwise.
        """
        if self._nc is None:
            return
        self._outbox.append((subject, data, more, headers))
        if not self._draining:
            self._run_now(self._drain())

    def stats(self) -> dict[str, Any]:
        """What ``/spindel/api/stats`` shows of the mesh."""
        return {
            "state": self.state,
            "hub": self.hub_name,
            "nats": _without_credentials(self.url),
            "hubs": self.hubs(),
            "problem": self.problem,
            **self.counts,
            **{key: value for part in self.parts for key, value in part.stats().items()},
        }

    async def _run(self) -> None:
        backoff = Backoff(_BACKOFF_FIRST, _BACKOFF_MAX)
        while True:
            try:
                await self._connect()
                backoff.reset()
                await self._serve()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.state = DISCONNECTED if self.state == CONNECTED else CONNECTING
                self.problem = str(exc) if isinstance(exc, _Unreachable) else reason(exc)
                log.warning(
                    "spindel: cannot reach NATS at %s to join the mesh as %r: %s; this hub serves its own "
                    "peers meanwhile and tries again",
                    _without_credentials(self.url), self.hub_name, self.problem,
                )  # fmt: skip
                nc, self._nc = self._nc, None
                self._outbox.clear()
                self._chunks.clear()
                for part in self.parts:
                    part.left()
                if nc is not None:
                    with contextlib.suppress(Exception):
                        await nc.close()
                had_hubs, self._hubs = bool(self._hubs), {}  # out of the mesh, nobody there is reachable
                if had_hubs:
                    self.on_peers()
                await asyncio.sleep(backoff.next())

    async def _connect(self) -> None:
        import nats

        options: dict[str, Any] = {
            "name": f"spindel hub {self.hub_name}",
            "connect_timeout": 2,
            "allow_reconnect": False,  # this loop reconnects, and says so
            "max_reconnect_attempts": 1,  # 0 would make nats-py try the first connection forever
            "reconnect_time_wait": 0.1,
        }
        if self.credentials:
            options["user_credentials"] = self.credentials

        async def quiet(exc: Exception) -> None:  # nats-py logs every failed attempt on its own otherwise
            self.problem = reason(exc)
            if "permissions violation" in self.problem.lower():
                log.warning("spindel: NATS refused this hub (%r): %s", self.hub_name, self.problem)

        self.problem = ""
        try:
            self._nc = await nats.connect(self.url, error_cb=quiet, **options)
        except nats.errors.NoServersError:
            raise _Unreachable(self.problem or "no NATS server answered") from None

    async def _serve(self) -> None:
        """Announce this hub, follow the others, and carry frames, until the connection drops."""
        nc = self._nc
        limit = 4 * self.max_frame_bytes + (64 << 20)  # what may wait, unread, before NATS drops some
        await nc.subscribe(f"{PREFIX}.hubs.*", cb=self._on_announcement)
        await nc.subscribe(
            f"{PREFIX}.frames.{token(self.hub_name)}.*",
            cb=self._on_frames,
            pending_msgs_limit=1_000_000,
            pending_bytes_limit=limit,
        )
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(self._keep(part, nc)) for part in self.parts]
        since = time.time()
        self._changed = asyncio.Event()
        announced = 0.0
        try:
            while not nc.is_closed:
                now = time.monotonic()
                if self._changed.is_set() or now - announced >= HEARTBEAT:
                    self._changed.clear()
                    entry = {"since": since, "peers": self._peers}
                    await nc.publish(hubs_subject(self.hub_name), json.dumps(entry).encode())
                    announced = now
                    if self.state != CONNECTED:
                        await nc.flush(timeout=2)
                        self.state, self.problem = CONNECTED, ""
                        where = _without_credentials(self.url)
                        log.info("spindel: joined the mesh at %s as %r", where, self.hub_name)
                        self.on_peers()
                gone = [hub for hub, (_, seen) in self._hubs.items() if now - seen > HUB_TTL]
                for hub in gone:
                    log.info("spindel: hub %r left the mesh (not heard from for %.0f s)", hub, HUB_TTL)
                    self._forget(hub)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), _TICK)
        finally:
            for task in tasks:
                task.cancel()
        raise ConnectionError("the connection to NATS closed")

    async def _keep(self, part: Part, nc: Any) -> None:
        """Run ``part`` while connected; if it fails, say why and try it again, the rest of the mesh
        (calls, peer lists) going on meanwhile."""
        backoff = Backoff(_BACKOFF_FIRST, _BACKOFF_MAX)
        while True:
            try:
                await part.joined(nc)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.problem = reason(exc)
                log.warning("spindel: %s; trying again in a moment", self.problem)
                part.left()
                await asyncio.sleep(backoff.next())

    def _run_now(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run ``coroutine`` now, as far as it goes without waiting; a task takes it on from where it waits.

        Publishing with nats-py waits for nothing unless its buffer is full, so a
        frame leaves in the turn that made it instead of at some task's next turn
        (a hop each way of a call across hubs).
        """
        try:
            waiting = coroutine.send(None)
        except StopIteration:
            return
        except Exception:
            log.exception("spindel: failed to publish to the mesh")
            return

        def resume(_: object = None) -> None:
            task = asyncio.ensure_future(coroutine)
            self._finishing.add(task)
            task.add_done_callback(self._finished)

        if isinstance(waiting, asyncio.Future):
            waiting.add_done_callback(resume)  # resumed once what it awaits is done, as a task would
        else:
            asyncio.get_running_loop().call_soon(resume)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._finishing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("spindel: failed to publish to the mesh: %s", reason(task.exception()))  # type: ignore[arg-type]

    async def _drain(self) -> None:
        """Publish what is queued, in order; one drain at a time, so order holds."""
        nc = self._nc
        if self._draining or nc is None:
            return
        self._draining = True
        try:
            chunk = max(1024, int(nc.max_payload) - 64)
            while self._outbox:
                subject, data, more, headers = self._outbox.popleft()
                size = len(data) + len(more)
                if size < chunk:
                    await nc.publish(subject, b"".join((_LAST, data, more)), headers=headers)
                    continue
                whole = memoryview(b"".join((data, more)))
                for start in range(0, size, chunk):
                    mark = _LAST if start + chunk >= size else _MORE
                    await nc.publish(subject, mark + whole[start : start + chunk], headers=headers)
                    headers = None  # on the first chunk only (a rollup clears what came before it)
        finally:
            self._draining = False

    async def _on_announcement(self, msg: Any) -> None:
        hub = untoken(msg.subject.rsplit(".", 1)[-1])
        if hub == self.hub_name:
            return
        try:
            entry = json.loads(msg.data)
        except ValueError:
            log.warning("spindel: dropped an announcement of hub %r that is not JSON", hub)
            return
        if not isinstance(entry, dict) or entry.get("left"):
            if hub in self._hubs:
                log.info("spindel: hub %r left the mesh", hub)
                self._forget(hub)
            return
        before = self._hubs.get(hub)
        self._hubs[hub] = (entry, time.monotonic())
        if before is None:
            log.info("spindel: hub %r joined the mesh", hub)
        if before is None or before[0].get("peers") != entry.get("peers"):
            self.on_peers()

    def _forget(self, hub: str) -> None:
        self._hubs.pop(hub, None)
        self.on_peers()

    async def _on_frames(self, msg: Any) -> None:
        frame = self._chunks.add(msg.subject, msg.data)
        if frame is None:
            return
        hub = untoken(msg.subject.rsplit(".", 1)[-1])
        self.counts["frames_in"] += 1
        self.counts["bytes_in"] += len(frame)
        try:
            self.on_frame(hub, frame)
        except Exception:
            log.exception("spindel: failed to handle a frame from hub %r", hub)


class Chunks:
    """Messages put back together from their chunks, per subject (one publisher's arrive in order)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._parts: dict[str, list[bytes]] = {}

    def add(self, subject: str, data: bytes) -> wire.Buffer | None:
        """The whole message once ``data`` is its last chunk, else None."""
        parts = self._parts.get(subject)
        if data[:1] == _MORE:
            parts = self._parts.setdefault(subject, [])
            parts.append(data[1:])
            if sum(len(p) for p in parts) > self.limit:
                log.warning("spindel: dropped a message on %s: over %d bytes", subject, self.limit)
                parts.clear()
            return None
        if parts:
            del self._parts[subject]
            return b"".join([*parts, data[1:]])
        return memoryview(data)[1:]

    def clear(self) -> None:
        self._parts.clear()


def permissions(hub: str) -> dict[str, Any]:
    """The NATS permissions of hub ``hub``'s own user: it publishes only as itself.

    It may announce only itself, send frames, topic changes and node asks or
    answers only as coming from itself; it reads what is addressed to it, the
    others' announcements, the topic stream and the registry of workspaces
    (which every hub writes, by compare-and-swap). With one such user per hub,
    a hub cannot speak for another (``docs/federation.md`` shows a whole server
    configuration).
    """
    me = token(hub)
    streams = [
        api
        for stream in (TOPICS_STREAM, REGISTRY_STREAM)
        for api in (
            f"$JS.API.STREAM.CREATE.{stream}",
            f"$JS.API.STREAM.INFO.{stream}",
            f"$JS.API.STREAM.MSG.GET.{stream}",
            f"$JS.API.DIRECT.GET.{stream}",
            f"$JS.API.DIRECT.GET.{stream}.>",
            f"$JS.API.CONSUMER.CREATE.{stream}",
            f"$JS.API.CONSUMER.CREATE.{stream}.>",
            f"$JS.API.CONSUMER.DELETE.{stream}.>",
            f"$JS.API.CONSUMER.INFO.{stream}.>",
        )
    ]
    return {
        "publish": {
            "allow": [
                f"{PREFIX}.hubs.{me}",
                f"{PREFIX}.frames.*.{me}",
                f"{PREFIX}.topics.*.{me}",
                f"{PREFIX}.nodes.*.{me}",
                f"$KV.{REGISTRY_BUCKET}.>",
                "$JS.API.INFO",
                *streams,
                "$JS.FC.>",
            ]
        },
        "subscribe": {
            "allow": [f"{PREFIX}.hubs.*", f"{PREFIX}.frames.{me}.*", f"{PREFIX}.nodes.{me}.*", "_INBOX.>"]
        },
    }


def _announced(peer: dict[str, Any]) -> dict[str, Any]:
    """What the mesh learns of one of this hub's peers: not how this hub lists it, nor its kernel id
    (which means something only to its own server)."""
    return {**{key: value for key, value in peer.items() if key not in ("hub", "local")}, "kernel": ""}


class _Unreachable(ConnectionError):
    """No NATS server of the URL answered (the message says why the last one did not)."""


def reason(exc: BaseException) -> str:
    """What went wrong, for the log and the stats: the message, with the exception's kind."""
    text = str(exc) or type(exc).__name__
    return text if type(exc).__name__ in text else f"{type(exc).__name__}: {text}"


def _without_credentials(url: str) -> str:
    """``url`` with any user and password taken out (it goes to logs and to the stats)."""
    parts = []
    for one in url.split(","):
        split = urlsplit(one.strip())
        if split.username or split.password:
            host = split.hostname or ""
            netloc = f"{host}:{split.port}" if split.port else host
            one = urlunsplit(split._replace(netloc=f"***@{netloc}"))
        parts.append(one.strip())
    return ",".join(parts)
