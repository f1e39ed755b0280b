"""GC and counter repair on a standalone node's real K2V tables: index counters stay right."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from garagekv.model.counter_repair import CounterRepair
from garagekv.model.index_counter import LocalCounter
from garagekv.model.k2v.item import partition_hash
from garagekv.model.k2v.messages import InsertedItem
from garagekv.model.k2v.range import RangeQuery
from garagekv.util.background import WorkerState
from garagekv.util.config import parse_config
from tests.support.standalone import NODE_ID, StandaloneModel

BUCKET = b"\x07" * 32


class Opened(StandaloneModel):
    def __init__(self, path) -> None:
        super().__init__(path, tombstone_gc_delay_sec=5)
        self.k2v = self.model.k2v
        self.clock = 1_000_000
        for gc in self.model.gcs:
            gc.clock = lambda: self.clock
        self.item_gc, self.counter_gc = self.model.gcs

    async def put(self, pk: str, sk: str, value: bytes | None, token: bool = True) -> None:
        ct = None
        if token:
            old = await self.k2v.read_item(BUCKET, pk, sk)
            ct = old.causal_context() if old is not None else None
        await self.k2v.insert(BUCKET, InsertedItem(pk, sk, ct, value))

    def local(self, pk: str) -> dict[str, int]:
        raw = self.model.items.schema.local_counters
        with self.db.read() as txn:
            data = txn.get(BUCKET + pk.encode(), db=raw)
        return {} if data is None else {n: v for n, (_, v) in LocalCounter.decode(data).values.items()}

    async def index(self) -> dict[str, dict[str, int]]:
        await self.model.counter_queue.flush()
        page, filt = await self.k2v.read_index(BUCKET, RangeQuery())
        return {sk: self.k2v.counter_values(e, filt) for sk, e in page.entries}

    async def run_gc(self) -> None:
        self.clock += 5_000
        for gc in self.model.gcs:
            while await gc.work() is WorkerState.BUSY:
                pass


@pytest.fixture
def node(tmp_path):
    o = Opened(tmp_path / "db")
    yield o
    o.close()


async def test_item_gc_keeps_counters_and_then_collects_the_empty_counter(node):
    await node.put("p", "a", b"12")
    await node.put("p", "b", b"345")
    await node.put("q", "only", b"x")
    await node.put("p", "a", None)
    await node.put("q", "only", None)
    before = await node.index()
    assert before == {"p": {"entries": 1, "conflicts": 0, "values": 1, "bytes": 3}}
    assert len(node.item_gc) == 2
    assert len(node.counter_gc) == 1  # q's counters went all-zero
    await node.run_gc()
    with node.db.read() as txn:
        assert txn.stat(node.model.items.data.store)["entries"] == 1  # only p/b is left
        assert txn.stat(node.model.counters.data.store)["entries"] == 1  # q's counter entry is gone
    assert node.local("p") == {"entries": 1, "values": 1, "bytes": 3}
    assert await node.index() == before
    assert len(node.item_gc) == 0 and len(node.counter_gc) == 0
    # A deleted partition can be written again.
    await node.put("q", "again", b"zz")
    assert (await node.index())["q"] == {"entries": 1, "conflicts": 0, "values": 1, "bytes": 2}


async def test_a_deleted_item_rewritten_before_gc_stays(node):
    await node.put("p", "a", b"1")
    await node.put("p", "a", None)
    await node.put("p", "a", b"22")
    await node.run_gc()
    item = await node.k2v.read_item(BUCKET, "p", "a")
    assert item is not None and item.values() == [b"22"]
    assert len(node.item_gc) == 0


async def test_keys_and_buckets_have_no_gc(node):
    assert {gc.table.schema.name for gc in node.model.gcs} == {"k2v_item", "k2v_index_counter"}
    assert node.model.keys.data.on_tombstone is None and node.model.buckets.data.on_tombstone is None


async def _repair(node) -> CounterRepair:
    rep = CounterRepair(node.model, node.db, node.writer)
    steps = 0
    while await rep.work() is not WorkerState.DONE:
        steps += 1
        assert steps < 1000
    return rep


async def test_counter_repair_recounts_from_items(node, monkeypatch):
    monkeypatch.setattr("garagekv.model.counter_repair.RECOUNT_STEP", 3)  # several steps, partitions kept whole
    for i in range(5):
        await node.put("p", f"s{i}", b"v" * i)
    await node.put("p", "s0", b"other", token=False)  # a conflict
    await node.put("q", "x", b"abc")
    await node.model.counter_queue.flush()
    good_p, good_q = node.local("p"), node.local("q")
    assert good_p == {"entries": 5, "conflicts": 1, "values": 6, "bytes": 15}
    # Corrupt them, and leave a counter for a partition with no items at all.
    lc = node.model.items.schema.local_counters

    def corrupt(tx):
        for pk, vals in (("p", {"entries": 99, "values": -3}), ("ghost", {"entries": 7, "bytes": 1})):
            tx.put(lc, BUCKET + pk.encode(), LocalCounter(BUCKET, pk, {n: (1, v) for n, v in vals.items()}).encode())
        tx.delete(lc, BUCKET + b"q")

    await node.writer.submit(corrupt)
    rep = await _repair(node)
    assert node.local("p") == good_p
    assert node.local("q") == {**good_q, "conflicts": 0}
    assert node.local("ghost") == {"entries": 0, "conflicts": 0, "values": 0, "bytes": 0}
    assert rep.items_done == 6 and rep.partitions == 2 and rep.counters_done == 3
    assert rep.progress()["phase"] == "done" and rep.progress()["done"] == rep.progress()["total"]
    # The corrected registers (with newer timestamps) replace the replicated ones.
    index = await node.index()
    assert index["p"] == {"entries": 5, "conflicts": 1, "values": 6, "bytes": 15}
    assert index["q"]["entries"] == 1 and "ghost" not in index


async def test_counter_repair_on_an_empty_node(node):
    rep = await _repair(node)
    assert rep.items_done == 0 and rep.progress()["total"] == 0


async def test_counter_repair_sees_partitions_sharing_no_prefix(node):
    # Items of one partition are contiguous under its hash; make sure neighbours are not merged.
    pks = [f"pk{i}" for i in range(20)]
    for pk in pks:
        await node.put(pk, "s", pk.encode())
    assert len({partition_hash(BUCKET, pk) for pk in pks}) == 20
    rep = await _repair(node)
    assert rep.partitions == 20
    for pk in pks:
        assert node.local(pk) == {"entries": 1, "conflicts": 0, "values": 1, "bytes": len(pk)}


async def test_node_ops_repair_stats_and_workers(node):
    from garagekv.admin.registry import OPS
    from garagekv.util.errors import AdminError

    config = parse_config({"metadata_dir": "unused", "s3_api": {"s3_region": "garage"}})
    services = SimpleNamespace(
        config=config,
        db=node.db,
        writer=node.writer,
        model=node.model,
        system=node.model.items.replication.layout
        and SimpleNamespace(node_id=NODE_ID, layout=node.model.items.replication.layout, is_up=lambda n: True),
    )
    await node.put("p", "a", b"123")
    await node.model.start()
    try:
        with pytest.raises(AdminError, match="Unknown repair"):
            await OPS["repair"](services, {"what": "everything"})
        res = await OPS["repair"](services, {"what": "counters"})
        assert res["launched"] and res["tid"] is not None
        again = await OPS["repair"](services, {"what": "counters"})
        assert not again["launched"] and again["tid"] == res["tid"] or again["launched"]  # may have finished
        for _ in range(200):
            w = await OPS["worker.info"](services, {"tid": res["tid"]})
            if w["state"] == "done":
                break
            await asyncio.sleep(0.01)
        assert w["state"] == "done" and w["items"] == 1 and w["name"] == "k2v counter repair"
        with pytest.raises(AdminError, match="No worker with TID 999"):
            await OPS["worker.info"](services, {"tid": 999})
        names = [w["name"] for w in (await OPS["worker.list"](services, {}))["workers"]]
        assert "k2v_item GC" in names and "k2v counter repair" in names

        res = await OPS["repair"](services, {"what": "tables"})
        assert res["launched"] and {f["table"] for f in res["follow"]} >= {"k2v_item", "key"}
        res = await OPS["repair"](services, {"what": "merkle"})
        assert res["launched"] and "entries queued" in res["message"]

        st = await OPS["stats"](services, {})
        rows = {t["table"]: t for t in st["tables"]}
        assert rows["k2v_item"]["items"] == 1 and rows["k2v_item"]["gcCollected"] == 0
        assert "gcCollected" not in rows["key"]
        assert st["partitions"] == {"total": 256, "stored": 256} and st["layout_version"] == 0
        assert st["db"]["used_bytes"] > 0 and len(st["sync"]) == 5
    finally:
        await stop_workers(node.model)


async def stop_workers(model) -> None:
    """Cancel every worker until it is really gone: on Python 3.11 ``asyncio.wait_for`` can swallow
    a cancellation that races with the event it waits for (``BackgroundRunner.stop`` awaits once)."""
    for w in model.background.workers:
        while w.task is not None and not w.task.done():
            w.task.cancel()
            await asyncio.wait({w.task}, timeout=0.1)
