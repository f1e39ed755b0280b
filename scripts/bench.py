#!/usr/bin/env python3
"""``make bench``: garagekv (1 node, 3 nodes rf=3) and, when installed, etcd side by side.

Runs the generator's selftest, then for each cluster size starts ``garagekv dev`` and runs the
write, read, mixed, ReadBatch and PollItem fan-out scenarios, the consensus path (cas: conditional
writes, txn: partition transactions, counter: a hot CAS loop) and the Hulykvs-compatible API
(hulykvs-put, hulykvs-get), then (when an ``etcd`` binary is on PATH: ``apt-get install
etcd-server``) starts etcd with as many members and runs write, read, and cas/txn/counter as etcd
transactions. Prints one table with the garagekv/etcd ratios, one with Hulykvs against K2V, and writes
``bench-results/bench-<time>.{json,md}`` (and ``.png`` when matplotlib is installed:
``pip install -e '.[bench]'``).

Environment (defaults in brackets):
  BENCH_DURATION [8]  measured seconds per scenario     BENCH_WARMUP [2]  warmup seconds
  BENCH_CONNS [64]    connections                       BENCH_PROCS [1]   generator processes
  BENCH_VALUE_SIZE [100]  value bytes                   BENCH_KEYS [10000]  prefilled items
  BENCH_NODES [1,3]   cluster sizes
  BENCH_SCENARIOS [write,read,mixed,batch,poll,cas,txn,counter,hulykvs-put,hulykvs-get]
                      (also ttl: writes with a 2 s TTL, so values expire while the run goes on;
                      watch: PollRanges pollers over 64 partitions while writers insert into them)
  BENCH_WATCH_POLLERS [BENCH_CONNS]  watch: poller connections (each one PollRanges call of 64 ranges)
  BENCH_WATCH_WRITERS [16]  watch: writer connections (InsertItem into the watched partitions)
  BENCH_COUNTER_CONNS [16]  connections of the counter scenario (all on one hot item)
  BENCH_ETCD [auto]   auto | 0 (skip) | 1 (required)    BENCH_SELFTEST [1]  run the selftest
  BENCH_OUT [bench-results]  output directory
  BENCH_REPEAT [1]    runs per scenario; the median run (by ops/s, the lower one of an even count) is kept
  BENCH_SETTLE [120]  before each run, wait up to this long for the cluster to finish the background
                      work of the previous one (prefill and writes leave Merkle/index work behind)
  BENCH_WAIT_QUIET [0]  before each run, wait up to this many seconds for the machine to be idle
                        (other processes under 0.2 cores; useful on shared machines)
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from garagekv.bench.clusters import (  # noqa: E402
    DevCluster,
    EtcdCluster,
    etcd_binary,
    probe_replication,
    run_bench_cli,
    settle,
    wait_quiet,
)
from garagekv.bench.report import (  # noqa: E402
    comparison_rows,
    counter_verdict,
    fmt_ms,
    fmt_num,
    huly_rows,
    huly_table,
    markdown_table,
    plot,
    suite_markdown,
)

ETCD_SCENARIOS = ("write", "read", "cas", "txn", "counter")
ALL_SCENARIOS = (
    "write",
    "read",
    "mixed",
    "batch",
    "poll",
    "cas",
    "txn",
    "counter",
    "hulykvs-put",
    "hulykvs-get",
)
#: Also known, run only when named in BENCH_SCENARIOS: ``ttl`` (writes that expire during the run)
#: and ``watch`` (one write fanning out to PollRanges pollers: no etcd counterpart here, and its
#: pollers load a small machine for a figure that changes only when the poll path does).
EXTRA_SCENARIOS = ("ttl", "watch")


def env(name: str, default: str) -> str:
    return os.environ.get(name, "").strip() or default


def settings() -> dict[str, Any]:
    return {
        "duration": float(env("BENCH_DURATION", "8")),
        "warmup": float(env("BENCH_WARMUP", "2")),
        "conns": int(env("BENCH_CONNS", "64")),
        "procs": int(env("BENCH_PROCS", "1")),
        "value_size": int(env("BENCH_VALUE_SIZE", "100")),
        "keys": int(env("BENCH_KEYS", "10000")),
        "counter_conns": int(env("BENCH_COUNTER_CONNS", "16")),
        "watch_pollers": int(env("BENCH_WATCH_POLLERS", env("BENCH_CONNS", "64"))),
        "watch_writers": int(env("BENCH_WATCH_WRITERS", "16")),
        "nodes": [int(n) for n in env("BENCH_NODES", "1,3").split(",") if n.strip()],
        "scenarios": [s.strip() for s in env("BENCH_SCENARIOS", ",".join(ALL_SCENARIOS)).split(",") if s.strip()],
        "etcd": env("BENCH_ETCD", "auto").lower(),
        "selftest": env("BENCH_SELFTEST", "1") not in ("0", "no", "false"),
        "out": Path(env("BENCH_OUT", "bench-results")),
    }


def common_args(s: dict[str, Any]) -> list[str]:
    return [
        "--duration",
        str(s["duration"]),
        "--warmup",
        str(s["warmup"]),
        "--conns",
        str(s["conns"]),
        "--procs",
        str(s["procs"]),
        "--value-size",
        str(s["value_size"]),
        "--keys",
        str(s["keys"]),
    ]


def scenario_args(s: dict[str, Any], sc: str) -> list[str]:
    """``--mix`` and the common load, with the counter's own connection count (flags given last win)."""
    args = ["--mix", sc, *common_args(s)]
    if sc == "counter":
        args += ["--conns", str(s["counter_conns"]), "--procs", str(min(s["procs"], s["counter_conns"]))]
    if sc == "watch":
        args += [
            "--conns",
            str(s["watch_pollers"]),
            "--procs",
            str(min(s["procs"], s["watch_pollers"])),
            "--watch-writers",
            str(s["watch_writers"]),
        ]
    return args


def cluster_name(n: int) -> str:
    return "1 node" if n == 1 else f"{n} nodes"


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_one(system: str, cluster: str, scenario: str, args: list[str]) -> dict[str, Any]:
    """Run a scenario ``BENCH_REPEAT`` times (prefilling once) and keep the median run."""
    runs = []
    for i in range(max(1, int(env("BENCH_REPEAT", "1")))):
        r = _run_once(system, cluster, scenario, args if i == 0 else [a for a in args if a != "--prefill"])
        if r.get("skipped"):
            return r
        runs.append(r)
    runs.sort(key=lambda r: r["ops_per_sec"])
    median = runs[(len(runs) - 1) // 2]  # the lower middle for an even count
    if len(runs) > 1:
        median["repeats"] = [r["ops_per_sec"] for r in runs]
    return median


def _run_once(system: str, cluster: str, scenario: str, args: list[str]) -> dict[str, Any]:
    settled = settle(_own_pids(), float(env("BENCH_SETTLE", "120"))) if _own_pids() else 0.0
    if settled > 5:
        say(f"  ({system} {cluster} was busy with background work for {settled:.0f}s before this run)")
    quiet_wait = float(env("BENCH_WAIT_QUIET", "0"))
    if quiet_wait > 0 and not wait_quiet(quiet_wait, exclude=_own_pids()):
        say(f"  (the machine stayed busy for {quiet_wait:g}s; running anyway)")
    t0 = time.monotonic()
    try:
        r = run_bench_cli(args)
    except RuntimeError as e:
        say(f"  {system} {cluster} {scenario}: FAILED: {e}")
        return {"system": system, "cluster": cluster, "scenario": scenario, "skipped": f"failed: {e}"}
    r.update(system=system, cluster=cluster, scenario=scenario, settled_before_s=round(settled, 1))
    errs = f", {r['error_count']:,} errors" if r["error_count"] else ""
    say(
        f"  {system:<8} {cluster:<7} {scenario:<11} {fmt_num(r['ops_per_sec']):>9} ops/s  "
        f"p50 {fmt_ms(r['latency_ms']['p50']):>6}  p99 {fmt_ms(r['latency_ms']['p99']):>6} ms{errs}  "
        f"({time.monotonic() - t0:.0f}s)"
    )
    if r.get("counter"):
        loud = "" if r["counter"].get("ok") else "!!! "
        say(f"  {loud}{system} {cluster} counter: {counter_verdict(r)}")
    return r


_CLUSTER_PIDS: list[int] = []


def _own_pids() -> list[int]:
    return list(_CLUSTER_PIDS)


def skipped(system: str, cluster: str, scenarios: list[str], reason: str) -> list[dict[str, Any]]:
    say(f"  {system} {cluster}: skipped ({reason})")
    return [{"system": system, "cluster": cluster, "scenario": sc, "skipped": reason} for sc in scenarios]


def bench_garagekv(s: dict[str, Any], work: Path, n: int) -> list[dict[str, Any]]:
    cluster = cluster_name(n)
    say(f"garagekv, {cluster}: starting garagekv dev --nodes {n}")
    results = []
    with DevCluster(work / f"garagekv-{n}", n) as dev:
        _CLUSTER_PIDS[:] = dev.pids
        if n > 1:
            problem = probe_replication(dev.info)
            if problem is not None:
                return skipped("garagekv", cluster, s["scenarios"], f"no replication yet: {problem}")
        prefilled = False
        for sc in s["scenarios"]:
            args = ["--dev-json", str(dev.json_path), *scenario_args(s, sc), "--label", f"garagekv {cluster} {sc}"]
            if sc in ("read", "mixed", "batch") and not prefilled:
                args.append("--prefill")
                prefilled = True
            if sc == "hulykvs-get":
                args.append("--prefill")  # the Hulykvs keys live in their own bucket
            results.append(run_one("garagekv", cluster, sc, args))
    return results


def bench_etcd(s: dict[str, Any], work: Path, n: int) -> list[dict[str, Any]]:
    cluster = cluster_name(n)
    scenarios = [sc for sc in s["scenarios"] if sc in ETCD_SCENARIOS]
    if not scenarios:
        return []
    say(f"etcd, {cluster}: starting {n} member(s)")
    results = []
    with EtcdCluster(work / f"etcd-{n}", n) as etcd:
        _CLUSTER_PIDS[:] = etcd.pids
        prefilled = False
        for sc in scenarios:
            args = [
                "--target",
                "etcd",
                "--endpoint",
                ",".join(etcd.endpoints),
                "--server-pids",
                ",".join(str(p) for p in etcd.pids),
                *scenario_args(s, sc),
                "--label",
                f"etcd {cluster} {sc}",
            ]
            if sc == "read" and not prefilled:
                args.append("--prefill")
                prefilled = True
            results.append(run_one("etcd", cluster, sc, args))
    return results


def main() -> int:
    s = settings()
    unknown = set(s["scenarios"]) - set(ALL_SCENARIOS) - set(EXTRA_SCENARIOS)
    if unknown:
        say(f"unknown scenarios: {', '.join(sorted(unknown))}")
        return 2
    etcd = etcd_binary()
    if s["etcd"] in ("1", "yes", "true") and etcd is None:
        say("BENCH_ETCD=1 but no etcd binary on PATH (Debian/Ubuntu: apt-get install etcd-server)")
        return 2
    use_etcd = etcd is not None and s["etcd"] not in ("0", "no", "false")
    out: Path = s["out"]
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    t0 = time.monotonic()
    meta: dict[str, Any] = {
        "date": stamp,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "load": f"closed loop, {s['conns']} connections x {s['procs']} process(es), {s['value_size']} B values, "
        f"{s['duration']:g} s measured after {s['warmup']:g} s warmup, {s['keys']:,} prefilled items",
        "etcd": _etcd_version(etcd)
        if use_etcd
        else "not run (no etcd on PATH: apt-get install etcd-server)"
        if etcd is None
        else "not run (BENCH_ETCD=0)",
    }
    results: list[dict[str, Any]] = []
    selftest = None
    work = Path(tempfile.mkdtemp(prefix="work-", dir=out))
    try:
        if s["selftest"]:
            say("selftest: the generator against a null server")
            selftest = run_one("selftest", "-", "write", ["--selftest", "--mix", "write", *common_args(s)])
            if not selftest.get("skipped"):
                cc = selftest["client_cpu"]
                meta["generator ceiling"] = (
                    f"{fmt_num(selftest['ops_per_sec'])} req/s on a null server, "
                    f"{cc['us_per_request']} us CPU per request"
                )
        for n in s["nodes"]:
            for system, fn in (("garagekv", bench_garagekv), ("etcd", bench_etcd)):
                if system == "etcd" and not use_etcd:
                    continue
                try:
                    results += fn(s, work, n)
                except RuntimeError as e:  # the cluster did not start
                    scenarios = [sc for sc in s["scenarios"] if system == "garagekv" or sc in ETCD_SCENARIOS]
                    results += skipped(system, cluster_name(n), scenarios, str(e))
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta["runtime"] = f"{time.monotonic() - t0:.0f} s"

    base = out / f"bench-{stamp}"
    doc = {"meta": meta, "selftest": selftest, "results": results}
    base.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    base.with_suffix(".md").write_text(suite_markdown(meta, results))
    png = base.with_suffix(".png")
    have_plot = plot(results, png)
    print()
    print(markdown_table(comparison_rows(results)))
    print()
    hrows = huly_rows(results)
    if hrows:
        print(huly_table(hrows))
        print()
    for r in results:
        if r.get("counter") and not r["counter"].get("ok"):
            print(f"!!! {r['system']} {r['cluster']} counter: {counter_verdict(r)}")
    for k, v in meta.items():
        print(f"{k}: {v}")
    print(
        f"results: {base}.json, {base}.md"
        + (f", {png}" if have_plot else " (no plot: pip install -e '.[bench]' for matplotlib)")
    )
    return 0


def _etcd_version(binary: str | None) -> str:
    import subprocess

    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
        return out.splitlines()[0].strip() if out else binary
    except (OSError, subprocess.SubprocessError):
        return str(binary)


if __name__ == "__main__":
    sys.exit(main())
