"""IPython magics: parse the line, call the Python API, display the result."""

from __future__ import annotations

import os
import sys
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display

from . import client
from .display import peer_table
from .errors import SpindelError


@magics_class
class SpindelMagics(Magics):
    """The ``%spin_*`` magics."""

    @magic_arguments()
    @argument("url", nargs="?", help="hub WebSocket URL (default: $SPINDEL_HUB_URL)")
    @argument("--as", dest="name", help="peer name (default: from the notebook's name)")
    @argument("--token", help="access token (default: $SPINDEL_TOKEN)")
    @line_magic
    def spin_connect(self, line: str) -> None:
        """Connect this kernel to a Spindel hub, or rename it with ``--as``."""
        args = parse_argstring(self.spin_connect, line)
        try:
            peer = client.connect(args.url, args.name, args.token, kind="kernel")
        except (SpindelError, ValueError) as exc:
            raise UsageError(str(exc)) from None
        print(f"spindel: connected to {peer.url} as {peer.name!r}")

    @line_magic
    def spin_peers(self, line: str) -> None:
        """Show the peers connected to the hub and the contexts each serves."""
        if line.strip():
            raise UsageError("%spin_peers takes no arguments")
        peer = _peer()
        try:
            peers = peer.peers()
        except SpindelError as exc:
            raise UsageError(str(exc)) from None
        display(peer_table(peers, me=peer.name))


def _peer() -> client.Peer:
    try:
        return client.current_peer()
    except SpindelError as exc:
        raise UsageError(str(exc)) from None


def load(ip: Any) -> None:
    """Register the magics and, inside a Jupyter server with the hub, connect."""
    ip.register_magics(SpindelMagics)
    if not os.environ.get(client.ENV_URL) or client._current is not None:
        return
    try:
        peer = client.connect(kind="kernel")
    except (SpindelError, ValueError) as exc:
        print(f"spindel: not connected ({exc}); use %spin_connect", file=sys.stderr)
        return
    print(f"spindel: connected to the hub as {peer.name!r}")


def unload(ip: Any) -> None:
    """Disconnect; the magics stay until the kernel restarts (IPython cannot remove them)."""
    client.disconnect()
