"""What the kernel shows: merge conflicts side by side, maps as tables."""

from __future__ import annotations

from types import SimpleNamespace

from IPython.core.formatters import DisplayFormatter

from spindel_jupyter.core.crdt import LWWMap
from spindel_jupyter.core.errors import MergeConflict
from spindel_jupyter.kernel.display import conflicts_html, map_table, peer_table, register_displays

CONFLICT = MergeConflict(
    "conflicting edits in cell(s) 0, 2: nothing was merged",
    [
        {"index": 0, "base": "x = 1", "ours": "x = 2", "theirs": "x = <3>"},
        {"index": 2, "base": "y = 1", "ours": None, "theirs": "y = 3"},
    ],
)


def test_conflicts_show_base_ours_and_theirs_side_by_side() -> None:
    shown = conflicts_html(CONFLICT)
    assert shown.startswith("<p>conflicting edits in cell(s) 0, 2: nothing was merged</p><table>")
    assert "<th>cell</th><th>base</th><th>ours</th><th>theirs</th>" in shown
    assert "<pre>x = 2</pre>" in shown and "<pre>x = &lt;3&gt;</pre>" in shown  # escaped
    assert "<pre>(deleted)</pre>" in shown


def test_a_notebook_shows_a_conflict_as_html_once_registered() -> None:
    formatter = DisplayFormatter()
    assert "text/html" not in formatter.format(CONFLICT)[0]
    register_displays(SimpleNamespace(display_formatter=formatter))
    data, _ = formatter.format(CONFLICT)
    assert data["text/html"] == conflicts_html(CONFLICT)
    assert data["text/plain"].startswith("conflicting edits")  # the text form stays the core's


def test_peers_of_one_hub_show_no_hub_column() -> None:
    table = peer_table([{"name": "bob", "kind": "kernel", "hub": "A", "local": True}], me="bob")
    assert table.columns == ["peer", "kind", "serves", "connected since"]
    assert table.rows[0][0] == "bob (you)" and table.title == "1 peer connected"


def test_peers_of_a_mesh_show_their_hub_and_only_the_local_namesake_is_you() -> None:
    peers = [
        {"name": "bob", "kind": "kernel", "hub": "A", "local": True},
        {"name": "bob", "kind": "kernel", "hub": "B", "local": False},
    ]
    table = peer_table(peers, me="bob")
    assert table.columns == ["peer", "hub", "kind", "serves", "connected since"]
    assert [row[:2] for row in table.rows] == [["bob (you)", "A"], ["bob", "B"]]
    assert table.highlight == 0 and table.title == "2 peers connected on 2 hubs"


def test_peers_acting_for_several_users_show_each_ones_user() -> None:
    peers = [
        {"name": "grader", "kind": "kernel", "hub": "teacher", "user": "teacher", "local": True},
        {"name": "work", "kind": "kernel", "hub": "student", "user": "student", "local": False},
    ]
    table = peer_table(peers, me="grader")
    assert table.columns == ["peer", "hub", "user", "kind", "serves", "connected since"]
    assert [row[2] for row in table.rows] == ["teacher", "student"]
    one_user = [{**peer, "user": "teacher"} for peer in peers]
    assert "user" not in peer_table(one_user, me="grader").columns


def test_a_map_shows_a_row_per_key_and_a_column_per_field_of_its_records() -> None:
    progress = LWWMap().set("grace", {"tries": 1, "solved": False}).set("ada", {"tries": 2, "solved": True})
    table = map_table(progress)
    assert table.columns == ["key", "tries", "solved"]
    assert table.rows == [["ada", "2", "True"], ["grace", "1", "False"]]  # sorted by key
    assert map_table({"q1": 42, "q2": None}).rows == [["q1", "42"], ["q2", ""]]
    assert map_table({"a": {"x": 1}, "b": 2}).columns == ["key", "value"]  # not all records
    assert map_table(LWWMap()).rows == []


def test_a_notebook_shows_an_lwwmap_as_a_table_once_registered() -> None:
    formatter = DisplayFormatter()
    progress = LWWMap({"ada": {"tries": 1, "solved": False}, "<b>": {"tries": 0}})
    register_displays(SimpleNamespace(display_formatter=formatter))
    data, _ = formatter.format(progress)
    assert data["text/html"] == map_table(progress)._repr_html_()
    assert "<td style='text-align:left'>&lt;b&gt;</td>" in data["text/html"]  # escaped
    assert data["text/plain"] == repr(progress)
