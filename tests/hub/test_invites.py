"""Scoped invites: durations, tokens, expiry, revocation, persistence."""

from __future__ import annotations

from pathlib import Path

import pytest

from spindel_jupyter.core.errors import SpindelError
from spindel_jupyter.hub.invites import Invites, parse_duration
from tests.hub.conftest import Events


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("30s", 30), ("15m", 900), ("2h", 7200), ("1.5d", 129600)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-5m", "0", "3w"])
def test_bad_durations_say_how(text: str) -> None:
    with pytest.raises(SpindelError, match=r"e\.g\. 30m"):
        parse_duration(text)


def test_an_invite_opens_until_it_expires_or_is_revoked(tmp_path: Path) -> None:
    now = [1000.0]
    invites = Invites(tmp_path / "invites.json", clock=lambda: now[0])
    invite, token = invites.create("guest", 60, "alice")
    assert invites.find(token) is invite and invites.valid(invite)
    assert invites.find("spin-wrong") is None and invites.find("not-an-invite") is None
    now[0] += 61
    assert invites.find(token) is None and not invites.valid(invite)
    again, token2 = invites.create("guest", 60, "alice")
    assert invites.revoke("guest") and invites.find(token2) is None and not invites.valid(again)


def test_only_hashes_are_stored_and_invites_survive_a_restart(tmp_path: Path) -> None:
    invites = Invites(tmp_path / "invites.json")
    _, token = invites.create("guest", 3600, "alice")
    assert token not in (tmp_path / "invites.json").read_text()
    reopened = Invites(tmp_path / "invites.json")
    found = reopened.find(token)
    assert found is not None and found.name == "guest"
    assert [i["name"] for i in reopened.list()] == ["guest"]


def test_invites_are_saved_durably_and_leftovers_swept(tmp_path: Path, disk: Events) -> None:
    leftover = tmp_path / ".invites.json.999.beef.tmp"
    leftover.write_text("[")
    invites = Invites(tmp_path / "invites.json")
    assert not leftover.exists()
    invites.create("guest", 60, "alice")
    assert disk[-2:] == [("rename", tmp_path / "invites.json"), ("fsync", tmp_path)]
