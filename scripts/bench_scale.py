#!/usr/bin/env python3
"""``make bench-scale`` (not in CI): does a node stay as fast with 1M items as with 10k?

Starts one ``garagekv dev`` node, loads BENCH_SCALE_BASE items, measures InsertItem, ReadItem,
ReadBatch (100-item ranges) and ReadIndex (10-partition pages), loads up to BENCH_SCALE_ITEMS,
measures again, and reports the latency ratios (target: within 1.5x) with the node's memory
(RSS) and disk use per item. Results go to ``bench-results/scale-<time>.{json,md}``.

Environment (defaults in brackets):
  BENCH_SCALE_ITEMS [1000000]  items at the large stage (10M if the disk allows)
  BENCH_SCALE_BASE [10000]     items at the small stage
  BENCH_SCALE_CONNS [16]       connections while measuring (moderate load: latency, not saturation)
  BENCH_SCALE_SETTLE [900]     after loading, wait up to this long for the node's background work
                               (Merkle to-do, index counters) to finish before measuring
  BENCH_WAIT_QUIET [0]         before each measurement, wait up to this long for other processes to
                               be idle (shared machines)
  BENCH_DURATION [8]  BENCH_WARMUP [2]  BENCH_VALUE_SIZE [100]  BENCH_OUT [bench-results]
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from garagekv.bench.clusters import DevCluster, run_bench_cli, settle, wait_quiet  # noqa: E402
from garagekv.bench.config import BenchConfig  # noqa: E402
from garagekv.bench.prefill import prepare  # noqa: E402
from garagekv.bench.procstat import disk_usage, rss_bytes  # noqa: E402
from garagekv.bench.report import fmt_ms, fmt_num  # noqa: E402
from garagekv.util.loop import new_runner  # noqa: E402

# (name, mix, batch size): the operations compared between the two stages
OPERATIONS = (
    ("InsertItem", "write", 100),
    ("ReadItem", "read", 100),
    ("ReadBatch (100 items)", "batch", 100),
    ("ReadIndex (10 partitions)", "index", 10),
)
TARGET_RATIO = 1.5


def env(name: str, default: str) -> str:
    return os.environ.get(name, "").strip() or default


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load(dev: DevCluster, items: int, value_size: int) -> dict[str, Any]:
    info = dev.info
    cfg = BenchConfig(
        endpoints=dev.endpoints,
        bucket=info["bucket"],
        access_key_id=info["access_key_id"],
        secret_access_key=info["secret_access_key"],
        region=info["region"],
        keys=items,
        value_size=value_size,
        prefill=True,
        mix="read",
    )
    with new_runner() as runner:
        return runner.run(prepare(cfg, say))["prefill"]


def measure(dev: DevCluster, items: int, s: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, mix, batch in OPERATIONS:
        settle(dev.pids, s["settle"])
        if s["wait_quiet"] > 0 and not wait_quiet(s["wait_quiet"], exclude=dev.pids):
            say(f"  (the machine stayed busy for {s['wait_quiet']:g}s; running anyway)")
        r = run_bench_cli(
            [
                "--dev-json",
                str(dev.json_path),
                "--mix",
                mix,
                "--keys",
                str(items),
                "--batch-size",
                str(batch),
                "--conns",
                str(s["conns"]),
                "--duration",
                str(s["duration"]),
                "--warmup",
                str(s["warmup"]),
                "--value-size",
                str(s["value_size"]),
            ]
        )
        out[name] = r
        lat = r["latency_ms"]
        errs = f"  {r['error_count']} errors" if r["error_count"] else ""
        say(
            f"  {name:<26} {fmt_num(r['ops_per_sec']):>8} ops/s  p50 {fmt_ms(lat['p50']):>6} ms  "
            f"p99 {fmt_ms(lat['p99']):>6} ms{errs}"
        )
    return out


def footprint(dev: DevCluster) -> dict[str, int | None]:
    pid = dev.pids[0]
    return {
        "rss_bytes": rss_bytes(pid),
        "rss_anon_bytes": rss_bytes(pid, "RssAnon"),
        "rss_file_bytes": rss_bytes(pid, "RssFile"),
        "disk_bytes": disk_usage(dev.meta_dirs[0]),
    }


def main() -> int:
    s = {
        "items": int(float(env("BENCH_SCALE_ITEMS", "1000000"))),
        "base": int(float(env("BENCH_SCALE_BASE", "10000"))),
        "conns": int(env("BENCH_SCALE_CONNS", "16")),
        "duration": float(env("BENCH_DURATION", "8")),
        "warmup": float(env("BENCH_WARMUP", "2")),
        "value_size": int(env("BENCH_VALUE_SIZE", "100")),
        "settle": float(env("BENCH_SCALE_SETTLE", "900")),
        "wait_quiet": float(env("BENCH_WAIT_QUIET", "0")),
    }
    if s["items"] <= s["base"]:
        say("BENCH_SCALE_ITEMS must be larger than BENCH_SCALE_BASE")
        return 2
    out = Path(env("BENCH_OUT", "bench-results"))
    out.mkdir(parents=True, exist_ok=True)
    need = s["items"] * (s["value_size"] + 400) * 2  # rough: item, index entries, LMDB slack
    free = shutil.disk_usage(out).free
    if need > free:
        say(f"not enough disk for {s['items']:,} items (about {need / 1e9:.1f} GB needed, {free / 1e9:.1f} GB free)")
        return 2
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    work = Path(tempfile.mkdtemp(prefix="scale-work-", dir=out))
    stages: dict[str, Any] = {}
    t0 = time.monotonic()
    try:
        with DevCluster(work / "garagekv", 1) as dev:
            for n in (s["base"], s["items"]):
                say(f"loading {n:,} items")
                loaded = load(dev, n, s["value_size"])
                loaded["settle_seconds"] = round(settle(dev.pids, s["settle"]), 1)
                say(f"background work after loading took {loaded['settle_seconds']:.0f}s")
                say(f"measuring at {n:,} items ({s['conns']} connections)")
                stages[str(n)] = {"items": n, "load": loaded, "footprint": footprint(dev), "ops": measure(dev, n, s)}
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        shutil.rmtree(work, ignore_errors=True)

    small, large = stages[str(s["base"])], stages[str(s["items"])]
    rows = []
    for name, _, _ in OPERATIONS:
        a, b = small["ops"][name], large["ops"][name]
        rp50 = _ratio(b["latency_ms"]["p50"], a["latency_ms"]["p50"])
        rp99 = _ratio(b["latency_ms"]["p99"], a["latency_ms"]["p99"])
        rcpu = _ratio(_cpu(b), _cpu(a))
        ok = rp50 is not None and rp99 is not None and max(rp50, rp99) <= TARGET_RATIO
        rows.append((name, a, b, rp50, rp99, rcpu, ok))
    fa, fb = small["footprint"], large["footprint"]
    lines = [
        f"# garagekv scale run ({stamp})",
        "",
        f"- one node, {s['value_size']} B values, {s['conns']} connections, {s['duration']:g} s per operation, "
        f"runtime {time.monotonic() - t0:.0f} s",
        f"- load rate: {fmt_num(large['load']['items_per_sec'])} items/s (InsertBatch of 1000, 8 connections); "
        f"the node's background work then took {large['load']['settle_seconds']:.0f} s more",
        f"- other processes on the machine: up to {_max_other(stages):.2f} cores during a measurement",
        "",
        f"| operation | ops/s @{s['base']:,} | p50 ms | p99 ms | CPU us/op | ops/s @{s['items']:,} | p50 ms "
        f"| p99 ms | CPU us/op | p50 ratio | p99 ratio | CPU ratio | latency within {TARGET_RATIO}x |",
        "|" + "---|" * 13,
    ]
    for name, a, b, rp50, rp99, rcpu, ok in rows:
        la, lb = a["latency_ms"], b["latency_ms"]
        lines.append(
            f"| {name} | {fmt_num(a['ops_per_sec'])} | {fmt_ms(la['p50'])} | {fmt_ms(la['p99'])} | "
            f"{fmt_num(_cpu(a))} | {fmt_num(b['ops_per_sec'])} | {fmt_ms(lb['p50'])} | {fmt_ms(lb['p99'])} | "
            f"{fmt_num(_cpu(b))} | {_r(rp50)} | {_r(rp99)} | {_r(rcpu)} | {'yes' if ok else 'NO'} |"
        )
    lines += [
        "",
        "RSS is the node's resident memory: heap (RssAnon) plus mapped LMDB pages (RssFile, page cache "
        "that the kernel can reclaim).",
        "",
        "| | RSS | of which heap | of which LMDB pages | disk | RSS per item | heap per item | disk per item |",
        "|" + "---|" * 8,
    ]
    for label, f, n in ((f"{s['base']:,} items", fa, s["base"]), (f"{s['items']:,} items", fb, s["items"])):
        lines.append(
            f"| {label} | {_mb(f['rss_bytes'])} | {_mb(f['rss_anon_bytes'])} | {_mb(f['rss_file_bytes'])} | "
            f"{_mb(f['disk_bytes'])} | {_per(f['rss_bytes'], n)} | {_per(f['rss_anon_bytes'], n)} | "
            f"{_per(f['disk_bytes'], n)} |"
        )
    dn = s["items"] - s["base"]
    lines.append(
        f"| marginal ({dn:,} items) | | | | | {_per(_sub(fb, fa, 'rss_bytes'), dn)} | "
        f"{_per(_sub(fb, fa, 'rss_anon_bytes'), dn)} | {_per(_sub(fb, fa, 'disk_bytes'), dn)} |"
    )
    md = "\n".join(lines) + "\n"
    base = out / f"scale-{stamp}"
    base.with_suffix(".json").write_text(json.dumps({"settings": s, "stages": stages}, indent=1))
    base.with_suffix(".md").write_text(md)
    print(md)
    print(f"results: {base}.json, {base}.md")
    return 0


def _max_other(stages: dict[str, Any]) -> float:
    return max(
        ((r.get("machine_cpu") or {}).get("other_cores") or 0.0) for st in stages.values() for r in st["ops"].values()
    )


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _cpu(r: dict[str, Any]) -> float | None:
    return (r.get("server_cpu") or {}).get("us_per_op")


def _sub(b: dict[str, Any], a: dict[str, Any], k: str) -> int | None:
    return None if b.get(k) is None or a.get(k) is None else b[k] - a[k]


def _r(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _mb(v: int | None) -> str:
    return "-" if v is None else f"{v / 2**20:,.1f} MiB"


def _per(v: int | None, n: int) -> str:
    return "-" if v is None or n <= 0 else f"{v / n:,.0f} B"


if __name__ == "__main__":
    sys.exit(main())
