"""Expiring values on real clusters: one node writes each expiry's tombstone, every node serves the
expiry, a node that was down while a value expired catches up by anti-entropy without ever
showing it again, and pending expiries survive a restart."""

from __future__ import annotations

import time

from garagekv.model.k2v.item import K2VItem, partition_hash
from tests.support import K2VHttp, NodeProcess, wait_for
from tests.support.faults import k2v_client, local_keys, make_bucket, shared_bucket, start_cluster
from tests.support.k2v import BINARY, TOKEN, Background, q

TTL = "X-Garage-TTL"
FAST_SYNC = "sync_startup_delay_sec = 1\n"


def put(c: K2VHttp, bucket: str, pk: str, sk: str, value: bytes, ttl: int | None = None) -> None:
    headers = {} if ttl is None else {TTL: str(ttl)}
    r = c.request("PUT", f"/{bucket}/{q(pk)}", f"sort_key={q(sk)}", value, headers=headers)
    assert r.status == 204, (r.status, r.body)


def read_bin(c: K2VHttp, bucket: str, pk: str, sk: str):
    return c.request("GET", f"/{bucket}/{q(pk)}", f"sort_key={q(sk)}", headers={"Accept": BINARY})


def entries(c: K2VHttp, bucket: str, pk: str) -> int:
    r = c.request("GET", f"/{bucket}", f"prefix={q(pk)}")
    assert r.status == 200, (r.status, r.body)
    return sum(e["entries"] for e in r.json()["partitionKeys"] if e["pk"] == pk)


def local_item(node: NodeProcess, bucket_id: bytes, pk: str, sk: str) -> K2VItem | None:
    raw = local_keys(node).get(partition_hash(bucket_id, pk) + sk.encode())
    return None if raw is None else K2VItem.decode(raw)


def expiry_worker(node: NodeProcess) -> dict:
    (w,) = [w for w in node.admin("worker.list")["workers"] if w["name"] == "k2v expiry"]
    return w


def bucket_id_of(node: NodeProcess, bucket: str) -> bytes:
    return bytes.fromhex(node.admin("bucket.info", {"name": bucket})["id"])


def test_expiry_across_nodes_and_a_node_down_during_it(tmp_path):
    nodes = start_cluster(tmp_path, 3, extra=FAST_SYNC)
    try:
        creds = shared_bucket(nodes)
        bucket = creds["bucket"]
        clients = [k2v_client(n, creds) for n in nodes]
        bid = bucket_id_of(nodes[0], bucket)

        # ---- all nodes up: the expiry shows through every node, and one node writes it ----
        pk = "live-cluster"
        put(clients[0], bucket, pk, "keep", b"k")
        put(clients[0], bucket, pk, "gone", b"g", ttl=1)
        token = read_bin(clients[1], bucket, pk, "gone").header(TOKEN)
        polls = [
            Background(
                lambda c=c: c.request(
                    "GET",
                    f"/{bucket}/{q(pk)}",
                    f"sort_key=gone&causality_token={token}&timeout=30",
                    headers={"Accept": BINARY},
                    timeout=60,
                )
            )
            for c in clients
        ]
        for c in clients:
            wait_for(lambda c=c: read_bin(c, bucket, pk, "gone").status == 204, timeout=30)
            assert read_bin(c, bucket, pk, "keep").body == b"k"
        for p in polls:  # PollItem wakes through every node
            r = p.result(timeout=60)
            assert r.status == 204 and r.header(TOKEN) != token, (r.status, r.body)
        for c in clients:
            wait_for(lambda c=c: entries(c, bucket, pk) == 1, timeout=30)
        # Every replica holds the expired state; the tombstone was written by one node only.
        for n in nodes:
            wait_for(lambda n=n: (i := local_item(n, bid, pk, "gone")) is not None and i.is_tombstone(), timeout=30)
        assert sum(expiry_worker(n)["done"] for n in nodes) == 1

        # ---- a node down while a value expires ----
        pk = "down-cluster"
        down = nodes[2]
        put(clients[0], bucket, pk, "gone", b"secret", ttl=2)
        wait_for(lambda: (i := local_item(down, bid, pk, "gone")) is not None and i.values() == [b"secret"])
        down.stop()
        for c in clients[:2]:
            wait_for(lambda c=c: read_bin(c, bucket, pk, "gone").status == 204, timeout=30)
        for n in nodes[:2]:
            wait_for(lambda n=n: (i := local_item(n, bid, pk, "gone")) is not None and i.is_tombstone(), timeout=30)
        stale = local_item(down, bid, pk, "gone")
        assert stale is not None and stale.values() == [b"secret"]  # it missed the tombstone

        down.start()
        back = clients[2]

        def caught_up() -> bool:
            # Every read through the returning node, at every moment, shows the value deleted.
            r = read_bin(back, bucket, pk, "gone")
            assert r.status == 204, (r.status, r.body)
            r = back.json("POST", f"/{bucket}", [{"partitionKey": pk}], query="search")
            assert r.status == 200 and r.json()[0]["items"] == [], r.body
            item = local_item(down, bid, pk, "gone")
            return item is not None and item.is_tombstone()

        wait_for(caught_up, timeout=60)
        wait_for(lambda: len({local_keys(n)[partition_hash(bid, pk) + b"gone"] for n in nodes}) == 1, timeout=60)
        for c in clients:
            wait_for(lambda c=c: entries(c, bucket, pk) == 0, timeout=30)
    finally:
        for n in nodes:
            n.kill()


def test_pending_expiries_survive_a_restart(tmp_path):
    (node,) = start_cluster(tmp_path, 1, rf=1)
    try:
        creds = make_bucket(node)
        bucket = creds["bucket"]
        c = k2v_client(node, creds)
        put(c, bucket, "p", "a", b"v", ttl=2)
        put(c, bucket, "p", "b", b"w")
        exp_ms = int(read_bin(c, bucket, "p", "a").header("X-Garage-Expires"))
        wait_for(lambda: entries(c, bucket, "p") == 2)
        node.stop()
        # Down until well past the expiry: only the restarted node's worker can write the tombstone.
        time.sleep(max(0.0, exp_ms / 1000 - time.time()) + 0.5)
        node.start()
        wait_for(lambda: entries(c, bucket, "p") == 1, timeout=30)
        assert read_bin(c, bucket, "p", "a").status == 204
        assert read_bin(c, bucket, "p", "b").body == b"w"
        assert expiry_worker(node)["done"] == 1
        assert expiry_worker(node)["queue"] == 0
    finally:
        node.kill()


def test_a_replica_back_from_a_crash_never_expires_a_value_replaced_meanwhile(tmp_path):
    """A replica killed while it holds a TTL value misses the write that replaces it (a token
    write before the expiry, or a create-only write after it). Back up, it must not expire its
    stale copy: its tombstone would stand next to the new value as a concurrent value nobody
    wrote, and a lease renewed with the token of its own create would then fail."""
    nodes = start_cluster(tmp_path, 3, extra=FAST_SYNC)
    try:
        creds = shared_bucket(nodes)
        bucket = creds["bucket"]
        clients = [k2v_client(n, creds) for n in nodes]
        down = nodes[2]
        pks = [f"p{i}" for i in range(6)]  # several partitions: the returning node comes first for some
        for pk in pks:
            put(clients[0], bucket, pk, "replaced", b"ttl", ttl=3)
            r = clients[0].request(
                "PUT", f"/{bucket}/{pk}", "sort_key=lease", b"lease1", headers={TTL: "2", "If-None-Match": "*"}
            )
            assert r.status == 204, (r.status, r.body)
        bid = bucket_id_of(nodes[0], bucket)
        for pk in pks:
            wait_for(lambda pk=pk: local_item(down, bid, pk, "lease") is not None)
        down.kill()
        for pk in pks:  # before the expiry: the token write replaces the TTL value
            token = read_bin(clients[0], bucket, pk, "replaced").header(TOKEN)
            r = clients[0].request("PUT", f"/{bucket}/{pk}", "sort_key=replaced", b"kept", headers={TOKEN: token})
            assert r.status == 204, (r.status, r.body)
        renew = {}
        for pk in pks:  # after the expiry: the lease is taken again, create-only
            wait_for(lambda pk=pk: read_bin(clients[1], bucket, pk, "lease").status == 204, timeout=30)
            create = {"If-None-Match": "*"}
            r = clients[1].request("PUT", f"/{bucket}/{pk}", "sort_key=lease", b"lease2", headers=create)
            assert r.status == 204, (r.status, r.body)
            renew[pk] = r.header(TOKEN)
        time.sleep(1.5)  # past every expiry the returning node holds
        down.start()
        for pk in pks:
            key = partition_hash(bid, pk)
            wait_for(lambda k=key: len({local_keys(n)[k + b"replaced"] for n in nodes}) == 1, timeout=60)
            wait_for(lambda k=key: len({local_keys(n)[k + b"lease"] for n in nodes}) == 1, timeout=60)
        time.sleep(2)  # the returning node's expiry worker has had its turn
        for pk in pks:
            for c in clients:
                r = c.request("GET", f"/{bucket}/{pk}", "sort_key=replaced")
                assert r.status == 200 and r.json() == ["a2VwdA=="], (pk, r.status, r.body)
                r = c.request("GET", f"/{bucket}/{pk}", "sort_key=lease")
                assert r.status == 200 and r.json() == ["bGVhc2Uy"], (pk, r.status, r.body)
            renewal = {"If-Match": renew[pk]}
            r = clients[2].request("PUT", f"/{bucket}/{pk}", "sort_key=lease", b"lease3", headers=renewal)
            assert r.status == 204, (pk, r.status, r.body)  # nobody else wrote: the renewal holds
    finally:
        for n in nodes:
            n.kill()
