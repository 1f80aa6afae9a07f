"""A peer: the connection to a hub (``Peer``, ``connect``) and the topics it syncs through it.

Plain Python, usable from a script or a worker process; it builds on the core only.
"""
