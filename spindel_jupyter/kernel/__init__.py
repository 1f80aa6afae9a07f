"""The IPython side: magics, serving and calling remote cells, widgets, workspaces and invites.

It builds on the peer and the core; loading the server extension imports none of it.
"""
