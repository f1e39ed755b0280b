"""The operations surface on real clusters: layout through the admin API and the CLI (one
implementation, seen from both), RPC and quorum metrics that move, request ids across nodes."""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families

from tests.support import NodeProcess, free_port, wait_for
from tests.support.faults import apply_layout, k2v_client, make_bucket, up_ids

TOKEN = "cluster-ops-admin-token"
GB = 1 << 30


def cli_json(node: NodeProcess, *args: str) -> dict:
    return json.loads(node.cli(*args, "--json").stdout)


def all_up(nodes: list[NodeProcess]) -> None:
    ids = {n.node_id for n in nodes}
    for n in nodes:
        wait_for(lambda n=n: up_ids(n) >= ids, timeout=30)


def scrape(node: NodeProcess) -> dict[tuple[str, tuple], float]:
    r = node.admin_http("GET", "/metrics")
    assert r.status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.body.decode())
        for s in family.samples
    }


def total(samples: dict, name: str, **match: str) -> float:
    return sum(
        v
        for (n, labels), v in samples.items()
        if n == name and all(dict(labels).get(k) == want for k, want in match.items())
    )


def test_layout_through_the_admin_api_and_the_cli(make_cluster):
    nodes = make_cluster(3, admin_token=TOKEN)
    a, b, c = nodes
    all_up(nodes)

    # Staged through the API (full ids and a prefix) -> seen by the CLI.
    changes = [
        {"id": a.node_id, "zone": "z0", "capacity": GB, "tags": ["api"]},
        {"id": b.node_id[:12], "zone": "z1", "capacity": GB, "tags": []},
    ]
    r = a.admin_http("POST", "/v1/layout", body=changes)
    assert r.status == 200, r.body
    assert {ch["id"] for ch in r.json()["stagedRoleChanges"]} == {a.node_id, b.node_id}
    shown = cli_json(a, "layout", "show")
    assert shown["stagedRoleChanges"] and shown["version"] == 0
    assert "error" in shown["next"]  # two of three nodes staged: rf 3 cannot be placed yet
    assert {ch["id"] for ch in shown["stagedRoleChanges"]} == {a.node_id, b.node_id}
    staged = {n["id"]: n["stagedRole"] for n in cli_json(a, "status")["nodes"]}
    assert staged[a.node_id] == {"zone": "z0", "capacity": GB, "tags": ["api"]}

    # Staged through the CLI -> seen by the API; applied through the API -> seen by every CLI.
    a.cli("layout", "assign", c.node_id[:10], "-z", "z2", "-c", "1G")
    layout = a.admin_http("GET", "/v1/layout").json()
    assert layout["version"] == 0 and len(layout["stagedRoleChanges"]) == 3
    assert next(ch for ch in layout["stagedRoleChanges"] if ch["id"] == c.node_id)["zone"] == "z2"
    r = a.admin_http("POST", "/v1/layout/apply", body={"version": 1})
    assert r.status == 200, r.body
    assert r.json()["layout"]["version"] == 1 and r.json()["message"]
    for n in nodes:
        wait_for(lambda n=n: cli_json(n, "status")["layoutVersion"] == 1, timeout=20)
    roles = {x["id"]: x["role"] for x in cli_json(c, "status")["nodes"]}
    assert roles[a.node_id]["tags"] == ["api"] and roles[b.node_id]["zone"] == "z1"

    # A change staged by the CLI, reverted through the API; another applied by the CLI, read by the API.
    a.cli("layout", "assign", b.node_id[:10], "-t", "reverted")
    assert a.admin_http("GET", "/v1/layout").json()["stagedRoleChanges"][0]["tags"] == ["reverted"]
    r = a.admin_http("POST", "/v1/layout/revert", body={"version": 2})
    assert r.status == 200 and r.json()["stagedRoleChanges"] == []
    assert not cli_json(a, "layout", "show")["stagedRoleChanges"]
    a.cli("layout", "assign", b.node_id[:10], "-t", "cli")
    a.cli("layout", "apply", "--version", "2")
    layout = wait_for(lambda: (x := b.admin_http("GET", "/v1/layout").json())["version"] == 2 and x)
    assert next(x for x in layout["roles"] if x["id"] == b.node_id)["tags"] == ["cli"]
    assert a.admin_http("GET", "/v1/status").json()["layoutVersion"] == 2

    # Connect: one result per peer.
    r = c.admin_http("POST", "/v1/connect", body=[a.peer_spec, f"{'ab' * 32}@127.0.0.1:{free_port()}"])
    assert r.status == 200
    assert [x["success"] for x in r.json()] == [True, False] and r.json()[1]["error"]


def test_rpc_and_quorum_metrics_move(make_cluster):
    nodes = make_cluster(3, admin_token=TOKEN)
    a = nodes[0]
    all_up(nodes)
    apply_layout(nodes, nodes)
    creds = make_bucket(a, "metrics-bucket")
    k2v = k2v_client(a, creds)
    peers = {n.node_id[:16] for n in nodes[1:]}
    # Per-peer RTT and liveness, from the pings.
    s = wait_for(
        lambda: (x := scrape(a)) and all(("garagekv_rpc_peer_rtt_seconds", (("peer", p),)) in x for p in peers) and x
    )
    assert all(s[("garagekv_rpc_peer_up", (("peer", p),))] == 1 for p in peers)
    assert s[("garagekv_cluster_layout_version", ())] == 1
    item = (("table_name", "k2v_item"),)
    for name in (
        "garagekv_table_sync_full_syncs_total",
        "garagekv_table_sync_layout_version",
        "garagekv_table_gc_deleted_total",
        "garagekv_table_merkle_updater_todo_queue_length",
    ):
        assert (name, item) in s, name
    assert ("garagekv_table_insert_queue_length", (("table_name", "k2v_index_counter"),)) in s
    assert ("garagekv_background_worker_errors_total", (("worker", "k2v_item sync"),)) in s

    before = scrape(a)
    for i in range(3):
        assert k2v.request("PUT", "/metrics-bucket/pk", f"sort_key=s{i}", b"v").status == 204
    assert k2v.request("GET", "/metrics-bucket/pk", "sort_key=s0").status == 200
    after = scrape(a)

    def moved(name: str, **match: str) -> float:
        return total(after, name, **match) - total(before, name, **match)

    assert moved("garagekv_rpc_requests_total") >= 6  # each write reaches the two other replicas
    for p in peers:
        assert moved("garagekv_rpc_requests_total", rpc_endpoint="garagekv/table/rpc:k2v_item", peer=p) >= 1
        assert moved("garagekv_rpc_duration_seconds_count", peer=p) >= 1
    assert total(after, "garagekv_quorum_failures_total") == 0

    # Two of three nodes down: writes fail their quorum (503), and it shows.
    nodes[1].kill()
    nodes[2].kill()
    r = k2v.request("PUT", "/metrics-bucket/pk", "sort_key=lost", b"v", timeout=30)
    assert r.status == 503, r.body
    s = scrape(a)
    assert total(s, "garagekv_quorum_failures_total") >= 1
    assert total(s, "garagekv_quorum_failures_total", operation="write") >= 1
    assert total(s, "garagekv_rpc_errors_total", kind="network") >= 1
    down = wait_for(
        lambda: (x := scrape(a)) and all(x.get(("garagekv_rpc_peer_up", (("peer", p),))) == 0 for p in peers) and x
    )
    assert down[("garagekv_cluster_available", ())] == 0


def test_request_id_follows_a_write_to_the_other_node(make_cluster):
    a, b = make_cluster(2, extra='log_format = "json"\nlog_level = "debug"\n')
    all_up([a, b])
    apply_layout([a, b], [a, b])
    creds = make_bucket(a, "rid-bucket")
    r = k2v_client(a, creds).request(
        "PUT", "/rid-bucket/pk", "sort_key=k", b"v", headers={"X-Request-Id": "test-req-123"}
    )
    assert r.status == 204 and r.header("X-Request-Id") == "test-req-123"

    def lines_on_b() -> list[dict]:
        out = []
        for line in (b.root / "node.log").read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("request_id") == "test-req-123":
                out.append(rec)
        return out

    # The coordinator (a) replicates the item to b: b's handler logs it under the client's id.
    found = wait_for(lines_on_b, timeout=10)
    assert any(x["logger"] == "garagekv.table.table" and x.get("table") == "k2v_item" for x in found), found
    assert all(x["level"] == "debug" for x in found)
