"""Operator operations on the cluster: status, peers, and the staged role table.

Like ``admin.key_bucket_ops`` for keys and buckets, these are called by name from the CLI (over RPC) and
the admin HTTP API through the node's operation registry, so both share one implementation.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, overload

from garagekv.admin.operation import NoArgs, Op, OpServices
from garagekv.net.identity import NODE_ID_LEN, parse_node_id
from garagekv.rpc.endpoint import endpoint_path
from garagekv.rpc.layout import (
    LayoutError,
    NodeRole,
    check_next_version,
    describe_history,
    describe_layout_history,
    history_document,
    layout_document,
    parse_zone_redundancy,
)
from garagekv.rpc.system import System, parse_peer
from garagekv.util.config import parse_size
from garagekv.util.errors import AdminError


@overload
def _role_json(role: NodeRole) -> dict[str, Any]: ...
@overload
def _role_json(role: NodeRole | None) -> dict[str, Any] | None: ...
def _role_json(role: NodeRole | None) -> dict[str, Any] | None:
    """``{zone, capacity, tags}``, plus ``host`` (hex) for a worker of a multi-worker host."""
    if role is None:
        return None
    out: dict[str, Any] = {"zone": role.zone, "capacity": role.capacity, "tags": list(role.tags)}
    if role.host is not None:
        out["host"] = role.host.hex()
    return out


def known_nodes(system: System) -> list[bytes]:
    h = system.layout.history
    nodes = {system.node_id, *system.peers, *h.planned_roles()}
    for v in h.versions:
        nodes.update(v.roles)
    return sorted(nodes)


def announced_host(system: System, node: bytes) -> tuple[bytes | None, int | None]:
    """``(host id, worker index)`` a node announces (gossip), or ``(None, None)``."""
    host_of = getattr(system, "host_of", None)  # a System; tests may pass a stand-in without it
    return host_of(node) if host_of is not None else (None, None)


def node_host(system: System, node: bytes) -> bytes | None:
    """The host a node runs on: what it announces, else what its (planned or current) role says."""
    host, _ = announced_host(system, node)
    if host is not None:
        return host
    h = system.layout.history
    role = h.planned_roles().get(node) or h.current().roles.get(node)
    return None if role is None else role.host


def host_members(system: System) -> dict[bytes, list[bytes]]:
    """Every known multi-worker host id with its known workers (by worker index, then id)."""
    hosts: dict[bytes, list[tuple[int, bytes]]] = {}
    for n in known_nodes(system):
        host = node_host(system, n)
        if host is not None:
            _, index = announced_host(system, n)
            hosts.setdefault(host, []).append((index if index is not None else 1 << 30, n))
    return {host: [n for _, n in sorted(members)] for host, members in sorted(hosts.items())}


def resolve_targets(system: System, prefix: str) -> list[bytes]:
    """The nodes an operator means by ``prefix``: a node (every worker of its host, if it is one)
    or a host id (all its workers). A prefix matching several nodes or hosts is an error.

    A host's workers are those up now or with a planned role: a worker removed from the layout
    after the host was given fewer workers is not assigned again while peers still remember it.
    """
    p = prefix.lower()
    planned = system.layout.history.planned_roles()
    is_up = getattr(system, "is_up", lambda n: True)
    hosts = {
        host: [n for n in members if is_up(n) or n in planned] or members
        for host, members in host_members(system).items()
    }
    matching_hosts = [h for h in hosts if h.hex().startswith(p)]
    matching_nodes = [n for n in known_nodes(system) if n.hex().startswith(p)]
    if len(matching_hosts) == 1 and not matching_nodes:
        return hosts[matching_hosts[0]]
    if matching_hosts:
        listing = ", ".join(x.hex()[:16] for x in [*matching_hosts, *matching_nodes])
        raise AdminError(f"'{prefix}' matches several nodes or hosts ({listing}); use a longer prefix.")
    node = resolve_node(system, prefix)
    host = node_host(system, node)
    return hosts.get(host, [node]) if host is not None else [node]


def resolve_node(system: System, prefix: str) -> bytes:
    """A node id from a unique hex prefix, or an error listing what matched."""
    p = prefix.lower()
    matches = [n for n in known_nodes(system) if n.hex().startswith(p)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise AdminError(f"No node matches '{prefix}'. Run `garagekv status` to see node ids.")
    listing = ", ".join(m.hex()[:16] for m in matches)
    raise AdminError(f"'{prefix}' matches {len(matches)} nodes ({listing}); use a longer prefix.")


def node_by_id(system: System, text: str) -> bytes:
    """A full 64-hex node id as is (the node need not be known yet, as in Garage), else a unique prefix."""
    if len(text) == 2 * NODE_ID_LEN:
        try:
            return parse_node_id(text)
        except ValueError as e:
            raise AdminError(str(e))
    return resolve_node(system, text)


async def status(s: OpServices, a: NoArgs) -> dict[str, Any]:
    system = s.system
    h = system.layout.history
    current = h.current()
    planned = h.planned_roles()
    nodes = []
    for n in known_nodes(system):
        info = system.peers.get(n)
        role = current.roles.get(n)
        host, worker = announced_host(system, n)
        if host is None and role is not None:
            host = role.host
        nodes.append(
            {
                "id": n.hex(),
                "host": None if host is None else host.hex(),
                "worker": worker,
                "addr": system.public_addr if n == system.node_id else (info.addr if info else None),
                "hostname": system.hostname if n == system.node_id else (info.hostname if info else ""),
                "up": system.is_up(n),
                "last_seen_secs_ago": None
                if n == system.node_id or info is None or not info.last_seen
                else round(time.time() - info.last_seen, 1),
                "role": _role_json(role),
                "staged_role": _role_json(planned.get(n)) if planned.get(n) != role else None,
                "draining": role is None and any(n in v.roles for v in h.versions[:-1]),
            }
        )
    return {
        "node": system.node_id.hex(),
        "layout_version": current.version,
        "nodes": nodes,
        "staged_changes": h.has_staged_changes(),
    }


@dataclass(frozen=True, kw_only=True)
class NodeConnectArgs:
    peer: str  # <node id>@<host>:<port>


async def node_connect(s: OpServices, a: NodeConnectArgs) -> dict[str, Any]:
    system = s.system
    node_id, addr = parse_peer(a.peer)
    try:
        await system.connect(node_id, addr)
    except Exception as e:  # noqa: BLE001 - reported to the operator with the cause
        raise AdminError(f"Could not connect to {a.peer}: {e}")
    return {"connected": node_id.hex()}


@dataclass(frozen=True, kw_only=True)
class NodeForgetArgs:
    node: str  # id or unique prefix


async def node_forget(s: OpServices, a: NodeForgetArgs) -> dict[str, Any]:
    system = s.system
    node_id = node_by_id(system, a.node)
    name = node_id.hex()[:16]
    if node_id == system.node_id:
        raise AdminError("A node cannot forget itself.")
    h = system.layout.history
    if node_id in h.all_nodes() or node_id in h.planned_roles():
        raise AdminError(
            f"Node {name} has a role in the layout: remove it first (`garagekv layout remove {name}`, then apply)."
        )
    if system.is_up(node_id):
        raise AdminError(f"Node {name} is connected: stop it first, or it will be known again at once.")
    if node_id not in system.peers:
        raise AdminError(f"Node {name} is not in this node's peer list.")
    system.forget(node_id)
    return {"forgotten": node_id.hex()}


async def layout_show(s: OpServices, a: NoArgs) -> dict[str, Any]:
    h = s.system.layout.history
    # Both compute the next assignment (a max-flow): off the event loop.
    text, doc = await asyncio.to_thread(lambda: (describe_history(h), layout_document(h)))
    return {**doc, "text": text}


async def layout_history(s: OpServices, a: NoArgs) -> dict[str, Any]:
    h = s.system.layout.history
    return {**history_document(h), "text": describe_layout_history(h)}


async def layout_get(s: OpServices, a: NoArgs) -> dict[str, Any]:
    h = s.system.layout.history
    cur = h.current()
    return {
        "version": cur.version,
        "roles": [{"id": n.hex(), **_role_json(r)} for n, r in sorted(cur.roles.items())],
        "stagedRoleChanges": [
            {"id": n.hex(), "remove": True} if r is None else {"id": n.hex(), **_role_json(r)}
            for n, r in h.staging.changes(cur.roles)
        ],
    }


def _role_change(system: System, change: Any, index: int) -> tuple[bytes, NodeRole | None]:
    """One entry of ``layout.stage``: ``{id, remove: true}`` or ``{id, zone, capacity, tags}``."""
    where = f"change {index}"
    if not isinstance(change, dict):
        raise AdminError(f"Invalid layout change ({where}): expected an object")
    node_text = change.get("id")
    if not isinstance(node_text, str) or not node_text:
        raise AdminError(f"Invalid layout change ({where}): missing node id")
    node = node_by_id(system, node_text)
    if "host" in change:
        raise AdminError(
            f"Invalid layout change ({where}): a role's host is the one its node announces, it cannot be set"
        )
    if "remove" in change:
        if change["remove"] is not True or set(change) - {"id", "remove"}:
            raise AdminError(f"Invalid layout change ({where}): use {{id, remove: true}} to remove a role")
        return node, None
    zone, capacity, tags = change.get("zone"), change.get("capacity"), change.get("tags", [])
    if not isinstance(zone, str) or not zone:
        raise AdminError(f"Invalid layout change ({where}): missing zone")
    if capacity is not None and (isinstance(capacity, bool) or not isinstance(capacity, int)):
        raise AdminError(f"Invalid layout change ({where}): capacity must be a number of bytes, or null for a gateway")
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise AdminError(f"Invalid layout change ({where}): tags must be a list of strings")
    try:
        return node, NodeRole(zone, capacity, tuple(tags), node_host(system, node))
    except LayoutError as e:
        raise AdminError(f"Invalid layout change ({where}): {e.message}")


@dataclass(frozen=True, kw_only=True)
class LayoutStageArgs:
    changes: list[Any]  # each checked by _role_change, with its index in the messages


async def layout_stage(s: OpServices, a: LayoutStageArgs) -> dict[str, Any]:
    """Stage a list of role changes at once (the admin API's ``POST /v1/layout``); all or none.

    Each change sets a node's whole role, as in Garage: ``{id, zone, capacity, tags}`` (capacity
    in bytes, null for a gateway) or ``{id, remove: true}``. ``id`` is a full node id (a node not
    seen yet is accepted) or a unique prefix of a known one. Answers the layout as ``layout.get``.
    """
    system = s.system
    staged = [_role_change(system, c, i) for i, c in enumerate(a.changes)]
    h = system.layout.history.clone()
    for node, role in staged:
        h.stage_role(node, role)
    system.layout.replace(h)
    return await layout_get(s, NoArgs())


@dataclass(frozen=True, kw_only=True)
class LayoutAssignArgs:
    nodes: list[str]  # node or host id prefixes
    zone: str | None = None
    capacity: int | str | None = None  # bytes, or a size such as "1G"
    gateway: bool = False
    tags: list[str] | None = None
    replace: list[str] | None = None  # nodes whose roles are removed in the same change


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` in ``parts`` integers that differ by at most one and add up to it."""
    q, r = divmod(total, parts)
    return [q + (1 if i < r else 0) for i in range(parts)]


async def layout_assign(s: OpServices, a: LayoutAssignArgs) -> dict[str, Any]:
    """Stage roles. A host (its id, or any of its workers' ids) gets one role for all its workers:
    the zone and tags for each, the capacity split evenly between them."""
    system = s.system
    capacity = a.capacity
    gateway = a.gateway
    if capacity is not None and gateway:
        raise AdminError("-c and -g are mutually exclusive: a gateway stores nothing")
    cap_bytes = None
    if capacity is not None:
        try:
            cap_bytes = parse_size(capacity)
        except ValueError as e:
            raise AdminError(f"Invalid capacity '{capacity}': {e} (examples: 500M, 1G, 2TiB)")
    groups: list[list[bytes]] = []
    for p in a.nodes:
        group = resolve_targets(system, p)
        if not any(set(group) & set(g) for g in groups):
            groups.append(group)
    h = system.layout.history.clone()
    planned = h.planned_roles()
    if a.replace:
        for p in a.replace:
            for n in resolve_targets(system, p):
                h.stage_role(n, None)
    lines = []
    for group in groups:
        for n, role in _group_roles(system, group, planned, a, cap_bytes):
            h.stage_role(n, role)
        host = node_host(system, group[0])
        if host is not None:
            lines.append(f"Host {host.hex()[:16]}: {len(group)} workers ({', '.join(n.hex()[:16] for n in group)}).")
    system.layout.replace(h)
    return {
        "message": "".join(line + "\n" for line in lines) + "Role changes are staged but not yet committed.\n"
        "Use `garagekv layout show` to view staged role changes,\n"
        "and `garagekv layout apply` to enact staged changes."
    }


def _group_roles(
    system: System, group: list[bytes], planned: dict[bytes, NodeRole], a: LayoutAssignArgs, cap_bytes: int | None
) -> list[tuple[bytes, NodeRole]]:
    """The roles of one node, or of all the workers of one host, for ``layout assign``.

    Without ``-z``/``-c``/``-t`` a host keeps what its workers had: their zone and tags, their
    total capacity (split anew, so a host that gained workers spreads it over all of them).
    """
    olds = [planned[n] for n in group if n in planned]
    host = node_host(system, group[0])
    name = f"host {host.hex()[:16]}" if host is not None and len(group) > 1 else group[0].hex()[:16]
    zone = a.zone or (olds[0].zone if olds else None)
    if zone is None:
        raise AdminError(f"Node {name} has no role yet: give its zone with -z ZONE")
    caps: list[int | None]
    if a.gateway:
        caps = [None] * len(group)
    elif cap_bytes is not None:
        caps = list(split_evenly(cap_bytes, len(group)))
    elif any(o.capacity is not None for o in olds):
        caps = list(split_evenly(sum(o.capacity or 0 for o in olds), len(group)))
    elif olds and len(olds) == len(group):
        caps = [None] * len(group)  # gateways stay gateways
    else:
        raise AdminError(
            f"Node {name} has no role yet: give its capacity with -c SIZE (e.g. -c 1G) or make it a gateway with -g"
        )
    tags = a.tags if a.tags else (list(olds[0].tags) if olds else [])
    out = []
    for n, cap in zip(group, caps, strict=True):
        try:
            out.append((n, NodeRole(zone, cap, tuple(tags), node_host(system, n))))
        except LayoutError as e:
            raise AdminError(e.message)
    return out


@dataclass(frozen=True, kw_only=True)
class LayoutRemoveArgs:
    node: str  # a node id prefix, or a host id prefix (all its workers)


async def layout_remove(s: OpServices, a: LayoutRemoveArgs) -> dict[str, Any]:
    """Stage the removal of one node's role (a single worker too: a host that runs fewer workers
    than before), or of every worker of a host given by its host id."""
    system = s.system
    hosts = host_members(system)
    p = a.node.lower()
    matching_hosts = [x for x in hosts if x.hex().startswith(p)]
    if len(matching_hosts) == 1 and not any(n.hex().startswith(p) for n in known_nodes(system)):
        targets = hosts[matching_hosts[0]]
    else:
        targets = [resolve_node(system, a.node)]
    h = system.layout.history.clone()
    for n in targets:
        h.stage_role(n, None)
    system.layout.replace(h)
    return {
        "message": "Role removal is staged but not yet committed.\n"
        "Use `garagekv layout show` to view staged role changes,\n"
        "and `garagekv layout apply` to enact staged changes."
    }


@dataclass(frozen=True, kw_only=True)
class LayoutConfigArgs:
    zone_redundancy: str | int  # a number of zones, or "maximum"


async def layout_config(s: OpServices, a: LayoutConfigArgs) -> dict[str, Any]:
    system = s.system
    h = system.layout.history.clone()
    try:
        zr = parse_zone_redundancy(str(a.zone_redundancy), h.replication_factor)
        h.stage_zone_redundancy(zr)
    except (LayoutError, ValueError) as e:
        raise AdminError(str(getattr(e, "message", e)))
    system.layout.replace(h)
    return {"message": f"The zone redundancy parameter has been set to '{a.zone_redundancy}'."}


@dataclass(frozen=True, kw_only=True)
class LayoutVersionArgs:
    version: int | None = None  # when given, must be the current version + 1


async def layout_apply(s: OpServices, a: LayoutVersionArgs) -> dict[str, Any]:
    system = s.system
    version = a.version
    h = system.layout.history
    new, messages = await asyncio.to_thread(h.apply_staged_changes, version)
    system.layout.replace(new)
    return {
        "messages": messages,
        "version": new.current().version,
        "layout": await layout_get(s, NoArgs()),
        "message": "New cluster layout with updated role assignment has been applied in cluster.\n"
        "Data will now be moved around between nodes accordingly.",
    }


async def layout_revert(s: OpServices, a: LayoutVersionArgs) -> dict[str, Any]:
    """Drop the staged changes; a ``version``, when given, must be the next one (as for apply)."""
    system = s.system
    h = system.layout.history
    version = a.version
    if version is not None:
        check_next_version(h.current().version, version)
    system.layout.replace(h.revert_staged_changes())
    return {
        "message": "All proposed role changes in cluster layout have been canceled.",
        "layout": await layout_get(s, NoArgs()),
    }


@dataclass(frozen=True, kw_only=True)
class SkipDeadNodesArgs:
    version: int
    allow_missing_data: bool = False


async def layout_skip_dead_nodes(s: OpServices, a: SkipDeadNodesArgs) -> dict[str, Any]:
    system = s.system
    h = system.layout.history.clone()
    done = h.skip_dead_nodes(a.version, system.up_nodes(), a.allow_missing_data)
    system.layout.replace(h)
    return {"messages": done}


@dataclass(frozen=True, kw_only=True)
class LocalDigestArgs:
    table: str | None = None  # one table, or all of them


async def table_local_digest(s: OpServices, a: LocalDigestArgs) -> dict[str, Any]:
    """This node's local data per table (entries, a hash of them all, range sums left to rebuild) and trackers.

    Replicas holding the same entries report the same hash; tests and operators use it to check
    that anti-entropy converged. ``{"table": name}`` limits it to one table.
    """
    system = s.system
    prefix = endpoint_path("table", "sync") + ":"
    tables = {}
    for path in system.registry.paths():
        name = path[len(prefix) :] if path.startswith(prefix) else None
        if name and a.table in (None, name):
            tables[name] = await system.netapp.call(system.node_id, path, ["digest"])
    h = system.layout.history
    trackers = h.update_trackers
    lo = h.min_stored()
    return {
        "node": system.node_id.hex(),
        "tables": tables,
        "layout_version": h.current().version,
        "live_versions": [v.version for v in h.versions],
        "trackers": {
            n.hex(): {
                "ack": trackers.ack_map.get(n, lo),
                "sync": trackers.sync_map.get(n, lo),
                "sync_ack": trackers.sync_ack_map.get(n, lo),
            }
            for n in h.all_nodes()
        },
    }


CLUSTER_OPS: tuple[Op[Any], ...] = (
    Op("cluster.status", NoArgs, status),
    Op("node.connect", NodeConnectArgs, node_connect),
    Op("node.forget", NodeForgetArgs, node_forget),
    Op("layout.show", NoArgs, layout_show),
    Op("layout.history", NoArgs, layout_history),
    Op("layout.get", NoArgs, layout_get),
    Op("layout.assign", LayoutAssignArgs, layout_assign),
    Op("layout.stage", LayoutStageArgs, layout_stage),
    Op("layout.remove", LayoutRemoveArgs, layout_remove),
    Op("layout.config", LayoutConfigArgs, layout_config),
    Op("layout.apply", LayoutVersionArgs, layout_apply),
    Op("layout.revert", LayoutVersionArgs, layout_revert),
    Op("layout.skip_dead_nodes", SkipDeadNodesArgs, layout_skip_dead_nodes),
    Op("table.local_digest", LocalDigestArgs, table_local_digest),
)
