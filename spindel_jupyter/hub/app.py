"""The jupyter-server extension: configuration, handlers, and the kernels' environment."""

from __future__ import annotations

import asyncio
import importlib
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from jupyter_core.paths import jupyter_data_dir
from jupyter_server.extension.application import ExtensionApp
from jupyter_server.utils import url_path_join
from tornado.ioloop import IOLoop, PeriodicCallback
from traitlets import Float, Int, List, Unicode, default

from . import durable
from .handlers import (
    PeersHandler,
    PeerSocketHandler,
    StatsHandler,
    TopicsHandler,
    WorkspaceActionHandler,
    WorkspaceHandler,
    WorkspacesHandler,
)
from .invites import Invites, add_invite_ops, close_invited
from .notebooks import SAVE_EVENT, NotebookService
from .relay import Relay
from .store import NodeStore
from .topics import TopicStore
from .workspaces import Registry, add_workspace_ops

#: The environment a Jupyter server with the hub gives the kernels it starts.
ENV_URL = "SPINDEL_HUB_URL"
ENV_TOKEN = "SPINDEL_TOKEN"

_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "localhost"}


class SpindelHub(ExtensionApp):
    """The relay hub of peers and the registry of their shared state."""

    name = "spindel_jupyter"
    description = "Relay hub for spindel_jupyter peers"
    load_other_extensions = True

    store_dir = Unicode(
        help="Directory where the hub keeps topic states and workspace content (durable across restarts)."
    ).tag(config=True)

    max_frame_bytes = Int(
        64 * 1024 * 1024,
        help="Largest frame a peer may send, in bytes; larger frames get an error frame.",
    ).tag(config=True)

    ping_interval = Float(10.0, help="Seconds between heartbeats on peer connections (0 disables them).").tag(
        config=True
    )

    ping_timeout = Float(
        30.0,
        help="Seconds without a heartbeat reply after which a peer connection is closed "
        "(keep it above ping_interval).",
    ).tag(config=True)

    max_peers = Int(1000, help="Most peers connected at once; one more is refused with a clear error.").tag(
        config=True
    )

    max_topics = Int(10_000, help="Most topics the hub holds; creating one more is refused.").tag(config=True)

    lease_seconds = Float(300.0, help="How long a workspace writer lease lasts without being renewed.").tag(
        config=True
    )

    crdt_modules = List(
        Unicode(),
        help="Modules to import at start so the hub can hold topics of the custom CRDT types they register.",
    ).tag(config=True)

    @default("store_dir")
    def _default_store_dir(self) -> str:
        return os.path.join(jupyter_data_dir(), "spindel")

    def initialize_settings(self) -> None:
        for module in self.crdt_modules:
            importlib.import_module(module)
        store_dir = Path(self.store_dir)
        topics = TopicStore(store_dir / "topics", schedule=_call_later, max_topics=self.max_topics)
        self.relay = Relay(self.max_frame_bytes, topics, max_peers=self.max_peers)
        self.nodes = NodeStore(store_dir / "nodes")
        # The registry's directory is the hub's own, as the topics' and nodes' are: made and swept alike.
        durable.make_directory(store_dir / "workspaces")
        durable.sweep(store_dir / "workspaces")
        self.registry = Registry(store_dir / "workspaces", self.nodes, self.lease_seconds)
        server = self.serverapp
        assert server is not None
        self.notebooks = NotebookService(self.registry, server.contents_manager, server.root_dir, topics)
        self.registry.on_head = self._head_moved
        self.registry.on_change = lambda: self.relay.broadcast_ui("workspaces", self.registry.all())
        add_workspace_ops(self.relay, self.registry, self.notebooks)
        self.invites = Invites(store_dir / "invites.json")
        add_invite_ops(self.relay, self.invites, lambda: self.peer_url(public=True))
        self._sweeper = PeriodicCallback(lambda: close_invited(self.relay, self.invites), 1000)
        self._sweeper.start()
        self.registry.connected = lambda peer: peer in self.relay.members
        self.relay.on_leave.append(self.registry.peer_left)
        if server.event_logger is not None:
            server.event_logger.add_listener(schema_id=SAVE_EVENT, listener=self._on_contents_event)
        self.settings["spindel_hub"] = self
        self.export_environment()

    def initialize_handlers(self) -> None:
        self.handlers.extend(
            [
                (r"/spindel/ws", PeerSocketHandler),
                (r"/spindel/api/peers", PeersHandler),
                (r"/spindel/api/topics", TopicsHandler),
                (r"/spindel/api/stats", StatsHandler),
                (r"/spindel/api/workspaces", WorkspacesHandler),
                (r"/spindel/api/workspaces/([^/]+)", WorkspaceHandler),
                (r"/spindel/api/workspaces/([^/]+)/(fork|merge|claim|follow)", WorkspaceActionHandler),
            ]
        )

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        # The port is final only once the server runs (it may have moved off a busy one).
        await super()._start_jupyter_server_extension(serverapp)
        self.export_environment()

    def _head_moved(self, descriptor: dict[str, Any]) -> None:
        _spawn(self.notebooks.head_moved(descriptor))
        for follower in descriptor.get("followers") or []:
            self.relay.notify(follower["peer"], "workspace", descriptor)

    async def stop_extension(self) -> None:
        self._sweeper.stop()
        self.relay.topics.close()

    async def _on_contents_event(self, logger: Any, schema_id: str, data: dict[str, Any]) -> None:
        if data.get("action") == "save" and data.get("path"):
            await self.notebooks.saved(str(data["path"]))

    def peer_url(self, public: bool = False) -> str:
        """The WebSocket URL of the hub: for peers on this machine, or ``public`` for teammates elsewhere."""
        app = self.serverapp
        assert app is not None
        if public:
            host = (
                socket.gethostname() if app.ip in _WILDCARD_HOSTS - {"localhost"} else app.ip or "localhost"
            )
        else:
            host = "127.0.0.1" if app.ip in _WILDCARD_HOSTS else app.ip
        if ":" in host:
            host = f"[{host}]"
        scheme = "wss" if app.certfile else "ws"
        return f"{scheme}://{host}:{app.port}{url_path_join(app.base_url, 'spindel/ws')}"

    def export_environment(self) -> None:
        """Put the hub's URL and token where kernels this server starts will find them."""
        app = self.serverapp
        assert app is not None
        if app.sock:
            self.log.warning("spindel: kernels cannot auto-connect to a server on a UNIX socket")
            return
        os.environ[ENV_URL] = self.peer_url()
        os.environ[ENV_TOKEN] = app.identity_provider.token or ""


def _call_later(delay: float, callback: Callable[[], None]) -> Any:
    return IOLoop.current().call_later(delay, callback)


_tasks: set[asyncio.Future[Any]] = set()


def _spawn(awaitable: Awaitable[Any]) -> None:
    task = asyncio.ensure_future(awaitable)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
