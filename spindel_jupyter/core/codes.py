"""The wire error codes: what an error map (``{code, message, ...}``) in a ``rep`` or ``error`` frame says.

The hub and the peers both speak these. Each code belongs to one exception class
in :mod:`~spindel_jupyter.core.errors` (its ``code``), and
:func:`~spindel_jupyter.core.protocol.from_wire` turns a code back into its class.
"""

from __future__ import annotations

#: An error with no code of its own.
ERROR = "error"
#: The hub failed on a frame or a request (its log has the details).
HUB_ERROR = "hub_error"

# Frames and connections the hub refuses.
BAD_FRAME = "bad_frame"
FRAME_TOO_LARGE = "frame_too_large"
HELLO_FIRST = "hello_first"
BAD_NAME = "bad_name"
NAME_TAKEN = "name_taken"
HUB_FULL = "hub_full"
UNKNOWN_OP = "unknown_op"
TOPIC_KIND = "topic_kind"
TOO_MANY_TOPICS = "too_many_topics"

# Routing: the peer asked for is not there, or went away before it answered.
PEER_NOT_FOUND = "peer_not_found"
PEER_LOST = "peer_lost"
AMBIGUOUS_PEER = "ambiguous_peer"

# Operations the hub refuses: who may do what, workspaces, the node store.
FORBIDDEN = "forbidden"
WORKSPACE_NOT_FOUND = "workspace_not_found"
WORKSPACE_EXISTS = "workspace_exists"
NOT_WRITABLE = "not_writable"
MERGE_CONFLICT = "merge_conflict"
CORRUPT_NODE = "corrupt_node"
MISSING_NODE = "missing_node"

# Remote calls, as the serving peer answers them.
REMOTE_ERROR = "remote_error"
NOT_SERVED = "not_served"
INTERRUPTED = "interrupted"
TIMEOUT = "timeout"
UNBOUND_NAMES = "unbound_names"
UNSENDABLE = "unsendable"
