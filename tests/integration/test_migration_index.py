"""ReadIndex and bucket deletion while every replica of the data moves to new nodes.

During a layout change the new storage nodes' counters are empty or partial until they have
synced; counting from them alone under-counted, and bucket deletion (which asks the same index)
could drop a bucket that still held items.
"""

from __future__ import annotations

import time

import pytest

from tests.support import K2VHttp, NodeProcess, wait_for
from tests.support.faults import (
    apply_layout,
    index_entries,
    join,
    k2v_client,
    make_node,
    shared_bucket,
    start_cluster,
    up_ids,
)

pytestmark = pytest.mark.timeout(180)

CONFIG = "rpc_timeout_msec = 5000\nsync_startup_delay_sec = 1\n"
PKS = [f"pk{i}" for i in range(4)]


def put(client: K2VHttp, bucket: str, pk: str, sk: str) -> None:
    r = client.request("PUT", f"/{bucket}/{pk}", f"sort_key={sk}", b"v")
    assert r.status == 204, r.body


def live_versions(node: NodeProcess) -> int:
    return len(node.admin("table.local_digest")["live_versions"])


def test_read_index_never_undercounts_and_bucket_delete_refuses_while_every_replica_moves(tmp_path):
    old = start_cluster(tmp_path / "old", 3, rf=3, extra=CONFIG)
    new: list[NodeProcess] = []
    try:
        creds = shared_bucket(old)
        bucket = creds["bucket"]
        writer = k2v_client(old[0], creds)
        known = {pk: 0 for pk in PKS}
        for pk in PKS:
            for j in range(6):
                put(writer, bucket, pk, f"s{j}")
                known[pk] += 1
        wait_for(lambda: index_entries(writer, bucket) == known, timeout=30, interval=0.3)
        # Counters are published asynchronously: only what was counted before the move is owed
        # by every read; the writes made during it must show up in the end.
        counted = dict(known)

        for i in range(3):
            n = make_node(tmp_path / f"new{i}", 3, CONFIG)
            join(n, old[0])
            new.append(n)
        ids = {n.node_id for n in old + new}
        for n in old + new:
            wait_for(lambda n=n: up_ids(n) >= ids, timeout=30)
        # Every storage node is replaced at once: each partition moves entirely to new nodes.
        apply_layout(old + new, new, remove=old, via=old[0], wait_on=old + new)
        readers = [k2v_client(n, creds) for n in (old[0], new[0])]
        deadline = time.monotonic() + 90
        rounds = 0
        while time.monotonic() < deadline:
            rounds += 1
            pk = PKS[rounds % len(PKS)]
            put(writer, bucket, pk, f"load{rounds}")  # writes go on during the move
            known[pk] += 1
            for client in readers:
                got = index_entries(client, bucket)
                under = {p: (got.get(p, 0), n) for p, n in counted.items() if got.get(p, 0) < n}
                assert not under, f"round {rounds}: ReadIndex under-counts (counted, counted before): {under}"
            with pytest.raises(Exception, match="not empty"):
                old[0].admin("bucket.delete", {"name": bucket})
            if rounds >= 5 and all(live_versions(n) == 1 for n in new):
                break
        else:
            raise AssertionError("the old layout version never retired")
        wait_for(lambda: all(index_entries(c, bucket) == known for c in readers), timeout=30, interval=0.3)
    finally:
        for n in old + new:
            n.kill()
