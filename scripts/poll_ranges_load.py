#!/usr/bin/env python3
"""What idle PollRanges calls cost a node (not in CI: a minute or more of load).

Starts a ``garagekv dev`` cluster (one node unless ``--nodes``), takes markers for R
partitions with one call, then holds C concurrent ``poll_ranges`` calls of those R ranges open
on the first node (markers sent: nothing new, they wait). Reports the nodes' resident memory
before and while they wait, their CPU use to accept the calls and while they wait (idle: should
be near zero), and, after one write to one of the watched partitions, how long until every call
has answered and the CPU that took. Memory and CPU are summed over the cluster's nodes; the
client's own CPU is not counted.

Usage: scripts/poll_ranges_load.py [--calls C] [--ranges R] [--nodes N] [--window S]
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

from garagekv.bench.clusters import DevCluster, settle  # noqa: E402
from garagekv.bench.procstat import rss_bytes, total_cpu_seconds  # noqa: E402
from garagekv.client import K2VClient  # noqa: E402


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def poll_ranges(c: K2VClient, ranges: list[dict[str, Any]], timeout: int) -> tuple[int, Any]:
    body = {"timeout": timeout, "ranges": ranges}
    resp = await c._json("POST", None, [("poll_ranges", "")], body, idempotent=True, read_timeout=timeout + 60)
    return resp.status, (resp.json() if resp.status == 200 else None)


async def run(dev: DevCluster, calls: int, nranges: int, window: float) -> dict[str, Any]:
    info = dev.info
    pids = dev.pids

    def cpu() -> float:
        return total_cpu_seconds(pids) or 0.0

    def rss() -> int:
        return sum(rss_bytes(pid) or 0 for pid in pids)

    async with K2VClient(
        endpoint=dev.endpoints[0],
        access_key_id=info["access_key_id"],
        secret_access_key=info["secret_access_key"],
        bucket=info["bucket"],
        region=info["region"],
        max_connections=calls + 8,
        timeout=120,
    ) as c:
        pks = [f"watched-{i:03}" for i in range(nranges)]
        for pk in pks:
            await c.insert_item(pk, "a", b"1")
        status, first = await poll_ranges(c, [{"partitionKey": pk} for pk in pks], 10)
        assert status == 200, status
        ranges = [{"partitionKey": r["partitionKey"], "seenMarker": r["seenMarker"]} for r in first["ranges"]]
        settle(pids, 30)
        rss0 = rss()
        t0, cpu_start = time.monotonic(), cpu()
        tasks = [asyncio.ensure_future(poll_ranges(c, ranges, 300)) for _ in range(calls)]
        await asyncio.sleep(window)  # lets every call reach the node and start waiting
        setup_s = time.monotonic() - t0
        cpu0, w0 = cpu(), time.monotonic()
        start_cpu = cpu0 - cpu_start
        await asyncio.sleep(window)
        idle_cpu = (cpu() - cpu0) / (time.monotonic() - w0)
        rss1 = rss()
        done_early = sum(t.done() for t in tasks)
        cpu1, t1 = cpu(), time.monotonic()
        await c.insert_item(pks[nranges // 2], "b", b"2")
        results = await asyncio.gather(*tasks)
        wake_s = time.monotonic() - t1
        wake_cpu = cpu() - cpu1
    woken = sum(1 for s, _ in results if s == 200)
    return {
        "nodes": len(pids),
        "calls": calls,
        "ranges_per_call": nranges,
        "rss_before_MiB": round(rss0 / 2**20, 1),
        "rss_waiting_MiB": round(rss1 / 2**20, 1),
        "rss_per_call_KiB": round((rss1 - rss0) / 1024 / calls, 1),
        "seconds_to_start_calls_upper_bound": round(setup_s, 1),
        "node_cpu_seconds_to_start_calls": round(start_cpu, 2),
        "answered_before_the_write": done_early,
        "node_cpu_cores_while_waiting": round(idle_cpu, 3),
        "answered_200_after_one_write": woken,
        "seconds_until_every_call_answered": round(wake_s, 2),
        "node_cpu_seconds_for_that_wake": round(wake_cpu, 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--ranges", type=int, default=64)
    ap.add_argument("--nodes", type=int, default=1, help="cluster size (the calls all go to the first node)")
    ap.add_argument("--window", type=float, default=10.0, help="seconds to start the calls, then to measure idle")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="poll-ranges-load-") as tmp, DevCluster(Path(tmp), args.nodes) as dev:
        res = asyncio.run(run(dev, args.calls, args.ranges, args.window))
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
