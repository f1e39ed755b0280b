"""Watch completeness: clients looping on PollRange and PollItem see every item's final state.

Each watched item has a single writer (a ``WatchWriter`` thread; several run at once on
different items of the partition), which reads the item and writes it back with the read's
causality token. Its values are ``History`` writes, whose ids grow with every attempt; a write
*covers* the values its token's read showed (``History.closure``: and what those covered,
transitively).

Watchers record every answer (``Observation``): a ``RangeWatcher`` loops on PollRange with the
last ``seenMarker`` it got, an ``ItemWatcher`` loops on PollItem with the last causality token.
Polls that fail or time out are retried with the same marker or token. The checks:

- ``watch-phantom``: every value observed was written to that item by a write that had started;
- ``watch-backwards``: an answer never shows a state whose values are all covered by values the
  watcher was shown earlier (the watcher went back to an older state);
- ``watch-missed-final``: after the writer stopped and the cluster healed, every acknowledged
  value of the item's final state (read through every node, all agreeing) was observed by each
  watcher;
- ``watch-missed-change``: for every acknowledged write, each watcher observed that value or a
  later one (a larger id: one written after it).

What is deliberately *not* required, because K2V legitimately does it:

- intermediate states may be skipped (several writes between two polls come back as one answer),
  so missing no change means "after any write, the watcher eventually sees it or something
  newer", which the last two checks establish;
- a write that failed or timed out may still land later, on one replica, as a sibling; a PollRange
  answer may then show just the replica's new values without the item's others, and a token or
  marker may already cover such a value (its timestamp is older than ones the watcher saw), so the
  watcher may never be shown it. Such values are neither required in the final state nor taken as
  "older" (they are concurrent), hence the causal definition of going back rather than "a
  smaller id";
- a write can be stored twice (its coordinator applied it but could not replicate it, and the
  next storage node applied it again under another dot), so a value the watcher saw superseded
  may surface once more *next to* the newer values: going back means a state made only of
  superseded values.
"""

from __future__ import annotations

import base64
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from tests.support import K2VHttp
from tests.support.checker.anomaly import Anomaly
from tests.support.checker.history import TOKEN, History, Key, read_item, write_item


@dataclass(eq=False)
class Observation:
    watcher: str
    key: Key
    start: float
    end: float
    ids: frozenset[int]  # the writes whose values the answer showed
    phantoms: tuple[bytes, ...] = ()
    source: str = "poll"  # poll | read (a watcher's initial ReadItem)

    @property
    def version(self) -> int:
        return max(self.ids, default=0)


@dataclass(eq=False)
class PollCall:
    watcher: str
    via: str
    start: float
    end: float
    status: str  # ok | not-modified | error
    detail: str = ""  # the marker or token sent, or the error


class WatchHistory:
    """Thread-safe record of what each watcher saw, and the watch checks."""

    def __init__(self, history: History) -> None:
        self.history = history
        self._lock = threading.Lock()
        self.observations: list[Observation] = []
        self.polls: list[PollCall] = []
        self.watchers: set[str] = set()
        self.keys: set[Key] = set()
        self.anomalies: list[Anomaly] = []  # found while recording (4xx answers)

    def observe(self, watcher: str, key: Key, start: float, values: list[bytes | None], source: str = "poll") -> None:
        end = time.monotonic()
        ids: set[int] = set()
        phantoms: list[bytes] = []
        for v in values:
            if v is None:
                continue
            wid = self.history.value_id(v, key, end)
            if wid is None:
                phantoms.append(v)
            else:
                ids.add(wid)
        with self._lock:
            self.observations.append(Observation(watcher, key, start, end, frozenset(ids), tuple(phantoms), source))

    def poll(self, watcher: str, via: str, start: float, status: str, detail: str = "") -> None:
        with self._lock:
            self.polls.append(PollCall(watcher, via, start, time.monotonic(), status, detail))

    def seen_ids(self) -> dict[tuple[str, Key], set[int]]:
        """Per (watcher, item), every write id the watcher was shown."""
        out: dict[tuple[str, Key], set[int]] = {}
        with self._lock:
            for o in self.observations:
                out.setdefault((o.watcher, o.key), set()).update(o.ids)
        return out

    def _acked(self, ids: frozenset[int]) -> set[int]:
        return {i for i in ids if self.history.writes[i].acked}

    def caught_up(self, final: dict[Key, frozenset[int]]) -> bool:
        """Every watcher has been shown every acknowledged value of every final state."""
        seen = self.seen_ids()
        return all(self._acked(final[k]) <= seen.get((w, k), set()) for w in self.watchers for k in final)

    def check(self, final: dict[Key, frozenset[int]]) -> list[Anomaly]:
        """``final``: the write ids of each watched item's final state, after the heal."""
        out = list(self.anomalies)
        seq: dict[tuple[str, Key], list[Observation]] = {}
        with self._lock:
            for o in self.observations:
                seq.setdefault((o.watcher, o.key), []).append(o)
        for o in (o for obs in seq.values() for o in obs):
            if o.phantoms or any(self.history.writes[i].key != o.key for i in o.ids):
                out.append(Anomaly("watch-phantom", f"{o.watcher} saw {o.key} = {o.phantoms[:2]}, never written"))
        for w in sorted(self.watchers):
            for key in sorted(final):
                obs = seq.get((w, key), [])
                out += self._backwards(w, key, obs)
                seen = {i for o in obs for i in o.ids}
                unseen = sorted(self._acked(final[key]) - seen)
                if unseen:
                    out.append(
                        Anomaly(
                            "watch-missed-final",
                            f"{w} was never shown w{unseen[0]} of the final state of {key} {sorted(final[key])} "
                            f"({len(obs)} answers, the last one {sorted(obs[-1].ids) if obs else None})",
                        )
                    )
                best = max(seen, default=0)
                missed = [x for x in self.history.by_key[key] if x.acked and x.id > best]
                if missed:
                    out.append(
                        Anomaly(
                            "watch-missed-change",
                            f"{w} never saw {key} at w{missed[0].id} (acked at "
                            f"{missed[0].end - self.history.t0:.3f}) or later; {len(missed)} acknowledged writes "
                            f"beyond w{best}",
                        )
                    )
        return out

    def _backwards(self, watcher: str, key: Key, obs: list[Observation]) -> list[Anomaly]:
        out = []
        dead: set[int] = set()  # values superseded by one the watcher was shown
        for o in obs:
            if o.ids and o.ids <= dead:
                out.append(
                    Anomaly(
                        "watch-backwards",
                        f"{watcher}: the answer at {o.end - self.history.t0:.3f} shows {key} = "
                        f"{sorted(o.ids)}, all superseded by values it was shown before",
                    )
                )
            # ``dead`` is closed under covers: the walk stops at what it already holds.
            todo = [c for i in o.ids for c in self.history.writes[i].covers if c not in dead]
            while todo:
                c = todo.pop()
                if c not in dead:
                    dead.add(c)
                    todo.extend(d for d in self.history.writes[c].covers if d not in dead)
        return out

    def records(self) -> list[dict[str, Any]]:
        t0 = self.history.t0
        with self._lock:
            out: list[dict[str, Any]] = [
                {
                    "type": "observation",
                    "watcher": o.watcher,
                    "key": list(o.key),
                    "source": o.source,
                    "invoke": round(o.start - t0, 6),
                    "complete": round(o.end - t0, 6),
                    "status": "ok",
                    "ids": sorted(o.ids),
                    "version": o.version,
                    "phantoms": [v.decode(errors="replace") for v in o.phantoms],
                }
                for o in self.observations
            ]
            out += [
                {
                    "type": "poll",
                    "watcher": p.watcher,
                    "via": p.via,
                    "invoke": round(p.start - t0, 6),
                    "complete": round(p.end - t0, 6),
                    "status": p.status,
                    "detail": p.detail,
                }
                for p in self.polls
            ]
            return out


def _values(raw: list[str | None]) -> list[bytes | None]:
    return [None if v is None else base64.b64decode(v) for v in raw]


# ---- the threads -----------------------------------------------------------------------------------


@dataclass
class _Loop:
    """A daemon thread running ``_run`` until stopped."""

    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _threads: list[threading.Thread] = field(default_factory=list, init=False)
    errors: list[str] = field(default_factory=list, init=False)

    def _spawn(self, name: str, target: Any, *args: Any) -> None:
        def guarded() -> None:
            try:
                target(*args)
            except Exception as e:  # noqa: BLE001 - reported by the run
                self.errors.append(f"{name}: {type(e).__name__}: {e}")

        th = threading.Thread(target=guarded, name=name, daemon=True)
        th.start()
        self._threads.append(th)

    def stop(self) -> None:
        self._stop.set()
        for th in self._threads:
            th.join(timeout=40)


@dataclass
class WatchWriter(_Loop):
    """The writers of the watched items: read, then write back with the read's token.

    ``threads`` writers run at once, each the single writer of its own share of the items (so
    the partition sees concurrent writes, as a real one does, while every item keeps one writer).
    """

    history: History = None  # type: ignore[assignment]
    clients: dict[str, K2VHttp] = field(default_factory=dict)
    bucket: str = ""
    keys: list[Key] = field(default_factory=list)
    threads: int = 1
    seed: int = 0
    timeout: float = 10.0
    pause: float = 0.05

    def seed_items(self) -> None:
        """One acknowledged write per item, so watchers start from a state and PollItem has a token."""
        via, client = next(iter(self.clients.items()))
        for key in self.keys:
            w = write_item(self.history, client, via, self.bucket, key, timeout=self.timeout)
            assert w.acked, w.detail

    def start(self) -> WatchWriter:
        for t in range(self.threads):
            self._spawn(f"watch-writer-{t}", self._run, t)
        return self

    def _run(self, t: int) -> None:
        rng = random.Random(self.seed * 1000 + 500 + t)
        vias = sorted(self.clients)
        mine = self.keys[t :: self.threads]
        while not self._stop.is_set():
            key = rng.choice(mine)
            via = rng.choice(vias)
            r = read_item(self.history, self.clients[via], via, self.bucket, key, self.timeout, False)
            if r is not None:
                via = rng.choice(vias)
                write_item(self.history, self.clients[via], via, self.bucket, key, read=r, timeout=self.timeout)
            self._stop.wait(self.pause if rng.random() < 0.7 else 0.0)


@dataclass
class RangeWatcher(_Loop):
    """Loops on PollRange over the watched partition through one node, with the last seenMarker."""

    watch: WatchHistory = None  # type: ignore[assignment]
    client: K2VHttp = None  # type: ignore[assignment]
    via: str = ""
    bucket: str = ""
    pk: str = ""
    poll_timeout: int = 3

    @property
    def name(self) -> str:
        return f"range@{self.via}"

    def start(self) -> RangeWatcher:
        self.watch.watchers.add(self.name)
        self._spawn(self.name, self._run)
        return self

    def _run(self) -> None:
        marker: str | None = None
        while not self._stop.is_set():
            body: dict[str, Any] = {"timeout": self.poll_timeout}
            if marker is not None:
                body["seenMarker"] = marker
            start = time.monotonic()
            try:
                resp = self.client.json(
                    "POST", f"/{self.bucket}/{quote(self.pk, safe='')}", body, "poll_range", timeout=30
                )
            except Exception as e:  # noqa: BLE001 - retried with the same marker
                self.watch.poll(self.name, self.via, start, "error", f"{type(e).__name__}: {e}")
                self._stop.wait(0.3)
                continue
            if resp.status == 304:
                self.watch.poll(self.name, self.via, start, "not-modified", marker or "")
                continue
            if resp.status != 200:
                self.watch.poll(self.name, self.via, start, "error", f"{resp.status} {resp.body[:200]!r}")
                if resp.status < 500:
                    self.watch.anomalies.append(Anomaly("refused", f"{self.name}: {resp.status} {resp.body[:200]!r}"))
                self._stop.wait(0.3)
                continue
            data = resp.json()
            self.watch.poll(self.name, self.via, start, "ok", f"{len(data['items'])} items")
            for it in data["items"]:
                self.watch.observe(self.name, (self.pk, it["sk"]), start, _values(it["v"]))
            marker = data["seenMarker"]


@dataclass
class ItemWatcher(_Loop):
    """Loops on PollItem for each watched item through one node, with the last causality token."""

    watch: WatchHistory = None  # type: ignore[assignment]
    client: K2VHttp = None  # type: ignore[assignment]
    via: str = ""
    bucket: str = ""
    keys: list[Key] = field(default_factory=list)
    poll_timeout: int = 3

    @property
    def name(self) -> str:
        return f"item@{self.via}"

    def start(self) -> ItemWatcher:
        self.watch.watchers.add(self.name)
        for key in self.keys:
            self._spawn(f"{self.name}:{key[1]}", self._run, key)
        return self

    def _request(self, key: Key, token: str | None) -> Any:
        query = f"sort_key={quote(key[1], safe='')}"
        if token is not None:
            query += f"&causality_token={quote(token, safe='')}&timeout={self.poll_timeout}"
        path = f"/{self.bucket}/{quote(key[0], safe='')}"
        return self.client.request("GET", path, query, headers={"Accept": "application/json"}, timeout=30)

    def _run(self, key: Key) -> None:
        token: str | None = None  # None: first a ReadItem, for the current state and its token
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                resp = self._request(key, token)
            except Exception as e:  # noqa: BLE001 - retried with the same token
                self.watch.poll(self.name, self.via, start, "error", f"{type(e).__name__}: {e}")
                self._stop.wait(0.3)
                continue
            if resp.status == 304 and token is not None:
                self.watch.poll(self.name, self.via, start, "not-modified", token)
                continue
            if resp.status != 200:
                self.watch.poll(self.name, self.via, start, "error", f"{resp.status} {resp.body[:200]!r}")
                if resp.status < 500:
                    self.watch.anomalies.append(Anomaly("refused", f"{self.name}: {resp.status} {resp.body[:200]!r}"))
                self._stop.wait(0.3)
                continue
            self.watch.poll(self.name, self.via, start, "ok", token or "read")
            self.watch.observe(self.name, key, start, _values(resp.json()), "poll" if token else "read")
            token = resp.header(TOKEN)
