"""``garagekv bench`` against the session node: a short closed-loop run succeeds without errors."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid


def run_bench(*args: str, timeout: float = 60) -> dict:
    r = subprocess.run(
        [sys.executable, "-m", "garagekv.cli.main", "bench", *args, "--json", "--quiet"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_bench_write_against_a_node(node, creds):
    s = run_bench(
        "--endpoint",
        node.endpoint,
        "--bucket",
        creds["bucket"],
        "--access-key-id",
        creds["access_key"],
        "--secret-access-key",
        creds["secret_key"],
        "--region",
        "garage",
        "--key-prefix",
        f"bench-{uuid.uuid4().hex[:8]}",
        "--server-pids",
        str(node.proc.pid),
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--conns",
        "4",
    )
    assert s["ops"] > 0 and s["ops_per_sec"] > 0
    assert s["error_count"] == 0, s["errors"]
    assert s["latency_ms"]["p50"] > 0
    assert s["server_cpu"]["us_per_op"] > 0


def test_bench_selftest_reports_the_generator_ceiling():
    s = run_bench("--selftest", "--mix", "mixed", "--duration", "0.5", "--warmup", "0", "--conns", "2")
    assert s["selftest"] and s["error_count"] == 0
    assert s["by_op"]["read"]["ops"] > 0 and s["by_op"]["write"]["ops"] > 0
    assert s["client_cpu"]["us_per_request"] > 0
