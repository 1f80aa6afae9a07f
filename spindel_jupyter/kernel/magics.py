"""IPython magics: parse the line, call the Python API, display the result."""

from __future__ import annotations

import copy
import os
import sys
import warnings
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.display import display
from traitlets import Float

from ..core.errors import MergeConflict, SpindelError, SpindelWarning, UnsendableResult
from ..peer import client
from . import invite, session, workspace
from .calling import run as run_remote
from .display import peer_table, register_displays
from .serving import serve, unserve


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
        args = _parsed(self.spin_connect, line)
        try:
            peer = session.connect(args.url, args.name, args.token, kind="kernel")
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
    @argument(
        "--allow",
        help="comma-separated peer names allowed to call (NAME@HUB for a peer of another hub, user:NAME "
        "for every peer acting for that user, on any hub), or '*' for every peer of this hub, invited "
        "ones included (default: this server's own peers)",
    )
    @argument(
        "--functions",
        metavar="NAME,...",
        help="serve only these functions, by name: callers send arguments, never code "
        "(call(PEER, 'NAME', ...) or functions(PEER).NAME(...) calls them)",
    )
    @line_magic
    def spin_serve(self, line: str) -> None:
        """Opt in to serving remote calls from other peers (nothing is served before this)."""
        args = _parsed(self.spin_serve, line)
        allow = None if args.allow is None else [p.strip() for p in args.allow.split(",") if p.strip()]
        _peer()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", SpindelWarning)
                functions = None if args.functions is None else args.functions.split(",")
                summary = serve(args.context, allow, functions)
        except (SpindelError, ValueError) as exc:
            raise UsageError(str(exc)) from None
        print(f"spindel: {summary}")
        for warning in caught:
            print(f"spindel: warning: {warning.message}", file=sys.stderr)

    @line_magic
    def spin_unserve(self, line: str) -> None:
        """Stop serving remote calls."""
        unserve()
        print("spindel: not serving")

    @magic_arguments()
    @argument("target", help="PEER or PEER/CONTEXT to run the cell on")
    @argument(
        "names",
        nargs="*",
        help="arguments: NAME sends this kernel's NAME, NAME=EXPR sends EXPR (spaces and all: x=f(1, 2))",
    )
    @argument("-o", "--output", metavar="VAR", help="store the result in VAR here instead of showing it")
    @argument("--timeout", type=float, help="seconds before the call is interrupted (RemoteTimeout)")
    @cell_magic
    def spin_remote(self, line: str, cell: str) -> Any:
        """Run this cell on another peer; its last expression's value comes back.

        The body sees only the listed arguments and the names defined in the
        remote context; any other name it reads is reported before it runs.
        """
        args = _parsed(self.spin_remote, line)
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

    # A cell magic: its usage says so (IPython names every magic's parser with one %).
    spin_remote.parser.prog = "%spin_remote"
    spin_remote.__doc__ = (spin_remote.__doc__ or "").replace("%spin_remote", "%%spin_remote", 1)

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

    @magic_arguments()
    @argument("name", help="workspace name")
    @argument("--path", help="notebook to publish, relative to the server root (default: this notebook)")
    @argument("-m", "--message", default="", help="a note kept with this version")
    @argument(
        "--topic",
        action="append",
        default=[],
        metavar="T[:bidirectional]",
        help="a synced topic followers wire (a read-only mirror, or both ways); repeatable",
    )
    @line_magic
    def spin_publish(self, line: str) -> None:
        """Publish this notebook (as saved) as a workspace; later saves republish it."""
        args = _parsed(self.spin_publish, line)
        roles = {}
        for item in args.topic:
            topic, _, role = item.partition(":")
            roles[topic] = role or "subscriber"
        descriptor = _workspace_call(workspace.publish, args.name, args.path, args.message, roles)
        head, path = descriptor["head"][:12], descriptor["path"]
        print(f"spindel: published {descriptor['name']!r} at {head} from {path}")

    @magic_arguments()
    @argument("name", help="workspace to follow")
    @argument("--into", help="where the read-only copy goes (default: following/NAME.ipynb)")
    @line_magic
    def spin_follow(self, line: str) -> None:
        """Get a read-only copy of a workspace that moves to every new head."""
        args = _parsed(self.spin_follow, line)
        descriptor = _workspace_call(workspace.follow, args.name, args.into)
        print(f"spindel: following {args.name!r} in {descriptor['copy']} (read-only, updates itself)")

    @magic_arguments()
    @argument("name", help="workspace to fork")
    @argument("new", nargs="?", help="name of the fork (default: NAME-YOURPEER)")
    @argument("--into", help="the fork's notebook (default: forks/NEW.ipynb)")
    @line_magic
    def spin_fork(self, line: str) -> None:
        """Fork a workspace: your own editable copy, at once."""
        args = _parsed(self.spin_fork, line)
        descriptor = _workspace_call(workspace.fork, args.name, args.new, args.into)
        print(f"spindel: forked {args.name!r} as {descriptor['name']!r} in {descriptor['path']}")

    @magic_arguments()
    @argument("fork", help="the fork to merge back into the workspace it came from")
    @argument("--strategy", choices=["ours", "theirs", "union"], help="how to settle conflicting cells")
    @argument("--force", action="store_true", help="merge even with conflicts (the fork's cells win)")
    @argument("--into", help="the workspace to merge into (default: the one the fork came from)")
    @line_magic
    def spin_merge(self, line: str) -> None:
        """Merge a fork back (three-way); on conflicts nothing changes and they are listed."""
        args = _parsed(self.spin_merge, line)
        try:
            result = _workspace_call(workspace.merge, args.fork, args.strategy, args.force, args.into)
        except MergeConflict as exc:
            display(exc)
            raise
        if result.get("merged"):
            print(f"spindel: merged {args.fork!r}; new head {result['head'][:12]}")
        else:
            print(f"spindel: nothing merged: {result.get('reason')}")

    @magic_arguments()
    @argument("name", help="workspace whose writer lease to take")
    @argument("--force", action="store_true", help="take it even from a peer that holds it (logged)")
    @line_magic
    def spin_claim(self, line: str) -> None:
        """Take a workspace's writer lease (one that ended, or any with --force)."""
        args = _parsed(self.spin_claim, line)
        _workspace_call(workspace.claim, args.name, args.force)
        print(f"spindel: you now write {args.name!r}")

    @magic_arguments()
    @argument("--as", dest="name", help="the peer name the invite is for (default: guest-XXXX)")
    @argument("--ttl", default="8h", help="how long it is valid: 30m, 2h, 7d... (default 8h)")
    @argument("--revoke", metavar="NAME", help="end the invite for NAME now (disconnecting it)")
    @line_magic
    def spin_invite(self, line: str) -> None:
        """Invite a teammate to this hub as one peer, without handing out the server's token."""
        args = _parsed(self.spin_invite, line)
        if args.revoke:
            _workspace_call(invite.revoke, args.revoke)
            print(f"spindel: the invite for {args.revoke!r} is revoked")
            return
        print(invite.connect_lines(_workspace_call(invite.create, args.name, args.ttl)))

    @line_magic
    def spin_invites(self, line: str) -> None:
        """Show the live invites."""
        display(invite.table(_workspace_call(invite.invites)))

    @line_magic
    def spin_workspaces(self, line: str) -> None:
        """Show the hub's workspaces."""
        display(workspace.table(_workspace_call(workspace.workspaces)))


_parses: dict[tuple[str, str], Any] = {}


def _parsed(magic: Any, line: str) -> Any:
    """The magic's arguments, remembered per line: a cell run again costs no argparse.

    The line is split as :func:`_words` says, keeping the quotes (``--allow '*'``
    gives ``'*'`` with its quotes): a word quoted whole loses them, as in a shell.
    """
    key = (magic.__name__, line)
    if key not in _parses:
        if len(_parses) > 256:
            _parses.clear()
        # Options may come anywhere on the line (%%spin_remote bob -o res x), as in ipyparallel.
        args = magic.parser.parse_intermixed_args(_words(line))
        for name, value in vars(args).items():
            if isinstance(value, str):
                setattr(args, name, _unquoted(value))
            elif isinstance(value, list):
                setattr(args, name, [_unquoted(v) if isinstance(v, str) else v for v in value])
        _parses[key] = args
    return copy.copy(_parses[key])


def _words(line: str) -> list[str]:
    """The words of a magic's line: split at spaces, but not inside quotes or brackets, so that an
    argument's Python expression stays whole (``x=f(1, 2)``, ``s='a b'``)."""
    words: list[str] = []
    word, depth, quote, escaped = "", 0, "", False
    for char in line:
        if quote:
            word += char
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = ""
        elif char.isspace() and depth == 0:
            if word:
                words.append(word)
            word = ""
        else:
            word += char
            if char in "'\"":
                quote = char
            elif char in "([{":
                depth += 1
            elif char in ")]}" and depth:
                depth -= 1
    if word:
        words.append(word)
    return words


def _unquoted(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _workspace_call(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` once connected. What the hub refuses reaches the cell as its own class
    (``WorkspaceNotFound``, ``Forbidden``, ...), shown in one line like a usage error."""
    _peer()
    return fn(*args)


def _peer() -> client.Peer:
    try:
        return client.current_peer()
    except SpindelError as exc:
        raise UsageError(str(exc)) from None


def load(ip: Any) -> None:
    """Register the magics and the rich displays and, inside a Jupyter server with the hub, connect."""
    ip.register_magics(SpindelMagics)
    register_displays(ip)
    if not os.environ.get(client.ENV_URL) or client._current is not None:
        return
    try:
        peer = session.connect(kind="kernel")
    except (SpindelError, ValueError) as exc:
        print(f"spindel: not connected ({exc}); use %spin_connect", file=sys.stderr)
        return
    print(f"spindel: connected to the hub as {peer.name!r}")


def unload(ip: Any) -> None:
    """Disconnect; the magics stay until the kernel restarts (IPython cannot remove them)."""
    client.disconnect()
