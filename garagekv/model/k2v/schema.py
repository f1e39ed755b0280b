"""Table schemas for K2V items and their index counters.

The item schema's ``updated`` hook keeps this node's index counters in the same transaction as
the item and wakes pollers once that transaction is durable.
"""

from __future__ import annotations

from dataclasses import dataclass

from garagekv.db.writer import WriteTxn
from garagekv.model.index_counter import CounterEntry, LocalCounter, counts_diff
from garagekv.model.k2v.item import K2VItem
from garagekv.model.k2v.sub import SubscriptionManager
from garagekv.table.data import TableData
from garagekv.table.schema import BaseSchema
from garagekv.util.time import now_ms


@dataclass(frozen=True)
class ItemFilter:
    exclude_only_tombstones: bool = False
    conflicts_only: bool = False


class CounterSchema(BaseSchema):
    name = "k2v_index_counter"

    def __init__(self, nodes: list[int] | None = None) -> None:
        self.nodes = nodes

    def decode(self, data: bytes) -> CounterEntry:
        return CounterEntry.decode(data)

    def matches_filter(self, entry: CounterEntry, filt: object) -> bool:
        """The only filter is "not deleted": a partition whose counters are all zero is hidden."""
        return not entry.is_tombstone(self.nodes)


class ItemSchema(BaseSchema):
    name = "k2v_item"

    def __init__(self, node: int, subs: SubscriptionManager, local_counters, counters: TableData) -> None:
        self.node = node
        self.subs = subs
        self.local_counters = local_counters
        self.counters = counters

    def decode(self, data: bytes) -> K2VItem:
        return K2VItem.decode(data)

    def matches_filter(self, item: K2VItem, filt: ItemFilter) -> bool:
        if filt.exclude_only_tombstones and item.is_tombstone():
            return False
        return not (filt.conflicts_only and len(item.values()) < 2)

    def updated(self, tx: WriteTxn, old: K2VItem | None, new: K2VItem | None) -> None:
        ref = new if new is not None else old
        diff = counts_diff(old.counts() if old else None, new.counts() if new else None)
        if diff:
            key = ref.bucket_id + ref.partition_key.encode()
            raw = tx.get(self.local_counters, key)
            local = LocalCounter.decode(raw) if raw else LocalCounter(ref.bucket_id, ref.partition_key)
            local.apply_diff(diff, now_ms())
            tx.put(self.local_counters, key, local.encode())
            # The counter table's replica set is this node today; the durable insert queue that
            # ships counters to other replicas hooks in here.
            self.counters.merge_in(tx, local.to_entry(self.node))
        if new is not None:
            tx.on_commit(lambda: self.subs.notify(new))
