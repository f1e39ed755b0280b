"""The bounded chaos run of ``make test``: clients, the nemesis and every history checker.

About a minute: 35 s of faults on a fixed seed, then the heal and the final checks. Long,
randomized runs are ``make chaos`` (docs/testing.md). Deselect with ``-m "not chaos"``.

The consensus workload's histories are checked for linearizability; to show the check is not
vacuous, the recorded history is also doctored in two ways no linearizable execution allows and
must then be rejected.
"""

from __future__ import annotations

import json

import pytest

from tests.support.chaos import run_chaos
from tests.support.checker.registers import CasOp, ConsensusHistory
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
    assert {"write", "read", "insert_batch", "set_read", "observation", "poll", "fault", "consensus"} <= kinds, kinds

    # The consensus workload: CAS, transactions and linearizable reads, all answered in some way,
    # checked object by object; a layout change moved a hot partition while they ran.
    cas = verdict.details["consensus"]
    assert cas["operations"] >= 300 and cas["histories"] >= 4 and cas["non_linearizable"] == 0, cas
    assert cas["succeeded"] >= 50 and cas["compare_failed"] >= 20, cas
    assert {"read-item", "txn-read", "if-match", "if-none-match", "if-match-any", "txn"} <= set(cas["by_kind"]), cas
    assert any(m["answered_within_10s"] >= 10 for m in cas["hot_partition_moves"]), cas["hot_partition_moves"]
    history = ConsensusHistory.from_records(lines)
    assert history.check() == []
    for doctor in (_a_replaced_value_read_back, _a_second_winner):
        bad = ConsensusHistory.from_records(lines)
        doctor(bad)
        assert [a.kind for a in bad.check()] == ["non-linearizable"], doctor.__name__


def _replacing_writes(h: ConsensusHistory) -> list[tuple[CasOp, int, str]]:
    """Acknowledged writes that compared a register with a value and replaced it: (op, register, value)."""
    out = []
    for op in h.ops:
        if op.status == "ok" and op.succeeded:
            written = dict(op.writes)
            out += [
                (op, i, e)
                for i, target, e, _ in op.compares
                if target in ("token", "value") and i in written and written[i] != e
            ]
    return out


def _a_replaced_value_read_back(h: ConsensusHistory) -> None:
    """After a write replaced a value (values are unique: it can never come back), a read shows it."""
    op, i, old = _replacing_writes(h)[0]
    assert op.end is not None
    read = CasOp(len(h.ops) + 1, 99, "n0", op.obj, op.pk, op.sks, "read-item", reads=(i,))
    read.start, read.end, read.status, read.observed = op.end + 1e-4, op.end + 2e-4, "ok", {i: old}
    h.ops.append(read)


def _a_second_winner(h: ConsensusHistory) -> None:
    """A second acknowledged write from the same value, at the same time as the first."""
    op, i, old = _replacing_writes(h)[-1]
    twin = CasOp(len(h.ops) + 1, 99, op.via, op.obj, op.pk, op.sks, op.kind, op.compares, fail_reads=op.fail_reads)
    twin.writes = tuple((r, f"twin.{r}") for r, _ in op.writes)
    twin.start, twin.end, twin.status, twin.succeeded = op.start, op.end, "ok", True
    h.ops.append(twin)
