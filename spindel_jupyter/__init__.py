"""spindel-jupyter: notebooks that work together.

Remote cells, synced signals and shared workspaces for Jupyter, after the
Clojure library Spindel. In a notebook: ``%load_ext spindel_jupyter``. In a
script: ``spindel_jupyter.connect()``.
"""

from __future__ import annotations

from typing import Any

from .client import Peer, connect, current_peer, disconnect
from .errors import (
    MergeConflict,
    NotWritable,
    PeerLost,
    PeerNotFound,
    RemoteError,
    RemoteTimeout,
    SpindelError,
    UnboundNames,
)

__version__ = "0.1.0"

__all__ = [
    "MergeConflict",
    "NotWritable",
    "Peer",
    "PeerLost",
    "PeerNotFound",
    "RemoteError",
    "RemoteTimeout",
    "SpindelError",
    "UnboundNames",
    "__version__",
    "connect",
    "current_peer",
    "disconnect",
]


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from .hub.app import SpindelHub

    return [{"module": "spindel_jupyter", "app": SpindelHub}]


def load_ipython_extension(ip: Any) -> None:
    from .magics import load

    load(ip)


def unload_ipython_extension(ip: Any) -> None:
    from .magics import unload

    unload(ip)
