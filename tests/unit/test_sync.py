"""Anti-entropy between in-process replicas over a fake network: push-only sync by range sums, failure
tolerance and retries, offload, triggers, and the coordinator that raises the sync tracker."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from garagekv.db.env import Database
from garagekv.db.writer import GroupCommitWriter
from garagekv.net.errors import NetError
from garagekv.rpc.endpoint import EndpointRegistry
from garagekv.table.anti_entropy import (
    SYNC_BATCH,
    SyncCoordinator,
    SyncError,
    TableSyncer,
    layout_sync_digest,
    unsyncable_entry_bytes,
)
from garagekv.table.data import TableData
from garagekv.table.messages import ItemsPush
from garagekv.table.replication import SyncPartition
from garagekv.table.sums_worker import RangeSumsWorker
from garagekv.util import codec
from garagekv.util.background import WorkerState
from garagekv.util.codec import blake2sum
from garagekv.util.errors import EntityTooLarge
from tests.support.registers import Reg, RegSchema
from tests.support.tables import FakeHistory, FakeLayout

A, B, C = (bytes([i]) * 32 for i in (1, 2, 3))


def part_hash(p: int) -> bytes:
    return bytes([p]) + b"\x00" * 31


# ---- fakes --------------------------------------------------------------------------------------


@dataclass
class FakeNet:
    registries: dict[bytes, EndpointRegistry] = field(default_factory=dict)
    down: set[bytes] = field(default_factory=set)
    calls: list[tuple[bytes, bytes, str]] = field(default_factory=list)
    max_record: int | None = None  # refuse bigger messages, as a real connection does


class FakeNetApp:
    def __init__(self, net: FakeNet, node: bytes) -> None:
        self.net, self.node = net, node
        self.on_connect: list = []

    async def call(self, node: bytes, path: str, msg: Any, timeout: float | None = None) -> Any:
        if node in self.net.down:
            raise NetError(f"Not connected: {node.hex()[:8]}")
        encoded = codec.encode(msg)
        if self.net.max_record is not None and len(encoded) > self.net.max_record:
            raise EntityTooLarge(f"RPC request of {len(encoded)} bytes exceeds the frame limit")
        self.net.calls.append((self.node, node, msg[0]))
        wire = codec.decode(encoded)  # what crosses the wire
        return codec.decode(codec.encode(await self.net.registries[node].dispatch(self.node, path, wire)))


class FakeReplication:
    """Partition p is stored by ``owners.get(p, default)``; one write set, a fixed quorum."""

    def __init__(self, node_id: bytes, default: list[bytes], quorum: int, owners: dict | None = None) -> None:
        self.node_id, self.default, self.quorum, self.owners = node_id, default, quorum, owners or {}

    def storage_nodes(self, h: bytes) -> list[bytes]:
        return sorted(self.owners.get(h[0], self.default))

    def write_sets(self, h: bytes) -> list[list[bytes]]:
        return [self.storage_nodes(h)]

    def write_quorum(self) -> int:
        return self.quorum

    def sync_partitions(self) -> list[SyncPartition]:
        return [
            SyncPartition(p, part_hash(p), part_hash(p + 1) if p < 255 else None, self.storage_nodes(part_hash(p)))
            for p in range(256)
        ]


@dataclass
class FakeTable:
    data: TableData
    replication: FakeReplication
    netapp: FakeNetApp
    schema: Any
    timeout: float = 5.0
    peers: Any = None


@dataclass
class Replica:
    node: bytes
    db: Database
    writer: GroupCommitWriter
    data: TableData
    syncer: TableSyncer
    layout: FakeLayout

    async def put(self, *entries: Reg) -> None:
        await self.data.merge_many(list(entries))

    def root(self, p: int) -> int:
        with self.db.read() as txn:
            return self.data.sums.partition_sum(txn, p)

    def items(self) -> dict[bytes, bytes]:
        with self.db.read() as txn:
            return dict(txn.cursor(db=self.data.store))


@pytest.fixture
def cluster(tmp_path):
    net = FakeNet()
    made: list[Replica] = []

    def make(
        node: bytes,
        storage: list[bytes],
        quorum: int = 2,
        owners: dict | None = None,
        coordinator: SyncCoordinator | None = None,
        layout: FakeLayout | None = None,
    ) -> Replica:
        db = Database(tmp_path / node.hex()[:4], map_size=64 << 20, fsync=False)
        writer = GroupCommitWriter(db)
        data = TableData(db, writer, RegSchema())
        registry = EndpointRegistry()
        net.registries[node] = registry
        table = FakeTable(data, FakeReplication(node, storage, quorum, owners), FakeNetApp(net, node), data.schema)
        layout = layout or FakeLayout(FakeHistory(storage))
        syncer = TableSyncer(table, layout, registry, coordinator, startup_delay=0, interval=600)
        r = Replica(node, db, writer, data, syncer, layout)
        made.append(r)
        return r

    make.net = net
    yield make
    for r in made:
        r.writer.close()
        r.db.close()


def regs(part: int, n: int, start: int = 0, value: int = 1) -> list[Reg]:
    return [Reg(part_hash(part), f"k{i}".encode(), value) for i in range(start, start + n)]


async def full_sync(r: Replica, max_steps: int = 2000) -> None:
    """Run the worker until its full sync completes."""
    r.syncer.add_full_sync()
    done = r.syncer.full_syncs
    for _ in range(max_steps):
        await r.syncer.work()
        if r.syncer.full_syncs > done:
            return
    raise AssertionError("full sync did not complete")


# ---- do_sync_with -------------------------------------------------------------------------------


async def test_equal_replicas_exchange_only_their_top_sums(cluster):
    a, b = cluster(A, [A, B]), cluster(B, [A, B])
    for r in (a, b):
        await r.put(*regs(5, 50))
    assert a.root(5) == b.root(5) != 0
    cluster.net.calls.clear()
    await a.syncer.do_sync_with(5, B)
    assert cluster.net.calls == [(A, B, "sums")]
    # An empty local partition sends nothing at all: the peer pushes what it has.
    await a.syncer.do_sync_with(6, B)
    assert cluster.net.calls == [(A, B, "sums")]


async def test_push_only_sync_sends_just_the_differences(cluster):
    a, b = cluster(A, [A, B]), cluster(B, [A, B])
    common = regs(5, 3000)
    await a.put(*common, *regs(5, 5, start=10000), Reg(part_hash(5), b"k7", 9))  # 5 new + 1 newer
    await b.put(*common, *regs(5, 3, start=20000))  # 3 that only b has
    cluster.net.calls.clear()
    await a.syncer.do_sync_with(5, B)
    sent = [c for c in cluster.net.calls if c[2] == "items"]
    assert a.syncer.items_sent == 6  # exactly the entries that differ
    assert len(sent) <= 6
    # A few sums requests per level and one elements request per differing chunk, not a walk of 3,000.
    assert len(cluster.net.calls) < 40
    a_items, b_items = a.items(), b.items()
    assert all(b_items[k] == v for k, v in a_items.items())  # b has everything a has
    assert len(b_items) == len(a_items) + 3  # and a received nothing (push-only)
    await b.syncer.do_sync_with(5, A)
    assert a.items() == b.items() and a.root(5) == b.root(5)


async def test_a_peer_holding_nothing_of_a_range_gets_it_without_comparing_entries(cluster):
    a, b = cluster(A, [A, B]), cluster(B, [A, B])
    await a.put(*regs(5, 500))
    cluster.net.calls.clear()
    await a.syncer.do_sync_with(5, B)
    assert len(b.items()) == 500
    assert [c[2] for c in cluster.net.calls].count("elements") == 0


async def test_a_node_rebuilding_its_sums_neither_syncs_nor_answers_until_done(cluster):
    a, b = cluster(A, [A, B]), cluster(B, [A, B])
    await a.put(*regs(5, 40))
    await b.put(*regs(5, 30))
    worker = RangeSumsWorker(b.data)
    assert await worker.rebuild() == 30
    with pytest.raises(SyncError, match="being rebuilt"):
        await b.syncer.do_sync_with(5, A)
    with pytest.raises(Exception, match="being rebuilt"):
        await a.syncer.do_sync_with(5, B)
    assert worker.progress()["queue"] == 30
    await worker.finish()
    assert worker.progress() == {"done": 30, "queue": 0}
    await a.syncer.do_sync_with(5, B)
    assert a.items() == b.items() and a.root(5) == b.root(5)


async def test_items_are_sent_in_bounded_batches(cluster):
    a, b = cluster(A, [A, B]), cluster(B, [A, B])
    await a.put(*regs(9, 2 * SYNC_BATCH + 10))
    cluster.net.calls.clear()
    await a.syncer.do_sync_with(9, B)
    assert [c[2] for c in cluster.net.calls].count("items") == 3
    assert len(b.items()) == 2 * SYNC_BATCH + 10


# ---- full syncs ---------------------------------------------------------------------------------


async def test_full_sync_converges_three_replicas(cluster):
    rs = [cluster(n, [A, B, C]) for n in (A, B, C)]
    await rs[0].put(*regs(1, 20), *regs(200, 5))
    await rs[1].put(*regs(1, 10, start=15, value=3))
    await rs[2].put(*regs(77, 7))
    for r in rs:
        await full_sync(r)
    assert rs[0].items() == rs[1].items() == rs[2].items()
    assert len(rs[0].items()) == 25 + 5 + 7
    for r in rs:
        assert r.syncer.progress()["full_syncs"] == 1 and r.syncer.progress()["total"] == 0


async def test_failures_within_quorum_tolerance_do_not_fail_the_partition(cluster):
    a = cluster(A, [A, B, C], quorum=2)
    cluster(B, [A, B, C])
    cluster(C, [A, B, C])
    await a.put(*regs(3, 4))
    cluster.net.down.add(C)  # one of three replicas down: 1 <= 3 - 2 tolerated
    await full_sync(a)
    assert a.layout.synced == []  # no coordinator here
    cluster.net.down.add(B)  # two down: too many
    a.syncer.add_full_sync()
    with pytest.raises(SyncError, match="too many replicas"):
        for _ in range(300):
            await a.syncer.work()


async def test_failed_partition_is_retried_after_the_others(cluster):
    a = cluster(A, [A, B], quorum=2)
    b = cluster(B, [A, B])
    await a.put(*regs(3, 4), *regs(4, 4))
    cluster.net.down.add(B)
    a.syncer.add_full_sync()
    errors = 0
    for _ in range(600):
        try:
            await a.syncer.work()
        except SyncError:
            errors += 1
            if errors == 2:
                cluster.net.down.discard(B)  # the peer comes back
        if a.syncer.full_syncs:
            break
    assert errors == 2 and a.syncer.full_syncs == 1
    progress = a.syncer.progress()
    assert progress["version"] == 1 and progress["queue"] == 0
    assert len(b.items()) == 8


async def test_new_request_replaces_a_running_full_sync(cluster):
    a = cluster(A, [A, B])
    cluster(B, [A, B])
    a.syncer.add_full_sync()
    for _ in range(10):
        await a.syncer.work()
    assert a.syncer.progress()["done"] == 10 and a.syncer.progress()["total"] == 256
    a.syncer.add_full_sync()
    await a.syncer.work()
    assert a.syncer.progress()["done"] == 1


# ---- offload ------------------------------------------------------------------------------------


async def test_offload_hands_partitions_to_their_owners_then_drops_them(cluster):
    owners = {p: [B, C] for p in range(256)}
    owners[8] = [A, B]  # a keeps partition 8
    a = cluster(A, [B, C], quorum=2, owners=owners)
    b = cluster(B, [B, C], owners=owners)
    c = cluster(C, [B, C], owners=owners)
    kept = regs(8, 3)
    await a.put(*regs(2, 300), *regs(250, 2), *kept)
    await full_sync(a)
    assert sorted(a.items()) == sorted(e.tree_key() for e in kept)
    assert a.syncer.items_offloaded == 302
    assert len(b.items()) == 305 and len(c.items()) == 302  # partition 8 went to b only (a kept it)
    assert a.root(2) == 0 and a.root(8) != 0


async def test_offload_needs_every_owner_and_keeps_changed_items(cluster, monkeypatch):
    owners = {p: [B, C] for p in range(256)}
    a = cluster(A, [B, C], quorum=2, owners=owners)
    b = cluster(B, [B, C], owners=owners)
    cluster(C, [B, C], owners=owners)
    await a.put(*regs(2, 5))
    sp = a.syncer.replication.sync_partitions()[2]
    cluster.net.down.add(C)
    cluster.net.calls.clear()
    with pytest.raises(Exception, match="quorum"):
        await a.syncer.offload_partition(sp)
    assert len(a.items()) == 5  # nothing deleted
    cluster.net.down.clear()
    cluster.net.calls.clear()

    # An item written while its batch is in flight survives this round, then goes next round.
    real_call = a.syncer._call
    changed = []

    async def call(node, msg):
        result = await real_call(node, msg)
        if isinstance(msg, ItemsPush) and not changed:
            changed.append(True)
            await a.data.merge(Reg(part_hash(2), b"k0", 50))
        return result

    monkeypatch.setattr(a.syncer, "_call", call)
    await a.syncer.offload_partition(sp)
    assert a.items() == {} and len(calls_of(cluster.net, "items")) == 4  # 2 rounds x 2 owners
    assert b.data.get(part_hash(2) + b"k0").value == 50


# ---- entries too big for one message ---------------------------------------------------------------

FRAME = 4000  # a Reg can be made bigger than this (a value of 4200 digits)


def small_frames(cluster, *replicas: Replica) -> Reg:
    """Frames of ``FRAME`` bytes on the fake network; returns an entry that cannot cross it."""
    cluster.net.max_record = FRAME
    for r in replicas:
        assert r.syncer.max_entry_bytes == unsyncable_entry_bytes()  # the real frame's, by default
        r.syncer.max_entry_bytes = FRAME - 100
    return Reg(part_hash(3), b"big", 10**4200)


async def test_an_entry_too_big_to_send_is_skipped_reported_and_the_rest_syncs(cluster):
    a, b = cluster(A, [A, B]), cluster(B, [A, B])
    big = small_frames(cluster, a, b)
    assert len(big.encode()) > FRAME
    await a.put(*regs(3, 10), big, *regs(4, 5))
    await full_sync(a)  # completes: the big entry does not hold the full sync forever
    assert len(b.items()) == 15 and big.tree_key() not in b.items()
    progress = a.syncer.progress()
    assert progress["full_syncs"] == 1
    assert progress["unsyncable"].startswith("partition 3: 1 entry over")
    assert a.syncer.unsyncable == {3: {big.tree_key(): len(big.encode())}}
    # Once the entry is gone (deleted or shrunk by its owner), the next sync clears the report.
    await a.data.delete_if_equal_hash([(big.tree_key(), blake2sum(big.encode()))])
    await full_sync(a)
    assert a.syncer.progress()["unsyncable"] is None and a.syncer.unsyncable_entries() == 0


async def test_offload_keeps_an_entry_too_big_to_send_and_hands_over_the_rest(cluster):
    owners = {p: [B, C] for p in range(256)}
    a = cluster(A, [B, C], quorum=2, owners=owners)
    b = cluster(B, [B, C], owners=owners)
    c = cluster(C, [B, C], owners=owners)
    big = small_frames(cluster, a, b, c)
    await a.put(*regs(3, 20), big)  # the big one sorts first: later reads must get past it
    await full_sync(a)
    assert list(a.items()) == [big.tree_key()]  # kept here, not lost
    assert len(b.items()) == len(c.items()) == 20
    assert a.syncer.unsyncable_entries() == 1


def calls_of(net: FakeNet, kind: str) -> list:
    return [c for c in net.calls if c[2] == kind]


# ---- triggers and the coordinator ------------------------------------------------------------------


async def test_layout_digest_change_and_member_reconnect_trigger_full_syncs(cluster):
    layout = FakeLayout(FakeHistory([A, B]))
    a = cluster(A, [A, B], layout=layout)
    await full_sync(a)
    assert await a.syncer.work() is WorkerState.IDLE
    layout.changed()  # trackers moved, digest unchanged: nothing
    assert await a.syncer.work() is WorkerState.IDLE
    layout.history.ack = 2
    assert layout_sync_digest(layout.history) == (1, 2, 1)
    layout.changed()
    assert await a.syncer.work() is WorkerState.BUSY
    assert a.syncer.progress()["version"] == 2 and a.syncer.progress()["total"] == 256
    for _ in range(300):
        await a.syncer.work()

    class Conn:
        def __init__(self, peer_id):
            self.peer_id = peer_id

    netapp = a.syncer.table.netapp
    netapp.on_connect[0](Conn(b"\x09" * 32))  # not a layout member (e.g. the CLI): ignored
    assert a.syncer._requested_at is None
    netapp.on_connect[0](Conn(B))
    assert a.syncer._requested_at is not None
    for _ in range(3):  # a pending notification may end the first wait early
        await asyncio.wait_for(a.syncer.wait_for_work(), 3)
        if await a.syncer.work() is WorkerState.BUSY:
            break
    else:
        raise AssertionError("no full sync after a member reconnected")


async def test_periodic_full_sync_when_idle(cluster):
    a = cluster(A, [A])
    await full_sync(a)
    now = [a.syncer.clock()]
    a.syncer.clock = lambda: now[0]
    a.syncer.interval = 5
    a.syncer._next_periodic = now[0] + 5
    assert await a.syncer.work() is WorkerState.IDLE
    now[0] += 6
    await a.syncer.wait_for_work()
    assert await a.syncer.work() is WorkerState.BUSY


async def test_coordinator_raises_the_tracker_when_every_table_synced(cluster):
    layout = FakeLayout(FakeHistory([A, B], version=3, ack=3, min_stored=2))
    coord = SyncCoordinator(layout)
    a1 = cluster(A, [A, B], coordinator=coord, layout=layout)
    coord.register("other")
    await full_sync(a1)
    assert layout.synced == [] or layout.synced == [0]
    assert coord.synced == {"reg": 3, "other": 0}
    coord.table_synced("other", 2)
    assert layout.synced[-1] == 2
    coord.table_synced("other", 3)
    assert layout.synced[-1] == 3 and coord.synced_version() == 3


# ---- layout manager and config ------------------------------------------------------------------


def test_layout_manager_mark_synced_persists_and_announces(tmp_path):
    from garagekv.rpc.layout.manager import LayoutManager

    lm = LayoutManager(A, tmp_path, 1, "consistent")
    seen: list[int] = []
    lm.listeners.append(lambda h: seen.append(h.update_trackers.sync_map.get(A, -1)))
    assert lm.mark_synced(3) is True
    assert seen == [3]
    assert lm.mark_synced(2) is False and lm.mark_synced(3) is False  # only ever raised
    assert seen == [3]
    again = LayoutManager(A, tmp_path, 1, "consistent")
    assert again.history.update_trackers.sync_map.get(A, -1) == 3


def test_sync_config_keys():
    from garagekv.util.config import parse_config
    from garagekv.util.errors import ConfigError

    base = {"metadata_dir": "/var/lib/garagekv/meta", "s3_api": {"s3_region": "garage"}}
    c = parse_config(base)
    assert (c.sync_interval_sec, c.sync_startup_delay_sec) == (600, 10)
    c = parse_config({**base, "sync_interval_sec": 5, "sync_startup_delay_sec": 0})
    assert (c.sync_interval_sec, c.sync_startup_delay_sec) == (5, 0)
    with pytest.raises(ConfigError, match="sync_interval_sec"):
        parse_config({**base, "sync_interval_sec": 0})


def test_items_messages_are_bounded_by_count_and_bytes():
    from garagekv.table.anti_entropy import chunks

    assert chunks([]) == []
    assert [len(c) for c in chunks([b"x"] * 600)] == [256, 256, 88]
    big = [b"a" * 40, b"b" * 40, b"c" * 100, b"d" * 10]
    assert chunks(big, max_bytes=90) == [[b"a" * 40, b"b" * 40], [b"c" * 100], [b"d" * 10]]


def test_worker_list_shows_partitions_that_cannot_sync():
    from garagekv.cli.maintenance import format_worker, format_workers

    w = {
        "tid": 7,
        "name": "k2v_item sync",
        "state": "idle",
        "errors": 0,
        "consecutive_errors": 0,
        "last_error": None,
        "done": 0,
        "total": 0,
        "queue": 0,
        "unsyncable": "partition 3: 1 entry over 16838656 bytes (too big for an RPC message) not synced",
    }
    assert "cannot sync partition 3: 1 entry over" in format_workers([w])
    assert "Unsyncable: partition 3" in format_worker(w)
    assert "cannot sync" not in format_workers([{**w, "unsyncable": None}])
