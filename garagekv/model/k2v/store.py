"""K2V operations on this node: coordinated inserts, reads, range reads, polls, the index.

This is the coordinator's side of ARCHITECTURE.md section 2: an insert reads the item, applies
the DVVS update with this node's id and a timestamp that never goes backwards, and writes the
item, the timestamp and the counter deltas in one transaction. The replicated version sends the
merged item on to the other replicas from here.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass

from garagekv.db.env import Database
from garagekv.db.writer import GroupCommitWriter, WriteTxn
from garagekv.model.index_counter import COUNTER_NAMES, CounterEntry
from garagekv.model.k2v.causality import CausalContext
from garagekv.model.k2v.item import K2VItem, Value, partition_hash
from garagekv.model.k2v.range import RangePage, RangeQuery, read_range
from garagekv.model.k2v.schema import CounterSchema, ItemFilter, ItemSchema
from garagekv.model.k2v.seen import RangeSeenMarker
from garagekv.model.k2v.sub import SubscriptionManager
from garagekv.table.data import TableData
from garagekv.table.table import Table
from garagekv.util.time import now_ms

_TS_KEY = b"timestamp"


@dataclass
class InsertedItem:
    partition_key: str
    sort_key: str
    causal_context: CausalContext | None
    value: Value


class K2VStore:
    def __init__(self, db: Database, writer: GroupCommitWriter, node: int) -> None:
        self.node = node
        self.writer = writer
        self.subs = SubscriptionManager()
        self._local_ts = db.tree("k2v:local_ts")
        self.counter_schema = CounterSchema([node])
        self.counter_data = TableData(db, writer, self.counter_schema)
        self.counters = Table(self.counter_data)
        local_counters = db.tree("k2v:local_counters")
        self.item_data = TableData(db, writer, ItemSchema(node, self.subs, local_counters, self.counter_data))
        self.items = Table(self.item_data)

    # ---- writes ------------------------------------------------------------------------------

    def _insert_in(self, tx: WriteTxn, bucket_id: bytes, ins: InsertedItem) -> None:
        raw = tx.get(self._local_ts, _TS_KEY)
        local_ts = struct.unpack(">Q", raw)[0] if raw else 0
        node_ts = max(local_ts, now_ms())
        new_ts = node_ts

        def update(old: K2VItem | None) -> K2VItem:
            nonlocal new_ts
            item = old if old is not None else K2VItem.new(bucket_id, ins.partition_key, ins.sort_key)
            new_ts = item.update(self.node, ins.causal_context, ins.value, node_ts)
            return item

        key = partition_hash(bucket_id, ins.partition_key) + ins.sort_key.encode()
        self.item_data.update_in(tx, key, update)
        tx.put(self._local_ts, _TS_KEY, struct.pack(">Q", new_ts))

    async def insert(self, bucket_id: bytes, ins: InsertedItem) -> None:
        await self.writer.submit(lambda tx: self._insert_in(tx, bucket_id, ins))

    async def insert_many(self, bucket_id: bytes, items: list[InsertedItem]) -> None:
        def apply(tx: WriteTxn) -> None:
            for ins in items:
                self._insert_in(tx, bucket_id, ins)

        await self.writer.submit(apply)

    # ---- reads -------------------------------------------------------------------------------

    async def read_item(self, bucket_id: bytes, pk: str, sk: str) -> K2VItem | None:
        return await self.items.get(partition_hash(bucket_id, pk) + sk.encode())

    async def read_range(self, bucket_id: bytes, pk: str, q: RangeQuery, filt: ItemFilter) -> RangePage:
        ph = partition_hash(bucket_id, pk)
        return await asyncio.to_thread(
            read_range, lambda start, **kw: self.item_data.scan(ph, start, **kw), q, filt
        )

    async def read_index(self, bucket_id: bytes, q: RangeQuery) -> RangePage:
        return await asyncio.to_thread(
            read_range, lambda start, **kw: self.counter_data.scan(bucket_id, start, **kw), q, True
        )

    async def bucket_is_empty(self, bucket_id: bytes) -> bool:
        page = await self.read_index(bucket_id, RangeQuery(limit=1))
        return not page.entries

    @staticmethod
    def counter_values(entry: CounterEntry, nodes: list[int]) -> dict[str, int]:
        vals = entry.filtered_values(nodes)
        return {n: vals.get(n, 0) for n in COUNTER_NAMES}

    # ---- polls -------------------------------------------------------------------------------

    async def poll_item(
        self, bucket_id: bytes, pk: str, sk: str, ct: CausalContext, timeout: float
    ) -> K2VItem | None:
        """Wait until the item's causal context has something ``ct`` has not seen (or timeout)."""
        key = partition_hash(bucket_id, pk) + sk.encode()
        with self.subs.item(key) as sub:
            item = self.item_data.get(key)
            if item is not None and item.causal_context().is_newer_than(ct):
                return item
            try:
                async with asyncio.timeout(timeout):
                    while True:
                        for changed in await sub.wait():
                            if changed.causal_context().is_newer_than(ct):
                                return self.item_data.get(key) or changed
            except TimeoutError:
                return None

    async def poll_range(
        self, bucket_id: bytes, pk: str, q: RangeQuery, marker: RangeSeenMarker | None, timeout: float
    ) -> tuple[list[K2VItem], RangeSeenMarker] | None:
        """The items of the range the marker has not seen; None on timeout.

        Without a marker, the whole range (tombstones included) at once. The subscription is
        opened before the scan so a write landing in between is never missed.
        """
        ph = partition_hash(bucket_id, pk)
        with self.subs.partition(ph) as sub:
            page = await self.read_range(bucket_id, pk, q, ItemFilter())
            items = [e for _, e in page.entries]
            if marker is None:
                marker = RangeSeenMarker({}, {})
            else:
                marker.restrict(q.prefix, q.start, q.end)
                items = [i for i in items if marker.is_new_item(i)]
                if not items:
                    try:
                        async with asyncio.timeout(timeout):
                            while not items:
                                changed = {i.sort_key: i for i in await sub.wait() if q.contains(i.sort_key)}
                                items = [i for i in changed.values() if marker.is_new_item(i)]
                    except TimeoutError:
                        return None
                    # Re-read so the answer reflects the latest state, not the notified snapshot.
                    fresh = [self.item_data.get(i.tree_key()) or i for i in items]
                    items = sorted(fresh, key=lambda i: i.sort_key.encode())
            marker.mark_seen_node_items(self.node, items)
            marker.canonicalize()
            return items, marker
