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
from typing import TypedDict

from garagekv.db.env import Database
from garagekv.db.writer import GroupCommitWriter, WriteTxn
from garagekv.model.k2v.causality import CLOCK_HORIZON_MS, MAX_CLOCK_AHEAD_MS, MAX_CONTEXT_ENTRIES, CausalContext
from garagekv.model.k2v.item import ClockExhausted, K2VItem, partition_hash
from garagekv.model.k2v.messages import InsertedItem
from garagekv.model.k2v.poll_index import PollIndex
from garagekv.model.k2v.range import RangeQuery
from garagekv.model.k2v.seen import RangeSeenMarker
from garagekv.model.k2v.sub import SubscriptionManager
from garagekv.table.data import INLINE_SCAN_LIMIT, ScanRange, TableData, check_size
from garagekv.util import codec
from garagekv.util.config import DEFAULT_MAX_ITEM_BYTES
from garagekv.util.errors import EntityTooLarge
from garagekv.util.time import now_ms

_TS_KEY = b"timestamp"
_U64 = struct.Struct(">Q")

log = logging.getLogger(__name__)


class _Issued(TypedDict, total=False):
    """What an insert's update function hands back to its caller (it runs inside the write)."""

    ts: int
    item: K2VItem


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


@dataclass(frozen=True)
class Reservation:
    """Times a consensus round of this node reserved and that are not settled yet: its dots
    ``first`` to ``first + count - 1`` may still appear in items (docs/k2v-compat.md,
    "PollRange and conditional writes")."""

    first: int
    key: bytes  # the consensus key (the partition hash)
    bucket_id: bytes
    partition_key: str
    count: int


class LocalClock:
    """This node's K2V timestamp, persisted in the writer's transactions.

    Every dot this node creates is above every time it has issued; plain inserts, reserved
    conditional writes and commits applied by consensus all move it through here.

    Times reserved for a consensus round (``reserve_in``) are also recorded in ``k2v:reserved``
    until they are *settled*: their dots are in this node's store, or can never appear in an
    item any more without being on a majority of the partition's storage nodes first. A plain
    insert is visible here as soon as its time is issued; a conditional write's dot only when
    its round commits here, which can be much later (a round that failed may be completed by
    another one, possibly after a restart). ``stable()`` is the bound PollRange answers give
    seen markers for this node's own dots.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.tree = db.tree("k2v:local_ts")
        self.reserved = db.tree("k2v:reserved")

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

    def reserve_in(self, tx: WriteTxn, count: int, above: int, bucket_id: bytes, partition_key: str) -> int:
        """Times for writes decided later (a consensus round on the partition key): their dots
        are ``ts + 1`` to ``ts + count``, and ``ts`` is at least ``above``. Nothing else this
        node writes gets them. Recorded as unsettled in the same transaction."""
        ts = max(self.base_in(tx, now_ms()), above)
        self.set_in(tx, ts + count)
        key = partition_hash(bucket_id, partition_key)
        tx.put(self.reserved, _U64.pack(ts + 1), codec.encode([key, bucket_id, partition_key, count]))
        return ts

    def release_in(self, tx: WriteTxn, firsts: Iterable[int]) -> None:
        """Settle the reservations starting at ``firsts`` (their dots were never proposed, or
        can no longer appear unless a majority holds them)."""
        for first in firsts:
            tx.delete(self.reserved, _U64.pack(first))

    def settle_in(self, tx: WriteTxn, key: bytes, dot: int) -> None:
        """A commit of consensus key ``key`` applied here holds ``dot``, a value of this node's
        own entry: the round that reserved it proposed it, so its reservation is settled, and
        so is every earlier one of this node on the key.

        Only this node's rounds on the key reserve under it, one round at a time, each after the
        previous one ended; an earlier reservation's proposal (if any) had a majority of
        promises before this one was proposed, so this one, being chosen, has a higher ballot:
        the earlier proposal was chosen before (then it is on a majority) or never will be
        (docs/consensus.md §7). Runs in the commit's transaction: a poll's read sees the items
        and the settlement together, or neither.
        """
        cur = tx.cursor(self.reserved)
        # The last reservation starting at or before ``dot``.
        if not (cur.prev() if cur.set_range(_U64.pack(dot + 1)) else cur.last()):
            return
        first = _U64.unpack(cur.key())[0]
        r = _decode_reservation(first, cur.value())
        if r.key != key or not first <= dot < first + r.count:
            return
        settled = [first]
        while cur.prev():
            earlier = _decode_reservation(_U64.unpack(cur.key())[0], cur.value())
            if earlier.key == key:
                settled.append(earlier.first)
        self.release_in(tx, settled)

    def reservations(self) -> list[Reservation]:
        """The unsettled reservations, oldest first (a short read transaction)."""
        with self.db.read() as txn:
            return [_decode_reservation(_U64.unpack(k)[0], v) for k, v in txn.cursor(db=self.reserved).iternext()]

    def issued(self) -> int:
        """The last timestamp this node issued (0 before its first write, or if out of bounds).

        Every dot this node creates from now on is later than this, and every time this node has
        issued is at most this.
        """
        with self.db.read() as txn:
            raw = txn.get(_TS_KEY, db=self.tree)
        return self._bounded(raw)

    def stable(self) -> int:
        """The time up to which every dot of this node's own entry is in this node's store now
        (or, for a conditional write's, on a majority of its partition's storage nodes): the
        last time it issued, or just below its oldest unsettled reservation. At most
        ``issued()``.

        PollRange's seen markers rely on it (``RangeSeenMarker.mark_seen_node_items``): a
        storage node's answer moves the marker's clock for the node only up to this bound, read
        before the node looks at the items, and a discard time in the node's entry counts only
        up to it (a later one came from a client, not from this node). One read transaction,
        so a reservation and the time it issued are seen together.
        """
        with self.db.read() as txn:
            raw = txn.get(_TS_KEY, db=self.tree)
            cur = txn.cursor(db=self.reserved)
            first = _U64.unpack(cur.key())[0] if cur.first() else None
        bound = self._bounded(raw)
        return bound if first is None else min(bound, first - 1)

    @staticmethod
    def _bounded(raw: bytes | None) -> int:
        local_ts = struct.unpack(">Q", raw)[0] if raw else 0
        return local_ts if local_ts <= now_ms() + MAX_CLOCK_AHEAD_MS else 0


def _decode_reservation(first: int, raw: bytes) -> Reservation:
    key, bucket_id, partition_key, count = codec.decode(bytes(raw))
    return Reservation(first, bytes(key), bytes(bucket_id), partition_key, count)


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
        self._background: set[asyncio.Future[None]] = set()
        #: What a poll with a marker reads first (kept up to date by the item schema's hook).
        self.poll_index = PollIndex(item_data, writer)

    # ---- coordinated inserts -------------------------------------------------------------------

    def _insert_in(self, tx: WriteTxn, bucket_id: bytes, ins: InsertedItem) -> K2VItem:
        now = now_ms()
        node_ts = self.clock.base_in(tx, now)
        result: _Issued = {}

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

    def stable_clock(self) -> int:
        """What a poll answer tells seen markers about this node's own dots (``LocalClock.stable``)."""
        return self.clock.stable()

    def release_reservations(self, firsts: list[int]) -> None:
        """Settle reservations whose dots were never proposed, in the background: a poll merely
        keeps more per-item clocks in its markers until it is written."""

        def release(tx: WriteTxn) -> None:
            self.clock.release_in(tx, firsts)

        task = asyncio.ensure_future(self.writer.submit(release))
        self._background.add(task)
        task.add_done_callback(self._released)

    def _released(self, task: asyncio.Future[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("settling reserved K2V times failed (the sweep retries): %s", task.exception())

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

        A poll's first answer is filtered from it: the coordinator raises the marker's clock for
        this node up to the newest own dot in the answer (within the node's stable time, read
        before this read), which claims every item this node wrote up to that time; one snapshot
        holds all of them. A read spread over several transactions (pages) could carry a late
        write of one key while missing an earlier write of another.

        A small range (the usual watched partition) is read right here; one with more than
        ``INLINE_SCAN_LIMIT`` items is read again, whole, in one scan in a worker thread.
        """
        scan = _whole_range(ph, q)
        rows = self.item_data.scan(ScanRange(ph, scan.start, scan.prefix, scan.end, limit=INLINE_SCAN_LIMIT + 1))
        if len(rows) > INLINE_SCAN_LIMIT:
            rows = await self.item_data.scan_async(scan)
        return [e for _, e in rows]

    def _read_changed(self, changed: Iterable[tuple[bytes, str]]) -> dict[tuple[bytes, str], K2VItem]:
        """The local items of (partition hash, sort key) pairs that changed, from ONE read
        transaction (missing ones are left out).

        What a wake-up answers: only the items that changed since the first read, not their
        whole ranges. That claims nothing about the rest of a range: the marker's clock for this
        node never moves past its stable time, read before the first read (``stable_clock``),
        and every item of the range holding a dot of the node up to that time was in the first
        read already; the items read here are remembered by their own clocks. A write committed
        but not notified yet is left to the next poll, still new to the marker.
        """
        wanted = sorted(set(changed))
        raws = self.item_data.get_raw_many([ph + sk.encode() for ph, sk in wanted])
        decode = self.item_data.schema.decode
        return {k: decode(raw) for k, raw in zip(wanted, raws, strict=True) if raw is not None}

    async def poll_range(
        self, bucket_id: bytes, pk: str, q: RangeQuery, marker: RangeSeenMarker | None, timeout: float
    ) -> list[K2VItem] | None:
        """Local items of the range the marker has not seen (all of them without a marker).

        Blocks until there is one; None on timeout. A PollRanges call of one range
        (``poll_ranges``): a wake-up reads only the items the notifications named.
        """
        news = await self.poll_ranges([LocalRange(partition_hash(bucket_id, pk), q, marker)], timeout)
        return news.get(0)

    async def poll_ranges(self, ranges: list[LocalRange], timeout: float) -> dict[int, list[K2VItem]]:
        """Local items the ranges' markers have not seen, by index in ``ranges``: every range
        without a marker (all its items), and each range with one that has such items.

        Blocks until there is one; {} on timeout. ONE subscription, registered under every
        partition of the ranges, is opened before the first read (``_news``), so a write landing
        in between is never missed. After a wake-up only the items the notifications named are
        read again, for the ranges they are new to, all from one read transaction
        (``_read_changed``).
        """
        by_partition: dict[bytes, list[int]] = {}
        for i, r in enumerate(ranges):
            by_partition.setdefault(r.partition_hash, []).append(i)
        with self.subs.partitions(by_partition) as sub:
            news = await self._news(ranges)
            if news:
                return news
            # No range lacks a marker here: those have news at once.
            try:
                async with asyncio.timeout(timeout):
                    while True:
                        dirty: dict[int, set[str]] = {}
                        while not dirty:
                            for item in await sub.wait():
                                for i in by_partition.get(item.partition_hash(), ()):
                                    marker = ranges[i].marker
                                    if ranges[i].query.contains(item.sort_key) and (
                                        marker is None or marker.is_new_item(item)
                                    ):
                                        dirty.setdefault(i, set()).add(item.sort_key)
                        news = self._read_news(ranges, {i: sorted(sks) for i, sks in sorted(dirty.items())})
                        if news:
                            return news
            except TimeoutError:
                return {}

    async def _news(self, ranges: list[LocalRange]) -> dict[int, list[K2VItem]]:
        """Every range's first answer, by index: all its items without a marker (one snapshot,
        ``_snapshot``), else its items the marker has not seen, if any.

        A range with a marker reads only the items the poll index names (``PollIndex``: those
        whose causal context may have a time beyond the marker's clock), all ranges' in one read
        transaction, as a wake-up does (``_read_changed``); a partition too big for the index is
        read whole. Either way every item holding a dot of this node up to its stable time,
        read before (``stable_clock``), is in the answer or already seen by the marker.
        """
        news: dict[int, list[K2VItem]] = {}
        wanted: dict[int, list[str]] = {}
        # Partitions new to the index are read into it together (each is a writer job).
        partitions = list(dict.fromkeys(r.partition_hash for r in ranges if r.marker is not None))
        found = await asyncio.gather(*(self.poll_index.ensure(ph) for ph in partitions))
        indexed = dict(zip(partitions, found, strict=True))
        for i, r in enumerate(ranges):
            if r.marker is not None and indexed[r.partition_hash]:
                sort_keys = self.poll_index.candidates(r.partition_hash, r.query, r.marker)
                if sort_keys is not None:
                    wanted[i] = sort_keys
                    continue
            items = await self._snapshot(r.partition_hash, r.query)
            if r.marker is None:
                news[i] = items
            elif new := [item for item in items if r.marker.is_new_item(item)]:
                news[i] = new
        if wanted:
            news.update(self._read_news(ranges, wanted))
        return dict(sorted(news.items()))

    def _read_news(self, ranges: list[LocalRange], wanted: dict[int, list[str]]) -> dict[int, list[K2VItem]]:
        """For each range index, its items of the sort keys ``wanted`` (in that order) that are
        new to its marker, read in one transaction (``_read_changed``); ranges with none left out."""
        now = self._read_changed((ranges[i].partition_hash, sk) for i, sks in wanted.items() for sk in sks)
        news: dict[int, list[K2VItem]] = {}
        for i, sks in wanted.items():
            r = ranges[i]
            items = [now[k] for sk in sks if (k := (r.partition_hash, sk)) in now]
            if new := [item for item in items if r.marker is None or r.marker.is_new_item(item)]:
                news[i] = new
        return news
