"""The hub: a jupyter-server extension that relays frames between peers."""
