"""Human-readable layout text, shaped like ``garage layout show``.

Operators compare this output with Garage's documentation, and scripts scrape the final
``garagekv layout apply --version N`` line, so the wording and layout follow Garage closely.

This module sits on top of the layout package: it reads histories and versions, and nothing in
the package imports it (the admin API calls it), so the package's imports run one way.
"""

from __future__ import annotations

from typing import Any

from garagekv.rpc.layout.errors import LayoutError
from garagekv.rpc.layout.history import LayoutHistory
from garagekv.rpc.layout.parameters import zone_redundancy_string
from garagekv.rpc.layout.roles import NodeRole, host_groups
from garagekv.rpc.layout.text import format_table, pct, short_id
from garagekv.rpc.layout.units import format_bytes
from garagekv.rpc.layout.version import LayoutVersion


def has_hosts(roles: dict[bytes, NodeRole] | list[NodeRole | None]) -> bool:
    """Some role names a host: the tables then get a Host column and list a host's workers together."""
    values = roles.values() if isinstance(roles, dict) else roles
    return any(r is not None and r.host is not None for r in values)


def host_column(role: NodeRole | None) -> str:
    return "" if role is None or role.host is None else short_id(role.host)


def role_table(version: LayoutVersion) -> str | None:
    """The ``ID Tags Zone Capacity Usable capacity`` table, or None if no node has a role.

    With multi-worker hosts, a ``Host`` column follows the ID and the workers of a host are
    listed together (where the first of them would be), each with its own share.
    """
    if not version.roles:
        return None
    usage = version.usage() if version.is_ready else {}
    hosts = has_hosts(version.roles)
    rows = ["ID\tHost\tTags\tZone\tCapacity\tUsable capacity" if hosts else "ID\tTags\tZone\tCapacity\tUsable capacity"]
    order = version.node_id_vec
    if hosts:
        order = [n for members in host_groups(order, version.roles).values() for n in members]
    for node in order:
        role = version.roles[node]
        ident = f"{short_id(node)}\t{host_column(role)}" if hosts else short_id(node)
        if role.capacity is None:
            rows.append(f"{ident}\t{role.tags_string()}\t{role.zone}\tgateway\t")
        else:
            usable = usage.get(node, 0) * version.partition_size
            rows.append(
                f"{ident}\t{role.tags_string()}\t{role.zone}\t{format_bytes(role.capacity)}"
                f"\t{format_bytes(usable)} ({pct(usable, role.capacity)}%)"
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
        hosts = has_hosts([r for _, r in changes])
        rows = ["ID\tHost\tTags\tZone\tCapacity" if hosts else "ID\tTags\tZone\tCapacity"]
        if hosts:  # the workers of a host together, in order of their first staged change
            by_host: dict[object, list[tuple[bytes, NodeRole | None]]] = {}
            for node, role in changes:
                key = node if role is None or role.host is None else role.host
                by_host.setdefault(key, []).append((node, role))
            changes = [c for group in by_host.values() for c in group]
        for node, role in changes:
            ident = f"{short_id(node)}\t{host_column(role)}" if hosts else short_id(node)
            if role is None:
                rows.append(f"{ident}\tREMOVED")
            else:
                rows.append(f"{ident}\t{role.tags_string()}\t{role.zone}\t{role.capacity_string()}")
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


# ---- the same, as data (``layout show --json``, ``layout history --json``, the admin API) ---------


def _roles_document(version: LayoutVersion) -> list[dict[str, Any]]:
    usage = version.usage() if version.is_ready else {}
    out = []
    for node in version.node_id_vec:
        role = version.roles[node]
        partitions = usage.get(node, 0)
        entry = {
            "id": node.hex(),
            "zone": role.zone,
            "capacity": role.capacity,
            "tags": list(role.tags),
            "partitions": partitions,
            "usableCapacity": None if role.capacity is None else partitions * version.partition_size,
        }
        if role.host is not None:
            entry["host"] = role.host.hex()
        out.append(entry)
    return out


def layout_document(history: LayoutHistory) -> dict[str, Any]:
    """``layout show`` as fields: the current roles with their partitions, the staged changes,
    and the version applying them would give (or why it cannot be computed)."""
    current = history.current()
    changes = history.staging.changes(current.roles)
    new_params = history.staging.parameters.value
    params_changed = new_params.zone_redundancy != current.zone_redundancy
    doc: dict[str, Any] = {
        "version": current.version,
        "zoneRedundancy": zone_redundancy_string(current.zone_redundancy),
        "roles": _roles_document(current),
        "stagedRoleChanges": [
            {"id": n.hex(), "remove": True}
            if r is None
            else {
                "id": n.hex(),
                "zone": r.zone,
                "capacity": r.capacity,
                "tags": list(r.tags),
                **({} if r.host is None else {"host": r.host.hex()}),
            }
            for n, r in changes
        ],
        "stagedZoneRedundancy": zone_redundancy_string(new_params.zone_redundancy) if params_changed else None,
        "next": None,
    }
    if changes or params_changed:
        try:
            new, msg = history.preview_staged_changes()
        except LayoutError as e:
            doc["next"] = {"error": e.message}
        else:
            doc["next"] = {
                "version": new.version,
                "zoneRedundancy": zone_redundancy_string(new.zone_redundancy),
                "roles": _roles_document(new),
                "messages": msg,
            }
    return doc


def history_document(history: LayoutHistory) -> dict[str, Any]:
    """``layout history`` as fields: every known version with its status, and the update
    trackers of every node while several versions are live (null once the cluster is stable)."""
    current = history.current().version

    def entry(v: LayoutVersion, status: str) -> dict[str, Any]:
        return {
            "version": v.version,
            "status": status,
            "storageNodes": len(v.storage_nodes()),
            "gatewayNodes": len(v.gateway_nodes()),
        }

    versions = [entry(v, "current" if v.version == current else "draining") for v in reversed(history.versions)]
    versions += [entry(v, "historical") for v in reversed(history.old_versions)]
    trackers = None
    if len(history.versions) > 1:
        t, lo = history.update_trackers, history.min_stored()
        trackers = {
            n.hex(): {"ack": t.ack_map.get(n, lo), "sync": t.sync_map.get(n, lo), "syncAck": t.sync_ack_map.get(n, lo)}
            for n in history.all_nodes()
        }
    return {"currentVersion": current, "versions": versions, "updateTrackers": trackers}
