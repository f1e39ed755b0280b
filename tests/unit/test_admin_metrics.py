"""The node's metrics registry: Prometheus text, hooks for the K2V API, database, RPC and cluster."""

from __future__ import annotations

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from garagekv.admin.health import ClusterHealth
from garagekv.admin.metrics import LocalSnapshot, NodeMetrics


def samples(m: NodeMetrics) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def get(s, name, **labels):
    return s.get((name, tuple(sorted(labels.items()))))


def test_k2v_and_admin_requests():
    m = NodeMetrics(node_id="ab", version="1.2.3")
    m.observe_k2v("InsertItem", 204, None, 0.002)
    m.observe_k2v("InsertItem", 204, None, 0.004)
    m.observe_k2v("ReadItem", 404, "NoSuchKey", 0.001)
    m.observe_k2v(None, 400, "InvalidRequest", 0.0)
    m.observe_admin("ListKeys", 200, 0.01)
    s = samples(m)
    assert get(s, "garagekv_build_info", version="1.2.3", node_id="ab") == 1
    assert get(s, "garagekv_api_k2v_requests_total", api_endpoint="InsertItem", status_code="204") == 2
    assert get(s, "garagekv_api_k2v_errors_total", api_endpoint="ReadItem", error_code="NoSuchKey") == 1
    assert get(s, "garagekv_api_k2v_errors_total", api_endpoint="Unknown", error_code="InvalidRequest") == 1
    assert get(s, "garagekv_api_k2v_request_duration_seconds_count", api_endpoint="InsertItem") == 2
    assert abs(get(s, "garagekv_api_k2v_request_duration_seconds_sum", api_endpoint="InsertItem") - 0.006) < 1e-9
    assert get(s, "garagekv_api_k2v_request_duration_seconds_bucket", api_endpoint="InsertItem", le="0.0025") == 1
    assert get(s, "garagekv_api_admin_requests_total", api_endpoint="ListKeys", status_code="200") == 1


def test_each_node_has_its_own_registry():
    a, b = NodeMetrics(node_id="a"), NodeMetrics(node_id="b")  # no "duplicated timeseries" error
    a.observe_k2v("ReadItem", 200, None, 0.1)
    assert get(samples(a), "garagekv_api_k2v_requests_total", api_endpoint="ReadItem", status_code="200") == 1
    assert get(samples(b), "garagekv_api_k2v_requests_total", api_endpoint="ReadItem", status_code="200") is None
    assert (
        REGISTRY.get_sample_value("garagekv_api_k2v_requests_total", {"api_endpoint": "ReadItem", "status_code": "200"})
        is None
    )


def test_database_and_local_snapshot():
    m = NodeMetrics()
    m.observe_db_commit(3, 0.001)
    m.observe_db_commit(40, 0.002)
    m.local_snapshot = lambda: LocalSnapshot(
        k2v_in_flight=2,
        poll_subscriptions=5,
        db_commits=7,
        db_writes=43,
        tables={"k2v_item": {"items": 10, "merkleTodo": 1}, "key": {"items": 2}},
    )
    s = samples(m)
    assert get(s, "garagekv_db_commit_batch_size_count") == 2
    assert get(s, "garagekv_db_commit_batch_size_bucket", le="4.0") == 1
    assert get(s, "garagekv_db_commit_batch_size_bucket", le="64.0") == 2
    assert get(s, "garagekv_db_commits_total") == 7 and get(s, "garagekv_db_writes_total") == 43
    assert get(s, "garagekv_api_k2v_requests_in_flight") == 2
    assert get(s, "garagekv_k2v_poll_subscriptions") == 5
    assert get(s, "garagekv_table_size", table_name="k2v_item") == 10
    assert get(s, "garagekv_table_size", table_name="key") == 2
    assert get(s, "garagekv_table_merkle_updater_todo_queue_length", table_name="k2v_item") == 1
    assert get(s, "garagekv_table_merkle_updater_todo_queue_length", table_name="key") is None


def test_rpc_and_quorum_hooks():
    m = NodeMetrics()
    m.observe_rpc("k2v/item", "aabbccdd", 0.003)
    m.observe_rpc("k2v/item", "aabbccdd", 0.2, outcome="remote")
    m.observe_rpc("k2v/item", "aabbccdd", 10.0, outcome="timeout")
    m.quorum_failure("insert")
    s = samples(m)
    assert get(s, "garagekv_rpc_requests_total", rpc_endpoint="k2v/item", peer="aabbccdd") == 3
    assert get(s, "garagekv_rpc_errors_total", rpc_endpoint="k2v/item", peer="aabbccdd", kind="remote") == 1
    assert get(s, "garagekv_rpc_timeouts_total", rpc_endpoint="k2v/item", peer="aabbccdd") == 1
    assert get(s, "garagekv_rpc_duration_seconds_count", rpc_endpoint="k2v/item", peer="aabbccdd") == 2
    assert get(s, "garagekv_quorum_failures_total", operation="insert") == 1


def test_cluster_gauges_and_extra_sources():
    m = NodeMetrics()
    assert not any(name.startswith("garagekv_cluster_") for name, _ in samples(m))
    m.cluster_health = lambda: None  # the node's source before the cluster plane is ready
    assert not any(name.startswith("garagekv_cluster_") for name, _ in samples(m))
    m.cluster_health = lambda: ClusterHealth(
        layout_version=4,
        known_nodes=3,
        connected_nodes=2,
        storage_nodes=3,
        storage_nodes_ok=2,
        partitions=256,
        partitions_quorum=256,
        partitions_all_ok=0,
        nodes_up={"aa": True, "bb": False},
    )
    m.add_source(lambda: [GaugeMetricFamily("garagekv_test_extra", "extra", value=9)])
    s = samples(m)
    assert get(s, "garagekv_cluster_layout_version") == 4
    assert get(s, "garagekv_cluster_available") == 1 and get(s, "garagekv_cluster_healthy") == 0
    assert get(s, "garagekv_cluster_node_up", node_id="bb") == 0
    assert get(s, "garagekv_cluster_storage_nodes_ok") == 2
    assert get(s, "garagekv_test_extra") == 9
