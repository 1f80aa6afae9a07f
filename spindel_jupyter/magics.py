"""IPython magics: parse the line, call the Python API, display the result."""

from __future__ import annotations

import os
import sys
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display
from traitlets import Float

from . import client
from .display import peer_table
from .errors import SpindelError, UnsendableResult
from .remote import run as run_remote
from .remote import serve, unserve


@magics_class
class SpindelMagics(Magics):
    """The ``%spin_*`` magics."""

    timeout = Float(
        None,
        allow_none=True,
        help="Default --timeout of %%spin_remote, in seconds (None: wait until done or interrupted).",
    ).tag(config=True)

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

    @magic_arguments()
    @argument("--context", help="serve this context (created if new) instead of the kernel's namespace")
    @argument("--allow", help="comma-separated peer names allowed to call (default: any peer)")
    @line_magic
    def spin_serve(self, line: str) -> None:
        """Opt in to serving remote calls from other peers (nothing is served before this)."""
        args = parse_argstring(self.spin_serve, line)
        allow = None if args.allow is None else [p.strip() for p in args.allow.split(",") if p.strip()]
        _peer()
        try:
            summary = serve(args.context, allow)
        except (SpindelError, ValueError) as exc:
            raise UsageError(str(exc)) from None
        print(f"spindel: {summary}")

    @line_magic
    def spin_unserve(self, line: str) -> None:
        """Stop serving remote calls."""
        unserve()
        print("spindel: not serving")

    @magic_arguments()
    @argument("target", help="PEER or PEER/CONTEXT to run the cell on")
    @argument("names", nargs="*", help="arguments: NAME sends this kernel's NAME, NAME=EXPR sends EXPR")
    @argument("-o", "--output", metavar="VAR", help="store the result in VAR here instead of showing it")
    @argument("--timeout", type=float, help="seconds before the call is interrupted (RemoteTimeout)")
    @cell_magic
    def spin_remote(self, line: str, cell: str) -> Any:
        """Run this cell on another peer; its last expression's value comes back.

        The body sees only the listed arguments and the names defined in the
        remote context; any other name it reads is reported before it runs.
        """
        args = parse_argstring(self.spin_remote, line)
        _peer()
        values = self._arguments(args.names)
        timeout = args.timeout if args.timeout is not None else self.timeout
        try:
            value = run_remote(args.target, cell, values, timeout=timeout)
        except UnsendableResult as exc:
            if args.output:
                raise UsageError(f"{exc}; it was not stored in {args.output}") from None
            data = exc.bundle.get("data") or {"text/plain": str(exc)}
            display(data, raw=True, metadata=exc.bundle.get("metadata") or {})
            return None
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if args.output:
            self._namespace[args.output] = value
            return None
        return value

    @property
    def _namespace(self) -> dict[str, Any]:
        assert self.shell is not None
        return self.shell.user_ns

    def _arguments(self, names: list[str]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for item in names:
            name, eq, expr = item.partition("=")
            name = name.strip()
            if not name.isidentifier():
                raise UsageError(f"bad argument {item!r}: use NAME or NAME=EXPR")
            if eq:
                try:
                    values[name] = eval(expr, self._namespace)
                except Exception as exc:
                    raise UsageError(f"argument {name}={expr}: {type(exc).__name__}: {exc}") from None
            elif name in self._namespace:
                values[name] = self._namespace[name]
            else:
                raise UsageError(f"argument {name!r} is not defined here: define it, or use {name}=EXPR")
        return values


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
