"""The closed-loop scenarios of one process: its connections, request loops and recorded stats.

Each of the process's connections runs one request at a time (closed loop) for ``warmup`` seconds
(discarded) and then ``duration`` seconds (measured: an operation counts when it completes inside
the window).

Scenarios (``mix``):

- ``write``: InsertItem of new items (etcd: put of new keys);
- ``ttl``: ``write`` with ``X-Garage-TTL: ttl`` (2 s by default), so values expire during the run
  and the nodes' expiry workers write tombstones while the writes go on;
- ``read``: ReadItem of random prefilled items (etcd: linearizable range);
- ``mixed``: ReadItem of a random item, then InsertItem of it with the causality token just read
  (read-modify-write; items stay single-valued), so half reads and half writes;
- ``batch``: ReadBatch of ``batch_size``-item ranges of prefilled partitions;
- ``index``: ReadIndex pages of ``batch_size`` partition keys;
- ``poll``: PollItem fan-out: every connection long-polls one of ``poll_keys`` hot items while one
  extra connection updates them every ``poll_interval`` seconds (read + write with the token);
  the value carries its write time, so each delivered update gives a notification latency.
- ``watch``: PollRanges fan-out (one write, many range pollers): every connection is a poller
  that loops on one ``poll_ranges`` call over the same ``watch_ranges`` (64) partitions, sending
  back the latest markers each time, while ``watch_writers`` extra connections insert new items
  into those partitions (closed loop, round-robin over them). ops = the writes, so the scenario's
  throughput is that of InsertItem with the pollers attached; ``notify`` is one item delivered to
  one poller, its latency from the write's acknowledgement to the answer that carries it (0 when
  the answer came first: ``notify-before-ack`` counts those, ``notify-from-send`` measures from
  the write's request instead); ``answer`` is one PollRanges answer. Latencies are taken within a
  process (monotonic clock): with ``procs > 1`` a poller measures the writes of its own process
  and only counts the others' (``items`` of ``answer``).

The consensus path (K2V conditional writes and transactions, etcd ``Txn``):

- ``cas``: uncontended conditional writes: every connection writes its own ``cas_items`` items in
  its own partition, the first write of an item with ``If-None-Match: *`` (etcd: ``mod_revision
  == 0``), every later one with ``If-Match`` and the token the previous 204 returned (etcd: the
  txn's revision), as a client chaining its writes does. ops = conditional writes that applied;
  412 (etcd: a failed compare) and 503 are errors. After an error the next write is sent with
  the token it has; a 412 gives the current one, so the chain resumes.
- ``txn``: a partition transaction per request, 2 compares on the tokens the previous
  transaction's results returned, then 2 puts (etcd: a ``Txn`` comparing 2 ``mod_revision`` values,
  putting 2 keys); a failed one reads both items, which gives the tokens to resume with.
- ``counter``: every connection increments one hot item with a CAS loop: linearizable read
  (value and token; ``counter_read="plain"``: a K2V quorum read, which may be stale), conditional
  write of value + 1; a 412 (etcd: failed compare) is a retry: read again, write again. ops =
  applied increments, latency from the first attempt to the one that applied; retries counted
  apart. The workers return how many increments applied so the runner can check the item's
  final value against them.

The Hulykvs-compatible API: ``hulykvs-put`` (PUT of new keys, as ``write``) and ``hulykvs-get``
(GET of random prefilled keys, as ``read``), one bearer token per connection.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import secrets
import struct
import time
from collections.abc import Callable
from typing import Any

from garagekv.bench.config import BenchConfig, BenchError
from garagekv.bench.conn import CONNECT_TIMEOUT, Conn, make_conn, send
from garagekv.bench.hist import Histogram
from garagekv.bench.http import Response, connect
from garagekv.bench.workload import CONFLICT, EtcdTarget, K2VTarget, sha256_hex
from garagekv.util.signing import SigningKeyCache

#: Scenarios whose connections wait in long polls: cancelled at the end of the window, not awaited.
LONG_POLLS = frozenset({"poll", "watch"})


class OpStats:
    __slots__ = ("hist", "ok", "errors", "items")

    def __init__(self) -> None:
        self.hist = Histogram()
        self.ok = 0
        self.errors: dict[str, int] = {}
        self.items = 0

    def to_dict(self) -> dict[str, Any]:
        return {"hist": self.hist.to_dict(), "ok": self.ok, "errors": self.errors, "items": self.items}


def make_value(size: int, rng: random.Random) -> bytes:
    return bytes(rng.getrandbits(8) for _ in range(size))


def stamp(value_size: int) -> bytes:
    """A poll value: its write time (wall clock, shared by all processes) then padding."""
    return struct.pack(">d", time.time()) + b"." * (value_size - 8)


def _stamps(resp: Response) -> list[float]:
    ctype = resp.headers.get("content-type", "")
    if resp.status == 200 and ctype.startswith("application/octet-stream"):
        return [struct.unpack(">d", resp.body[:8])[0]] if len(resp.body) >= 8 else []
    if resp.status == 200 and ctype.startswith("application/json"):
        out = []
        for v in json.loads(resp.body):
            if v is not None:
                raw = base64.b64decode(v)
                if len(raw) >= 8:
                    out.append(struct.unpack(">d", raw[:8])[0])
        return out
    return []


def hot_item(cfg: BenchConfig, i: int) -> tuple[str, str]:
    return f"{cfg.key_prefix}-hot", f"{i:04d}"


def counter_item(cfg: BenchConfig) -> tuple[str, str]:
    """The counter scenario's hot item: new for every run (``run_id``), so it starts at 0."""
    return f"{cfg.key_prefix}-counter-{cfg.run_id}", "n"


def watch_partitions(cfg: BenchConfig) -> list[str]:
    """The watch scenario's partitions: new for every run, so a poller's first scan is empty."""
    return [f"{cfg.key_prefix}-watch-{cfg.run_id}-{i:02d}" for i in range(cfg.watch_ranges)]


def own_partition(cfg: BenchConfig, scenario: str, conn_index: int) -> str:
    """A connection's own partition key: its conditional operations never contend with others'."""
    return f"{cfg.key_prefix}-{scenario}-{cfg.run_id}-{conn_index:04d}"


def _consensus(c: Conn) -> K2VTarget | EtcdTarget:
    t = c.target
    assert isinstance(t, K2VTarget | EtcdTarget), "the consensus scenarios need a K2V or etcd target"
    return t


class Worker:
    """The connections of one process and their scenario loops."""

    def __init__(self, cfg: BenchConfig, proc_index: int = 0) -> None:
        self.cfg = cfg
        self.proc = proc_index
        self.keyspace = cfg.keyspace
        keys = SigningKeyCache(maxsize=4)
        self.conns = [make_conn(cfg, g, keys) for g in range(proc_index, cfg.conns, cfg.procs)]
        self.writer = make_conn(cfg, 0, keys) if cfg.mix == "poll" and proc_index == 0 else None
        #: watch: this process's share of the writers, and the times of their writes (by sort
        #: key, which names the process: ``w<proc>.``) for the pollers to measure against
        self.watch_writers = (
            [make_conn(cfg, w, keys) for w in range(proc_index, cfg.watch_writers, cfg.procs)]
            if cfg.mix == "watch"
            else []
        )
        self.watch_tag = f"w{proc_index:03d}."
        self.sent: dict[str, float] = {}
        self.acked: dict[str, float] = {}
        self.stats: dict[str, OpStats] = {}
        self.rng = random.Random(secrets.randbits(64))
        self.value = make_value(cfg.value_size, self.rng)
        self.value_hash = sha256_hex(self.value)
        self.m_start = self.m_end = 0.0
        self.cpu = 0.0
        # progress counters (whole run, warmup included)
        self.p_ops = 0
        self.p_errs = 0
        self.p_lat = 0.0
        # counter: whole-run totals (warmup included), to check the item's final value against
        self.counter = {"attempts": 0, "increments": 0, "conflicts": 0, "rejected": 0}

    # --- recording -----------------------------------------------------------------------------
    def _st(self, kind: str) -> OpStats:
        st = self.stats.get(kind)
        if st is None:
            st = self.stats[kind] = OpStats()
        return st

    def _ok(self, kind: str, t1: float, latency: float, items: int = 0) -> None:
        self.p_ops += 1
        self.p_lat += latency
        if self.m_start <= t1 < self.m_end:
            st = self._st(kind)
            st.hist.record(int(latency * 1e6))
            st.ok += 1
            st.items += items

    def _err(self, kind: str, t1: float, code: str) -> None:
        self.p_errs += 1
        if self.m_start <= t1 < self.m_end:
            errors = self._st(kind).errors
            errors[code] = errors.get(code, 0) + 1

    async def call(
        self,
        c: Conn,
        kind: str,
        req: bytes,
        check: Callable[[Response], str | None],
        items: Callable[[Response], int] | None = None,
    ) -> Response | None:
        t0 = time.monotonic()
        r = await send(c, req)
        t1 = time.monotonic()
        if isinstance(r, str):
            self._err(kind, t1, r)
            await asyncio.sleep(0.01)  # do not spin on a dead endpoint
            return None
        code = check(r)
        if code is not None:
            self._err(kind, t1, code)
            return None
        self._ok(kind, t1, t1 - t0, items(r) if items else 0)
        return r

    # --- scenarios -----------------------------------------------------------------------------
    async def _write_loop(self, c: Conn, kind: str = "write") -> None:
        tag = f"{self.cfg.run_id}.{c.index}"
        ks, t, v, vh = self.keyspace, c.target, self.value, self.value_hash
        seq = 0
        while time.monotonic() < self.m_end:
            pk, sk = ks.new_item(tag, seq)
            seq += 1
            await self.call(c, kind, t.write(pk, sk, v, vh), t.check_write)

    async def _ttl_loop(self, c: Conn) -> None:
        tag = f"{self.cfg.run_id}.{c.index}"
        ks, t, v, vh, ttl = self.keyspace, c.target, self.value, self.value_hash, self.cfg.ttl
        assert isinstance(t, K2VTarget)
        seq = 0
        while time.monotonic() < self.m_end:
            pk, sk = ks.new_item(tag, seq)
            seq += 1
            await self.call(c, "write", t.write_ttl(pk, sk, v, vh, ttl), t.check_write)

    async def _read_loop(self, c: Conn, kind: str = "read") -> None:
        ks, t, n, rnd = self.keyspace, c.target, self.cfg.keys, self.rng.randrange
        while time.monotonic() < self.m_end:
            pk, sk = ks.item(rnd(n))
            await self.call(c, kind, t.read(pk, sk), t.check_read)

    async def _failed(self, kind: str, t1: float, code: str) -> None:
        self._err(kind, t1, code)
        if not code.isdigit():
            await asyncio.sleep(0.01)  # timeout or connection: do not spin on a dead endpoint

    async def _cas_loop(self, c: Conn) -> None:
        t, v, vh = _consensus(c), self.value, self.value_hash
        pk = own_partition(self.cfg, "cas", c.index)
        sks = [f"{j:04d}" for j in range(self.cfg.cas_items)]
        tokens: dict[str, str | None] = dict.fromkeys(sks)
        i = 0
        while time.monotonic() < self.m_end:
            sk = sks[i % len(sks)]
            i += 1
            t0 = time.monotonic()
            r = await send(c, t.cas(pk, sk, v, vh, tokens[sk]))
            t1 = time.monotonic()
            if isinstance(r, str):
                await self._failed("cas", t1, r)
                continue
            code, token = t.cas_result(r)
            if code is None:
                self._ok("cas", t1, t1 - t0)
            else:
                await self._failed("cas", t1, code)
            if code is None or code == CONFLICT:
                tokens[sk] = token  # after a 503 the old token stays: a 412 will bring the current one

    async def _txn_loop(self, c: Conn) -> None:
        t, v = _consensus(c), self.value
        pk = own_partition(self.cfg, "txn", c.index)
        sks = ["a", "b"]
        tokens: list[str | None] = [None, None]
        while time.monotonic() < self.m_end:
            t0 = time.monotonic()
            r = await send(c, t.txn(pk, list(zip(sks, tokens, strict=True)), [(sk, v) for sk in sks]))
            t1 = time.monotonic()
            if isinstance(r, str):
                await self._failed("txn", t1, r)
                continue
            code, new = t.txn_result(r, sks)
            if code is None:
                self._ok("txn", t1, t1 - t0)
            else:
                await self._failed("txn", t1, code)
            if code is None or code == CONFLICT:
                tokens = new

    async def _counter_loop(self, c: Conn) -> None:
        t, cnt = _consensus(c), self.counter
        pk, sk = counter_item(self.cfg)
        read = t.read if self.cfg.counter_read == "plain" and isinstance(t, K2VTarget) else t.read_latest
        value: int | None = None
        token: str | None = None
        while time.monotonic() < self.m_end:
            t0 = time.monotonic()  # one increment: from its first attempt to the one that applies
            while time.monotonic() < self.m_end:
                if value is None:
                    tr = time.monotonic()
                    r = await send(c, read(pk, sk))
                    t1 = time.monotonic()
                    if isinstance(r, str):
                        await self._failed("read", t1, r)
                        continue
                    code, raw, token = t.latest_result(r)
                    if code is not None or raw is None:  # raw None: no live value, never expected here
                        await self._failed("read", t1, code or "missing")
                        continue
                    try:
                        value = int(raw)
                    except ValueError:
                        await self._failed("read", t1, "not-a-number")
                        continue
                    self._ok("read", t1, t1 - tr)
                cnt["attempts"] += 1
                ta = time.monotonic()
                r = await send(c, t.cas(pk, sk, b"%d" % (value + 1), None, token, read_on_failure=False))
                t1 = time.monotonic()
                if isinstance(r, str):
                    value = None
                    await self._failed("increment", t1, r)
                    continue
                code, new_token = t.cas_result(r)
                if code is None:
                    cnt["increments"] += 1
                    self._ok("increment", t1, t1 - t0)
                    value, token = value + 1, new_token
                    break
                value = None  # read again before the next attempt
                if code == CONFLICT:
                    cnt["conflicts"] += 1
                    self._ok("conflict", t1, t1 - ta)
                else:
                    if code.startswith("4"):
                        cnt["rejected"] += 1  # refused: nothing written
                    await self._failed("increment", t1, code)

    async def _mixed_loop(self, c: Conn) -> None:
        ks, t, n, rnd, v, vh = self.keyspace, c.target, self.cfg.keys, self.rng.randrange, self.value, self.value_hash
        while time.monotonic() < self.m_end:
            pk, sk = ks.item(rnd(n))
            r = await self.call(c, "read", t.read(pk, sk), t.check_read)
            if r is None or time.monotonic() >= self.m_end:
                continue
            await self.call(c, "write", t.write(pk, sk, v, vh, t.token(r)), t.check_write)

    async def _batch_loop(self, c: Conn) -> None:
        cfg, ks, t, rnd = self.cfg, self.keyspace, c.target, self.rng.randrange
        assert isinstance(t, K2VTarget)
        size = cfg.batch_size
        while time.monotonic() < self.m_end:
            first = rnd(max(1, cfg.keys - size + 1))
            # keep the range inside one partition
            part, off = divmod(first, ks.per_partition)
            off = min(off, max(0, ks.per_partition - size))
            pk, sk = ks.item(part * ks.per_partition + off)
            await self.call(c, "batch", t.read_batch(pk, sk, size), _check_200, _count_sk)

    async def _index_loop(self, c: Conn) -> None:
        cfg, ks, t, rnd = self.cfg, self.keyspace, c.target, self.rng.randrange
        assert isinstance(t, K2VTarget)
        while time.monotonic() < self.m_end:
            start = ks.partition(rnd(max(1, ks.partitions - cfg.batch_size + 1)))
            await self.call(c, "index", t.read_index(start, cfg.batch_size), _check_200, _count_pk)

    async def _watch_loop(self, c: Conn) -> None:
        cfg, t = self.cfg, c.target
        assert isinstance(t, K2VTarget)
        pk, sk = hot_item(cfg, c.index % cfg.poll_keys)
        token = None
        while token is None and time.monotonic() < self.m_end:
            r = await self.call(c, "poll-init", t.read(pk, sk), t.check_read)
            token = t.token(r) if r is not None else None
            if token is None:
                await asyncio.sleep(0.05)
        while token is not None and time.monotonic() < self.m_end:
            answer = await send(c, t.poll(pk, sk, token, cfg.poll_timeout))
            now, t1 = time.time(), time.monotonic()
            if isinstance(answer, str):
                self._err("notify", t1, answer)
                await asyncio.sleep(0.01)
                continue
            if answer.status not in (200, 204):
                self._err("notify", t1, str(answer.status))
                continue
            token = t.token(answer) or token
            stamps = _stamps(answer)
            if stamps:
                self._ok("notify", t1, max(0.0, now - max(stamps)))
            else:
                self._err("notify", t1, "no-stamp")

    async def _poll_writer(self, c: Conn) -> None:
        cfg, t = self.cfg, c.target
        i = 0
        next_at = time.monotonic()
        while time.monotonic() < self.m_end:
            pk, sk = hot_item(cfg, i % cfg.poll_keys)
            i += 1
            r = await self.call(c, "poll-writer-read", t.read(pk, sk), t.check_read)
            if r is not None:
                await self.call(
                    c, "poll-writer-write", t.write(pk, sk, stamp(cfg.value_size), None, t.token(r)), t.check_write
                )
            next_at += cfg.poll_interval
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                next_at = time.monotonic()

    async def _watch_writer(self, c: Conn) -> None:
        """InsertItem of new items into the watched partitions, noting when each was sent and
        acknowledged."""
        t, v, vh = c.target, self.value, self.value_hash
        assert isinstance(t, K2VTarget)
        pks = watch_partitions(self.cfg)
        prefix = f"{self.watch_tag}{c.index:04d}."
        sent, acked = self.sent, self.acked
        seq = 0
        while time.monotonic() < self.m_end:
            pk = pks[(c.index + seq) % len(pks)]
            sk = f"{prefix}{seq:010d}"
            seq += 1
            sent[sk] = time.monotonic()
            if await self.call(c, "write", t.write(pk, sk, v, vh), t.check_write) is not None:
                acked[sk] = time.monotonic()

    async def _range_poller(self, c: Conn) -> None:
        """One PollRanges call after another over every watched partition, with the latest markers."""
        cfg, t = self.cfg, c.target
        assert isinstance(t, K2VTarget)
        ranges: list[tuple[str, str | None]] = [(pk, None) for pk in watch_partitions(cfg)]
        own, sent, acked = self.watch_tag, self.sent, self.acked
        while time.monotonic() < self.m_end:
            t0 = time.monotonic()
            r = await send(c, t.poll_ranges(ranges, cfg.poll_timeout))
            t1 = time.monotonic()
            if isinstance(r, str):
                await self._failed("answer", t1, r)
                continue
            code, ranges, sks = t.poll_ranges_result(r, ranges)
            if code is not None:
                self._err("answer", t1, code)
                await asyncio.sleep(0.01)  # a 400 or 503 would come back at once: do not spin
                continue
            if r.status == 304:
                self._ok("poll-timeout", t1, t1 - t0)
                continue
            self._ok("answer", t1, t1 - t0, len(sks))
            for sk in sks:
                if not sk.startswith(own):
                    continue  # another process's write: its times are not known here
                at = acked.get(sk)
                if at is None:
                    self._ok("notify-before-ack", t1, 0.0)
                self._ok("notify", t1, 0.0 if at is None else max(0.0, t1 - at))
                st = sent.get(sk)
                if st is not None:
                    self._ok("notify-from-send", t1, t1 - st)

    async def _huly_put_loop(self, c: Conn) -> None:
        await self._write_loop(c, "put")

    async def _huly_get_loop(self, c: Conn) -> None:
        await self._read_loop(c, "get")

    def _loop_fn(self) -> Callable[[Conn], Any]:
        return {
            "write": self._write_loop,
            "read": self._read_loop,
            "mixed": self._mixed_loop,
            "batch": self._batch_loop,
            "index": self._index_loop,
            "poll": self._watch_loop,
            "ttl": self._ttl_loop,
            "cas": self._cas_loop,
            "txn": self._txn_loop,
            "counter": self._counter_loop,
            "hulykvs-put": self._huly_put_loop,
            "hulykvs-get": self._huly_get_loop,
            "watch": self._range_poller,
        }[self.cfg.mix]

    # --- phases ----------------------------------------------------------------------------------
    def _all_conns(self) -> list[Conn]:
        return self.conns + ([self.writer] if self.writer else []) + self.watch_writers

    async def connect_all(self) -> None:
        conns = self._all_conns()
        try:
            for c in conns:
                c.http = await asyncio.wait_for(connect(c.host, c.port), CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as e:
            self.close()
            raise BenchError(f"cannot connect to {c.host}:{c.port}: {e}")

    def close(self) -> None:
        for c in self._all_conns():
            if c.http is not None:
                c.http.close()
                c.http = None

    async def _watchdog(self) -> None:
        loop = asyncio.get_running_loop()
        limit = self.cfg.timeout + (self.cfg.poll_timeout if self.cfg.mix in LONG_POLLS else 0)
        conns = self._all_conns()
        while True:
            await asyncio.sleep(0.5)
            now = loop.time()
            for c in conns:
                h = c.http
                if h is not None and h.waiter is not None and now - h.sent_at > limit:
                    h.timeout()

    async def run(
        self,
        start: float,
        progress: Callable[[dict[str, Any]], None] | None = None,
        sampler: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Run from monotonic time ``start``: warmup, then the measured window; returns the stats.

        ``progress`` gets counter deltas about once a second; ``sampler("start"|"end")`` is called
        at the edges of the measured window (the parent samples server CPU there).
        """
        cfg = self.cfg
        self.m_start = start + cfg.warmup
        self.m_end = self.m_start + cfg.duration
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        fn = self._loop_fn()
        tasks = [asyncio.create_task(fn(c)) for c in self.conns]
        if self.writer is not None:
            tasks.append(asyncio.create_task(self._poll_writer(self.writer)))
        tasks += [asyncio.create_task(self._watch_writer(c)) for c in self.watch_writers]
        watchdog = asyncio.create_task(self._watchdog())
        try:
            await self._clock(progress, sampler)
            grace = 0.0 if cfg.mix in LONG_POLLS else 2.0
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for t in pending:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for t in tasks:
                error = None if t.cancelled() else t.exception()
                if error is not None:
                    raise error
        finally:
            watchdog.cancel()
            self.close()
        result: dict[str, Any] = {"stats": {k: s.to_dict() for k, s in self.stats.items()}, "client_cpu": self.cpu}
        if cfg.mix == "counter":
            result["counter"] = dict(self.counter)
        return result

    async def _clock(
        self, progress: Callable[[dict[str, Any]], None] | None, sampler: Callable[[str], None] | None
    ) -> None:
        next_report = time.monotonic() + 1.0
        started = False
        last = (0, 0, 0.0)
        cpu0 = 0.0
        while True:
            now = time.monotonic()
            if not started and now >= self.m_start:
                started = True
                cpu0 = time.process_time()
                if sampler:
                    sampler("start")
            ending = now >= self.m_end
            if ending:
                self.cpu = time.process_time() - cpu0
                if sampler:
                    sampler("end")
            if (now >= next_report or ending) and progress:
                cur = (self.p_ops, self.p_errs, self.p_lat)
                progress(
                    {
                        "proc": self.proc,
                        "ops": cur[0] - last[0],
                        "errors": cur[1] - last[1],
                        "latency": cur[2] - last[2],
                        "at": now,
                    }
                )
                last = cur
            if ending:
                return
            if now >= next_report:
                next_report += 1.0
            wake = min(next_report, self.m_end if started else self.m_start)
            await asyncio.sleep(max(0.0, wake - time.monotonic()))


def _check_200(resp: Response) -> str | None:
    return None if resp.status == 200 else str(resp.status)


def _count_sk(resp: Response) -> int:
    return resp.body.count(b'"sk"')


def _count_pk(resp: Response) -> int:
    return resp.body.count(b'"pk"')
