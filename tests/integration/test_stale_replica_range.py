"""ReadBatch through a replica that missed deletions: nothing comes back, paging goes on.

A node cut off while items are deleted still holds them alive. When it coordinates a ReadBatch
right after it returns, its own answer (stale) is merged with another replica's; that replica
must send its tombstones (not filter them out) for the merge to see the deletions, and the
paging must not stop at a page the merge emptied.
"""

from __future__ import annotations

import pytest

from tests.support import wait_for
from tests.support.faults import (
    FaultProxy,
    k2v_client,
    proxy_supported,
    shared_bucket,
    start_cluster,
    up_ids,
)
from tests.support.k2v import b64, insert_batch, read_batch

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not proxy_supported(), reason="the fault proxy needs /proc"),
]

# No anti-entropy during the test: only the read itself may reconcile the stale replica.
CONFIG = "rpc_timeout_msec = 5000\nsync_startup_delay_sec = 3600\nsync_interval_sec = 3600\n"


def test_read_batch_through_a_replica_that_missed_deletions(tmp_path):
    proxy = FaultProxy()
    nodes = start_cluster(tmp_path, 3, rf=3, extra=CONFIG, proxy=proxy)
    try:
        creds = shared_bucket(nodes)
        bucket = creds["bucket"]
        a, stale = k2v_client(nodes[0], creds), k2v_client(nodes[2], creds)
        insert_batch(a, [{"pk": "p", "sk": f"k{i:02}", "ct": None, "v": b64("v")} for i in range(12)], bucket)
        # Every replica has the items before the cut (write quorum is 2 of 3: wait for the third).
        wait_for(lambda: len(read_batch(stale, [{"partitionKey": "p"}], bucket)[0]["items"]) == 12)

        proxy.cut("n2")
        wait_for(lambda: nodes[2].node_id not in up_ids(nodes[0]), timeout=30)
        r = a.json("POST", f"/{bucket}", [{"partitionKey": "p", "end": "k08"}], query="delete")
        assert r.status == 200, r.body
        assert r.json()[0]["deletedItems"] == 8
        proxy.heal("n2")
        wait_for(lambda: nodes[0].node_id in up_ids(nodes[2]) and nodes[1].node_id in up_ids(nodes[2]), timeout=30)

        # First read through the stale node: a page of 3 over 8 deleted items then 4 live ones.
        (res,) = read_batch(stale, [{"partitionKey": "p", "limit": 3}], bucket)
        assert [i["sk"] for i in res["items"]] == ["k08", "k09", "k10"]
        assert res["more"] is True and res["nextStart"] == "k11"
        (res,) = read_batch(stale, [{"partitionKey": "p"}], bucket)
        assert [i["sk"] for i in res["items"]] == ["k08", "k09", "k10", "k11"] and res["more"] is False
    finally:
        for n in nodes:
            n.kill()
        proxy.close()
