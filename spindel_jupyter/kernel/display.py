"""What the kernel shows: tables, merge conflicts side by side (HTML in a notebook, text elsewhere).

The core's exceptions know nothing of notebooks; their rich forms are here and
:func:`register_displays` has IPython use them.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from ..core.errors import MergeConflict


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
    """The connected peers, this one marked."""
    rows = []
    highlight = None
    for i, peer in enumerate(peers):
        name = peer.get("name", "")
        if name == me:
            highlight = i
            name = f"{name} (you)"
        contexts = ", ".join(peer.get("contexts") or []) or "-"
        rows.append([name, peer.get("kind", ""), contexts, peer.get("since", "")])
    n = len(peers)
    title = f"{n} peer{'s' if n != 1 else ''} connected"
    return Table(["peer", "kind", "serves", "connected since"], rows, title=title, highlight=highlight)


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
    """Have the shell ``ip`` show a :class:`MergeConflict` as its cells side by side."""
    ip.display_formatter.formatters["text/html"].for_type(MergeConflict, conflicts_html)
