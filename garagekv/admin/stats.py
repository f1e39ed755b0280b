"""Storage statistics of a node: how many entries each table's trees hold and how big the tree of
its entries is, read in O(1) per tree. The consensus acceptors' state (tree ``consensus:state``)
counts as a table named ``consensus``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from garagekv.db.env import Database

# tree suffix -> statistic name (as in /v1/status; the metric names are in admin/metrics.py). The
# "merkle" names are Garage's; here they count the range sums that anti-entropy compares.
TREE_KINDS = {
    "data": "items",
    "sums": "merkleItems",
    "gc_todo": "gcTodo",
    "insert_queue": "insertQueue",
    "state": "items",  # consensus:state, one entry per consensus key this node has state for
}
#: The trees holding a table's entries: their size is the table's ``bytes``.
ENTRY_TREES = ("data", "state")


def table_stats(db: Database | None, sums_workers: Iterable[Any] = ()) -> dict[str, dict[str, int]]:
    """``{table: {items, bytes, merkleTodo, ...}}`` for every table tree this node has opened;
    ``merkleTodo`` is what the table's range sums rebuild (``sums_workers``) has left to add."""
    if db is None or db.env is None:
        return {}
    out: dict[str, dict[str, int]] = {}
    for w in sums_workers:
        out[w.table_name] = {"merkleTodo": w.sums.left_to_rebuild()}
    for name, (n, size) in db.tree_stats(db.tree_names()).items():
        table, _, kind = name.rpartition(":")
        if table and kind in TREE_KINDS:
            row = out.setdefault(table, {})
            row[TREE_KINDS[kind]] = n
            if kind in ENTRY_TREES:
                row["bytes"] = size
    return out
