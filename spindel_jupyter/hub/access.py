"""Who may do what on the hub: who asks, and the rules every operation checks.

Two kinds of peer join a hub. The server's own (kernels the server started,
scripts holding the server's token, the lab panel with the page's login) act for
the server's user, and may have the hub read and write the server's files.
Invited peers (joined with a ``%spin_invite`` token) act only as themselves: they
never make the hub read or write the server's files, manage invites, or act for
another peer. A REST request acts as the signed-in user, one of the server's own.
SECURITY.md keeps the table of these rules; each rule is checked here, once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..core.errors import Forbidden
from ..core.protocol import INVITED, OWN

__all__ = ["INVITED", "OWN", "Actor", "Forbidden", "acting", "require"]


@dataclass(frozen=True)
class Actor:
    """Who asks: a peer name (``user:NAME`` for a REST request), its scope, and the user it belongs to."""

    name: str
    scope: str
    user: str

    @property
    def own(self) -> bool:
        return self.scope == OWN


#: What only the server's own may do: the rule, and what an invited peer can do instead.
RULES: dict[str, tuple[str, str]] = {
    "publish_from_file": (
        "publish a notebook from the server's files",
        "publish your own notebook instead: %spin_publish NAME sends its content from where you run",
    ),
    "write_file": (
        "have the hub write a file on the server",
        "leave out the path: the hub sends you the notebook and your side writes it where you run",
    ),
    "merge_into_file": (
        "merge into a workspace whose notebook is a file on the server",
        "ask one of the server's own peers (its owner) to run %spin_merge for you",
    ),
    "invites": ("manage invites", "ask the hub's owner"),
    "act_for": ("act for another peer", "act as yourself"),
}


def require(actor: Actor, rule: str) -> None:
    """Pass if ``actor`` may do what ``rule`` guards; raise :class:`Forbidden` naming it otherwise."""
    if actor.own:
        return
    what, instead = RULES[rule]
    raise Forbidden(f"{actor.name!r} joined with an invite, and invited peers cannot {what}; {instead}")


def acting(actor: Actor, name: Any, members: Mapping[str, Any]) -> Actor:
    """Who acts when ``actor`` asks to act as peer ``name``: that peer, if it is one of the actor's own."""
    if name is None or name == "" or name == actor.name:
        return actor
    require(actor, "act_for")
    if not isinstance(name, str):
        raise Forbidden(f"'as' names a peer; got {name!r}")
    member = members.get(name)
    if member is None:
        raise Forbidden(f"cannot act as {name!r}: no peer of that name is connected; act as yourself")
    if member.scope != OWN or member.user != actor.user:
        raise Forbidden(
            f"cannot act as {name!r}: it is not one of {actor.user!r}'s own peers; act as yourself"
        )
    return Actor(member.name, member.scope, member.user)
