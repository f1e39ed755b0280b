"""One layout version: the role table plus the ring (256 partitions -> rf storage nodes).

A version is computed once, by whoever applies the staged changes (``compute.calculate_next``), and then
shipped as data. Every receiver runs ``check()`` before trusting it, which re-derives everything
that can be re-derived cheaply: the node list, the ring's shape and constraints, and the optimal
partition size (closed form, see ``assignment.py``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from garagekv.rpc.layout.assignment import (
    NB_PARTITIONS,
    Problem,
    optimal_partition_size,
)
from garagekv.rpc.layout.errors import LayoutError
from garagekv.rpc.layout.parameters import (
    MAXIMUM,
    LayoutParameters,
    ZoneRedundancy,
    validate_zone_redundancy,
)
from garagekv.rpc.layout.roles import (
    MAX_NODE_NUMBER,
    HostKey,
    NodeRole,
    check_node_id,
    host_groups,
    host_key,
    node_id_vec_of,
    storage_nodes,
    zones_in_order,
)


@dataclass
class LayoutVersion:
    """An applied layout. ``ring_assignment_data[p*rf:(p+1)*rf]`` index ``node_id_vec``."""

    version: int
    replication_factor: int
    zone_redundancy: ZoneRedundancy
    roles: dict[bytes, NodeRole]
    node_id_vec: list[bytes]
    ring_assignment_data: bytes
    partition_size: int

    @classmethod
    def initial(cls, replication_factor: int) -> LayoutVersion:
        """Version 0 of a fresh node: no roles and no ring (it fails ``check()`` on purpose)."""
        return cls(0, replication_factor, MAXIMUM, {}, [], b"", 0)

    # ------------------------------------------------------------------ roles

    @property
    def parameters(self) -> LayoutParameters:
        return LayoutParameters(self.zone_redundancy)

    @property
    def nongateway_node_count(self) -> int:
        return sum(1 for r in self.roles.values() if r.capacity is not None)

    def storage_nodes(self) -> list[bytes]:
        """Storage nodes in ring-index order (they come first in ``node_id_vec``)."""
        return self.node_id_vec[: self.nongateway_node_count]

    def gateway_nodes(self) -> list[bytes]:
        return self.node_id_vec[self.nongateway_node_count :]

    def storage_zones(self) -> list[str]:
        return zones_in_order(storage_nodes(self.roles), self.roles)

    def effective_zone_redundancy(self) -> int:
        """The zone count each partition must span.

        ``maximum`` means ``min(rf, #zones that have storage nodes)``. Garage counts gateway
        zones too, which makes ``maximum`` unsatisfiable when a gateway sits alone in a zone;
        we count only zones that can hold data.
        """
        if self.zone_redundancy == MAXIMUM:
            return min(len(self.storage_zones()), self.replication_factor)
        return int(self.zone_redundancy)

    # ------------------------------------------------------------------ ring lookup

    @property
    def is_ready(self) -> bool:
        """True once the ring has its full size (version 0 has no ring)."""
        return len(self.ring_assignment_data) == NB_PARTITIONS * self.replication_factor

    @staticmethod
    def partition_of(hash32: bytes) -> int:
        """The partition of a 32-byte position: its first byte (8 partition bits)."""
        return hash32[0]

    def nodes_of(self, partition: int) -> list[bytes]:
        """The rf storage nodes of ``partition`` (zone order); empty until the ring is ready."""
        if not self.is_ready:
            return []
        rf = self.replication_factor
        return [self.node_id_vec[i] for i in self.ring_assignment_data[partition * rf : (partition + 1) * rf]]

    def nodes_of_hash(self, hash32: bytes) -> list[bytes]:
        return self.nodes_of(self.partition_of(hash32))

    def partitions_of(self, node: bytes) -> list[int]:
        return [p for p in range(NB_PARTITIONS) if node in self.nodes_of(p)] if self.is_ready else []

    def usage(self) -> dict[bytes, int]:
        """Partitions held by each storage node (0 for idle ones)."""
        counts = Counter(self.ring_assignment_data)
        return {n: counts.get(i, 0) for i, n in enumerate(self.storage_nodes())}

    # ------------------------------------------------------------------ validation

    def storage_hosts(self) -> dict[HostKey, list[bytes]]:
        """Storage nodes grouped by host (``roles.host_key``), hosts in ring-index order."""
        return host_groups(storage_nodes(self.roles), self.roles)

    def assignment_problem(self) -> Problem:
        """The flow problem of this version's roles (storage nodes in ring-index order).

        Raises ``LayoutError`` if the storage nodes of one host are in several zones: a host is
        in one place, and the flow graph's host layer hangs below one zone.
        """
        nodes = storage_nodes(self.roles)
        zones = zones_in_order(nodes, self.roles)
        zone_id = {z: i for i, z in enumerate(zones)}
        caps = [int(self.roles[n].capacity or 0) for n in nodes]
        groups = host_groups(nodes, self.roles)
        host_of: list[int] | None = None
        if len(groups) < len(nodes):  # some host runs several nodes: add the host layer
            index = {n: i for i, members in enumerate(groups.values()) for n in members}
            host_of = [index[n] for n in nodes]
            for (_, host), members in groups.items():
                host_zones = sorted({self.roles[n].zone for n in members})
                if len(host_zones) > 1:
                    raise LayoutError(
                        f"The nodes of host {host.hex()[:16]} are in several zones ({', '.join(host_zones)}); "
                        "the workers of a host must all be in its zone."
                    )
        return Problem(
            caps,
            [zone_id[self.roles[n].zone] for n in nodes],
            len(zones),
            self.replication_factor,
            self.effective_zone_redundancy(),
            host_of,
        )

    def check(self) -> None:
        """Raise ``LayoutError`` unless this version is exactly what ``calculate_next`` makes."""
        self.check_structure()
        rf = self.replication_factor
        ring = self.ring_assignment_data
        zr = self.effective_zone_redundancy()
        for p in range(NB_PARTITIONS):
            members = ring[p * rf : (p + 1) * rf]
            zones = {self.roles[self.node_id_vec[i]].zone for i in members}
            if len(zones) < zr:
                raise LayoutError(f"nodes of partition are in less than {zr} distinct zones")
            hosts = {host_key(self.node_id_vec[i], self.roles[self.node_id_vec[i]]) for i in members}
            if len(hosts) != rf:
                raise LayoutError(f"nodes of partition are on less than {rf} distinct hosts")

        size = self.partition_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise LayoutError(f"invalid partition_size {size!r}")
        for node, used in self.usage().items():
            cap = self.roles[node].capacity or 0
            if used * size > cap:
                raise LayoutError(f"node usage ({used * size}) is bigger than node capacity ({cap})")

        try:
            optimal = optimal_partition_size(self.assignment_problem())
        except LayoutError as e:
            raise LayoutError(f"could not calculate optimal partition size: {e.message}")
        if optimal != size:
            raise LayoutError(f"partition_size ({size}) is different than optimal value ({optimal})")

    def check_structure(self) -> None:
        """Raise ``LayoutError`` unless the version can be read safely: its ring names, for every
        partition, ``replication_factor`` distinct storage nodes of its own roles. That is what a
        node needs of an older version it keeps (whatever rules computed it); ``check`` adds the
        rules of the current computation (zones, hosts, capacities, optimality)."""
        rf = self.replication_factor
        if isinstance(rf, bool) or not isinstance(rf, int) or rf < 1:
            raise LayoutError(f"invalid replication factor {rf!r}")
        validate_zone_redundancy(self.zone_redundancy, rf)
        for node in self.roles:
            check_node_id(node)

        expected = node_id_vec_of(self.roles)
        if sorted(self.node_id_vec) != sorted(expected):
            raise LayoutError(
                "node_id_vec does not contain the correct set of nodes\n"
                f"node_id_vec: {[n.hex()[:16] for n in sorted(self.node_id_vec)]}\n"
                f"expected: {[n.hex()[:16] for n in sorted(expected)]}"
            )
        if self.node_id_vec != expected:
            raise LayoutError("node_id_vec is not ordered as storage nodes by id, then gateways by id")
        nb_storage = self.nongateway_node_count
        if nb_storage > MAX_NODE_NUMBER:
            raise LayoutError(
                f"There are more than {MAX_NODE_NUMBER} non-gateway nodes in the new layout. This is not allowed."
            )

        ring = self.ring_assignment_data
        if not isinstance(ring, bytes | bytearray):
            raise LayoutError("ring_assignment_data must be bytes")
        if len(ring) != NB_PARTITIONS * rf:
            raise LayoutError(f"ring_assignment_data has incorrect length {len(ring)} instead of {NB_PARTITIONS * rf}")
        for x in ring:
            if x >= len(self.node_id_vec):
                raise LayoutError(f"ring_assignment_data contains invalid node id {x}")
            if x >= nb_storage:
                raise LayoutError("ring_assignment_data contains id of a gateway node")

        for p in range(NB_PARTITIONS):
            if len(set(ring[p * rf : (p + 1) * rf])) != rf:
                raise LayoutError(f"partition does not contain {rf} unique node ids")

    # ------------------------------------------------------------------ wire

    def to_wire(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "replication_factor": self.replication_factor,
            "zone_redundancy": self.zone_redundancy,
            "roles": [[n, self.roles[n].to_wire()] for n in sorted(self.roles)],
            "node_id_vec": list(self.node_id_vec),
            "ring_assignment_data": bytes(self.ring_assignment_data),
            "partition_size": self.partition_size,
        }

    @classmethod
    def from_wire(cls, w: Any) -> LayoutVersion:
        """Decode; shape errors become ``LayoutError`` (run ``check()`` for semantics)."""
        try:
            roles = {check_node_id(n): NodeRole.from_wire(r) for n, r in w["roles"]}
            v = cls(
                int(w["version"]),
                int(w["replication_factor"]),
                validate_zone_redundancy(w["zone_redundancy"]),
                roles,
                [check_node_id(n) for n in w["node_id_vec"]],
                bytes(w["ring_assignment_data"]),
                int(w["partition_size"]),
            )
        except LayoutError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise LayoutError(f"Malformed layout version: {e!r}")
        if len(roles) != len(w["roles"]):
            raise LayoutError("Malformed layout version: duplicate role entries")
        return v
