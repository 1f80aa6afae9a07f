"""The home thread: where user-visible work runs (served calls, signal observers).

In a kernel it is the main thread, reached through the kernel's own event loop:
work scheduled there waits while a cell runs and never runs beside one, so user
code needs no locks. In a plain process without a running loop it is a thread
of our own with its own loop.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable
from typing import Any


class Home:
    """An event loop and the thread that runs it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        self.loop = loop
        self.thread = thread

    def is_current(self) -> bool:
        return threading.current_thread() is self.thread

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the home thread: now if already there, else as soon as it is idle."""
        if self.is_current():
            fn(*args)
        else:
            self.loop.call_soon_threadsafe(fn, *args)


_home: Home | None = None
_lock = threading.Lock()


def home() -> Home:
    """This process's home, found on first use (call it first from the kernel's main thread)."""
    global _home
    with _lock:
        if _home is None:
            try:
                _home = Home(asyncio.get_running_loop(), threading.current_thread())
            except RuntimeError:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="spindel-home", daemon=True)
                thread.start()
                _home = Home(loop, thread)
        return _home


def shell() -> Any:
    """The IPython shell of this process, or None (plain Python, or IPython not started)."""
    module = sys.modules.get("IPython.core.getipython")
    return module.get_ipython() if module is not None else None


def in_kernel() -> bool:
    """Whether this process is a Jupyter kernel (output then goes to a notebook)."""
    return getattr(shell(), "kernel", None) is not None
