"""Who asks for a hub operation, and the rules that only the server's own peers pass."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from spindel_jupyter.hub.access import RULES, Actor, Forbidden, acting, require

ALICE = Actor("alice", "own", "maria")
GUEST = Actor("guest", "invited", "invite:guest")


@pytest.mark.parametrize("rule", sorted(RULES))
def test_only_the_servers_own_pass_each_rule_and_a_refusal_says_what_to_do(rule: str) -> None:
    require(ALICE, rule)
    with pytest.raises(Forbidden) as refused:
        require(GUEST, rule)
    what, instead = RULES[rule]
    assert str(refused.value) == f"'guest' joined with an invite, and invited peers cannot {what}; {instead}"
    assert refused.value.code == "forbidden"


def member(name: str, scope: str, user: str) -> SimpleNamespace:
    return SimpleNamespace(name=name, scope=scope, user=user)


MEMBERS = {
    "bob": member("bob", "own", "maria"),
    "carl": member("carl", "own", "carl"),
    "guest2": member("guest2", "invited", "invite:guest2"),
}


def test_acting_for_a_peer_of_the_same_user_only() -> None:
    assert acting(ALICE, None, MEMBERS) is ALICE and acting(ALICE, "alice", MEMBERS) is ALICE
    assert acting(ALICE, "bob", MEMBERS) == Actor("bob", "own", "maria")
    with pytest.raises(Forbidden, match="not one of 'maria''s own peers"):
        acting(ALICE, "carl", MEMBERS)
    with pytest.raises(Forbidden, match="not one of 'maria''s own peers"):
        acting(ALICE, "guest2", MEMBERS)
    with pytest.raises(Forbidden, match="no peer of that name is connected"):
        acting(ALICE, "nobody", MEMBERS)
    with pytest.raises(Forbidden, match="invited peers cannot act for another peer"):
        acting(GUEST, "bob", MEMBERS)
    assert acting(GUEST, "guest", MEMBERS) is GUEST
