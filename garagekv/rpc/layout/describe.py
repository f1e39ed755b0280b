"""Human-readable layout text, shaped like ``garage layout show``.

Operators compare this output with Garage's documentation, and scripts scrape the final
``garagekv layout apply --version N`` line, so the wording and layout follow Garage closely.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from garagekv.rpc.layout.assignment import NB_PARTITIONS
from garagekv.rpc.layout.errors import LayoutError
from garagekv.rpc.layout.parameters import zone_redundancy_string
from garagekv.rpc.layout.units import format_bytes

if TYPE_CHECKING:
    from garagekv.rpc.layout.history import LayoutHistory
    from garagekv.rpc.layout.version import LayoutVersion


def format_table(rows: list[str]) -> str:
    """Tab-separated rows to aligned columns (each but the last padded to max width + 2)."""
    cells = [r.split("\t") for r in rows]
    ncols = max((len(c) for c in cells), default=0)
    widths = [0] * ncols
    for c in cells:
        for i, cell in enumerate(c[:-1]):
            widths[i] = max(widths[i], len(cell))
    out = []
    for c in cells:
        line = "".join(cell.ljust(widths[i] + 2) for i, cell in enumerate(c[:-1])) + (c[-1] if c else "")
        out.append(line.rstrip())
    return "\n".join(out)


def short_id(node: bytes) -> str:
    return node.hex()[:16]


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}" if whole else "0.0"


def role_table(version: LayoutVersion) -> str | None:
    """The ``ID Tags Zone Capacity Usable capacity`` table, or None if no node has a role."""
    if not version.roles:
        return None
    usage = version.usage() if version.is_ready else {}
    rows = ["ID\tTags\tZone\tCapacity\tUsable capacity"]
    for node in version.node_id_vec:
        role = version.roles[node]
        if role.capacity is None:
            rows.append(f"{short_id(node)}\t{role.tags_string()}\t{role.zone}\tgateway\t")
        else:
            usable = usage.get(node, 0) * version.partition_size
            rows.append(
                f"{short_id(node)}\t{role.tags_string()}\t{role.zone}\t{format_bytes(role.capacity)}"
                f"\t{format_bytes(usable)} ({_pct(usable, role.capacity)}%)"
            )
    return format_table(rows)


def describe_version(version: LayoutVersion) -> str:
    """The current-layout part of ``layout show`` for one version."""
    table = role_table(version)
    lines = [
        table
        if table is not None
        else "No nodes currently have a role in the cluster.\nSee `garagekv status` to view available nodes."
    ]
    lines += ["", f"Zone redundancy: {zone_redundancy_string(version.zone_redundancy)}"]
    lines += ["", f"Current cluster layout version: {version.version}"]
    return "\n".join(lines)


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
    pct = 100.0 * used_cap / total_cap if total_cap else 0.0
    msg.append(
        f"Usable capacity / total cluster capacity:   {format_bytes(used_cap)} / "
        f"{format_bytes(total_cap)} ({pct:.1f} %)"
    )
    msg.append(f"Effective capacity (replication factor {rf}):  {format_bytes(used_cap // rf)}")
    if pct < 80.0:
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

    rows = []
    for zone in new.storage_zones():
        members = [n for n in storage if new.roles[n].zone == zone]
        replicated = sum(stored[n] for n in members)
        zone_cap = sum(new.roles[n].capacity or 0 for n in members)
        rows.append(f"{zone}\tTags\tPartitions\tCapacity\tUsable capacity")
        for n in members:
            cap = new.roles[n].capacity or 0
            usable = stored[n] * size
            rows.append(
                f"  {short_id(n)}\t{new.roles[n].tags_string()}\t{stored[n]} ({fresh[n]} new)"
                f"\t{format_bytes(cap)}\t{format_bytes(usable)} ({_pct(usable, cap)}%)"
            )
        rows.append(
            f"  TOTAL\t\t{replicated} ({unique_in_zone.get(zone, 0)} unique)\t{format_bytes(zone_cap)}"
            f"\t{format_bytes(replicated * size)} ({_pct(replicated * size, zone_cap)}%)"
        )
        rows.append("")
    msg.append(format_table(rows).rstrip("\n"))
    return msg


def describe_history(history: LayoutHistory) -> str:
    """Everything ``layout show`` prints: current layout, staged changes and a dry-run apply.

    When the dry run succeeds, the text ends with the exact line
    ``garagekv layout apply --version N`` (scripts scrape it).
    """
    current = history.current()
    out = ["==== CURRENT CLUSTER LAYOUT ====", describe_version(current)]
    changes = history.staging.changes(current.roles)
    new_params = history.staging.parameters.value
    params_changed = new_params.zone_redundancy != current.zone_redundancy
    if not changes and not params_changed:
        return "\n".join(out) + "\n"

    out += ["", "==== STAGED ROLE CHANGES ===="]
    if changes:
        rows = ["ID\tTags\tZone\tCapacity"]
        for node, role in changes:
            if role is None:
                rows.append(f"{short_id(node)}\tREMOVED")
            else:
                rows.append(f"{short_id(node)}\t{role.tags_string()}\t{role.zone}\t{role.capacity_string()}")
        out.append(format_table(rows))
    if params_changed:
        out += ["", f"Zone redundancy: {zone_redundancy_string(new_params.zone_redundancy)}"]

    try:
        new, msg = history.preview_staged_changes()
    except LayoutError as e:
        out += [
            "",
            f"Error while trying to compute the assignment: {e.message}",
            "",
            "This new layout cannot yet be applied.",
            "You can revert all proposed changes with: garagekv layout revert --yes",
        ]
        return "\n".join(out) + "\n"

    table = role_table(new)
    out += ["", "==== NEW CLUSTER LAYOUT AFTER APPLYING CHANGES ===="]
    out.append(table if table is not None else "No nodes have a role in the new layout.")
    out += ["", f"Zone redundancy: {zone_redundancy_string(new.zone_redundancy)}", ""]
    out += msg
    out += [
        "",
        "You can also revert all proposed changes with: garagekv layout revert --yes",
        "To enact the staged role changes, type:",
        "",
        f"garagekv layout apply --version {new.version}",
    ]
    return "\n".join(out) + "\n"


def describe_layout_history(history: LayoutHistory) -> str:
    """``layout history``: every known version with its status, and trackers while migrating."""
    rows = ["Version\tStatus\tStorage nodes\tGateway nodes"]
    current = history.current().version
    for v in reversed(history.versions):
        status = "current" if v.version == current else "draining"
        rows.append(f"#{v.version}\t{status}\t{len(v.storage_nodes())}\t{len(v.gateway_nodes())}")
    for v in reversed(history.old_versions):
        rows.append(f"#{v.version}\thistorical\t{len(v.storage_nodes())}\t{len(v.gateway_nodes())}")
    out = ["==== LAYOUT HISTORY ====", format_table(rows), ""]
    if len(history.versions) > 1:
        t = history.update_trackers
        lo = history.min_stored()
        rows = ["Node\tAck\tSync\tSync-ack"]
        for node in history.all_nodes():
            rows.append(
                f"{short_id(node)}\t#{t.ack_map.get(node, lo)}\t#{t.sync_map.get(node, lo)}"
                f"\t#{t.sync_ack_map.get(node, lo)}"
            )
        out += [
            "==== UPDATE TRACKERS ====",
            "Several layout versions are currently live in the cluster, and data is being migrated.",
            "This is the internal data that garagekv stores to know which nodes have what data.",
            "",
            format_table(rows),
            "",
            "If some nodes are not catching up to the latest layout version in the update trackers,",
            "it might be because they are offline or unable to complete a sync successfully.",
            f"You may force progress using `garagekv layout skip-dead-nodes --version {current}`",
        ]
    else:
        out += [
            "Your cluster is currently in a stable state with a single live layout version.",
            "No metadata migration is in progress.",
        ]
    return "\n".join(out) + "\n"
