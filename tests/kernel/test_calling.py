"""Calling: what a function sends, and the one call path of the blocking and awaitable forms."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from spindel_jupyter.core import wire
from spindel_jupyter.core.errors import PeerLost, RemoteTimeout, SpindelError
from spindel_jupyter.core.protocol import OP_CALL, OP_OUTPUT, OWN
from spindel_jupyter.kernel import calling
from spindel_jupyter.kernel.calling import _split, call, function_source, functions, remote, run
from spindel_jupyter.peer import client


def decorated(f: Any) -> Any:
    return f


@decorated
def annotated(frame: SomeType, *rest: Other, scale: float = 2.0, **extra: More) -> Result:  # noqa: F821
    return frame * scale


def plus(a: int, b: int) -> int:
    return a + b


def test_function_source_drops_decorators_and_annotations() -> None:
    source = function_source(annotated)
    assert source.startswith("def annotated(frame, *rest, scale=2.0, **extra):")
    for word in ("decorated", "SomeType", "Other", "More", "Result", "float"):
        assert word not in source


def test_closures_and_lambdas_are_refused_with_a_way_out() -> None:
    factor = 3

    def closes() -> int:
        return factor

    with pytest.raises(SpindelError, match=r"local variables of an enclosing function \(factor\)"):
        function_source(closes)
    with pytest.raises(SpindelError, match="defined with def"):
        function_source(lambda: 1)


def test_remote_decorator_keeps_the_function_metadata() -> None:
    wrapped = remote("bob", context="ctx")(annotated)
    assert wrapped.__name__ == "annotated"
    assert wrapped.target == "bob/ctx"
    assert "bob/ctx" in repr(wrapped)


@pytest.mark.parametrize(("target", "split"), [("bob", ("bob", None)), ("bob/ctx-a", ("bob", "ctx-a"))])
def test_targets(target: str, split: tuple[str, str | None]) -> None:
    assert _split(target) == split


def test_bad_target() -> None:
    with pytest.raises(ValueError, match="PEER or PEER/CONTEXT"):
        _split("/ctx")


# -- the call path, against a stand-in for the connection --------------------------------------

#: How the stand-in answers a call: given the peer and the request id, on a thread of its own.
Answer = Callable[["FakePeer", int], None]


class FakePeer:
    """Records what a call sends and cancels; ``answer`` plays the serving peer."""

    name = "alice"

    def __init__(self, answer: Answer | None) -> None:
        self.answer = answer
        self.handlers: dict[str, Any] = {}
        self.sent: list[tuple[str, str, dict[str, Any]]] = []
        self.cancelled: list[tuple[str, int]] = []
        self.replies: dict[int, concurrent.futures.Future[Any]] = {}
        self._ids = itertools.count(1)

    def handler(self, op: str) -> Any:
        return self.handlers.get(op)

    def handle(self, op: str, handler: Any) -> None:
        self.handlers[op] = handler

    def next_id(self) -> int:
        return next(self._ids)

    def submit(self, to: str, op: str, body: dict[str, Any], rid: int) -> tuple[int, Any]:
        self.sent.append((to, op, body))
        self.replies[rid] = concurrent.futures.Future()
        if self.answer is not None:
            threading.Thread(target=self.answer, args=(self, rid), daemon=True).start()
        return rid, self.replies[rid]

    def cancel(self, to: str, rid: int) -> None:
        self.cancelled.append((to, rid))

    def output(self, rid: int, **item: Any) -> None:
        self.handlers[OP_OUTPUT](client.Incoming("bob", OP_OUTPUT, {"re": rid, **item}, None, OWN))

    def finish(self, rid: int, value: Any) -> None:
        payload = memoryview(wire.encode({"value": value}))
        self.replies[rid].set_result(({"t": "rep", "re": rid}, payload))


@pytest.fixture
def connect(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Answer | None], FakePeer]]:
    def make(answer: Answer | None) -> FakePeer:
        peer = FakePeer(answer)
        monkeypatch.setattr(client, "_current", peer)
        return peer

    yield make
    assert not calling._sinks, "a finished call leaves no output sink behind"


def streams_then_answers(peer: FakePeer, rid: int) -> None:
    peer.output(rid, stream="stdout", text="first\n")
    time.sleep(0.1)
    peer.output(rid, stream="stderr", text="careful\n")
    peer.finish(rid, 42)


def never_answers(peer: FakePeer, rid: int) -> None:
    return None


def test_a_blocking_call_shows_output_as_it_comes_and_returns_the_value(
    connect: Callable[[Answer | None], FakePeer], capsys: pytest.CaptureFixture[str]
) -> None:
    peer = connect(streams_then_answers)
    assert run("bob/ctx", "x + 1", {"x": 41}) == 42
    assert peer.sent == [
        ("bob", OP_CALL, {"kind": "cell", "source": "x + 1", "args": {"x": 41}, "context": "ctx"})
    ]
    out, err = capsys.readouterr()
    assert (out, err) == ("first\n", "careful\n")
    assert peer.cancelled == []


def test_an_awaited_call_takes_the_same_path(
    connect: Callable[[Answer | None], FakePeer], capsys: pytest.CaptureFixture[str]
) -> None:
    peer = connect(streams_then_answers)
    fn = remote("bob")(plus)
    assert asyncio.run(fn.aio(40, b=2)) == 42
    (_, op, body) = peer.sent[0]
    assert (op, body["kind"], body["args"], body["kwargs"], body["context"]) == (
        OP_CALL,
        "function",
        [40],
        {"b": 2},
        None,
    )
    assert capsys.readouterr() == ("first\n", "careful\n")


@pytest.mark.parametrize("form", ["blocking", "awaited"])
def test_a_timeout_stops_the_call_there_and_raises(
    connect: Callable[[Answer | None], FakePeer], form: str
) -> None:
    peer = connect(never_answers)
    fn = remote("bob", timeout=0.3)(plus)
    started = time.monotonic()
    with pytest.raises(RemoteTimeout, match=r"bob did not finish within 0\.3 s; the call was interrupted"):
        fn(1, 2) if form == "blocking" else asyncio.run(fn.aio(1, 2))
    assert 0.3 <= time.monotonic() - started < 1.5
    assert peer.cancelled == [("bob", 1)]


def test_an_interrupt_stops_the_call_there(connect: Callable[[Answer | None], FakePeer]) -> None:
    def interrupts(peer: FakePeer, rid: int) -> None:
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGINT)  # as the kernel's interrupt does, while the call waits

    peer = connect(interrupts)
    # A cell runs with Python's own SIGINT handler (the kernel's interrupt raises KeyboardInterrupt):
    # whatever an earlier test in this process left installed must not decide this one.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            run("bob", "import time; time.sleep(30)")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert peer.cancelled == [("bob", 1)]


def test_a_cancelled_await_stops_the_call_there(connect: Callable[[Answer | None], FakePeer]) -> None:
    peer = connect(never_answers)
    fn = remote("bob")(plus)

    async def give_up() -> None:
        task = asyncio.ensure_future(fn.aio(1, 2))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(give_up())
    assert peer.cancelled == [("bob", 1)]


def test_a_failed_reply_raises_its_error(connect: Callable[[Answer | None], FakePeer]) -> None:
    def lost(peer: FakePeer, rid: int) -> None:
        peer.replies[rid].set_exception(PeerLost("bob"))

    connect(lost)
    with pytest.raises(PeerLost, match="'bob' disconnected"):
        run("bob", "1")


def test_call_with_a_name_calls_the_function_the_peer_serves_by_that_name(
    connect: Callable[[Answer | None], FakePeer], capsys: pytest.CaptureFixture[str]
) -> None:
    peer = connect(streams_then_answers)
    assert call("bob/ctx", "grade", 41, strict=True) == 42
    assert peer.sent == [
        (
            "bob",
            OP_CALL,
            {"kind": "named", "name": "grade", "args": [41], "kwargs": {"strict": True}, "context": "ctx"},
        )
    ]
    assert capsys.readouterr() == ("first\n", "careful\n")
    assert functions("bob/ctx").grade(41, strict=True) == 42
    assert peer.sent[1] == peer.sent[0]  # the very call functions(PEER).NAME(...) makes
