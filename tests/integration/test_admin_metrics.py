"""/metrics on a real node: Prometheus text that a standard parser reads, counters that move."""

from __future__ import annotations

import json

import pytest

from tests.support import NodeProcess, free_port
from tests.support.faults import k2v_client, make_bucket
from tests.support.metrics import scrape, value


@pytest.fixture(scope="module")
def mnode(tmp_path_factory):
    n = NodeProcess(tmp_path_factory.mktemp("metrics"), admin_port=free_port(), admin_token="metrics-test-admin")
    n.start()
    n.k2v = k2v_client(n, make_bucket(n, "metrics-bucket"))
    yield n
    n.stop()


def test_metrics_parse_and_describe_the_node(mnode):
    s = scrape(mnode)
    node_id = mnode.admin("node.info")["id"]
    info = [(dict(labels), v) for (name, labels), v in s.items() if name == "garagekv_build_info"]
    assert len(info) == 1 and info[0][0]["node_id"] == node_id and info[0][0]["version"] and info[0][1] == 1
    assert value(s, "garagekv_replication_factor") == 1
    for table in ("key", "bucket", "bucket_alias", "k2v_item", "k2v_index_counter"):
        assert ("garagekv_table_size", (("table_name", table),)) in s
    assert value(s, "garagekv_table_size", table_name="key") >= 1
    assert ("garagekv_api_k2v_requests_in_flight", ()) in s
    assert ("garagekv_k2v_poll_subscriptions", ()) in s


def test_counters_move_with_k2v_requests(mnode):
    before = scrape(mnode)
    r = mnode.k2v.request("PUT", "/metrics-bucket/pk", "sort_key=a", b"hello")
    assert r.status == 204
    assert r.header("X-Request-Id")
    assert mnode.k2v.request("GET", "/metrics-bucket/pk", "sort_key=a").status == 200
    assert mnode.k2v.request("GET", "/metrics-bucket/pk", "sort_key=missing").status == 404
    assert mnode.k2v.request("GET", "/no-such-bucket/pk", "sort_key=a").status == 404
    after = scrape(mnode)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("garagekv_api_k2v_requests_total", api_endpoint="InsertItem", status_code="204") == 1
    assert delta("garagekv_api_k2v_requests_total", api_endpoint="ReadItem", status_code="200") == 1
    assert delta("garagekv_api_k2v_requests_total", api_endpoint="ReadItem", status_code="404") == 2
    assert delta("garagekv_api_k2v_errors_total", api_endpoint="ReadItem", error_code="NoSuchKey") == 1
    assert delta("garagekv_api_k2v_errors_total", api_endpoint="ReadItem", error_code="NoSuchBucket") == 1
    assert delta("garagekv_api_k2v_request_duration_seconds_count", api_endpoint="InsertItem") == 1
    assert delta("garagekv_db_writes_total") >= 1 and delta("garagekv_db_commits_total") >= 1
    assert delta("garagekv_db_commit_batch_size_count") >= 1
    assert value(after, "garagekv_table_size", table_name="k2v_item") >= 1
    # The scrape itself is counted on the admin side.
    assert delta("garagekv_api_admin_requests_total", api_endpoint="Metrics", status_code="200") == 1


def test_request_id_is_echoed_when_well_formed(mnode):
    r = mnode.k2v.request("GET", "/metrics-bucket/pk", "sort_key=a", headers={"X-Request-Id": "trace-abc.123"})
    assert r.header("X-Request-Id") == "trace-abc.123"
    r = mnode.k2v.request("GET", "/metrics-bucket/pk", "sort_key=a", headers={"X-Request-Id": "bad id\twith junk"})
    assert r.header("X-Request-Id") not in (None, "bad id\twith junk")


def test_conditional_write_outcomes_and_the_consensus_tree(mnode):
    """A conditional write that applies and one whose condition fails (412) are counted by
    outcome, the consensus rounds behind them too, and the consensus tree appears as a table
    with its entries and size (docs/admin-api.md) and in ``garagekv stats``."""
    before = scrape(mnode)
    path = "/metrics-bucket/cond"
    r = mnode.k2v.request("PUT", path, "sort_key=k", b"v1", headers={"If-None-Match": "*"})
    assert r.status == 204, r.body
    r = mnode.k2v.request("PUT", path, "sort_key=k", b"v2", headers={"If-None-Match": "*"})
    assert r.status == 412, r.body
    for exists in (True, False, False):  # one transaction whose compare holds, two whose does not
        body = json.dumps({"compare": [{"sk": "k", "target": "exists", "exists": exists}]}).encode()
        r = mnode.k2v.request("POST", path, "txn", body)
        assert r.status == 200, r.body
    after = scrape(mnode)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("garagekv_k2v_conditional_writes_total", outcome="applied") == 1
    assert delta("garagekv_k2v_conditional_writes_total", outcome="precondition_failed") == 1
    assert delta("garagekv_k2v_conditional_writes_total", outcome="unavailable") == 0
    assert delta("garagekv_k2v_transactions_total", outcome="succeeded") == 1
    assert delta("garagekv_k2v_transactions_total", outcome="failed") == 2
    assert delta("garagekv_k2v_transactions_total", outcome="unavailable") == 0
    assert delta("garagekv_consensus_rounds_total") == 5
    assert delta("garagekv_consensus_decided_total") == 5
    assert delta("garagekv_api_k2v_requests_total", api_endpoint="InsertItem", status_code="412") == 1
    assert value(after, "garagekv_table_size", table_name="consensus") >= 1
    assert value(after, "garagekv_table_bytes", table_name="consensus") > 0
    assert value(after, "garagekv_table_bytes", table_name="k2v_item") > 0

    st = json.loads(mnode.cli("stats", "--json").stdout)
    rows = {t["table"]: t for t in st["tables"]}
    assert rows["consensus"]["items"] >= 1 and rows["consensus"]["bytes"] > 0
    assert rows["k2v_item"]["bytes"] > 0
    text = mnode.cli("stats").stdout
    header = next(ln for ln in text.splitlines() if ln.startswith("Table "))
    assert header.split()[:3] == ["Table", "Items", "Size"]
    line = next(ln for ln in text.splitlines() if ln.startswith("consensus "))
    assert int(line.split()[1]) == rows["consensus"]["items"]
