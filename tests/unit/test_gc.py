"""Tombstone GC: the to-do list, candidate selection, grouping, and both phases between in-process nodes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from garagekv.db.env import Database
from garagekv.db.writer import GroupCommitWriter
from garagekv.net.errors import NetError
from garagekv.rpc.endpoint import EndpointRegistry
from garagekv.table.data import TableData
from garagekv.table.gc import (
    Candidate,
    GcPostponed,
    TableGc,
    group_by_other_nodes,
    parse_todo_key,
    select_candidates,
    todo_key,
)
from garagekv.table.table import Table
from garagekv.util.background import WorkerState
from garagekv.util.codec import blake2sum
from tests.support.tables import Lww, LwwSchema

P1 = b"\x01" * 32
P2 = b"\x02" * 32
DELAY = 10_000


# ---- pure logic ---------------------------------------------------------------------------------


def test_todo_key_roundtrip_and_time_order():
    k1 = todo_key(5, P1 + b"zz")
    k2 = todo_key(6, P1 + b"aa")
    assert parse_todo_key(k1) == (5, P1 + b"zz")
    assert k1 < k2  # the list is ordered by tombstone time, whatever the tree key
    with pytest.raises(ValueError):
        parse_todo_key(b"\x00" * 8 + b"short")


def _todo(entries: dict[bytes, bytes], ts: int, key: bytes, raw: bytes) -> tuple[bytes, bytes]:
    entries[key] = raw
    return todo_key(ts, key), blake2sum(raw)


def test_select_keeps_eligible_current_tombstones_and_drops_stale_ones():
    store: dict[bytes, bytes] = {}
    old_same = _todo(store, 100, P1 + b"a", b"tomb-a")
    changed = _todo(store, 200, P1 + b"b", b"tomb-b")
    store[P1 + b"b"] = b"live again"  # rewritten since: the to-do entry is stale
    gone = (todo_key(300, P1 + b"c"), blake2sum(b"tomb-c"))  # not stored any more
    young = _todo(store, 400, P2 + b"d", b"tomb-d")
    sel = select_candidates([old_same, changed, gone, young], store.get, now=300 + DELAY, delay_ms=DELAY)
    assert [c.tree_key for c in sel.ready] == [P1 + b"a"]
    assert sel.ready[0].raw == b"tomb-a" and sel.ready[0].value_hash == blake2sum(b"tomb-a")
    assert sel.stale == [changed, gone]
    assert sel.next_deadline_ms == 400 + DELAY


def test_select_stops_at_first_young_entry_and_respects_batch():
    store: dict[bytes, bytes] = {}
    rows = [_todo(store, i, P1 + bytes([i]), b"t%d" % i) for i in range(10)]
    sel = select_candidates(rows, store.get, now=DELAY + 4, delay_ms=DELAY)
    assert len(sel.ready) == 5 and sel.next_deadline_ms == 5 + DELAY
    sel = select_candidates(rows, store.get, now=DELAY + 100, delay_ms=DELAY, batch=3)
    assert len(sel.ready) == 3 and sel.next_deadline_ms is None


def test_group_by_other_storage_nodes():
    a, b, c, d = (bytes([i]) * 32 for i in range(1, 5))
    placement = {P1: [a, b, c], P2: [a, c, d]}
    cands = [Candidate(b"k", h + bytes([i]), b"h", b"r") for i, h in enumerate([P1, P2, P1])]
    groups = group_by_other_nodes(cands, lambda h: placement[h], a)
    assert set(groups) == {(b, c), (c, d)}
    assert [x.tree_key[:32] for x in groups[(b, c)]] == [P1, P1]
    # A node that no longer stores the partition still pushes to every storage node.
    assert set(group_by_other_nodes(cands[:1], lambda h: placement[h], d)) == {(a, b, c)}
    # Standalone: nobody else to ask.
    assert group_by_other_nodes(cands[:1], lambda h: [a], a) == {(): cands[:1]}


# ---- in-process nodes ---------------------------------------------------------------------------


class Cluster:
    """Nodes sharing a fake network: ``down`` nodes fail every call."""

    def __init__(self) -> None:
        self.nodes: dict[bytes, Node] = {}
        self.down: set[bytes] = set()
        self.placement: list[bytes] = []
        self.clock = 1_000_000

    async def call(self, to: bytes, path: str, msg: Any, timeout: float | None = None) -> Any:
        if to in self.down:
            raise NetError("Not connected")
        return await self.nodes[to].registry.dispatch(b"peer", path, msg)


class Net:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    async def call(self, node: bytes, path: str, msg: Any, timeout: float | None = None) -> Any:
        return await self.cluster.call(node, path, msg, timeout)


class Rep:
    def __init__(self, cluster: Cluster, node_id: bytes) -> None:
        self.cluster = cluster
        self.node_id = node_id

    def storage_nodes(self, h32: bytes) -> list[bytes]:
        return sorted(self.cluster.placement)


class Node:
    def __init__(self, cluster: Cluster, node_id: bytes, path) -> None:
        self.id = node_id
        self.db = Database(path, map_size=32 << 20)
        self.writer = GroupCommitWriter(self.db)
        self.schema = LwwSchema()
        self.registry = EndpointRegistry()
        self.data = TableData(self.db, self.writer, self.schema)
        self.table = Table(self.data, Rep(cluster, node_id), Net(cluster), self.registry)
        self.gc = TableGc(self.table, self.db, self.writer, DELAY / 1000, self.registry, clock=lambda: cluster.clock)
        cluster.nodes[node_id] = self

    async def put(self, key: bytes, ts: int, value: bytes) -> None:
        await self.data.merge(Lww(key, ts, value))

    def has(self, key: bytes) -> bool:
        return self.data.get_raw(key) is not None

    def close(self) -> None:
        self.writer.close()
        self.db.close()


@pytest.fixture
def cluster(tmp_path):
    c = Cluster()
    ids = [bytes([i]) * 32 for i in (3, 1, 2)]  # the leader is the smallest id, not the first made
    for i, n in enumerate(ids):
        Node(c, n, tmp_path / f"n{i}")
    c.placement = list(ids)
    yield c
    for n in c.nodes.values():
        n.close()


def nodes(c: Cluster) -> list[Node]:
    return [c.nodes[n] for n in sorted(c.nodes)]


async def everywhere(c: Cluster, key: bytes, ts: int, value: bytes) -> None:
    for n in c.nodes.values():
        await n.put(key, ts, value)


async def test_only_the_partition_leader_records_tombstones(cluster):
    leader, b, c = nodes(cluster)
    await everywhere(cluster, P1 + b"k", 1, b"v")
    assert [len(n.gc) for n in (leader, b, c)] == [0, 0, 0]
    await everywhere(cluster, P1 + b"k", 2, b"")
    assert [len(n.gc) for n in (leader, b, c)] == [1, 0, 0]
    # Replaying the same tombstone changes nothing, so nothing more is recorded.
    await leader.put(P1 + b"k", 2, b"")
    assert len(leader.gc) == 1


async def test_two_phase_gc_deletes_everywhere_after_the_delay(cluster):
    leader, b, c = nodes(cluster)
    await everywhere(cluster, P1 + b"k", 1, b"v")
    await everywhere(cluster, P1 + b"k", 2, b"")
    await c.writer.submit(lambda tx: tx.delete(c.data.store, P1 + b"k"))  # c never got it
    assert await leader.gc.work() is WorkerState.IDLE  # too young
    assert leader.has(P1 + b"k") and len(leader.gc) == 1
    cluster.clock += DELAY
    assert await leader.gc.work() is WorkerState.BUSY
    assert not any(n.has(P1 + b"k") for n in (leader, b, c))
    assert len(leader.gc) == 0 and leader.gc.collected == 1
    assert await leader.gc.work() is WorkerState.IDLE
    # Deletions take the entry out of the range sums (c lost it behind their back) and tell the
    # schema (old, None).
    for n in (leader, b):
        with n.db.read() as txn:
            assert n.data.sums.partition_sum(txn, P1[0]) == 0
    for n in (leader, b, c):
        assert n.schema.updates[-1] == (b"", None)


async def test_an_unreachable_replica_postpones_gc(cluster):
    leader, b, c = nodes(cluster)
    await everywhere(cluster, P1 + b"k", 2, b"")
    cluster.clock += DELAY
    cluster.down.add(b.id)
    with pytest.raises(GcPostponed, match="postponed"):
        await leader.gc.work()
    assert all(n.has(P1 + b"k") for n in (leader, b, c)) and len(leader.gc) == 1
    assert leader.gc.postponed == 1
    cluster.down.clear()
    assert await leader.gc.work() is WorkerState.BUSY
    assert not any(n.has(P1 + b"k") for n in (leader, b, c))


async def test_phase_one_repairs_a_replica_that_missed_the_tombstone(cluster):
    leader, b, c = nodes(cluster)
    await everywhere(cluster, P1 + b"k", 1, b"v")
    await leader.put(P1 + b"k", 2, b"")  # only the leader saw the deletion
    cluster.clock += DELAY
    await leader.gc.work()
    # b and c got the tombstone in phase 1 (so the old value is gone) and then deleted it.
    assert not any(n.has(P1 + b"k") for n in (leader, b, c))
    assert (b"v", b"") in b.schema.updates and b.schema.updates[-1] == (b"", None)


async def test_a_newer_value_somewhere_survives(cluster):
    leader, b, c = nodes(cluster)
    await everywhere(cluster, P1 + b"k", 2, b"")
    await c.put(P1 + b"k", 3, b"new")  # written on c after the tombstone
    cluster.clock += DELAY
    await leader.gc.work()
    assert c.data.get(P1 + b"k").value == b"new"  # different hash: c keeps it
    assert not leader.has(P1 + b"k") and not b.has(P1 + b"k")  # anti-entropy brings "new" back


async def test_stale_todo_entries_are_dropped(cluster):
    leader, b, c = nodes(cluster)
    await everywhere(cluster, P1 + b"k", 2, b"")
    await everywhere(cluster, P1 + b"k", 3, b"back")
    cluster.clock += DELAY
    assert await leader.gc.work() is WorkerState.BUSY  # dropped the stale entry
    assert len(leader.gc) == 0 and all(n.has(P1 + b"k") for n in (leader, b, c))
    assert await leader.gc.work() is WorkerState.IDLE


async def test_a_new_tombstone_after_a_resurrection_is_collected(cluster):
    leader, b, c = nodes(cluster)
    await everywhere(cluster, P1 + b"k", 2, b"")
    await everywhere(cluster, P1 + b"k", 3, b"back")
    cluster.clock += 1
    await everywhere(cluster, P1 + b"k", 4, b"")
    assert len(leader.gc) == 2
    cluster.clock += DELAY
    while await leader.gc.work() is WorkerState.BUSY:
        pass
    assert len(leader.gc) == 0 and not any(n.has(P1 + b"k") for n in (leader, b, c))


async def test_groups_fail_independently(cluster, tmp_path):
    leader, b, c = nodes(cluster)
    d = Node(cluster, b"\x09" * 32, tmp_path / "d")
    # P1 on {leader, b, c}, P2 on {leader, c, d}
    cluster.placement = []
    groups = {P1: [leader.id, b.id, c.id], P2: [leader.id, c.id, d.id]}
    for n in cluster.nodes.values():
        n.table.replication.storage_nodes = lambda h: sorted(groups[h])
    for n in (leader, b, c):
        await n.put(P1 + b"x", 1, b"")
    for n in (leader, c, d):
        await n.put(P2 + b"y", 1, b"")
    assert len(leader.gc) == 2
    cluster.clock += DELAY
    cluster.down.add(d.id)
    with pytest.raises(GcPostponed):
        await leader.gc.work()
    assert not leader.has(P1 + b"x") and not b.has(P1 + b"x")  # the healthy group went ahead
    assert leader.has(P2 + b"y") and len(leader.gc) == 1
    cluster.down.clear()
    await leader.gc.work()
    assert not any(n.has(P2 + b"y") for n in (leader, c, d))


async def test_standalone_node_collects_locally(tmp_path):
    c = Cluster()
    n = Node(c, b"\x05" * 32, tmp_path / "solo")
    c.placement = [n.id]
    try:
        await n.put(P1 + b"k", 1, b"")
        c.clock += DELAY
        await n.gc.work()
        assert not n.has(P1 + b"k") and len(n.gc) == 0
    finally:
        n.close()


async def test_wait_for_work_sleeps_until_the_first_deadline(cluster):
    leader, _, _ = nodes(cluster)
    await leader.put(P1 + b"k", 1, b"")
    cluster.clock += DELAY - 200
    assert await leader.gc.work() is WorkerState.IDLE
    await leader.gc.wait_for_work()  # returns at once: woken by the new tombstone
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await leader.gc.wait_for_work()
    assert 0.1 < loop.time() - t0 < 1.0
    assert leader.gc.progress() == {"done": 0, "queue": 1}


async def test_gc_rpc_rejects_malformed_requests(cluster):
    leader, _, _ = nodes(cluster)
    from garagekv.util.errors import BadRequest

    for msg in (None, ["update"], ["nope", []], ["update", "x"]):
        with pytest.raises(BadRequest):
            await leader.gc._handle(b"x", msg)


async def test_delete_if_equal_hash(cluster):
    leader, _, _ = nodes(cluster)
    await leader.put(P1 + b"k", 1, b"v")
    raw = leader.data.get_raw(P1 + b"k")
    assert await leader.data.delete_if_equal_hash([(P1 + b"k", blake2sum(b"other"))]) == 0
    assert leader.has(P1 + b"k")
    assert await leader.data.delete_if_equal_hash([(P1 + b"k", blake2sum(raw)), (P1 + b"zz", b"h")]) == 1
    assert not leader.has(P1 + b"k") and leader.schema.updates[-1] == (b"v", None)


# ---- found by mutation testing --------------------------------------------------------------


def test_todo_key_of_an_empty_sort_key():
    """A tree key is a 32-byte partition hash plus a sort key that may be empty."""
    assert parse_todo_key(todo_key(7, P1)) == (7, P1)
    with pytest.raises(ValueError):
        parse_todo_key(todo_key(7, P1)[:-1])


async def test_counters_accumulate_over_batches_and_rounds(cluster):
    leader, b, _ = nodes(cluster)
    for k in (b"a", b"b"):
        await everywhere(cluster, P1 + k, 2, b"")
    cluster.clock += DELAY
    assert await leader.gc.work() is WorkerState.BUSY
    assert leader.gc.collected == 2  # both tombstones of the batch count
    await everywhere(cluster, P1 + b"c", 2, b"")
    cluster.clock += DELAY
    await leader.gc.work()
    assert leader.gc.collected == 3 and leader.gc.last_collect_at is not None
    await everywhere(cluster, P1 + b"d", 2, b"")
    cluster.clock += DELAY
    cluster.down.add(b.id)
    for _ in range(2):
        with pytest.raises(GcPostponed):
            await leader.gc.work()
    assert leader.gc.postponed == 2


async def test_a_tombstone_is_recorded_when_the_layout_cannot_say_who_leads(cluster, monkeypatch):
    """Recording too much is harmless (the leader check runs again at collection time);
    recording too little would leave the tombstone forever."""
    _, b, _ = nodes(cluster)

    def no_layout(h32: bytes) -> list[bytes]:
        raise RuntimeError("layout in flux")

    monkeypatch.setattr(b.table.replication, "storage_nodes", no_layout)
    await b.put(P1 + b"k", 2, b"")
    assert len(b.gc) == 1


async def test_recording_a_tombstone_wakes_the_worker(cluster):
    leader, _, _ = nodes(cluster)
    await leader.gc._wake.wait(0)  # clears any earlier wake-up
    assert not leader.gc._wake._ev().is_set()
    await leader.put(P1 + b"k", 2, b"")
    assert leader.gc._wake._ev().is_set()


async def test_the_leader_is_chosen_per_partition(cluster, monkeypatch):
    """Leadership follows the tree key's partition (its first 32 bytes), not one global node."""
    leader, b, _ = nodes(cluster)
    homes = {P1: [leader.id, b.id], P2: [b.id]}
    for n in (leader, b):
        monkeypatch.setattr(n.table.replication, "storage_nodes", lambda h32: homes[h32])
    for n in (leader, b):
        await n.put(P1 + b"k", 2, b"")
        await n.put(P2 + b"k", 2, b"")
    assert (len(leader.gc), len(b.gc)) == (1, 1)


async def test_gc_calls_carry_the_table_timeout(cluster, monkeypatch):
    """A replica that never answers must postpone GC, not hang the worker."""
    leader, _, _ = nodes(cluster)
    seen: list[float | None] = []
    real_call = cluster.call

    async def call(to, path, msg, timeout=None):
        seen.append(timeout)
        return await real_call(to, path, msg, timeout)

    monkeypatch.setattr(cluster, "call", call)
    await everywhere(cluster, P1 + b"k", 2, b"")
    cluster.clock += DELAY
    await leader.gc.work()
    assert seen and all(t == leader.table.timeout and t is not None for t in seen)
