"""Online recount of this node's K2V index counters from the items it stores.

The index counters are maintained incrementally, by deltas; should they ever disagree with the
items, the operator's ``repair counters`` runs this worker to recompute them from the items
themselves. It lives next to the counters it rewrites, below the admin layer that launches it.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from garagekv.db.env import Database
from garagekv.db.writer import GroupCommitWriter, WriteTxn
from garagekv.model.index_counter import COUNTER_NAMES, LocalCounter
from garagekv.model.k2v.item import K2VItem, partition_hash
from garagekv.table.data import prefix_end
from garagekv.util.background import WorkerState
from garagekv.util.time import now_ms

if TYPE_CHECKING:
    from garagekv.model.model import Model

log = logging.getLogger(__name__)

#: items (or local counters) handled per transaction
RECOUNT_STEP = 500


class CounterRepair:
    """Recount this node's K2V index counters from the items it stores, online.

    Each K2V partition is recounted inside one writer transaction, so it is atomic with respect
    to concurrent writes (they are serialised on the writer thread and apply their deltas on top
    of the recounted value). Every recounted counter gets a fresh timestamp and is queued for
    replication, so the corrected values win on every replica. Pass 1 walks the items; pass 2
    recounts the local counters pass 1 did not meet (partitions with no items left: zeroed).
    """

    name = "k2v counter repair"

    def __init__(self, model: Model, db: Database, writer: GroupCommitWriter) -> None:
        self.data = model.items.data
        self.schema = model.item_schema
        self.writer = writer
        self.db = db
        self.phase = "items"
        self._next: bytes | None = b""
        self._seen: set[bytes] = set()
        self.items_done = 0  # items counted (pass 1)
        self.partitions = 0  # partitions recounted from their items (pass 1)
        self.counters_done = 0  # local counters checked (pass 2)
        with db.read() as txn:
            self.total = txn.stat(self.data.store)["entries"] + txn.stat(self.schema.local_counters)["entries"]
        self.started_at = time.time()
        self.finished_at: float | None = None

    def _store(self, tx: WriteTxn, bucket_id: bytes, pk: str, counts: dict[str, int], now: int) -> None:
        key = bucket_id + pk.encode()
        raw = tx.get(self.schema.local_counters, key)
        local = LocalCounter.decode(raw) if raw else LocalCounter(bucket_id, pk)
        for name in set(COUNTER_NAMES) | set(local.values):
            ts, _ = local.values.get(name, (0, 0))
            local.values[name] = (max(ts + 1, now), counts.get(name, 0))
        tx.put(self.schema.local_counters, key, local.encode())
        self.schema.queue_counter(tx, local.to_entry(self.schema.node))

    def _count_partition(self, tx: WriteTxn, ph: bytes) -> tuple[dict[tuple[bytes, str], dict[str, int]], int]:
        """Counts per (bucket, pk) of the items stored under partition hash ``ph``; items read."""
        counts: dict[tuple[bytes, str], dict[str, int]] = defaultdict(lambda: dict.fromkeys(COUNTER_NAMES, 0))
        n = 0
        cur = tx.cursor(self.data.store)
        if cur.set_range(ph):
            for key, raw in cur:
                if not key.startswith(ph):
                    break
                item = K2VItem.decode(self.data.canonical(key, raw))
                c = counts[(item.bucket_id, item.partition_key)]
                for name, v in item.counts().items():
                    c[name] = c.get(name, 0) + v
                n += 1
        return counts, n

    def _items_step(self, tx: WriteTxn, start: bytes) -> tuple[bytes | None, int, list[bytes]]:
        """Recount whole partitions from ``start`` until about RECOUNT_STEP items are read."""
        now = now_ms()
        seen: list[bytes] = []
        read = 0
        nxt: bytes | None = start
        cur = tx.cursor(self.data.store)
        while nxt is not None and read < RECOUNT_STEP:
            if not cur.set_range(nxt):
                nxt = None
                break
            ph = bytes(cur.key()[:32])
            counts, n = self._count_partition(tx, ph)
            read += n
            for (bucket_id, pk), c in counts.items():
                self._store(tx, bucket_id, pk, c, now)
                seen.append(bucket_id + pk.encode())
            nxt = prefix_end(ph)
        return nxt, read, seen

    def _counters_step(self, tx: WriteTxn, start: bytes, seen: set[bytes]) -> tuple[bytes | None, int]:
        """Recount the local counters pass 1 did not meet (their partition had no items then)."""
        now = now_ms()
        cur = tx.cursor(self.schema.local_counters)
        todo: list[LocalCounter] = []
        nxt: bytes | None = None
        n = 0
        if cur.set_range(start):
            for key, raw in cur:
                if n >= RECOUNT_STEP:
                    nxt = bytes(key)
                    break
                n += 1
                if bytes(key) not in seen:
                    todo.append(LocalCounter.decode(raw))
        for local in todo:
            counts, _ = self._count_partition(tx, partition_hash(local.bucket_id, local.partition_key))
            c = counts.get((local.bucket_id, local.partition_key), {})
            self._store(tx, local.bucket_id, local.partition_key, c, now)
        return nxt, n

    async def work(self) -> WorkerState:
        if self.phase == "items":
            start = self._next or b""
            nxt, read, seen = await self.writer.submit(lambda tx: self._items_step(tx, start))
            self.items_done += read
            self._seen.update(seen)
            self.partitions += len(seen)
            self._next = nxt
            if nxt is None:
                self.phase, self._next = "counters", b""
            return WorkerState.BUSY
        if self.phase == "counters":
            start = self._next or b""
            met = self._seen
            nxt, n = await self.writer.submit(lambda tx: self._counters_step(tx, start, met))
            self.counters_done += n
            self._next = nxt
            if nxt is None:
                self.phase = "done"
                self.finished_at = time.time()
                self._seen = set()
                log.info(
                    "counter repair done: %d items in %d partitions counted, %d counters checked",
                    self.items_done,
                    self.partitions,
                    self.counters_done,
                )
                return WorkerState.DONE
            return WorkerState.BUSY
        return WorkerState.DONE

    async def wait_for_work(self) -> None:
        return None

    def progress(self) -> dict[str, Any]:
        done = self.items_done + self.counters_done
        return {
            "done": done,
            "total": max(self.total, done),
            "phase": self.phase,
            "items": self.items_done,
            "partitions": self.partitions,
            "counters": self.counters_done,
        }
