"""Node roles: what each node contributes to the cluster (zone, capacity or gateway, tags).

A role table maps a 32-byte node id to its role. Nodes without a role take no part in storage or
request routing. Storage nodes come first in a version's ``node_id_vec`` because ring entries are
single bytes (at most 256 storage nodes).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from garagekv.rpc.layout.errors import LayoutError
from garagekv.rpc.layout.units import format_bytes

#: Ring entries are one byte each, so at most this many storage nodes fit in a layout.
MAX_NODE_NUMBER = 256
#: A host id is random bytes persisted by the supervising process (``metadata_dir/host_id``).
HOST_ID_LEN = 32

#: How roles are grouped into hosts: ``(1, host id)`` for a role that names its host, else
#: ``(0, node id)`` (the node is its own host). Two namespaces, so no id can alias another.
HostKey = tuple[int, bytes]


#: Zone and tag sizes: every layout version repeats every role, and a layout history (several
#: versions) must stay far below the RPC frame limit for hundreds of nodes, or it could no longer
#: be sent to the other nodes.
MAX_NAME_BYTES = 255
MAX_TAGS = 32


@dataclass(frozen=True)
class NodeRole:
    """A node's role; ``capacity is None`` marks a gateway (routes requests, stores nothing).

    Frozen so CRDT merges can share instances between replicas of the staging map safely.
    ``tags`` is kept as a tuple (a list given to the constructor is converted). ``host`` is the
    id of the host whose worker this node is, or None for a node that is a host by itself; it is
    part of the value, so the staging map's LWW merge (which compares whole roles) covers it.
    """

    zone: str
    capacity: int | None
    tags: tuple[str, ...] = ()
    host: bytes | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.zone, str) or not self.zone:
            raise LayoutError("Please specify a zone with the -z flag")
        if len(self.zone.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            raise LayoutError(f"A zone name is at most {MAX_NAME_BYTES} bytes")
        if self.capacity is not None:
            if isinstance(self.capacity, bool) or not isinstance(self.capacity, int):
                raise LayoutError(f"Invalid capacity value: {self.capacity!r}")
            if not 0 < self.capacity < 2**64:
                raise LayoutError(f"Invalid capacity value: {self.capacity} (1 byte to 2^64 - 1 bytes)")
        tags = tuple(self.tags)
        if not all(isinstance(t, str) for t in tags):
            raise LayoutError("node tags must be strings")
        if len(tags) > MAX_TAGS or any(len(t.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES for t in tags):
            raise LayoutError(f"A node has at most {MAX_TAGS} tags of at most {MAX_NAME_BYTES} bytes each")
        object.__setattr__(self, "tags", tags)
        if self.host is not None and (not isinstance(self.host, bytes) or len(self.host) != HOST_ID_LEN):
            raise LayoutError(f"Invalid host id {self.host!r}: expected {HOST_ID_LEN} bytes")

    @property
    def is_gateway(self) -> bool:
        return self.capacity is None

    def capacity_string(self) -> str:
        return "gateway" if self.capacity is None else format_bytes(self.capacity)

    def tags_string(self) -> str:
        return ",".join(self.tags)

    def to_wire(self) -> dict[str, Any]:
        """``{zone, capacity, tags}``, plus ``host`` only when set: a role without a host encodes
        exactly as before hosts existed (same bytes, same layout digests)."""
        w: dict[str, Any] = {"zone": self.zone, "capacity": self.capacity, "tags": list(self.tags)}
        if self.host is not None:
            w["host"] = self.host
        return w

    @classmethod
    def from_wire(cls, w: Any) -> NodeRole:
        if not isinstance(w, Mapping):
            raise LayoutError("Malformed node role")
        return cls(w["zone"], w["capacity"], tuple(w.get("tags", ())), w.get("host"))


def role_to_wire(role: NodeRole | None) -> dict[str, Any] | None:
    """Staged entries may be ``None`` (a staged removal)."""
    return None if role is None else role.to_wire()


def role_from_wire(w: Any) -> NodeRole | None:
    return None if w is None else NodeRole.from_wire(w)


def check_node_id(node_id: Any) -> bytes:
    if not isinstance(node_id, bytes) or len(node_id) != 32:
        raise LayoutError(f"Invalid node id {node_id!r}: expected 32 bytes")
    return node_id


def storage_nodes(roles: Mapping[bytes, NodeRole]) -> list[bytes]:
    """Storage (non-gateway) node ids, sorted by id: the ring's index order."""
    return sorted(n for n, r in roles.items() if r.capacity is not None)


def gateway_nodes(roles: Mapping[bytes, NodeRole]) -> list[bytes]:
    return sorted(n for n, r in roles.items() if r.capacity is None)


def node_id_vec_of(roles: Mapping[bytes, NodeRole]) -> list[bytes]:
    """Storage nodes first (so ring bytes can index them), then gateways, each sorted by id."""
    return storage_nodes(roles) + gateway_nodes(roles)


def zones_in_order(nodes: Iterable[bytes], roles: Mapping[bytes, NodeRole]) -> list[str]:
    """Distinct zones in order of first appearance: the order partitions list their nodes in."""
    seen: dict[str, None] = {}
    for n in nodes:
        seen.setdefault(roles[n].zone, None)
    return list(seen)


def host_key(node: bytes, role: NodeRole) -> HostKey:
    """The host ``node`` runs on: its role's host id, or the node itself."""
    return (1, role.host) if role.host is not None else (0, node)


def host_groups(nodes: Iterable[bytes], roles: Mapping[bytes, NodeRole]) -> dict[HostKey, list[bytes]]:
    """``nodes`` grouped by host, hosts in order of their first node, nodes in the given order."""
    groups: dict[HostKey, list[bytes]] = {}
    for n in nodes:
        groups.setdefault(host_key(n, roles[n]), []).append(n)
    return groups
