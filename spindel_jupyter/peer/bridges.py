"""Bridges between awaitables and queues, as Spindel's spin->chan and chan->spin."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

#: Put on a queue after its one item: a reader that finds it gets None.
CLOSED = object()


class _Raised:
    """An exception travelling on a queue, to be re-raised by the reader."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def to_queue(awaitable: Awaitable[Any]) -> asyncio.Queue[Any]:
    """A fresh queue that receives the awaitable's value (or its exception), then closes.

    Call it inside a running event loop; nothing is cancelled if the queue is never read.
    """
    out: asyncio.Queue[Any] = asyncio.Queue()

    async def pump() -> None:
        try:
            item: Any = await awaitable
        except Exception as exc:
            item = _Raised(exc)
        out.put_nowait(item)
        out.put_nowait(CLOSED)

    task = asyncio.ensure_future(pump())
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return out


async def from_queue(queue: asyncio.Queue[Any]) -> Any:
    """The next item of ``queue``: its value, None once closed, or its exception raised."""
    item = await queue.get()
    if item is CLOSED:
        queue.put_nowait(CLOSED)  # stays closed for the next reader
        return None
    if isinstance(item, _Raised):
        raise item.error
    return item


_tasks: set[asyncio.Future[None]] = set()
