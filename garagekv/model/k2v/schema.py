"""Table schemas for K2V items and their index counters.

The item schema's ``updated`` hook runs inside the transaction that changed an item, on every
replica and for every kind of change (coordinated insert, replication, repair, sync): it updates
this node's counters for the partition, queues them for replication, keeps the expiry index
(garagekv/model/k2v/expiry.py) and wakes pollers once the transaction is durable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from garagekv.db.writer import WriteTxn
from garagekv.model.index_counter import CounterEntry, LocalCounter, counts_diff
from garagekv.model.k2v.expiry_index import ExpiryIndex
from garagekv.model.k2v.item import K2VItem
from garagekv.model.k2v.stored import ItemStoredForm
from garagekv.model.k2v.sub import SubscriptionManager
from garagekv.table.schema import BaseSchema
from garagekv.util.time import now_ms


@dataclass(frozen=True)
class ItemFilter:
    """``now``: the time (unix ms) the read sees values at, so that the filter and the values
    returned agree on what has expired (a replica filtering on its own uses its clock)."""

    exclude_only_tombstones: bool = False
    conflicts_only: bool = False
    now: int | None = None


@dataclass(frozen=True)
class CounterFilter:
    """Hide partitions whose counters are all zero over ``nodes`` (the layout's storage nodes)."""

    nodes: tuple[int, ...]


class CounterSchema(BaseSchema):
    name = "k2v_index_counter"

    def decode(self, data: bytes) -> CounterEntry:
        return CounterEntry.decode(data)

    def matches_filter(self, entry: CounterEntry, filt: CounterFilter) -> bool:
        return not entry.is_tombstone(filt.nodes)

    def filter_to_wire(self, filt: CounterFilter) -> Any:
        return list(filt.nodes)

    def filter_from_wire(self, w: Any) -> CounterFilter:
        return CounterFilter(tuple(int(n) for n in w))


class ItemSchema(BaseSchema):
    name = "k2v_item"

    def __init__(
        self,
        node: int,
        subs: SubscriptionManager,
        local_counters: Any,
        queue_counter: Callable[[WriteTxn, CounterEntry], None],
        expiry: ExpiryIndex | None = None,
        stored_form: ItemStoredForm | None = None,
    ) -> None:
        self.node = node
        # Items kept without their bucket id and sort key (garagekv/model/k2v/stored.py).
        self.stored_form = stored_form
        self.subs = subs
        self.local_counters = local_counters
        self.queue_counter = queue_counter
        self.expiry = expiry
        #: Called with every changed item inside its transaction (the poll index, model/k2v/poll_index.py).
        self.on_change_in: Callable[[K2VItem], None] | None = None

    def decode(self, data: bytes) -> K2VItem:
        return K2VItem.decode(data)

    def matches_filter(self, item: K2VItem, filt: ItemFilter) -> bool:
        item = item.at(now_ms() if filt.now is None else filt.now)  # expired values are tombstones
        if filt.exclude_only_tombstones and item.is_tombstone():
            return False
        return not (filt.conflicts_only and len(item.values()) < 2)

    def filter_to_wire(self, filt: ItemFilter) -> Any:
        return [filt.exclude_only_tombstones, filt.conflicts_only]

    def filter_from_wire(self, w: Any) -> ItemFilter:
        return ItemFilter(bool(w[0]), bool(w[1]))

    def updated(self, tx: WriteTxn, old: K2VItem | None, new: K2VItem | None) -> None:
        ref = new if new is not None else old
        assert ref is not None
        diff = counts_diff(old.counts() if old else None, new.counts() if new else None)
        if diff:
            # Summed per partition over the transaction and written once at its end: a batch
            # (InsertBatch, a replica's merge of many updates, the expiry worker's step) changes
            # many items of few partitions.
            pending: dict[bytes, tuple[bytes, str, dict[str, int]]] = tx.accumulate(
                self, dict, lambda acc: self._write_counters(tx, acc)
            )
            key = ref.bucket_id + ref.partition_key.encode()
            hit = pending.get(key)
            if hit is None:
                pending[key] = (ref.bucket_id, ref.partition_key, diff)
            else:
                total = hit[2]
                for name, d in diff.items():
                    total[name] = total.get(name, 0) + d
        if self.expiry is not None:
            self.expiry.updated_in(tx, old, new)
        if new is not None:
            if self.on_change_in is not None:
                self.on_change_in(new)
            tx.on_commit(lambda: self.subs.notify(new))

    def _write_counters(self, tx: WriteTxn, pending: dict[bytes, tuple[bytes, str, dict[str, int]]]) -> None:
        """Apply a transaction's summed deltas to this node's counters and queue them."""
        now = now_ms()
        for key, (bucket_id, pk, total) in pending.items():
            diff = {name: d for name, d in total.items() if d}
            if not diff:
                continue  # changes that cancel out (an item written and deleted in one batch)
            raw = tx.get(self.local_counters, key)
            local = LocalCounter.decode(raw) if raw else LocalCounter(bucket_id, pk)
            local.apply_diff(diff, now)
            tx.put(self.local_counters, key, local.encode())
            self.queue_counter(tx, local.to_entry(self.node))
