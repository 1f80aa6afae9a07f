"""A custom convergent type (the example of :mod:`spindel_jupyter.core.crdt`), for tests and hubs."""

from __future__ import annotations

import math
from typing import Any, ClassVar

from spindel_jupyter.core import crdt


@crdt.register
class MaxRegister:
    """The largest number ever set, on any replica."""

    type_name: ClassVar[str] = "maxregister"
    __slots__ = ("_pending", "value")

    def __init__(self, value: float = -math.inf, pending: bool = False) -> None:
        self.value = value
        self._pending = pending

    def set(self, value: float) -> MaxRegister:
        return self if value <= self.value else MaxRegister(value, pending=True)

    def delta(self) -> MaxRegister | None:
        return MaxRegister(self.value) if self._pending else None

    def clear_delta(self) -> MaxRegister:
        return MaxRegister(self.value) if self._pending else self

    def apply_delta(self, delta: MaxRegister) -> MaxRegister:
        return self.merge(delta)

    def merge(self, other: MaxRegister) -> MaxRegister:
        # A larger value supersedes our pending one: it reaches everyone anyway.
        return self if other.value <= self.value else MaxRegister(other.value)

    def state(self) -> float:
        return self.value

    @classmethod
    def from_state(cls, data: Any) -> MaxRegister:
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            raise ValueError(f"a maxregister state is a number, not {data!r:.100}")
        return cls(data)
