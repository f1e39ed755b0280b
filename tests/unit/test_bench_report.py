"""Benchmark output: the text of one run, the side-by-side table, notes and the plot."""

from __future__ import annotations

import pytest

from garagekv.bench.report import (
    comparison_rows,
    counter_verdict,
    fmt_errors,
    fmt_ms,
    format_text,
    huly_rows,
    huly_table,
    markdown_table,
    notes,
    plot,
    suite_markdown,
    watch_summary,
)


def result(
    system: str,
    cluster: str,
    scenario: str,
    ops: float,
    p99: float,
    cpu: float | None = None,
    errors: dict[str, int] | None = None,
    other: float = 0.0,
) -> dict:
    errors = errors or {}
    return {
        "system": system,
        "cluster": cluster,
        "scenario": scenario,
        "label": f"{system} {scenario}",
        "config": {
            "endpoints": ["127.0.0.1:3904"],
            "conns": 64,
            "procs": 1,
            "value_size": 100,
            "duration": 10.0,
            "warmup": 2.0,
            "poll_interval": 0.01,
        },
        "ops": int(ops * 10),
        "ops_per_sec": ops,
        "latency_ms": {"p50": p99 / 4, "p90": p99 / 2, "p99": p99, "p99.9": p99 * 2, "mean": p99 / 3, "max": p99 * 3},
        "errors": errors,
        "error_count": sum(errors.values()),
        "by_op": {scenario: {"ops_per_sec": ops, "latency_ms": {"p50": 1.0, "p99": p99}, "errors": errors}},
        "server_cpu": None if cpu is None else {"pids": [1, 2], "seconds": 1.0, "cores": 1.5, "us_per_op": cpu},
        "client_cpu": {"seconds": 3.0, "us_per_request": 40.0},
        "machine_cpu": {"cores": 1.9, "cpus": 2, "other_cores": other},
        "loop": "asyncio",
    }


def test_format_text_of_one_run():
    r = result("garagekv", "1 node", "write", 12345.67, 8.5, cpu=81.25, errors={"503": 3, "timeout": 12})
    r["by_op"]["read"] = {"ops_per_sec": 10.0, "latency_ms": {"p50": 0.5, "p99": 2.0}, "errors": {}}
    text = format_text(r)
    assert "12,345.7 ops/s (123,456 ops)" in text
    assert "p99 8.50" in text and "p99.9 17.0" in text and "max 25.5" in text
    assert "errors       timeout: 12, 503: 3" in text
    assert "81.2 us/op (1.50 cores, pids 1, 2)" in text
    assert "40.0 us/request" in text
    assert "read" in text and "write" in text  # per-op lines when several kinds
    assert "disturbed" not in text
    assert "disturbed" in format_text(result("g", "1 node", "write", 1, 1, other=0.6))


def test_small_formatters():
    assert fmt_ms(0.1234) == "0.12" and fmt_ms(12.34) == "12.3" and fmt_ms(1234.5) == "1234" and fmt_ms(None) == "-"
    assert fmt_errors({}) == "none"


def test_comparison_rows_and_ratios():
    results = [
        result("garagekv", "1 node", "write", 8000, 20, cpu=100),
        result("etcd", "1 node", "write", 10000, 10, cpu=200),
        result("garagekv", "1 node", "poll", 3000, 5),
        result("garagekv", "3 nodes", "write", 0, 0) | {"skipped": "no replication yet"},
        result("etcd", "3 nodes", "write", 7000, 20, cpu=300),
    ]
    rows = comparison_rows(results)
    assert [(r["cluster"], r["scenario"]) for r in rows] == [
        ("1 node", "write"),
        ("1 node", "poll"),
        ("3 nodes", "write"),
    ]
    assert rows[0]["ops_ratio"] == pytest.approx(0.8)
    assert rows[0]["p99_ratio"] == pytest.approx(2.0)
    assert rows[0]["cpu_ratio"] == pytest.approx(0.5)
    assert rows[1]["ops_ratio"] is None and rows[2]["ops_ratio"] is None

    table = markdown_table(rows).splitlines()
    assert len(table) == 5
    assert all(line.count("|") == table[0].count("|") for line in table)
    assert "| 1 node | write | 8,000 | 20.0 | 100.0 | 10,000 | 10.0 | 200.0 | 0.80x | 2.00x | 0.50x |" in table
    assert "| 3 nodes | write | skipped |" in table[4]

    n = notes(results)
    assert any("skipped (no replication yet)" in line for line in n)
    assert any("poll: ops = delivered notifications" in line for line in n)
    md = suite_markdown({"date": "20260101T000000Z", "machine": "x86_64, 2 CPUs"}, results)
    assert md.startswith("# garagekv bench (20260101T000000Z)")
    assert "- machine: x86_64, 2 CPUs" in md and "Notes:" in md


def test_errors_are_shown_in_the_table():
    rows = comparison_rows([result("garagekv", "1 node", "read", 100, 1, errors={"404": 7})])
    assert "100 (7 err)" in markdown_table(rows)


def test_plot(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "plot.png"
    assert plot([result("garagekv", "1 node", "write", 10, 1), result("etcd", "1 node", "write", 20, 2)], path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plot([result("garagekv", "1 node", "write", 0, 0) | {"skipped": "x"}], tmp_path / "none.png")


def test_disturbed_rows_are_marked():
    quiet = result("garagekv", "1 node", "write", 100, 1, other=0.1)
    noisy = result("etcd", "1 node", "write", 100, 1, other=0.9)
    table = markdown_table(comparison_rows([quiet, noisy]))
    assert "| 1 node * | write |" in table
    assert "| 1 node | write |" in markdown_table(comparison_rows([quiet]))
    n = notes([quiet, noisy])
    assert n[0].startswith("- `*`") and any("etcd 1 node write: other processes used 0.90 cores" in x for x in n)


def test_hulykvs_rows_pair_each_scenario_with_its_k2v_counterpart():
    results = [
        result("garagekv", "1 node", "write", 2000, 20, cpu=400),
        result("garagekv", "1 node", "read", 5000, 8, cpu=200),
        result("garagekv", "1 node", "hulykvs-put", 1600, 30, cpu=500),
        result("garagekv", "1 node", "hulykvs-get", 5500, 6, cpu=180),
        result("garagekv", "3 nodes", "hulykvs-put", 900, 40),  # no K2V write measured there
        result("etcd", "1 node", "write", 6000, 10),
    ]
    rows = huly_rows(results)
    assert [(r["cluster"], r["scenario"], r["k2v_scenario"]) for r in rows] == [
        ("1 node", "hulykvs-put", "write"),
        ("1 node", "hulykvs-get", "read"),
        ("3 nodes", "hulykvs-put", "write"),
    ]
    assert rows[0]["ops_ratio"] == pytest.approx(0.8) and rows[0]["p99_ratio"] == pytest.approx(1.5)
    assert rows[1]["ops_ratio"] == pytest.approx(1.1) and rows[1]["cpu_ratio"] == pytest.approx(0.9)
    assert rows[2]["ops_ratio"] is None
    table = huly_table(rows).splitlines()
    assert len(table) == 5 and all(line.count("|") == table[0].count("|") for line in table)
    assert table[2].startswith("| 1 node | hulykvs-put | 1,600 | 7.50 | 30.0 | 500.0 | write | 2,000 | 5.00 | 20.0 |")
    assert "Hulykvs-compatible API against K2V" in suite_markdown({"date": "d"}, results)


def test_counter_verdict_says_loudly_when_the_counter_is_off():
    r = result("garagekv", "3 nodes", "counter", 300, 50)
    r["retries_per_sec"] = 12.0
    r["counter"] = {"increments": 3000, "conflicts": 120, "unknown": 4, "final": 3000, "ok": True}
    assert counter_verdict(r).endswith(": matches") and "120 retries (12/s measured)" in counter_verdict(r)
    assert "counter      3,000 increments" in format_text(r)
    r["counter"] |= {"final": 3002, "problem": "2 attempt(s) of unknown outcome applied"}
    assert counter_verdict(r).endswith("2 attempt(s) of unknown outcome applied")
    r["counter"] |= {"final": 2990, "ok": False, "problem": "COUNTER MISMATCH: the counter is 2990"}
    assert "!!! COUNTER MISMATCH: the counter is 2990 !!!" in counter_verdict(r)
    assert any("COUNTER MISMATCH" in line for line in notes([r]))


def test_watch_summary_reports_writes_notifications_and_answers():
    r = result("garagekv", "3 nodes", "watch", 1000, 40)
    r["mix"] = "watch"
    r["config"] |= {"watch_ranges": 64, "watch_writers": 16}

    def op(ops_per_sec, p50, p99, **extra):
        return {
            "ops": int(ops_per_sec * 10),
            "ops_per_sec": ops_per_sec,
            "latency_ms": {"p50": p50, "p99": p99},
            "errors": {},
        } | extra

    r["by_op"] = {"write": op(1000, 10, 40)}
    assert watch_summary(r) == "64 pollers x 64 ranges, 16 writers: 1,000 writes/s, no notification received"
    r["by_op"] |= {
        "notify": op(64000, 2.5, 30),
        "notify-before-ack": op(16000, 0, 0),
        "notify-from-send": op(64000, 12, 60),
        "answer": op(4000, 15, 80, items_per_sec=64000.0),
    }
    line = watch_summary(r)
    assert line == (
        "64 pollers x 64 ranges, 16 writers: 1,000 writes/s; 64,000 notifications/s, from the write's ack "
        "p50 2.50 p99 30.0 ms (25% before the ack; from its request p50 12.0 p99 60.0 ms); 4,000 answers/s, "
        "64,000 items/s"
    )
    assert f"watch        {line}" in format_text(r)
    assert f"- garagekv 3 nodes watch: {line}" in notes([r])
