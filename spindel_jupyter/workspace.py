"""Workspaces from a kernel (publish, follow, fork, merge, claim).

The public module ``spindel_jupyter.workspace`` is :mod:`spindel_jupyter.kernel.workspace`.
"""

import sys

from .kernel import workspace as _module

sys.modules[__name__] = _module
