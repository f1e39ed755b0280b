"""``make chaos`` (scripts/chaos.py) without a cluster: its arguments, seeds, output and exit status."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tests.support.chaos import Verdict
from tests.support.checker import Anomaly

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "chaos.py"


def load():
    spec = importlib.util.spec_from_file_location("script_chaos", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_runs_each_seed_and_fails_when_an_anomaly_was_found(tmp_path, monkeypatch, capsys):
    script = load()
    calls = []

    def fake_run(root, seed, duration, out):
        calls.append((seed, duration, out))
        bad = [Anomaly("watch-missed-final", "range@n0 was never shown w7")] if seed == 8 else []
        return Verdict(seed, duration, operations=10, faults=2, anomalies=bad)

    monkeypatch.setattr(script, "run_chaos", fake_run)
    monkeypatch.chdir(tmp_path)
    assert script.main(["--seed", "7", "--duration", "5", "--runs", "2"]) == 1
    assert calls == [(7, 5.0, Path("chaos-results/chaos-7.jsonl")), (8, 5.0, Path("chaos-results/chaos-8.jsonl"))]
    assert "watch-missed-final: range@n0 was never shown w7" in capsys.readouterr().out
    calls.clear()
    assert script.main(["--seed", "7", "--duration", "5", "--out", "x.jsonl"]) == 0
    assert calls == [(7, 5.0, Path("x.jsonl"))]


def test_the_verdict_summary_has_the_closing_figures():
    v = Verdict(3, 240.0, operations=89109, faults=68, anomalies=[Anomaly("stale-read", "...")] * 2)
    assert v.summary() == "chaos seed=3 duration=240s: operations=89109 faults=68 anomalies=2 (stale-read=2)"
    rec = v.record()
    assert rec["type"] == "verdict" and not rec["valid"] and rec["anomaly_kinds"] == {"stale-read": 2}
