"""Retrying a connection: the peer's to its hub, the hub's to the mesh."""

from __future__ import annotations

import random


def jittered(delay: float) -> float:
    """A reconnection delay of between half and all of ``delay``, at random: after a restart
    the ones that reconnect come back spread out, not all at the same instant."""
    return delay * random.uniform(0.5, 1.0)
