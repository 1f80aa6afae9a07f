"""Synced topics (sync_signal, export_signal, subscribe_signal, flush).

The public module ``spindel_jupyter.sync`` is :mod:`spindel_jupyter.peer.sync`.
"""

import sys

from .peer import sync as _module

sys.modules[__name__] = _module
