"""What a storage node's poll reads first: the items a seen marker may not have seen, without
reading the whole range (docs/k2v-compat.md, "PollRange answers").

A poll with a marker used to read and decode every item of its range at the start of each call
to find the few the marker had not seen: a PollRanges call of 64 ranges read 64 partitions in
full on every storage node, for every call. ``PollIndex`` keeps, for partitions that are being
polled, an upper bound of each local item's causal context, and for each DVVS node the items in
order of their time for it. An item is new to a marker only if its context has a time beyond the
marker's clock for some node, so the candidates are found by one ordered lookup per node; only
they are read (in one read transaction) and checked against the marker.

The bounds are kept in the writer's transactions (``updated_in``, called by the item schema for
every local change: inserts, replication, repair, sync, commits), before they commit. So when a
poll looks, every change a read could see is in the index: a change the index misses could
otherwise be claimed by the marker (its clock for this node moves up to the node's stable time)
before the change's notification reached the poll. A transaction that rolls back leaves a bound
too high, which only makes an item a candidate for nothing. A partition enters the index through
a job of the writer (``ensure``) that reads it whole, so no change can slip between that read and
the index. Items deleted by the tombstone GC stay as stale candidates that read as missing.
Partitions are evicted least recently polled first, past ``MAX_ITEMS`` items in all; a partition
of more than ``MAX_PARTITION_ITEMS`` items is not indexed (its polls read it whole, as before).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator

from sortedcontainers import SortedList

from garagekv.db.writer import GroupCommitWriter, WriteTxn
from garagekv.model.k2v.causality import vclock_max
from garagekv.model.k2v.item import K2VItem
from garagekv.model.k2v.range import RangeQuery
from garagekv.model.k2v.seen import RangeSeenMarker
from garagekv.table.data import TableData

#: Items indexed over all partitions, at most (about half a kilobyte each).
MAX_ITEMS = 200_000
#: A partition with more items than this is read whole by its polls instead.
MAX_PARTITION_ITEMS = 20_000
#: How long a partition found too big is not tried again.
TOO_BIG_RETRY = 300.0


class _Partition:
    """Upper bounds of the causal contexts of one partition's local items."""

    __slots__ = ("by_node", "clocks")

    def __init__(self) -> None:
        self.clocks: dict[str, dict[int, int]] = {}
        self.by_node: dict[int, SortedList] = {}  # node -> (time, sort key), sorted

    def update(self, sort_key: str, clock: dict[int, int]) -> None:
        old = self.clocks.get(sort_key)
        new = clock if old is None else vclock_max(old, clock)
        if new == old:
            return
        for node, t in new.items():
            before = None if old is None else old.get(node)
            if before == t:
                continue
            times = self.by_node.get(node)
            if times is None:
                times = self.by_node[node] = SortedList()
            if before is not None:
                times.remove((before, sort_key))
            times.add((t, sort_key))
        self.clocks[sort_key] = new

    def candidates(self, vector_clock: dict[int, int]) -> Iterator[str]:
        """Sort keys whose bound has a time beyond ``vector_clock`` (maybe several times each)."""
        for node, times in self.by_node.items():
            for _, sort_key in times.irange(minimum=(vector_clock.get(node, 0) + 1, "")):
                yield sort_key


class PollIndex:
    def __init__(self, item_data: TableData[K2VItem], writer: GroupCommitWriter) -> None:
        self.item_data = item_data
        self.writer = writer
        self._lock = threading.Lock()  # the writer thread updates, the event loop reads
        self._parts: OrderedDict[bytes, _Partition] = OrderedDict()
        self._items = 0
        self._too_big: dict[bytes, float] = {}
        self.builds = 0  # partitions read whole into the index

    def updated_in(self, item: K2VItem) -> None:
        """A local change of ``item``, inside its writer transaction (before it commits)."""
        if not self._parts:
            return
        key = item.partition_hash()
        with self._lock:
            part = self._parts.get(key)
            if part is not None:
                known = item.sort_key in part.clocks
                part.update(item.sort_key, item.causal_context().vclock)
                self._items += not known

    async def ensure(self, partition_hash: bytes) -> bool:
        """Whether the partition is in the index, putting it there if it is small enough."""
        with self._lock:
            if partition_hash in self._parts:
                self._parts.move_to_end(partition_hash)
                return True
        since = self._too_big.get(partition_hash)
        if since is not None and time.monotonic() - since < TOO_BIG_RETRY:
            return False

        def build(tx: WriteTxn) -> bool:
            # In the writer: no change of the partition can commit between this read and the
            # index (every later change goes through ``updated_in``).
            with self._lock:
                if partition_hash in self._parts:
                    return True
            raws: list[tuple[bytes, bytes]] = []
            cur = tx.cursor(self.item_data.store)
            if cur.set_range(partition_hash):
                for key, raw in cur:
                    if not key.startswith(partition_hash):
                        break
                    if len(raws) == MAX_PARTITION_ITEMS:
                        return False  # counted without decoding anything
                    raws.append((key, raw))
            part = _Partition()
            for key, raw in raws:
                item = self.item_data.schema.decode(self.item_data.canonical(key, raw))
                part.update(item.sort_key, item.causal_context().vclock)
            count = len(raws)
            with self._lock:
                self._parts[partition_hash] = part
                self._items += count
                while self._items > MAX_ITEMS and len(self._parts) > 1:
                    _, evicted = self._parts.popitem(last=False)
                    self._items -= len(evicted.clocks)
            self.builds += 1
            return True

        if await self.writer.submit(build):
            self._too_big.pop(partition_hash, None)
            return True
        self._too_big[partition_hash] = time.monotonic()
        return False

    def candidates(self, partition_hash: bytes, q: RangeQuery, marker: RangeSeenMarker) -> list[str] | None:
        """The sort keys of the range whose items may be new to ``marker``, in order; None if
        the partition is not indexed (``ensure`` first)."""
        with self._lock:
            part = self._parts.get(partition_hash)
            if part is None:
                return None
            out = {
                sk
                for sk in part.candidates(marker.vector_clock)
                if q.contains(sk) and marker.is_new_clock(sk, part.clocks[sk])
            }
        return sorted(out, key=str.encode)

    def __len__(self) -> int:
        """Items indexed."""
        return self._items
