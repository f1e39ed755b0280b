"""Forget the consensus state of partitions this node no longer stores.

Once no live layout version puts a partition on this node, no round will ask it about the
partition's keys again (docs/consensus.md, "Garbage collection"), so their acceptor state is
dead weight. The worker walks the state tree in key order, a batch per step, and deletes the
entries of such partitions; a pass ends idle until the next interval or a layout change.
"""

from __future__ import annotations

from typing import Any

from garagekv.consensus.acceptor import TREE
from garagekv.consensus.messages import MIN_KEY_LEN
from garagekv.consensus.placement import Placement
from garagekv.db.env import Database
from garagekv.db.writer import GroupCommitWriter, WriteTxn
from garagekv.rpc.layout import LayoutVersion
from garagekv.util.background import Notify, WorkerState

BATCH = 500
INTERVAL = 600.0


class ConsensusGcWorker:
    """A background worker (``util.background``); call ``notify()`` when the layout changes."""

    name = "consensus state GC"

    def __init__(
        self, db: Database, writer: GroupCommitWriter, placement: Placement, *, interval: float = INTERVAL
    ) -> None:
        self.db = db
        self.writer = writer
        self.placement = placement
        self.interval = interval
        self.tree = db.tree(TREE)
        self.deleted = 0
        self.passes = 0
        self._cursor: bytes | None = None  # next key to look at; None: start of a pass
        self._notify = Notify()

    def notify(self) -> None:
        self._notify.notify()

    def _stored_here(self, key: bytes) -> bool:
        return self.placement.node_id in self.placement.storage_nodes(key[:MIN_KEY_LEN])

    def _scan(self, start: bytes) -> tuple[list[bytes], bytes | None]:
        """Keys of dead partitions among the next ``BATCH`` keys from ``start``, and where to go on.

        Runs on the event loop: a short read transaction, and one placement lookup per ring
        partition rather than per key.
        """
        dead: list[bytes] = []
        stored: dict[int, bool] = {}
        seen = 0
        with self.db.read() as txn:
            cur = txn.cursor(db=self.tree)
            if not cur.set_range(start):
                return dead, None
            for raw in cur.iternext(keys=True, values=False):
                key = bytes(raw)
                if seen == BATCH:
                    return dead, key
                seen += 1
                partition = LayoutVersion.partition_of(key)
                here = stored.get(partition)
                if here is None:
                    here = stored[partition] = self._stored_here(key)
                if not here:
                    dead.append(key)
        return dead, None

    async def work(self) -> WorkerState:
        dead, self._cursor = self._scan(self._cursor or b"")
        if dead:

            def delete(tx: WriteTxn) -> int:
                # Checked again in the writer: the layout may have changed since the scan.
                return sum(1 for k in dead if not self._stored_here(k) and tx.delete(self.tree, k))

            self.deleted += await self.writer.submit(delete)
        if self._cursor is None:
            self.passes += 1
            return WorkerState.IDLE
        return WorkerState.BUSY

    async def wait_for_work(self) -> None:
        await self._notify.wait(self.interval)

    def progress(self) -> dict[str, Any]:
        return {"deleted": self.deleted, "passes": self.passes}
