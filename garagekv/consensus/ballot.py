"""Ballots: unique, totally ordered (time, node id) pairs.

Two nodes never issue the same ballot because the node id is part of it; one node never issues
the same ballot twice while it runs because its clock only moves forward. After a restart with a
clock that went backwards a node could issue a ballot it used before, but an acceptor promises
only ballots *strictly* above its promise, so such a ballot can never gather a second majority
of promises (docs/consensus.md, "Ballots").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from garagekv.util.time import now_ms

NODE_ID_LEN = 32
_MAX_U64 = (1 << 64) - 1


@dataclass(frozen=True, order=True)
class Ballot:
    """Ordered by time first, then by node id (bytes order)."""

    time: int
    node: bytes

    def to_wire(self) -> list[Any]:
        return [self.time, self.node]

    @classmethod
    def from_wire(cls, w: Any) -> Ballot:
        """Parse a wire ballot; raises ``ValueError`` on anything but ``[u64, 32 bytes]``."""
        if not isinstance(w, list | tuple) or len(w) != 2:
            raise ValueError("a ballot is [time, node id]")
        t, node = w
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= _MAX_U64:
            raise ValueError("ballot time must be an unsigned 64-bit integer")
        if not isinstance(node, bytes) or len(node) not in (0, NODE_ID_LEN):
            raise ValueError("ballot node must be a 32-byte node id")
        return cls(t, node)

    def __str__(self) -> str:
        return f"{self.time}@{self.node[:8].hex()}"


#: Below every real ballot: the state of a key no proposer has touched yet.
ZERO_BALLOT = Ballot(0, b"")


class BallotClock:
    """Issues this node's ballots: above the wall clock, above every ballot it issued or saw.

    Seeing a higher ballot (in a refusal) makes the next one higher still, so a proposer that
    lost to a competitor outbids it on its next attempt instead of losing again.
    """

    def __init__(self, node_id: bytes) -> None:
        if len(node_id) != NODE_ID_LEN:
            raise ValueError("node id must be 32 bytes")
        self.node_id = node_id
        self._last = 0

    def observe(self, ballot: Ballot) -> None:
        """Remember a ballot seen elsewhere (a refusal's promise, a committed ballot)."""
        self._last = max(self._last, ballot.time)

    def next(self) -> Ballot:
        self._last = max(self._last + 1, now_ms())
        return Ballot(self._last, self.node_id)
