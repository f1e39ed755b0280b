"""Update trackers: per-node layout version counters, merged by max.

``ack_map[n]``: n has no write in flight computed against an older version.
``sync_map[n]``: n finished a full sync of every table for that version.
``sync_ack_map[n]``: n saw everyone synced up to that version (it reads from there on).
Only ever raising values makes them a CRDT (a join-semilattice of per-node maxima).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from garagekv.rpc.layout.errors import LayoutError
from garagekv.rpc.layout.roles import check_node_id


@dataclass
class UpdateTracker:
    """node id -> highest layout version reached; missing nodes read as a caller default."""

    values: dict[bytes, int] = field(default_factory=dict)

    def get(self, node: bytes, default: int) -> int:
        return self.values.get(node, default)

    def set_max(self, node: bytes, version: int) -> bool:
        if self.values.get(node, -1) < version:
            self.values[node] = version
            return True
        return False

    def merge(self, other: UpdateTracker) -> bool:
        changed = False
        for node, v in other.values.items():
            changed |= self.set_max(node, v)
        return changed

    def min_among(self, nodes: Iterable[bytes], default: int) -> int:
        """Lowest value among ``nodes`` (missing ones count as ``default``; none -> default)."""
        return min((self.values.get(n, default) for n in nodes), default=default)

    def to_wire(self) -> list[list[Any]]:
        return [[n, v] for n, v in sorted(self.values.items())]

    @classmethod
    def from_wire(cls, w: Any) -> UpdateTracker:
        return cls({check_node_id(n): int(v) for n, v in w})


@dataclass
class UpdateTrackers:
    ack_map: UpdateTracker = field(default_factory=UpdateTracker)
    sync_map: UpdateTracker = field(default_factory=UpdateTracker)
    sync_ack_map: UpdateTracker = field(default_factory=UpdateTracker)

    def merge(self, other: UpdateTrackers) -> bool:
        a = self.ack_map.merge(other.ack_map)
        b = self.sync_map.merge(other.sync_map)
        c = self.sync_ack_map.merge(other.sync_ack_map)
        return a or b or c

    def to_wire(self) -> dict[str, Any]:
        return {
            "ack_map": self.ack_map.to_wire(),
            "sync_map": self.sync_map.to_wire(),
            "sync_ack_map": self.sync_ack_map.to_wire(),
        }

    @classmethod
    def from_wire(cls, w: Any) -> UpdateTrackers:
        try:
            return cls(
                UpdateTracker.from_wire(w["ack_map"]),
                UpdateTracker.from_wire(w["sync_map"]),
                UpdateTracker.from_wire(w["sync_ack_map"]),
            )
        except LayoutError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise LayoutError(f"Malformed layout trackers: {e!r}")
