"""`garagekv stats`, `garagekv worker list|info` and `garagekv repair` against real nodes."""

from __future__ import annotations

import json

import pytest

from tests.support import wait_for
from tests.support.faults import k2v_client
from tests.support.gc_cluster import form_cluster, index, local_items, put

TABLES = {"key", "bucket", "bucket_alias", "k2v_index_counter", "k2v_item"}


@pytest.fixture
def cluster(make_cluster):
    nodes, creds = form_cluster(make_cluster)
    k2v = k2v_client(nodes[0], creds)
    for i in range(4):
        put(k2v, f"pk{i % 2}", f"s{i}", b"v" * (i + 1))
    expected = {
        "pk0": {"entries": 2, "conflicts": 0, "values": 2, "bytes": 1 + 3},
        "pk1": {"entries": 2, "conflicts": 0, "values": 2, "bytes": 2 + 4},
    }
    wait_for(lambda: index(k2v) == expected)
    return nodes, creds, expected


def test_stats_text_and_json(cluster):
    nodes, _, _ = cluster
    a = nodes[0]
    for x in nodes:  # every write reached every replica
        wait_for(lambda x=x: local_items(x) == 4)
    st = json.loads(a.cli("stats", "--json").stdout)
    assert st["node"] == a.node_id and st["layoutVersion"] == 1 and st["replicationFactor"] == 3
    rows = {t["table"]: t for t in st["tables"]}
    assert set(rows) >= TABLES
    assert rows["k2v_item"]["items"] == 4 and rows["k2v_index_counter"]["items"] == 2
    assert rows["key"]["items"] == 1 and rows["bucket"]["items"] == 1
    for r in rows.values():
        assert {"merkleTodo", "gcTodo", "insertQueue"} <= set(r)
    assert st["partitions"] == {"total": 256, "stored": 256}
    assert {n["id"] for n in st["storageNodes"]} == {x.node_id for x in nodes}
    assert all(n["partitions"] == 256 and n["up"] for n in st["storageNodes"])
    assert st["db"]["engine"] == "lmdb" and st["db"]["usedBytes"] > 0
    assert st["tombstoneGcDelaySec"] == 2
    if st["sync"] is not None:  # anti-entropy state, per table
        assert {s["table"] for s in st["sync"]} >= TABLES

    text = a.cli("stats").stdout
    assert f"Node {a.node_id[:16]} (layout version 1, replication factor 3)" in text
    assert "==== TABLES ====" in text and "Partitions stored by this node: 256 of 256" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("k2v_item "))
    assert line.split()[1] == "4"
    for x in nodes:
        assert x.node_id[:16] in text
    assert "Database: LMDB" in text and "Background workers:" in text

    every = json.loads(nodes[1].cli("stats", "-a", "--json").stdout)["nodes"]
    assert sorted(n["node"] for n in every) == sorted(x.node_id for x in nodes)
    assert all(next(t for t in n["tables"] if t["table"] == "k2v_item")["items"] == 4 for n in every)
    text = nodes[1].cli("stats", "--all-nodes").stdout
    assert all(f"Node {x.node_id[:16]} (layout version 1" in text for x in nodes)


def test_stats_on_a_node_without_layout(make_cluster):
    (a,) = make_cluster(1, rf=1)
    st = json.loads(a.cli("stats", "--json").stdout)
    assert st["layoutVersion"] == 0 and st["storageNodes"] == []
    assert st["partitions"]["stored"] == 256  # standalone: everything lives here
    assert "Partitions stored by this node: 256 of 256" in a.cli("stats").stdout


def test_worker_list_and_info(cluster):
    nodes, _, _ = cluster
    a = nodes[0]
    workers = json.loads(a.cli("worker", "list", "--json").stdout)
    names = {w["name"] for w in workers}
    assert {"k2v_item GC", "k2v_index_counter GC", "k2v_index_counter queue"} <= names
    assert "key GC" not in names and "bucket GC" not in names  # deleted keys/buckets are kept forever
    for w in workers:
        assert {"tid", "state", "name", "errors", "consecutiveErrors", "lastError"} <= set(w)
        assert w["state"] in ("busy", "idle", "throttled", "done")
    text = a.cli("worker", "list").stdout.splitlines()
    assert text[0].split() == ["TID", "State", "Name", "Done", "Queue", "Errors", "Consec", "Last", "error"]
    assert any("k2v_item GC" in ln for ln in text[1:])
    gc = next(w for w in workers if w["name"] == "k2v_item GC")
    info = a.cli("worker", "info", str(gc["tid"])).stdout
    assert f"Worker {gc['tid']}: k2v_item GC" in info and "State:" in info and "Errors: 0" in info
    assert json.loads(a.cli("worker", "info", str(gc["tid"]), "--json").stdout)["name"] == "k2v_item GC"
    r = a.cli("worker", "info", "9999", check=False)
    assert r.returncode == 1 and "No worker with TID 9999" in r.stderr
    assert a.cli("worker", "list", "--errors").stdout.splitlines()[0].startswith("TID")


def test_repair_counters_waits_and_shows_progress(cluster):
    nodes, creds, expected = cluster
    a = nodes[1]
    r = a.cli("repair", "counters", check=False)
    assert r.returncode == 1 and "--yes" in r.stderr
    out = a.cli("repair", "--yes", "counters").stdout
    assert "Repair launched: recounting this node's K2V index counters" in out
    assert "Done: 4 items in 2 partitions counted" in out
    workers = json.loads(a.cli("worker", "list", "--json").stdout)
    rep = [w for w in workers if w["name"] == "k2v counter repair"]
    assert len(rep) == 1 and rep[0]["state"] == "done" and rep[0]["done"] == rep[0]["total"]
    for x in nodes:  # the recounted (identical) values replace the old registers: nothing changes
        assert index(k2v_client(x, creds)) == expected
    # --detach returns at once; the repair still runs to the end.
    out = a.cli("repair", "--yes", "--detach", "counters").stdout
    assert "Repair launched" in out and "Done" not in out
    wait_for(
        lambda: all(
            w["state"] == "done"
            for w in json.loads(a.cli("worker", "list", "--json").stdout)
            if w["name"] == "k2v counter repair"
        )
    )


def test_repair_tables_and_merkle(cluster):
    nodes, creds, expected = cluster
    a = nodes[2]
    r = a.cli("repair", "tables", check=False)
    assert r.returncode == 1 and "--yes" in r.stderr
    out = a.cli("repair", "--yes", "tables").stdout
    if "nothing to repair" in out:  # anti-entropy not wired on this build
        pytest.skip("no anti-entropy")
    assert "Repair launched: full anti-entropy sync of" in out
    for t in TABLES:
        assert t in out
    assert "Done: full sync completed for every table." in out
    out = a.cli("repair", "--yes", "merkle").stdout
    assert "Repair launched: range sums rebuild of" in out and "Done: every table's range sums are up to date." in out
    st = json.loads(a.cli("stats", "--json").stdout)
    assert all(t["merkleTodo"] == 0 for t in st["tables"])
    assert index(k2v_client(a, creds)) == expected
    r = a.cli("repair", "--yes", "nonsense", check=False)
    assert r.returncode == 2  # argparse: invalid choice
