"""The package's front door: every public name, loaded on first use, and a server extension that
loads none of the kernel side."""

from __future__ import annotations

import subprocess
import sys

import spindel_jupyter


def test_every_public_name_loads_on_first_use() -> None:
    for name in spindel_jupyter.__all__:
        assert getattr(spindel_jupyter, name) is not None, name
    assert set(spindel_jupyter.__all__) <= set(dir(spindel_jupyter))


def test_loading_the_server_extension_imports_no_ipython_and_nothing_of_the_kernel_side() -> None:
    code = (
        "import sys, spindel_jupyter\n"
        "(point,) = spindel_jupyter._jupyter_server_extension_points()\n"
        "assert point['app'].name == 'spindel_jupyter'\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('IPython', 'ipykernel')\n"
        "      or m.startswith(('spindel_jupyter.kernel', 'spindel_jupyter.peer'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_public_modules_are_the_layers_own() -> None:
    from spindel_jupyter import crdt, sync, workspace
    from spindel_jupyter.core import crdt as core_crdt
    from spindel_jupyter.kernel import workspace as kernel_workspace
    from spindel_jupyter.peer import sync as peer_sync

    assert (crdt, sync, workspace) == (core_crdt, peer_sync, kernel_workspace)
