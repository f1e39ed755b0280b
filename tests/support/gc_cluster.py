"""A real cluster with one key and bucket (``gc-bucket``) and a short tombstone GC delay.

Shared by the GC tests (``tests/integration/test_gc.py``) and the operator tools tests
(``tests/integration/test_operator_tools.py``), which need the same cluster and its local counts.
"""

from __future__ import annotations

from tests.support import K2VHttp, NodeProcess, q, wait_for
from tests.support.faults import k2v_client

GC_DELAY = "tombstone_gc_delay_sec = 2\n"


def form_cluster(make_cluster, n: int = 3, extra: str = GC_DELAY) -> tuple[list[NodeProcess], dict]:
    """n nodes, each with a role (zone z1, 1G), layout version 1 applied; a key and a bucket."""
    nodes = make_cluster(n, extra=extra)
    ids = {x.node_id for x in nodes}
    for x in nodes:
        wait_for(lambda x=x: {s["id"] for s in x.admin("cluster.status")["nodes"] if s["up"]} >= ids, timeout=20)
    a = nodes[0]
    for x in nodes:
        a.cli("layout", "assign", x.node_id[:10], "-z", "z1", "-c", "1G")
    a.cli("layout", "apply", "--version", "1")
    for x in nodes:
        wait_for(lambda x=x: x.admin("cluster.status")["layout_version"] == 1)
    key = a.admin("key.create", {"name": "gc-tests"})
    a.admin("bucket.create", {"name": "gc-bucket"})
    a.admin(
        "bucket.permissions",
        {"bucket": "gc-bucket", "key": key["accessKeyId"], "allow": True, "read": True, "write": True, "owner": True},
    )
    creds = {"access_key": key["accessKeyId"], "secret_key": key["secretAccessKey"], "bucket": "gc-bucket"}
    for x in nodes:
        wait_for(lambda x=x: k2v_client(x, creds).request("GET", "/gc-bucket", timeout=5).status == 200)
    return nodes, creds


def put(k2v: K2VHttp, pk: str, sk: str, value: bytes) -> None:
    r = k2v.request("PUT", f"/gc-bucket/{q(pk)}", f"sort_key={q(sk)}", value)
    assert r.status == 204, r.body


def index(k2v: K2VHttp) -> dict[str, dict]:
    r = k2v.request("GET", "/gc-bucket")
    assert r.status == 200, r.body
    return {p["pk"]: {k: p[k] for k in ("entries", "conflicts", "values", "bytes")} for p in r.json()["partitionKeys"]}


def table_row(node: NodeProcess, table: str) -> dict:
    return next(t for t in node.admin("stats")["tables"] if t["table"] == table)


def local_items(node: NodeProcess, table: str = "k2v_item") -> int:
    return table_row(node, table)["items"]
