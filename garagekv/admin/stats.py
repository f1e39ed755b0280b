"""Storage statistics of a node: how many entries each table's trees hold, read in O(1) per tree."""

from __future__ import annotations

from garagekv.db.env import Database

# tree suffix -> statistic name (as in /v1/status; the metric names are in admin/metrics.py)
TREE_KINDS = {
    "data": "items",
    "merkle": "merkleItems",
    "merkle_todo": "merkleTodo",
    "gc_todo": "gcTodo",
    "insert_queue": "insertQueue",
}


def table_stats(db: Database | None) -> dict[str, dict[str, int]]:
    """``{table: {items, merkleTodo, ...}}`` for every table tree this node has opened."""
    if db is None or db.env is None:
        return {}
    out: dict[str, dict[str, int]] = {}
    for name, n in db.entries(db.tree_names()).items():
        table, _, kind = name.rpartition(":")
        if table and kind in TREE_KINDS:
            out.setdefault(table, {})[TREE_KINDS[kind]] = n
    return out
