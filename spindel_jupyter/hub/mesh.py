"""The mesh: this hub joined with the hubs of other Jupyter servers over NATS JetStream.

Without ``c.SpindelHub.nats_url`` the hub works alone and none of this runs.
With it, the hub connects with nats-py and keeps trying while NATS cannot be
reached (saying why in the log), serving its own peers all along. Every hub
announces itself in the JetStream key-value bucket ``spindel_hubs`` every
``HEARTBEAT`` seconds; an entry lives ``HUB_TTL`` seconds, so a server that
dies leaves the other hubs' lists within that time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..core.retry import jittered

log = logging.getLogger(__name__)

#: The key-value bucket where hubs announce themselves.
HUBS_BUCKET = "spindel_hubs"
#: Seconds between a hub's announcements, and how long one lives without the next.
HEARTBEAT = 1.0
HUB_TTL = 3.0

_BACKOFF_FIRST = 0.2
_BACKOFF_MAX = 5.0

ALONE, CONNECTING, CONNECTED, DISCONNECTED = "alone", "connecting", "connected", "disconnected"


class Mesh:
    """This hub's membership of the mesh: its connection to NATS and the hubs it sees."""

    def __init__(self, url: str, hub_name: str, credentials: str = "") -> None:
        self.url = url
        self.hub_name = hub_name
        self.credentials = credentials
        self.state = CONNECTING
        #: Why the last attempt to reach NATS failed ("" once connected).
        self.problem = ""
        self._hubs: dict[str, dict[str, Any]] = {}
        #: This hub's own peers, as announced to the mesh.
        self._peers: list[dict[str, Any]] = []
        self._changed: asyncio.Event | None = None
        #: Called when the peers of the other hubs changed.
        self.on_peers: Callable[[], None] = lambda: None
        self._nc: Any = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Join in the background, on the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Leave: this hub's entry goes at once, the connection closes."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        nc, self._nc = self._nc, None
        if nc is not None:
            with contextlib.suppress(Exception):
                kv = await nc.jetstream().key_value(HUBS_BUCKET)
                await kv.delete(self.hub_name)
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
            for hub, entry in sorted(self._hubs.items())
            if hub != self.hub_name
            for peer in entry.get("peers") or []
            if isinstance(peer, dict)
        ]

    def hubs(self) -> list[str]:
        """The hubs of the mesh, this one included, as last seen."""
        return sorted(self._hubs)

    def stats(self) -> dict[str, Any]:
        """What ``/spindel/api/stats`` shows of the mesh."""
        return {
            "state": self.state,
            "hub": self.hub_name,
            "nats": _without_credentials(self.url),
            "hubs": self.hubs(),
            "problem": self.problem,
        }

    async def _run(self) -> None:
        delay = _BACKOFF_FIRST
        while True:
            try:
                await self._connect()
                delay = _BACKOFF_FIRST
                await self._announce_forever()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.state = DISCONNECTED if self.state == CONNECTED else CONNECTING
                self.problem = str(exc) if isinstance(exc, _Unreachable) else _reason(exc)
                log.warning(
                    "spindel: cannot reach NATS at %s to join the mesh as %r: %s; this hub serves its own "
                    "peers meanwhile and tries again",
                    _without_credentials(self.url), self.hub_name, self.problem,
                )  # fmt: skip
                nc, self._nc = self._nc, None
                if nc is not None:
                    with contextlib.suppress(Exception):
                        await nc.close()
                had_peers, self._hubs = bool(self.peers()), {}  # out of the mesh, nobody there is reachable
                if had_peers:
                    self.on_peers()
                await asyncio.sleep(jittered(delay))
                delay = min(delay * 2, _BACKOFF_MAX)

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
            self.problem = _reason(exc)

        self.problem = ""
        try:
            self._nc = await nats.connect(self.url, error_cb=quiet, **options)
        except nats.errors.NoServersError:
            raise _Unreachable(self.problem or "no NATS server answered") from None

    async def _announce_forever(self) -> None:
        from nats.js.api import KeyValueConfig

        nc = self._nc
        js = nc.jetstream()
        kv = await js.create_key_value(KeyValueConfig(bucket=HUBS_BUCKET, ttl=HUB_TTL, history=1))
        since = time.time()
        self._changed = asyncio.Event()
        while not nc.is_closed:
            self._changed.clear()
            entry = {"hub": self.hub_name, "since": since, "peers": self._peers}
            await kv.put(self.hub_name, json.dumps(entry).encode())
            hubs: dict[str, dict[str, Any]] = {}
            with contextlib.suppress(Exception):  # no keys at all is an error in nats-py
                for key in await kv.keys():
                    with contextlib.suppress(Exception):  # gone since it was listed
                        hubs[key] = json.loads((await kv.get(key)).value)
            hubs[self.hub_name] = entry
            before = self.peers()
            self._hubs = hubs
            if self.peers() != before:
                self.on_peers()
            if self.state != CONNECTED:
                self.state, self.problem = CONNECTED, ""
                where = _without_credentials(self.url)
                log.info("spindel: joined the mesh at %s as %r", where, self.hub_name)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), HEARTBEAT)
        raise ConnectionError("the connection to NATS closed")


def _announced(peer: dict[str, Any]) -> dict[str, Any]:
    """What the mesh learns of one of this hub's peers: not how this hub lists it, nor its kernel id
    (which means something only to its own server)."""
    return {**{key: value for key, value in peer.items() if key not in ("hub", "local")}, "kernel": ""}


class _Unreachable(ConnectionError):
    """No NATS server of the URL answered (the message says why the last one did not)."""


def _reason(exc: BaseException) -> str:
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
