"""Errors on the wire: every code arrives as its own class, with the fields it carries."""

from __future__ import annotations

import pytest

from spindel_jupyter.core import codes, errors
from spindel_jupyter.core.protocol import from_wire, to_wire

#: One error of every class that travels, as the hub or a serving peer sends it.
SENT: list[errors.SpindelError] = [
    errors.HubError("invalid workspace name 'a b'"),
    errors.HubFailure("the hub failed on this request (KeyError: 'x')"),
    errors.BadFrame("frame is not valid msgpack"),
    errors.FrameTooLarge("frame of 5000 bytes is over the hub's limit of 4096 bytes"),
    errors.HelloFirst("say hello first: the first frame names the peer"),
    errors.BadName("this invite lets you join only as 'guest'"),
    errors.NameTaken("name 'alice' is already connected; use %spin_connect --as OTHER"),
    errors.HubFull("the hub is full: 2 peers are connected"),
    errors.UnknownOp("peer 'bob' does not serve remote calls; run %spin_serve there"),
    errors.BadTopicKind("topic 'n' holds plain values (last writer wins), not PNCounter values"),
    errors.TooManyTopics("the hub holds 10 topics already"),
    errors.PeerNotFound("bobb", ["alice", "bob"]),
    errors.PeerLost("bob", "peer 'bob' disconnected before it answered"),
    errors.AmbiguousPeer("'bob' names peers of several hubs of the mesh, and none of this one: bob@B, bob@C"),
    errors.Forbidden("'guest' joined with an invite, and invited peers cannot manage invites"),
    errors.WorkspaceNotFound("no workspace named 'nosuch' (known: quiz)"),
    errors.WorkspaceExists("a workspace named 'quiz' already exists; pick another name"),
    errors.NotWritable("'quiz' is held by 'teacher'"),
    errors.MergeConflict(
        "conflicting edits in cell(s) 0", [{"index": 0, "base": "a", "ours": "b", "theirs": "c"}]
    ),
    errors.CorruptNode("node 0123456789ab does not match its hash"),
    errors.MissingNode("node 0123456789ab is not in the store"),
    errors.RemoteError(
        "bob", "ValueError", "boom", ["Traceback (most recent call last):", "ValueError: boom"]
    ),
    errors.NotServed("peer 'bob' does not serve context 'ctx'"),
    errors.Interrupted("interrupted: the caller stopped waiting"),
    errors.RemoteTimeout("bob did not finish within 1.0 s"),
    errors.UnboundNames("name 'z' is not defined on bob", ["z"]),
    errors.UnsendableResult("the result cannot be sent back", {"data": {"text/plain": "Report()"}}),
]

#: What reached a client as a bare HubError before every code had its class: still a HubError.
WERE_HUB_ERRORS = {
    errors.HubError,
    errors.HubFailure,
    errors.BadFrame,
    errors.FrameTooLarge,
    errors.HelloFirst,
    errors.BadName,
    errors.NameTaken,
    errors.HubFull,
    errors.AmbiguousPeer,
    errors.UnknownOp,
    errors.BadTopicKind,
    errors.TooManyTopics,
    errors.Forbidden,
    errors.WorkspaceNotFound,
    errors.WorkspaceExists,
    errors.CorruptNode,
    errors.MissingNode,
}


def test_every_code_has_one_class_in_the_table() -> None:
    every_code = {value for name, value in vars(codes).items() if name.isupper()}
    sent_codes = [exc.code for exc in SENT]
    assert sorted(sent_codes) == sorted(every_code)  # each code once, none left out


@pytest.mark.parametrize("exc", SENT, ids=lambda exc: exc.code)
def test_an_error_arrives_as_its_own_class_with_its_fields(exc: errors.SpindelError) -> None:
    error = to_wire(exc)
    assert error["code"] == exc.code
    arrived = from_wire(error)
    assert type(arrived) is type(exc)
    assert to_wire(arrived) == error
    assert str(arrived) == str(exc)


@pytest.mark.parametrize("exc", SENT, ids=lambda exc: exc.code)
def test_an_except_hub_error_still_catches_what_it_caught(exc: errors.SpindelError) -> None:
    assert isinstance(from_wire(to_wire(exc)), errors.HubError) == (type(exc) in WERE_HUB_ERRORS)


def test_a_plain_error_of_the_hub_is_its_refusal() -> None:
    arrived = from_wire(to_wire(errors.SpindelError("unknown strategy 'x'")))
    assert type(arrived) is errors.HubError and arrived.code == codes.ERROR


def test_an_unknown_code_is_a_hub_error_that_keeps_it() -> None:
    arrived = from_wire({"code": "from_a_newer_hub", "message": "no"})
    assert type(arrived) is errors.HubError
    assert (arrived.code, str(arrived)) == ("from_a_newer_hub", "no")


def test_the_answering_peer_is_named_when_the_error_does_not_name_one() -> None:
    arrived = from_wire({"code": codes.PEER_LOST, "message": "gone"}, peer="bob")
    assert isinstance(arrived, errors.PeerLost) and arrived.peer == "bob"


def test_a_missing_workspace_is_a_key_error_with_a_plain_message() -> None:
    missing = errors.WorkspaceNotFound("no workspace named 'x'")
    assert isinstance(missing, KeyError)
    assert str(missing) == "no workspace named 'x'"
