"""The jupyter-server extension: configuration, handlers, and the kernels' environment."""

from __future__ import annotations

import getpass
import importlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from jupyter_core.paths import jupyter_data_dir
from jupyter_server.auth.identity import IdentityProvider, PasswordIdentityProvider
from jupyter_server.extension.application import ExtensionApp
from jupyter_server.utils import url_path_join
from tornado.ioloop import IOLoop, PeriodicCallback
from traitlets import Float, Int, List, Unicode, default

from ..core.protocol import name_from, split_peer
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
from .mesh import Mesh
from .mesh_registry import MeshRegistry
from .mesh_topics import MeshTopics
from .node_sync import COUNTERS, NodeSync
from .notebooks import SAVE_EVENT, NotebookService
from .relay import Relay
from .store import NodeStore
from .topics import TopicStore
from .workspaces import Registry

#: The environment a Jupyter server with the hub gives the kernels it starts.
ENV_URL = "SPINDEL_HUB_URL"
ENV_TOKEN = "SPINDEL_TOKEN"
#: The NATS server(s) of the mesh, when ``c.SpindelHub.nats_url`` is not set.
ENV_NATS_URL = "SPINDEL_NATS_URL"

_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "localhost"}
#: Identity providers with one secret for everyone: whoever signs in is the server's one user.
_SHARED_SECRET = (IdentityProvider, PasswordIdentityProvider)


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
        20.0, help="Seconds a peer has to answer a heartbeat (or send anything) before it is disconnected."
    ).tag(config=True)

    max_peers = Int(1000, help="Most peers connected at once; one more is refused with a clear error.").tag(
        config=True
    )

    max_topics = Int(10_000, help="Most topics the hub holds; creating one more is refused.").tag(config=True)

    lease_seconds = Float(300.0, help="How long a workspace writer lease lasts without being renewed.").tag(
        config=True
    )

    nats_url = Unicode(
        help=(
            "NATS server(s) to join the mesh of hubs of other Jupyter servers through (nats://HOST:PORT, "
            "comma-separated, credentials in the URL allowed); empty: this hub works alone. "
            f"Default: the environment variable {ENV_NATS_URL}."
        )
    ).tag(config=True)

    nats_credentials = Unicode(help="A NATS credentials (.creds) file to join the mesh with.").tag(
        config=True
    )

    hub_name = Unicode(
        help="This hub's name in the mesh (peers are NAME@HUB); default the JupyterHub user, else host:port."
    ).tag(config=True)

    crdt_modules = List(
        Unicode(),
        help="Modules to import at start so the hub can hold topics of the custom CRDT types they register.",
    ).tag(config=True)

    @default("nats_url")
    def _default_nats_url(self) -> str:
        return os.environ.get(ENV_NATS_URL, "")

    @default("hub_name")
    def _default_hub_name(self) -> str:
        app = self.serverapp
        port = app.port if app is not None else 0
        return os.environ.get("JUPYTERHUB_USER") or f"{socket.gethostname()}:{port}"

    @default("store_dir")
    def _default_store_dir(self) -> str:
        return os.path.join(jupyter_data_dir(), "spindel")

    def initialize_settings(self) -> None:
        self._log_with_the_server()
        for module in self.crdt_modules:
            importlib.import_module(module)
        store_dir = Path(self.store_dir)
        topics = TopicStore(store_dir / "topics", schedule=_call_later, max_topics=self.max_topics)
        self.relay = Relay(self.max_frame_bytes, topics, max_peers=self.max_peers)
        self.nodes = NodeStore(store_dir / "nodes")
        # The registry's directory is the hub's own, as the topics' and nodes' are: made and swept alike.
        durable.make_directory(store_dir / "workspaces")
        durable.sweep(store_dir / "workspaces")
        self.registry = Registry(store_dir / "workspaces", self.nodes, self.lease_seconds, topics=topics)
        server = self.serverapp
        assert server is not None
        self.notebooks = NotebookService(self.registry, server.contents_manager, server.root_dir)
        self.notebooks.server_user = _server_user()
        self.notebooks.kernelspec = _default_kernelspec(server)
        self.notebooks.announce = self._announce_head
        self.registry.on_head = self.notebooks.head_moved
        self.registry.on_change = self._workspaces_changed
        self.relay.store_stats = self.nodes.stats
        for op in ("list", "get", "publish", "follow", "fork", "merge", "claim"):
            self.relay.add_op(f"workspace.{op}", self._workspace_op(op))
        self.invites = Invites(store_dir / "invites.json")
        add_invite_ops(self.relay, self.invites, lambda: self.peer_url(public=True))
        self._sweeper = PeriodicCallback(lambda: close_invited(self.relay, self.invites), 1000)
        self._sweeper.start()
        self.registry.connected = self._connected
        registry, notebooks = self.registry, self.notebooks
        self.relay.on_leave.append(
            lambda peer: notebooks.change_later(lambda: registry.peer_left(registry.qualified(peer)))
        )
        self.relay.on_rename.append(
            lambda old, new: notebooks.change_later(
                lambda: registry.peer_renamed(registry.qualified(old), registry.qualified(new))
            )
        )
        if server.event_logger is not None:
            server.event_logger.add_listener(schema_id=SAVE_EVENT, listener=self._on_contents_event)
        self.mesh: Mesh | None = None
        self.node_sync: NodeSync | None = None
        self.relay.sync_stats = lambda: dict.fromkeys(COUNTERS, 0)  # alone, no node moves between hubs
        self._mesh_peers: set[str] = set()
        if self.nats_url:
            self.mesh = Mesh(self.nats_url, "", self.nats_credentials, self.max_frame_bytes)
            self.node_sync = NodeSync(self.mesh, self.nodes)
            shared = MeshRegistry(self.mesh, self.registry, self.node_sync)
            shared.on_joined = self._registry_joined
            self.notebooks.shared = shared
            self.mesh.parts += [MeshTopics(self.mesh, topics), self.node_sync, shared]
            self.relay.mesh = self.mesh
            self.relay.sync_stats = self.node_sync.counts.copy
        self.settings["spindel_hub"] = self
        self.export_environment()

    def _log_with_the_server(self) -> None:
        """The hub's modules log (``logging.getLogger(__name__)``) where the server logs, at its level.

        Only where nothing else collects log records (a host that configured logging keeps its say).
        """
        server = self.serverapp
        assert server is not None
        if logging.getLogger().handlers:
            return
        package = logging.getLogger("spindel_jupyter")
        for handler in server.log.handlers:
            if handler not in package.handlers:
                package.addHandler(handler)
        package.setLevel(server.log.level)

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
        self.relay.hub_name = self.hub_name
        if self.mesh is not None:
            mesh = self.mesh
            mesh.hub_name = self.registry.hub = self.hub_name
            mesh.on_peers = self._mesh_changed
            mesh.on_frame = self.relay.receive_from_hub
            self.relay.on_peers.append(mesh.set_peers)
            mesh.set_peers(self.relay.local_peers())
            mesh.start()

    def _workspace_op(self, op: str) -> Callable[[Any, Any], Awaitable[Any]]:
        """Workspace operation ``op`` as peers send it (``workspace.OP``): for the hub-stamped sender."""

        def call(member: Any, argument: Any) -> Awaitable[Any]:
            return self.notebooks.operate(op, member.actor, argument, self.relay.members)

        return call

    def _announce_head(self, descriptor: dict[str, Any], notebook: dict[str, Any]) -> None:
        """Tell this hub's followers (those keeping their own copy get the notebook too) and the lab of
        a new head (without a notebook: one that could not be brought here)."""
        for follower in descriptor.get("followers") or []:
            if not self.registry.here(follower):
                continue
            body = (
                descriptor if follower.get("path") or not notebook else {**descriptor, "notebook": notebook}
            )
            self.relay.notify(self.registry.local_name(follower["peer"]), "workspace", body)
        self._workspaces_changed()

    def _connected(self, peer: str) -> bool:
        """Whether the peer the registry names is connected to a hub of the mesh (or to this one)."""
        name, hub = split_peer(peer)
        if not hub or hub == self.registry.hub:
            return name in self.relay.members
        return peer in self._mesh_peers

    def _mesh_changed(self) -> None:
        """The mesh's hubs or peers changed: for the relay, and for leases and heads of workspaces."""
        self.relay.mesh_changed()
        assert self.mesh is not None
        now = {f"{p['name']}@{p['hub']}" for p in self.mesh.peers()}
        until = self.registry.clock() + self.lease_seconds
        for gone in self._mesh_peers - now:
            self.registry.departed[gone] = until  # its lease runs on from now, its hub may not say so
        for back in now - self._mesh_peers:
            self.registry.departed.pop(back, None)
        self._mesh_peers = now
        if self.notebooks.behind:
            self.notebooks.retry_behind()

    def _registry_joined(self, first: bool) -> None:
        """Caught up with the mesh's registry: after a start, bring every copy here to its head."""
        if first:
            for descriptor in self.registry.all():
                if any(self.registry.here(f) for f in descriptor.get("followers") or []):
                    self.notebooks.head_moved(descriptor)
        self.notebooks.retry_behind()
        self._workspaces_changed()

    def _workspaces_changed(self) -> None:
        self.relay.broadcast_ui("workspaces", self.registry.all())

    async def stop_extension(self) -> None:
        self._sweeper.stop()
        if self.mesh is not None:
            await self.mesh.close()
        self.relay.topics.close()

    async def _on_contents_event(self, logger: Any, schema_id: str, data: dict[str, Any]) -> None:
        if data.get("action") == "save" and data.get("path"):
            await self.notebooks.saved(str(data["path"]))
        elif data.get("action") == "rename" and data.get("path") and data.get("source_path"):
            self.notebook_moved(str(data["source_path"]), str(data["path"]))

    def notebook_moved(self, source: str, path: str) -> None:
        """A notebook (or a folder of them) was renamed: kernel peers named after it follow."""
        root = self.serverapp.root_dir if self.serverapp is not None else ""
        old = os.path.normpath(os.path.join(root, *source.split("/")))
        new = os.path.normpath(os.path.join(root, *path.split("/")))
        for member in list(self.relay.members.values()):
            if not member.notebook:
                continue
            notebook = os.path.normpath(member.notebook)
            if notebook == old or notebook.startswith(old + os.sep):
                moved = new + notebook[len(old) :]
                self.relay.rename(member, name_from(Path(moved).stem), moved)

    def user_of(self, user: Any) -> str:
        """The user a signed-in Jupyter identity acts for.

        With one shared token or password (a plain single-user server) everyone who
        signs in is the server's one user, whatever anonymous name Jupyter gives
        each connection; an identity provider that names users (JupyterHub's) tells them apart.
        """
        app = self.serverapp
        assert app is not None
        if type(app.identity_provider) in _SHARED_SECRET or not getattr(user, "username", ""):
            return _server_user()
        return str(user.username)

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


def _default_kernelspec(server: Any) -> dict[str, str]:
    """The ``kernelspec`` metadata of the server's default kernel ({} if it has none)."""
    try:
        name = server.kernel_manager.default_kernel_name
        spec = server.kernel_spec_manager.get_kernel_spec(name)
    except Exception:
        return {}
    return {"name": name, "display_name": spec.display_name, "language": spec.language}


def _server_user() -> str:
    """The name of the user this server runs for."""
    try:
        return os.environ.get("JUPYTERHUB_USER") or getpass.getuser()
    except (KeyError, OSError):
        return "owner"
