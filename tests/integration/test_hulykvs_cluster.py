"""The Hulykvs-compatible API on a 3-node cluster (docs/hulykvs.md): every node serves it, writes
made through one node are seen through the others, K2V and Hulykvs clients share items as the
mapping says, and /ready follows the quorums."""

from __future__ import annotations

import base64
import hashlib
import uuid

import pytest

from tests.support import free_port, q, wait_for
from tests.support.faults import apply_layout, join, k2v_client, make_node, up_ids
from tests.support.hulykvs_client import HulyHttp, section, token


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("hulycluster")
    nodes = []
    for i in range(3):
        port = free_port()
        # after [k2v_api]: extra_config also receives bootstrap_peers, which must stay top-level
        n = make_node(root / f"n{i}", 3, k2v_extra="\n" + section(port))
        n.huly_port = port
        nodes.append(n)
    try:
        nodes[0].start()
        for n in nodes[1:]:
            join(n, nodes[0])
        ids = {n.node_id for n in nodes}
        for n in nodes:
            wait_for(lambda n=n: up_ids(n) >= ids, timeout=30)
        apply_layout(nodes, nodes)
        yield nodes
    finally:
        for n in nodes:
            n.kill()


@pytest.fixture(scope="module")
def hulys(cluster) -> list[HulyHttp]:
    return [HulyHttp(n.huly_port, token()) for n in cluster]


@pytest.fixture(scope="module")
def k2v(cluster, hulys):
    """A K2V key allowed on the Hulykvs bucket, which the first Hulykvs write creates."""
    assert hulys[0].put(str(uuid.uuid4()), "init", "k", b"v").status == 204
    node = cluster[0]
    key = node.admin("key.create", {"name": "huly-interop"})
    node.admin(
        "bucket.permissions",
        {"bucket": "hulykvs", "key": key["accessKeyId"], "allow": True, "read": True, "write": True, "owner": False},
    )
    clients = [k2v_client(n, {"access_key": key["accessKeyId"], "secret_key": key["secretAccessKey"]}) for n in cluster]
    for c in clients:
        wait_for(lambda c=c: c.request("GET", "/hulykvs").status == 200, timeout=30)
    return clients


def md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def test_every_node_serves_the_same_data(hulys):
    ws = str(uuid.uuid4())
    assert hulys[0].put(ws, "ns", "k", b"from node 0").status == 204
    for h in hulys:
        r = h.get(ws, "ns", "k")
        assert (r.status, r.body, r.header("ETag")) == (200, b"from node 0", md5(b"from node 0"))
    # a conditional update through another node, with the ETag read from the first
    etag = hulys[0].get(ws, "ns", "k").header("ETag")
    assert hulys[1].put(ws, "ns", "k", b"from node 1", if_match=etag).status == 204
    assert hulys[2].put(ws, "ns", "k", b"stale", if_match=etag).status == 412
    assert hulys[2].put(ws, "ns", "k", b"create?", if_none_match="*").status == 412
    assert hulys[0].get(ws, "ns", "k").body == b"from node 1"
    for i in range(5):
        hulys[i % 3].put(ws, "ns", f"k{i}", b"v")
    for h in hulys:
        assert h.list(ws, "ns").json()["keys"] == ["k", "k0", "k1", "k2", "k3", "k4"]
    assert hulys[2].delete(ws, "ns", "k").status == 204
    for h in hulys:
        assert h.get(ws, "ns", "k").status == 404
    assert hulys[0].put(ws, "ns", "k", b"again", if_none_match="*").status == 201


def test_listing_many_keys_across_nodes(hulys):
    """More keys than one K2V page, written through every node, listed through each one."""
    from concurrent.futures import ThreadPoolExecutor

    ws = str(uuid.uuid4())
    keys = [f"k{i:04d}" for i in range(1050)]
    with ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(lambda i: hulys[i % 3].put(ws, "many", keys[i], b"v").status, range(len(keys))))
    assert set(statuses) == {204}
    hulys[1].put(ws, "many", "k1049", b"changed")
    hulys[2].delete(ws, "many", "k0500")
    expected = [k for k in keys if k != "k0500"]
    for h in hulys:
        body = h.list(ws, "many").json()
        assert (body["count"], body["keys"]) == (1049, expected)
    assert hulys[0].list(ws, "many", "k10").json()["keys"] == [f"k10{i:02d}" for i in range(50)]


def test_status_and_ready_on_every_node(hulys):
    for h in hulys:
        assert h.request("GET", "/status", auth=False).body == b"ok"
        assert h.request("GET", "/ready", auth=False).status == 200


def _k2v_values(k2v, ws, ns, key):
    r = k2v.request("GET", f"/hulykvs/{q(f'{ws}/{ns}')}", f"sort_key={q(key)}", headers={"Accept": "application/json"})
    if r.status == 404:
        return None, None
    assert r.status == 200, r
    return [None if v is None else base64.b64decode(v) for v in r.json()], r.header("X-Garage-Causality-Token")


def test_hulykvs_writes_are_k2v_items(hulys, k2v):
    ws = str(uuid.uuid4())
    hulys[0].put(ws, "notes", "a/b", b"huly value")
    values, _ = _k2v_values(k2v[1], ws, "notes", "a/b")
    assert values == [b"huly value"]
    # an update with a condition supersedes the old value: still one value in K2V
    hulys[1].put(ws, "notes", "a/b", b"second", if_match=md5(b"huly value"))
    assert _k2v_values(k2v[2], ws, "notes", "a/b")[0] == [b"second"]
    hulys[2].delete(ws, "notes", "a/b")
    assert _k2v_values(k2v[0], ws, "notes", "a/b")[0] == [None]  # one tombstone, as a K2V DeleteItem leaves
    # the same workspace spelled another way is the same K2V partition
    hulys[0].put(uuid.UUID(ws).hex.upper(), "notes", "c", b"c")
    assert _k2v_values(k2v[0], ws, "notes", "c")[0] == [b"c"]


def test_k2v_writes_are_seen_by_hulykvs(hulys, k2v):
    ws = str(uuid.uuid4())
    pk = q(f"{ws}/shared")
    assert k2v[0].request("PUT", f"/hulykvs/{pk}", "sort_key=k", b"from k2v").status == 204
    r = hulys[1].get(ws, "shared", "k")
    assert (r.status, r.body, r.header("ETag")) == (200, b"from k2v", md5(b"from k2v"))
    assert hulys[2].list(ws, "shared").json()["keys"] == ["k"]
    # K2V writes without a causality token are concurrent: Hulykvs sees the latest one
    assert k2v[0].request("PUT", f"/hulykvs/{pk}", "sort_key=k", b"newer").status == 204
    values, _ = _k2v_values(k2v[0], ws, "shared", "k")
    assert sorted(values) == [b"from k2v", b"newer"]
    r = hulys[0].get(ws, "shared", "k")
    assert (r.body, r.header("ETag")) == (b"newer", md5(b"newer"))
    # a conditional Hulykvs write on that ETag replaces both values
    assert hulys[0].put(ws, "shared", "k", b"resolved", if_match=md5(b"newer")).status == 204
    assert _k2v_values(k2v[1], ws, "shared", "k")[0] == [b"resolved"]


def test_k2v_tombstone_does_not_hide_a_live_value(hulys, k2v):
    ws = str(uuid.uuid4())
    pk = q(f"{ws}/tomb")
    hulys[0].put(ws, "tomb", "k", b"live")
    # a DeleteItem without a causality token is concurrent with the live value
    assert k2v[1].request("DELETE", f"/hulykvs/{pk}", "sort_key=k").status == 204
    values, _ = _k2v_values(k2v[1], ws, "tomb", "k")
    assert sorted(values, key=lambda v: v or b"") == [None, b"live"]
    assert hulys[1].get(ws, "tomb", "k").body == b"live"
    assert hulys[2].list(ws, "tomb").json()["keys"] == ["k"]
    # a K2V delete with the token removes it for Hulykvs too
    _, tok = _k2v_values(k2v[1], ws, "tomb", "k")
    k2v[1].request("DELETE", f"/hulykvs/{pk}", "sort_key=k", headers={"X-Garage-Causality-Token": tok})
    assert hulys[0].get(ws, "tomb", "k").status == 404
    assert hulys[0].list(ws, "tomb").json()["count"] == 0
    assert hulys[0].delete(ws, "tomb", "k").status == 404


def test_racing_conditional_puts_across_nodes_have_exactly_one_winner(hulys):
    """Linearizable conditions (the consensus path): 16 racing creates through all three nodes,
    then 16 racing If-Match updates on the same ETag."""
    from concurrent.futures import ThreadPoolExecutor

    ws = str(uuid.uuid4())

    def race(key: str, tag: str, **condition: str) -> list[int]:
        def put(i: int) -> int:  # every value distinct: an equal value would keep the ETag
            return hulys[i % 3].put(ws, "race", key, f"{tag}{i}".encode(), **condition).status

        with ThreadPoolExecutor(16) as pool:
            return sorted(pool.map(put, range(16)))

    for round_ in range(3):
        key = f"k{round_}"
        assert race(key, "created", if_none_match="*") == [201] + [412] * 15
        etag = hashlib.md5(hulys[0].get(ws, "race", key).body).hexdigest()
        assert race(key, "updated", if_match=etag) == [204] + [412] * 15


def test_a_node_killed_during_a_stream_of_puts_loses_no_acknowledged_one(cluster, hulys):
    import threading

    ws = str(uuid.uuid4())
    acked: dict[str, bytes] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def writer(w: int) -> None:
        i = 0
        while not stop.is_set():
            key, value = f"w{w}-{i}", f"value {w} {i}".encode()
            try:
                status = hulys[(w + i) % 3].put(ws, "stream", key, value).status
            except OSError:  # the killed node's connection
                status = 0
            if status == 204:
                with lock:
                    acked[key] = value
            i += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: len(acked) >= 40, timeout=60)
    cluster[1].kill()
    before = len(acked)
    wait_for(lambda: len(acked) >= before + 40, timeout=60)  # the stream goes on without it
    stop.set()
    for t in threads:
        t.join()
    for key, value in acked.items():
        for n in (0, 2):
            assert hulys[n].get(ws, "stream", key).body == value, (key, n)
    cluster[1].start()
    wait_for(lambda: hulys[1].request("GET", "/ready", auth=False).status == 200, timeout=60)
    # (a PUT that failed may still have applied: the listing holds at least the acknowledged ones)
    assert set(hulys[1].list(ws, "stream").json()["keys"]) >= set(acked)


def test_ready_is_503_without_quorum(cluster, hulys):
    """Last in this module: it stops two of the three nodes."""
    cluster[1].kill()
    cluster[2].kill()
    wait_for(lambda: hulys[0].request("GET", "/ready", auth=False).status == 503, timeout=60)
    assert hulys[0].request("GET", "/status", auth=False).status == 200
