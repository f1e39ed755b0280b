"""The sweep of reserved K2V times that no commit settled (docs/k2v-compat.md, "PollRange and
conditional writes").

A consensus round reserves this node's times before it decides (``LocalClock.reserve_in``), and
PollRange answers of this node never let a seen marker claim its dots from the oldest unsettled
reservation on. A round's reservations are normally settled within milliseconds: those it never
proposed when it ends, the proposed one when its commit is applied here, with every earlier
reservation on the key (``LocalClock.settle_in``). What is left is the reservations of rounds
that failed after proposing (503: their proposal may still be completed by another round) or
were cut short (a restart, a cancelled task), on keys no later round of this node committed.
Left alone they would hold the node's bound back for good, so that markers keep a per-item clock
for every later write of this node.

This worker settles them: a reservation still there on two passes in a row belongs to a round
that is over, so it runs a consensus round that writes nothing on the reservation's key, through
the key's queue (after any round of this node on the key still running). That round completes
the old proposal if it may have been chosen (its commit then settles the reservation here), and
otherwise its own accepted ballot, higher than the old proposal's (it was promised by a majority
before this round began), means the old proposal was chosen before, and is on a majority of the
partition's storage nodes, or can never be chosen (docs/consensus.md §7). Either way the
reservation is released once that round succeeded; on failure the next pass tries again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from garagekv.db.writer import GroupCommitWriter, WriteTxn
from garagekv.model.k2v.store import LocalClock, Reservation
from garagekv.util.background import WorkerState

log = logging.getLogger(__name__)

#: Seconds between two passes; a reservation seen on two passes in a row is swept.
INTERVAL = 5.0
#: Rounds of the sweep running at once.
CONCURRENCY = 8


class ReservationSweeper:
    """The background worker settling reservations of rounds that ended without settling them
    (``garagekv worker list``: "k2v reservations")."""

    name = "k2v reservations"

    def __init__(
        self,
        clock: LocalClock,
        writer: GroupCommitWriter,
        resolve: Callable[[bytes, str], Awaitable[Any]],
        *,
        interval: float = INTERVAL,
    ) -> None:
        self.clock = clock
        self.writer = writer
        #: Runs a consensus round writing nothing on (bucket id, partition key), on this node.
        self.resolve = resolve
        self.interval = interval
        self._seen: dict[int, float] = {}  # first dot -> when a pass first saw the reservation
        self.swept = 0  # reservations released by the sweep
        self.failures = 0  # rounds of the sweep that failed (retried on the next pass)
        self.pending = 0  # unsettled reservations at the last pass

    async def work(self) -> WorkerState:
        records = self.clock.reservations()
        now = time.monotonic()
        self._seen = {r.first: self._seen.get(r.first, now) for r in records}
        self.pending = len(records)
        due: dict[tuple[bytes, str], list[Reservation]] = {}
        for r in records:
            if now - self._seen[r.first] >= self.interval:
                due.setdefault((r.bucket_id, r.partition_key), []).append(r)
        if due:
            limit = asyncio.Semaphore(CONCURRENCY)

            async def sweep(bucket_id: bytes, partition_key: str, stale: list[Reservation]) -> None:
                async with limit:
                    try:
                        await self.resolve(bucket_id, partition_key)
                    except Exception as e:  # noqa: BLE001 - no quorum now: the next pass tries again
                        self.failures += 1
                        log.info("reserved K2V times not settled yet (%d on a key): %s", len(stale), e)
                        return
                firsts = [r.first for r in stale]

                def release(tx: WriteTxn) -> None:
                    self.clock.release_in(tx, firsts)

                await self.writer.submit(release)
                self.swept += len(firsts)

            await asyncio.gather(*(sweep(b, pk, stale) for (b, pk), stale in due.items()))
        return WorkerState.IDLE

    async def wait_for_work(self) -> None:
        await asyncio.sleep(self.interval)

    def progress(self) -> dict[str, Any]:
        out: dict[str, Any] = {"done": self.swept, "queue": self.pending}
        if self.failures:
            out["failures"] = self.failures
        return out
