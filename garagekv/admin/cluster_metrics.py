"""Metrics of the cluster plane read at scrape time: peers, anti-entropy sync, GC, workers.

``NodeMetrics`` counts RPCs and quorum failures as they happen (the node connects its hooks);
what is a state rather than an event is read here when Prometheus scrapes, from the peering
table of ``System`` and the workers of ``Model``, so the lower layers know nothing of metrics.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from garagekv.net.identity import short_id

if TYPE_CHECKING:
    from garagekv.model.model import Model
    from garagekv.rpc.system import System


def peer_families(system: System) -> Iterable[Metric]:
    """Per peer (16-hex id prefix, as the ``peer`` label of the RPC families): RTT, pings, up."""
    rtt = GaugeMetricFamily(
        "garagekv_rpc_peer_rtt_seconds",
        "Smoothed ping round-trip time to the peer (Garage: rpc_netapp ping)",
        labels=["peer"],
    )
    failed = GaugeMetricFamily(
        "garagekv_rpc_peer_failed_pings", "Pings to the peer that failed in a row", labels=["peer"]
    )
    up = GaugeMetricFamily("garagekv_rpc_peer_up", "1 if the peer is connected and answers its pings", labels=["peer"])
    seen = GaugeMetricFamily(
        "garagekv_rpc_peer_last_seen_timestamp_seconds", "When the peer last answered (Unix time)", labels=["peer"]
    )
    for node_id, info in sorted(system.peers.items()):
        label = [short_id(node_id)]
        if info.rtt_ms is not None:
            rtt.add_metric(label, info.rtt_ms / 1000)
        failed.add_metric(label, info.failed_pings)
        up.add_metric(label, int(system.is_up(node_id)))
        if info.last_seen:
            seen.add_metric(label, info.last_seen)
    yield from (rtt, failed, up, seen)
    refused = CounterMetricFamily(
        "garagekv_rpc_handshakes_refused",
        "Incoming connections closed unauthenticated because too many were in the handshake "
        "(in all, or from their source address)",
    )
    refused.add_metric([], system.netapp.refused_handshakes)
    pending = GaugeMetricFamily("garagekv_rpc_handshakes_pending", "Incoming connections in the handshake now")
    pending.add_metric([], system.netapp.pending_handshakes())
    yield from (refused, pending)


def consensus_families(model: Model) -> Iterable[Metric]:
    """The consensus layer's counters (docs/consensus.md §12), one family per counter, and how
    the conditional writes this node answered ended (204, 412 or 503)."""
    for name, value in model.consensus_metrics.snapshot().items():
        yield CounterMetricFamily(f"garagekv_consensus_{name}", f"Consensus: {name} (docs/consensus.md)", value=value)
    writes = CounterMetricFamily(
        "garagekv_k2v_conditional_writes",
        "Conditional writes answered by this node, by outcome: applied (204), precondition_failed (412), "
        "unavailable (503)",
        labels=["outcome"],
    )
    for outcome, n in model.k2v.conditional_outcomes.snapshot().items():
        writes.add_metric([outcome], n)
    yield writes
    txns = CounterMetricFamily(
        "garagekv_k2v_transactions",
        "Partition transactions answered by this node, by outcome: succeeded (success branch), failed "
        "(failure branch), unavailable (503)",
        labels=["outcome"],
    )
    for outcome, n in model.k2v.transaction_outcomes.snapshot().items():
        txns.add_metric([outcome], n)
    yield txns


def worker_families(model: Model) -> Iterable[Metric]:
    """Anti-entropy sync and GC progress per table, and background worker errors."""
    sent = CounterMetricFamily(
        "garagekv_table_sync_items_sent", "Entries sent by anti-entropy sync", labels=["table_name"]
    )
    full = CounterMetricFamily("garagekv_table_sync_full_syncs", "Full syncs completed", labels=["table_name"])
    done = GaugeMetricFamily(
        "garagekv_table_sync_partitions_done",
        "Partitions done in the full sync in progress (0 when none)",
        labels=["table_name"],
    )
    total = GaugeMetricFamily(
        "garagekv_table_sync_partitions", "Partitions of the full sync in progress (0 when none)", labels=["table_name"]
    )
    queue = GaugeMetricFamily(
        "garagekv_table_sync_queue_length", "Partitions left in the full sync in progress", labels=["table_name"]
    )
    synced = GaugeMetricFamily(
        "garagekv_table_sync_layout_version",
        "Layout version of the table's last completed full sync (0: none yet)",
        labels=["table_name"],
    )
    unsyncable = GaugeMetricFamily(
        "garagekv_table_sync_unsyncable_entries",
        "Entries found too big for an RPC message at their partition's last sync (not synced; see worker list)",
        labels=["table_name"],
    )
    unsyncable_parts = GaugeMetricFamily(
        "garagekv_table_sync_unsyncable_partitions",
        "Partitions holding entries too big to sync (0 when every entry can be synced)",
        labels=["table_name"],
    )
    last = GaugeMetricFamily(
        "garagekv_table_sync_last_full_sync_timestamp_seconds",
        "When the table's last full sync completed (Unix time)",
        labels=["table_name"],
    )
    for syncer in model.syncers:
        label = [syncer.table_name]
        p = syncer.progress()
        sent.add_metric(label, syncer.items_sent)
        full.add_metric(label, p["full_syncs"])
        done.add_metric(label, p["done"])
        total.add_metric(label, p["total"])
        queue.add_metric(label, p["queue"])
        synced.add_metric(label, model.sync_coordinator.synced.get(syncer.table_name, 0))
        unsyncable.add_metric(label, syncer.unsyncable_entries())
        unsyncable_parts.add_metric(label, len(syncer.unsyncable))
        if syncer.last_full_sync_at is not None:
            last.add_metric(label, syncer.last_full_sync_at)
    yield from (sent, full, done, total, queue, synced, unsyncable, unsyncable_parts, last)

    deleted = CounterMetricFamily(
        "garagekv_table_gc_deleted", "Tombstones deleted by this node's GC", labels=["table_name"]
    )
    for gc in model.gcs:
        deleted.add_metric([gc.table.schema.name], gc.collected)
    yield deleted

    errors = CounterMetricFamily(
        "garagekv_background_worker_errors", "Errors of a background worker", labels=["worker"]
    )
    throttled = GaugeMetricFamily(
        "garagekv_background_worker_throttled", "1 while a worker backs off after an error", labels=["worker"]
    )
    for info in model.background.workers:
        label = [info.worker.name]
        errors.add_metric(label, info.errors)
        throttled.add_metric(label, int(info.state == "throttled"))
    yield from (errors, throttled)
