"""Forks and merges: what a fork takes with it, and how its changes come back.

A fork gets its own copy of each of its workspace's topics, named under it,
and notes the stamp of each at fork. A merge brings the fork's cells back
three-way against the fork's base (with nbdime) and its topics by their kind:
CRDT topics join, a plain topic comes from the side that changed it since the
fork, or since the fork's last merge (whose stamps on each side it notes).
A merge changes nothing when it finds a conflict - a cell edited on both
sides, or a plain topic set on both sides since then - unless a strategy
(ours, theirs, union) or force (theirs wins) settles it.
"""

from __future__ import annotations

import argparse
import copy
import logging
from typing import Any

import nbformat

from ..core.errors import MergeConflict, SpindelError
from .topics import TopicStore

#: The side that wins a conflicting change under each strategy, named as nbdime's decisions do.
_SIDES = {"ours": "local", "theirs": "remote", "union": "local"}
STRATEGIES = tuple(_SIDES)

#: How a fork's topic comes back: (the fork's copy, the parent's topic, whether the fork's plain value wins).
Fold = tuple[str, str, bool]


def check_strategy(strategy: str | None) -> None:
    if strategy is not None and strategy not in STRATEGIES:
        raise SpindelError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")


# -- topics ------------------------------------------------------------------------------


def fork_topics(topics: TopicStore, parent: dict[str, Any], new: str) -> dict[str, Any]:
    """The descriptor fields of fork ``new``'s own topics: the parent's topics named under the fork
    (parent topic -> the fork's copy, with their roles), and each one's stamp now."""
    names = parent.get("topics") or []
    return {
        "forked_topics": {t: f"{new}/{t}" for t in names},
        "topics": [f"{new}/{t}" for t in names],
        "roles": {f"{new}/{t}": r for t, r in (parent.get("roles") or {}).items()},
        "fork_stamps": {t: _listed(topics.stamp_of(t)) for t in names},
    }


def copy_topics(topics: TopicStore, fork: dict[str, Any]) -> None:
    """Start each of the fork's topics as its parent topic is now, the fork's user's."""
    for original, forked in (fork.get("forked_topics") or {}).items():
        topics.copy(original, forked, fork.get("user") or "")


def topics_back(topics: TopicStore, fork: dict[str, Any], strategy: str | None, force: bool) -> list[Fold]:
    """How each of the fork's topics comes back, each on its own.

    A CRDT topic joins. A plain topic is three-way by its stamps at the fork's
    last merge (at fork, before one): it comes from the side that changed it
    since; changed on both sides it is a
    conflict - :class:`MergeConflict` listing every such topic - unless
    ``strategy`` or ``force`` says who wins, as for cells.
    """
    forked = fork.get("forked_topics") or {}
    stamps = fork.get("fork_stamps") or {}
    merged = fork.get("merge_stamps") or {}
    theirs_win = force or strategy in ("theirs", "union")  # a plain value cannot be both: union takes theirs
    folds: list[Fold] = []
    conflicts = []
    for original, copied in forked.items():
        # Only plain topics have stamps: a CRDT never moves here, and joins whoever wins.
        ours_base, theirs_base = merged.get(original) or (stamps.get(original),) * 2
        ours_moved = _stamp(topics.stamp_of(original)) != _stamp(ours_base)
        theirs_moved = _stamp(topics.stamp_of(copied)) != _stamp(theirs_base)
        if ours_moved and theirs_moved and strategy is None and not force:
            conflicts.append(
                {
                    "index": None,
                    "id": None,
                    "topic": original,
                    "base": None,
                    "ours": topics.value_text(original),
                    "theirs": topics.value_text(copied),
                }
            )
        folds.append((copied, original, theirs_moved and (theirs_win or not ours_moved)))
    if conflicts:
        names = ", ".join(c["topic"] for c in conflicts)
        raise MergeConflict(f"conflicting values of topic(s) {names}: nothing was merged", conflicts)
    return folds


def merge_stamps(topics: TopicStore, folds: list[Fold]) -> dict[str, list[Any]]:
    """Each of the fork's topics' stamps on both sides (parent's, fork's) once merged: the base
    the next merge of the fork compares them with."""
    return {
        original: [_listed(topics.stamp_of(original)), _listed(topics.stamp_of(copied))]
        for copied, original, _ in folds
    }


def _listed(stamp: Any) -> list[Any] | None:
    return list(stamp) if stamp is not None else None


def _stamp(value: Any) -> tuple[Any, ...] | None:
    return tuple(value) if value is not None else None


# -- cells -------------------------------------------------------------------------------


def three_way(
    base: dict[str, Any], ours: dict[str, Any], theirs: dict[str, Any], strategy: str | None, force: bool
) -> Any:
    """The cells of ``ours`` and ``theirs`` merged against ``base`` (nbformat's node); a
    :class:`MergeConflict` listing the conflicting cells unless ``strategy`` or ``force`` settles them.

    nbdime decides the merge once, leaving conflicts unresolved (as for its
    own merge tool); each conflict then takes the side the strategy names.
    """
    from nbdime.merging import apply_decisions
    from nbdime.merging.notebooks import decide_notebook_merge

    base_node = _node(base)
    quiet = logging.getLogger("nbdime")  # it warns of every conflict it leaves unresolved
    level, quiet.level = quiet.level, logging.CRITICAL
    try:
        decisions = decide_notebook_merge(base_node, _node(ours), _node(theirs), _decide_only())
    finally:
        quiet.level = level
    conflicts = [d for d in decisions if d.conflict]
    if not conflicts:
        return apply_decisions(base_node, decisions)
    rows = _conflict_rows(conflicts, base, ours, theirs)
    if strategy is None and not force:
        names = ", ".join(str(r["index"]) for r in rows)
        raise MergeConflict(f"conflicting edits in cell(s) {names}: nothing was merged", rows)
    side = _SIDES[strategy or "theirs"]  # force: theirs
    for decision in conflicts:
        decision.action, decision.conflict = side, False
    merged = apply_decisions(base_node, decisions)
    if strategy == "union":
        merged["cells"] = _with_theirs_after(merged["cells"], rows)
    return merged


def _decide_only() -> argparse.Namespace:
    """nbdime's merge arguments, its defaults but for the ``mergetool`` strategy: decide, resolve nothing.

    Only the merge arguments are declared: nbdime's generic ones configure the
    root logger as they are declared. ``mergetool`` is not among the command
    line's choices; nbdime's web merge tool sets it the same way.
    """
    from nbdime.args import add_merge_args

    parser = argparse.ArgumentParser(add_help=False)
    add_merge_args(parser)
    args = parser.parse_args([])
    args.merge_strategy = "mergetool"
    args.log_level = "ERROR"  # read only to print nbdime's debug output
    return args


def _node(notebook: dict[str, Any]) -> Any:
    return nbformat.from_dict(copy.deepcopy(notebook))


def _conflict_rows(
    conflicts: list[Any], base: dict[str, Any], ours: dict[str, Any], theirs: dict[str, Any]
) -> list[dict[str, Any]]:
    """Each conflicting cell side by side: base, ours and theirs (None where it was deleted)."""
    by_id = [{c.get("id"): c for c in nb["cells"]} for nb in (ours, theirs)]
    rows = []
    for decision in conflicts:
        path = tuple(decision.common_path)
        index = path[1] if len(path) > 1 and path[0] == "cells" else None
        if index is None:
            keys = [op.get("key") for op in (decision.local_diff or []) + (decision.remote_diff or [])]
            index = next((k for k in keys if isinstance(k, int)), 0)
        cell = base["cells"][index] if index < len(base["cells"]) else {}
        cell_id = cell.get("id")
        rows.append(
            {
                "index": index,
                "id": cell_id,
                "base": _source(cell),
                "ours": _source(by_id[0].get(cell_id)),
                "theirs": _source(by_id[1].get(cell_id)),
            }
        )
    return rows


def _source(cell: dict[str, Any] | None) -> str | None:
    if not cell:
        return None
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def _with_theirs_after(cells: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Union: after each conflicting cell (kept as ours), a copy holding theirs.

    nbdime's own ``union`` is not used: it works inside a cell, applying both
    sides' edits to one source one after the other (``b = 20`` and ``b = 200``
    edited from ``b = 2`` come out as ``b = 2000``, neither side's code), and
    leaves conflicts it cannot join, in metadata, unresolved. Here each side's
    cell stays whole, as it was written and run, and the reader picks.
    """
    theirs = {row["id"]: row["theirs"] for row in rows if row["theirs"] is not None}
    out = []
    for cell in cells:
        out.append(cell)
        if cell.get("id") in theirs:
            twin = copy.deepcopy(cell)
            twin["id"] = f"{cell['id']}-theirs"[:64]
            twin["source"] = theirs[cell["id"]]
            if twin.get("cell_type") == "code":
                twin["outputs"], twin["execution_count"] = [], None
            out.append(twin)
    return out
