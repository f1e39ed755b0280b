"""History checker for K2V under faults: no acknowledged write lost, no value nobody wrote.

Every write puts a unique value (``w<id>:...``), so a value read names the write that produced it.
A write made with the causality token of an earlier read *covers* every value that read saw: the
DVVS lets it supersede them. The rules, checked against every read:

1. Every value a read returns was written by some write that had started before the read ended
   ("no value appears that nobody wrote").
2. Every write acknowledged (2xx) before a read started is *accounted for* in that read: either
   its value is visible, or it is covered by a write that is itself accounted for (visible, or
   covered in turn...), or by an acknowledged delete. Unacknowledged writes (errors, timeouts)
   may or may not have happened; they only count once something shows they did.
3. No value covered (transitively) by a write acknowledged before a read started appears in that
   read: superseded and deleted values never come back.

``Workload`` drives a stream of blind writes and read-modify-writes (read, then write with its
token) through several K2V endpoints from background threads, recording everything in a
``History``; ``final_check`` then reads every key through every endpoint and checks the whole
history against those reads.

The rules are checked as each read is recorded (``History.violations``, used by the fault tests),
and again offline by ``check_reads``, which sorts what it finds into anomaly kinds: rule 2 in a
final read (after the heal) is a *lost write*, in any other read a *stale read* (a quorum read
through some node that misses a write acknowledged before it started: read-your-writes broken).
Rule 3 offline is ``check_resurrections``: a hint, not a proof (a write stored twice is legal).
"""

from __future__ import annotations

import base64
import heapq
import random
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from tests.support import K2VHttp
from tests.support.checker.anomaly import Anomaly

TOKEN = "X-Garage-Causality-Token"
MAX_MISSING = 1000  # offline rule 2 stops looking once it has found this many missing writes

Key = tuple[str, str]  # (partition key, sort key)


@dataclass(eq=False)
class Write:
    id: int
    key: Key
    value: bytes | None  # None: a delete
    token: str | None
    covers: frozenset[int]  # ids of the writes visible in the read whose token this write carries
    via: str
    start: float
    end: float | None = None
    status: str = "pending"  # ok | failed (4xx: certainly not applied) | unknown (5xx, error, timeout)
    detail: str = ""

    @property
    def acked(self) -> bool:
        return self.status == "ok"


@dataclass(eq=False)
class Read:
    key: Key
    via: str
    start: float
    end: float
    seen: frozenset[int]  # ids of the writes whose values are visible
    tombstone: bool  # a deleted value (null) or 404
    token: str | None
    phantoms: tuple[bytes, ...] = ()  # values that no write of this key produced
    final: bool = False  # one of the reads made after the heal, by ``final_check``


class History:
    """Thread-safe record of writes and reads, and the checks over them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.writes: dict[int, Write] = {}
        self.by_key: dict[Key, list[Write]] = defaultdict(list)
        self.reads: list[Read] = []
        self.failed_reads: list[tuple[Key, str, float, float, str]] = []  # key, via, start, end, detail
        self.violations: list[str] = []
        self.anomalies: list[Anomaly] = []  # found while recording (refused writes, failed final reads)
        self._next = 0
        self.t0 = time.monotonic()  # times in messages and records are seconds since this

    # ---- recording ------------------------------------------------------------------------------

    def begin_write(
        self,
        key: Key,
        via: str,
        token: str | None = None,
        covers: frozenset[int] = frozenset(),
        delete: bool = False,
        size: int = 16,
    ) -> Write:
        with self._lock:
            self._next += 1
            wid = self._next
            value = None if delete else f"w{wid}:".encode() + b"x" * max(0, size)
            w = Write(wid, key, value, token, covers, via, time.monotonic())
            self.writes[wid] = w
            self.by_key[key].append(w)
            return w

    def end_write(self, w: Write, status: str, detail: str = "") -> None:
        with self._lock:
            w.end = time.monotonic()
            w.status = status
            w.detail = detail

    def record_read(
        self, key: Key, via: str, start: float, values: list[bytes | None] | None, token: str | None, check: bool = True
    ) -> Read:
        """``values``: the values returned (None entries are tombstones), None for a 404."""
        end = time.monotonic()
        seen: set[int] = set()
        phantoms: list[bytes] = []
        tombstone = values is None
        with self._lock:
            for v in values or []:
                if v is None:
                    tombstone = True
                    continue
                wid = self._id_of(v)
                w = self.writes.get(wid) if wid is not None else None
                if w is None or w.key != key or w.value != v:
                    self.violations.append(f"read of {key} via {via} returned {v[:40]!r}, which nobody wrote")
                    phantoms.append(v)
                    continue
                if w.start > end:
                    self.violations.append(f"read of {key} via {via} returned w{wid} before it was written")
                    phantoms.append(v)
                seen.add(wid)
            r = Read(key, via, start, end, frozenset(seen), tombstone, token, tuple(phantoms))
            self.reads.append(r)
            if check:
                self.violations.extend(self._check_read(r))
        return r

    def value_id(self, value: bytes, key: Key, before: float) -> int | None:
        """The id of the write of ``key`` that produced ``value``, if it had started by ``before``."""
        wid = self._id_of(value)
        w = self.writes.get(wid) if wid is not None else None
        if w is None or w.key != key or w.value != value or w.start > before:
            return None
        return wid

    def read_failed(self, key: Key, via: str, start: float, detail: str) -> None:
        """A read that failed (error, timeout, 5xx): it proves nothing, but it is part of the history."""
        with self._lock:
            self.failed_reads.append((key, via, start, time.monotonic(), detail))

    @staticmethod
    def _id_of(value: bytes) -> int | None:
        head, sep, _ = value.partition(b":")
        if not sep or not head.startswith(b"w") or not head[1:].isdigit():
            return None
        return int(head[1:])

    # ---- checks ---------------------------------------------------------------------------------

    def closure(self, ids: set[int]) -> set[int]:
        """``ids`` and every write they (transitively) supersede through their tokens."""
        out = set(ids)
        todo = list(ids)
        while todo:
            for c in self.writes[todo.pop()].covers:
                if c not in out:
                    out.add(c)
                    todo.append(c)
        return out

    def accounted(self, r: Read) -> set[int]:
        """Writes of ``r.key`` that ``r`` accounts for: visible, or (transitively) superseded."""
        seeds = set(r.seen) | {w.id for w in self.by_key[r.key] if w.value is None and w.acked}
        return self.closure(seeds)

    def _check_read(self, r: Read) -> list[str]:
        return self._missing(r) + self._resurrected(r)

    def _acked_before(self, r: Read) -> list[Write]:
        return [w for w in self.by_key[r.key] if w.acked and w.end is not None and w.end < r.start]

    def _missing(self, r: Read) -> list[str]:
        """Rule 2: acknowledged writes that ``r`` does not account for."""
        acc = self.accounted(r)
        return [
            f"acknowledged write w{w.id} to {r.key} (via {w.via}, acked at {w.end - self.t0:.3f}) is missing from the "
            f"read via {r.via} started at {r.start - self.t0:.3f}, which saw {sorted(r.seen)}"
            for w in self._acked_before(r)
            if w.value is not None and w.id not in acc
        ]

    def _resurrected(self, r: Read) -> list[str]:
        """Rule 3: a value superseded by an acknowledged write never comes back (e.g. a deleted value
        resurrected by a replica that missed the delete after its tombstone was collected)."""
        dead = self.closure({c for w in self._acked_before(r) for c in w.covers})
        return [
            f"read of {r.key} via {r.via} started at {r.start - self.t0:.3f} returned w{wid}, superseded by a write "
            f"acknowledged before"
            for wid in sorted(r.seen & dead)
        ]

    def _dead_at(self) -> dict[int, float]:
        """For every write covered (transitively) by an acknowledged one: when the first was acked.

        Acknowledged writes are taken in the order of their acknowledgement, and a walk down the
        covers stops at writes already dead (what they cover died no later), so every write is
        visited once.
        """
        dead: dict[int, float] = {}
        for x in sorted((w for w in self.writes.values() if w.acked and w.end is not None), key=lambda w: w.end):
            todo = [c for c in x.covers if c not in dead]
            while todo:
                c = todo.pop()
                if c in dead:
                    continue
                dead[c] = x.end  # type: ignore[assignment]
                todo.extend(d for d in self.writes[c].covers if d not in dead)
        return dead

    def _reach(self, seeds: set[int], floor: int) -> set[int]:
        """``closure(seeds)`` restricted to ids >= ``floor`` (a write only covers older ids)."""
        out = {i for i in seeds if i >= floor}
        todo = list(out)
        while todo:
            for c in self.writes[todo.pop()].covers:
                if c >= floor and c not in out:
                    out.add(c)
                    todo.append(c)
        return out

    def _sweep(self) -> list[tuple[Read, list[Write], list[int]]]:
        """Rules 2 and 3 for every read at once, linear in the history rather than quadratic.

        Per read: the acknowledged writes it fails to account for, and the values it shows that
        were already dead when it started. A write dies when the first acknowledged write whose
        token covers it (transitively) is acknowledged; a read only needs to be checked against
        the acknowledged writes still alive when it started: a dead one is covered by one of
        those (or by a dead one, covered in turn...), so accounting for the live ones accounts
        for it. Long chaos runs have hundreds of thousands of reads and writes.
        """
        dead_at = self._dead_at()
        inf = float("inf")
        per_key: dict[Key, list[Read]] = defaultdict(list)
        for r in self.reads:
            per_key[r.key].append(r)
        out = []
        found = 0
        for key, reads in per_key.items():
            writes = self.by_key[key]
            acked = sorted(
                (w for w in writes if w.acked and w.end is not None and w.value is not None), key=lambda w: w.end
            )
            deletes = {w.id for w in writes if w.value is None and w.acked}
            live: list[tuple[float, int]] = []  # heap of (dies at, id)
            i = 0
            for r in sorted(reads, key=lambda r: r.start):
                while i < len(acked) and acked[i].end < r.start:  # type: ignore[operator]
                    heapq.heappush(live, (dead_at.get(acked[i].id, inf), acked[i].id))
                    i += 1
                while live and live[0][0] < r.start:
                    heapq.heappop(live)
                seeds = set(r.seen) | deletes
                need = [wid for _, wid in live if wid not in seeds]
                missing: list[Write] = []
                if need and found < MAX_MISSING:  # past that, a broken history would take forever
                    reach = self._reach(seeds, min(need))
                    missing = [self.writes[wid] for wid in sorted(need) if wid not in reach]
                    found += len(missing)
                dead = [wid for wid in sorted(r.seen) if dead_at.get(wid, inf) < r.start]
                out.append((r, missing, dead))
        return out

    def check_reads(self) -> list[Anomaly]:
        """Every read against the whole history (offline: the order of recording does not matter).

        Rule 2 names, per read, the acknowledged writes it misses that no other acknowledged
        write it misses covers (the others follow)."""
        out: list[Anomaly] = list(self.anomalies)
        for r in list(self.reads):
            out += [
                Anomaly("phantom", f"read of {r.key} via {r.via} returned {v[:40]!r}, which no write made")
                for v in r.phantoms
            ]
        for r, missing, _ in self._sweep():
            kind = "lost-write" if r.final else "stale-read"
            out += [
                Anomaly(
                    kind,
                    ("final " if r.final else "")
                    + f"acknowledged write w{w.id} to {r.key} (via {w.via}, acked at {w.end - self.t0:.3f}) is "
                    f"missing from the read via {r.via} started at {r.start - self.t0:.3f}, which saw {sorted(r.seen)}",
                )
                for w in missing
            ]
        return out

    def check_resurrections(self) -> list[Anomaly]:
        """Rule 3 offline: reads that show a value covered by a write acknowledged before.

        Not a proof of a bug, so ``check_reads`` leaves it out: a write can legitimately be
        stored twice (its coordinator applied it, failed to replicate it, and the next storage
        node applied it again, under a new dot). A read that saw one copy gives a token that
        covers that copy only; the other can surface later, next to the newer values. What such
        a copy cannot do is replace them, and that (a read missing an acknowledged write) is
        ``stale-read`` / ``lost-write``. A chaos run reports these as notes.
        """
        return [
            Anomaly(
                "resurrected",
                f"read of {r.key} via {r.via} started at {r.start - self.t0:.3f} returned w{wid}, superseded by a "
                f"write acknowledged before",
            )
            for r, _, dead in self._sweep()
            for wid in dead
        ]

    def records(self) -> list[dict[str, Any]]:
        """The writes and reads as JSON-ready records (times in seconds since ``t0``)."""
        t0 = self.t0
        with self._lock:
            out: list[dict[str, Any]] = [
                {
                    "type": "delete" if w.value is None else "write",
                    "key": list(w.key),
                    "id": w.id,
                    "value": None if w.value is None else w.value.decode(errors="replace"),
                    "token": w.token,
                    "covers": sorted(w.covers),
                    "via": w.via,
                    "invoke": round(w.start - t0, 6),
                    "complete": None if w.end is None else round(w.end - t0, 6),
                    "status": w.status,
                    "detail": w.detail,
                }
                for w in self.writes.values()
            ]
            out += [
                {
                    "type": "read",
                    "key": list(r.key),
                    "via": r.via,
                    "invoke": round(r.start - t0, 6),
                    "complete": round(r.end - t0, 6),
                    "status": "ok",
                    "seen": sorted(r.seen),
                    "tombstone": r.tombstone,
                    "token": r.token,
                    "phantoms": [v.decode(errors="replace") for v in r.phantoms],
                    "final": r.final,
                }
                for r in self.reads
            ]
            out += [
                {
                    "type": "read",
                    "key": list(key),
                    "via": via,
                    "invoke": round(start - t0, 6),
                    "complete": round(end - t0, 6),
                    "status": "unknown",
                    "detail": detail,
                }
                for key, via, start, end, detail in self.failed_reads
            ]
            return out

    def stats(self) -> dict[str, int]:
        with self._lock:
            out: dict[str, int] = defaultdict(int)
            for w in self.writes.values():
                out[w.status] += 1
            out["reads"] = len(self.reads)
            return dict(out)

    def acked_since(self, t: float, via: str | None = None) -> int:
        """Writes acknowledged after ``t`` (monotonic), through ``via`` if given."""
        with self._lock:
            return sum(
                1
                for w in self.writes.values()
                if w.acked and w.end is not None and w.end > t and (via is None or w.via == via)
            )

    def failures(self, limit: int = 5) -> list[str]:
        with self._lock:
            bad = [w for w in self.writes.values() if w.status in ("failed", "unknown")]
            return [f"w{w.id} via {w.via}: {w.status} {w.detail}" for w in bad[:limit]]


# ---- the K2V calls --------------------------------------------------------------------------------


def _item_path(bucket: str, key: Key) -> tuple[str, str]:
    return f"/{bucket}/{quote(key[0], safe='')}", f"sort_key={quote(key[1], safe='')}"


def read_item(
    history: History, client: K2VHttp, via: str, bucket: str, key: Key, timeout: float = 10.0, check: bool = True
) -> Read | None:
    """ReadItem (JSON) recorded in ``history``; None if the read failed (error, 5xx)."""
    path, query = _item_path(bucket, key)
    start = time.monotonic()
    try:
        resp = client.request("GET", path, query, headers={"Accept": "application/json"}, timeout=timeout)
    except Exception as e:  # noqa: BLE001 - a failed read proves nothing
        history.read_failed(key, via, start, f"{type(e).__name__}: {e}")
        return None
    if resp.status == 404:
        return history.record_read(key, via, start, None, None, check)
    if resp.status != 200:
        history.read_failed(key, via, start, f"{resp.status} {resp.body[:200]!r}")
        if resp.status < 500:
            history.violations.append(f"read of {key} via {via}: unexpected {resp.status} {resp.body[:200]!r}")
            history.anomalies.append(Anomaly("refused", f"read of {key} via {via}: {resp.status} {resp.body[:200]!r}"))
        return None
    values = [None if v is None else base64.b64decode(v) for v in resp.json()]
    return history.record_read(key, via, start, values, resp.header(TOKEN), check)


def write_item(
    history: History,
    client: K2VHttp,
    via: str,
    bucket: str,
    key: Key,
    read: Read | None = None,
    delete: bool = False,
    timeout: float = 10.0,
) -> Write:
    """InsertItem (or DeleteItem), with the token of ``read`` if given, recorded in ``history``."""
    token = read.token if read is not None else None
    w = history.begin_write(key, via, token, read.seen if read is not None else frozenset(), delete)
    path, query = _item_path(bucket, key)
    headers = {TOKEN: token} if token else {}
    try:
        resp = client.request(
            "DELETE" if delete else "PUT", path, query, body=w.value or b"", headers=headers, timeout=timeout
        )
    except Exception as e:  # noqa: BLE001 - the write may or may not have happened
        history.end_write(w, "unknown", f"{type(e).__name__}: {e}")
        return w
    if 200 <= resp.status < 300:
        history.end_write(w, "ok")
    elif resp.status >= 500:
        history.end_write(w, "unknown", f"{resp.status} {resp.body[:200]!r}")
    else:
        history.end_write(w, "failed", f"{resp.status} {resp.body[:200]!r}")
        history.violations.append(f"write w{w.id} via {via} refused: {resp.status} {resp.body[:200]!r}")
        history.anomalies.append(Anomaly("refused", f"write w{w.id} via {via}: {resp.status} {resp.body[:200]!r}"))
    return w


# ---- a background workload -----------------------------------------------------------------------


@dataclass
class Workload:
    """Threads that write through the given endpoints until stopped.

    Each thread owns a few keys of its own and shares a few with the others (each key in its own
    partition key, so they land on different partitions); half its operations
    are blind writes, half read-modify-writes with the read's token. ``endpoints`` can be changed
    while running (e.g. to stop sending to a node that is about to be killed).
    """

    history: History
    clients: dict[str, K2VHttp]
    bucket: str
    threads: int = 3
    keys_per_thread: int = 4
    shared_keys: int = 3
    pk: str = "load"
    timeout: float = 10.0
    pause: float = 0.0
    seed: int = 0
    check: bool = True  # check each read as it is recorded (else only offline, by ``check_reads``)
    endpoints: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def own_keys(self, t: int) -> list[Key]:
        """Thread ``t``'s keys: each in its own partition key, so they spread over the ring."""
        return [(f"{self.pk}-t{t}-{k}", f"k{k}") for k in range(self.keys_per_thread)]

    def keys(self) -> list[Key]:
        own = [key for t in range(self.threads) for key in self.own_keys(t)]
        return own + [(f"{self.pk}-shared-{k}", "shared") for k in range(self.shared_keys)]

    def start(self) -> Workload:
        if not self.endpoints:
            self.endpoints = list(self.clients)
        for t in range(self.threads):
            th = threading.Thread(target=self._run, args=(t,), name=f"workload-{t}", daemon=True)
            th.start()
            self._workers.append(th)
        return self

    def stop(self) -> None:
        self._stop.set()
        for th in self._workers:
            th.join(timeout=self.timeout * 3)

    def __enter__(self) -> Workload:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _run(self, t: int) -> None:
        rng = random.Random(self.seed * 1000 + t)
        mine = self.own_keys(t)
        shared = [(f"{self.pk}-shared-{k}", "shared") for k in range(self.shared_keys)]
        i = 0
        while not self._stop.is_set():
            i += 1
            via = self.endpoints[(t + i) % len(self.endpoints)]
            client = self.clients[via]
            key = rng.choice(shared) if shared and rng.random() < 0.3 else rng.choice(mine)
            try:
                if rng.random() < 0.5:
                    write_item(self.history, client, via, self.bucket, key, timeout=self.timeout)
                else:
                    r = read_item(self.history, client, via, self.bucket, key, self.timeout, self.check)
                    if r is not None:
                        write_item(self.history, client, via, self.bucket, key, read=r, timeout=self.timeout)
            except Exception as e:  # noqa: BLE001 - reported by the test
                self.errors.append(f"{type(e).__name__}: {e}")
            if self.pause:
                self._stop.wait(self.pause)


def final_check(
    history: History,
    clients: dict[str, K2VHttp],
    bucket: str,
    keys: list[Key] | None = None,
    timeout: float = 10.0,
    patience: float = 0.0,
) -> dict[Key, dict[str, frozenset[int]]]:
    """Read every key through every endpoint; all must succeed. Returns what each saw, per key.

    ``patience``: seconds during which a failed read is tried again (a node that has just come
    back may answer 503 for a moment); the default, 0, is one attempt.
    """
    out: dict[Key, dict[str, frozenset[int]]] = {}
    for key in keys if keys is not None else list(history.by_key):
        out[key] = {}
        for via, client in clients.items():
            deadline = time.monotonic() + patience
            r = read_item(history, client, via, bucket, key, timeout=timeout)
            while r is None and time.monotonic() < deadline:
                time.sleep(0.5)
                r = read_item(history, client, via, bucket, key, timeout=timeout)
            if r is None:
                history.violations.append(f"final read of {key} via {via} failed")
                history.anomalies.append(Anomaly("final-read-failed", f"final read of {key} via {via} failed"))
                continue
            r.final = True
            out[key][via] = r.seen
    return out
