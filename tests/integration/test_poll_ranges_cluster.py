"""PollRanges against a 3-node cluster: ranges of partitions on every storage node, a write
coordinated by another node than the one holding the long poll wakes it."""

from __future__ import annotations

import json
import time

from tests.integration.test_anti_entropy import BUCKET, all_up, apply_layout, bucket_client, put, via
from tests.support import K2VHttp, wait_for
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
