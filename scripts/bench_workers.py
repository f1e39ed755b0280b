#!/usr/bin/env python3
"""``make bench-workers``: one host with N workers against one with 1, in the same run.

Starts one ``garagekv dev --nodes 1 --workers W`` cluster per worker count (all at once, so the
runs can alternate), prefills each, then for ``BENCH_ROUNDS`` rounds runs every scenario against
every cluster in turn and keeps the median of the rounds. Each row reports the throughput, the
p99, the CPU the server processes used (cores, and per operation), the CPU of the load generator
(which shares the machine's cores with the servers) and of other processes. The per-core figures
(operations per second per server core) are what docs/performance.md extrapolates to a bigger
host. Writes ``bench-results/workers-<time>.{json,md}``.

Environment (defaults in brackets):
  BENCH_WORKERS [1,2]          worker counts to compare     BENCH_SCENARIOS [write,read]
  BENCH_DURATION [8]           measured seconds per run     BENCH_WARMUP [2]
  BENCH_CONNS [64]             connections                  BENCH_PROCS [1]  generator processes
  BENCH_ROUNDS [3]             runs per cluster and scenario (alternating); the median is kept
  BENCH_KEYS [10000]           prefilled items              BENCH_VALUE_SIZE [100]
  BENCH_SETTLE [120]           wait for the servers' background work before each run
  BENCH_WAIT_QUIET [0]         wait up to this long for other processes to go idle before each run
  BENCH_MAX_OTHER [0.25]       a run during which other processes used more cores than this is
  BENCH_RETRIES [0]            run again, up to this many times; the least disturbed run is kept
                               and a row still above the limit is flagged (the machine is shared)
  BENCH_OUT [bench-results]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from garagekv.bench.clusters import DevCluster, run_bench_cli, settle, wait_quiet  # noqa: E402
from garagekv.bench.report import fmt_ms, fmt_num  # noqa: E402


def env(name: str, default: str) -> str:
    return os.environ.get(name, "").strip() or default


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def settings() -> dict[str, Any]:
    return {
        "workers": [int(w) for w in env("BENCH_WORKERS", "1,2").split(",") if w.strip()],
        "scenarios": [s.strip() for s in env("BENCH_SCENARIOS", "write,read").split(",") if s.strip()],
        "duration": float(env("BENCH_DURATION", "8")),
        "warmup": float(env("BENCH_WARMUP", "2")),
        "conns": int(env("BENCH_CONNS", "64")),
        "procs": int(env("BENCH_PROCS", "1")),
        "rounds": int(env("BENCH_ROUNDS", "3")),
        "keys": int(env("BENCH_KEYS", "10000")),
        "value_size": int(env("BENCH_VALUE_SIZE", "100")),
        "settle": float(env("BENCH_SETTLE", "120")),
        "wait_quiet": float(env("BENCH_WAIT_QUIET", "0")),
        "max_other": float(env("BENCH_MAX_OTHER", "0.25")),
        "retries": int(env("BENCH_RETRIES", "0")),
        "out": Path(env("BENCH_OUT", "bench-results")),
    }


def run(s: dict[str, Any], dev: DevCluster, workers: int, scenario: str, prefill: bool) -> dict[str, Any]:
    """One measured run; again (up to BENCH_RETRIES times) while other processes disturb it."""
    best: dict[str, Any] | None = None
    for attempt in range(1 + s["retries"]):
        row = run_once(s, dev, workers, scenario, prefill and attempt == 0)
        if best is None or row["other_cores"] < best["other_cores"]:
            best = row
        if row["other_cores"] <= s["max_other"]:
            break
    assert best is not None
    best["disturbed"] = best["other_cores"] > s["max_other"]
    return best


def run_once(s: dict[str, Any], dev: DevCluster, workers: int, scenario: str, prefill: bool) -> dict[str, Any]:
    settle(dev.pids, s["settle"])
    if s["wait_quiet"] > 0 and not wait_quiet(s["wait_quiet"], exclude=dev.pids):
        say(f"  (the machine stayed busy for {s['wait_quiet']:g}s; running anyway)")
    args = [
        "--dev-json", str(dev.json_path), "--mix", scenario, "--duration", str(s["duration"]),
        "--warmup", str(s["warmup"]), "--conns", str(s["conns"]), "--procs", str(s["procs"]),
        "--keys", str(s["keys"]), "--value-size", str(s["value_size"]),
        "--label", f"{workers} worker(s) {scenario}",
    ]  # fmt: skip
    r = run_bench_cli([*args, "--prefill"] if prefill else args)
    generator = r["client_cpu"]["seconds"] / s["duration"]
    row = {
        "workers": workers,
        "scenario": scenario,
        "ops_per_sec": r["ops_per_sec"],
        "p99_ms": r["latency_ms"]["p99"],
        "errors": r["error_count"],
        "server_cores": r["server_cpu"]["cores"],
        "server_us_per_op": r["server_cpu"]["us_per_op"],
        "generator_cores": round(generator, 2),
        "other_cores": r["machine_cpu"]["other_cores"],
        "kernel_cores": r["machine_cpu"].get("kernel_cores"),
    }
    say(
        f"  {workers} worker(s) {scenario:<6} {fmt_num(row['ops_per_sec']):>7} ops/s  p99 {fmt_ms(row['p99_ms']):>6} ms"
        f"  server {row['server_cores']:.2f} cores  generator {row['generator_cores']:.2f}"
        f"  others {row['other_cores']:.2f}"
    )
    return row


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median throughput (the lower middle one of an even count), with all throughputs."""
    ordered = sorted(rows, key=lambda r: r["ops_per_sec"])
    out = dict(ordered[(len(ordered) - 1) // 2])
    out["rounds"] = [r["ops_per_sec"] for r in rows]
    out["ops_per_server_core"] = round(out["ops_per_sec"] / out["server_cores"], 0) if out["server_cores"] else None
    return out


def markdown(s: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{s['conns']} connections, {s['duration']:g} s measured after {s['warmup']:g} s, median of "
        f"{s['rounds']} alternating rounds; one host (`garagekv dev --nodes 1 --workers W`, rf 1). "
        f"Other cores marked *: other processes used more than {s['max_other']:g} cores during every attempt "
        f"({1 + s['retries']}) of that run.",
        "",
        "| workers | scenario | ops/s | p99 ms | server cores | server CPU us/op | ops/s per server core "
        "| generator cores | other cores | rounds (ops/s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workers']} | {r['scenario']} | {fmt_num(r['ops_per_sec'])} | {fmt_ms(r['p99_ms'])} "
            f"| {r['server_cores']:.2f} | {fmt_num(r['server_us_per_op'])} | {fmt_num(r['ops_per_server_core'])} "
            f"| {r['generator_cores']:.2f} | {r['other_cores']:.2f}{' *' if r['disturbed'] else ''} "
            f"| {', '.join(fmt_num(x) for x in r['rounds'])} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    s = settings()
    work = Path(tempfile.mkdtemp(prefix="garagekv-bench-workers-"))
    clusters: dict[int, DevCluster] = {}
    raw: dict[tuple[int, str], list[dict[str, Any]]] = {}
    try:
        for w in s["workers"]:
            say(f"starting garagekv dev --nodes 1 --workers {w}")
            clusters[w] = DevCluster(work / f"workers-{w}", 1, w).start()
        for rnd in range(s["rounds"]):
            say(f"round {rnd + 1}/{s['rounds']}")
            for scenario in s["scenarios"]:
                for w, dev in clusters.items():
                    prefill = rnd == 0 and scenario in ("read", "mixed", "batch")
                    raw.setdefault((w, scenario), []).append(run(s, dev, w, scenario, prefill))
    finally:
        for dev in clusters.values():
            dev.stop()
    rows = [median_row(raw[(w, sc)]) for sc in s["scenarios"] for w in s["workers"]]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    s["out"].mkdir(parents=True, exist_ok=True)
    text = markdown(s, rows)
    (s["out"] / f"workers-{stamp}.md").write_text(text)
    summary = {k: str(v) if isinstance(v, Path) else v for k, v in s.items()}
    (s["out"] / f"workers-{stamp}.json").write_text(
        json.dumps({"run": stamp, "settings": summary, "rows": rows, "runs": [r for v in raw.values() for r in v]})
    )
    print(text)
    say(f"results: {s['out']}/workers-{stamp}.md, .json ({time.strftime('%H:%M:%S')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
