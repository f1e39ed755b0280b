"""The background worker that rebuilds a table's range sums when they must be (re)built.

Writes keep the sums up to date by themselves (table/range_sums.py); this worker only runs a
rebuild: after an upgrade from a version that kept Merkle tries, after the cluster's secret (the
sums' key) changed, or on ``repair merkle``. Until it is done, anti-entropy does not compare the
table with this node.
"""

from __future__ import annotations

import logging
from typing import Any

from garagekv.db.writer import WriteTxn
from garagekv.table.data import TableData
from garagekv.util.background import Notify, WorkerState

log = logging.getLogger(__name__)

#: While no rebuild runs, the worker sleeps until a repair wakes it (or this long).
IDLE_WAKEUP = 3600.0


class RangeSumsWorker:
    def __init__(self, data: TableData[Any]) -> None:
        self.data = data
        self.sums = data.sums
        self.table_name = data.schema.name
        self._wake = Notify()

    async def rebuild(self) -> int:
        """Forget the sums and rebuild them from the entries; returns how many entries there are."""

        def start(tx: WriteTxn) -> int:
            self.sums.start_rebuild_in(tx)
            return int(tx.txn.stat(self.data.store)["entries"])

        n = await self.data.writer.submit(start)
        self._wake.notify()
        return n

    async def finish(self) -> None:
        """Run a rebuild to its end here (tests, tools)."""
        while await self.work() is WorkerState.BUSY:
            pass

    @property
    def name(self) -> str:
        return f"{self.table_name} range sums"

    async def work(self) -> WorkerState:
        if not self.sums.rebuilding:
            return WorkerState.IDLE
        more = await self.data.writer.submit(self.sums.rebuild_step_in)
        if not more:
            log.info("%s: range sums rebuilt (%d entries)", self.table_name, self.sums.rebuilt)
        return WorkerState.BUSY if more else WorkerState.IDLE

    async def wait_for_work(self) -> None:
        await self._wake.wait(IDLE_WAKEUP)

    def progress(self) -> dict[str, Any]:
        return {"done": self.sums.rebuilt, "queue": self.sums.left_to_rebuild()}
