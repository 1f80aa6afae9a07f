"""Bridges between awaitables and queues (Spindel's spin->chan / chan->spin)."""

from __future__ import annotations

import asyncio

import pytest

from spindel_jupyter import from_queue, to_queue


async def value(v: object) -> object:
    await asyncio.sleep(0)
    return v


async def boom() -> None:
    await asyncio.sleep(0)
    raise ValueError("boom")


def test_value_then_closed() -> None:
    async def scenario() -> list[object]:
        queue = to_queue(value(42))
        return [await from_queue(queue), await from_queue(queue), await from_queue(queue)]

    assert asyncio.run(scenario()) == [42, None, None]


def test_none_travels_as_none() -> None:
    async def scenario() -> object:
        return await from_queue(to_queue(value(None)))

    assert asyncio.run(scenario()) is None


def test_exception_is_re_raised_by_the_reader() -> None:
    async def scenario() -> None:
        await from_queue(to_queue(boom()))

    with pytest.raises(ValueError, match="boom"):
        asyncio.run(scenario())


def test_round_trip_keeps_value_and_error() -> None:
    async def scenario() -> tuple[object, str]:
        got = await from_queue(to_queue(from_queue(to_queue(value("x")))))
        try:
            await from_queue(to_queue(from_queue(to_queue(boom()))))
        except ValueError as exc:
            return got, str(exc)
        return got, ""

    assert asyncio.run(scenario()) == ("x", "boom")


def test_a_plain_queue_works_with_from_queue() -> None:
    async def scenario() -> list[object]:
        queue: asyncio.Queue[object] = asyncio.Queue()
        queue.put_nowait("first")
        queue.put_nowait("second")
        return [await from_queue(queue), await from_queue(queue)]

    assert asyncio.run(scenario()) == ["first", "second"]
