"""Conditional-write outcomes and consensus counters on /metrics of a 3-node cluster, 503 included:
a write without a majority of its partition's storage nodes is counted as ``unavailable``."""

from __future__ import annotations

from tests.support import wait_for
from tests.support.cluster import BUCKET, all_up, apply_layout, bucket_client, via
from tests.support.metrics import scrape, value


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


def test_uncontended_keys_run_where_they_arrive_and_contended_ones_meet_at_one_coordinator(make_cluster):
    """docs/consensus.md §9: a storage node runs the rounds of a key nobody else proposes on
    (no hop); once another node's round took its ballot, it hands the key to the coordinator."""
    nodes = make_cluster(3, rf=3, admin_token="cond-route-admin")
    for n in nodes:
        wait_for(lambda n=n: all_up(n, 3))
    apply_layout(nodes[0], nodes, nodes)
    c = bucket_client(nodes[0])
    clients = [via(c, n) for n in nodes]

    def rounds() -> list[float]:
        return [value(scrape(n), "garagekv_consensus_rounds_total") for n in nodes]

    def put(i: int, pk: str, sk: str, headers: dict[str, str]) -> None:
        r = clients[i].request("PUT", f"/{BUCKET}/{pk}", f"sort_key={sk}", b"v", headers=headers)
        assert r.status == 204, (r.status, r.body)

    before = rounds()
    for i in range(3):
        for j in range(3):
            put(i, f"own-{i}", f"k{j}", {"If-None-Match": "*"})
    assert [a - b for a, b in zip(rounds(), before, strict=True)] == [3, 3, 3]

    # Nodes 0 and 1 take the key's ballot from each other once: both hand it over from then on.
    for i, j in ((0, 0), (1, 1), (0, 2), (1, 3)):
        put(i, "shared", f"w{j}", {"If-None-Match": "*"})
    assert sum(value(scrape(n), "garagekv_consensus_contention_total") for n in nodes[:2]) >= 2
    before = rounds()
    for j in range(6):
        put(j % 2, "shared", f"x{j}", {"If-None-Match": "*"})
    deltas = sorted(a - b for a, b in zip(rounds(), before, strict=True))
    assert deltas == [0, 0, 6], deltas
