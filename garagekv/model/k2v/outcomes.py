"""How the operations of the consensus path ended, counted on the node that answered the client
(exported as ``garagekv_k2v_conditional_writes_total{outcome}`` and
``garagekv_k2v_transactions_total{outcome}``, docs/admin-api.md).

Conditional writes: ``applied`` (204), ``precondition_failed`` (412), ``unavailable`` (503: no
decision could be reached, or its outcome is unknown). Transactions: ``succeeded`` (the success
branch ran), ``failed`` (the failure branch ran), ``unavailable`` (503). Other answers (a
malformed request, an item too large) are not counted here.
"""

from __future__ import annotations

CONDITIONAL_WRITE_OUTCOMES = ("applied", "precondition_failed", "unavailable")
TRANSACTION_OUTCOMES = ("succeeded", "failed", "unavailable")


class Outcomes:
    """Counters of one kind of operation, by outcome."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self._counts = dict.fromkeys(names, 0)

    def count(self, outcome: str) -> None:
        self._counts[outcome] += 1

    def snapshot(self) -> dict[str, int]:
        return dict(self._counts)
