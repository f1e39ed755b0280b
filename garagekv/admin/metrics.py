"""The node's Prometheus metrics: one registry per node, served as text by ``GET /metrics``.

Counters and histograms are updated where things happen (the K2V server's per-request observer,
the admin server, the database writer's commit hook, and the RPC/quorum hooks below that the
cluster plane calls). Gauges are read when Prometheus scrapes, from the node's local snapshot,
the cluster health source and any extra source added with ``add_source``.

Names follow Prometheus conventions with a ``garagekv_`` prefix; each says which Garage metric it
corresponds to, where there is one (``docs/admin-api.md`` has the table).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from garagekv.admin.health import ClusterHealth, ClusterHealthSource

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

# table statistic (admin/stats.py) -> metric name
TABLE_GAUGES = {
    "items": ("garagekv_table_size", "Entries stored in the table on this node (Garage: table_size)"),
    "bytes": ("garagekv_table_bytes", "Bytes of database pages holding the table's entries on this node"),
    "merkleItems": (
        "garagekv_table_merkle_tree_size",
        "Records of the table's range sums on this node (what anti-entropy compares; Garage: its Merkle tree)",
    ),
    "merkleTodo": (
        "garagekv_table_merkle_updater_todo_queue_length",
        "Entries a rebuild of the table's range sums has not added yet "
        "(Garage: table_merkle_updater_todo_queue_length)",
    ),
    "gcTodo": ("garagekv_table_gc_todo_queue_length", "Tombstones waiting for garbage collection"),
    "insertQueue": ("garagekv_table_insert_queue_length", "Entries waiting in the durable insert queue"),
}


@dataclass
class LocalSnapshot:
    """Point-in-time numbers the node reads for a scrape."""

    k2v_in_flight: int = 0
    poll_subscriptions: int = 0
    db_commits: int = 0
    db_writes: int = 0
    tables: dict[str, dict[str, int]] = field(default_factory=dict)


class NodeMetrics:
    def __init__(
        self, *, node_id: str = "", version: str = "", replication_factor: int = 1, consistency_mode: str = "consistent"
    ) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.local_snapshot: Callable[[], LocalSnapshot] | None = None
        # Set on a worker of a multi-worker host: the whole host's metrics (``merge_host_metrics``
        # of every worker's ``render()``), which /metrics then serves instead of this worker's.
        self.gather: Callable[[], Awaitable[bytes]] | None = None
        self.cluster_health: ClusterHealthSource | Callable[[], ClusterHealth | None] | None = None
        self._sources: list[Callable[[], Iterable[Metric]]] = []

        info = Gauge(
            "garagekv_build_info", "Always 1; labels say the version and node id", ["version", "node_id"], registry=r
        )
        info.labels(version, node_id).set(1)
        Gauge("garagekv_replication_factor", "Configured replication factor", registry=r).set(replication_factor)
        Gauge(
            "garagekv_consistency_mode_info", "Always 1; the label says the consistency mode", ["mode"], registry=r
        ).labels(consistency_mode).set(1)

        # K2V API (Garage: api_k2v_request_counter, api_k2v_error_counter, api_k2v_request_duration)
        self.k2v_requests = Counter(
            "garagekv_api_k2v_requests", "K2V API requests answered", ["api_endpoint", "status_code"], registry=r
        )
        self.k2v_errors = Counter(
            "garagekv_api_k2v_errors",
            "K2V API requests answered with an error",
            ["api_endpoint", "error_code"],
            registry=r,
        )
        self.k2v_duration = Histogram(
            "garagekv_api_k2v_request_duration_seconds",
            "K2V API request duration",
            ["api_endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # Hulykvs-compatible API (docs/hulykvs.md): requests by endpoint and status, as K2V's
        self.hulykvs_requests = Counter(
            "garagekv_api_hulykvs_requests",
            "Hulykvs API requests answered",
            ["api_endpoint", "status_code"],
            registry=r,
        )
        self.hulykvs_duration = Histogram(
            "garagekv_api_hulykvs_request_duration_seconds",
            "Hulykvs API request duration",
            ["api_endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # admin API (Garage: api_admin_*)
        self.admin_requests = Counter(
            "garagekv_api_admin_requests", "Admin API requests answered", ["api_endpoint", "status_code"], registry=r
        )
        self.admin_duration = Histogram(
            "garagekv_api_admin_request_duration_seconds", "Admin API request duration", ["api_endpoint"], registry=r
        )
        # database writer
        self.db_batch_size = Histogram(
            "garagekv_db_commit_batch_size",
            "Write transactions per group commit (one fsync each)",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.db_commit_duration = Histogram(
            "garagekv_db_commit_duration_seconds",
            "Time to run and commit one group of transactions",
            buckets=RPC_BUCKETS,
            registry=r,
        )
        # RPC and quorums: updated by the cluster plane through observe_rpc / quorum_failure
        # (Garage: rpc_request_counter, rpc_timeout_counter, rpc_netapp_error_counter,
        # rpc_garage_error_counter, rpc_duration)
        self.rpc_requests = Counter("garagekv_rpc_requests", "RPC requests sent", ["rpc_endpoint", "peer"], registry=r)
        self.rpc_errors = Counter(
            "garagekv_rpc_errors",
            "RPC requests that failed (kind: remote|network)",
            ["rpc_endpoint", "peer", "kind"],
            registry=r,
        )
        self.rpc_timeouts = Counter(
            "garagekv_rpc_timeouts", "RPC requests that timed out", ["rpc_endpoint", "peer"], registry=r
        )
        self.rpc_duration = Histogram(
            "garagekv_rpc_duration_seconds",
            "RPC round-trip time",
            ["rpc_endpoint", "peer"],
            buckets=RPC_BUCKETS,
            registry=r,
        )
        self.quorum_failures = Counter(
            "garagekv_quorum_failures", "Operations that could not reach their quorum", ["operation"], registry=r
        )
        # The children every request of the hot paths updates (the duration by endpoint only).
        self._k2v = _CountedAndTimed(self.k2v_requests, self.k2v_duration, timed=1)
        self._hulykvs = _CountedAndTimed(self.hulykvs_requests, self.hulykvs_duration, timed=1)
        self._rpc = _CountedAndTimed(self.rpc_requests, self.rpc_duration, timed=2)
        # Peers, anti-entropy sync and GC progress are read at scrape time (admin/cluster_metrics.py).
        r.register(_ScrapeCollector(self))

    # ---- hooks ---------------------------------------------------------------------------------

    def observe_k2v(self, endpoint: str | None, status: int, error_code: str | None, seconds: float) -> None:
        name = endpoint or "Unknown"
        requests, duration = self._k2v.of(name, str(status))
        requests.inc()
        if error_code is not None:
            self.k2v_errors.labels(name, error_code).inc()
        duration.observe(seconds)

    def observe_hulykvs(self, endpoint: str | None, status: int, seconds: float) -> None:
        requests, duration = self._hulykvs.of(endpoint or "Unknown", str(status))
        requests.inc()
        duration.observe(seconds)

    def observe_admin(self, endpoint: str, status: int, seconds: float) -> None:
        self.admin_requests.labels(endpoint, str(status)).inc()
        self.admin_duration.labels(endpoint).observe(seconds)

    def observe_db_commit(self, batch_size: int, seconds: float) -> None:
        """The database writer's ``on_commit`` hook (runs on the writer thread; thread-safe)."""
        self.db_batch_size.observe(batch_size)
        self.db_commit_duration.observe(seconds)

    def observe_rpc(self, endpoint: str, peer: str, seconds: float, outcome: str = "ok") -> None:
        """One RPC to ``peer`` (hex id prefix).

        ``outcome`` is ok, remote (an error answer), network, timeout, or cancelled (the caller
        stopped waiting, e.g. its quorum was reached: counted as a request, nothing else).
        """
        requests, duration = self._rpc.of(endpoint, peer)
        requests.inc()
        if outcome == "cancelled":
            return
        if outcome == "timeout":
            self.rpc_timeouts.labels(endpoint, peer).inc()
            return
        if outcome != "ok":
            self.rpc_errors.labels(endpoint, peer, outcome).inc()
        duration.observe(seconds)

    def quorum_failure(self, operation: str) -> None:
        self.quorum_failures.labels(operation).inc()

    def add_source(self, source: Callable[[], Iterable[Metric]]) -> None:
        """Extra metric families computed at scrape time (queue lengths, sync progress...)."""
        self._sources.append(source)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def render_host(self) -> bytes:
        """What ``GET /metrics`` serves: this node's metrics, or its whole host's (``gather``)."""
        return await self.gather() if self.gather is not None else self.render()


def _label_sample(line: str, label: str) -> str:
    """``name{a="b"} 1`` -> ``name{<label>,a="b"} 1``; ``name 1`` -> ``name{<label>} 1``."""
    brace, space = line.find("{"), line.find(" ")
    if 0 <= brace < space:
        rest = line[brace + 1 :]
        return f"{line[:brace]}{{{label}{'' if rest.startswith('}') else ','}{rest}"
    return f"{line[:space]}{{{label}}}{line[space:]}"


def merge_host_metrics(host: str, expected: int, texts: list[tuple[int, str, bytes | None]]) -> bytes:
    """The metrics of a host's workers as one exposition, so one scrape of the shared port sees them all.

    ``texts``: ``(worker index, node id, its /metrics text or None if it did not answer)``. Every
    sample gets a ``host_worker="<index>"`` label; each family appears once, with the HELP and
    TYPE lines of the first worker that has it and the samples of all. Three families describe
    the host: ``garagekv_host_workers{host}`` (configured), ``garagekv_host_workers_up{host}``
    (answered this scrape) and ``garagekv_host_worker_up{host,host_worker,node_id}``.
    """
    families: dict[str, tuple[list[str], list[str]]] = {}  # name -> (HELP/TYPE lines, samples)
    header_from: dict[str, int] = {}  # name -> the worker whose HELP/TYPE lines are kept
    for index, _, text in sorted(texts):
        if text is None:
            continue
        current: tuple[list[str], list[str]] | None = None
        for line in text.decode().splitlines():
            if line.startswith("#"):
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    current = families.setdefault(parts[2], ([], []))
                    if header_from.setdefault(parts[2], index) == index:
                        current[0].append(line)
            elif line:
                if current is None:  # a sample before any header: a family of its own
                    current = families.setdefault(line.split("{", 1)[0].split(" ", 1)[0], ([], []))
                current[1].append(_label_sample(line, f'host_worker="{index}"'))
    up = sum(1 for _, _, text in texts if text is not None)
    out = [
        "# HELP garagekv_host_workers Worker processes configured on this host (workers = N)",
        "# TYPE garagekv_host_workers gauge",
        f'garagekv_host_workers{{host="{host}"}} {expected}',
        "# HELP garagekv_host_workers_up Workers of this host that answered this scrape",
        "# TYPE garagekv_host_workers_up gauge",
        f'garagekv_host_workers_up{{host="{host}"}} {up}',
        "# HELP garagekv_host_worker_up 1 if the worker answered this scrape; the labels name its node",
        "# TYPE garagekv_host_worker_up gauge",
    ]
    for index, node, text in sorted(texts):
        out.append(
            f'garagekv_host_worker_up{{host="{host}",host_worker="{index}",node_id="{node}"}} {int(text is not None)}'
        )
    for headers, samples in families.values():
        out += headers + samples
    return ("\n".join(out) + "\n").encode()


class _CountedAndTimed:
    """A request counter's and a duration histogram's children by label values, kept once made:
    ``labels()`` takes a lock and a lookup per call. The histogram takes the first ``timed``
    labels. The values in use are few (endpoints x statuses, endpoints x peers: bounded by the
    API and the cluster's size)."""

    __slots__ = ("counter", "histogram", "timed", "children")

    def __init__(self, counter: Counter, histogram: Histogram, timed: int) -> None:
        self.counter = counter
        self.histogram = histogram
        self.timed = timed
        self.children: dict[tuple[str, ...], tuple[Any, Any]] = {}

    def of(self, *labels: str) -> tuple[Any, Any]:
        pair = self.children.get(labels)
        if pair is None:
            pair = self.children[labels] = (self.counter.labels(*labels), self.histogram.labels(*labels[: self.timed]))
        return pair


class _ScrapeCollector(Collector):
    def __init__(self, metrics: NodeMetrics) -> None:
        self.m = metrics

    def describe(self) -> list[Metric]:
        return []  # computed at scrape time only; nothing to check at registration

    def collect(self) -> Iterable[Metric]:
        m = self.m
        if m.local_snapshot is not None:
            yield from _local_families(m.local_snapshot())
        cluster = m.cluster_health() if m.cluster_health is not None else None
        if cluster is not None:
            yield from _cluster_families(cluster)
        for source in m._sources:
            yield from source()


def _local_families(s: LocalSnapshot) -> Iterable[Metric]:
    yield GaugeMetricFamily(
        "garagekv_api_k2v_requests_in_flight", "K2V API requests being served", value=s.k2v_in_flight
    )
    yield GaugeMetricFamily(
        "garagekv_k2v_poll_subscriptions",
        "Open PollItem/PollRange/PollRanges waits on this node (one per storage-node poll)",
        value=s.poll_subscriptions,
    )
    yield CounterMetricFamily("garagekv_db_commits", "Group commits of the database writer", value=s.db_commits)
    yield CounterMetricFamily("garagekv_db_writes", "Write transactions committed", value=s.db_writes)
    for stat, (name, doc) in TABLE_GAUGES.items():
        g = GaugeMetricFamily(name, doc, labels=["table_name"])
        for table, stats in sorted(s.tables.items()):
            if stat in stats:
                g.add_metric([table], stats[stat])
        yield g


def _cluster_families(c: ClusterHealth) -> Iterable[Metric]:
    healthy = c.layout_version > 0 and not c.partitions_lacking_quorum and c.partitions_quorum >= c.partitions
    for name, doc, value in (
        ("garagekv_cluster_layout_version", "Current cluster layout version", c.layout_version),
        (
            "garagekv_cluster_healthy",
            "1 if every node and partition is fine (Garage: cluster_healthy)",
            int(healthy and c.storage_nodes_ok == c.storage_nodes),
        ),
        ("garagekv_cluster_available", "1 if every partition has its quorum (Garage: cluster_available)", int(healthy)),
        ("garagekv_cluster_known_nodes", "Nodes known to this node", c.known_nodes),
        ("garagekv_cluster_connected_nodes", "Nodes connected to this node", c.connected_nodes),
        ("garagekv_cluster_storage_nodes", "Storage nodes in the current layout", c.storage_nodes),
        ("garagekv_cluster_storage_nodes_ok", "Storage nodes up", c.storage_nodes_ok),
        ("garagekv_cluster_partitions", "Partitions", c.partitions),
        ("garagekv_cluster_partitions_quorum", "Partitions with their quorum", c.partitions_quorum),
        ("garagekv_cluster_partitions_all_ok", "Partitions with every replica up", c.partitions_all_ok),
    ):
        yield GaugeMetricFamily(name, doc, value=value)
    up = GaugeMetricFamily("garagekv_cluster_node_up", "1 if the node is up, as this node sees it", labels=["node_id"])
    for node_id, is_up in sorted(c.nodes_up.items()):
        up.add_metric([node_id], int(is_up))
    yield up
