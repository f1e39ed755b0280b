"""Health evaluation: local checks, then the cluster's layout and quorums (the cluster plane's seam)."""

from __future__ import annotations

from garagekv.admin.health import (
    DEGRADED,
    NO_LAYOUT,
    OK,
    UNAVAILABLE,
    ClusterHealth,
    evaluate,
    partition_ranges,
)

LOCAL_OK = {"running": "ok", "database": "ok", "k2vApi": "ok"}


def cluster(**kw) -> ClusterHealth:
    base = dict(
        layout_version=1,
        known_nodes=3,
        connected_nodes=3,
        storage_nodes=3,
        storage_nodes_ok=3,
        partitions=256,
        partitions_quorum=256,
        partitions_all_ok=256,
    )
    base.update(kw)
    return ClusterHealth(**base)


def test_single_node_without_cluster_plane_is_ok():
    r = evaluate(LOCAL_OK, None, "ab" * 32)
    assert r.status == OK and r.ready and r.http_status == 200
    body = r.probe_body()
    assert body["status"] == "ok" and body["node"] == "ab" * 32 and body["checks"] == LOCAL_OK
    assert "partitions" not in body
    detail = r.detail_body()
    assert detail["status"] == "healthy" and detail["health"] == "ok" and detail["partitions"] is None


def test_local_failures_make_the_node_unavailable():
    for checks in (
        {**LOCAL_OK, "database": "closed"},
        {**LOCAL_OK, "k2vApi": "not serving"},
        {**LOCAL_OK, "running": "shutting down"},
    ):
        r = evaluate(checks, cluster(), None)
        assert r.status == UNAVAILABLE and r.http_status == 503
        assert r.detail_body()["status"] == "unavailable"
    r = evaluate({**LOCAL_OK, "database": "closed"}, None)
    assert "database: closed" in r.message
    # A disabled component is not a failure.
    assert evaluate({**LOCAL_OK, "k2vApi": "disabled"}, None).status == OK


def test_no_layout():
    r = evaluate(
        LOCAL_OK,
        cluster(layout_version=0, storage_nodes=0, storage_nodes_ok=0, partitions_quorum=0, partitions_all_ok=0),
        None,
    )
    assert r.status == NO_LAYOUT and r.http_status == 503
    assert r.probe_body()["layoutVersion"] == 0
    assert r.detail_body()["status"] == "unavailable"


def test_degraded_lists_partitions_without_quorum():
    r = evaluate(
        LOCAL_OK,
        cluster(
            storage_nodes_ok=1, partitions_quorum=250, partitions_all_ok=0, partitions_lacking_quorum=[1, 2, 3, 4, 5, 6]
        ),
        None,
    )
    assert r.status == DEGRADED and r.http_status == 503
    assert r.probe_body()["partitionsLackingQuorum"] == "1-6"
    assert r.detail_body()["partitionsLackingQuorum"] == [1, 2, 3, 4, 5, 6]
    assert "Quorum is not available" in r.message


def test_a_node_down_with_quorum_everywhere_is_still_ok():
    r = evaluate(LOCAL_OK, cluster(connected_nodes=2, storage_nodes_ok=2, partitions_all_ok=0), None)
    assert r.status == OK and r.http_status == 200
    assert r.detail_body()["status"] == "degraded"  # Garage's word for "up, but a node is missing"
    assert r.detail_body()["storageNodesOk"] == 2
    assert "fully operational" not in r.message and "1 of 3 storage nodes" in r.message
    assert r.probe_body()["message"] == r.detail_body()["message"] == r.message


def test_partition_ranges_are_compact():
    assert partition_ranges([]) == ""
    assert partition_ranges([7, 0, 1, 2, 5, 8]) == "0-2,5,7-8"
    assert partition_ranges(list(range(256))) == "0-255"
