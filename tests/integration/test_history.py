"""The bounded chaos run of ``make test``: clients, the nemesis and every history checker.

About a minute: 35 s of faults on a fixed seed, then the heal and the final checks. Long,
randomized runs are ``make chaos`` (docs/testing.md). Deselect with ``-m "not chaos"``.
"""

from __future__ import annotations

import json

import pytest

from tests.support.chaos import run_chaos
from tests.support.faults import proxy_supported

SEED = 1
DURATION = 35.0

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not proxy_supported(), reason="the fault proxy needs /proc (Linux)"),
]


def test_bounded_chaos_run_finds_no_anomaly(tmp_path):
    out = tmp_path / "history.jsonl"
    verdict = run_chaos(tmp_path / "cluster", SEED, DURATION, out)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines[-1]["type"] == "verdict" and lines[-1]["operations"] == verdict.operations
    assert verdict.ok, "\n".join(f"{a.kind}: {a.message}" for a in verdict.anomalies[:20])
    # The run did what it claims: faults of several kinds, and every workload made progress.
    assert verdict.faults >= 5 and len(verdict.details["fault_kinds"]) >= 2, verdict.details
    assert verdict.details["acknowledged_writes"] >= 100, verdict.details
    assert verdict.details["acknowledged_batches"] >= 10, verdict.details
    assert verdict.details["watch_observations"] >= 50, verdict.details
    kinds = {x["type"] for x in lines}
    assert {"write", "read", "insert_batch", "set_read", "observation", "poll", "fault"} <= kinds, kinds
