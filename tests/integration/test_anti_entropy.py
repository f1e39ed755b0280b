"""Anti-entropy between real node processes: a restarted node catches up on its own, data written
before any layout is handed to its owners, and a layout change completes (trackers, retirement)."""

from __future__ import annotations

import base64
import json

from tests.support import K2VHttp, NodeProcess, wait_for
from tests.support.cluster import (
    BUCKET,
    FAST_SYNC,
    all_up,
    apply_layout,
    bucket_client,
    digest,
    put,
    same_everywhere,
    table_state,
    via,
)

# ---- helpers (the cluster, its bucket and replica digests are in tests/support/cluster.py) -------


def read(client: K2VHttp, pk: str, sk: str) -> list[str | None]:
    r = client.request("GET", f"/{BUCKET}/{pk}", f"sort_key={sk}", headers={"Accept": "application/json"})
    assert r.status == 200, (r.status, r.body)
    return [None if v is None else base64.b64decode(v).decode() for v in json.loads(r.body)]


# ---- tests --------------------------------------------------------------------------------------


def test_restarted_node_converges_without_manual_action(make_cluster):
    nodes = make_cluster(3, rf=3, extra=FAST_SYNC)
    a, b, c = nodes
    for n in nodes:
        wait_for(lambda n=n: all_up(n, 3))
    apply_layout(a, nodes, nodes)
    client = bucket_client(a)
    for i in range(10):
        put(client, f"pk{i}", "s", f"before-{i}")
    wait_for(lambda: same_everywhere(nodes, "k2v_item", 10))

    c.kill()
    wait_for(lambda: not all_up(a, 3))
    for i in range(40):  # writes land on a and b only: 10 overwrites, 30 new items
        put(via(client, nodes[i % 2]), f"pk{i}", "s" if i < 10 else "t", f"while-down-{i}")
    wait_for(lambda: same_everywhere([a, b], "k2v_item", 40))
    c.start()
    wait_for(lambda: same_everywhere(nodes, "k2v_item", 40), timeout=25)
    # c caught up on its own (no repair command): its local copy equals a's and b's, its range
    # sums too, and it answers from them.
    for t in ("key", "bucket", "bucket_alias"):
        assert same_everywhere(nodes, t)
    wait_for(lambda: digest(c, "k2v_item")["tables"]["k2v_item"]["merkle_todo"] == 0)
    assert read(via(client, c), "pk25", "t") == ["while-down-25"]
    assert sorted(read(via(client, c), "pk3", "s")) == ["before-3", "while-down-3"]  # no token: siblings


def test_before_the_layout_k2v_is_refused_and_full_copy_data_reaches_the_owners(make_cluster):
    a, b, c = make_cluster(3, rf=2, extra=FAST_SYNC)
    for n in (a, b, c):
        wait_for(lambda n=n: all_up(n, 3))
    # No layout yet: a would be standalone; a cluster node refuses K2V rather than keep writes
    # that the real replicas would never see (docs/operations.md section 3).
    client = bucket_client(a)
    r = client.request("PUT", f"/{BUCKET}/early", "sort_key=s", b"v")
    assert r.status == 503, (r.status, r.body)
    assert table_state(a, "k2v_item")[0] == 0

    # a gets no role: its K2V requests go to b and c, which store them.
    apply_layout(a, [b, c], [a, b, c])
    for i in range(30):
        wait_for(lambda i=i: client.request("PUT", f"/{BUCKET}/early{i}", "sort_key=s", f"v{i}".encode()).status == 204)
    wait_for(lambda: same_everywhere([b, c], "k2v_item", 30), timeout=25)
    assert table_state(a, "k2v_item")[0] == 0
    # Full-copy tables (key, bucket) written on a before the layout are pushed too, so b and c
    # serve the bucket.
    for n in (b, c):
        wait_for(lambda n=n: read(via(client, n), "early7", "s") == ["v7"])
    assert same_everywhere([a, b, c], "key", 1) and same_everywhere([a, b, c], "bucket", 1)


def test_layout_change_raises_sync_trackers_and_retires_the_old_version(make_cluster):
    nodes = make_cluster(3, rf=3, extra=FAST_SYNC)
    a = nodes[0]
    for n in nodes:
        wait_for(lambda n=n: all_up(n, 3))
    apply_layout(a, nodes, nodes)
    client = bucket_client(a)
    n_items = 40
    for i in range(n_items):
        put(client, f"m{i}", "s", f"v{i}")
    wait_for(lambda: same_everywhere(nodes, "k2v_item", n_items))

    (d,) = make_cluster(1, rf=3, extra=FAST_SYNC + f'bootstrap_peers = ["{a.peer_spec}"]\n')
    nodes.append(d)
    for n in nodes:
        wait_for(lambda n=n: all_up(n, 4))
    version = apply_layout(a, [d], nodes)
    assert version == 2

    def settled(n: NodeProcess) -> bool:
        info = digest(n)
        trackers = info["trackers"]
        return (
            info["live_versions"] == [2]
            and len(trackers) == 4
            and all(t["sync"] >= 2 and t["ack"] >= 2 and t["sync_ack"] >= 2 for t in trackers.values())
        )

    for n in nodes:
        wait_for(lambda n=n: settled(n), timeout=25)
    history = d.cli("layout", "history").stdout
    assert "single live layout version" in history and "historical" in history
    # Every item is on exactly rf = 3 of the 4 nodes once the old version's extra copies are gone.
    wait_for(lambda: sum(table_state(n, "k2v_item")[0] for n in nodes) == 3 * n_items, timeout=25)
    for i in range(0, n_items, 7):
        assert read(via(client, d), f"m{i}", "s") == [f"v{i}"]


def test_identical_replicas_have_identical_tries_and_repairs_run_on_demand(make_cluster):
    nodes = make_cluster(3, rf=3, extra=FAST_SYNC)
    a = nodes[0]
    for n in nodes:
        wait_for(lambda n=n: all_up(n, 3))
    apply_layout(a, nodes, nodes)
    client = bucket_client(a)
    for i in range(25):
        put(via(client, nodes[i % 3]), f"r{i}", "s", f"v{i}")

    def tries(n: NodeProcess) -> tuple | None:
        d = digest(n, "k2v_item")["tables"]["k2v_item"]
        return None if d["merkle_todo"] else (d["items"], d["hash"], d["merkle_roots"])

    def identical() -> bool:
        views = [tries(n) for n in nodes]
        return views[0] is not None and views[0][0] == 25 and all(v == views[0] for v in views)

    wait_for(identical)  # same entries => same range sums, whatever order they arrived in
    before = tries(a)

    # `repair merkle`: the range sums are rebuilt from the data and come out the same.
    assert a.admin("repair", {"what": "merkle"})["launched"]
    wait_for(lambda: tries(a) == before)

    # `repair tables`: every table runs one more full sync.
    def full_syncs() -> dict[str, int]:
        return {
            w["name"]: w.get("full_syncs", 0) for w in a.admin("worker.list")["workers"] if w["name"].endswith(" sync")
        }

    wait_for(lambda: all(full_syncs().values()))  # the start-up syncs are done
    first = full_syncs()
    assert set(first) == {f"{t} sync" for t in ("key", "bucket", "bucket_alias", "k2v_index_counter", "k2v_item")}
    assert a.admin("repair", {"what": "tables"})["launched"]
    wait_for(lambda: all(v > first[k] for k, v in full_syncs().items()))
    assert identical()
