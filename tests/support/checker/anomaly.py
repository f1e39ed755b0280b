"""What a checker reports: one anomaly, of a kind, with a message naming the operations involved."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class Anomaly:
    kind: str  # e.g. lost-write, stale-read, set-incomplete, watch-backwards
    message: str

    def record(self) -> dict[str, str]:
        return {"kind": self.kind, "message": self.message}


def count_kinds(anomalies: list[Anomaly]) -> dict[str, int]:
    return dict(sorted(Counter(a.kind for a in anomalies).items()))
