"""Topics across the mesh: whose a topic is travels with it, and every hub checks who writes it.

Hubs here are the topic side of a hub without its Jupyter server, over a real nats-server; their
peers are relay members of the users their hub admitted them for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spindel_jupyter.core import codes, wire
from spindel_jupyter.core.protocol import LWW
from spindel_jupyter.hub.mesh import Mesh
from spindel_jupyter.hub.mesh_topics import MeshTopics, topic_subject
from spindel_jupyter.hub.relay import Relay
from spindel_jupyter.hub.topics import TopicStore
from tests.hub.test_relay import join
from tests.hub.test_topics import pub, sub
from tests.support import NatsServer, in_mesh, until


class Hub:
    """The topic side of one hub, and one peer of its own of ``user``."""

    def __init__(self, name: str, url: str, root: Path, user: str) -> None:
        self.mesh = Mesh(url, name)
        self.store = TopicStore(root / name / "topics")
        self.relay = Relay(1 << 20, self.store)
        self.topics = MeshTopics(self.mesh, self.store)
        self.mesh.parts.append(self.topics)
        self.peer, self.link = join(self.relay, f"{user}-kernel")
        self.peer.user = user

    def value(self, topic: str) -> Any:
        held = self.store.topics.get(topic)
        return wire.decode(held.state) if held is not None and held.state is not None else None


def hubs(nats: NatsServer, root: Path) -> dict[str, Hub]:
    return {
        "teacher": Hub("teacher", nats.url, root, "teacher"),
        "student": Hub("student", nats.url, root, "student"),
    }


def live(h: dict[str, Hub]) -> bool:
    return all(hub.topics.live for hub in h.values())


def export_progress(teacher: Hub) -> None:
    """The teacher's peer exports topic ``progress`` at 1 (read-only to other users)."""
    one = wire.encode(1)
    sub(teacher.relay, teacher.peer, "progress", mode="export", kind=LWW, body=one, stamp=[5, 0, "t"])


def test_whose_a_topic_is_reaches_every_hub_before_it_holds_a_value(nats: NatsServer, tmp_path: Path) -> None:
    async def scenario(h: dict[str, Hub]) -> None:
        teacher, student = h["teacher"], h["student"]
        sub(teacher.relay, teacher.peer, "progress", mode="export", kind=LWW)  # no value yet
        await until(lambda: "progress" in student.store.topics, "the topic on the student's hub")
        assert student.store.topics["progress"].scope.owner == "teacher"
        sub(student.relay, student.peer, "progress", mode="sync", kind=LWW)
        assert student.link.of("snap")[-1][0]["error"]["code"] == codes.NOT_WRITABLE

    in_mesh(hubs(nats, tmp_path), live, scenario)


def test_a_hub_refuses_a_write_another_hub_sends_for_a_user_the_owner_did_not_let_write(
    nats: NatsServer, tmp_path: Path
) -> None:
    async def scenario(h: dict[str, Hub]) -> None:
        teacher, student = h["teacher"], h["student"]
        watcher, watching = join(teacher.relay, "watcher")
        watcher.user = "teacher"
        sub(teacher.relay, watcher, "progress", mode="mirror")
        export_progress(teacher)
        await until(lambda: student.value("progress") == 1, "the value on the student's hub")
        scope = student.store.topics["progress"].scope.to_wire()

        # The student's hub refuses its own peer's write...
        pub(student.relay, student.peer, "progress", LWW, wire.encode(99), stamp=[9, 0, "s"])
        assert student.link.last("error")["code"] == codes.NOT_WRITABLE
        # ... and a hub that would take it anyway (an older or a hostile one) sends it raw:
        # the teacher's hub refuses it too, whatever scope the message claims.
        for claimed in (scope, {**scope, "others": "write"}, None):
            header = {"kind": LWW, "stamp": [9, 0, "s"], "scope": claimed, "user": "student"}
            student.mesh.publish(
                topic_subject("progress", "student"), wire.pack_frame(header), wire.encode(99)
            )
        await until(lambda: teacher.store.refused == 3, "the three writes refused by the teacher's hub")
        assert teacher.value("progress") == 1 and student.value("progress") == 1
        assert [body for _, body in watching.of("pub")] == [1]  # nobody here heard of them

        # The owner shares it: the student's writes go through, on both hubs.
        sub(teacher.relay, teacher.peer, "progress", mode="export", kind=LWW, others="write")
        await until(lambda: student.store.topics["progress"].scope.others == "write", "the new scope")
        pub(student.relay, student.peer, "progress", LWW, wire.encode(7), seq=2, stamp=[20, 0, "s"])
        await until(lambda: teacher.value("progress") == 7, "the student's write on the teacher's hub")
        assert [body for _, body in watching.of("pub")] == [1, 7]

    in_mesh(hubs(nats, tmp_path), live, scenario)


def test_a_hub_that_joins_later_knows_whose_each_topic_is_from_the_stream(
    nats: NatsServer, tmp_path: Path
) -> None:
    async def scenario(h: dict[str, Hub]) -> None:
        teacher = h["teacher"]
        export_progress(teacher)
        sub(
            teacher.relay,
            teacher.peer,
            "board",
            mode="sync",
            kind=LWW,
            body=wire.encode(0),
            stamp=[5, 0, "t"],
        )
        late = Hub("late", nats.url, tmp_path, "student")
        late.mesh.start()
        try:
            await until(lambda: late.topics.live and late.value("board") == 0, "the late hub caught up")
            scopes = {name: (t.scope.owner, t.scope.others) for name, t in late.store.topics.items()}
            assert scopes == {"progress": ("teacher", "read"), "board": ("teacher", "write")}
            pub(late.relay, late.peer, "progress", LWW, wire.encode(99), stamp=[9, 0, "s"])
            assert late.link.last("error")["code"] == codes.NOT_WRITABLE and late.value("progress") == 1
        finally:
            await late.mesh.close()

    in_mesh({"teacher": Hub("teacher", nats.url, tmp_path, "teacher")}, live, scenario)
