#!/usr/bin/env python3
"""``make mutate`` summary: mutmut's per-mutant results as a per-module score table.

Reads ``mutmut results --all true`` (run from the repository root, after ``mutmut run``) and
prints one Markdown row per mutated module: mutants, killed, survived, other outcomes (no tests,
timeouts, ...) and the score, killed / mutants run. Modules whose mutants were not run (a
restricted ``make mutate MUTANTS=...``) are listed as not run, so a partial run is never mistaken
for a full one.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

# "    garagekv.util.crdt.xǁLwwǁmerge__mutmut_3: killed"
_LINE = re.compile(r"^\s*(?P<name>[\w.ǁ]+)__mutmut_\d+:\s*(?P<status>.+?)\s*$")


def module_of(name: str) -> str:
    """``garagekv.util.crdt.xǁLwwǁmerge`` or ``garagekv.util.crdt.x_merge_values`` -> the module."""
    return name.rsplit(".x", 1)[0]


def tally(lines: list[str]) -> dict[str, Counter[str]]:
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for line in lines:
        m = _LINE.match(line)
        if m:
            out[module_of(m["name"])][m["status"]] += 1
    return out


def table(counts: dict[str, Counter[str]]) -> str:
    rows = ["| module | mutants | killed | survived | other | score |", "|---|---:|---:|---:|---:|---:|"]
    total: Counter[str] = Counter()
    for module in sorted(counts):
        c = counts[module]
        total.update(c)
        rows.append(_row(module, c))
    rows.append(_row("**all run**", total))
    return "\n".join(rows)


def _row(label: str, c: Counter[str]) -> str:
    n = sum(c.values())
    run = n - c["not checked"]
    other = run - c["killed"] - c["survived"]
    score = f"{100 * c['killed'] / run:.1f} %" if run else "not run"
    return f"| {label} | {n} | {c['killed']} | {c['survived']} | {other} | {score} |"


def main() -> int:
    mutmut = Path(sys.executable).with_name("mutmut")
    res = subprocess.run([str(mutmut), "results", "--all", "true"], capture_output=True, text=True)
    if res.returncode != 0:
        sys.stderr.write(res.stderr)
        return res.returncode
    counts = tally(res.stdout.splitlines())
    if not counts:
        print("no mutmut results: run `make mutate` first")
        return 1
    print(table(counts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
