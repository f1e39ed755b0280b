"""Metadata snapshots: taken while the node runs, restored by copying back, caught up by anti-entropy."""

from __future__ import annotations

import base64
import json
import shutil

from tests.support import NodeProcess, wait_for
from tests.support.faults import k2v_client, local_keys, shared_bucket, start_cluster


def put(node: NodeProcess, creds: dict, sk: str) -> None:
    r = k2v_client(node, creds).request("PUT", f"/{creds['bucket']}/backup", f"sort_key={sk}", sk.encode())
    assert r.status == 204, r.body


def test_snapshot_restore_and_catch_up(cluster3):
    nodes = cluster3
    creds = shared_bucket(nodes)
    for i in range(20):
        put(nodes[0], creds, f"before-{i:02d}")
    target = nodes[2]
    wait_for(lambda: len(local_keys(target)) == 20, timeout=30)

    taken = json.loads(target.cli("meta", "snapshot", "--json").stdout)
    snap = nodes[2].metadata_dir / "snapshots"
    assert taken["path"].startswith(str(snap)) and taken["bytes"] > 0
    assert (snap / taken["path"].rsplit("/", 1)[1] / "db.lmdb" / "data.mdb").is_file()
    assert {"node_key", "node_key.pub", "cluster_layout"} <= {p.name for p in (snap / taken["path"]).iterdir()}

    for i in range(20):
        put(nodes[0], creds, f"after-{i:02d}")
    wait_for(lambda: len(local_keys(target)) == 40, timeout=30)

    # Restore: stop the node, put the snapshot's database in place, start it again.
    target.stop()
    shutil.rmtree(target.metadata_dir / "db.lmdb")
    shutil.copytree(snap / taken["path"] / "db.lmdb", target.metadata_dir / "db.lmdb")
    assert len(local_keys(target)) == 20  # the state of the snapshot
    target.start()
    r = target.cli("repair", "tables", "--yes", timeout=120)
    assert "Done" in r.stdout
    wait_for(lambda: len(local_keys(target)) == 40, timeout=60)
    # The restored node serves what was written after its snapshot.
    r = k2v_client(target, creds).request("GET", f"/{creds['bucket']}/backup", "sort_key=after-19")
    assert r.status == 200 and r.json() == [base64.b64encode(b"after-19").decode()]


def test_snapshot_of_every_node_and_retention(tmp_path):
    nodes = start_cluster(tmp_path, n=2, rf=2, extra="metadata_snapshots_keep = 2\n")
    try:
        for _ in range(3):
            res = json.loads(nodes[0].cli("meta", "snapshot", "--all", "--json").stdout)
            assert sorted(n["node"] for n in res["nodes"]) == sorted(n.node_id for n in nodes)
            assert all("error" not in n for n in res["nodes"])
        for n in nodes:
            kept = [p for p in (n.metadata_dir / "snapshots").iterdir()]
            assert len(kept) == 2, kept
        text = nodes[1].cli("meta", "snapshot").stdout
        assert text.startswith(f"Node {nodes[1].node_id[:16]}: snapshot ")
    finally:
        for n in nodes:
            n.kill()


def test_auto_snapshot_worker_and_ignored_keys_are_reported(tmp_path):
    node = NodeProcess(tmp_path / "n", extra_config='metadata_auto_snapshot_interval = "1h"\nblock_size = 1048576\n')
    node.start()
    try:
        workers = node.admin("worker.list")["workers"]
        auto = [w for w in workers if w["name"] == "metadata auto-snapshot"]
        assert auto and auto[0]["interval_secs"] == 3600 and auto[0]["last_snapshot"] is None
        log = (node.root / "node.log").read_text()
        assert "config key 'block_size' is accepted for garage.toml compatibility and ignored" in log
    finally:
        node.stop()
