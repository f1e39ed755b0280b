"""How conditional writes ended, counted on the node that answered the client (exported as
``garagekv_k2v_conditional_writes_total{outcome}``, docs/admin-api.md).

``applied``: the condition held and the write is durable (204); ``precondition_failed``: the
condition did not hold (412); ``unavailable``: no decision could be reached or its outcome is
unknown (503). Other answers (a malformed request, an item too large) are not counted here.
"""

from __future__ import annotations

from dataclasses import dataclass

OUTCOMES = ("applied", "precondition_failed", "unavailable")


@dataclass
class ConditionalOutcomes:
    applied: int = 0
    precondition_failed: int = 0
    unavailable: int = 0

    def count(self, outcome: str) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)

    def snapshot(self) -> dict[str, int]:
        return {o: getattr(self, o) for o in OUTCOMES}
