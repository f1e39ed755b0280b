"""A durable queue of entries to insert into a replicated table, filled inside local transactions.

Index counters use it: the counter delta is queued in the same transaction as the K2V item that
caused it, so it can never be lost or applied twice, and a background worker replicates it with
a normal quorum insert. An entry leaves the queue only once inserted and only if it did not
change in the meantime (a newer delta merged into it stays queued).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Generic, TypeVar

from garagekv.db.env import Database
from garagekv.db.writer import GroupCommitWriter, WriteTxn
from garagekv.table.schema import Entry
from garagekv.table.table import Table
from garagekv.util.background import Notify, WorkerState

log = logging.getLogger(__name__)

E = TypeVar("E", bound=Entry)
BATCH = 1000
IDLE_WAKEUP = 10.0
#: Once woken, wait this long before draining, so that a burst of writes to a partition leaves as
#: one merged entry instead of one insert per write (counters are eventually consistent anyway).
LINGER = 0.1


class InsertQueue(Generic[E]):
    """Also a background worker (``work``/``wait_for_work``/``progress``)."""

    def __init__(self, db: Database, writer: GroupCommitWriter, table: Table[E]) -> None:
        self.db = db
        self.writer = writer
        self.table = table
        self.tree = db.tree(f"{table.schema.name}:insert_queue")
        self._wake = Notify()
        self.done = 0

    def queue_in(self, tx: WriteTxn, entry: E) -> None:
        """Inside a caller's transaction: merge ``entry`` into the queue."""
        key = entry.tree_key()
        raw = tx.get(self.tree, key)
        if raw is not None:
            queued = self.table.schema.decode(raw)
            queued.merge(entry)
            entry = queued
        tx.put(self.tree, key, entry.encode())
        tx.on_commit(self.notify)

    def replace_in(self, tx: WriteTxn, entry: E) -> None:
        """``queue_in`` for an entry known to supersede whatever is queued under its key.

        A node's own index counters are such entries (each carries all of the node's registers
        with timestamps that only grow), so the queued one need not be decoded and merged.
        """
        tx.put(self.tree, entry.tree_key(), entry.encode())
        tx.on_commit(self.notify)

    def notify(self) -> None:
        self._wake.notify()

    def __len__(self) -> int:
        with self.db.read() as txn:
            return txn.stat(self.tree)["entries"]

    def _peek(self) -> list[tuple[bytes, bytes]]:
        with self.db.read() as txn:
            out = []
            for k, v in txn.cursor(db=self.tree):
                out.append((k, v))
                if len(out) >= BATCH:
                    break
            return out

    async def drain_once(self) -> int:
        """Insert one batch; returns how many entries left the queue."""
        batch = self._peek()
        if not batch:
            return 0
        await self.table.insert_many([self.table.schema.decode(v) for _, v in batch])

        def remove(tx: WriteTxn) -> int:
            n = 0
            for k, v in batch:
                if tx.get(self.tree, k) == v:
                    tx.delete(self.tree, k)
                    n += 1
            return n

        removed = await self.writer.submit(remove)
        self.done += removed
        return removed

    async def flush(self) -> None:
        """Drain everything queued so far (tests, shutdown)."""
        while await self.drain_once():
            pass

    # ---- Worker -----------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return f"{self.table.schema.name} queue"

    async def work(self) -> WorkerState:
        return WorkerState.BUSY if await self.drain_once() >= BATCH else WorkerState.IDLE

    async def wait_for_work(self) -> None:
        await self._wake.wait(IDLE_WAKEUP)
        await asyncio.sleep(LINGER)

    def progress(self) -> dict[str, Any]:
        return {"done": self.done, "queue": len(self)}
