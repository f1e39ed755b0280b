#!/usr/bin/env python3
"""``make chaos``: long randomized fault schedules against a real 3-node cluster, checked.

Each run starts its own cluster in a temporary directory, drives the clients and the nemesis
for ``--duration`` seconds with the schedule drawn from ``--seed``, heals, runs every checker of
``tests/checker`` and writes the history (JSON lines, the verdict last) to ``--out``. Prints
the figures (operations, faults injected, anomalies). ``--runs N`` repeats with seeds S, S+1...
The exit status is 1 if any run found an anomaly. See docs/testing.md.

    python scripts/chaos.py --seed 7 --duration 300 --out chaos-results/seed-7.jsonl
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.chaos import run_chaos  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--seed", type=int, default=int(time.time()) % 100_000, help="schedule seed (default: from the time)"
    )
    p.add_argument("--duration", type=float, default=300.0, help="seconds of faults per run (default 300)")
    p.add_argument("--runs", type=int, default=1, help="runs, with seeds seed, seed+1, ... (default 1)")
    p.add_argument("--out", type=Path, default=None, help="history file (default chaos-results/chaos-<seed>.jsonl)")
    p.add_argument("--keep", action="store_true", help="keep the node directories (logs) of the runs")
    args = p.parse_args(argv)
    failed = 0
    for i in range(args.runs):
        seed = args.seed + i
        out = args.out if args.out is not None and args.runs == 1 else Path("chaos-results") / f"chaos-{seed}.jsonl"
        root = Path(tempfile.mkdtemp(prefix=f"garagekv-chaos-{seed}-"))
        try:
            verdict = run_chaos(root, seed, args.duration, out)
        finally:
            if args.keep:
                print(f"node directories kept in {root}")
            else:
                shutil.rmtree(root, ignore_errors=True)
        print(f"history and verdict: {out}")
        for a in verdict.anomalies[:20]:
            print(f"  {a.kind}: {a.message}")
        failed += not verdict.ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
