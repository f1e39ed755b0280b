"""Conditional-write outcomes and consensus counters on /metrics of a 3-node cluster, 503 included:
a write without a majority of its partition's storage nodes is counted as ``unavailable``."""

from __future__ import annotations

from tests.integration.test_admin_metrics import scrape, value
from tests.integration.test_anti_entropy import BUCKET, all_up, apply_layout, bucket_client
from tests.support import wait_for


def test_applied_412_and_503_are_counted(make_cluster):
    nodes = make_cluster(3, rf=3, admin_token="cond-metrics-admin")
    a = nodes[0]
    for n in nodes:
        wait_for(lambda n=n: all_up(n, 3))
    apply_layout(a, nodes, nodes)
    c = bucket_client(a)
    path = f"/{BUCKET}/pk"
    before = [scrape(n) for n in nodes]
    assert c.request("PUT", path, "sort_key=k", b"v1", headers={"If-None-Match": "*"}).status == 204
    assert c.request("PUT", path, "sort_key=k", b"v2", headers={"If-None-Match": "*"}).status == 412
    # The rounds ran on the partition's coordinator, whichever node that is.
    decided = [scrape(n) for n in nodes]
    rounds = sum(
        value(d, "garagekv_consensus_rounds_total") - value(b, "garagekv_consensus_rounds_total")
        for b, d in zip(before, decided, strict=True)
    )
    assert rounds == 2
    # The 204's commit renewed the coordinator's ballot: the 412 needed no Prepare.
    held = sum(
        value(d, "garagekv_consensus_held_total") - value(b, "garagekv_consensus_held_total")
        for b, d in zip(before, decided, strict=True)
    )
    assert held == 1
    assert any(value(d, "garagekv_table_size", table_name="consensus") >= 1 for d in decided)
    nodes[1].kill()
    nodes[2].kill()
    r = c.request("PUT", path, "sort_key=k", b"v3", headers={"If-Match": "*"})
    assert r.status == 503, r.body
    after = scrape(a)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before[0], name, **labels)

    assert delta("garagekv_k2v_conditional_writes_total", outcome="applied") == 1
    assert delta("garagekv_k2v_conditional_writes_total", outcome="precondition_failed") == 1
    assert delta("garagekv_k2v_conditional_writes_total", outcome="unavailable") == 1
    assert delta("garagekv_api_k2v_requests_total", api_endpoint="InsertItem", status_code="503") == 1
