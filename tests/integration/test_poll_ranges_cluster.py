"""PollRanges against a 3-node cluster: ranges of partitions on every storage node, a write
coordinated by another node than the one holding the long poll wakes it."""

from __future__ import annotations

import json
import time

from tests.support import K2VHttp, wait_for
from tests.support.cluster import BUCKET, all_up, apply_layout, bucket_client, put, via
from tests.support.k2v import Background

PKS = [f"watched-{i}" for i in range(8)]


def poll(c: K2VHttp, ranges: list[dict], timeout: int = 20):
    body = json.dumps({"timeout": timeout, "ranges": ranges}).encode()
    return c.request("POST", f"/{BUCKET}", "poll_ranges", body, timeout=60)


def test_poll_ranges_across_nodes(make_cluster):
    nodes = make_cluster(3, rf=3)
    a, b, _ = nodes
    for n in nodes:
        wait_for(lambda n=n: all_up(n, 3))
    apply_layout(a, nodes, nodes)
    ca = bucket_client(a)
    cb = via(ca, b)
    wait_for(lambda: cb.request("GET", f"/{BUCKET}").status == 200)  # b knows the key and bucket
    for pk in PKS:
        put(ca, pk, "a", "1")

    r = poll(ca, [{"partitionKey": pk} for pk in PKS])
    assert r.status == 200, (r.status, r.body)
    first = r.json()["ranges"]
    assert [[i["sk"] for i in rng["items"]] for rng in first] == [["a"]] * len(PKS)

    ranges = [{"partitionKey": pk, "seenMarker": rng["seenMarker"]} for pk, rng in zip(PKS, first, strict=True)]
    bg = Background(lambda: poll(ca, ranges))
    time.sleep(0.5)
    assert not bg.done(), "the poll returned before any change"
    put(cb, PKS[5], "b", "2")
    r = bg.result()
    assert r.status == 200, (r.status, r.body)
    got = r.json()["ranges"]
    assert [rng["partitionKey"] for rng in got] == PKS
    assert [[i["sk"] for i in rng["items"]] for rng in got] == [[] if i != 5 else ["b"] for i in range(len(PKS))]

    # Every marker of that answer sent back: nothing new, 304.
    again = [{"partitionKey": pk, "seenMarker": rng["seenMarker"]} for pk, rng in zip(PKS, got, strict=True)]
    assert poll(ca, again, timeout=1).status == 304


def subscriptions(n) -> int:
    return n.admin("node.info")["poll_subscriptions"]


def test_a_write_in_any_range_of_a_64_range_call_wakes_it_through_every_node(make_cluster):
    """One call of 64 ranges holds exactly one long poll on each storage node; a write in any one
    range, coordinated by any node, wakes it through whichever node holds the call, with only that
    range changed and markers that need nothing more."""
    nodes = make_cluster(3, rf=3)
    for n in nodes:
        wait_for(lambda n=n: all_up(n, 3))
    apply_layout(nodes[0], nodes, nodes)
    c0 = bucket_client(nodes[0])
    clients = [c0] + [via(c0, n) for n in nodes[1:]]
    for c in clients[1:]:
        wait_for(lambda c=c: c.request("GET", f"/{BUCKET}").status == 200)
    pks = [f"range-{i:02}" for i in range(64)]
    r = poll(c0, [{"partitionKey": pk} for pk in pks])
    assert r.status == 200, (r.status, r.body)
    markers = [rng["seenMarker"] for rng in r.json()["ranges"]]
    base = [subscriptions(n) for n in nodes]

    for i, pk in enumerate(pks):
        holder, writer = clients[i % 3], clients[(i + 1) % 3]
        ranges = [{"partitionKey": p, "seenMarker": m} for p, m in zip(pks, markers, strict=True)]
        bg = Background(lambda holder=holder, ranges=ranges: poll(holder, ranges, timeout=60))
        # Every node holds exactly one poll for the call before the write lands.
        for n, b in zip(nodes, base, strict=True):
            wait_for(lambda n=n, b=b: subscriptions(n) == b + 1)
        assert not bg.done(), "the poll returned before any change"
        put(writer, pk, f"k{i}", str(i))
        r = bg.result()
        assert r.status == 200, (i, r.status, r.body)
        got = r.json()["ranges"]
        assert [rng["partitionKey"] for rng in got] == pks
        assert [[it["sk"] for it in rng["items"]] for rng in got] == [[f"k{i}"] if j == i else [] for j in range(64)]
        markers = [rng["seenMarker"] for rng in got]
    for n, b in zip(nodes, base, strict=True):
        wait_for(lambda n=n, b=b: subscriptions(n) == b)
    ranges = [{"partitionKey": p, "seenMarker": m} for p, m in zip(pks, markers, strict=True)]
    assert poll(clients[2], ranges, timeout=1).status == 304
