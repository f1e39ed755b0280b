"""Layout parameters (zone redundancy) and their parsing from operator input.

Zone redundancy is either an integer (``AtLeast(n)`` in Garage) or the string ``"maximum"``,
which means "as many zones as the replication factor and the storage zones allow".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from garagekv.rpc.layout.errors import LayoutError

MAXIMUM: Literal["maximum"] = "maximum"
ZoneRedundancy = int | Literal["maximum"]


def validate_zone_redundancy(zr: Any, replication_factor: int | None = None) -> ZoneRedundancy:
    """Return ``zr`` if it is ``"maximum"`` or an integer in ``[1, rf]``, else raise."""
    if zr == MAXIMUM:
        return MAXIMUM
    if isinstance(zr, bool) or not isinstance(zr, int):
        raise LayoutError("zone redundancy must be 'none'/'max' or an integer")
    if zr < 1:
        raise LayoutError("The zone redundancy must be at least 1.")
    if replication_factor is not None and zr > replication_factor:
        raise LayoutError(
            f"The zone redundancy must be smaller or equal to the replication factor ({replication_factor})."
        )
    return zr


def parse_zone_redundancy(text: str, replication_factor: int | None = None) -> ZoneRedundancy:
    """Parse ``layout config -r``: an integer, or max/maximum/none (all meaning maximum)."""
    t = text.strip().lower()
    if t in ("max", "maximum", "none"):
        return MAXIMUM
    try:
        value = int(t)
    except ValueError:
        raise LayoutError("zone redundancy must be 'none'/'max' or an integer")
    return validate_zone_redundancy(value, replication_factor)


def zone_redundancy_string(zr: ZoneRedundancy) -> str:
    return str(zr)


@dataclass(frozen=True)
class LayoutParameters:
    """Parameters staged and applied together with roles (today only zone redundancy)."""

    zone_redundancy: ZoneRedundancy = MAXIMUM

    def __post_init__(self) -> None:
        validate_zone_redundancy(self.zone_redundancy)

    def to_wire(self) -> dict[str, Any]:
        return {"zone_redundancy": self.zone_redundancy}

    @classmethod
    def from_wire(cls, w: Any) -> LayoutParameters:
        if not isinstance(w, dict):
            raise LayoutError("Malformed layout parameters")
        return cls(w["zone_redundancy"])
