"""Real node processes forming a cluster: peering, status, staged layout, failures, bad secrets."""

from __future__ import annotations

import json

from tests.support import FAST_PINGS, NodeProcess, wait_for


def status(node: NodeProcess) -> dict:
    return json.loads(node.cli("status", "--json").stdout)


def all_up(node: NodeProcess, n: int) -> bool:
    st = status(node)
    return len(st["nodes"]) == n and all(x["up"] for x in st["nodes"])


def test_bootstrap_forms_full_mesh(make_cluster):
    nodes = make_cluster(3)
    for node in nodes:
        wait_for(lambda node=node: all_up(node, 3))
    st = status(nodes[2])
    assert st["node"] == nodes[2].node_id
    assert {x["id"] for x in st["nodes"]} == {n.node_id for n in nodes}
    assert all(x["role"] is None for x in st["nodes"]) and st["layoutVersion"] == 0


def test_node_id_and_node_connect(make_cluster, tmp_path):
    (a,) = make_cluster(1, rf=1)
    b = NodeProcess(tmp_path / "b", extra_config=f"replication_factor = 1\n{FAST_PINGS}")
    b.start()
    try:
        out = b.cli("node", "id", "-q").stdout.strip()
        assert out == b.peer_spec
        assert "Success" in a.cli("node", "connect", out).stdout
        wait_for(lambda: all_up(a, 2) and all_up(b, 2))
        r = a.cli("node", "connect", "00" * 32 + "@127.0.0.1:1", check=False)
        assert r.returncode == 1 and "Could not connect" in r.stderr
    finally:
        b.kill()


def test_stage_apply_revert_propagate(make_cluster):
    nodes = make_cluster(3)
    a, b, c = nodes
    wait_for(lambda: all_up(a, 3))
    # Stage on one node; another sees the staged change.
    for i, n in enumerate(nodes):
        out = a.cli("layout", "assign", n.node_id[:10], "-z", f"z{i}", "-c", "1G", "-t", "ssd").stdout
        assert "staged" in out
    # The hints name the config file the command was run with, so they can be copied as printed.
    hint = f"garagekv -c {b.config_path} layout apply --version 1"
    show = wait_for(lambda: (t := b.cli("layout", "show").stdout) and hint in t and t)
    assert show.rstrip().endswith(hint)
    r = c.cli("layout", "apply", "--version", "2", check=False)
    assert r.returncode == 1 and "Invalid new layout version 2" in r.stderr
    assert "the current version is 0, so the next one is 1 (--version 1)" in r.stderr
    shown = json.loads(b.cli("layout", "show", "--json").stdout)
    assert shown["version"] == 0 and len(shown["stagedRoleChanges"]) == 3 and "text" not in shown
    nxt = shown["next"]
    assert nxt["version"] == 1 and {r["zone"] for r in nxt["roles"]} == {"z0", "z1", "z2"}
    assert all(r["partitions"] == 256 and r["tags"] == ["ssd"] for r in nxt["roles"])  # rf 3 over 3 nodes
    c.cli("layout", "apply", "--version", "1")
    hist = json.loads(a.cli("layout", "history", "--json").stdout)
    assert hist["currentVersion"] == 1 and hist["versions"][0]["version"] == 1
    assert hist["versions"][0]["status"] == "current" and hist["versions"][0]["storageNodes"] == 3
    for n in nodes:
        wait_for(lambda n=n: status(n)["layoutVersion"] == 1)
    st = status(a)
    assert {x["role"]["zone"] for x in st["nodes"]} == {"z0", "z1", "z2"}
    assert all(x["role"]["capacity"] == 10**9 and x["role"]["tags"] == ["ssd"] for x in st["nodes"])
    history = b.cli("layout", "history").stdout
    assert "#1" in history and "current" in history and "single live layout version" in history

    # Revert drops staged changes everywhere and creates no version.
    a.cli("layout", "remove", c.node_id[:12])
    wait_for(lambda: status(b)["stagedChanges"])
    assert b.cli("layout", "revert", check=False).returncode == 1  # needs --yes
    b.cli("layout", "revert", "--yes")
    for n in nodes:
        wait_for(lambda n=n: not status(n)["stagedChanges"])
    assert status(a)["layoutVersion"] == 1


def test_actionable_layout_errors(make_cluster):
    (a, b) = make_cluster(2, rf=2)
    wait_for(lambda: all_up(a, 2))
    r = a.cli("layout", "assign", "zz", "-z", "dc1", "-c", "1G", check=False)
    assert r.returncode == 1 and "No node matches" in r.stderr
    r = a.cli("layout", "assign", "", "-z", "dc1", "-c", "1G", check=False)
    assert r.returncode == 1 and "matches" in r.stderr and "longer prefix" in r.stderr
    r = a.cli("layout", "assign", a.node_id[:8], "-c", "1G", check=False)
    assert r.returncode == 1 and "-z ZONE" in r.stderr
    r = a.cli("layout", "assign", a.node_id[:8], "-z", "dc1", "-c", "lots", check=False)
    assert r.returncode == 1 and "Invalid capacity" in r.stderr
    # Past 2^64 bytes: refused like any bad capacity, and nothing is staged (it once stayed
    # staged in memory, unencodable, and broke every later layout command of the node).
    r = a.cli("layout", "assign", a.node_id[:8], "-z", "dc1", "-c", "20000P", check=False)
    assert r.returncode == 1 and "Invalid capacity value" in r.stderr and "Traceback" not in r.stderr
    assert "STAGED ROLE CHANGES" not in a.cli("layout", "show").stdout
    for args in (("layout", "apply", "--version"), ("layout", "skip-dead-nodes", "--version"), ("worker", "info")):
        r = a.cli(*args, str(2**64), check=False)
        assert r.returncode == 2 and "out of range" in r.stderr, (args, r.stderr)
    # Not enough nodes for the replication factor: apply explains why and changes nothing.
    a.cli("layout", "assign", a.node_id[:8], "-z", "dc1", "-c", "1G")
    r = a.cli("layout", "apply", "--version", "1", check=False)
    assert r.returncode == 1
    assert status(a)["layoutVersion"] == 0


def test_killed_node_reported_down_then_rejoins_from_persisted_peers(make_cluster):
    a, b, c = make_cluster(3)
    wait_for(lambda: all_up(a, 3))
    c.kill()
    wait_for(lambda: not next(x for x in status(a)["nodes"] if x["id"] == c.node_id)["up"])
    assert "DOWN" in a.cli("status").stdout
    # Restart without any bootstrap peer: the persisted peer list is enough.
    c.extra_config = c.extra_config.split("bootstrap_peers")[0]
    c.start()
    wait_for(lambda: all_up(a, 3) and all_up(c, 3))


def test_wrong_secret_cannot_join_and_cluster_keeps_working(make_cluster, tmp_path):
    a, b = make_cluster(2, rf=2)
    wait_for(lambda: all_up(a, 2))
    intruder = NodeProcess(
        tmp_path / "bad",
        rpc_secret="cd" * 32,
        extra_config=f'replication_factor = 2\n{FAST_PINGS}bootstrap_peers = ["{a.peer_spec}"]\n',
    )
    intruder.start()
    try:
        import time

        time.sleep(2)
        ids = {x["id"] for x in status(a)["nodes"]}
        assert intruder.node_id not in ids
        assert all_up(a, 2) and all_up(b, 2)
        # The intruder's CLI (its own secret) cannot talk to the cluster's nodes either.
        r = intruder.cli("--rpc-host", a.peer_spec, "status", check=False)
        assert r.returncode == 1 and "cannot reach" in r.stderr
    finally:
        intruder.kill()
