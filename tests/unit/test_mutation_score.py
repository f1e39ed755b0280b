"""scripts/mutation_score.py: the per-module table `make mutate` prints from mutmut's results."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "mutation_score.py"


def load():
    spec = importlib.util.spec_from_file_location("script_mutation_score", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RESULTS = """\
    garagekv.util.crdt.x_merge_values__mutmut_1: killed
    garagekv.util.crdt.xǁLwwǁmerge__mutmut_2: killed
    garagekv.util.crdt.xǁLwwǁnew__mutmut_6: survived
    garagekv.util.crdt.xǁLwwǁnew__mutmut_7: no tests
    garagekv.rpc.quorum.x__await_quorum__mutmut_19: timeout
    garagekv.rpc.quorum.x__forget__mutmut_2: survived
    garagekv.table.gc.xǁGcWorkerǁwork__mutmut_1: not checked
"""


def test_tally_groups_by_module_and_status():
    m = load()
    counts = m.tally(RESULTS.splitlines())
    assert counts["garagekv.util.crdt"] == {"killed": 2, "survived": 1, "no tests": 1}
    assert counts["garagekv.rpc.quorum"] == {"timeout": 1, "survived": 1}
    assert counts["garagekv.table.gc"] == {"not checked": 1}


def test_table_scores_only_what_ran():
    m = load()
    text = m.table(m.tally(RESULTS.splitlines()))
    assert "| garagekv.util.crdt | 4 | 2 | 1 | 1 | 50.0 % |" in text
    assert "| garagekv.rpc.quorum | 2 | 0 | 1 | 1 | 0.0 % |" in text
    assert "| garagekv.table.gc | 1 | 0 | 0 | 0 | not run |" in text
    assert "| **all run** | 7 | 2 | 2 | 2 | 33.3 % |" in text
