#!/usr/bin/env python3
"""What pending expiries cost a node (not in CI: a minute or more): the expiry worker and its index.

A direct measurement, cheaper than loading a node through HTTP as ``make bench-scale`` does: one
node's model on a fresh LMDB environment in this process (no network, no layout: every item is
this node's), with only the expiry worker running, as in a node. It reports:

1. the process's CPU over ``--window`` seconds with no pending expiry (the baseline);
2. ``--items`` values with a TTL and half as many without, in alternating InsertBatch-sized
   transactions: write throughput with and without the expiry index, on the same growing
   environment. Half the TTLs are one hour (expiries in write order: the index grows at its end,
   the usual case), half spread from 1 hour to 1 year in random order (the index's worst case);
3. the process's CPU over ``--window`` seconds with those ``--items`` expiries pending, none due,
   and how many steps the worker ran meanwhile (it should sleep until the first is due);
4. ``--burst`` values with a 1 s TTL on top: the time from their expiry until the worker has
   written every tombstone, and the CPU per expired value.

Usage: scripts/bench_expiry.py [--items N] [--burst N] [--window S] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from garagekv.model.k2v.messages import InsertedItem  # noqa: E402
from garagekv.util.background import BackgroundRunner, WorkerState  # noqa: E402
from tests.support.standalone import StandaloneModel  # noqa: E402

BUCKET = b"\x42" * 32
BATCH = 1000  # items per transaction, as one InsertBatch request
HOUR, YEAR = 3600, 31_536_000


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cpu() -> float:
    return time.process_time()


def batch(prefix: str, start: int, n: int, ttl_of: Any) -> list[InsertedItem]:
    return [
        InsertedItem(f"{prefix}-{i // 1000:06d}", f"{i % 1000:04d}", None, b"v" * 100, ttl_of(i))
        for i in range(start, min(n, start + BATCH))
    ]


async def load(sm: StandaloneModel, kinds: dict[str, Any], n: int) -> dict[str, float]:
    """Insert ``n`` items of each kind (prefix -> ttl of item i), one transaction of ``BATCH`` of
    each kind in turn; returns items per second of each kind."""
    k2v = sm.model.k2v
    spent = dict.fromkeys(kinds, 0.0)
    for start in range(0, n, BATCH):
        for prefix, ttl_of in kinds.items():
            items = batch(prefix, start, n, ttl_of)
            t0 = time.perf_counter()
            await k2v.insert_many(BUCKET, items)
            spent[prefix] += time.perf_counter() - t0
        if start and start % 100_000 == 0:
            say(f"  {start} items of each kind")
    return {prefix: n / s for prefix, s in spent.items()}


async def idle_cpu(window: float, steps: list[int]) -> dict[str, float]:
    before_steps, c0, t0 = steps[0], cpu(), time.perf_counter()
    await asyncio.sleep(window)
    return {
        "cpu_s": round(cpu() - c0, 4),
        "wall_s": round(time.perf_counter() - t0, 2),
        "worker_steps": steps[0] - before_steps,
    }


async def run(args: argparse.Namespace, path: Path) -> dict[str, Any]:
    sm = StandaloneModel(path, map_size=8 << 30, fsync=False)
    out: dict[str, Any] = {"items": args.items, "burst": args.burst, "window_s": args.window}
    worker = sm.model.expiry
    steps = [0]
    work = worker.work

    async def counted() -> WorkerState:
        steps[0] += 1
        return await work()

    worker.work = counted  # type: ignore[method-assign]
    runner = BackgroundRunner()
    runner.spawn(worker)
    try:
        await asyncio.sleep(0.5)
        say(f"baseline: {args.window} s with no pending expiry")
        out["idle_empty"] = await idle_cpu(args.window, steps)

        say(f"loading {args.items} items with a TTL and {args.items // 2} without")
        kinds = {
            "plain": lambda i: None,
            "ttl_1h": lambda i: HOUR,
            "ttl_spread": lambda i: HOUR + i * 7919 % (YEAR - HOUR),
        }
        rates = await load(sm, kinds, args.items // 2)
        for kind, rate in rates.items():
            out[f"insert_per_s_{kind}"] = round(rate)
        out["pending"] = len(sm.model.expiry_index)

        say(f"{args.window} s with {out['pending']} pending expiries, none due")
        out["idle_pending"] = await idle_cpu(args.window, steps)

        say(f"{args.burst} values with a 1 s TTL")
        done_before, c0 = worker.expired, cpu()
        await load(sm, {"burst": lambda i: 1}, args.burst)
        due_at = time.time() + 1.0  # at the latest
        while worker.expired - done_before < args.burst:
            await asyncio.sleep(0.01)
        out["burst_done_after_due_s"] = round(max(0.0, time.time() - due_at), 3)
        out["burst_cpu_s_incl_writes"] = round(cpu() - c0, 3)
        out["pending_after"] = len(sm.model.expiry_index)
    finally:
        await runner.stop()
        sm.close()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=1_000_000, help="pending expiries to hold (default 1000000)")
    p.add_argument("--burst", type=int, default=10_000, help="values expiring together (default 10000)")
    p.add_argument("--window", type=float, default=20.0, help="seconds of each idle measurement (default 20)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-expiry-") as tmp:
        out = asyncio.run(run(args, Path(tmp) / "db"))
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
