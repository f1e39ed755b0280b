"""Read and write quorums per consistency mode (Garage's ``replication_mode.rs``).

Every write quorum intersects every read quorum in ``consistent`` mode
(``read + write = rf + 1``), which gives read-after-write consistency; ``degraded`` trades that
for reads that succeed with one live replica, ``dangerous`` also for writes.
"""

from __future__ import annotations

from enum import StrEnum

from garagekv.rpc.layout.errors import LayoutError


class ConsistencyMode(StrEnum):
    CONSISTENT = "consistent"
    DEGRADED = "degraded"
    DANGEROUS = "dangerous"

    @classmethod
    def parse(cls, text: str) -> ConsistencyMode:
        try:
            return cls(text.strip().lower())
        except ValueError:
            raise LayoutError(f"Invalid consistency_mode {text!r}: expected consistent, degraded or dangerous")


def _check_rf(rf: int) -> None:
    if isinstance(rf, bool) or not isinstance(rf, int) or rf < 1:
        raise LayoutError(f"Invalid replication factor {rf!r}: must be an integer >= 1")


def read_quorum(rf: int, mode: ConsistencyMode | str = ConsistencyMode.CONSISTENT) -> int:
    """How many replicas a read must hear from: ceil(rf/2) when consistent, else 1."""
    _check_rf(rf)
    mode = ConsistencyMode(mode)
    if mode is ConsistencyMode.CONSISTENT:
        return (rf + 1) // 2
    return 1


def write_quorum(rf: int, mode: ConsistencyMode | str = ConsistencyMode.CONSISTENT) -> int:
    """How many replicas must ack a write: rf + 1 - ceil(rf/2), or 1 when dangerous."""
    _check_rf(rf)
    mode = ConsistencyMode(mode)
    if mode is ConsistencyMode.DANGEROUS:
        return 1
    return rf + 1 - (rf + 1) // 2
