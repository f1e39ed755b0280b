"""Results: merge the workers' histograms into ops/s, latency percentiles and CPU per operation."""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any

from garagekv.bench.config import MIXES, BenchConfig
from garagekv.bench.hist import Histogram
from garagekv.util.loop import loop_name

PERCENTILES = (50, 90, 99, 99.9)
SECRET_FIELDS = ("secret_access_key", "hulykvs_secret", "hulykvs_token")


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
        "config": {k: v for k, v in asdict(cfg).items() if k not in SECRET_FIELDS},
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
    counters = [r["counter"] for r in results if "counter" in r]
    if counters:
        # whole-run totals (warmup included): what the counter's final value is checked against
        summary["counter"] = {k: sum(c[k] for c in counters) for k in counters[0]}
        conflicts = merged.get("conflict")
        summary["retries_per_sec"] = round((conflicts["ok"] if conflicts else 0) / dur, 1)
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
