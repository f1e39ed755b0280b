"""Readiness probes follow the cluster: no layout -> 503, formed -> 200, quorum lost -> 503."""

from __future__ import annotations

import json

from tests.support import FAST_PINGS, NodeProcess, free_port, wait_for


def health(n: NodeProcess) -> tuple[int, dict]:
    r = n.admin_http("GET", "/health", token="")
    return r.status, r.json()


def test_health_flips_with_layout_and_quorum(tmp_path):
    nodes = [
        NodeProcess(
            tmp_path / f"h{i}",
            admin_port=free_port(),
            admin_token="t0ken",
            extra_config=f"replication_factor = 3\n{FAST_PINGS}",
        )
        for i in range(3)
    ]
    try:
        nodes[0].start()
        for n in nodes[1:]:
            n.extra_config += f'bootstrap_peers = ["{nodes[0].peer_spec}"]\n'
            n.start()
        a = nodes[0]
        assert health(a) == (503, health(a)[1]) and health(a)[1]["status"] == "no-layout"
        wait_for(
            lambda: (
                all(x["up"] for x in json.loads(a.cli("status", "--json").stdout)["nodes"])
                and len(json.loads(a.cli("status", "--json").stdout)["nodes"]) == 3
            )
        )
        for i, n in enumerate(nodes):
            a.cli("layout", "assign", n.node_id[:10], "-z", f"z{i}", "-c", "1G")
        a.cli("layout", "apply", "--version", "1")
        for n in nodes:
            wait_for(lambda n=n: health(n)[0] == 200)
        assert health(a)[1]["status"] == "ok"
        detail = a.admin_http("GET", "/v1/health").json()
        assert detail["status"] == "healthy" and detail["partitionsQuorum"] == 256

        # One node down: quorums (2 of 3) still hold.
        nodes[2].kill()
        wait_for(
            lambda: (
                json.loads(a.cli("status", "--json").stdout)["nodes"][0] is not None
                and not next(
                    x for x in json.loads(a.cli("status", "--json").stdout)["nodes"] if x["id"] == nodes[2].node_id
                )["up"]
            )
        )
        assert health(a)[0] == 200
        # Two down: degraded, with the partitions listed.
        nodes[1].kill()
        status, body = wait_for(lambda: (h := health(a))[0] == 503 and h)
        assert body["status"] == "degraded"
        nodes[1].start()
        nodes[2].start()
        wait_for(lambda: health(a)[0] == 200)
        st = a.admin_http("GET", "/v1/status").json()
        assert st["layoutVersion"] == 1 and len(st["nodes"]) == 3
    finally:
        for n in nodes:
            n.kill()
