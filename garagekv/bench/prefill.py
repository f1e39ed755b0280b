"""Before a run: prefill the keyspace, write the poll scenario's hot items and the counter's item;
after a counter run: check the counter against the increments that applied."""

from __future__ import annotations

import json
import random
import secrets
import time
from collections.abc import Callable
from typing import Any

from garagekv.bench.config import HULY_MIXES, BenchConfig, BenchError
from garagekv.bench.conn import Conn, describe, make_conn, run_on_all, send
from garagekv.bench.http import Response
from garagekv.bench.worker import counter_item, hot_item, make_value, stamp
from garagekv.bench.workload import EtcdTarget, K2VTarget
from garagekv.util.signing import SigningKeyCache


async def prepare(cfg: BenchConfig, log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Prefill the keyspace (``cfg.prefill``) and create the poll scenario's hot items."""
    info: dict[str, Any] = {}
    if cfg.prefill:
        t0 = time.monotonic()
        if cfg.target == "k2v" and cfg.mix not in HULY_MIXES:
            await _prefill_k2v(cfg, log)
        else:
            await _prefill_puts(cfg)  # etcd, or the Hulykvs API's keys
        dt = time.monotonic() - t0
        info["prefill"] = {"items": cfg.keys, "seconds": round(dt, 3), "items_per_sec": round(cfg.keys / dt, 1)}
        log(f"prefilled {cfg.keys:,} items in {dt:.1f}s ({cfg.keys / dt:,.0f} items/s)")
    if cfg.mix == "poll":
        await _write_hot_items(cfg)
    if cfg.mix == "counter":
        await _create_counter(cfg)
    return info


async def _prefill_k2v(cfg: BenchConfig, log: Callable[[str], None] = lambda s: None, conns_n: int = 8) -> None:
    """InsertBatch of partition slices, each with the tokens of what is already there, so that
    prefilling twice overwrites instead of adding concurrent values."""
    ks = cfg.keyspace
    value = make_value(cfg.value_size, random.Random(secrets.randbits(64)))
    per_batch = max(1, min(1000, 2_000_000 // (cfg.value_size * 4 // 3 + 64)))
    jobs: list[tuple[int, int]] = []  # [first, last) item indexes, inside one partition
    for part in range(ks.partitions):
        lo, hi = part * ks.per_partition, min(cfg.keys, (part + 1) * ks.per_partition)
        jobs.extend((i, min(hi, i + per_batch)) for i in range(lo, hi, per_batch))
    jobs.reverse()
    keys = SigningKeyCache(maxsize=4)
    conns = [make_conn(cfg, i, keys) for i in range(min(conns_n, len(jobs)))]
    done = 0
    t0 = next_log = time.monotonic()

    async def run(c: Conn) -> None:
        nonlocal done, next_log
        t = c.target
        assert isinstance(t, K2VTarget)
        while jobs:
            lo, hi = jobs.pop()
            pk, first = ks.item(lo)
            r = await send(c, t.read_batch(pk, first, hi - lo))
            if isinstance(r, str) or r.status != 200:
                raise BenchError(f"prefill: ReadBatch failed: {describe(r)}")
            tokens = {it["sk"]: it["ct"] for it in json.loads(r.body)[0]["items"]}
            batch: list[tuple[str, str, str | None, bytes | None]] = [
                (pk, sk, tokens.get(sk), value) for pk, sk in map(ks.item, range(lo, hi))
            ]
            r = await send(c, t.insert_batch(batch))
            if isinstance(r, str) or r.status != 204:
                raise BenchError(f"prefill: InsertBatch failed: {describe(r)}")
            done += hi - lo
            now = time.monotonic()
            if now >= next_log + 10:
                next_log = now
                log(f"prefill: {done:,}/{cfg.keys:,} items ({done / (now - t0):,.0f} items/s)")

    await run_on_all(conns, run)


async def _prefill_puts(cfg: BenchConfig) -> None:
    """One write per item (etcd puts, Hulykvs PUTs): no batch endpoint, so 64 connections."""
    ks = cfg.keyspace
    value = make_value(cfg.value_size, random.Random(secrets.randbits(64)))
    todo = list(range(cfg.keys))
    conns = [make_conn(cfg, i, SigningKeyCache()) for i in range(min(64, cfg.keys))]

    async def run(c: Conn) -> None:
        while todo:
            pk, sk = ks.item(todo.pop())
            r = await send(c, c.target.write(pk, sk, value))
            if isinstance(r, str) or c.target.check_write(r) is not None:
                raise BenchError(f"prefill: put failed: {describe(r)}")

    await run_on_all(conns, run)


async def _write_hot_items(cfg: BenchConfig) -> None:
    c = make_conn(cfg, 0, SigningKeyCache())
    t = c.target
    try:
        for i in range(cfg.poll_keys):
            pk, sk = hot_item(cfg, i)
            r = await send(c, t.read(pk, sk))
            token = t.token(r) if isinstance(r, Response) and r.status in (200, 204) else None
            r = await send(c, t.write(pk, sk, stamp(cfg.value_size), None, token))
            if isinstance(r, str) or r.status not in (200, 204):
                raise BenchError(f"cannot write the hot item {pk}/{sk}: {describe(r)}")
    finally:
        if c.http is not None:
            c.http.close()


def _consensus_conn(cfg: BenchConfig) -> tuple[Conn, K2VTarget | EtcdTarget]:
    c = make_conn(cfg, 0, SigningKeyCache())
    assert isinstance(c.target, K2VTarget | EtcdTarget)
    return c, c.target


async def _create_counter(cfg: BenchConfig) -> None:
    """The counter's item, holding ``0`` (a conditional create: the item is new for each run)."""
    c, t = _consensus_conn(cfg)
    pk, sk = counter_item(cfg)
    try:
        r = await send(c, t.cas(pk, sk, b"0", None, None))
        if isinstance(r, str) or t.cas_result(r)[0] is not None:
            raise BenchError(f"cannot create the counter {pk}/{sk}: {describe(r)}")
    finally:
        if c.http is not None:
            c.http.close()


async def check_counter(cfg: BenchConfig, totals: dict[str, int]) -> dict[str, Any]:
    """Read the counter (linearizably) and compare it with the increments that applied.

    ``totals`` are the workers' whole-run counts (warmup included). An attempt whose outcome is
    unknown (503, timeout, connection lost, cancelled at the end of the run) may have applied,
    so the counter may exceed the increments by at most that many; anything else is a lost or
    invented update.
    """
    c, t = _consensus_conn(cfg)
    pk, sk = counter_item(cfg)
    unknown = totals["attempts"] - totals["increments"] - totals["conflicts"] - totals["rejected"]
    out: dict[str, Any] = {**totals, "unknown": unknown, "expected": totals["increments"], "final": None}
    try:
        r = await send(c, t.read_latest(pk, sk))
    finally:
        if c.http is not None:
            c.http.close()
    if isinstance(r, str):
        out.update(ok=False, problem=f"cannot read the counter: {r}")
        return out
    code, raw, _ = t.latest_result(r)
    try:
        final = int(raw) if code is None and raw is not None else None
    except ValueError:
        final = None
    if final is None:
        out.update(ok=False, problem=f"cannot read the counter: {describe(r)}")
        return out
    out["final"] = final
    if final == totals["increments"]:
        out["ok"] = True
    elif totals["increments"] < final <= totals["increments"] + unknown:
        out["ok"] = True
        out["problem"] = f"{final - totals['increments']} attempt(s) of unknown outcome applied"
    else:
        out["ok"] = False
        out["problem"] = f"COUNTER MISMATCH: the counter is {final}, {totals['increments']} increments applied"
    return out
