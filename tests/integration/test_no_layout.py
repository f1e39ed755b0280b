"""A node without the cluster's layout refuses K2V requests (503) instead of acting alone.

Without a layout a node would route every partition to itself and acknowledge writes with a
quorum of one, writes the cluster's real replicas never see. A configured single-node
deployment (replication_factor = 1, no bootstrap_peers) is the exception: the session node of
the other tests serves before any layout is applied.
"""

from __future__ import annotations

import signal

import pytest

from tests.support import K2VHttp, wait_for
from tests.support.faults import apply_layout, join, k2v_client, make_bucket, make_node, start_cluster, up_ids

pytestmark = pytest.mark.timeout(120)


def put_status(client, bucket: str, sk: str) -> int:
    return client.request("PUT", f"/{bucket}/pk", f"sort_key={sk}", b"v", timeout=10).status


def test_cluster_nodes_refuse_k2v_until_the_layout_is_applied_and_again_after_losing_it(tmp_path):
    nodes = start_cluster(tmp_path, 3, rf=3, layout=False)
    try:
        # Refused before anything else is looked at (no key or bucket exists yet either).
        for n in nodes:
            c = K2VHttp(n.endpoint, "GK" + "0" * 24, "0" * 64)
            r = c.request("PUT", "/some-bucket/pk", "sort_key=early", b"v")
            assert r.status == 503, r.body
            body = r.json()
            assert body["code"] == "ServiceUnavailable" and "no cluster layout" in body["message"]
            assert c.request("GET", "/some-bucket").status == 503
        apply_layout(nodes, nodes)
        creds = make_bucket(nodes[0])
        bucket = creds["bucket"]
        clients = [k2v_client(n, creds) for n in nodes]
        for c in clients:
            wait_for(lambda c=c: put_status(c, bucket, "late") == 204, timeout=30)

        # The last node loses its layout file while the others are unreachable: it must not
        # start acting alone, and it serves again once gossip brings the layout back.
        victim = nodes[2]
        victim.stop()
        (victim.metadata_dir / "cluster_layout").unlink()
        for n in nodes[:2]:
            n.proc.send_signal(signal.SIGSTOP)
        try:
            victim.start()
            assert put_status(clients[2], bucket, "alone") == 503
        finally:
            for n in nodes[:2]:
                n.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: put_status(clients[2], bucket, "back") == 204, timeout=40)
    finally:
        for n in nodes:
            n.kill()


def test_a_new_node_joining_stops_refusing_once_gossip_brings_the_layout(tmp_path):
    nodes = start_cluster(tmp_path, 3, rf=3)
    new = make_node(tmp_path / "new", 3)
    try:
        creds = make_bucket(nodes[0])
        join(new, nodes[0])
        wait_for(lambda: new.node_id in up_ids(nodes[0]), timeout=30)
        # Not in the layout itself, but it has the cluster's layout (gossip): no longer refused.
        # (Without a role it holds no copy of the keys and buckets, so the request itself fails.)
        c = k2v_client(new, creds)
        wait_for(lambda: c.request("GET", "/" + creds["bucket"], timeout=10).status != 503, timeout=30)
    finally:
        for n in nodes + [new]:
            n.kill()


def test_hulykvs_api_refuses_writes_until_the_layout_is_applied(tmp_path):
    """The Hulykvs listener shares the K2V API's gate: no layout, no writes (probes still answer)."""
    import uuid

    from tests.support import free_port
    from tests.support.hulykvs_client import HulyHttp, section, token

    ports = [free_port() for _ in range(3)]
    nodes = [make_node(tmp_path / f"n{i}", 3, k2v_extra="\n" + section(p)) for i, p in enumerate(ports)]
    try:
        nodes[0].start()
        for n in nodes[1:]:
            join(n, nodes[0])
        ids = {n.node_id for n in nodes}
        wait_for(lambda: up_ids(nodes[0]) >= ids, timeout=30)
        huly = HulyHttp(ports[1], token())
        ws = str(uuid.uuid4())
        assert huly.put(ws, "ns", "early", b"v").status == 503
        assert huly.request("GET", "/status").status == 200
        apply_layout(nodes, nodes)
        wait_for(lambda: huly.put(ws, "ns", "late", b"v").status == 204, timeout=30)
    finally:
        for n in nodes:
            n.kill()
