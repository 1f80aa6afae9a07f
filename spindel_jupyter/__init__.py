"""spindel-jupyter: notebooks that work together.

Remote cells, synced signals and shared workspaces for Jupyter, after the
Clojure library Spindel. In a notebook: ``%load_ext spindel_jupyter``. In a
script: ``spindel_jupyter.connect()``.
"""

from __future__ import annotations

from typing import Any

from .bridges import from_queue, to_queue
from .client import Peer, connect, current_peer, disconnect
from .contexts import fork_context, list_contexts, register_context, unregister_context
from .errors import (
    EncodeError,
    MergeConflict,
    NotServed,
    NotWritable,
    PeerLost,
    PeerNotFound,
    RemoteError,
    RemoteTimeout,
    SpindelError,
    UnboundNames,
    UnsendableResult,
)
from .remote import RemoteFunction, call, remote, run, serve, serving, unserve
from .signals import Signal
from .sync import export_signal, subscribe_signal, sync_signal, unsync
from .widgets import bind_widget, unbind_widget

__version__ = "0.1.0"

__all__ = [
    "EncodeError",
    "MergeConflict",
    "NotServed",
    "NotWritable",
    "Peer",
    "PeerLost",
    "PeerNotFound",
    "RemoteError",
    "RemoteFunction",
    "RemoteTimeout",
    "Signal",
    "SpindelError",
    "UnboundNames",
    "UnsendableResult",
    "__version__",
    "bind_widget",
    "call",
    "connect",
    "current_peer",
    "disconnect",
    "export_signal",
    "fork_context",
    "from_queue",
    "list_contexts",
    "register_context",
    "remote",
    "run",
    "serve",
    "serving",
    "subscribe_signal",
    "sync_signal",
    "to_queue",
    "unbind_widget",
    "unregister_context",
    "unserve",
    "unsync",
]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """The JupyterLab extension (the Spindel panel), built into ``labextension/`` by ``pip install``."""
    return [{"src": "labextension", "dest": "spindel-jupyter"}]


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from .hub.app import SpindelHub

    return [{"module": "spindel_jupyter", "app": SpindelHub}]


def load_ipython_extension(ip: Any) -> None:
    from .magics import load

    load(ip)


def unload_ipython_extension(ip: Any) -> None:
    from .magics import unload

    unload(ip)
