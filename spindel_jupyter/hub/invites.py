"""Scoped invites: a token that lets one teammate join the hub as one peer name, and nothing else.

Sharing the Jupyter token grants the whole server (files, terminals, kernels).
An invite grants only the peers' WebSocket, under the name it was made for,
until it expires or is revoked. Only a hash of each token is kept on disk.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..core.errors import SpindelError
from ..core.protocol import check_name
from . import durable
from .access import require

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in ``text`` such as ``90``, ``30s``, ``15m``, ``2h`` or ``7d``."""
    match = _DURATION.fullmatch(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise SpindelError(f"bad duration {text!r}: use a number with s, m, h or d, e.g. 30m or 2h")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class Invite:
    """One invite: who may join as whom, until when."""

    name: str
    digest: str
    expires: float
    created: float
    created_by: str

    def info(self, now: float) -> dict[str, Any]:
        left = max(0, int(self.expires - now))
        return {
            "name": self.name,
            "expires": self.expires,
            "seconds_left": left,
            "created_by": self.created_by,
        }


class Invites:
    """The hub's invites, persisted (as hashes) in one JSON file."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self.invites: dict[str, Invite] = {}
        durable.sweep(path.parent, f".{path.name}.*{durable.SUFFIX}")
        if path.exists():
            for item in json.loads(path.read_text()):
                invite = Invite(**item)
                self.invites[invite.name] = invite

    def create(self, name: str, ttl: float, created_by: str) -> tuple[Invite, str]:
        """A new invite for peer ``name`` (replacing an earlier one); returns it and its token."""
        try:
            check_name(name)
        except ValueError as exc:
            raise SpindelError(f"cannot invite {name!r}: {exc}") from None
        token = "spin-" + secrets.token_urlsafe(24)
        now = self.clock()
        invite = Invite(name, _digest(token), now + ttl, now, created_by)
        self.invites[name] = invite
        self._save()
        return invite, token

    def find(self, token: str) -> Invite | None:
        """The live invite ``token`` belongs to, if any."""
        if not token.startswith("spin-"):
            return None
        digest = _digest(token)
        for invite in self.invites.values():
            if secrets.compare_digest(invite.digest, digest) and invite.expires > self.clock():
                return invite
        return None

    def valid(self, invite: Invite) -> bool:
        """Whether ``invite`` still stands (not revoked, not expired)."""
        return self.invites.get(invite.name) is invite and invite.expires > self.clock()

    def revoke(self, name: str) -> bool:
        found = self.invites.pop(name, None) is not None
        if found:
            self._save()
        return found

    def list(self) -> list[dict[str, Any]]:
        now = self.clock()
        return [i.info(now) for i in sorted(self.invites.values(), key=lambda i: i.name) if i.expires > now]

    def _save(self) -> None:
        data = json.dumps([asdict(i) for i in self.invites.values()], indent=1).encode()
        durable.make_directory(self.path.parent)
        durable.write_file(self.path, data)


def add_invite_ops(relay: Any, invites: Invites, public_url: Callable[[], str]) -> None:
    """The invite requests kernels send: create, list, revoke (never from an invited peer)."""

    def guard(member: Any) -> None:
        require(member.actor, "invites")

    def create(member: Any, argument: Any) -> Any:
        guard(member)
        arguments = argument if isinstance(argument, dict) else {}
        name = str(arguments.get("name") or f"guest-{secrets.token_hex(2)}")
        ttl = parse_duration(str(arguments.get("ttl") or "8h"))
        invite, token = invites.create(name, ttl, member.name)
        return {**invite.info(invites.clock()), "token": token, "url": public_url()}

    def listing(member: Any, argument: Any) -> Any:
        guard(member)
        live = {m.invite.name for m in relay.members.values() if m.invite is not None}
        return [{**item, "connected": item["name"] in live} for item in invites.list()]

    def revoke(member: Any, argument: Any) -> Any:
        guard(member)
        name = str((argument or {}).get("name", "")) if isinstance(argument, dict) else ""
        if not invites.revoke(name):
            raise SpindelError(f"no invite for {name!r}")
        close_invited(relay, invites)
        return {"revoked": name}

    relay.add_op("invite.create", create)
    relay.add_op("invite.list", listing)
    relay.add_op("invite.revoke", revoke)


def close_invited(relay: Any, invites: Invites) -> None:
    """Close every connection whose invite was revoked or has expired."""
    for member in list(relay.members.values()):
        if member.invite is not None and not invites.valid(member.invite):
            member.link.close(4001, "the invite that let this peer in was revoked or has expired")
