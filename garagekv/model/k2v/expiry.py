"""The worker that makes expiries permanent: it writes the tombstones of expired K2V values
(docs/k2v-api.md "Expiring values").

Reads hide a value past its expiry at once (``K2VItem.at``); the worker turns it into a
tombstone so that pollers wake up, index counters drop and tombstone GC can collect the item.

The worker never scans the items: it reads the expiry index (garagekv/model/k2v/expiry_index.py)
from its first entry, and sleeps until that entry is due (a write adding an earlier one wakes
it), so a million pending expiries cost nothing until one is due. A due entry then waits
``LINGER_MS`` for those due right after it: the tombstones of one step share one transaction
(and one counter update per partition) here and one update call, hence one transaction, per
replica. Under a steady stream of expiring writes a step takes half a second's worth of them.

Who writes the tombstone: every replica has the entry, but the first storage node of the
partition (in the layout's order) that this node sees up writes it right away; the others wait
``FALLBACK_STEP_MS`` per live node ahead of them in that order, by which time the first node's
tombstone has normally replaced the value on their copy (which removes their entry). A duplicate
is harmless: each expiring node turns the same dot into the same tombstone, and its own
tombstone dot only adds a tombstone value, which reads dedupe. Before a step expires anything,
the node merges a read quorum's copies of its items into its own (``_catch_up``): a copy that
missed a write replacing the value must not expire it, or its tombstone would stand next to the
new value.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from garagekv.db.writer import WriteTxn
from garagekv.model.k2v.expiry_index import ALWAYS, ExpiryIndex
from garagekv.model.k2v.item import K2VItem
from garagekv.model.k2v.store import K2VStore
from garagekv.table.table import Table
from garagekv.util.background import Notify, WorkerState
from garagekv.util.time import now_ms

log = logging.getLogger(__name__)

#: How long a storage node waits, per live node ahead of it in the partition's order, before it
#: writes an expiry's tombstone itself (the first node normally has done it within milliseconds).
FALLBACK_STEP_MS = 10_000
#: Shortest sleep between two steps: expiries due within it are handled together (one
#: transaction and one replication call per step rather than one per value).
MIN_GAP = 0.05
#: How long the oldest due expiry waits for later ones before a step writes them all: the
#: values already read as deleted, and one step of many tombstones costs each replica far less
#: per value (one transaction, one update of each partition's counters, one replication call
#: per node) than steps of a few. Well within the 2 s the tombstone is due by (docs/k2v-api.md).
LINGER_MS = 500
#: Longest sleep (a clock step never leaves an expiry waiting longer than this).
IDLE_WAKEUP = 60.0
#: Replications of tombstones in flight before the worker waits for one to finish.
MAX_INFLIGHT = 8
#: How long a step whose items' replicas could not be read waits before it is tried again.
RETRY_MS = 1000


class ExpiryWorker:
    """The background worker writing the tombstones of expired values (``garagekv worker list``)."""

    name = "k2v expiry"

    def __init__(
        self, index: ExpiryIndex, store: K2VStore, items: Table[K2VItem], clock: Callable[[], int] = now_ms
    ) -> None:
        self.index = index
        self.store = store
        self.items = items
        self.clock = clock
        self._wake = Notify()
        index.on_earlier = self._wake.notify
        self._next_ms: int | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self.expired = 0  # items this node wrote an expiry tombstone for
        self.deferred = 0  # due entries left to another storage node in the last step
        self.replication_failures = 0
        self.postponed = 0  # steps put off because no read quorum answered
        self.last_expired_at: float | None = None

    # ---- whose turn ---------------------------------------------------------------------------

    def rank(self, partition: bytes) -> int:
        """How many storage nodes of the partition come before this one in the layout's order
        and are up: 0 means this node writes the partition's tombstones right away."""
        replication = self.items.replication
        try:
            nodes = replication.storage_nodes(partition)
        except Exception:  # noqa: BLE001 - layout in flux: writing a tombstone too is harmless
            log.debug("storage nodes unavailable for an expiry", exc_info=True)
            return 0
        peers = self.items.peers
        ahead = 0
        for n in nodes:
            if n == replication.node_id:
                return ahead
            if peers is None or peers.is_up(n):
                ahead += 1
        return ahead  # not a storage node of this partition (any more): after all of them

    # ---- one step -------------------------------------------------------------------------------

    async def work(self) -> WorkerState:
        # Until the next sleep, any new entry wakes the worker: this step may not have seen it.
        self.index.wake_before_ms = ALWAYS
        now = self.clock()
        ranks: dict[int, int] = {}  # per ring partition (the tree key's first byte), for this step

        def act_at(exp: int, tree_key: bytes) -> int:
            rank = ranks.get(tree_key[0])
            if rank is None:
                rank = ranks[tree_key[0]] = self.rank(tree_key[:32])
            return exp + rank * FALLBACK_STEP_MS

        sel = await asyncio.to_thread(self.index.select, now, act_at)
        self.deferred = sel.deferred
        self._next_ms = sel.next_ms
        first = sel.first_ready_exp
        if first is not None and not sel.more and first + LINGER_MS > now:
            self._next_ms = first + LINGER_MS  # let more expiries join this step
            return WorkerState.IDLE
        if sel.ready:
            while len(self._inflight) >= MAX_INFLIGHT:
                await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)
            if not await self._catch_up([tree_key for _, tree_key in sel.ready]):
                self._next_ms = now + RETRY_MS
                return WorkerState.IDLE
            changed = await self.store.writer.submit(lambda tx: self._expire_in(tx, sel.ready, now))
            self.expired += len(changed)
            if changed:
                self.last_expired_at = time.time()
                self._replicate(changed)
        return WorkerState.BUSY if sel.more else WorkerState.IDLE

    async def _catch_up(self, tree_keys: list[bytes]) -> bool:
        """Merge a read quorum's copies of the items about to expire into this node's own.

        This node's copy may have missed a write that replaced the value since (the node was
        down, or the write was still on its way): expiring that copy would add this node's
        tombstone next to the new value, as a concurrent value that nothing ever wrote. With
        a read quorum merged in, every acknowledged write is in the copy that is expired (a
        value already replaced has left it, and its index entry with it). False when no quorum
        answers: the entries stay due and the step is tried again later, never on a copy that
        may be stale.
        """
        try:
            newer = await self.items.newer_elsewhere(tree_keys)
        except Exception as e:  # noqa: BLE001 - no quorum, a node failing: try the step again later
            log.info("expiry of %d item(s) postponed: their replicas could not be read: %s", len(tree_keys), e)
            self.postponed += 1
            return False
        if newer:
            await self.items.data.merge_many(newer)
        return True

    def _expire_in(self, tx: WriteTxn, ready: list[tuple[bytes, bytes]], now: int) -> list[K2VItem]:
        out: list[K2VItem] = []
        changed = self.store.expire_many_in(tx, [tree_key for _, tree_key in ready], now)
        for (key, _), item in zip(ready, changed, strict=True):
            if item is not None:
                out.append(item)  # its due entries left the index with the change
            else:
                tx.delete(self.index.tree, key)  # a stale entry: the item gone or already expired
        return out

    def _replicate(self, items: list[K2VItem]) -> None:
        """Send the tombstones to the other replicas without holding up the next expiries; if
        that fails, the other replicas expire the values themselves after their fallback delay,
        and anti-entropy converges the copies."""

        async def push() -> None:
            try:
                await self.items.insert_many(items, stored_here=True)
            except Exception as e:  # noqa: BLE001 - see above
                self.replication_failures += 1
                log.info("replicating %d expiry tombstone(s) failed: %s", len(items), e)

        task = asyncio.create_task(push())
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def wait_for_work(self) -> None:
        now = self.clock()
        wake_ms = now + int(IDLE_WAKEUP * 1000)
        if self._next_ms is not None:
            wake_ms = min(wake_ms, self._next_ms)
        self.index.wake_before_ms = wake_ms
        await self._wake.wait(max(MIN_GAP, (wake_ms - now + 1) / 1000))

    def progress(self) -> dict[str, Any]:
        out: dict[str, Any] = {"done": self.expired, "queue": len(self.index)}
        if self.deferred:
            out["deferred"] = self.deferred
        if self.replication_failures:
            out["replication_failures"] = self.replication_failures
        if self.postponed:
            out["postponed"] = self.postponed
        return out
