"""Set checker: InsertBatch of distinct keys, read back complete.

Every batch inserts keys never used before, spread over a few partition keys (a batch is not
atomic across partitions). A *set read* reads those partitions whole, page by page (ReadBatch
with a small ``limit``, so paging is exercised). Against every set read:

- every key of a batch acknowledged (204) before the read started is present (``set-incomplete``;
  in a final read, after the heal, the key is lost);
- every key present belongs to a batch that had started before the read ended (``set-phantom``).

Batches that failed or timed out may or may not appear, partly or wholly: they prove nothing.
"""

from __future__ import annotations

import base64
import bisect
import random
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from tests.support import K2VHttp
from tests.support.checker.anomaly import Anomaly

Key = tuple[str, str]


@dataclass(eq=False)
class Batch:
    id: int
    keys: tuple[Key, ...]
    via: str
    start: float
    end: float | None = None
    status: str = "pending"  # ok | failed (4xx) | unknown (5xx, error, timeout)
    detail: str = ""


@dataclass(eq=False)
class SetRead:
    via: str
    pks: tuple[str, ...]
    start: float
    end: float
    found: frozenset[Key]
    pages: int = 1
    final: bool = False


class SetHistory:
    """Thread-safe record of batches and set reads, and the set checks over them."""

    def __init__(self, t0: float | None = None) -> None:
        self.t0 = time.monotonic() if t0 is None else t0  # times in messages and records: since this
        self._lock = threading.Lock()
        self.batches: list[Batch] = []
        self.reads: list[SetRead] = []
        self.failed_reads: list[tuple[str, tuple[str, ...], float, float, str]] = []  # via, pks, start, end, detail
        self.anomalies: list[Anomaly] = []  # found while recording (refused batches, failed final reads)

    def begin_batch(self, keys: list[Key], via: str) -> Batch:
        with self._lock:
            b = Batch(len(self.batches) + 1, tuple(keys), via, time.monotonic())
            self.batches.append(b)
            return b

    def end_batch(self, b: Batch, status: str, detail: str = "") -> None:
        with self._lock:
            b.end, b.status, b.detail = time.monotonic(), status, detail

    def add_read(self, r: SetRead) -> None:
        with self._lock:
            self.reads.append(r)

    def read_failed(self, via: str, pks: list[str], start: float, detail: str) -> None:
        with self._lock:
            self.failed_reads.append((via, tuple(pks), start, time.monotonic(), detail))

    def check(self) -> list[Anomaly]:
        """Every set read against the batches (linear in the keys a read found, for long runs)."""
        out = list(self.anomalies)
        batch_of = {k: b for b in self.batches for k in b.keys}
        inf = float("inf")
        ack_times: dict[str, list[float]] = defaultdict(list)  # per partition key, sorted
        for t, k in sorted((_acked_at(b), k) for b in self.batches for k in b.keys):
            if t < inf:
                ack_times[k[0]].append(t)
        for r in list(self.reads):
            what = "final set read" if r.final else "set read"
            # Keys acknowledged before the read started, and how many of them it found.
            due = sum(bisect.bisect_left(ack_times[pk], r.start) for pk in r.pks)
            have = sum(1 for k in r.found if k[0] in r.pks and _acked_at(batch_of.get(k)) < r.start)
            if have < due:
                missing = sorted(
                    k for k, b in batch_of.items() if k[0] in r.pks and _acked_at(b) < r.start and k not in r.found
                )
                first = batch_of[missing[0]]
                out.append(
                    Anomaly(
                        "set-incomplete",
                        f"{what} via {r.via} started at {r.start - self.t0:.3f} ({r.pages} pages) misses "
                        f"{len(missing)} acknowledged keys, e.g. {missing[0]} of batch b{first.id} acked at "
                        f"{first.end - self.t0:.3f}",
                    )
                )
            phantoms = sorted(
                k for k in r.found if k[0] not in r.pks or (batch_of[k].start if k in batch_of else inf) > r.end
            )
            if phantoms:
                out.append(
                    Anomaly(
                        "set-phantom",
                        f"{what} via {r.via} returned {len(phantoms)} keys never inserted: {phantoms[:3]}",
                    )
                )
        return out

    def records(self) -> list[dict[str, Any]]:
        t0 = self.t0
        with self._lock:
            out: list[dict[str, Any]] = [
                {
                    "type": "insert_batch",
                    "id": b.id,
                    "keys": [list(k) for k in b.keys],
                    "via": b.via,
                    "invoke": round(b.start - t0, 6),
                    "complete": None if b.end is None else round(b.end - t0, 6),
                    "status": b.status,
                    "detail": b.detail,
                }
                for b in self.batches
            ]
            out += [
                {
                    "type": "set_read",
                    "via": r.via,
                    "pks": list(r.pks),
                    "invoke": round(r.start - t0, 6),
                    "complete": round(r.end - t0, 6),
                    "status": "ok",
                    "found": len(r.found),
                    "pages": r.pages,
                    "final": r.final,
                }
                for r in self.reads
            ]
            out += [
                {
                    "type": "set_read",
                    "via": via,
                    "pks": list(pks),
                    "invoke": round(start - t0, 6),
                    "complete": round(end - t0, 6),
                    "status": "unknown",
                    "detail": detail,
                }
                for via, pks, start, end, detail in self.failed_reads
            ]
            return out


def _acked_at(b: Batch | None) -> float:
    return b.end if b is not None and b.status == "ok" and b.end is not None else float("inf")


def insert_batch(sets: SetHistory, client: K2VHttp, via: str, bucket: str, keys: list[Key], timeout: float) -> Batch:
    """InsertBatch of ``keys`` (each value is its own sort key), recorded in ``sets``."""
    b = sets.begin_batch(keys, via)
    body = [{"pk": pk, "sk": sk, "ct": None, "v": base64.b64encode(sk.encode()).decode()} for pk, sk in keys]
    try:
        resp = client.json("POST", f"/{bucket}", body, timeout=timeout)
    except Exception as e:  # noqa: BLE001 - the batch may or may not have happened
        sets.end_batch(b, "unknown", f"{type(e).__name__}: {e}")
        return b
    if 200 <= resp.status < 300:
        sets.end_batch(b, "ok")
    elif resp.status >= 500:
        sets.end_batch(b, "unknown", f"{resp.status} {resp.body[:200]!r}")
    else:
        sets.end_batch(b, "failed", f"{resp.status} {resp.body[:200]!r}")
        sets.anomalies.append(Anomaly("refused", f"batch b{b.id} via {via}: {resp.status} {resp.body[:200]!r}"))
    return b


def read_set(
    sets: SetHistory,
    client: K2VHttp,
    via: str,
    bucket: str,
    pks: list[str],
    page: int = 25,
    timeout: float = 10.0,
    final: bool = False,
) -> SetRead | None:
    """ReadBatch of the whole partitions ``pks``, ``page`` items at a time; None if any page failed."""
    start = time.monotonic()
    found: set[Key] = set()
    pages = 0
    cursors: dict[str, str | None] = {pk: None for pk in pks}
    try:
        while cursors:
            queries = [{"partitionKey": pk, "limit": page, "start": cur} for pk, cur in cursors.items()]
            resp = client.json("POST", f"/{bucket}", queries, query="search", timeout=timeout)
            if resp.status != 200:
                sets.read_failed(via, pks, start, f"{resp.status} {resp.body[:200]!r}")
                if resp.status < 500:
                    sets.anomalies.append(Anomaly("refused", f"set read via {via}: {resp.status} {resp.body[:200]!r}"))
                return None
            pages += 1
            for q in resp.json():
                pk = q["partitionKey"]
                found.update((pk, it["sk"]) for it in q["items"] if any(v is not None for v in it["v"]))
                if q.get("more"):
                    cursors[pk] = q["nextStart"]
                else:
                    del cursors[pk]
    except Exception as e:  # noqa: BLE001 - a failed read proves nothing
        sets.read_failed(via, pks, start, f"{type(e).__name__}: {e}")
        return None
    r = SetRead(via, tuple(pks), start, time.monotonic(), frozenset(found), pages, final)
    sets.add_read(r)
    return r


@dataclass
class SetWorkload:
    """One thread: InsertBatch of fresh keys through rotating endpoints, a set read now and then."""

    sets: SetHistory
    clients: dict[str, K2VHttp]
    bucket: str
    pks: tuple[str, ...] = ("set-0", "set-1", "set-2")
    batch: int = 8
    seed: int = 0
    timeout: float = 10.0
    pause: float = 0.05
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    errors: list[str] = field(default_factory=list)

    def start(self) -> SetWorkload:
        self._thread = threading.Thread(target=self._run, name="set-workload", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout * 3)

    def _run(self) -> None:
        rng = random.Random(self.seed)
        vias = sorted(self.clients)
        n = 0
        while not self._stop.is_set():
            n += 1
            via = vias[n % len(vias)]
            try:
                if n % 5 == 0:
                    read_set(self.sets, self.clients[via], via, self.bucket, list(self.pks), timeout=self.timeout)
                else:
                    keys = [(rng.choice(self.pks), f"e{n:06d}-{j}") for j in range(self.batch)]
                    insert_batch(self.sets, self.clients[via], via, self.bucket, keys, self.timeout)
            except Exception as e:  # noqa: BLE001 - reported by the run
                self.errors.append(f"{type(e).__name__}: {e}")
            self._stop.wait(self.pause)
