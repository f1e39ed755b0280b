"""A replicated table over an in-process fake network: batched updates and reads, and the
get_many budget that keeps big entries read together under the frame limit."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from garagekv.db.env import Database
from garagekv.db.writer import GroupCommitWriter
from garagekv.rpc.endpoint import EndpointRegistry
from garagekv.table import table as table_mod
from garagekv.table.data import TableData
from garagekv.table.table import Table
from tests.support import eventually
from tests.support.tables import IDS, Lww, LwwSchema, Net, Rep


@pytest.fixture
def nodes(tmp_path):
    out: dict[bytes, Any] = {}
    log: list = []
    for i, node_id in enumerate(IDS):
        db = Database(tmp_path / f"n{i}", map_size=64 << 20)
        writer = GroupCommitWriter(db)
        data = TableData(db, writer, LwwSchema())
        registry = EndpointRegistry()
        table = Table(data, Rep(node_id), Net(out, log), registry)
        out[node_id] = SimpleNamespace(db=db, writer=writer, data=data, registry=registry, table=table)
    yield out, log
    for n in out.values():
        n.writer.close()
        n.db.close()


def key(i: int) -> bytes:
    return bytes([7]) * 32 + b"k%d" % i


async def test_concurrent_writes_share_one_update_per_replica(nodes):
    ns, log = nodes
    a = ns[IDS[0]].table
    await asyncio.gather(*(a.insert(Lww(key(i), 1, b"v%d" % i)) for i in range(10)))
    updates = [(n, size) for n, kind, size in log if kind == "update"]
    assert sorted(updates) == [(IDS[1], 10), (IDS[2], 10)]
    # The write returned at quorum; the last replica finishes after it.
    await eventually(lambda: all(n.data.get_raw(key(i)) for n in ns.values() for i in range(10)))


async def test_big_entries_read_together_are_split_by_the_budget(nodes, monkeypatch):
    ns, log = nodes
    monkeypatch.setattr(table_mod, "GET_MANY_BUDGET", 3 << 20)
    big = {i: bytes([65 + i]) * (2 << 20) for i in range(3)}
    for n in ns.values():
        for i, v in big.items():
            await n.data.merge(Lww(key(i), 1, v))
    log.clear()
    got = await asyncio.gather(*(ns[IDS[0]].table.get(key(i)) for i in range(3)))
    assert [g.value for g in got] == [big[0], big[1], big[2]]
    gets = [size for _, kind, size in log if kind == "get_many"]
    # One batched call per peer carries the three keys; each answer holds only the first entry
    # (the next one passes the budget), and the two left out are asked again one by one.
    assert gets.count(3) == 2 and gets.count(1) >= 2 and len(gets) == gets.count(3) + gets.count(1)


async def test_missing_entries_read_as_none(nodes):
    ns, _ = nodes
    assert await ns[IDS[0]].table.get(key(99)) is None


async def test_updates_for_one_replica_over_a_frame_are_split_and_all_arrive(nodes, monkeypatch):
    """Three 6 MiB entries for each peer (18 MiB, over the frame limit) still reach every replica."""
    from garagekv.net.channel import MAX_RECORD_SIZE
    from garagekv.net.frame import encode_request
    from garagekv.util.errors import EntityTooLarge

    ns, log = nodes
    sizes: list[int] = []

    async def framed_call(self, node, path, msg, timeout=None):
        frame = encode_request(1, path, msg)
        if len(frame) > MAX_RECORD_SIZE:  # what a real connection refuses
            raise EntityTooLarge(f"RPC request of {len(frame)} bytes exceeds the frame limit")
        sizes.append(len(frame))
        return await self.nodes[node].registry.dispatch(b"peer", path, msg)

    monkeypatch.setattr(Net, "call", framed_call)
    big = [Lww(key(i), 1, bytes([65 + i]) * (6 << 20)) for i in range(3)]
    await ns[IDS[0]].table.insert_many(big)
    # The write returned at quorum; the last replica finishes after it.
    await eventually(lambda: all(n.data.get_raw(key(i)) for n in ns.values() for i in range(3)))
    for n in ns.values():
        assert [n.data.get(key(i)).value for i in range(3)] == [e.value for e in big]
    assert len(sizes) == 6 and max(sizes) < MAX_RECORD_SIZE  # one call per entry and peer


async def test_range_answers_stop_at_their_byte_budget_and_reads_go_on(nodes, monkeypatch):
    """Big entries read as a range never make one answer over the budget (a frame), yet every
    entry comes back, in order, merged over the quorum; limits and reverse scans still hold."""
    ns, log = nodes
    monkeypatch.setattr(table_mod, "RANGE_BUDGET", 2500)
    part = bytes([7]) * 32
    entries = {i: Lww(key(i), 1, bytes([65 + i]) * 1000) for i in range(10)}
    for n in ns.values():
        for e in entries.values():
            await n.data.merge(e)
    newer = Lww(key(4), 2, b"new" * 300)  # only one replica has the newest value of k4
    await ns[IDS[2]].data.merge(newer)
    want = sorted(entries, key=lambda i: b"k%d" % i)
    a = ns[IDS[0]].table
    got = await a.get_range(part)
    assert [sk for sk, _ in got] == [b"k%d" % i for i in want]
    assert {sk: e.value for sk, e in got}[b"k4"] in (newer.value, entries[4].value)
    assert len([1 for _, kind, _ in log if kind == "range"]) > 2  # several rounds
    got = await a.get_range(part, limit=4)
    assert [sk for sk, _ in got] == [b"k%d" % i for i in want[:4]]
    got = await a.get_range(part, reverse=True, limit=7)
    assert [sk for sk, _ in got] == [b"k%d" % i for i in reversed(want)][:7]
    answer = await ns[IDS[1]].table._handle(IDS[0], ["range", part, b"", b"", None, False, None, None, False])
    assert answer["more"] is True and len(answer["rows"]) == 2  # 2 x 1 KB fit in 2500 bytes
