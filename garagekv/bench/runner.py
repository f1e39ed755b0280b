"""The closed-loop load generator: connections, phases, worker processes and results.

Each of ``conns`` connections runs one request at a time (closed loop) for ``warmup`` seconds
(discarded) and then ``duration`` seconds (measured: an operation counts when it completes inside
the window). With ``procs > 1`` the connections are dealt to worker processes, each with its own
event loop (uvloop when installed), which start together on a shared monotonic clock and send
back mergeable histograms.

Scenarios (``mix``):

- ``write``: InsertItem of new items (etcd: put of new keys);
- ``read``: ReadItem of random prefilled items (etcd: linearizable range);
- ``mixed``: ReadItem of a random item, then InsertItem of it with the causality token just read
  (read-modify-write; items stay single-valued), so half reads and half writes;
- ``batch``: ReadBatch of ``batch_size``-item ranges of prefilled partitions;
- ``index``: ReadIndex pages of ``batch_size`` partition keys;
- ``poll``: PollItem fan-out: every connection long-polls one of ``poll_keys`` hot items while one
  extra connection updates them every ``poll_interval`` seconds (read + write with the token);
  the value carries its write time, so each delivered update gives a notification latency.
"""

from __future__ import annotations

import asyncio
import base64
import json
import multiprocessing as mp
import os
import queue as queue_mod
import random
import secrets
import signal
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from garagekv.bench.hist import Histogram
from garagekv.bench.http import HttpConnection, ParseError, Response, connect, parse_endpoint
from garagekv.bench.procstat import machine_busy_seconds, total_cpu_seconds, user_processes_cpu
from garagekv.bench.workload import EtcdTarget, K2VTarget, KeySpace, make_target, sha256_hex
from garagekv.util.loop import loop_name, new_runner
from garagekv.util.sigv4 import SigningKeyCache

MIXES: dict[str, tuple[str, ...]] = {
    "write": ("write",),
    "read": ("read",),
    "mixed": ("read", "write"),
    "batch": ("batch",),
    "index": ("index",),
    "poll": ("notify",),
}
K2V_ONLY = frozenset({"batch", "index", "poll"})
PERCENTILES = (50, 90, 99, 99.9)
CONNECT_TIMEOUT = 5.0


class BenchError(Exception):
    """The benchmark cannot run (bad arguments, unreachable endpoint, failed prefill)."""


@dataclass
class BenchConfig:
    target: str = "k2v"  # or "etcd"
    endpoints: list[str] = field(default_factory=list)  # host:port or http://host:port
    bucket: str = ""
    access_key_id: str = ""
    secret_access_key: str = ""
    region: str = "garage"
    mix: str = "write"
    conns: int = 64
    procs: int = 1
    duration: float = 10.0
    warmup: float = 2.0
    value_size: int = 100
    keys: int = 10_000
    per_partition: int = 1000
    key_prefix: str = "bench"
    prefill: bool = False
    batch_size: int = 100
    poll_keys: int = 1
    poll_interval: float = 0.01
    poll_timeout: int = 10
    timeout: float = 30.0
    server_pids: list[int] = field(default_factory=list)
    run_id: str = ""
    label: str = ""

    def validate(self) -> None:
        if self.target not in ("k2v", "etcd"):
            raise BenchError(f"unknown target {self.target!r} (k2v or etcd)")
        if self.mix not in MIXES:
            raise BenchError(f"unknown mix {self.mix!r} (one of {', '.join(MIXES)})")
        if self.target == "etcd" and self.mix in K2V_ONLY:
            raise BenchError(f"the {self.mix} scenario needs a K2V endpoint")
        if not self.endpoints:
            raise BenchError("no endpoint given (--endpoint, --dev-json or --selftest)")
        for ep in self.endpoints:
            try:
                parse_endpoint(ep)
            except ValueError as e:
                raise BenchError(str(e))
        if self.target == "k2v" and not (self.bucket and self.access_key_id and self.secret_access_key):
            raise BenchError("a K2V target needs --bucket, --access-key-id and --secret-access-key (or --dev-json)")
        if self.conns < 1 or self.procs < 1:
            raise BenchError("--conns and --procs must be at least 1")
        if self.procs > self.conns:
            raise BenchError("--procs cannot exceed --conns")
        if self.duration <= 0 or self.warmup < 0:
            raise BenchError("--duration must be positive and --warmup not negative")
        if self.keys < 1 or self.per_partition < 1 or self.batch_size < 1 or self.poll_keys < 1:
            raise BenchError("--keys, --per-partition, --batch-size and --poll-keys must be at least 1")
        if self.mix == "poll" and self.value_size < 8:
            raise BenchError("the poll scenario needs --value-size of at least 8 (the value carries a timestamp)")
        if self.value_size < 0:
            raise BenchError("--value-size cannot be negative")

    @property
    def keyspace(self) -> KeySpace:
        return KeySpace(self.key_prefix, self.keys, self.per_partition)


def host_header(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class OpStats:
    __slots__ = ("hist", "ok", "errors", "items")

    def __init__(self) -> None:
        self.hist = Histogram()
        self.ok = 0
        self.errors: dict[str, int] = {}
        self.items = 0

    def to_dict(self) -> dict[str, Any]:
        return {"hist": self.hist.to_dict(), "ok": self.ok, "errors": self.errors, "items": self.items}


class _Conn:
    __slots__ = ("index", "host", "port", "target", "http")

    def __init__(self, index: int, host: str, port: int, target: K2VTarget | EtcdTarget) -> None:
        self.index = index
        self.host = host
        self.port = port
        self.target = target
        self.http: HttpConnection | None = None


def _make_conn(cfg: BenchConfig, index: int, keys: SigningKeyCache) -> _Conn:
    host, port = parse_endpoint(cfg.endpoints[index % len(cfg.endpoints)])
    target = make_target(
        cfg.target, host_header(host, port), cfg.bucket, cfg.access_key_id, cfg.secret_access_key, cfg.region, keys
    )
    return _Conn(index, host, port, target)


async def _send(c: _Conn, req: bytes) -> Response | str:
    """One request on the connection (reconnecting if needed): the response or an error code."""
    http = c.http
    try:
        if http is None or http.closed:
            http = c.http = await asyncio.wait_for(connect(c.host, c.port), CONNECT_TIMEOUT)
        return await http.send(req)
    except TimeoutError:
        code = "timeout"
    except ParseError:
        code = "bad-response"
    except OSError:
        code = "connection"
    if c.http is not None:
        c.http.abort()
        c.http = None
    return code


def _value(size: int, rng: random.Random) -> bytes:
    return bytes(rng.getrandbits(8) for _ in range(size))


def _stamp(value_size: int) -> bytes:
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


class Worker:
    """The connections of one process and their scenario loops."""

    def __init__(self, cfg: BenchConfig, proc_index: int = 0) -> None:
        self.cfg = cfg
        self.proc = proc_index
        self.keyspace = cfg.keyspace
        keys = SigningKeyCache(maxsize=4)
        self.conns = [_make_conn(cfg, g, keys) for g in range(proc_index, cfg.conns, cfg.procs)]
        self.writer = _make_conn(cfg, 0, keys) if cfg.mix == "poll" and proc_index == 0 else None
        self.stats: dict[str, OpStats] = {}
        self.rng = random.Random(secrets.randbits(64))
        self.value = _value(cfg.value_size, self.rng)
        self.value_hash = sha256_hex(self.value)
        self.m_start = self.m_end = 0.0
        self.cpu = 0.0
        # progress counters (whole run, warmup included)
        self.p_ops = 0
        self.p_errs = 0
        self.p_lat = 0.0

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
        c: _Conn,
        kind: str,
        req: bytes,
        check: Callable[[Response], str | None],
        items: Callable[[Response], int] | None = None,
    ) -> Response | None:
        t0 = time.monotonic()
        r = await _send(c, req)
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
    async def _write_loop(self, c: _Conn) -> None:
        tag = f"{self.cfg.run_id}.{c.index}"
        ks, t, v, vh = self.keyspace, c.target, self.value, self.value_hash
        seq = 0
        while time.monotonic() < self.m_end:
            pk, sk = ks.new_item(tag, seq)
            seq += 1
            await self.call(c, "write", t.write(pk, sk, v, vh), t.check_write)

    async def _read_loop(self, c: _Conn) -> None:
        ks, t, n, rnd = self.keyspace, c.target, self.cfg.keys, self.rng.randrange
        while time.monotonic() < self.m_end:
            pk, sk = ks.item(rnd(n))
            await self.call(c, "read", t.read(pk, sk), t.check_read)

    async def _mixed_loop(self, c: _Conn) -> None:
        ks, t, n, rnd, v, vh = self.keyspace, c.target, self.cfg.keys, self.rng.randrange, self.value, self.value_hash
        while time.monotonic() < self.m_end:
            pk, sk = ks.item(rnd(n))
            r = await self.call(c, "read", t.read(pk, sk), t.check_read)
            if r is None or time.monotonic() >= self.m_end:
                continue
            await self.call(c, "write", t.write(pk, sk, v, vh, t.token(r)), t.check_write)

    async def _batch_loop(self, c: _Conn) -> None:
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

    async def _index_loop(self, c: _Conn) -> None:
        cfg, ks, t, rnd = self.cfg, self.keyspace, c.target, self.rng.randrange
        assert isinstance(t, K2VTarget)
        while time.monotonic() < self.m_end:
            start = ks.partition(rnd(max(1, ks.partitions - cfg.batch_size + 1)))
            await self.call(c, "index", t.read_index(start, cfg.batch_size), _check_200, _count_pk)

    async def _watch_loop(self, c: _Conn) -> None:
        cfg, t = self.cfg, c.target
        assert isinstance(t, K2VTarget)
        pk, sk = hot_item(cfg, c.index % cfg.poll_keys)
        token = None
        while token is None and time.monotonic() < self.m_end:
            r = await self.call(c, "poll-init", t.read(pk, sk), t.check_read)
            token = t.token(r) if r is not None else None
            if token is None:
                await asyncio.sleep(0.05)
        while time.monotonic() < self.m_end:
            r = await _send(c, t.poll(pk, sk, token, cfg.poll_timeout))
            now, t1 = time.time(), time.monotonic()
            if isinstance(r, str):
                self._err("notify", t1, r)
                await asyncio.sleep(0.01)
                continue
            if r.status not in (200, 204):
                self._err("notify", t1, str(r.status))
                continue
            token = t.token(r) or token
            stamps = _stamps(r)
            if stamps:
                self._ok("notify", t1, max(0.0, now - max(stamps)))
            else:
                self._err("notify", t1, "no-stamp")

    async def _poll_writer(self, c: _Conn) -> None:
        cfg, t = self.cfg, c.target
        i = 0
        next_at = time.monotonic()
        while time.monotonic() < self.m_end:
            pk, sk = hot_item(cfg, i % cfg.poll_keys)
            i += 1
            r = await self.call(c, "poll-writer-read", t.read(pk, sk), t.check_read)
            if r is not None:
                await self.call(
                    c, "poll-writer-write", t.write(pk, sk, _stamp(cfg.value_size), None, t.token(r)), t.check_write
                )
            next_at += cfg.poll_interval
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                next_at = time.monotonic()

    def _loop_fn(self) -> Callable[[_Conn], Any]:
        return {
            "write": self._write_loop,
            "read": self._read_loop,
            "mixed": self._mixed_loop,
            "batch": self._batch_loop,
            "index": self._index_loop,
            "poll": self._watch_loop,
        }[self.cfg.mix]

    # --- phases ----------------------------------------------------------------------------------
    async def connect_all(self) -> None:
        conns = self.conns + ([self.writer] if self.writer else [])
        try:
            for c in conns:
                c.http = await asyncio.wait_for(connect(c.host, c.port), CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as e:
            self.close()
            raise BenchError(f"cannot connect to {c.host}:{c.port}: {e}")

    def close(self) -> None:
        for c in self.conns + ([self.writer] if self.writer else []):
            if c.http is not None:
                c.http.close()
                c.http = None

    async def _watchdog(self) -> None:
        loop = asyncio.get_running_loop()
        limit = self.cfg.timeout + (self.cfg.poll_timeout if self.cfg.mix == "poll" else 0)
        conns = self.conns + ([self.writer] if self.writer else [])
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
        watchdog = asyncio.create_task(self._watchdog())
        try:
            await self._clock(progress, sampler)
            grace = 0.0 if cfg.mix == "poll" else 2.0
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for t in pending:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for t in tasks:
                if not t.cancelled() and t.exception() is not None:
                    raise t.exception()
        finally:
            watchdog.cancel()
            self.close()
        return {"stats": {k: s.to_dict() for k, s in self.stats.items()}, "client_cpu": self.cpu}

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


# --- setup: prefill and hot items ----------------------------------------------------------------


async def prepare(cfg: BenchConfig, log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Prefill the keyspace (``cfg.prefill``) and create the poll scenario's hot items."""
    info: dict[str, Any] = {}
    if cfg.prefill:
        t0 = time.monotonic()
        if cfg.target == "k2v":
            await _prefill_k2v(cfg, log)
        else:
            await _prefill_etcd(cfg)
        dt = time.monotonic() - t0
        info["prefill"] = {"items": cfg.keys, "seconds": round(dt, 3), "items_per_sec": round(cfg.keys / dt, 1)}
        log(f"prefilled {cfg.keys:,} items in {dt:.1f}s ({cfg.keys / dt:,.0f} items/s)")
    if cfg.mix == "poll":
        await _write_hot_items(cfg)
    return info


async def _prefill_k2v(cfg: BenchConfig, log: Callable[[str], None] = lambda s: None, conns_n: int = 8) -> None:
    """InsertBatch of partition slices, each with the tokens of what is already there, so that
    prefilling twice overwrites instead of adding concurrent values."""
    ks = cfg.keyspace
    value = _value(cfg.value_size, random.Random(secrets.randbits(64)))
    per_batch = max(1, min(1000, 2_000_000 // (cfg.value_size * 4 // 3 + 64)))
    jobs: list[tuple[int, int]] = []  # [first, last) item indexes, inside one partition
    for part in range(ks.partitions):
        lo, hi = part * ks.per_partition, min(cfg.keys, (part + 1) * ks.per_partition)
        jobs.extend((i, min(hi, i + per_batch)) for i in range(lo, hi, per_batch))
    jobs.reverse()
    keys = SigningKeyCache(maxsize=4)
    conns = [_make_conn(cfg, i, keys) for i in range(min(conns_n, len(jobs)))]
    done = 0
    t0 = next_log = time.monotonic()

    async def run(c: _Conn) -> None:
        nonlocal done, next_log
        t = c.target
        assert isinstance(t, K2VTarget)
        while jobs:
            lo, hi = jobs.pop()
            pk, first = ks.item(lo)
            r = await _send(c, t.read_batch(pk, first, hi - lo))
            if isinstance(r, str) or r.status != 200:
                raise BenchError(f"prefill: ReadBatch failed: {_describe(r)}")
            tokens = {it["sk"]: it["ct"] for it in json.loads(r.body)[0]["items"]}
            batch = [(pk, sk, tokens.get(sk), value) for pk, sk in map(ks.item, range(lo, hi))]
            r = await _send(c, t.insert_batch(batch))
            if isinstance(r, str) or r.status != 204:
                raise BenchError(f"prefill: InsertBatch failed: {_describe(r)}")
            done += hi - lo
            now = time.monotonic()
            if now >= next_log + 10:
                next_log = now
                log(f"prefill: {done:,}/{cfg.keys:,} items ({done / (now - t0):,.0f} items/s)")

    await _run_on_all(conns, run)


async def _prefill_etcd(cfg: BenchConfig) -> None:
    ks = cfg.keyspace
    value = _value(cfg.value_size, random.Random(secrets.randbits(64)))
    todo = list(range(cfg.keys))
    conns = [_make_conn(cfg, i, SigningKeyCache()) for i in range(min(64, cfg.keys))]

    async def run(c: _Conn) -> None:
        while todo:
            pk, sk = ks.item(todo.pop())
            r = await _send(c, c.target.write(pk, sk, value))
            if isinstance(r, str) or r.status != 200:
                raise BenchError(f"prefill: put failed: {_describe(r)}")

    await _run_on_all(conns, run)


async def _write_hot_items(cfg: BenchConfig) -> None:
    c = _make_conn(cfg, 0, SigningKeyCache())
    t = c.target
    try:
        for i in range(cfg.poll_keys):
            pk, sk = hot_item(cfg, i)
            r = await _send(c, t.read(pk, sk))
            token = t.token(r) if isinstance(r, Response) and r.status in (200, 204) else None
            r = await _send(c, t.write(pk, sk, _stamp(cfg.value_size), None, token))
            if isinstance(r, str) or r.status not in (200, 204):
                raise BenchError(f"cannot write the hot item {pk}/{sk}: {_describe(r)}")
    finally:
        if c.http is not None:
            c.http.close()


async def _run_on_all(conns: list[_Conn], run: Callable[[_Conn], Awaitable[None]]) -> None:
    """``run`` on every connection at once; the connections are closed whatever happens."""
    try:
        await asyncio.gather(*(run(c) for c in conns))
    finally:
        for c in conns:
            if c.http is not None:
                c.http.close()


def _describe(r: Response | str) -> str:
    if isinstance(r, str):
        return r
    return f"HTTP {r.status} {r.body[:200].decode('utf-8', 'replace')}"


# --- running: one process or many ----------------------------------------------------------------


class _CpuSampler:
    """Server CPU (``pids``) and whole-machine busy CPU at the edges of the measured window."""

    def __init__(self, pids: list[int], own: set[int] | None = None) -> None:
        self.pids = pids
        self.own = set(pids) | (own or set())
        self.server: dict[str, float | None] = {}
        self.machine: dict[str, float | None] = {}
        self.others: dict[str, dict[int, float]] = {}

    def __call__(self, edge: str) -> None:
        self.server[edge] = total_cpu_seconds(self.pids) if self.pids else None
        self.machine[edge] = machine_busy_seconds()
        try:
            self.others[edge] = user_processes_cpu(self.own | {os.getpid()})
        except OSError:
            pass

    @property
    def other_seconds(self) -> float | None:
        """CPU used by other user processes in the window (processes that exited are missed)."""
        a, b = self.others.get("start"), self.others.get("end")
        if a is None or b is None:
            return None
        return sum(v - a.get(pid, 0.0) for pid, v in b.items() if v >= a.get(pid, 0.0))

    @staticmethod
    def _delta(d: dict[str, float | None]) -> float | None:
        a, b = d.get("start"), d.get("end")
        return None if a is None or b is None else b - a

    @property
    def server_seconds(self) -> float | None:
        return self._delta(self.server)

    @property
    def machine_seconds(self) -> float | None:
        return self._delta(self.machine)


class Progress:
    """Aggregates per-second deltas from the workers into one status line on ``stream``."""

    def __init__(self, cfg: BenchConfig, stream: Any = None, start: float = 0.0) -> None:
        self.cfg = cfg
        self.stream = stream
        self.start = start
        self.pending: dict[int, list[dict[str, Any]]] = {}
        self.tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())

    def __call__(self, msg: dict[str, Any]) -> None:
        if self.stream is None:
            return
        self.pending.setdefault(int(round(msg["at"] - self.start)), []).append(msg)
        # print a second once every worker reported it (or a later second arrived)
        for sec in sorted(self.pending):
            msgs = self.pending[sec]
            if len(msgs) < self.cfg.procs and sec == max(self.pending):
                break
            del self.pending[sec]
            self._print(sec, msgs)

    def _print(self, sec: int, msgs: list[dict[str, Any]]) -> None:
        ops = sum(m["ops"] for m in msgs)
        errs = sum(m["errors"] for m in msgs)
        lat = sum(m["latency"] for m in msgs)
        phase = "warmup" if sec <= self.cfg.warmup else "measure"
        total = self.cfg.warmup + self.cfg.duration
        mean = f"{lat / ops * 1e3:.2f} ms" if ops else "-"
        line = f"[{sec:>3.0f}/{total:.0f}s {phase:<7}] {ops:>8,} req/s  mean {mean:>9}  errors {errs}"
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.stream is not None and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def run_bench(
    cfg: BenchConfig, progress_stream: Any = None, log: Callable[[str], None] = lambda s: None
) -> dict[str, Any]:
    """Prefill if asked, run the scenario, and return the summary (see :func:`summarize`)."""
    cfg.validate()
    if not cfg.run_id:
        cfg.run_id = secrets.token_hex(4)
    with new_runner() as runner:
        setup = runner.run(prepare(cfg, log))
    server_cpu = _CpuSampler(cfg.server_pids)
    t_wall = time.time()
    if cfg.procs == 1:
        results = [_run_single(cfg, progress_stream, server_cpu)]
    else:
        results = _run_multi(cfg, progress_stream, server_cpu)
    summary = summarize(cfg, results, server_cpu.server_seconds, server_cpu.machine_seconds, server_cpu.other_seconds)
    summary["started_at"] = t_wall
    summary.update(setup)
    return summary


def _run_single(cfg: BenchConfig, progress_stream: Any, server_cpu: _CpuSampler) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        w = Worker(cfg, 0)
        await w.connect_all()
        start = time.monotonic() + 0.05
        prog = Progress(cfg, progress_stream, start)
        try:
            return await w.run(start, prog, server_cpu)
        finally:
            prog.finish()

    with new_runner() as runner:
        return runner.run(main())


def _proc_main(cfg: BenchConfig, index: int, q: Any, go: Any, start_at: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle

    async def main() -> None:
        w = Worker(cfg, index)
        try:
            await w.connect_all()
        except BenchError as e:
            q.put(("error", index, str(e)))
            return
        q.put(("ready", index, None))
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, go.wait, 60.0):
            w.close()
            return
        result = await w.run(start_at.value, lambda m: q.put(("progress", index, m)))
        q.put(("result", index, result))

    try:
        with new_runner() as runner:
            runner.run(main())
    except Exception as e:  # noqa: BLE001 - reported to the parent, which fails the run
        q.put(("error", index, f"{type(e).__name__}: {e}"))


def _run_multi(cfg: BenchConfig, progress_stream: Any, server_cpu: _CpuSampler) -> list[dict[str, Any]]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    go = ctx.Event()
    start_at = ctx.Value("d", 0.0)
    procs = [ctx.Process(target=_proc_main, args=(cfg, i, q, go, start_at), daemon=True) for i in range(cfg.procs)]
    for p in procs:
        p.start()
    results: dict[int, dict[str, Any]] = {}
    try:
        ready = 0
        deadline = time.monotonic() + 60
        while ready < cfg.procs:
            kind, index, payload = _get(q, procs, deadline)
            if kind == "error":
                raise BenchError(f"worker {index}: {payload}")
            if kind == "ready":
                ready += 1
        start = time.monotonic() + 0.2
        server_cpu.own |= {p.pid for p in procs}
        start_at.value = start
        go.set()
        prog = Progress(cfg, progress_stream, start)
        m_start, m_end = start + cfg.warmup, start + cfg.warmup + cfg.duration
        sampled = set()
        deadline = m_end + cfg.timeout + 30
        while len(results) < cfg.procs:
            now = time.monotonic()
            if "start" not in sampled and now >= m_start:
                sampled.add("start")
                server_cpu("start")
            if "end" not in sampled and now >= m_end:
                sampled.add("end")
                server_cpu("end")
            wake = m_start if "start" not in sampled else (m_end if "end" not in sampled else now + 0.5)
            try:
                kind, index, payload = _get(q, procs, deadline, timeout=max(0.001, min(0.5, wake - now)))
            except queue_mod.Empty:
                continue
            if kind == "error":
                raise BenchError(f"worker {index}: {payload}")
            if kind == "progress":
                prog(payload)
            elif kind == "result":
                results[index] = payload
        prog.finish()
        if "end" not in sampled:
            server_cpu("end")
    finally:
        go.set()
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
    return [results[i] for i in range(cfg.procs)]


def _get(q: Any, procs: list[Any], deadline: float, timeout: float | None = None) -> tuple[str, int, Any]:
    """The next worker message; fails if a worker died or the deadline passed."""
    while True:
        if time.monotonic() > deadline:
            raise BenchError("workers did not finish in time")
        try:
            return q.get(timeout=0.5 if timeout is None else timeout)
        except queue_mod.Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise BenchError(f"a worker process exited with code {dead[0].exitcode}")
            if timeout is not None:
                raise


# --- results ---------------------------------------------------------------------------------------


def _latency(h: Histogram) -> dict[str, float]:
    out = {k: round(v / 1000, 3) for k, v in h.percentiles(PERCENTILES).items()}
    out["mean"] = round(h.mean / 1000, 3)
    out["max"] = round((h.max or 0) / 1000, 3)
    return out


def summarize(
    cfg: BenchConfig,
    results: list[dict[str, Any]],
    server_cpu_s: float | None,
    machine_cpu_s: float | None = None,
    other_cpu_s: float | None = None,
) -> dict[str, Any]:
    """Merge the workers' stats: ops/s and latency (ms) for the scenario and per operation."""
    merged: dict[str, dict[str, Any]] = {}
    for res in results:
        for kind, st in res["stats"].items():
            m = merged.setdefault(kind, {"hist": Histogram(), "ok": 0, "errors": {}, "items": 0})
            m["hist"].merge(Histogram.from_dict(st["hist"]))
            m["ok"] += st["ok"]
            m["items"] += st["items"]
            for code, n in st["errors"].items():
                m["errors"][code] = m["errors"].get(code, 0) + n
    dur = cfg.duration
    by_op = {}
    for kind, m in sorted(merged.items()):
        by_op[kind] = {
            "ops": m["ok"],
            "ops_per_sec": round(m["ok"] / dur, 1),
            "latency_ms": _latency(m["hist"]),
            "errors": dict(sorted(m["errors"].items())),
        }
        if m["items"]:
            by_op[kind]["items_per_sec"] = round(m["items"] / dur, 1)
    main_hist = Histogram()
    ops = items = 0
    for kind in MIXES[cfg.mix]:
        if kind in merged:
            main_hist.merge(merged[kind]["hist"])
            ops += merged[kind]["ok"]
            items += merged[kind]["items"]
    errors: dict[str, int] = {}
    for m in merged.values():
        for code, n in m["errors"].items():
            errors[code] = errors.get(code, 0) + n
    client_cpu = sum(r["client_cpu"] for r in results)
    requests = sum(m["ok"] + sum(m["errors"].values()) for m in merged.values())
    summary: dict[str, Any] = {
        "label": cfg.label or f"{cfg.target} {cfg.mix}",
        "target": cfg.target,
        "mix": cfg.mix,
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("secret_access_key",)},
        "loop": loop_name(),
        "ops": ops,
        "ops_per_sec": round(ops / dur, 1),
        "latency_ms": _latency(main_hist),
        "errors": dict(sorted(errors.items())),
        "error_count": sum(errors.values()),
        "by_op": by_op,
        "client_cpu": {
            "seconds": round(client_cpu, 3),
            "us_per_request": round(client_cpu / requests * 1e6, 1) if requests else None,
        },
        "server_cpu": None,
    }
    if items:
        summary["items_per_sec"] = round(items / dur, 1)
    if machine_cpu_s is not None:
        # Busy CPU of the whole machine, split into the server, the generator, other user
        # processes (their load disturbs the numbers: shared machines, CI neighbours) and the
        # rest (kernel threads and interrupts: network softirqs, journal commits).
        mc: dict[str, Any] = {"cores": round(machine_cpu_s / dur, 2), "cpus": os.cpu_count(), "other_cores": None}
        if other_cpu_s is not None:
            mc["other_cores"] = round(other_cpu_s / dur, 2)
            kernel = machine_cpu_s - (server_cpu_s or 0.0) - client_cpu - other_cpu_s
            mc["kernel_cores"] = round(max(0.0, kernel) / dur, 2) if server_cpu_s is not None else None
        summary["machine_cpu"] = mc
    if server_cpu_s is not None:
        summary["server_cpu"] = {
            "pids": cfg.server_pids,
            "seconds": round(server_cpu_s, 3),
            "cores": round(server_cpu_s / dur, 2),
            "us_per_op": round(server_cpu_s / ops * 1e6, 1) if ops else None,
            "us_per_request": round(server_cpu_s / requests * 1e6, 1) if requests else None,
        }
    return summary


def start_null_server(value_size: int = 100) -> tuple[str, Any]:
    """Start the selftest server in its own process: (endpoint, process)."""
    from garagekv.bench.nullserver import run_process

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=run_process, args=(child, value_size), daemon=True)
    proc.start()
    child.close()
    if not parent.poll(30):
        proc.terminate()
        raise BenchError("the selftest server did not start")
    port, _pid = parent.recv()
    return f"127.0.0.1:{port}", proc


def stop_process(proc: Any) -> None:
    proc.terminate()
    proc.join(timeout=5)
    if proc.is_alive():
        proc.kill()
        proc.join(timeout=5)


__all__ = [
    "K2V_ONLY",
    "MIXES",
    "BenchConfig",
    "BenchError",
    "Worker",
    "prepare",
    "run_bench",
    "start_null_server",
    "stop_process",
    "summarize",
]
