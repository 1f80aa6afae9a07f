"""Convergent values (GSet, ORSet, PNCounter, LWWMap).

The public module ``spindel_jupyter.crdt`` is :mod:`spindel_jupyter.core.crdt`.
"""

import sys

from .core import crdt as _module

sys.modules[__name__] = _module
