"""Execution contexts: the named namespaces a kernel can serve remote calls in.

The ``default`` context is the kernel's own user namespace (``__main__`` in a
plain Python process). Others are registered by name, or forked from an
existing one, so one kernel can serve several independent worlds.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

from ..core.home import shell

DEFAULT = "default"

_lock = threading.Lock()
_contexts: dict[str, dict[str, Any]] = {}
_listeners: list[Callable[[str], None]] = []


def on_register(listener: Callable[[str], None]) -> None:
    """Call ``listener(name)`` whenever a context is registered (serving uses it)."""
    _listeners.append(listener)


def _user_namespace() -> dict[str, Any]:
    ip = shell()
    return ip.user_ns if ip is not None else sys.modules["__main__"].__dict__


def register_context(name: str, namespace: dict[str, Any] | None = None) -> dict[str, Any]:
    """Register ``namespace`` (a new empty one if None) as context ``name`` and return it.

    Once this kernel serves (``%spin_serve`` or :func:`~spindel_jupyter.serve`),
    callers reach it as ``PEER/name``.
    """
    if not name or "/" in name:
        raise ValueError(f"invalid context name {name!r}: use a non-empty name without '/'")
    if name == DEFAULT:
        raise ValueError("'default' is the kernel's own namespace; pick another name")
    namespace = {} if namespace is None else namespace
    with _lock:
        _contexts[name] = namespace
    for listener in _listeners:
        listener(name)
    return namespace


def fork_context(source: str, new: str) -> dict[str, Any]:
    """Register context ``new`` whose bindings start as a copy of ``source``'s.

    Rebinding a name in one context does not touch the other. The copy is
    shallow: a mutable object (a list, a DataFrame) bound in both is the same
    object, so mutating it in place is seen by both.
    """
    return register_context(new, dict(namespace(source)))


def unregister_context(name: str) -> None:
    """Forget context ``name``; calls to it fail from then on."""
    with _lock:
        _contexts.pop(name, None)


def list_contexts() -> list[str]:
    """The names of every context, ``default`` first."""
    with _lock:
        return [DEFAULT, *sorted(_contexts)]


def namespace(name: str) -> dict[str, Any]:
    """The namespace of context ``name``; ``KeyError`` naming the known ones if there is none."""
    if name == DEFAULT:
        return _user_namespace()
    with _lock:
        try:
            return _contexts[name]
        except KeyError:
            known = ", ".join([DEFAULT, *sorted(_contexts)])
            raise KeyError(f"no context named {name!r} (known: {known})") from None
