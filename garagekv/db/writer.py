"""Group commit: one writer thread runs many small transactions under one commit and fsync.

Every write on a node goes through here. Callers submit a function that runs inside a nested
LMDB transaction; all functions queued while the previous commit was syncing share the next
commit, so one fsync acknowledges a whole batch. A function that raises only rolls back its own
nested transaction. Running every write on one thread also serialises read-modify-write updates
(the per-node insert lock of the DVVS timestamp rule comes for free).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import lmdb

from garagekv.db.env import Database
from garagekv.util.errors import GarageKVError, StorageError

log = logging.getLogger(__name__)

R = TypeVar("R")
A = TypeVar("A")
MAX_BATCH = 512


class WriteTxn:
    """A nested write transaction handed to submitted functions."""

    __slots__ = ("txn", "_after_commit", "_at_end")

    def __init__(self, txn: lmdb.Transaction[bytes]) -> None:
        self.txn = txn
        self._after_commit: list[Callable[[], None]] = []
        self._at_end: dict[object, tuple[Any, Callable[[Any], None]]] | None = None

    def get(self, tree: lmdb._Database, key: bytes) -> bytes | None:
        return self.txn.get(key, db=tree)

    def put(self, tree: lmdb._Database, key: bytes, value: bytes) -> None:
        self.txn.put(key, value, db=tree)

    def delete(self, tree: lmdb._Database, key: bytes) -> bool:
        return self.txn.delete(key, db=tree)

    def cursor(self, tree: lmdb._Database) -> lmdb.Cursor[bytes]:
        return self.txn.cursor(db=tree)

    def on_commit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the event loop once the batch holding this transaction is durable."""
        self._after_commit.append(fn)

    def accumulate(self, key: object, start: Callable[[], A], finish: Callable[[A], None]) -> A:
        """A per-transaction accumulator: the first call for ``key`` makes it with ``start()`` and
        arranges ``finish(acc)`` for when the submitted function returns, still inside this
        transaction (what it writes commits or rolls back with the rest); later calls for ``key``
        return the same object.

        Bookkeeping that every change of a batch would otherwise rewrite (the index counters of a
        partition whose items change together) is then written once per transaction.
        """
        if self._at_end is None:
            self._at_end = {}
        hit = self._at_end.get(key)
        if hit is None:
            acc = start()
            self._at_end[key] = (acc, finish)
            return acc
        return hit[0]  # type: ignore[no-any-return]

    def finish(self) -> None:
        """Run the accumulators' ``finish`` in the order they were started (the writer does, after
        the submitted function); one may start another, which is finished in turn."""
        while self._at_end:
            pending, self._at_end = self._at_end, None
            for acc, fn in pending.values():
                fn(acc)


class ReadTxn:
    """A read-only transaction with ``WriteTxn``'s ``get``, so code that only reads (a state
    machine's ``read_in``) runs the same inside a write job or in a snapshot on the event loop."""

    __slots__ = ("txn",)

    def __init__(self, txn: lmdb.Transaction[bytes]) -> None:
        self.txn = txn

    def get(self, tree: lmdb._Database, key: bytes) -> bytes | None:
        return self.txn.get(key, db=tree)


#: Either kind of transaction, for code that only reads.
TxnReader = WriteTxn | ReadTxn


class _Job:
    __slots__ = ("fn", "future", "loop")

    def __init__(
        self, fn: Callable[[WriteTxn], Any], future: asyncio.Future[Any], loop: asyncio.AbstractEventLoop
    ) -> None:
        self.fn = fn
        self.future = future
        self.loop = loop


class GroupCommitWriter:
    """The single writer thread of a node's database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="db-writer", daemon=True)
        self._closed = False
        self.commits = 0
        self.jobs = 0
        self._group = 0  # jobs in the transaction being run (read by its own jobs)
        # (batch size, seconds) after each commit, called on the writer thread (metrics)
        self.on_commit: Callable[[int, float], None] | None = None
        self._thread.start()

    async def submit(self, fn: Callable[[WriteTxn], R]) -> R:
        """Run ``fn`` in a write transaction; returns its result once committed (and fsynced)."""
        if self._closed:
            raise StorageError("database is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[R] = loop.create_future()
        self._queue.put(_Job(fn, fut, loop))
        # A cancelled caller cancels ``fut`` only: the job still runs and commits (``_resolve``
        # then finds the future cancelled and drops the result).
        return await fut

    def run_sync(self, fn: Callable[[WriteTxn], R]) -> R:
        """Run ``fn`` in its own committed transaction from a non-async context (startup, tools)."""
        with self.db.environment.begin(write=True) as txn:
            wt = WriteTxn(txn)
            result = fn(wt)
            wt.finish()
        for cb in wt._after_commit:
            cb()
        return result

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            batch = [job]
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            self._commit_batch(batch)

    def others_waiting(self) -> bool:
        """From a job: whether other jobs wait for this one (in its group commit, or queued for
        the next), so that a job of background work may stop early and leave the rest for later."""
        return self._group > 1 or not self._queue.empty()

    @property
    def alive(self) -> bool:
        """Accepting and committing writes."""
        return not self._closed and self._thread.is_alive()

    def _commit_batch(self, batch: list[_Job]) -> None:
        outcomes: list[tuple[_Job, bool, Any, list[Callable[[], None]]]] = []
        started = time.monotonic()
        self._group = len(batch)
        try:
            with self.db.environment.begin(write=True) as parent:
                for job in batch:
                    child = self.db.environment.begin(write=True, parent=parent)
                    wt = WriteTxn(child)
                    try:
                        result = job.fn(wt)
                        wt.finish()
                    except BaseException as e:  # noqa: BLE001 - reported to the submitter
                        child.abort()
                        outcomes.append((job, False, e, []))
                    else:
                        child.commit()
                        outcomes.append((job, True, result, wt._after_commit))
        except lmdb.Error as e:
            log.error("database commit failed: %s", e)
            err = StorageError(f"database commit failed: {e}")
            for job in batch:
                _post(job.loop, _resolve, job.future, False, err, [])
            return
        finally:
            self._group = 0
        self.commits += 1
        self.jobs += len(batch)
        if self.on_commit is not None:
            try:
                self.on_commit(len(batch), time.monotonic() - started)
            except Exception:  # noqa: BLE001 - statistics must never fail a write
                log.exception("commit observer failed")
        for job, ok, value, callbacks in outcomes:
            if not ok and not isinstance(value, GarageKVError):
                log.exception("write transaction failed", exc_info=value)
            _post(job.loop, _resolve, job.future, ok, value, callbacks)

    def close(self) -> None:
        """Finish every queued job, then stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()


def _post(loop: asyncio.AbstractEventLoop, *args: Any) -> None:
    """Hand a result back to the submitter's loop; a loop that has closed meanwhile wants none."""
    try:
        loop.call_soon_threadsafe(*args)
    except RuntimeError:
        pass


def _resolve(fut: asyncio.Future[Any], ok: bool, value: Any, callbacks: list[Callable[[], None]]) -> None:
    for cb in callbacks:
        try:
            cb()
        except Exception:  # noqa: BLE001 - a subscriber must never fail a write
            log.exception("post-commit callback failed")
    if fut.cancelled():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)
