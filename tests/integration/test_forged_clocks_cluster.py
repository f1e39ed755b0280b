"""Forged causality tokens against a 3-node cluster: no node is poisoned, no later write hidden.

The token names another node than the one coordinating the write, which is what one node alone
cannot show: the coordinator cannot know the named node's clock.
"""

from __future__ import annotations

import json
import time

from garagekv.model.k2v.causality import CLOCK_HORIZON_MS, MAX_CLOCK_AHEAD_MS
from tests.support import K2VHttp, wait_for
from tests.support.cluster import BUCKET, all_up, apply_layout, bucket_client, same_everywhere, via
from tests.support.k2v import decode_token, encode_token

TOKEN = "X-Garage-Causality-Token"
PK = "forged"


def put(c: K2VHttp, sk: str, value: bytes, token: str | None = None) -> int:
    r = c.request("PUT", f"/{BUCKET}/{PK}", f"sort_key={sk}", value, headers={TOKEN: token} if token else None)
    return r.status


def token(c: K2VHttp, sk: str) -> str:
    r = c.request("GET", f"/{BUCKET}/{PK}", f"sort_key={sk}", headers={"Accept": "application/json"})
    assert r.status == 200, (r.status, r.body)
    return r.header(TOKEN)


def poll(c: K2VHttp, marker: str | None, timeout: int = 3) -> tuple[int, dict]:
    body = {"timeout": timeout} if marker is None else {"seenMarker": marker, "timeout": timeout}
    r = c.request("POST", f"/{BUCKET}/{PK}", "poll_range", json.dumps(body).encode(), timeout=30)
    return r.status, (json.loads(r.body) if r.status == 200 else {})


def test_forged_tokens_naming_another_node(make_cluster):
    nodes = make_cluster(3, rf=3)
    a, b, _ = nodes
    for n in nodes:
        wait_for(lambda n=n: all_up(n, 3))
    apply_layout(a, nodes, nodes)
    ca = bucket_client(a)
    cb = via(ca, b)
    wait_for(lambda: put(cb, "probe", b"p") == 204)  # b knows the key and bucket
    (pair,) = decode_token(token(cb, "probe"))[1]  # b coordinated: its id is the only pair
    b_id = pair[0]
    now = int(time.time() * 1000)

    # 1. A time near 2^64 for b is refused, wherever it is sent; b keeps coordinating.
    for c in (ca, cb):
        assert put(c, "x", b"x", encode_token([(b_id, 2**64 - 2)])) == 400
    assert put(cb, "probe", b"p2", token(cb, "probe")) == 204

    # 2. The largest accepted time for b, recorded by a: a keeps it to its horizon.
    assert put(ca, "x", b"x", encode_token([(b_id, now + MAX_CLOCK_AHEAD_MS - 10**6)])) == 204
    wait_for(lambda: same_everywhere(nodes, "k2v_item", 2))

    # 3. A marker taken now must not let b's next write, elsewhere in the range, go unseen.
    status, first = poll(ca, None)
    assert status == 200 and {i["sk"] for i in first["items"]} == {"probe", "x"}
    assert put(cb, "y", b"y") == 204
    status, res = poll(ca, first["seenMarker"], timeout=10)
    assert status == 200, status
    assert [i["sk"] for i in res["items"]] == ["y"]

    # 4. b coordinating x jumps its clock (x's entry says so), but to a's horizon at most: the
    #    tokens b hands out from then on are accepted, for x and for any other item.
    assert put(cb, "x", b"x2", token(cb, "x")) == 204
    for sk in ("x", "y", "x", "y"):
        assert put(cb, sk, b"again", token(cb, sk)) == 204, sk
    times = [t for n, t in decode_token(token(cb, "y"))[1] if n == b_id]
    assert times and times[0] <= now + CLOCK_HORIZON_MS + 10**7
