"""Invites from a kernel: let a teammate join this hub as one peer, without the server's token."""

from __future__ import annotations

import time
from typing import Any

from ..peer import client
from .display import Table


def create(name: str | None = None, ttl: str = "8h") -> dict[str, Any]:
    """A new invite (``token``, ``url``, ``name``, ``expires``) for one peer name, valid for ``ttl``."""
    return dict(client.current_peer().request(None, "invite.create", {"name": name, "ttl": ttl}, timeout=30))


def revoke(name: str) -> None:
    """End the invite for ``name`` now; a peer connected with it is disconnected."""
    client.current_peer().request(None, "invite.revoke", {"name": name}, timeout=30)


def invites() -> list[dict[str, Any]]:
    """The live invites: name, who made it, seconds left, whether it is in use."""
    return list(client.current_peer().request(None, "invite.list", timeout=30))


def connect_lines(invite: dict[str, Any]) -> str:
    """What to send the teammate: a magic for a notebook, a line for a script."""
    url, name, token = invite["url"], invite["name"], invite["token"]
    until = time.strftime("%Y-%m-%d %H:%M", time.localtime(invite["expires"]))
    return (
        f"Invite for peer {name!r}, valid until {until}. Send one of these to your teammate:\n"
        f"  in a notebook:  %spin_connect {url} --as {name} --token {token}\n"
        f"  in Python:      spindel_jupyter.connect({url!r}, name={name!r}, token={token!r})\n"
        f"Revoke it with %spin_invite --revoke {name}"
    )


def table(items: list[dict[str, Any]]) -> Table:
    rows = [
        [i["name"], i["created_by"], f"{i['seconds_left'] // 60} min", "yes" if i.get("connected") else "no"]
        for i in items
    ]
    return Table(["invite for", "made by", "time left", "connected"], rows, title=f"{len(rows)} invites")
