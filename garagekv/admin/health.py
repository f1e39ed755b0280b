"""Health: can this node serve K2V reads and writes right now? The answer of /health and /v1/health.

A report combines the node's local checks (database open and committing, K2V API serving, not
shutting down) with, once the cluster plane provides it, the cluster's view: whether a layout
exists and which partitions lack a quorum at the configured consistency mode. The node hands the
admin server a ``HealthSource``; the cluster work plugs a ``ClusterHealthSource`` into the node.

Statuses (the probe's answer, 200 only for ``ok``):
  - ``ok``: every partition has its read and write quorum (some nodes may still be down);
  - ``no-layout``: no cluster layout has been applied yet, so nothing can be stored;
  - ``degraded``: some partitions lack a quorum (listed in ``partitionsLackingQuorum``);
  - ``unavailable``: a local check failed (database closed, API not serving, shutting down).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from garagekv.rpc.layout import NB_PARTITIONS, read_quorum, write_quorum

OK = "ok"
NO_LAYOUT = "no-layout"
DEGRADED = "degraded"
UNAVAILABLE = "unavailable"

MESSAGES = {
    OK: "garagekv is fully operational",
    NO_LAYOUT: "No cluster layout has been applied yet: reads and writes will fail",
    DEGRADED: "Quorum is not available for some partitions: reads and writes to them will fail",
    UNAVAILABLE: "This node cannot serve requests",
}


@dataclass
class ClusterHealth:
    """The cluster's state as this node sees it; filled by the cluster plane."""

    layout_version: int  # 0: no layout applied yet
    known_nodes: int
    connected_nodes: int
    storage_nodes: int
    storage_nodes_ok: int
    partitions: int
    partitions_quorum: int  # partitions whose read and write quorums are reachable
    partitions_all_ok: int  # partitions whose every replica is reachable
    partitions_lacking_quorum: list[int] = field(default_factory=list)
    nodes_up: dict[str, bool] = field(default_factory=dict)  # node id (hex) -> up, for metrics
    consistency_mode: str = "consistent"


ClusterHealthSource = Callable[[], ClusterHealth]


@dataclass
class HealthReport:
    status: str
    checks: dict[str, str]  # check name -> "ok" | "disabled" | what is wrong
    cluster: ClusterHealth | None = None
    node: str | None = None
    # On a worker of a multi-worker host: {id, workers, workersUp, nodes: [{worker, node, up}]}
    # as this worker sees its host (it answers for the shared port).
    host: dict[str, Any] | None = None

    @property
    def ready(self) -> bool:
        return self.status == OK

    @property
    def http_status(self) -> int:
        return 200 if self.ready else 503

    @property
    def message(self) -> str:
        if self.status == UNAVAILABLE:
            failed = [f"{k}: {v}" for k, v in self.checks.items() if v not in ("ok", "disabled")]
            return MESSAGES[UNAVAILABLE] + (f" ({'; '.join(failed)})" if failed else "")
        c = self.cluster
        if self.status == OK and c is not None and c.storage_nodes_ok < c.storage_nodes:
            down = c.storage_nodes - c.storage_nodes_ok
            return (
                f"Every partition has its quorum, but {down} of {c.storage_nodes} storage nodes "
                "cannot be reached: running with less redundancy"
            )
        return MESSAGES[self.status]

    def probe_body(self) -> dict[str, Any]:
        """``GET /health``."""
        body: dict[str, Any] = {
            "status": self.status,
            "message": self.message,
            "node": self.node,
            "checks": self.checks,
        }
        c = self.cluster
        if c is not None:
            body["layoutVersion"] = c.layout_version
            body["partitions"] = c.partitions
            body["partitionsQuorum"] = c.partitions_quorum
            body["partitionsLackingQuorum"] = partition_ranges(c.partitions_lacking_quorum)
        if self.host is not None:
            body["host"] = self.host
        return body

    def detail_body(self) -> dict[str, Any]:
        """``GET /v1/health``: Garage's fields (``status`` in Garage's words), plus ours."""
        c = self.cluster
        if not self.ready:
            garage_status = "unavailable"
        elif c is not None and c.storage_nodes_ok < c.storage_nodes:
            garage_status = "degraded"
        else:
            garage_status = "healthy"
        body = {
            "status": garage_status,
            "health": self.status,
            "message": self.message,
            "node": self.node,
            "checks": self.checks,
            "layoutVersion": None if c is None else c.layout_version,
            "knownNodes": None if c is None else c.known_nodes,
            "connectedNodes": None if c is None else c.connected_nodes,
            "storageNodes": None if c is None else c.storage_nodes,
            "storageNodesOk": None if c is None else c.storage_nodes_ok,
            "partitions": None if c is None else c.partitions,
            "partitionsQuorum": None if c is None else c.partitions_quorum,
            "partitionsAllOk": None if c is None else c.partitions_all_ok,
            "partitionsLackingQuorum": None if c is None else c.partitions_lacking_quorum,
            "consistencyMode": None if c is None else c.consistency_mode,
        }
        if self.host is not None:
            body["host"] = self.host
        return body


def partition_ranges(partitions: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2,5,7-8"``: a probe body stays one short line."""
    spans: list[list[int]] = []
    for p in sorted(partitions):
        if spans and p == spans[-1][1] + 1:
            spans[-1][1] = p
        else:
            spans.append([p, p])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


class HealthSource(Protocol):
    """What the admin server asks; the node implements it (``Node.health``)."""

    def __call__(self) -> HealthReport: ...


def evaluate(checks: dict[str, str], cluster: ClusterHealth | None, node: str | None = None) -> HealthReport:
    """Local checks first (any failure: unavailable), then the cluster's layout and quorums."""
    if any(v not in ("ok", "disabled") for v in checks.values()):
        status = UNAVAILABLE
    elif cluster is None:
        status = OK  # no cluster plane: a single node storing every partition itself
    elif cluster.layout_version == 0:
        status = NO_LAYOUT
    elif cluster.partitions_lacking_quorum or cluster.partitions_quorum < cluster.partitions:
        status = DEGRADED
    else:
        status = OK
    return HealthReport(status, checks, cluster, node)


def cluster_health_of(system: Any) -> ClusterHealth:
    """The cluster's health as ``system`` (rpc.system.System) sees it: quorums per partition."""
    h = system.layout.history
    current = h.current()
    up = system.up_nodes()
    known = {system.node_id, *system.peers}
    storage = current.storage_nodes()
    lacking: list[int] = []
    all_ok = quorum_ok = 0
    if storage and current.is_ready:
        rf = h.replication_factor
        rq, wq = read_quorum(rf, system.layout.mode), write_quorum(rf, system.layout.mode)
        for p in range(NB_PARTITIONS):
            sets = [v.nodes_of(p) for v in h.versions if v.is_ready]
            ups = [sum(n in up for n in s) for s in sets]
            read_set = h.read_version().nodes_of(p) if h.read_version().is_ready else sets[-1]
            if all(u >= wq for u in ups) and sum(n in up for n in read_set) >= rq:
                quorum_ok += 1
            else:
                lacking.append(p)
            if all(u == len(s) for u, s in zip(ups, sets, strict=True)):
                all_ok += 1
    return ClusterHealth(
        layout_version=current.version if storage else 0,
        known_nodes=len(known),
        connected_nodes=len(up & known),
        storage_nodes=len(storage),
        storage_nodes_ok=sum(n in up for n in storage),
        partitions=NB_PARTITIONS if storage else 0,
        partitions_quorum=quorum_ok,
        partitions_all_ok=all_ok,
        partitions_lacking_quorum=lacking,
        nodes_up={n.hex(): n in up for n in sorted(known | set(storage))},
        consistency_mode=system.layout.mode,
    )
