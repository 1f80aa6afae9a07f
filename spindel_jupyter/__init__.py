"""spindel-jupyter: notebooks that work together.

Remote cells, synced signals and shared workspaces for Jupyter, after the
Clojure library Spindel. In a notebook: ``%load_ext spindel_jupyter``. In a
script: ``spindel_jupyter.connect()``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The public names, and the module each lives in. They load on first use (PEP 562), so that
# loading the server extension imports none of the kernel side and no IPython.
_EXPORTS = {
    "from_queue": ".peer.bridges",
    "to_queue": ".peer.bridges",
    "Peer": ".peer.client",
    "current_peer": ".peer.client",
    "disconnect": ".peer.client",
    "connect": ".kernel.session",
    "fork_context": ".kernel.contexts",
    "list_contexts": ".kernel.contexts",
    "register_context": ".kernel.contexts",
    "unregister_context": ".kernel.contexts",
    "EncodeError": ".core.errors",
    "MergeConflict": ".core.errors",
    "NotServed": ".core.errors",
    "NotWritable": ".core.errors",
    "PeerLost": ".core.errors",
    "PeerNotFound": ".core.errors",
    "RemoteError": ".core.errors",
    "RemoteTimeout": ".core.errors",
    "SpindelError": ".core.errors",
    "UnboundNames": ".core.errors",
    "UnsendableResult": ".core.errors",
    "RemoteFunction": ".kernel.calling",
    "call": ".kernel.calling",
    "functions": ".kernel.calling",
    "remote": ".kernel.calling",
    "run": ".kernel.calling",
    "Caller": ".kernel.serving",
    "caller": ".kernel.serving",
    "serve": ".kernel.serving",
    "serving": ".kernel.serving",
    "unserve": ".kernel.serving",
    "Signal": ".core.signals",
    "export_signal": ".peer.sync",
    "subscribe_signal": ".peer.sync",
    "sync_signal": ".peer.sync",
    "unsync": ".peer.sync",
    "bind_widget": ".kernel.widgets",
    "unbind_widget": ".kernel.widgets",
}

if TYPE_CHECKING:
    from .core.errors import (
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
    from .core.signals import Signal
    from .kernel.calling import RemoteFunction, call, functions, remote, run
    from .kernel.contexts import fork_context, list_contexts, register_context, unregister_context
    from .kernel.serving import Caller, caller, serve, serving, unserve
    from .kernel.session import connect
    from .kernel.widgets import bind_widget, unbind_widget
    from .peer.bridges import from_queue, to_queue
    from .peer.client import Peer, current_peer, disconnect
    from .peer.sync import export_signal, subscribe_signal, sync_signal, unsync


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__version__ = "0.1.0"

__all__ = [
    "Caller",
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
    "caller",
    "connect",
    "current_peer",
    "disconnect",
    "export_signal",
    "fork_context",
    "from_queue",
    "functions",
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
    from .kernel.magics import load

    load(ip)


def unload_ipython_extension(ip: Any) -> None:
    from .kernel.magics import unload

    unload(ip)
