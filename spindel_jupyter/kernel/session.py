"""This kernel as a peer: its name (after its notebook), its kernel id, and its connection.

A kernel started by a Jupyter server knows its notebook (``JPY_SESSION_NAME``) and its
kernel id; the peer it connects as is named after the notebook, follows it when it is
renamed, and tells the lab which kernel it is. The same :func:`connect` works in a plain
script, which is then named after its host and process.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..core.home import in_kernel
from ..core.protocol import check_name, name_from
from ..peer import client
from ..peer.client import ENV_PEER, Peer

ENV_NOTEBOOK = "JPY_SESSION_NAME"


def kernel_id() -> str:
    """The id of the Jupyter kernel this process is ("" outside a kernel): lets the lab mark its peer."""
    if "ipykernel" not in sys.modules:
        return ""
    try:
        from ipykernel.connect import get_connection_file

        return Path(get_connection_file()).stem.removeprefix("kernel-")
    except Exception:
        return ""


def notebook_file() -> str:
    """This kernel's notebook (absolute path; "" if it has none): as the server started it, or as
    it is now named, once it was renamed or moved while the kernel ran."""
    peer = client._current
    if peer is not None and peer.notebook:
        return peer.notebook
    return os.environ.get(ENV_NOTEBOOK, "")


def default_name() -> str:
    """The peer name to use when none is given: ``SPINDEL_PEER``, the notebook, or the kernel."""
    explicit = os.environ.get(ENV_PEER)
    if explicit:
        return check_name(explicit)
    notebook = notebook_file()
    if notebook:
        return name_from(Path(notebook).stem)
    kernel = kernel_id()
    if kernel:
        return name_from(f"kernel-{kernel[:8]}")
    return client.process_name()


def connect(
    url: str | None = None, name: str | None = None, token: str | None = None, kind: str | None = None
) -> Peer:
    """Connect this process to a hub and make it the peer the rest of the API uses.

    ``url`` and ``token`` default to ``SPINDEL_HUB_URL`` and ``SPINDEL_TOKEN`` (a Jupyter
    server with this extension sets both for the kernels it starts). ``name``
    defaults to :func:`default_name`; a derived name that is taken gets a suffix,
    an explicit one is refused with :class:`NameTaken`. An earlier connection of
    this process is closed once the new one is up.
    """
    explicit = name is not None or bool(os.environ.get(ENV_PEER))
    return client.connect(
        url,
        check_name(name) if name is not None else default_name(),
        token,
        kind or ("kernel" if in_kernel() else "script"),
        derived=not explicit,
        kernel=kernel_id(),
        notebook="" if explicit else notebook_file(),
    )
