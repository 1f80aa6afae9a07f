"""Who may do what on the hub: who asks, and the rules every operation checks.

Two kinds of peer join a hub. The server's own (kernels the server started,
scripts holding the server's token, the lab panel with the page's login) act for
the server's user, and may have the hub read and write the server's files.
Invited peers (joined with a ``%spin_invite`` token) act only as themselves: they
never make the hub read or write the server's files, manage invites, or act for
another peer. A REST request acts as the signed-in user, one of the server's own.
SECURITY.md keeps the table of these rules; each rule is checked here, once.

Data belongs to a user too: a topic to the user of the peer that created it, a
workspace to the user who published (or forked) it. Another user reads them,
and writes a topic only if its owner shares it with ``others="write"``; a
workspace of another user is written through a fork (:func:`check_topic_write`,
:func:`check_workspace_write`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..core.errors import Forbidden, NotWritable
from ..core.protocol import INVITED, OWN, WRITE

__all__ = [
    "INVITED",
    "OWN",
    "Actor",
    "Forbidden",
    "NotWritable",
    "acting",
    "check_topic_write",
    "check_workspace_write",
    "require",
]


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


def check_topic_write(topic: str, owner: str, others: str, user: str) -> None:
    """Pass if ``user`` may write ``topic``: its owner's user always, anyone if the owner shares it
    with ``others="write"`` (a topic with no owner, from before owners, is everyone's)."""
    if not owner or user == owner or others == WRITE:
        return
    raise NotWritable(
        f"topic {topic!r} is read-only to user {user or '(none)'}: it belongs to user {owner}; "
        f"read it with subscribe_signal, or ask {owner} to share it with others='write'"
    )


def check_topic_mode(topic: str, owner: str, user: str) -> None:
    """Pass if ``user`` may change who else writes ``topic``: only its owner's user may."""
    if owner and user != owner:
        raise NotWritable(
            f"topic {topic!r} belongs to user {owner}: only {owner} can change who else writes it "
            f"(leave out others=, or ask {owner})"
        )


def check_workspace_write(workspace: str, owner: str, user: str, merging: str | None = None) -> None:
    """Pass if ``user`` may write ``workspace`` (publish onto it, claim its lease, merge into it): only
    its owner's user may (a workspace with no owner, from before owners, is everyone's)."""
    if not owner or user == owner:
        return
    instead = (
        f"ask {owner} to merge it (%spin_merge {merging})"
        if merging
        else f"fork it (%spin_fork {workspace} NEW) and write the fork"
    )
    raise NotWritable(
        f"workspace {workspace!r} belongs to user {owner} and is read-only to user {user or '(none)'}: "
        f"{instead}"
    )
