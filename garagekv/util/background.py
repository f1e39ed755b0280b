"""Background workers: a loop of ``work()`` steps with backoff on errors, listed by operators.

A worker does one bounded step of work per ``work()`` call and says whether more is waiting
(BUSY), whether it should sleep until woken (IDLE), or whether it has finished for good (DONE).
Errors never kill a worker: it backs off (1.5^n seconds, at most about a minute) and retries.
``garagekv worker list`` shows every worker's state, progress and errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)


class WorkerState(enum.Enum):
    BUSY = "busy"
    IDLE = "idle"
    DONE = "done"


class Worker(Protocol):
    @property
    def name(self) -> str: ...  # read-only: some workers compute it (a table's queue, its GC)

    async def work(self) -> WorkerState: ...

    async def wait_for_work(self) -> None: ...

    def progress(self) -> dict[str, Any]: ...


@dataclass
class WorkerInfo:
    tid: int
    worker: Worker
    state: str = "busy"
    errors: int = 0
    consecutive_errors: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "tid": self.tid,
            "name": self.worker.name,
            "state": self.state,
            "errors": self.errors,
            "consecutive_errors": self.consecutive_errors,
            "last_error": self.last_error,
            "last_error_secs_ago": None if self.last_error_at is None else round(time.time() - self.last_error_at),
            **self.worker.progress(),
        }


def backoff_delay(consecutive_errors: int) -> float:
    return 1.5 ** min(10, max(0, consecutive_errors - 1))


class BackgroundRunner:
    def __init__(self) -> None:
        self.workers: list[WorkerInfo] = []

    def spawn(self, worker: Worker) -> WorkerInfo:
        info = WorkerInfo(len(self.workers) + 1, worker)
        info.task = asyncio.create_task(self._run(info), name=worker.name)
        self.workers.append(info)
        return info

    async def _run(self, info: WorkerInfo) -> None:
        w = info.worker
        while True:
            try:
                info.state = "busy"
                state = await w.work()
                info.consecutive_errors = 0
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - workers retry with backoff, never die
                info.errors += 1
                info.consecutive_errors += 1
                info.last_error, info.last_error_at = f"{type(e).__name__}: {e}", time.time()
                delay = backoff_delay(info.consecutive_errors)
                log.warning("worker %s: %s (retrying in %.1fs)", w.name, info.last_error, delay)
                info.state = "throttled"
                await asyncio.sleep(delay)
                continue
            if state is WorkerState.DONE:
                info.state = "done"
                return
            if state is WorkerState.IDLE:
                info.state = "idle"
                await w.wait_for_work()
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # asyncio.wait_for (3.11) can swallow a cancellation that races with the event
                # it waits for; never let a worker outlive its runner's stop().
                raise asyncio.CancelledError

    def list(self) -> list[dict[str, Any]]:
        return [w.to_json() for w in self.workers]

    async def stop(self) -> None:
        tasks = [w.task for w in self.workers if w.task is not None]
        while True:
            pending = [t for t in tasks if not t.done()]
            if not pending:
                break
            for t in pending:
                t.cancel()
            await asyncio.wait(pending, timeout=1.0)
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                t.result()


class Notify:
    """Wake a worker; ``wait(timeout)`` returns early if notified since the last wait."""

    def __init__(self) -> None:
        self._event: asyncio.Event | None = None

    def _ev(self) -> asyncio.Event:
        if self._event is None:
            self._event = asyncio.Event()
        return self._event

    def notify(self) -> None:
        self._ev().set()

    async def wait(self, timeout: float) -> None:
        ev = self._ev()
        try:
            await asyncio.wait_for(ev.wait(), timeout)
        except TimeoutError:
            pass
        ev.clear()
