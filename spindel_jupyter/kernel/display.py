"""What the kernel shows: tables (of maps too), merge conflicts side by side, and what a running call sends.

HTML in a notebook, text elsewhere. The core's exceptions know nothing of
notebooks: their rich forms are here, and :func:`register_displays` has IPython
use them.
"""

from __future__ import annotations

import html
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ..core.crdt import LWWMap
from ..core.errors import MergeConflict
from ..core.home import in_kernel, shell

#: A call running longer than this shows that it is still running.
PROGRESS_AFTER = 3.0


class Table:
    """A small table that renders as HTML in a notebook and as aligned text elsewhere."""

    def __init__(
        self,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        title: str = "",
        empty: str = "(none)",
        highlight: int | None = None,
    ) -> None:
        self.columns = list(columns)
        self.rows = [["" if cell is None else str(cell) for cell in row] for row in rows]
        self.title = title
        self.empty = empty
        self.highlight = highlight

    def _repr_html_(self) -> str:
        head = "".join(f"<th style='text-align:left'>{html.escape(c)}</th>" for c in self.columns)
        body = []
        for i, row in enumerate(self.rows):
            style = " style='font-weight:bold'" if i == self.highlight else ""
            cells = "".join(f"<td style='text-align:left'>{html.escape(c)}</td>" for c in row)
            body.append(f"<tr{style}>{cells}</tr>")
        if not body:
            body.append(f"<tr><td colspan='{len(self.columns)}'><i>{html.escape(self.empty)}</i></td></tr>")
        caption = (
            f"<caption style='text-align:left'>{html.escape(self.title)}</caption>" if self.title else ""
        )
        rows = "".join(body)
        table = f"<thead><tr>{head}</tr></thead><tbody>{rows}</tbody>"
        return f"<table class='spindel-table'>{caption}{table}</table>"

    def __repr__(self) -> str:
        if not self.rows:
            return f"{self.title}\n{self.empty}" if self.title else self.empty
        widths = [max(len(c), *(len(r[i]) for r in self.rows)) for i, c in enumerate(self.columns)]
        lines = [self.title] if self.title else []
        lines.append("  ".join(c.ljust(w) for c, w in zip(self.columns, widths, strict=True)).rstrip())
        lines.append("  ".join("-" * w for w in widths))
        for row in self.rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        return "\n".join(lines)


def peer_table(peers: Sequence[dict[str, Any]], me: str = "") -> Table:
    """The connected peers, this one marked; with their hubs when the hub is in a mesh of several,
    and the user each acts for when they are not all one user's."""
    hubs = {peer.get("hub") for peer in peers}
    several = len(hubs) > 1
    users = len({peer.get("user") or "" for peer in peers}) > 1
    rows = []
    highlight = None
    for i, peer in enumerate(peers):
        name = peer.get("name", "")
        if name == me and peer.get("local", True):
            highlight = i
            name = f"{name} (you)"
        contexts = ", ".join(peer.get("contexts") or []) or "-"
        hub = [peer.get("hub", "")] if several else []
        user = [peer.get("user") or "-"] if users else []
        rows.append([name, *hub, *user, peer.get("kind", ""), contexts, peer.get("since", "")])
    n = len(peers)
    title = f"{n} peer{'s' if n != 1 else ''} connected" + (f" on {len(hubs)} hubs" if several else "")
    columns = [
        "peer",
        *(["hub"] if several else []),
        *(["user"] if users else []),
        "kind",
        "serves",
        "connected since",
    ]
    return Table(columns, rows, title=title, highlight=highlight)


def map_table(mapping: Mapping[Any, Any]) -> Table:
    """A map as a table, a row per key (sorted when keys compare): its value, or, when every value
    is a map (a record), a column for each of their keys."""
    keys = list(mapping)
    try:
        keys.sort()
    except TypeError:
        pass
    values = [mapping[key] for key in keys]
    if values and all(isinstance(value, Mapping) for value in values):
        fields = list(dict.fromkeys(field for value in values for field in value))
        rows = [
            [key, *(value.get(field) for field in fields)] for key, value in zip(keys, values, strict=True)
        ]
        return Table(["key", *map(str, fields)], rows, empty="(empty)")
    return Table(
        ["key", "value"], [[key, value] for key, value in zip(keys, values, strict=True)], empty="(empty)"
    )


def conflicts_html(conflict: MergeConflict) -> str:
    """A merge's conflicting cells side by side: base, ours and theirs (a deleted cell says so)."""

    def cell(text: Any) -> str:
        shown = "(deleted)" if text is None else html.escape(str(text))
        return f"<td style='text-align:left;vertical-align:top'><pre>{shown}</pre></td>"

    rows = "".join(
        f"<tr><td>{c.get('index')}</td>{cell(c.get('base'))}{cell(c.get('ours'))}{cell(c.get('theirs'))}</tr>"
        for c in conflict.conflicts
    )
    head = "<tr><th>cell</th><th>base</th><th>ours</th><th>theirs</th></tr>"
    return f"<p>{html.escape(str(conflict))}</p><table>{head}{rows}</table>"


def register_displays(ip: Any) -> None:
    """Have the shell ``ip`` show a :class:`MergeConflict` as its cells side by side, and an
    :class:`LWWMap` as a table."""
    formatter = ip.display_formatter.formatters["text/html"]
    formatter.for_type(MergeConflict, conflicts_html)
    formatter.for_type(LWWMap, lambda value: map_table(value)._repr_html_())


class CallDisplay:
    """What a running call shows: its output as it arrives, and a status line while it is slow or queued."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.started = time.monotonic()
        self.status = ""
        self._handle: Any = None
        self._shown = ""

    def show(self, item: dict[str, Any]) -> None:
        """Show one item the serving peer sent: a stream's text, a display, a clear, or a status."""
        if "stream" in item:
            stream = sys.stdout if item["stream"] == "stdout" else sys.stderr
            stream.write(str(item.get("text", "")))
            stream.flush()
        elif "display" in item:
            _publish(item["display"])
        elif "clear" in item:
            _clear_output(bool(item["clear"]))
        elif "status" in item:
            self.status = str(item["status"])
            self.tick()

    def tick(self) -> None:
        """Update the status line: queued, or still running once it runs long."""
        elapsed = time.monotonic() - self.started
        if self.status == "queued":
            text = f"{self.target} is busy running a cell; this call is queued ({elapsed:.0f} s)"
        elif elapsed >= PROGRESS_AFTER:
            text = f"running on {self.target}… {elapsed:.0f} s"
        else:
            return
        self._status_line(text)

    def close(self) -> None:
        """Blank the status line, if there was one: the call has ended."""
        if self._handle is not None:
            self._handle.update({"text/plain": ""}, raw=True)

    def _status_line(self, text: str) -> None:
        if text == self._shown or not in_kernel():
            return
        from IPython.display import display

        self._shown = text
        bundle = {"text/plain": text, "text/html": f"<span style='opacity:0.7'>⏳ {text}</span>"}
        if self._handle is None:
            self._handle = display(bundle, raw=True, display_id=True)
        else:
            self._handle.update(bundle, raw=True)


def _publish(display: dict[str, Any]) -> None:
    data, metadata = display.get("data") or {}, display.get("metadata") or {}
    if shell() is not None:
        from IPython.display import publish_display_data

        publish_display_data(data, metadata)
        return
    print(data.get("text/plain", ""))


def _clear_output(wait: bool) -> None:
    if in_kernel():
        from IPython.display import clear_output

        clear_output(wait=wait)
