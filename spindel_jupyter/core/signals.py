"""Signals: observable values, kept in step across kernels by :mod:`sync`.

A :class:`Signal` holds one value. Observers run on the home thread (the
kernel's main thread), never beside a cell, so user code needs no locks. Local
writes (``set``/``update``) also go to the signal's *writers*: the hooks that
sync uses to publish them. Values arriving from other peers are applied with
:meth:`Signal._apply_remote`, which notifies observers but no writers, so a
remote change is never published again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from .errors import NotWritable
from .home import home

T = TypeVar("T")
Observer = Callable[[Any], None]


class Observation:
    """Handle returned by :meth:`Signal.observe`; ``stop()`` ends it."""

    def __init__(self, signal: Signal[Any], callback: Observer) -> None:
        self._signal = signal
        self.callback = callback

    def stop(self) -> None:
        """Stop calling the callback."""
        self._signal._unobserve(self)

    def __repr__(self) -> str:
        return f"<Observation of {self._signal!r} by {self.callback!r}>"


class Signal(Generic[T]):
    """An observable value: ``.value``, ``.set(v)``, ``.update(fn)``, ``.observe(cb)``."""

    def __init__(self, value: T | None = None) -> None:
        self._value: Any = value
        self._lock = threading.RLock()
        self._observations: list[Observation] = []
        self._writers: list[Callable[[Any, Any], Any]] = []
        #: Set on read-only mirrors: the message a write raises (NotWritable).
        self._read_only: str | None = None
        home()  # found now, from the thread that makes the first signal (a kernel's main thread)

    def __repr__(self) -> str:
        return f"Signal({self._value!r})"

    @property
    def value(self) -> T:
        """The current value."""
        return self._value

    def set(self, value: T) -> None:
        """Replace the value; observers and syncing peers see it if it changed."""
        with self._lock:
            self._write(value)

    def update(self, fn: Callable[[T], T]) -> T:
        """Set the value to ``fn(current)`` atomically (like Clojure's ``swap!``); return it."""
        with self._lock:
            new = fn(self._value)
            self._write(new)
            return new

    def observe(self, callback: Observer) -> Observation:
        """Call ``callback(new_value)`` after every change; returns a handle to stop it."""
        observation = Observation(self, callback)
        with self._lock:
            self._observations = [*self._observations, observation]
        return observation

    def _unobserve(self, observation: Observation) -> None:
        with self._lock:
            self._observations = [o for o in self._observations if o is not observation]

    # -- for sync -----------------------------------------------------------------

    def _add_writer(self, writer: Callable[[Any, Any], Any]) -> None:
        """``writer(old, new)`` runs on every local change, before it is committed; it may refuse it.

        A writer may return a replacement to store instead (equal to ``new``,
        e.g. a CRDT value with its published delta cleared).
        """
        with self._lock:
            self._writers.append(writer)

    def _remove_writer(self, writer: Callable[[Any, Any], Any]) -> None:
        with self._lock:
            self._writers = [w for w in self._writers if w is not writer]

    def _write(self, new: Any) -> None:
        if self._read_only is not None:
            raise NotWritable(self._read_only)
        old = self._value
        if not changed(old, new):
            return
        stored = new
        for writer in self._writers:
            replacement = writer(old, new)
            if replacement is not None:
                stored = replacement
        self._value = stored
        self._notify(new)

    def _apply_remote(self, new: Any) -> None:
        """Take a value that came from another peer: observers run, writers do not."""
        with self._lock:
            if not changed(self._value, new):
                return
            self._value = new
        self._notify(new)

    def _notify(self, value: Any) -> None:
        observations = self._observations
        if observations:
            home().call(_run_observers, observations, value)


def _run_observers(observations: list[Observation], value: Any) -> None:
    for observation in observations:
        try:
            observation.callback(value)
        except Exception as exc:  # one failing observer must not starve the others
            import traceback

            traceback.print_exception(exc)


def changed(old: Any, new: Any) -> bool:
    """Spindel's old != new guard; identity for CRDT values and for values whose == is not a bool."""
    if old is new:
        return False
    if hasattr(new, "apply_delta"):  # a CRDT: every new object is a change (it may carry a delta)
        return True
    try:
        return bool(old != new)
    except Exception:
        return True
