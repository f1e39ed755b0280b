"""Fault tests: real node processes on loopback, a write stream checked by ``tests.support.checker``.

Each test starts its own cluster (rf=3, fast pings, 5 s RPC timeout, first anti-entropy pass 1 s
after start), injects one fault while a workload writes through the nodes, and asserts that

- no acknowledged write is lost and no value appears that nobody wrote (``History.violations``),
- the healthy nodes keep serving meanwhile, within the RPC timeout,
- the replicas' local data converge afterwards (``table.local_digest`` on every node), with no
  manual action: anti-entropy runs at start-up and when a peer (re)connects.

Nothing sleeps blindly: every wait is a ``wait_for`` on an observable condition.
"""

from __future__ import annotations

import base64
import json
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from garagekv.model.k2v.causality import CausalContext
from garagekv.model.k2v.item import K2VItem
from garagekv.net.identity import node_number
from tests.support import K2VHttp, NodeProcess, wait_for
from tests.support.checker import History, Workload, final_check, read_item, write_item
from tests.support.faults import (
    FaultProxy,
    apply_layout,
    bucket_visible,
    commit_layout,
    describe_divergence,
    index_entries,
    join,
    k2v_client,
    local_keys,
    make_bucket,
    make_node,
    proxy_supported,
    start_cluster,
    up_ids,
)

RPC_TIMEOUT = 5.0
FAULT_CONFIG = f"rpc_timeout_msec = {int(RPC_TIMEOUT * 1000)}\nsync_startup_delay_sec = 1\n"
CONVERGED_TABLES = ("k2v_item", "k2v_index_counter", "key", "bucket", "bucket_alias")

pytestmark = pytest.mark.timeout(90)


@dataclass
class Cluster:
    nodes: list[NodeProcess]
    creds: dict
    proxy: FaultProxy | None = None
    extra: dict[str, NodeProcess] = field(default_factory=dict)

    @property
    def bucket(self) -> str:
        return self.creds["bucket"]

    def name(self, node: NodeProcess) -> str:
        return next(k for k, v in self.members().items() if v is node)

    def members(self) -> dict[str, NodeProcess]:
        return {**{f"n{i}": n for i, n in enumerate(self.nodes)}, **self.extra}

    def client(self, node: NodeProcess) -> K2VHttp:
        return k2v_client(node, self.creds)

    def clients(self, nodes: list[NodeProcess] | None = None) -> dict[str, K2VHttp]:
        nodes = nodes if nodes is not None else list(self.members().values())
        return {self.name(n): self.client(n) for n in nodes}


@pytest.fixture
def cluster(tmp_path) -> Iterator:
    """``cluster(proxy=False)``: 3 nodes, layout applied, a bucket visible on every node."""
    made: list[Cluster] = []

    def make(proxy: bool = False, extra: str = "") -> Cluster:
        px = FaultProxy() if proxy else None
        c = Cluster([], {}, px)
        made.append(c)
        c.nodes = start_cluster(tmp_path, 3, rf=3, extra=FAULT_CONFIG + extra, proxy=px)
        c.creds = make_bucket(c.nodes[0])
        for n in c.nodes:
            wait_for(lambda n=n: bucket_visible(n, c.creds))
        return c

    yield make
    for c in made:
        for name, n in c.members().items():  # shown by pytest when the test failed
            log = n.root / "node.log"
            lines = log.read_text(errors="replace").splitlines() if log.exists() else []
            print(f"--- {name} {n.node_id[:16] if n.metadata_dir.exists() else ''}: last warnings and errors")
            print("\n".join([x for x in lines if "WARNING" in x or "ERROR" in x][-15:]))
        for n in c.members().values():
            if n.proc is not None:
                try:
                    n.proc.send_signal(signal.SIGCONT)
                except ProcessLookupError:
                    pass
            n.kill()
        if c.proxy is not None:
            c.proxy.close()


# ---- helpers ----------------------------------------------------------------------------------------


def digests(node: NodeProcess, tables: tuple[str, ...] = CONVERGED_TABLES) -> dict[str, tuple[int, str]]:
    d = node.admin("table.local_digest")["tables"]
    return {t: (d[t]["items"], d[t]["hash"]) for t in tables}


def wait_converged(nodes: list[NodeProcess], tables: tuple[str, ...] = CONVERGED_TABLES, timeout: float = 30.0) -> dict:
    """Every node holds exactly the same entries of ``tables`` (compared with the nodes' own digests)."""
    last: list = []

    def same() -> bool:
        last[:] = [digests(n, tables) for n in nodes]
        return all(d == last[0] for d in last[1:])

    try:
        wait_for(same, timeout=timeout, interval=0.3)
    except AssertionError:
        short = [{t: (n, h[:12]) for t, (n, h) in d.items()} for d in last]
        raise AssertionError(
            f"replicas did not converge within {timeout}s: {short}\n{describe_divergence(nodes)}"
        ) from None
    return last[0]


def assert_clean(history: History, workload: Workload | None = None) -> None:
    print("history:", history.stats(), history.failures(3))
    assert not history.violations, "\n".join(history.violations[:20])
    if workload is not None:
        assert not workload.errors, workload.errors[:5]


def wait_acked(history: History, since: float, count: int, via: str | None = None, timeout: float = 20.0) -> None:
    wait_for(lambda: history.acked_since(since, via) >= count, timeout=timeout)


def latencies(history: History, since: float, until: float, vias: set[str]) -> list[tuple[float, str]]:
    """(duration, status) of the writes through ``vias`` that started in [since, until]."""
    return [
        ((w.end or time.monotonic()) - w.start, w.status)
        for w in list(history.writes.values())
        if w.via in vias and since <= w.start <= until
    ]


def write_cold(history: History, client: K2VHttp, via: str, bucket: str, tag: str, n: int = 24) -> list:
    """``n`` keys (each in its own partition key) written once and not touched again before the
    convergence check: a node that missed them can only get them from anti-entropy."""
    keys = [(f"cold-{tag}-{i}", "v") for i in range(n)]
    for key in keys:
        w = write_item(history, client, via, bucket, key)
        assert w.acked, w.detail
    return keys


def probe_requests(client: K2VHttp, bucket: str, tag: str) -> list[tuple[str, int, float]]:
    """One of each kind of K2V request through ``client``: (name, status, seconds)."""
    pk = f"probe-{tag}"
    out = []

    def timed(name: str, method: str, path: str, query: str = "", body: object = None, headers=None) -> object:
        start = time.monotonic()
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        r = client.request(method, path, query, data, headers=headers, timeout=RPC_TIMEOUT * 3)
        out.append((name, r.status, time.monotonic() - start))
        return r

    v = base64.b64encode(b"probe").decode()
    timed("InsertBatch", "POST", f"/{bucket}", body=[{"pk": pk, "sk": f"s{i}", "ct": None, "v": v} for i in range(3)])
    timed("InsertItem", "PUT", f"/{bucket}/{pk}", "sort_key=one", b"x")
    r = timed("ReadItem", "GET", f"/{bucket}/{pk}", "sort_key=one", headers={"Accept": "application/json"})
    token = r.header("X-Garage-Causality-Token") if r.status == 200 else None
    timed("ReadBatch", "POST", f"/{bucket}", "search", [{"partitionKey": pk}])
    timed("ReadIndex", "GET", f"/{bucket}", "prefix=probe")
    if token:
        timed("PollItem", "GET", f"/{bucket}/{pk}", f"sort_key=one&causality_token={token}&timeout=1")
    timed("PollRange", "POST", f"/{bucket}/{pk}", "poll_range", {"timeout": 1})
    timed(
        "DeleteItem",
        "DELETE",
        f"/{bucket}/{pk}",
        "sort_key=one",
        headers={"X-Garage-Causality-Token": token} if token else None,
    )
    timed("DeleteBatch", "POST", f"/{bucket}", "delete", [{"partitionKey": pk, "prefix": "s"}])
    return out


def poll_wakes_on_write_elsewhere(poller: K2VHttp, writer: K2VHttp, bucket: str, tag: str) -> float:
    """A PollItem through ``poller`` returns the value written through ``writer``; returns its duration."""
    path, query = f"/{bucket}/poll-{tag}", "sort_key=s"
    assert writer.request("PUT", path, query, b"first").status == 204
    r = poller.request("GET", path, query, headers={"Accept": "application/json"})
    assert r.status == 200, r.body
    token = r.header("X-Garage-Causality-Token")
    got: list = []

    def poll() -> None:
        start = time.monotonic()
        resp = poller.request(
            "GET",
            path,
            f"{query}&causality_token={token}&timeout=20",
            headers={"Accept": "application/json"},
            timeout=30,
        )
        got.append((resp, time.monotonic() - start))

    t = threading.Thread(target=poll)
    t.start()
    assert writer.request("PUT", path, query, b"second", headers={"X-Garage-Causality-Token": token}).status == 204
    t.join(timeout=30)
    resp, secs = got[0]
    assert resp.status == 200 and resp.json() == [base64.b64encode(b"second").decode()], (resp.status, resp.body)
    return secs


def assert_probes_ok(probes: list[tuple[str, int, float]]) -> None:
    expected = {"PollItem": (200, 304), "DeleteItem": (204,), "InsertItem": (204,), "InsertBatch": (204,)}
    for name, status, secs in probes:
        assert status in expected.get(name, (200,)), probes
        assert secs < RPC_TIMEOUT, f"{name} took {secs:.2f}s: {probes}"


def wait_index_matches(history: History, clients: dict[str, K2VHttp], bucket: str, timeout: float = 20.0) -> None:
    """Every node's ReadIndex counts, per partition key, the sort keys that hold a value."""
    expected: dict[str, int] = {}
    for pk, _ in history.by_key:
        expected[pk] = expected.get(pk, 0) + 1
    for via, client in clients.items():
        got: dict = {}

        def ok(client=client, got=got) -> bool:
            got.clear()
            got.update(index_entries(client, bucket))
            return all(got.get(pk) == n for pk, n in expected.items())

        try:
            wait_for(ok, timeout=timeout, interval=0.3)
        except AssertionError:
            wrong = {pk: (got.get(pk), n) for pk, n in expected.items() if got.get(pk) != n}
            raise AssertionError(f"ReadIndex via {via}: (counted, expected) {wrong}") from None


def node_down_for(observer: NodeProcess, victim: NodeProcess) -> bool:
    return victim.node_id not in up_ids(observer)


def node_up_for(observer: NodeProcess, victim: NodeProcess) -> bool:
    return victim.node_id in up_ids(observer)


# ---- the tests ----------------------------------------------------------------------------------------


def test_sigkill_one_node_during_writes_loses_nothing_and_it_converges_after_restart(cluster):
    c = cluster()
    victim, b, _ = c.nodes  # the victim is the node the others bootstrapped from
    history = History()
    wl = Workload(history, c.clients(), c.bucket, threads=4).start()
    try:
        wait_acked(history, 0, 30)
        victim.kill()
        killed = time.monotonic()
        # The others keep acknowledging writes, each of them, right away; writes through the dead
        # node fail fast (connection refused), never hang.
        for via in ("n1", "n2"):
            wait_acked(history, killed, 15, via=via)
        wl.endpoints = ["n1", "n2"]
        write_cold(history, c.client(b), "n1", c.bucket, "kill")
        victim.start()
        wl.endpoints = ["n0", "n1", "n2"]
        restarted = time.monotonic()
        wait_acked(history, restarted, 10, via="n0")
        # Rolling restart: another node dies before we even checked that the first caught up. The
        # restarted node and the remaining one still form a quorum that has every write.
        b.kill()
        wl.endpoints = ["n0", "n2"]
        again = time.monotonic()
        for via in ("n0", "n2"):
            wait_acked(history, again, 10, via=via)
        write_cold(history, c.client(victim), "n0", c.bucket, "kill2", n=12)
        b.start()
        wl.endpoints = ["n0", "n1", "n2"]
        wait_acked(history, time.monotonic(), 10, via="n1")
    finally:
        wl.stop()
    assert_clean(history, wl)
    # The restarted nodes converge by themselves (anti-entropy at start-up): same local data everywhere.
    wait_converged(c.nodes)
    final_check(history, c.clients(), c.bucket)
    assert_clean(history)
    wait_index_matches(history, c.clients(), c.bucket)
    st = history.stats()
    assert st["ok"] >= 100, st


def test_sigstop_hung_peer_requests_complete_then_it_catches_up(cluster):
    c = cluster()
    a, b, victim = c.nodes
    history = History()
    wl = Workload(history, c.clients([a, b]), c.bucket, threads=4).start()
    try:
        wait_acked(history, 0, 20)
        victim.proc.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        # Requests complete while the peer is hung, before and after it is declared down.
        wait_acked(history, stopped, 20)
        wait_for(lambda: node_down_for(a, victim) and node_down_for(b, victim), timeout=20)
        down = time.monotonic()
        for via in ("n0", "n1"):
            wait_acked(history, down, 10, via=via)
        write_cold(history, c.client(b), "n1", c.bucket, "stop")
        probes = probe_requests(c.client(a), c.bucket, "stop")
        probes.append(
            ("PollItem woken", 200, poll_wakes_on_write_elsewhere(c.client(a), c.client(b), c.bucket, "stop"))
        )
        resumed_at = time.monotonic()
        victim.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: node_up_for(a, victim) and node_up_for(b, victim), timeout=30)
        wait_acked(history, time.monotonic(), 10)
    finally:
        victim.proc.send_signal(signal.SIGCONT)
        wl.stop()
    assert_clean(history, wl)
    during = latencies(history, stopped, resumed_at, {"n0", "n1"})
    assert during and all(s == "ok" for _, s in during), [x for x in during if x[1] != "ok"][:5]
    slowest = max(d for d, _ in during)
    assert slowest < RPC_TIMEOUT, f"a write took {slowest:.2f}s while a peer was hung"
    assert_probes_ok(probes)
    # It catches up without a restart: anti-entropy when the peer reconnects.
    wait_converged(c.nodes)
    final_check(history, c.clients(), c.bucket)
    assert_clean(history)
    wait_index_matches(history, c.clients(), c.bucket)


@pytest.mark.skipif(not proxy_supported(), reason="the fault proxy needs /proc (Linux)")
@pytest.mark.parametrize("mode", ["drop", "blackhole", "delay"])
def test_node_cut_off_by_proxy_majority_serves_then_replicas_converge(cluster, mode):
    c = cluster(proxy=True)
    a, b, victim = c.nodes
    history = History()
    # Writes go through every node, the cut-off one included (those may fail: 503 within the timeout).
    wl = Workload(history, c.clients(), c.bucket, threads=4, timeout=RPC_TIMEOUT * 2 + 5).start()
    try:
        wait_acked(history, 0, 20)
        c.proxy.cut("n2", mode, delay=2.0 if mode == "delay" else 0.0)
        cut = time.monotonic()
        # The majority keeps serving, without waiting on the cut-off node.
        for via in ("n0", "n1"):
            wait_acked(history, cut, 15, via=via, timeout=30)
        if mode != "delay":  # a 2 s latency still lets some pings through: never declared down for long
            wait_for(lambda: node_down_for(a, victim), timeout=20)
        write_cold(history, c.client(a), "n0", c.bucket, "cut")
        probes = probe_requests(c.client(b), c.bucket, "cut")
        probes.append(("PollItem woken", 200, poll_wakes_on_write_elsewhere(c.client(b), c.client(a), c.bucket, "cut")))
        healed_at = time.monotonic()
        c.proxy.heal("n2")
        wait_for(lambda: node_up_for(a, victim) and node_up_for(b, victim) and node_up_for(victim, a), timeout=30)
        wait_acked(history, time.monotonic(), 5, via="n2", timeout=30)
    finally:
        c.proxy.heal()
        wl.stop()
    assert_clean(history, wl)
    during = latencies(history, cut, healed_at, {"n0", "n1"})
    assert during and all(s == "ok" for _, s in during), [x for x in during if x[1] != "ok"][:5]
    assert max(d for d, _ in during) < RPC_TIMEOUT
    assert_probes_ok(probes)
    wait_converged(c.nodes)
    final_check(history, c.clients(), c.bucket)
    assert_clean(history)
    wait_index_matches(history, c.clients(), c.bucket)


def test_concurrent_writers_without_tokens_make_siblings_and_a_token_write_supersedes_them(cluster):
    c = cluster()
    history = History()
    clients = c.clients()
    key = ("siblings", "contended")
    writers_per_node = 3
    barrier = threading.Barrier(writers_per_node * len(clients))
    results = []

    def writer(via: str) -> None:
        barrier.wait(timeout=10)
        results.append(write_item(history, clients[via], via, c.bucket, key))

    threads = [threading.Thread(target=writer, args=(via,)) for via in clients for _ in range(writers_per_node)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(results) == len(threads) and all(w.acked for w in results), [(w.status, w.detail) for w in results]
    written = {w.id for w in results}

    # Every value survives, as a sibling, whichever node is asked.
    for via, client in clients.items():
        r = read_item(history, client, via, c.bucket, key)
        assert r is not None and r.seen == written, (via, r)
    # One read that saw them all, then a write with its token through another node...
    seen = read_item(history, clients["n1"], "n1", c.bucket, key)
    assert seen is not None and seen.seen == written
    final = write_item(history, clients["n2"], "n2", c.bucket, key, read=seen)
    assert final.acked, final.detail
    # ...supersedes all of them on every node: in every quorum read and in every node's local copy.
    for via, client in clients.items():
        r = read_item(history, client, via, c.bucket, key)
        assert r is not None and r.seen == {final.id}, (via, r)
    wait_converged(c.nodes, ("k2v_item",))
    local = [local_keys(n) for n in c.nodes]
    raw = [next(v for k, v in items.items() if k.endswith(b"contended")) for items in local]
    for item in (K2VItem.decode(x) for x in raw):
        assert item.values() == [final.value]
    assert_clean(history)


def test_a_write_taken_by_a_coordinator_that_never_answers_is_not_written_again_elsewhere(cluster, tmp_path):
    """docs/architecture.md, step 6: a gateway (a node storing no partition) hands each write to one
    storage node; when that node took the request and went silent, asking the next one would
    store the write a second time, under another dot. The write ends in a 503 instead, naming
    the one node asked, and once the nodes are back the item holds at most that node's dot."""
    c = cluster()
    gw = make_node(tmp_path / "gw", 3, FAULT_CONFIG.replace(f"{int(RPC_TIMEOUT * 1000)}", "1000"))  # gives up sooner
    join(gw, c.nodes[0])
    c.extra["gw"] = gw
    storage = {n.node_id for n in c.nodes}
    wait_for(lambda: up_ids(gw) >= storage and all(gw.node_id in up_ids(n) for n in c.nodes), timeout=20)
    c.nodes[0].admin("layout.assign", {"nodes": [gw.node_id], "zone": "z1", "gateway": True})
    commit_layout(c.nodes[0], [*c.nodes, gw])
    wait_for(lambda: bucket_visible(gw, c.creds), timeout=20)
    client = c.client(gw)
    path = f"/{c.bucket}/gateway"
    assert client.request("PUT", path, "sort_key=before", b"v").status == 204  # the gateway serves
    for n in c.nodes:
        n.proc.send_signal(signal.SIGSTOP)
    try:
        r = client.request("PUT", path, "sort_key=k", b"once", timeout=4 * RPC_TIMEOUT)
    finally:
        for n in c.nodes:
            n.proc.send_signal(signal.SIGCONT)
    assert r.status == 503, r.body
    message = r.json()["message"]
    assert "The write may be stored on " in message, message
    assert sum(node_id[:16] in message for node_id in storage) == 1, message  # no second node asked
    wait_converged(c.nodes, ("k2v_item",))
    raw = [v for k, v in local_keys(c.nodes[0]).items() if k.endswith(b"k")]
    for item in (K2VItem.decode(x) for x in raw):
        assert len(item.items) == 1 and item.values() == [b"once"], item  # one dot: stored once


def test_layout_change_under_load_add_a_node_then_remove_one(cluster, tmp_path):
    c = cluster()
    a, b, old = c.nodes
    history = History()
    wl = Workload(history, c.clients(), c.bucket, threads=4, keys_per_thread=8).start()
    try:
        wait_acked(history, 0, 20)
        new = make_node(tmp_path / "n3", 3, FAULT_CONFIG)
        join(new, a)
        c.extra["n3"] = new
        wait_for(lambda: all(new.node_id in up_ids(n) for n in c.nodes), timeout=20)
        v2 = apply_layout(c.nodes + [new], [new], via=a)
        wait_for(lambda: bucket_visible(new, c.creds), timeout=20)
        wl.clients["n3"] = c.client(new)
        wl.endpoints = ["n0", "n1", "n2", "n3"]
        applied = time.monotonic()
        wait_acked(history, applied, 30)
        v3 = apply_layout(c.nodes + [new], [], remove=[old], via=b)
        assert v3 == v2 + 1
        removed = time.monotonic()
        wait_acked(history, removed, 30)
        # Old layout versions retire once every node has synced the new one.
        keep = [a, b, new]
        wait_for(lambda: all(len(n.admin("table.local_digest")["live_versions"]) == 1 for n in keep), timeout=40)
        wait_acked(history, time.monotonic(), 10)
    finally:
        wl.stop()
    assert_clean(history, wl)
    members = [a, b, new]
    wait_converged(members, ("k2v_item", "k2v_index_counter"))
    final_check(history, c.clients(members), c.bucket)
    assert_clean(history)
    wait_index_matches(history, c.clients(members), c.bucket)
    # The removed node handed its data off and dropped it.
    wait_for(lambda: old.admin("table.local_digest")["tables"]["k2v_item"]["items"] == 0, timeout=30)


def test_clock_set_back_an_hour_timestamps_stay_monotone_and_no_write_is_hidden(cluster, monkeypatch):
    c = cluster()
    a, b, skewed = c.nodes
    history = History()
    clients = c.clients()
    me = node_number(bytes.fromhex(skewed.node_id))

    def my_ts(r) -> int:
        return CausalContext.parse(r.token).get(me)

    # Before: writes coordinated by the node to be skewed.
    keys = [("clock", f"k{i}") for i in range(4)]
    for key in keys:
        assert write_item(history, clients["n2"], "n2", c.bucket, key).acked
    before = [read_item(history, clients["n0"], "n0", c.bucket, key) for key in keys]
    ts_before = max(my_ts(r) for r in before)
    assert ts_before > 0
    # A key written then deleted: its index counters were last updated at the right time.
    gone = ("clock-gone", "a")
    w0 = write_item(history, clients["n2"], "n2", c.bucket, gone)
    r = read_item(history, clients["n2"], "n2", c.bucket, gone)
    assert w0.acked and write_item(history, clients["n2"], "n2", c.bucket, gone, read=r, delete=True).acked

    # Its wall clock goes back by an hour (restart with the fault-injection offset).
    skewed.kill()
    monkeypatch.setenv("GARAGEKV_CLOCK_OFFSET_MS", str(-3_600_000))
    skewed.start()
    monkeypatch.delenv("GARAGEKV_CLOCK_OFFSET_MS")
    wait_for(lambda: node_up_for(a, skewed) and node_up_for(skewed, a) and node_up_for(skewed, b), timeout=20)

    # 1. A write with the token of a read that saw the old value replaces it, though its clock is behind.
    r0 = read_item(history, clients["n2"], "n2", c.bucket, keys[0])
    w = write_item(history, clients["n2"], "n2", c.bucket, keys[0], read=r0)
    assert w.acked, w.detail
    for via, client in clients.items():
        r = read_item(history, client, via, c.bucket, keys[0])
        assert r is not None and r.seen == {w.id}, (via, r)
        assert my_ts(r) > ts_before, "the skewed node's timestamp went back"
    # 2. A normal node's write after it, with a token, replaces the skewed node's write.
    r1 = read_item(history, clients["n0"], "n0", c.bucket, keys[0])
    w1 = write_item(history, clients["n0"], "n0", c.bucket, keys[0], read=r1)
    assert w1.acked
    for via, client in clients.items():
        r = read_item(history, client, via, c.bucket, keys[0])
        assert r is not None and r.seen == {w1.id}, (via, r)
    # 3. Blind writes from both sides on the same key are concurrent: neither hides the other.
    wa = write_item(history, clients["n0"], "n0", c.bucket, keys[1])
    ws = write_item(history, clients["n2"], "n2", c.bucket, keys[1])
    assert wa.acked and ws.acked
    for via, client in clients.items():
        r = read_item(history, client, via, c.bucket, keys[1])
        assert r is not None and r.seen >= {wa.id, ws.id}, (via, r)
    # 4. The skewed node's timestamps keep increasing, write after write.
    stamps = []
    for _ in range(5):
        r = read_item(history, clients["n2"], "n2", c.bucket, keys[2])
        assert write_item(history, clients["n2"], "n2", c.bucket, keys[2], read=r).acked
        stamps.append(my_ts(read_item(history, clients["n1"], "n1", c.bucket, keys[2])))
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps) and stamps[0] > ts_before, stamps
    # 5. Keys written through the skewed node are counted in the index like any other: new ones,
    # and one whose counters it last updated before its clock went back.
    for i in range(3):
        assert write_item(history, clients["n2"], "n2", c.bucket, ("clock-new", f"s{i}")).acked
    assert write_item(history, clients["n2"], "n2", c.bucket, gone).acked
    want = {"clock": 4, "clock-new": 3, "clock-gone": 1}
    for client in clients.values():
        wait_for(
            lambda client=client: (
                {pk: n for pk, n in index_entries(client, c.bucket).items() if pk.startswith("clock")} == want
            ),
            timeout=20,
        )
    final_check(history, clients, c.bucket)
    assert_clean(history)
    wait_converged(c.nodes, ("k2v_item", "k2v_index_counter"))


@pytest.mark.skipif(not proxy_supported(), reason="the fault proxy needs /proc (Linux)")
def test_deleted_values_do_not_come_back_when_a_cut_off_replica_returns_after_the_gc_delay(cluster):
    """Tombstone GC (1 s delay here) must wait for the replica that missed the deletes."""
    c = cluster(proxy=True, extra="tombstone_gc_delay_sec = 1\n")
    history = History()
    clients = c.clients()
    by_id = sorted(c.nodes, key=lambda n: n.node_id)
    leader, victim = by_id[0], by_id[-1]  # GC runs on the smallest node id; cut off another one
    lname, vname = c.name(leader), c.name(victim)
    keys = [(f"gc-{i}", "v") for i in range(20)]
    for key in keys:
        assert write_item(history, clients[lname], lname, c.bucket, key).acked
    wait_converged(c.nodes, ("k2v_item",))

    c.proxy.cut(vname, "drop")
    wait_for(lambda: node_down_for(leader, victim), timeout=20)
    for key in keys:
        r = read_item(history, clients[lname], lname, c.bucket, key)
        assert r is not None and len(r.seen) == 1
        assert write_item(history, clients[lname], lname, c.bucket, key, read=r, delete=True).acked

    def gc_postponed() -> bool:
        workers = leader.admin("worker.list")["workers"]
        gc = next(w for w in workers if w["name"] == "k2v_item GC")
        return gc["errors"] > 0 and "postponed" in (gc["last_error"] or "")

    # The leader's GC tried once the delay passed, and had to put it off: the victim is unreachable.
    wait_for(gc_postponed, timeout=20)
    assert leader.admin("table.local_digest")["tables"]["k2v_item"]["items"] == len(keys)

    c.proxy.heal(vname)
    wait_for(lambda: node_up_for(leader, victim) and node_up_for(victim, leader), timeout=30)
    # The tombstones reach the victim (anti-entropy), then GC collects them everywhere.
    wait_for(
        lambda: all(n.admin("table.local_digest")["tables"]["k2v_item"]["items"] == 0 for n in c.nodes),
        timeout=40,
        interval=0.3,
    )
    final_check(history, clients, c.bucket)
    assert_clean(history)
    for via, client in clients.items():
        left: dict = {}

        def index_empty(client=client, left=left) -> bool:
            left.clear()
            left.update({pk: n for pk, n in index_entries(client, c.bucket).items() if pk.startswith("gc-")})
            return not left

        try:
            wait_for(index_empty, timeout=20)
        except AssertionError:
            raise AssertionError(f"ReadIndex via {via} still lists deleted partition keys: {left}") from None
