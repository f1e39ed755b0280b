"""Ballots: unique, totally ordered (layout version, time, node id) triples.

The layout version (the newest live version the proposer knows) comes first so that every
round run by a proposer that knows a layout version outbids every round run under an older
view, whatever the clocks say: a proposal accepted under an old view can never pass for newer
than what rounds under the new view decided (docs/consensus.md, "Layout changes").

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


def _u64(x: Any) -> bool:
    return not isinstance(x, bool) and isinstance(x, int) and 0 <= x <= _MAX_U64


@dataclass(frozen=True, order=True)
class Ballot:
    """Ordered by layout version, then time (ms), then node id (bytes order)."""

    epoch: int
    time: int
    node: bytes

    def to_wire(self) -> list[Any]:
        return [self.epoch, self.time, self.node]

    @classmethod
    def from_wire(cls, w: Any) -> Ballot:
        """Parse a wire ballot; raises ``ValueError`` on anything but ``[u64, u64, node id]``."""
        if not isinstance(w, list | tuple) or len(w) != 3:
            raise ValueError("a ballot is [layout version, time, node id]")
        epoch, t, node = w
        if not _u64(epoch) or not _u64(t):
            raise ValueError("ballot layout version and time must be unsigned 64-bit integers")
        if not isinstance(node, bytes) or len(node) not in (0, NODE_ID_LEN):
            raise ValueError("ballot node must be a 32-byte node id")
        return cls(epoch, t, node)

    def __str__(self) -> str:
        return f"{self.epoch}:{self.time}@{self.node[:8].hex()}"


#: Below every real ballot: the state of a key no proposer has touched yet.
ZERO_BALLOT = Ballot(0, 0, b"")


class BallotClock:
    """Issues this node's ballots: above the wall clock, above every ballot it issued or saw.

    Seeing a higher ballot (in a refusal) makes the next one higher still, so a proposer that
    lost to a competitor outbids it on its next attempt instead of losing again, unless the
    competitor's layout version is newer: then only learning that layout lets it win (a proposer
    never borrows a layout version it does not know, which would defeat the fencing).
    """

    def __init__(self, node_id: bytes) -> None:
        if len(node_id) != NODE_ID_LEN:
            raise ValueError("node id must be 32 bytes")
        self.node_id = node_id
        self._last = 0

    def observe(self, ballot: Ballot) -> None:
        """Remember a ballot seen elsewhere (a refusal's promise, a committed ballot)."""
        self._last = max(self._last, ballot.time)

    def next(self, epoch: int) -> Ballot:
        """A new ballot for a proposer whose newest known layout version is ``epoch``."""
        self._last = max(self._last + 1, now_ms())
        return Ballot(epoch, self._last, self.node_id)
