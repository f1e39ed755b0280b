"""K2V work done on a storage node itself: coordinated inserts and local polls.

An insert coordinated here reads the item, applies the DVVS update with this node's id and a
timestamp that never goes backwards, and writes the item, the timestamp and the counter deltas
in one transaction (docs/architecture.md §2). The single writer thread serialises these
read-modify-writes, which is what makes per-node times strictly increasing.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from garagekv.db.env import Database
from garagekv.db.writer import GroupCommitWriter, WriteTxn
from garagekv.model.k2v.causality import CLOCK_HORIZON_MS, MAX_CLOCK_AHEAD_MS, MAX_CONTEXT_ENTRIES, CausalContext
from garagekv.model.k2v.item import ClockExhausted, K2VItem, partition_hash
from garagekv.model.k2v.messages import InsertedItem
from garagekv.model.k2v.range import RangeQuery
from garagekv.model.k2v.seen import RangeSeenMarker
from garagekv.model.k2v.sub import SubscriptionManager
from garagekv.table.data import INLINE_SCAN_LIMIT, ScanRange, TableData, check_size
from garagekv.util.config import DEFAULT_MAX_ITEM_BYTES
from garagekv.util.errors import EntityTooLarge
from garagekv.util.time import now_ms

_TS_KEY = b"timestamp"

log = logging.getLogger(__name__)


def _too_large(ins: InsertedItem, e: EntityTooLarge) -> EntityTooLarge:
    return EntityTooLarge(
        f"item (partition key {ins.partition_key!r}, sort key {ins.sort_key!r}): {e.message} (max_item_bytes)"
    )


def check_context(ins: InsertedItem, before: int, after: int) -> None:
    """Refuse a write that would grow an item's causal context past ``MAX_CONTEXT_ENTRIES`` nodes."""
    if after > MAX_CONTEXT_ENTRIES and after > before:
        raise EntityTooLarge(
            f"item (partition key {ins.partition_key!r}, sort key {ins.sort_key!r}): its causal context would "
            f"hold {after} nodes, over the limit of {MAX_CONTEXT_ENTRIES}"
        )


class LocalClock:
    """This node's K2V timestamp, persisted in the writer's transactions.

    Every dot this node creates is above every time it has issued; plain inserts, reserved
    conditional writes and commits applied by consensus all move it through here.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.tree = db.tree("k2v:local_ts")

    def stored_in(self, tx: WriteTxn) -> int:
        raw = tx.get(self.tree, _TS_KEY)
        return struct.unpack(">Q", raw)[0] if raw else 0

    def base_in(self, tx: WriteTxn, now: int) -> int:
        """The time to build on: the last one this node issued, or the wall clock if later.

        A stored time beyond what any client clock may carry (written before clocks were
        bounded) is ignored rather than built on, so it cannot leave the node without
        timestamps; seen markers and tokens that carry it are refused anyway.
        """
        local_ts = self.stored_in(tx)
        if local_ts > now + MAX_CLOCK_AHEAD_MS:
            log.warning("ignoring a stored K2V timestamp %d beyond the clock bound (now %d)", local_ts, now)
            return now
        return max(local_ts, now)

    def set_in(self, tx: WriteTxn, ts: int) -> None:
        tx.put(self.tree, _TS_KEY, struct.pack(">Q", ts))

    def raise_in(self, tx: WriteTxn, ts: int) -> None:
        """Dots up to ``ts`` of this node exist now (applied by a commit): issue above them."""
        if ts > self.stored_in(tx):
            self.set_in(tx, ts)

    def reserve_in(self, tx: WriteTxn, count: int = 1, above: int = 0) -> int:
        """Times for writes decided later (a consensus round): their dots are ``ts + 1`` to
        ``ts + count``, and ``ts`` is at least ``above``. Nothing else this node writes gets them."""
        ts = max(self.base_in(tx, now_ms()), above)
        self.set_in(tx, ts + count)
        return ts

    def issued(self) -> int:
        """The last timestamp this node issued (0 before its first write, or if out of bounds).

        Every dot this node creates from now on is later than this, and every time this node has
        issued is at most this: PollRange's seen markers rely on both (a later time in an item's
        entry for this node came from a client, not from this node).
        """
        with self.db.read() as txn:
            raw = txn.get(_TS_KEY, db=self.tree)
        local_ts = struct.unpack(">Q", raw)[0] if raw else 0
        return local_ts if local_ts <= now_ms() + MAX_CLOCK_AHEAD_MS else 0


@dataclass(frozen=True)
class LocalRange:
    """One range a storage node watches for a PollRanges call, its seen marker decoded."""

    partition_hash: bytes
    query: RangeQuery
    marker: RangeSeenMarker | None


def _whole_range(ph: bytes, q: RangeQuery) -> ScanRange:
    """The scan of every item of a (forward, unlimited) poll range ``q`` of partition ``ph``."""
    prefix = (q.prefix or "").encode()
    start = prefix if q.start is None else q.start.encode()
    return ScanRange(ph, start, prefix, None if q.end is None else q.end.encode())


class K2VStore:
    def __init__(
        self,
        db: Database,
        writer: GroupCommitWriter,
        node: int,
        item_data: TableData[K2VItem],
        subs: SubscriptionManager,
        max_item_bytes: int = DEFAULT_MAX_ITEM_BYTES,
    ) -> None:
        self.node = node
        self.db = db
        self.writer = writer
        self.subs = subs
        self.item_data = item_data
        # An item bigger than one RPC message could not be replicated, read or synced: inserts
        # that would grow one past this are refused before anything is written.
        self.max_item_bytes = max_item_bytes
        self.clock = LocalClock(db)
        self._local_ts = self.clock.tree

    # ---- coordinated inserts -------------------------------------------------------------------

    def _insert_in(self, tx: WriteTxn, bucket_id: bytes, ins: InsertedItem) -> K2VItem:
        now = now_ms()
        node_ts = self.clock.base_in(tx, now)
        result: dict[str, Any] = {}

        def update(old: K2VItem | None) -> K2VItem:
            item = old if old is not None else K2VItem.new(bucket_id, ins.partition_key, ins.sort_key)
            before = len(item.items)
            expires = None if ins.ttl is None else now + ins.ttl * 1000
            ts = item.update(self.node, ins.causal_context, ins.value, node_ts, now + CLOCK_HORIZON_MS, expires)
            if ts > now + MAX_CLOCK_AHEAD_MS:
                # Only data stored before clocks were bounded gets here: issuing this time would
                # hand out a token no node accepts. Another storage node can take the write.
                raise ClockExhausted(f"this item's entry for node {self.node:016x} is beyond the clock bound")
            check_context(ins, before, len(item.items))
            result["ts"] = ts
            result["item"] = item
            return item

        key = partition_hash(bucket_id, ins.partition_key) + ins.sort_key.encode()
        try:
            self.item_data.update_in(tx, key, update, max_bytes=self.max_item_bytes)
        except EntityTooLarge as e:
            raise _too_large(ins, e)
        self.clock.set_in(tx, result["ts"])
        return result["item"]

    def issued_clock(self) -> int:
        return self.clock.issued()

    # ---- expiry ----------------------------------------------------------------------------------

    def expire_in(self, tx: WriteTxn, tree_key: bytes, now: int) -> K2VItem | None:
        """Make permanent the expiry of the item's values due at ``now``; returns the changed item
        (to replicate), None if nothing was due (see ``expire_many_in``)."""
        return self.expire_many_in(tx, [tree_key], now)[0]

    def expire_many_in(self, tx: WriteTxn, tree_keys: list[bytes], now: int) -> list[K2VItem | None]:
        """``expire_in`` for each of ``tree_keys``, in order: the changed item or None for each.

        The due dots become tombstones in place (``K2VItem.expire``: those dots alone), and this
        node adds a tombstone dot of its own, as a DeleteItem would: the token moves on, so
        PollItem and PollRange wake up, and the counters drop with the values. The tombstone dot
        is left out only where it could not be issued (an item at its context bound, or an entry
        beyond the clock bound): the values still read as deleted everywhere. This node's clock
        is read once and stored once for the whole batch.
        """
        clock = self.clock.base_in(tx, now)
        issued = clock
        out: list[K2VItem | None] = []

        def fn(old: K2VItem | None) -> K2VItem:
            nonlocal issued
            assert old is not None
            if not old.expire(now):
                return old
            own = old.items.get(self.node)
            if own is None and len(old.items) >= MAX_CONTEXT_ENTRIES:
                return old
            if max(own.max_time() if own is not None else 0, issued) + 1 > now + MAX_CLOCK_AHEAD_MS:
                return old
            issued = old.update(self.node, None, None, issued)
            return old

        for tree_key in tree_keys:
            if tx.get(self.item_data.store, tree_key) is None:
                out.append(None)
            else:
                out.append(self.item_data.update_in(tx, tree_key, fn))
        if issued != clock:
            self.clock.set_in(tx, issued)
        return out

    async def insert_many(self, bucket_id: bytes, items: list[InsertedItem]) -> list[K2VItem]:
        """Apply the inserts in one transaction; returns the resulting items (to replicate).

        All or nothing: one item refused (``EntityTooLarge``) rolls the whole transaction back.
        """

        def apply(tx: WriteTxn) -> list[K2VItem]:
            return [self._insert_in(tx, bucket_id, ins) for ins in items]

        return await self.writer.submit(apply)

    def check_sizes(self, bucket_id: bytes, items: list[InsertedItem]) -> None:
        """Raise ``EntityTooLarge`` if ``insert_many`` would refuse one of ``items``, writing nothing.

        Lets a batch spread over several coordinators be refused as a whole before any of them
        writes. Blocking (decodes and encodes the items): run it in a thread.
        """
        merged: dict[bytes, tuple[K2VItem, int | None]] = {}  # items inserted twice add up
        node_ts = now_ms()
        for ins in items:
            key = partition_hash(bucket_id, ins.partition_key) + ins.sort_key.encode()
            if key in merged:
                item, old_size = merged[key]
            else:
                raw = self.item_data.get_raw(key)
                old_size = None if raw is None else len(raw)
                if raw is None:
                    item = K2VItem.new(bucket_id, ins.partition_key, ins.sort_key)
                else:
                    item = self.item_data.schema.decode(raw)
            before = len(item.items)
            expires = None if ins.ttl is None else node_ts + ins.ttl * 1000
            node_ts = item.update(self.node, ins.causal_context, ins.value, node_ts, expires=expires)
            check_context(ins, before, len(item.items))
            merged[key] = (item, old_size)
            try:
                check_size(len(item.encode()), old_size, self.max_item_bytes)
            except EntityTooLarge as e:
                raise _too_large(ins, e)

    # ---- local polls -----------------------------------------------------------------------------

    async def poll_item(self, bucket_id: bytes, pk: str, sk: str, ct: CausalContext, timeout: float) -> K2VItem | None:
        """Wait until the local item's causal context has something ``ct`` has not seen."""
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

    async def _snapshot(self, ph: bytes, q: RangeQuery) -> list[K2VItem]:
        """Every local item of the range, read in ONE read transaction.

        A PollRange answer must be a consistent snapshot: the coordinator raises the marker's
        clock for this node to the newest own timestamp in the answer, which claims every item
        this node wrote up to that time. This node's timestamps grow in commit order, so in one
        snapshot every earlier write is present too; a read spread over several transactions
        (pages, or per-item re-reads after a wake-up) could carry a late write of one key while
        missing an earlier write of another, which the marker would then swallow.

        A small range (the usual watched partition) is read right here; one with more than
        ``INLINE_SCAN_LIMIT`` items is read again, whole, in one scan in a worker thread.
        """
        scan = _whole_range(ph, q)
        rows = self.item_data.scan(ScanRange(ph, scan.start, scan.prefix, scan.end, limit=INLINE_SCAN_LIMIT + 1))
        if len(rows) > INLINE_SCAN_LIMIT:
            rows = await self.item_data.scan_async(scan)
        return [e for _, e in rows]

    async def poll_range(
        self, bucket_id: bytes, pk: str, q: RangeQuery, marker: RangeSeenMarker | None, timeout: float
    ) -> list[K2VItem] | None:
        """Local items of the range the marker has not seen (all of them without a marker).

        Blocks until there is one; None on timeout. The subscription is opened before the scan
        so a write landing in between is never missed. Every answer is filtered from one
        snapshot of the whole range (see ``_snapshot``): after a wake-up the range is read again
        rather than the notified items alone, since writes of other items committed before that
        read may not have been notified yet.
        """
        ph = partition_hash(bucket_id, pk)
        with self.subs.partition(ph) as sub:
            items = await self._snapshot(ph, q)
            if marker is None:
                return items
            try:
                async with asyncio.timeout(timeout):
                    while True:
                        items = [i for i in items if marker.is_new_item(i)]
                        if items:
                            return items
                        # Wait for a change that is new to the marker; changes already in the
                        # snapshot just read may wake this once more, the next read sorts it out.
                        while not any(q.contains(i.sort_key) and marker.is_new_item(i) for i in await sub.wait()):
                            pass
                        items = await self._snapshot(ph, q)
            except TimeoutError:
                return None

    async def poll_ranges(self, ranges: list[LocalRange], timeout: float) -> dict[int, list[K2VItem]]:
        """Local items the ranges' markers have not seen, by index in ``ranges``: every range
        without a marker (all its items), and each range with one that has such items.

        Blocks until there is one; {} on timeout. ONE subscription, registered under every
        partition of the ranges, is opened before the first scan, so a write landing in between
        is never missed. After a wake-up only the ranges a notified change is new to are read
        again, each from one snapshot as in ``poll_range`` (the others were read after their
        last change was committed, and any later one notifies this subscription).
        """
        by_partition: dict[bytes, list[int]] = {}
        for i, r in enumerate(ranges):
            by_partition.setdefault(r.partition_hash, []).append(i)
        with self.subs.partitions(by_partition) as sub:
            news = await self._news(ranges, range(len(ranges)))
            if news:
                return news
            try:
                async with asyncio.timeout(timeout):
                    while True:
                        dirty: set[int] = set()
                        while not dirty:
                            for item in await sub.wait():
                                for i in by_partition.get(item.partition_hash(), ()):
                                    marker = ranges[i].marker
                                    if ranges[i].query.contains(item.sort_key) and (
                                        marker is None or marker.is_new_item(item)
                                    ):
                                        dirty.add(i)
                        news = await self._news(ranges, sorted(dirty))
                        if news:
                            return news
            except TimeoutError:
                return {}

    async def _news(self, ranges: list[LocalRange], indices: Iterable[int]) -> dict[int, list[K2VItem]]:
        news: dict[int, list[K2VItem]] = {}
        for i in indices:
            r = ranges[i]
            items = await self._snapshot(r.partition_hash, r.query)
            if r.marker is None:
                news[i] = items
            elif new := [item for item in items if r.marker.is_new_item(item)]:
                news[i] = new
        return news
