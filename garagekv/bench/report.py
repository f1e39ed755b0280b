"""Human output of the benchmark: one run as text, a suite as a Markdown table, and a plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

NOISY_CORES = 0.25  # other processes' CPU during a run above which its numbers are flagged


def fmt_num(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def fmt_errors(errors: dict[str, int]) -> str:
    if not errors:
        return "none"
    return ", ".join(f"{code}: {n:,}" for code, n in sorted(errors.items(), key=lambda kv: (-kv[1], kv[0])))


def fmt_latency(lat: dict[str, float]) -> str:
    keys = ("p50", "p90", "p99", "p99.9", "max")
    return "  ".join(f"{k} {fmt_ms(lat.get(k))}" for k in keys) + f"  (mean {fmt_ms(lat.get('mean'))})"


def format_text(s: dict[str, Any]) -> str:
    """A few aligned lines describing one run (the output of ``garagekv bench``)."""
    cfg = s["config"]
    eps = cfg.get("hulykvs_endpoints") if s.get("mix", "").startswith("hulykvs") else cfg["endpoints"]
    eps = eps or cfg["endpoints"]
    where = eps[0] if len(eps) == 1 else f"{len(eps)} endpoints"
    lines = [
        f"{s['label']} @ {where}: {cfg['conns']} conns x {cfg['procs']} proc(s), {cfg['value_size']} B values, "
        f"{cfg['duration']:g} s measured after {cfg['warmup']:g} s warmup ({s.get('loop', 'asyncio')})",
        f"  throughput   {fmt_num(s['ops_per_sec'], 1)} ops/s ({s['ops']:,} ops)"
        + (f", {fmt_num(s['items_per_sec'])} items/s" if s.get("items_per_sec") else ""),
        f"  latency ms   {fmt_latency(s['latency_ms'])}",
        f"  errors       {fmt_errors(s['errors'])}",
    ]
    by_op = s.get("by_op", {})
    if len(by_op) > 1:
        for kind, op in by_op.items():
            lat = op["latency_ms"]
            lines.append(
                f"  {kind:<12} {fmt_num(op['ops_per_sec'], 1):>10} ops/s  p50 {fmt_ms(lat['p50'])}"
                f"  p99 {fmt_ms(lat['p99'])} ms  errors {fmt_errors(op['errors'])}"
            )
    if s.get("counter"):
        lines.append(f"  counter      {counter_verdict(s)}")
    if s.get("mix") == "watch":
        lines.append(f"  watch        {watch_summary(s)}")
    sc = s.get("server_cpu")
    if sc:
        lines.append(
            f"  server CPU   {fmt_num(sc['us_per_op'], 1)} us/op ({sc['cores']:.2f} cores, "
            f"pids {', '.join(str(p) for p in sc['pids'])})"
        )
    cc = s.get("client_cpu")
    if cc and cc.get("us_per_request") is not None:
        lines.append(
            f"  client CPU   {fmt_num(cc['us_per_request'], 1)} us/request "
            f"({cc['seconds'] / cfg['duration']:.2f} cores)"
        )
    mc = s.get("machine_cpu")
    if mc:
        parts = []
        if mc.get("other_cores") is not None:
            parts.append(f"other processes {mc['other_cores']:.2f}")
        if mc.get("kernel_cores") is not None:
            parts.append(f"kernel {mc['kernel_cores']:.2f}")
        detail = f" ({', '.join(parts)})" if parts else ""
        warn = ": numbers disturbed by other processes" if disturbed(s) else ""
        lines.append(f"  machine CPU  {mc['cores']:.2f} of {mc['cpus']} cores busy{detail}{warn}")
    if s.get("prefill"):
        p = s["prefill"]
        lines.append(f"  prefill      {p['items']:,} items in {p['seconds']:.1f} s")
    return "\n".join(lines)


def watch_summary(s: dict[str, Any]) -> str:
    """The watch scenario in one line: its writes, and what the range pollers received."""
    cfg, by_op = s["config"], s.get("by_op", {})
    w, n, a = by_op.get("write"), by_op.get("notify"), by_op.get("answer")
    head = (
        f"{cfg['conns']:,} pollers x {cfg['watch_ranges']} ranges, {cfg['watch_writers']} writers: "
        f"{fmt_num(w['ops_per_sec'] if w else None)} writes/s"
    )
    if n is None or a is None:
        return head + ", no notification received"
    early = by_op.get("notify-before-ack", {}).get("ops", 0)
    sent = by_op.get("notify-from-send", {}).get("latency_ms", {})
    return (
        f"{head}; {fmt_num(n['ops_per_sec'])} notifications/s, from the write's ack p50 "
        f"{fmt_ms(n['latency_ms']['p50'])} p99 {fmt_ms(n['latency_ms']['p99'])} ms "
        f"({early / max(1, n['ops']):.0%} before the ack; from its request p50 {fmt_ms(sent.get('p50'))} "
        f"p99 {fmt_ms(sent.get('p99'))} ms); {fmt_num(a['ops_per_sec'])} answers/s, "
        f"{fmt_num(a.get('items_per_sec'))} items/s"
    )


def counter_verdict(s: dict[str, Any]) -> str:
    """The counter scenario's check: the final value against the increments that applied."""
    c = s["counter"]
    retries = s.get("retries_per_sec")
    head = (
        f"{c['increments']:,} increments applied in the whole run, {c['conflicts']:,} retries"
        + (f" ({fmt_num(retries)}/s measured)" if retries is not None else "")
        + f", {c.get('unknown', 0):,} of unknown outcome; final value {fmt_num(c.get('final'))}"
    )
    if c.get("ok") is None:
        return head
    if not c["ok"]:
        return f"{head}: !!! {c.get('problem', 'COUNTER MISMATCH')} !!!"
    return f"{head}: {c['problem']}" if c.get("problem") else f"{head}: matches"


# --- suites (make bench) --------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def comparison_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (cluster, scenario): garagekv and, when measured, etcd side by side.

    Each result carries ``cluster`` ("1 node", "3 nodes"), ``scenario`` and ``system``
    ("garagekv" or "etcd"); ``skipped`` results keep their reason.
    """
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for r in results:
        row = rows.setdefault((r["cluster"], r["scenario"]), {"cluster": r["cluster"], "scenario": r["scenario"]})
        row[r["system"]] = r
    out = []
    for row in rows.values():
        g, e = row.get("garagekv"), row.get("etcd")
        row["ops_ratio"] = ratio(_ops(g), _ops(e))
        row["p99_ratio"] = ratio(_p99(g), _p99(e))
        row["cpu_ratio"] = ratio(_cpu(g), _cpu(e))
        out.append(row)
    return out


def _measured(r: dict[str, Any] | None) -> dict[str, Any] | None:
    return r if r is not None and not r.get("skipped") else None


def _ops(r: dict[str, Any] | None) -> float | None:
    r = _measured(r)
    return None if r is None else r["ops_per_sec"]


def _p99(r: dict[str, Any] | None) -> float | None:
    r = _measured(r)
    return None if r is None else r["latency_ms"]["p99"]


def _cpu(r: dict[str, Any] | None) -> float | None:
    r = _measured(r)
    return None if r is None or not r.get("server_cpu") else r["server_cpu"]["us_per_op"]


def _cell_ops(r: dict[str, Any] | None) -> str:
    if r is None:
        return "-"
    if r.get("skipped"):
        return "skipped"
    s = fmt_num(r["ops_per_sec"])
    if r.get("error_count"):
        s += f" ({r['error_count']:,} err)"
    return s


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    head = (
        "| cluster | scenario | garagekv ops/s | p99 ms | CPU us/op | etcd ops/s | p99 ms | CPU us/op "
        "| ops ratio | p99 ratio | CPU ratio |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        g, e = row.get("garagekv"), row.get("etcd")
        mark = " *" if disturbed(g) or disturbed(e) else ""
        lines.append(
            "| "
            + " | ".join(
                [
                    row["cluster"] + mark,
                    row["scenario"],
                    _cell_ops(g),
                    fmt_ms(_p99(g)),
                    fmt_num(_cpu(g), 1),
                    _cell_ops(e),
                    fmt_ms(_p99(e)),
                    fmt_num(_cpu(e), 1),
                    fmt_ratio(row["ops_ratio"]),
                    fmt_ratio(row["p99_ratio"]),
                    fmt_ratio(row["cpu_ratio"]),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


#: (Hulykvs scenario, the K2V scenario it is compared with): the same operation, the same cluster
HULY_PAIRS = (("hulykvs-put", "write"), ("hulykvs-get", "read"))


def huly_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per cluster and Hulykvs scenario measured: it and its K2V counterpart of the run."""
    g = {(r["cluster"], r["scenario"]): r for r in results if r.get("system") == "garagekv"}
    rows = []
    for cluster in dict.fromkeys(r["cluster"] for r in results):
        for huly, k2v in HULY_PAIRS:
            h, k = _measured(g.get((cluster, huly))), _measured(g.get((cluster, k2v)))
            if h is None:
                continue
            rows.append(
                {
                    "cluster": cluster,
                    "scenario": huly,
                    "k2v_scenario": k2v,
                    "hulykvs": h,
                    "k2v": k,
                    "ops_ratio": ratio(_ops(h), _ops(k)),
                    "p99_ratio": ratio(_p99(h), _p99(k)),
                    "cpu_ratio": ratio(_cpu(h), _cpu(k)),
                }
            )
    return rows


def _stat_cells(r: dict[str, Any] | None) -> list[str]:
    p50 = None if r is None else r["latency_ms"]["p50"]
    return [_cell_ops(r), fmt_ms(p50), fmt_ms(_p99(r)), fmt_num(_cpu(r), 1)]


def huly_table(rows: Sequence[dict[str, Any]]) -> str:
    head = (
        "| cluster | Hulykvs | ops/s | p50 ms | p99 ms | CPU us/op | K2V | ops/s | p50 ms | p99 ms | CPU us/op "
        "| ops ratio | p99 ratio | CPU ratio |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        h, k = row["hulykvs"], row["k2v"]
        cells = [
            row["cluster"] + (" *" if disturbed(h) or disturbed(k) else ""),
            row["scenario"],
            *_stat_cells(h),
            row["k2v_scenario"],
            *_stat_cells(k),
            fmt_ratio(row["ops_ratio"]),
            fmt_ratio(row["p99_ratio"]),
            fmt_ratio(row["cpu_ratio"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def disturbed(r: dict[str, Any] | None) -> bool:
    """Other processes used more than ``NOISY_CORES`` of CPU while this run was measured."""
    other = ((r or {}).get("machine_cpu") or {}).get("other_cores")
    return other is not None and other > NOISY_CORES


def notes(results: Sequence[dict[str, Any]]) -> list[str]:
    out = []
    if any(disturbed(r) for r in results):
        out.append(
            f"- `*`: other processes used more than {NOISY_CORES} cores while this row was measured; "
            f"its numbers are disturbed (run again on a quiet machine)"
        )
    for r in results:
        if r.get("skipped"):
            out.append(f"- {r['system']} {r['cluster']} {r['scenario']}: skipped ({r['skipped']})")
        elif r.get("error_count"):
            out.append(f"- {r['system']} {r['cluster']} {r['scenario']}: errors {fmt_errors(r['errors'])}")
        if disturbed(r):
            out.append(
                f"- {r['system']} {r['cluster']} {r['scenario']}: other processes used "
                f"{r['machine_cpu']['other_cores']:.2f} cores during the run"
            )
        if r.get("repeats"):
            reps = r["repeats"]
            out.append(
                f"- {r['system']} {r['cluster']} {r['scenario']}: median of {len(reps)} runs "
                f"({fmt_num(min(reps))} to {fmt_num(max(reps))} ops/s)"
            )
        if (r.get("settled_before_s") or 0) > 5:
            out.append(
                f"- {r['system']} {r['cluster']} {r['scenario']}: the cluster first needed "
                f"{r['settled_before_s']:.0f} s to finish the background work left by the previous run"
            )
        if r.get("scenario") == "poll" and not r.get("skipped"):
            out.append(
                f"- {r['system']} {r['cluster']} poll: ops = delivered notifications, latency = write "
                f"to delivery (writer every {r['config']['poll_interval'] * 1000:g} ms)"
            )
        if r.get("scenario") == "watch" and not r.get("skipped"):
            out.append(f"- {r['system']} {r['cluster']} watch: {watch_summary(r)}")
        if r.get("counter") and not r.get("skipped"):
            out.append(f"- {r['system']} {r['cluster']} counter: {counter_verdict(r)}")
        if r.get("scenario") == "batch" and not r.get("skipped") and r.get("items_per_sec"):
            out.append(f"- {r['system']} {r['cluster']} batch: {fmt_num(r['items_per_sec'])} items/s")
    return out


def suite_markdown(meta: dict[str, Any], results: Sequence[dict[str, Any]]) -> str:
    rows = comparison_rows(results)
    parts = [f"# garagekv bench ({meta.get('date', '')})", ""]
    for k, v in meta.items():
        if k != "date":
            parts.append(f"- {k}: {v}")
    parts += ["", markdown_table(rows), ""]
    hrows = huly_rows(results)
    if hrows:
        parts += ["Hulykvs-compatible API against K2V (same cluster, same run):", "", huly_table(hrows), ""]
    n = notes(results)
    if n:
        parts += ["Notes:", "", *n, ""]
    return "\n".join(parts)


def plot(results: Sequence[dict[str, Any]], path: str | Path) -> bool:
    """Throughput and p99 per scenario as a PNG; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    measured = [r for r in results if not r.get("skipped")]
    if not measured:
        return False
    labels = [f"{r['system']}\n{r['cluster']}\n{r['scenario']}" for r in measured]
    colors = ["tab:blue" if r["system"] == "garagekv" else "tab:orange" for r in measured]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(8, len(measured) * 0.9), 8), sharex=True)
    xs = range(len(measured))
    ax1.bar(xs, [r["ops_per_sec"] for r in measured], color=colors)
    ax1.set_ylabel("ops/s")
    ax1.set_title("Throughput (closed loop)")
    ax2.bar(xs, [r["latency_ms"]["p99"] for r in measured], color=colors)
    ax2.set_ylabel("p99 latency (ms)")
    ax2.set_title("p99 latency")
    ax2.set_xticks(list(xs))
    ax2.set_xticklabels(labels, fontsize=7)
    from matplotlib.patches import Patch

    ax1.legend(handles=[Patch(color="tab:blue", label="garagekv"), Patch(color="tab:orange", label="etcd")])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
