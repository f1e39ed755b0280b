"""Staged layout changes: a CRDT, so edits made on different nodes merge.

Garage stores ``Lww<LayoutStaging{parameters: Lww<..>, roles: LwwMap<..>}>``. We flatten the
outer LWW register into ``ts`` (the staging *epoch*): a higher epoch replaces the whole staging
area, equal epochs merge field by field. Role edits (assign/remove) and parameter edits keep the
epoch, so concurrent edits merge entry by entry; apply and revert *bump* it, which discards edits
that were staged concurrently against the previous version (Garage's behaviour).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from garagekv.rpc.layout.errors import LayoutError
from garagekv.rpc.layout.parameters import LayoutParameters
from garagekv.rpc.layout.roles import NodeRole, check_node_id, role_from_wire, role_to_wire
from garagekv.util.crdt import Lww, LwwMap
from garagekv.util.time import increment_logical_clock


def _copy_roles(roles: LwwMap[NodeRole | None]) -> LwwMap[NodeRole | None]:
    # Values are immutable (NodeRole is frozen), so copying the registers is enough.
    return LwwMap({k: Lww(e.ts, e.value) for k, e in roles.entries.items()})


@dataclass
class LayoutStaging:
    """Staged parameters and role edits (``None`` = staged removal), under an epoch ``ts``."""

    ts: int = 0
    parameters: Lww[LayoutParameters] = field(default_factory=lambda: Lww(0, LayoutParameters()))
    roles: LwwMap[NodeRole | None] = field(default_factory=LwwMap)

    def clone(self) -> LayoutStaging:
        return LayoutStaging(self.ts, Lww(self.parameters.ts, self.parameters.value), _copy_roles(self.roles))

    # ------------------------------------------------------------------ CRDT

    def merge(self, other: LayoutStaging) -> bool:
        """Merge ``other`` in place (commutative, associative, idempotent); True if changed."""
        before = self.clone()
        if other.ts > self.ts:
            copy = other.clone()
            self.ts, self.parameters, self.roles = copy.ts, copy.parameters, copy.roles
        elif other.ts == self.ts:
            self.parameters.merge(Lww(other.parameters.ts, other.parameters.value))
            self.roles.merge(other.roles)
        return self != before

    # ------------------------------------------------------------------ edits

    def stage_role(self, node: bytes, role: NodeRole | None) -> None:
        """Stage ``role`` for ``node`` (``None`` stages its removal), above any earlier edit."""
        self.roles.put(check_node_id(node), role)

    def stage_parameters(self, parameters: LayoutParameters) -> None:
        self.parameters.update(parameters)

    def reset(self, parameters: Lww[LayoutParameters]) -> None:
        """Drop all staged role edits and open a new epoch (after apply or revert)."""
        self.ts = increment_logical_clock(self.ts)
        self.parameters = Lww(parameters.ts, parameters.value)
        self.roles = LwwMap()

    def changes(self, current: Mapping[bytes, NodeRole]) -> list[tuple[bytes, NodeRole | None]]:
        """Staged entries that differ from ``current`` (what ``layout show`` lists), by node id."""
        return [(n, r) for n, r in self.roles.items() if current.get(n) != r]

    def effective_roles(self, current: Mapping[bytes, NodeRole]) -> dict[bytes, NodeRole]:
        """``current`` with the staged edits applied (the roles the next version will have)."""
        roles = dict(current)
        for node, role in self.roles.items():
            if role is None:
                roles.pop(node, None)
            else:
                roles[node] = role
        return roles

    # ------------------------------------------------------------------ wire

    def to_wire(self) -> dict[str, Any]:
        return {
            "ts": self.ts,
            "parameters": self.parameters.to_wire(lambda p: p.to_wire()),
            "roles": self.roles.to_wire(role_to_wire),
        }

    @classmethod
    def from_wire(cls, w: Any) -> LayoutStaging:
        try:
            roles = LwwMap.from_wire(w["roles"], role_from_wire)
            for node in roles.entries:
                check_node_id(node)
            return cls(int(w["ts"]), Lww.from_wire(w["parameters"], LayoutParameters.from_wire), roles)
        except LayoutError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise LayoutError(f"Malformed staged layout: {e!r}")
