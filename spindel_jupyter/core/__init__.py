"""The core: what every layer shares and nothing below it needs to know.

The wire format (codec, frames, error codes), clocks, convergent types,
signals and the home thread. It imports nothing from the layers above it
(peer, kernel, hub) and no IPython, ipykernel or tornado.
"""
