"""Wall-clock milliseconds; monotonic guarantees are built on top by the callers that persist.

Fault-injection hook (tests only): ``GARAGEKV_CLOCK_OFFSET_MS``, read once at import, is added
to every wall-clock reading of this process (e.g. ``-3600000`` sets the node's clock back by an
hour), so the fault tests can check that timestamps stay monotone and no write is hidden when a
node's clock is wrong. Leave it unset in production.
"""

from __future__ import annotations

import os
import time

CLOCK_OFFSET_MS = int(os.environ.get("GARAGEKV_CLOCK_OFFSET_MS") or 0)


def now_ms() -> int:
    return time.time_ns() // 1_000_000 + CLOCK_OFFSET_MS


def increment_logical_clock(prev: int) -> int:
    """A timestamp strictly above ``prev`` and not behind the wall clock (LWW CRDT timestamps)."""
    return max(prev + 1, now_ms())
