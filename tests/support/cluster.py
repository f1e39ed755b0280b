"""A real cluster whose layout is applied through the CLI, and one bucket (``ae-bucket``) on it.

First written for the anti-entropy tests (``tests/integration/test_anti_entropy.py``); the other
cluster tests (item sizes, range polls, conditional metrics, forged clocks) form their clusters,
buckets and replica comparisons the same way.
"""

from __future__ import annotations

from tests.support import K2VHttp, NodeProcess, wait_for
from tests.support.faults import k2v_client, make_bucket

FAST_SYNC = "sync_startup_delay_sec = 1\n"
BUCKET = "ae-bucket"


def digest(node: NodeProcess, table: str | None = None) -> dict:
    return node.admin("table.local_digest", {"table": table} if table else {})


def table_state(node: NodeProcess, table: str) -> tuple[int, str]:
    d = digest(node, table)["tables"][table]
    return d["items"], d["hash"]


def all_up(node: NodeProcess, n: int) -> bool:
    st = node.admin("cluster.status")
    return len(st["nodes"]) >= n and sum(x["up"] for x in st["nodes"]) >= n


def apply_layout(via: NodeProcess, assign: list[NodeProcess], everyone: list[NodeProcess]) -> int:
    for n in assign:
        via.cli("layout", "assign", n.node_id[:10], "-z", "z1", "-c", "1G")
    version = via.admin("cluster.status")["layout_version"] + 1
    via.cli("layout", "apply", "--version", str(version))
    for n in everyone:
        wait_for(lambda n=n: n.admin("cluster.status")["layout_version"] == version)
    return version


def bucket_client(node: NodeProcess) -> K2VHttp:
    """A new key and bucket, and a client of the node with that key."""
    return k2v_client(node, make_bucket(node, BUCKET))


def via(client: K2VHttp, node: NodeProcess) -> K2VHttp:
    return K2VHttp(node.endpoint, client.access_key, client.secret_key)


def put(client: K2VHttp, pk: str, sk: str, value: str) -> None:
    r = client.request("PUT", f"/{BUCKET}/{pk}", f"sort_key={sk}", value.encode())
    assert r.status == 204, (r.status, r.body)


def same_everywhere(nodes: list[NodeProcess], table: str, count: int | None = None) -> bool:
    states = [table_state(n, table) for n in nodes]
    return all(s == states[0] for s in states) and (count is None or states[0][0] == count)
