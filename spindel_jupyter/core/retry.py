"""Retrying a connection: the peer's to its hub, the hub's to the mesh."""

from __future__ import annotations

import random


def jittered(delay: float) -> float:
    """A reconnection delay of between half and all of ``delay``, at random: after a restart
    the ones that reconnect come back spread out, not all at the same instant."""
    return delay * random.uniform(0.5, 1.0)


class Backoff:
    """The delays between attempts: from ``first``, doubling up to ``most``, each :func:`jittered`."""

    def __init__(self, first: float, most: float) -> None:
        self.first, self.most = first, most
        self._delay = first

    def next(self) -> float:
        """How long to wait before the next attempt (the one after waits twice as long)."""
        delay, self._delay = self._delay, min(self._delay * 2, self.most)
        return jittered(delay)

    def reset(self) -> None:
        """An attempt succeeded: the next failure waits the first delay again."""
        self._delay = self.first
