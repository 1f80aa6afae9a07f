"""The relay's routing rules, driven frame by frame (the transport is a recording link)."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from spindel_jupyter.core import codes, wire
from spindel_jupyter.hub.relay import Member, Relay


class RecordingLink:
    """Stands in for a WebSocket: keeps what the relay sends, decoded."""

    def __init__(self) -> None:
        self.frames: list[tuple[dict[str, Any], Any]] = []
        self.closed: tuple[int, str] | None = None

    def send(self, frame: bytes, body: wire.Buffer = b"") -> None:
        header, body = wire.unpack_frame(frame + body)
        self.frames.append((header, wire.decode(body) if body else None))

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def last(self, kind: str | None = None) -> dict[str, Any]:
        headers = [h for h, _ in self.frames if kind is None or h["t"] == kind]
        assert headers, f"no {kind or ''} frame received (got {self.frames})"
        return headers[-1]

    def of(self, kind: str) -> list[tuple[dict[str, Any], Any]]:
        return [(h, b) for h, b in self.frames if h["t"] == kind]


def join(relay: Relay, name: str, session: str | None = None) -> tuple[Member, RecordingLink]:
    link = RecordingLink()
    member = relay.connect(link)
    hello = {"t": "hello", "name": name, "kind": "kernel", "session": session or name}
    relay.receive(member, wire.pack_frame(hello))
    return member, link


def send(relay: Relay, member: Member, header: dict[str, Any], body: Any = None) -> None:
    relay.receive(member, wire.pack_frame(header, None if body is None else wire.encode(body)))


@pytest.fixture
def relay() -> Relay:
    return Relay(max_frame_bytes=1024)


def test_hello_is_welcomed_and_everyone_sees_the_peer_list(relay: Relay) -> None:
    _, alice = join(relay, "alice")
    assert alice.last("welcome")["name"] == "alice"
    _, _bob = join(relay, "bob")
    header, peers = alice.of("event")[-1]
    assert header["event"] == "peers"
    assert [p["name"] for p in peers] == ["alice", "bob"]
    assert [p["name"] for p in relay.peers()] == ["alice", "bob"]


def test_duplicate_name_is_refused_with_the_fix(relay: Relay) -> None:
    join(relay, "alice")
    _, other = join(relay, "alice", session="another-process")
    error = other.last("error")
    assert error["code"] == codes.NAME_TAKEN
    assert "name 'alice' is already connected; use %spin_connect --as OTHER" in error["message"]
    assert [p["name"] for p in relay.peers()] == ["alice"]


def test_same_session_takes_over_its_name(relay: Relay) -> None:
    _first, first_link = join(relay, "alice", session="s1")
    second, second_link = join(relay, "alice", session="s1")
    assert first_link.closed is not None and first_link.closed[0] == 4000
    assert relay.members["alice"] is second
    assert second_link.last("welcome")["name"] == "alice"


def test_request_is_routed_with_the_sender_stamped(relay: Relay) -> None:
    alice, _ = join(relay, "alice")
    _, bob = join(relay, "bob")
    send(relay, alice, {"t": "req", "id": 1, "op": "call", "to": "bob", "from": "mallory"}, [1, 2])
    header, body = bob.of("req")[-1]
    assert header["from"] == "alice"
    assert body == [1, 2]


def test_forged_sender_on_replies_and_messages_is_overwritten(relay: Relay) -> None:
    alice, alice_link = join(relay, "alice")
    bob, _ = join(relay, "bob")
    send(relay, alice, {"t": "req", "id": 9, "op": "call", "to": "bob"})
    send(relay, bob, {"t": "msg", "op": "stream", "to": "alice", "from": "carol"}, "hi")
    send(relay, bob, {"t": "rep", "re": 9, "to": "alice", "from": "carol"}, 42)
    assert alice_link.of("msg")[-1][0]["from"] == "bob"
    header, body = alice_link.of("rep")[-1]
    assert (header["from"], body) == ("bob", 42)


def test_unknown_target_is_answered_at_once_listing_peers(relay: Relay) -> None:
    alice, link = join(relay, "alice")
    join(relay, "bob")
    send(relay, alice, {"t": "req", "id": 5, "op": "call", "to": "carol"})
    reply = link.last("rep")
    assert reply["re"] == 5
    assert reply["error"]["code"] == codes.PEER_NOT_FOUND
    assert reply["error"]["peers"] == ["alice", "bob"]


def test_callers_waiting_on_a_peer_that_leaves_are_told(relay: Relay) -> None:
    alice, alice_link = join(relay, "alice")
    carol, carol_link = join(relay, "carol")
    bob, _ = join(relay, "bob")
    send(relay, alice, {"t": "req", "id": 1, "op": "call", "to": "bob"})
    send(relay, carol, {"t": "req", "id": 2, "op": "call", "to": "bob"})
    send(relay, carol, {"t": "req", "id": 3, "op": "call", "to": "alice"})
    relay.disconnect(bob)
    assert alice_link.last("rep")["error"]["code"] == codes.PEER_LOST
    lost = [h for h, _ in carol_link.of("rep")]
    assert [(h["re"], h["error"]["code"]) for h in lost] == [(2, codes.PEER_LOST)]
    assert "bob" in lost[0]["error"]["message"]


def test_an_answered_request_is_not_failed_later(relay: Relay) -> None:
    alice, alice_link = join(relay, "alice")
    bob, _ = join(relay, "bob")
    send(relay, alice, {"t": "req", "id": 1, "op": "call", "to": "bob"})
    send(relay, bob, {"t": "rep", "re": 1, "to": "alice"}, "done")
    relay.disconnect(bob)
    assert [h.get("error") for h, _ in alice_link.of("rep")] == [None]


def test_reply_to_a_request_never_made_is_dropped(relay: Relay) -> None:
    _, alice_link = join(relay, "alice")
    bob, _ = join(relay, "bob")
    send(relay, bob, {"t": "rep", "re": 77, "to": "alice"}, "unsolicited")
    assert alice_link.of("rep") == []


def test_cancel_forgets_the_request_and_reaches_the_target(relay: Relay) -> None:
    alice, alice_link = join(relay, "alice")
    bob, bob_link = join(relay, "bob")
    send(relay, alice, {"t": "req", "id": 4, "op": "call", "to": "bob"})
    send(relay, alice, {"t": "cancel", "id": 4, "to": "bob"})
    assert bob_link.last("cancel")["from"] == "alice"
    relay.disconnect(bob)
    assert alice_link.of("rep") == []  # nothing left waiting, so nothing to fail


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\x00garbage",
        msgpack.packb([1, 2, 3]),
        msgpack.packb({"t": "teleport"}),
        msgpack.packb({"t": "req", "op": "x"}),
        b"",
    ],
)
def test_bad_frames_get_an_error_frame_and_the_connection_lives(relay: Relay, data: bytes) -> None:
    alice, alice_link = join(relay, "alice")
    bob, _bob_link = join(relay, "bob")
    relay.receive(alice, data)
    assert alice_link.last("error")["code"] == codes.BAD_FRAME
    send(relay, bob, {"t": "req", "id": 1, "op": "call", "to": "alice"})
    assert alice_link.last("req")["from"] == "bob"
    assert "alice" in relay.members


def test_malformed_request_with_an_id_is_answered_as_a_reply(relay: Relay) -> None:
    alice, link = join(relay, "alice")
    relay.receive(alice, msgpack.packb({"t": "req", "id": 3, "op": "x", "to": 12}))
    reply = link.last("rep")
    assert (reply["re"], reply["error"]["code"]) == (3, codes.BAD_FRAME)


def test_oversized_frame_gets_an_error(relay: Relay) -> None:
    alice, link = join(relay, "alice")
    join(relay, "bob")
    send(relay, alice, {"t": "msg", "op": "x", "to": "bob"}, b"x" * 2000)
    error = link.last("error")
    assert error["code"] == codes.FRAME_TOO_LARGE
    assert "max_frame_bytes" in error["message"]


def test_frames_before_hello_are_refused(relay: Relay) -> None:
    link = RecordingLink()
    member = relay.connect(link)
    send(relay, member, {"t": "req", "id": 1, "op": "peers"})
    assert link.last("rep")["error"]["code"] == codes.HELLO_FIRST
    relay.receive(member, wire.pack_frame({"t": "hello", "name": "bad name", "kind": "ui", "session": "s"}))
    assert link.last("error")["code"] == codes.BAD_NAME
    assert relay.peers() == []


def test_hub_ops_peers_and_update(relay: Relay) -> None:
    alice, link = join(relay, "alice")
    send(relay, alice, {"t": "req", "id": 1, "op": "update"}, {"contexts": ["default", "ctx-a"]})
    send(relay, alice, {"t": "req", "id": 2, "op": "peers"})
    _, peers = link.of("rep")[-1]
    assert peers[0]["contexts"] == ["default", "ctx-a"]
    send(relay, alice, {"t": "req", "id": 3, "op": "launch"})
    assert link.last("rep")["error"]["code"] == codes.UNKNOWN_OP


def test_a_full_hub_refuses_one_more_peer_clearly() -> None:
    relay = Relay(max_frame_bytes=1024, max_peers=2)
    join(relay, "a")
    join(relay, "b")
    _, link = join(relay, "c")
    error = link.last("error")
    assert error["code"] == codes.HUB_FULL and "max_peers" in error["message"]
    assert sorted(relay.members) == ["a", "b"]


def test_the_hub_stamps_whether_a_sender_is_the_servers_own_or_invited(relay: Relay) -> None:
    alice, alice_link = join(relay, "alice")
    guest_link = RecordingLink()
    guest = relay.connect(guest_link)
    guest.scope = "invited"
    relay.receive(guest, wire.pack_frame({"t": "hello", "name": "guest", "kind": "script", "session": "g"}))
    assert guest_link.last("welcome")["scope"] == "invited" and alice_link.last("welcome")["scope"] == "own"
    # a forged scope is overwritten, as a forged sender is
    send(relay, guest, {"t": "req", "id": 1, "op": "call", "to": "alice", "scope": "own", "from": "alice"})
    request = alice_link.last("req")
    assert (request["from"], request["scope"]) == ("guest", "invited")
    send(relay, alice, {"t": "req", "id": 2, "op": "call", "to": "guest"})
    assert guest_link.last("req")["scope"] == "own"


def test_a_hub_op_that_fails_becomes_an_error_reply_and_the_connection_lives(relay: Relay) -> None:
    def broken(member: Member, argument: Any) -> Any:
        raise ValueError("invalid peer name 'a b'")

    relay.add_op("broken", broken)
    alice, link = join(relay, "alice")
    send(relay, alice, {"t": "req", "id": 7, "op": "broken"})
    reply = link.last("rep")
    assert reply["re"] == 7 and reply["error"]["code"] == "hub_error"
    assert "ValueError: invalid peer name 'a b'" in reply["error"]["message"]
    assert link.closed is None and "alice" in relay.members
    send(relay, alice, {"t": "req", "id": 8, "op": "peers"})
    assert link.last("rep")["re"] == 8 and "error" not in link.last("rep")


def test_any_failure_while_handling_a_frame_is_answered_not_raised(relay: Relay) -> None:
    alice, link = join(relay, "alice")

    def explode(*args: Any) -> None:
        raise RuntimeError("boom")

    relay.topics.publish = explode  # type: ignore[method-assign]
    send(relay, alice, {"t": "pub", "topic": "t", "kind": "lww", "seq": 1, "stamp": [1, 0, "alice"]}, 1)
    assert link.last("error")["code"] == "hub_error" and "RuntimeError: boom" in link.last("error")["message"]
    assert link.closed is None and "alice" in relay.members


def test_a_peer_renamed_after_its_notebook_keeps_its_calls_and_is_told(relay: Relay) -> None:
    untitled, link = join(relay, "Untitled")
    bob, bob_link = join(relay, "bob")
    _, _ = join(relay, "alice")
    renamed: list[tuple[str, str]] = []
    relay.on_rename.append(lambda old, new: renamed.append((old, new)))
    send(relay, untitled, {"t": "req", "id": 3, "op": "call", "to": "bob"})  # waiting on bob
    assert relay.rename(untitled, "alice", "/root/alice.ipynb") == "alice-2"  # 'alice' is taken
    assert sorted(relay.members) == ["alice", "alice-2", "bob"] and untitled.name == "alice-2"
    header, body = link.of("event")[-2]
    assert header["event"] == "renamed" and body == {"name": "alice-2", "notebook": "/root/alice.ipynb"}
    assert [p["name"] for p in bob_link.of("event")[-1][1]] == ["alice", "alice-2", "bob"]
    assert renamed == [("Untitled", "alice-2")]
    send(relay, bob, {"t": "rep", "re": 3, "to": "alice-2"}, "done")  # the reply finds the new name
    assert link.last("rep")["re"] == 3 and link.last("rep")["from"] == "bob"


# -- frames to and from the peers of other hubs ---------------------------------------------------


class RecordingMesh:
    """Stands in for the NATS mesh (tested on its own in test_mesh.py): other hubs' peers, frames sent."""

    def __init__(self, peers: dict[str, list[str]]) -> None:
        self.hub_peers = peers
        self.sent: list[tuple[str, dict[str, Any], Any]] = []

    def peers(self) -> list[dict[str, Any]]:
        return [
            {"name": name, "kind": "kernel", "hub": hub, "local": False}
            for hub, names in sorted(self.hub_peers.items())
            for name in names
        ]

    def reaches(self, hub: str) -> bool:
        return hub in self.hub_peers

    def send(self, hub: str, frame: bytes, body: wire.Buffer = b"") -> None:
        header, rest = wire.unpack_frame(frame + body)
        self.sent.append((hub, header, wire.decode(rest) if rest else None))

    def stats(self) -> dict[str, Any]:
        return {"state": "connected"}


@pytest.fixture
def meshed() -> tuple[Relay, RecordingMesh]:
    relay = Relay(max_frame_bytes=1024)
    relay.hub_name = "A"
    relay.mesh = RecordingMesh({"B": ["bob", "carol"], "C": ["carol"]})
    return relay, relay.mesh


def from_hub(relay: Relay, hub: str, header: dict[str, Any], body: Any = None) -> None:
    relay.receive_from_hub(hub, wire.pack_frame(header, None if body is None else wire.encode(body)))


def test_a_call_to_a_peer_of_another_hub_goes_to_its_hub_and_its_reply_comes_back(meshed: Any) -> None:
    relay, mesh = meshed
    _, alice = join(relay, "alice")
    send(relay, relay.members["alice"], {"t": "req", "id": 7, "op": "call", "to": "bob"}, {"x": 1})
    hub, header, body = mesh.sent[-1]
    assert (hub, header["to"], header["from"], header["scope"], body) == (
        "B",
        "bob",
        "alice",
        "own",
        {"x": 1},
    )
    from_hub(relay, "B", {"t": "msg", "op": "output", "to": "alice@A", "from": "bob", "scope": "own"}, "hi")
    from_hub(relay, "B", {"t": "rep", "re": 7, "to": "alice@A", "from": "bob", "scope": "own"}, 42)
    (output, said), (reply, value) = alice.of("msg")[-1], alice.of("rep")[-1]
    assert (output["from"], output["scope"], said) == ("bob@B", "mesh", "hi")
    assert (reply["from"], reply["scope"], value) == ("bob@B", "mesh", 42)


def test_a_call_from_a_peer_another_hub_has_not_announced_yet_carries_the_user_its_hub_stamped(
    meshed: Any,
) -> None:
    relay, _ = meshed
    _, alice = join(relay, "alice")
    call = {"t": "req", "op": "call", "to": "alice", "from": "dave", "scope": "own", "user": "student"}
    from_hub(relay, "B", {**call, "id": 1})
    header, _ = alice.of("req")[-1]
    assert (header["from"], header["scope"], header["user"]) == ("dave@B", "mesh", "student")


def test_an_unasked_reply_from_another_hub_is_dropped(meshed: Any) -> None:
    relay, _ = meshed
    _, alice = join(relay, "alice")
    from_hub(relay, "B", {"t": "rep", "re": 99, "to": "alice", "from": "bob"}, "forged")
    assert alice.of("rep") == []


def test_a_bare_name_of_several_hubs_is_ambiguous_and_names_them(meshed: Any) -> None:
    relay, mesh = meshed
    _, alice = join(relay, "alice")
    send(relay, relay.members["alice"], {"t": "req", "id": 1, "op": "call", "to": "carol"})
    error = alice.last("rep")["error"]
    assert error["code"] == codes.AMBIGUOUS_PEER and "carol@B, carol@C" in error["message"]
    assert mesh.sent == []
    _, _carol = join(relay, "carol")  # then the local one is meant
    send(relay, relay.members["alice"], {"t": "req", "id": 2, "op": "call", "to": "carol"})
    assert mesh.sent == [] and relay.members["carol"].awaiting == {("alice", 2)}


def test_a_peer_of_another_hub_reaches_only_this_hubs_peers(meshed: Any) -> None:
    relay, mesh = meshed
    join(relay, "alice")
    from_hub(relay, "B", {"t": "req", "id": 3, "op": "call", "to": "carol", "from": "bob"})
    hub, header, _ = mesh.sent[-1]
    assert hub == "B" and header["t"] == "rep" and header["to"] == "bob@B"  # not carol of C
    assert header["error"]["code"] == codes.PEER_NOT_FOUND and header["from"] == "carol"
    assert "'carol@A'" in header["error"]["message"] and "alice@A" in header["error"]["message"]


@pytest.mark.parametrize(
    "header",
    [
        {"t": "req", "id": 4, "op": "peers", "from": "bob"},  # a hub op: only this hub's peers ask the hub
        {"t": "req", "id": 4, "op": "workspace.publish", "from": "bob"},
        {"t": "sub", "id": 4, "topic": "t", "mode": "sync", "from": "bob"},
        {"t": "req", "id": 4, "op": "call", "to": "alice@C", "from": "bob"},  # for another hub
    ],
    ids=["hub-op", "workspace-op", "topic", "other-hub"],
)
def test_a_peer_of_another_hub_never_asks_this_hub_itself(meshed: Any, header: dict[str, Any]) -> None:
    relay, mesh = meshed
    _, alice = join(relay, "alice")
    before = len(alice.frames)
    from_hub(relay, "B", header)
    assert alice.frames[before:] == []
    if header["t"] == "req":
        _, reply, _ = mesh.sent[-1]
        assert reply["error"]["code"] in (codes.FORBIDDEN, codes.BAD_FRAME)
    assert relay.topics.list() == []


def test_a_frame_from_another_hub_that_speaks_for_a_third_is_dropped(meshed: Any) -> None:
    relay, mesh = meshed
    join(relay, "alice")
    from_hub(relay, "B", {"t": "req", "id": 5, "op": "call", "to": "alice", "from": "carol@C"})
    assert relay.members["alice"].awaiting == set() and mesh.sent == []


def test_calls_to_a_hub_that_left_the_mesh_fail_with_peer_lost(meshed: Any) -> None:
    relay, mesh = meshed
    _, alice = join(relay, "alice")
    send(relay, relay.members["alice"], {"t": "req", "id": 6, "op": "call", "to": "bob@B"})
    del mesh.hub_peers["B"]
    relay.mesh_changed()
    error = alice.last("rep")["error"]
    assert alice.last("rep")["re"] == 6 and error["code"] == codes.PEER_LOST
    assert "its hub 'B' left the mesh" in error["message"]
    assert [p["name"] for p in alice.of("event")[-1][1]] == ["alice", "carol"]  # told of the new list


def test_a_local_peer_that_leaves_fails_the_calls_of_other_hubs_peers(meshed: Any) -> None:
    relay, mesh = meshed
    bob, _ = join(relay, "bob")
    from_hub(relay, "B", {"t": "req", "id": 8, "op": "call", "to": "bob", "from": "dave"})
    relay.disconnect(bob)
    hub, header, _ = mesh.sent[-1]
    assert (hub, header["to"], header["re"], header["error"]["code"]) == ("B", "dave@B", 8, codes.PEER_LOST)
