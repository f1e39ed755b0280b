"""Tombstone GC on a real 3-node cluster (rf=3) with a 2 s delay: deleted items leave every node."""

from __future__ import annotations

from tests.support import K2VHttp, NodeProcess, q, wait_for
from tests.support.faults import k2v_client
from tests.support.gc_cluster import form_cluster, index, local_items, put, table_row

TOKEN = "X-Garage-Causality-Token"


# ---- helpers (the cluster, writes and counts are in tests/support/gc_cluster.py) -------------------


def delete(k2v: K2VHttp, pk: str, sk: str) -> None:
    r = k2v.request("GET", f"/gc-bucket/{q(pk)}", f"sort_key={q(sk)}", headers={"Accept": "application/json"})
    assert r.status == 200, r.body
    r = k2v.request("DELETE", f"/gc-bucket/{q(pk)}", f"sort_key={q(sk)}", headers={TOKEN: r.header(TOKEN)})
    assert r.status == 204, r.body


def leader_of(nodes: list[NodeProcess]) -> NodeProcess:
    """With rf = number of nodes every partition's first storage node is the smallest id."""
    return min(nodes, key=lambda x: x.node_id)


def gc_worker(node: NodeProcess, table: str = "k2v_item") -> dict:
    return next(w for w in node.admin("worker.list")["workers"] if w["name"] == f"{table} GC")


# ---- tests ----------------------------------------------------------------------------------------


def test_deleted_items_disappear_from_every_node_and_counters_stay_right(make_cluster):
    nodes, creds = form_cluster(make_cluster)
    k2v = [k2v_client(x, creds) for x in nodes]
    for i in range(5):
        put(k2v[i % 3], "kept", f"s{i}", b"x" * (i + 1))
    for i in range(3):
        put(k2v[i % 3], "gone", f"s{i}", b"y")
    for x in nodes:
        wait_for(lambda x=x: local_items(x) == 8)
    delete(k2v[1], "kept", "s0")
    delete(k2v[2], "kept", "s1")
    for i in range(3):
        delete(k2v[i], "gone", f"s{i}")
    expected = {"kept": {"entries": 3, "conflicts": 0, "values": 3, "bytes": 3 + 4 + 5}}
    wait_for(lambda: index(k2v[0]) == expected, timeout=10)

    leader = leader_of(nodes)
    # Only the partition leader keeps the GC to-do list.
    assert all(table_row(x, "k2v_item")["gcTodo"] == 0 for x in nodes if x is not leader)
    for x in nodes:  # every tombstone is collected on every node after the delay
        wait_for(lambda x=x: local_items(x) == 3, timeout=15)
    # The counter entry of the emptied partition is itself a tombstone, collected too.
    for x in nodes:
        wait_for(lambda x=x: local_items(x, "k2v_index_counter") == 1, timeout=15)
    wait_for(
        lambda: table_row(leader, "k2v_item")["gcTodo"] == 0 and table_row(leader, "k2v_index_counter")["gcTodo"] == 0,
        timeout=10,
    )
    assert table_row(leader, "k2v_item")["gcCollected"] == 5
    for c in k2v:
        assert index(c) == expected
        r = c.request("GET", "/gc-bucket/kept", "sort_key=s0")
        assert r.status == 404
        r = c.request("GET", "/gc-bucket/gone", "sort_key=s1")
        assert r.status == 404
    # A collected partition can be written again and counts from zero.
    put(k2v[0], "gone", "again", b"zz")
    wait_for(lambda: index(k2v[2]).get("gone") == {"entries": 1, "conflicts": 0, "values": 1, "bytes": 2})
    assert gc_worker(leader)["errors"] == 0


def test_a_down_replica_postpones_gc_until_it_is_back(make_cluster):
    nodes, creds = form_cluster(make_cluster)
    leader = leader_of(nodes)
    victim, other = [x for x in nodes if x is not leader]
    k2v = k2v_client(leader, creds)
    put(k2v, "p", "a", b"1")
    put(k2v, "p", "b", b"22")
    for x in nodes:
        wait_for(lambda x=x: local_items(x) == 2)
    victim.kill()
    delete(k2v, "p", "a")  # a quorum (leader + other) acknowledges it
    assert table_row(leader, "k2v_item")["gcTodo"] == 1
    # The GC runs after the delay but cannot reach the victim: it keeps the tombstone everywhere.
    wait_for(lambda: gc_worker(leader)["errors"] >= 2, timeout=15)
    w = gc_worker(leader)
    assert "postponed" in w["last_error"] and victim.node_id[:16] in w["last_error"]
    assert local_items(leader) == 2 and local_items(other) == 2
    assert table_row(leader, "k2v_item")["gcTodo"] == 1
    every = {n["node"]: n for n in leader.admin("stats", {"all_nodes": True})["nodes"]}
    assert "error" in every[victim.node_id] and "error" not in every[other.node_id]

    victim.start()
    for x in nodes:  # phase 1 brings the victim the tombstone, phase 2 deletes it everywhere
        wait_for(lambda x=x: local_items(x) == 1, timeout=25)
    wait_for(lambda: table_row(leader, "k2v_item")["gcTodo"] == 0)
    for x in nodes:  # the victim counted its copy of the tombstone (ReadIndex takes the max over nodes)
        wait_for(
            lambda x=x: index(k2v_client(x, creds)) == {"p": {"entries": 1, "conflicts": 0, "values": 1, "bytes": 2}}
        )
    assert gc_worker(leader)["consecutive_errors"] == 0


def test_nothing_is_collected_before_the_delay(make_cluster):
    (a,) = make_cluster(1, rf=1, extra="tombstone_gc_delay_sec = 3600\n")
    a.cli("layout", "assign", a.node_id[:10], "-z", "z1", "-c", "1G")
    a.cli("layout", "apply", "--version", "1")
    key = a.admin("key.create", {"name": "k"})
    a.admin("bucket.create", {"name": "gc-bucket"})
    a.admin(
        "bucket.permissions",
        {"bucket": "gc-bucket", "key": key["accessKeyId"], "allow": True, "read": True, "write": True},
    )
    creds = {"access_key": key["accessKeyId"], "secret_key": key["secretAccessKey"]}
    k2v = k2v_client(a, creds)
    put(k2v, "p", "a", b"1")
    delete(k2v, "p", "a")
    row = table_row(a, "k2v_item")
    assert row["items"] == 1 and row["gcTodo"] == 1
    w = gc_worker(a)
    assert w["state"] == "idle" and w["queue"] == 1 and w["done"] == 0
