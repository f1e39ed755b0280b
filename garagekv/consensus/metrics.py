"""Counters of the consensus layer, as plain attributes (the admin layer exports them).

``on_event``, when set, is called with the counter's name at each increment (a metrics
registry can hang there without this layer importing it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class ConsensusMetrics:
    rounds: int = 0  # operations started (``Proposer.run`` calls)
    decided: int = 0  # operations whose own proposal was accepted (and committed, if not a no-op)
    attempts: int = 0  # ballots tried (an operation under contention tries several)
    held: int = 0  # operations decided under a held ballot, without a Prepare
    checked: int = 0  # held writes decided on this node's own states, accepted without a Read
    mismatches: int = 0  # held rounds whose other holder had other states (decided again on both)
    impatient: int = 0  # held rounds given up because a holder did not answer in time (§9)
    contention: int = 0  # ballots lost to a higher one (refused promise or accept)
    completions: int = 0  # others' accepted-but-uncommitted proposals completed first
    repairs: int = 0  # most recent commits sent again to replicas that missed them
    failures: int = 0  # operations that ended in an error (503 after no quorum or the deadline)
    promises: int = 0  # acceptor side: Prepares promised
    refusals: int = 0  # acceptor side: Prepares or Proposes refused
    accepts: int = 0  # acceptor side: Proposes accepted
    commits: int = 0  # acceptor side: Commits applied
    on_event: Callable[[str], None] | None = field(default=None, repr=False, compare=False)

    def count(self, name: str) -> None:
        setattr(self, name, getattr(self, name) + 1)
        hook = self.on_event
        if hook is not None:
            try:
                hook(name)
            except Exception:  # noqa: BLE001 - metrics must never change a round's outcome
                pass

    def snapshot(self) -> dict[str, int]:
        return {k: v for k, v in vars(self).items() if isinstance(v, int)}
