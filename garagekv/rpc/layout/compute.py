"""Computing the next layout version from the staged changes, with its operator report.

``calculate_next`` is the only producer of new versions; ``LayoutVersion.check`` is its mirror on
the receiving side. The report is the ``COMPUTATION OF A NEW PARTITION ASSIGNATION`` text that
``layout show`` and ``layout apply`` print.
"""

from __future__ import annotations

from garagekv.rpc.layout.assignment import NB_PARTITIONS, assign, optimal_partition_size
from garagekv.rpc.layout.errors import LayoutError
from garagekv.rpc.layout.parameters import ZoneRedundancy, validate_zone_redundancy
from garagekv.rpc.layout.roles import MAX_NODE_NUMBER, NodeRole, host_groups, node_id_vec_of, storage_nodes
from garagekv.rpc.layout.staging import LayoutStaging
from garagekv.rpc.layout.text import format_table, pct, short_id
from garagekv.rpc.layout.units import format_bytes
from garagekv.rpc.layout.version import LayoutVersion


def calculate_next(prev: LayoutVersion, staging: LayoutStaging) -> tuple[LayoutVersion, list[str]]:
    """Apply staged roles/parameters to ``prev`` and compute version ``prev.version + 1``.

    Returns the new version and the human-readable computation report (``layout show``).
    """
    roles = staging.effective_roles(prev.roles)
    return compute_version(prev, roles, staging.parameters.value.zone_redundancy)


def compute_version(
    prev: LayoutVersion, roles: dict[bytes, NodeRole], zone_redundancy: ZoneRedundancy
) -> tuple[LayoutVersion, list[str]]:
    """The assignment proper: optimal partition size, then minimal movement from ``prev``."""
    rf = prev.replication_factor
    zone_redundancy = validate_zone_redundancy(zone_redundancy, rf)
    storage = storage_nodes(roles)
    if len(storage) > MAX_NODE_NUMBER:
        raise LayoutError(
            f"There are more than {MAX_NODE_NUMBER} non-gateway nodes in the new layout. This is not allowed."
        )
    new = LayoutVersion(prev.version + 1, rf, zone_redundancy, roles, node_id_vec_of(roles), b"", 0)
    zr = new.effective_zone_redundancy()
    nb_zones = len(new.storage_zones())
    if len(storage) < rf:
        raise LayoutError(
            f"The number of nodes with positive capacity ({len(storage)}) is smaller than the "
            f"replication factor ({rf})."
        )
    if nb_zones < zr:
        raise LayoutError(
            f"The number of zones with non-gateway nodes ({nb_zones}) is smaller than the redundancy parameter ({zr})"
        )
    nb_hosts = len(new.storage_hosts())
    if nb_hosts < rf:
        raise LayoutError(
            f"The number of hosts with positive capacity ({nb_hosts}) is smaller than the replication factor "
            f"({rf}): the replicas of a partition must be on distinct hosts."
        )

    problem = new.assignment_problem()
    size = optimal_partition_size(problem)

    previous: list[list[int]] | None = None
    if prev.is_ready:
        index = {n: i for i, n in enumerate(storage)}
        previous = [[index[n] for n in prev.nodes_of(p) if n in index] for p in range(NB_PARTITIONS)]
    ring = assign(problem, size, previous)

    new.partition_size = size
    new.ring_assignment_data = bytes(i for nodes in ring for i in nodes)
    report = assignment_report(new, prev if prev.is_ready else None)
    try:
        new.check()
    except LayoutError as e:
        raise LayoutError(
            f"Layout check returned an error: {e.message}\nOriginal result of computation: <<<<\n"
            + "\n".join(report)
            + "\n>>>>"
        )
    return new, report


def assignment_report(new: LayoutVersion, prev: LayoutVersion | None) -> list[str]:
    """The ``COMPUTATION OF A NEW PARTITION ASSIGNATION`` message for a computed version."""
    rf, size = new.replication_factor, new.partition_size
    msg = [
        "==== COMPUTATION OF A NEW PARTITION ASSIGNATION ====",
        "",
        f"Partitions are replicated {rf} times on at least {new.effective_zone_redundancy()} distinct zones.",
        "",
    ]
    if prev is not None:
        msg.append(
            f"Optimal partition size:                     {format_bytes(size)} "
            f"({format_bytes(prev.partition_size)} in previous layout)"
        )
    else:
        msg.append(f"Optimal partition size:                     {format_bytes(size)}")
    if size < 100:
        msg.append(
            "WARNING: The partition size is low (< 100), make sure the capacities of your nodes "
            "are correct and are of at least a few MB"
        )
    storage = new.storage_nodes()
    used_cap = size * NB_PARTITIONS * rf
    total_cap = sum(new.roles[n].capacity or 0 for n in storage)
    used_pct = 100.0 * used_cap / total_cap if total_cap else 0.0
    msg.append(
        f"Usable capacity / total cluster capacity:   {format_bytes(used_cap)} / "
        f"{format_bytes(total_cap)} ({used_pct:.1f} %)"
    )
    msg.append(f"Effective capacity (replication factor {rf}):  {format_bytes(used_cap // rf)}")
    if used_pct < 80.0:
        msg += [
            "",
            "If the percentage is too low, it might be that the cluster topology and redundancy "
            "constraints are forcing the use of nodes/zones with small storage capacities.",
            "You might want to move storage capacity between zones or relax the redundancy constraint.",
            "See the detailed statistics below and look for saturated nodes/zones.",
        ]

    stored = dict.fromkeys(storage, 0)
    fresh = dict.fromkeys(storage, 0)
    unique_in_zone: dict[str, int] = {}
    for p in range(NB_PARTITIONS):
        old = set(prev.nodes_of(p)) if prev is not None else set()
        zones_of_p = set()
        for n in new.nodes_of(p):
            stored[n] += 1
            fresh[n] += n not in old
            zones_of_p.add(new.roles[n].zone)
        for z in zones_of_p:
            unique_in_zone[z] = unique_in_zone.get(z, 0) + 1

    msg.append("")
    if prev is not None:
        msg += [f"A total of {sum(fresh.values())} new copies of partitions need to be transferred.", ""]

    # With multi-worker hosts: a Host column, and each host's workers listed together.
    hosts = any(new.roles[n].host is not None for n in storage)
    host_cell = "\t" if hosts else ""  # the empty Host cell of the header and TOTAL rows
    rows = []
    for zone in new.storage_zones():
        members = [n for n in storage if new.roles[n].zone == zone]
        if hosts:
            members = [n for group in host_groups(members, new.roles).values() for n in group]
        replicated = sum(stored[n] for n in members)
        zone_cap = sum(new.roles[n].capacity or 0 for n in members)
        rows.append(f"{zone}\t{'Host' + host_cell if hosts else ''}Tags\tPartitions\tCapacity\tUsable capacity")
        for n in members:
            cap = new.roles[n].capacity or 0
            usable = stored[n] * size
            host = new.roles[n].host
            ident = f"  {short_id(n)}\t{'' if host is None else short_id(host)}" if hosts else f"  {short_id(n)}"
            rows.append(
                f"{ident}\t{new.roles[n].tags_string()}\t{stored[n]} ({fresh[n]} new)"
                f"\t{format_bytes(cap)}\t{format_bytes(usable)} ({pct(usable, cap)}%)"
            )
        rows.append(
            f"  TOTAL\t{host_cell}\t{replicated} ({unique_in_zone.get(zone, 0)} unique)"
            f"\t{format_bytes(zone_cap)}\t{format_bytes(replicated * size)} ({pct(replicated * size, zone_cap)}%)"
        )
        rows.append("")
    msg.append(format_table(rows).rstrip("\n"))
    return msg
