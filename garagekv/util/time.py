"""Wall-clock milliseconds; monotonic guarantees are built on top by the callers that persist."""

from __future__ import annotations

import time


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def increment_logical_clock(prev: int) -> int:
    """A timestamp strictly above ``prev`` and not behind the wall clock (LWW CRDT timestamps)."""
    return max(prev + 1, now_ms())
