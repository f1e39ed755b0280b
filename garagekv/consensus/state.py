"""One acceptor's state for one consensus key, and its transitions (pure: no I/O).

Invariants (checked by tests/unit/test_consensus_state.py):

- ``promised`` and ``committed`` (the ballot of ``commit``, the most recent committed proposal)
  never decrease, and ``committed <= promised``;
- ``accepted`` is ``None`` or has a ballot ``<= promised`` and ``> committed`` (a proposal at or
  below the most recent commit is settled and no longer reported);
- a Prepare is promised only for a ballot strictly above ``promised``; a Propose is accepted only
  for a ballot at or above it.

The acceptor persists the new state (``encode``) in the same LMDB transaction as its answer's
reads, and answers only once that transaction is fsynced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from garagekv.consensus.ballot import ZERO_BALLOT, Ballot
from garagekv.consensus.messages import Proposal
from garagekv.util import codec

#: First byte of a stored state, so the format can change.
STATE_FORMAT_VERSION = 1


class CorruptState(ValueError):
    """A stored state that does not decode (a bug or a damaged database)."""


@dataclass(frozen=True)
class AcceptorState:
    promised: Ballot = ZERO_BALLOT
    accepted: Proposal | None = None
    #: The most recent committed proposal, kept whole: a proposer that finds replicas lagging
    #: behind it sends it to them again (docs/consensus.md, "Most recent commit").
    commit: Proposal | None = None

    @property
    def committed(self) -> Ballot:
        return ZERO_BALLOT if self.commit is None else self.commit.ballot

    # ---- transitions: each returns the next state (maybe ``self``) and whether it says yes ----

    def on_prepare(self, ballot: Ballot) -> tuple[AcceptorState, bool]:
        """Promise ``ballot`` if it is strictly above every ballot promised so far."""
        if ballot <= self.promised:
            return self, False
        return AcceptorState(ballot, self.accepted, self.commit), True

    def on_propose(self, proposal: Proposal) -> tuple[AcceptorState, bool]:
        """Accept ``proposal`` unless a higher ballot was promised since."""
        b = proposal.ballot
        if b < self.promised:
            return self, False
        return AcceptorState(b, proposal if b > self.committed else None, self.commit), True

    def on_commit(self, proposal: Proposal) -> AcceptorState:
        """Record that ``proposal`` was chosen: the caller applies its update in any case (updates
        are merges, so a late or repeated commit is harmless); the state only moves forward."""
        commit = proposal if proposal.ballot > self.committed else self.commit
        assert commit is not None
        promised = max(self.promised, commit.ballot)
        accepted = self.accepted
        if accepted is not None and accepted.ballot <= commit.ballot:
            accepted = None
        return AcceptorState(promised, accepted, commit)

    def on_renew(self, committed: Ballot, ballot: Ballot) -> tuple[AcceptorState, bool]:
        """Promise ``ballot`` to the proposer whose commit at ``committed`` was just applied, if
        that commit is still the most recent, nothing newer was accepted, and ``ballot`` is above
        every promise: the proposer then holds the key (docs/consensus.md §3b)."""
        if self.committed != committed or self.accepted is not None:
            return self, False
        return self.on_prepare(ballot)

    def holds(self, ballot: Ballot) -> bool:
        """``ballot`` is still the promise and nothing was accepted since it was made."""
        return self.promised == ballot and self.accepted is None

    # ---- storage ---------------------------------------------------------------------------------

    def in_flight(self) -> Proposal | None:
        """The accepted proposal not known to be committed (what a Promise reports)."""
        return self.accepted

    def encode(self) -> bytes:
        acc = None if self.accepted is None else self.accepted.to_wire()
        com = None if self.commit is None else self.commit.to_wire()
        body: list[Any] = [self.promised.to_wire(), acc, com]
        return bytes([STATE_FORMAT_VERSION]) + codec.encode_lists(body)

    @classmethod
    def decode(cls, data: bytes | None) -> AcceptorState:
        if data is None:
            return cls()
        if not data or data[0] != STATE_FORMAT_VERSION:
            raise CorruptState("unknown consensus state format")
        try:
            promised, acc, com = codec.decode(data[1:])
            return cls(
                Ballot.from_wire(promised),
                None if acc is None else Proposal.from_wire(acc),
                None if com is None else Proposal.from_wire(com),
            )
        except Exception as e:  # noqa: BLE001 - msgpack raises many unrelated types on garbage
            raise CorruptState(f"corrupt consensus state: {e!r}") from None
