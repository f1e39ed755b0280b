"""Storage statistics of a node: how many entries each table's trees hold and how big the tree of
its entries is, read in O(1) per tree. The consensus acceptors' state (tree ``consensus:state``)
counts as a table named ``consensus``."""

from __future__ import annotations

from garagekv.db.env import Database

# tree suffix -> statistic name (as in /v1/status; the metric names are in admin/metrics.py)
TREE_KINDS = {
    "data": "items",
    "merkle": "merkleItems",
    "merkle_todo": "merkleTodo",
    "gc_todo": "gcTodo",
    "insert_queue": "insertQueue",
    "state": "items",  # consensus:state, one entry per consensus key this node has state for
}
#: The trees holding a table's entries: their size is the table's ``bytes``.
ENTRY_TREES = ("data", "state")


def table_stats(db: Database | None) -> dict[str, dict[str, int]]:
    """``{table: {items, bytes, merkleTodo, ...}}`` for every table tree this node has opened."""
    if db is None or db.env is None:
        return {}
    out: dict[str, dict[str, int]] = {}
    for name, (n, size) in db.tree_stats(db.tree_names()).items():
        table, _, kind = name.rpartition(":")
        if table and kind in TREE_KINDS:
            row = out.setdefault(table, {})
            row[TREE_KINDS[kind]] = n
            if kind in ENTRY_TREES:
                row["bytes"] = size
    return out
