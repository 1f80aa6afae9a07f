"""HTTP and WebSocket endpoints of the hub: thin shells over the relay."""

from __future__ import annotations

import json
from asyncio import Future
from typing import TYPE_CHECKING, Any

from jupyter_server.auth.decorator import authorized, ws_authenticated
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from jupyter_server.utils import ensure_async
from tornado import web
from tornado.websocket import WebSocketClosedError, WebSocketHandler

if TYPE_CHECKING:
    from .app import SpindelHub

#: The authorization resource of every hub endpoint (for custom Authorizers).
AUTH_RESOURCE = "spindel"


class _HubHandler(JupyterHandler):
    auth_resource = AUTH_RESOURCE

    @property
    def hub(self) -> SpindelHub:
        return self.settings["spindel_hub"]


class PeerSocketHandler(WebSocketMixin, WebSocketHandler, _HubHandler):
    """A peer's WebSocket: every frame goes to the relay, which writes back through ``send``."""

    def set_default_headers(self) -> None:
        """WebSocket upgrades take none of the default HTTP headers."""

    @property
    def max_message_size(self) -> int:
        # Frames a little over the limit are read and answered with an error frame;
        # far larger ones are cut off by tornado (close code 1009) before being buffered.
        return 2 * self.hub.max_frame_bytes

    @property
    def ping_interval(self) -> int:
        return int(self.hub.ping_interval * 1000)

    @property
    def ping_timeout(self) -> int:
        return int(self.hub.ping_timeout * 1000)

    @ws_authenticated
    async def get(self, *args: Any, **kwargs: Any) -> None:
        allowed = await ensure_async(
            self.authorizer.is_authorized(self, self.current_user, "execute", AUTH_RESOURCE)
        )
        if not allowed:
            raise web.HTTPError(403)
        await super().get(*args, **kwargs)

    def open(self, *args: Any, **kwargs: Any) -> None:
        super().open(*args, **kwargs)
        self.member = self.hub.relay.connect(self)

    def on_message(self, message: str | bytes) -> None:
        data = message.encode() if isinstance(message, str) else message
        self.hub.relay.receive(self.member, data)

    def on_close(self) -> None:
        member = getattr(self, "member", None)
        if member is not None:
            self.hub.relay.disconnect(member)

    def send(self, frame: bytes) -> None:
        """Relay :class:`Link`: queue a frame; a closed connection drops it."""
        if self.ws_connection is None or self.ws_connection.is_closing():
            return
        try:
            self.write_message(frame, binary=True).add_done_callback(_retrieve)
        except WebSocketClosedError:
            pass


def _retrieve(future: Future[None]) -> None:
    # A write that failed because the peer left needs no report: on_close handles it.
    if not future.cancelled():
        future.exception()


class PeersHandler(APIHandler, _HubHandler):
    """``GET /spindel/api/peers``: the connected peers."""

    @web.authenticated
    @authorized
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(self.hub.relay.peers()))


class StatsHandler(APIHandler, _HubHandler):
    """``GET /spindel/api/stats``: counters of the hub."""

    @web.authenticated
    @authorized
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(self.hub.relay.stats()))


class TopicsHandler(APIHandler, _HubHandler):
    """``GET /spindel/api/topics``: every topic with its kind, subscribers and stored size."""

    @web.authenticated
    @authorized
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(self.hub.relay.topics.list()))
