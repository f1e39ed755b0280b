"""LMDB storage: group commit, isolation of failing jobs, scans, and the K2V range rules."""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import dataclass

import pytest

from garagekv.db.env import Database
from garagekv.db.writer import GroupCommitWriter
from garagekv.model.k2v.range import RangeQuery, local_page, read_range
from garagekv.table.data import ScanRange, TableData
from garagekv.table.schema import BaseSchema
from garagekv.util.errors import BadRequest, StorageError

P = b"\x01" * 32


@dataclass
class Reg:
    """A max-register entry: the simplest CRDT."""

    key: bytes
    value: int

    def tree_key(self) -> bytes:
        return P + self.key

    def encode(self) -> bytes:
        return self.key + b"\x00" + str(self.value).encode()

    def merge(self, other: Reg) -> None:
        self.value = max(self.value, other.value)

    def is_tombstone(self) -> bool:
        return self.value == 0


class RegSchema(BaseSchema):
    name = "reg"

    def __init__(self) -> None:
        self.updates: list[tuple] = []

    def decode(self, data: bytes) -> Reg:
        k, _, v = data.partition(b"\x00")
        return Reg(k, int(v))

    def updated(self, tx, old, new) -> None:
        self.updates.append((old and old.value, new.value))

    def matches_filter(self, entry: Reg, filt) -> bool:
        return entry.value % 2 == 0 if filt == "even" else True


@pytest.fixture
def table(tmp_path):
    db = Database(tmp_path / "db", map_size=64 << 20)
    writer = GroupCommitWriter(db)
    data = TableData(db, writer, RegSchema())
    yield data
    writer.close()
    db.close()


async def test_group_commit_batches_concurrent_writes(table):
    await asyncio.gather(*(table.merge(Reg(f"k{i:03d}".encode(), i)) for i in range(300)))
    assert table.writer.jobs == 300
    assert table.writer.commits < 300  # many writes shared a commit
    assert table.get(P + b"k123").value == 123


async def test_merge_is_idempotent_and_skips_unchanged_bytes(table):
    assert await table.merge(Reg(b"a", 5)) is not None
    assert await table.merge(Reg(b"a", 3)) is None  # merge keeps 5: no write, no hook
    assert await table.merge(Reg(b"a", 5)) is None
    assert table.schema.updates == [(None, 5)]


async def test_failing_job_rolls_back_alone(table):
    def bad(tx):
        table.merge_in(tx, Reg(b"bad", 1))
        raise BadRequest("nope")

    results = await asyncio.gather(table.writer.submit(bad), table.merge(Reg(b"good", 2)), return_exceptions=True)
    assert isinstance(results[0], BadRequest)
    assert table.get(P + b"bad") is None
    assert table.get(P + b"good").value == 2


async def test_a_job_sees_whether_other_jobs_wait_for_its_commit(table):
    writer = table.writer
    gate = threading.Event()

    def held(_tx):
        assert gate.wait(10)
        return writer.others_waiting()

    assert await writer.submit(lambda _tx: writer.others_waiting()) is False  # alone
    first = asyncio.ensure_future(writer.submit(held))
    await asyncio.sleep(0.05)  # the writer thread runs ``held`` and waits in it
    second = asyncio.ensure_future(writer.submit(lambda _tx: None))  # queued behind it
    await asyncio.sleep(0.05)
    gate.set()
    assert await first is True
    await second
    assert writer.run_sync(lambda _tx: writer.others_waiting()) is False  # outside any group


async def test_on_commit_runs_after_commit(table):
    seen = []

    def job(tx):
        table.merge_in(tx, Reg(b"x", 1))
        tx.on_commit(lambda: seen.append(table.get(P + b"x").value))

    await table.writer.submit(job)
    assert seen == [1]


async def test_accumulators_finish_once_inside_their_own_transaction(table):
    """``WriteTxn.accumulate``: one accumulator per key and job, finished when the job's function
    returns and committed with it; a job that fails drops its accumulator with its writes."""
    finished: list[list[int]] = []

    def add(tx, n: int) -> None:
        acc = tx.accumulate("sum", list, lambda acc: (finished.append(acc), table.merge_in(tx, Reg(b"sum", sum(acc)))))
        acc.append(n)

    def job(tx):
        for n in (1, 2, 3):
            add(tx, n)

    def bad(tx):
        add(tx, 100)
        raise BadRequest("nope")

    results = await asyncio.gather(table.writer.submit(job), table.writer.submit(bad), return_exceptions=True)
    assert results[0] is None and isinstance(results[1], BadRequest)
    assert finished == [[1, 2, 3]]  # the failed job's accumulator never finished
    assert table.get(P + b"sum").value == 6

    # A finish that starts another accumulator: that one is finished too.
    def chained(tx):
        tx.accumulate("first", list, lambda _: tx.accumulate("second", list, lambda _: finished.append(["second"])))

    table.writer.run_sync(chained)
    assert finished[-1] == ["second"]


def test_second_open_of_same_directory_is_refused(tmp_path):
    db = Database(tmp_path / "db", map_size=1 << 20)
    try:
        with pytest.raises(StorageError, match="locked"):
            Database(tmp_path / "db", map_size=1 << 20)
    finally:
        db.close()
    Database(tmp_path / "db", map_size=1 << 20).close()  # free again once closed


def test_unusable_directory_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="cannot create database directory"):
        Database(blocker / "db")


KEYS = ["a", "b", "c", "d.1", "d.2", "e"]


@pytest.fixture
async def spec_table(table):
    await asyncio.gather(*(table.merge(Reg(k.encode(), i + 1)) for i, k in enumerate(KEYS)))
    return table


async def run(table, filt=None, page_size=1000, **kw):
    async def fetch(start, **a):
        return local_page(table.scan(ScanRange(P, start, **a)), a.get("limit"))

    page = await read_range(fetch, RangeQuery(**kw), filt, page=page_size)
    return [k for k, _ in page.entries], page.more, page.next_start


@pytest.mark.parametrize(
    "kw, expected",
    [
        ({}, (KEYS, False, None)),
        ({"start": "c"}, (["c", "d.1", "d.2", "e"], False, None)),
        ({"start": "b", "end": "d.2"}, (["b", "c", "d.1"], False, None)),
        ({"prefix": "d."}, (["d.1", "d.2"], False, None)),
        ({"prefix": "d.", "start": "d.2"}, (["d.2"], False, None)),
        ({"limit": 2}, (["a", "b"], True, "c")),
        ({"limit": 0}, ([], True, "a")),
        ({"reverse": True}, (list(reversed(KEYS)), False, None)),
        ({"start": "c", "reverse": True, "end": "a"}, (["c", "b"], False, None)),
        ({"prefix": "d.", "reverse": True}, (["d.2", "d.1"], False, None)),
        ({"reverse": True, "limit": 2}, (["e", "d.2"], True, "d.1")),
        ({"prefix": "z"}, ([], False, None)),
        ({"start": "zz", "reverse": True}, (list(reversed(KEYS)), False, None)),
    ],
)
async def test_spec_ranges(spec_table, kw, expected):
    assert await run(spec_table, **kw) == expected
    # The same answers when replicas are read one small page at a time.
    assert await run(spec_table, page_size=1, **kw) == expected


async def test_filters_apply_before_limit(spec_table):
    # values are 1..6 in KEYS order; "even" keeps b, d.1, e
    assert await run(spec_table, "even", limit=2) == (["b", "d.1"], True, "e")
    assert await run(spec_table, "even", page_size=1, limit=2) == (["b", "d.1"], True, "e")


def test_start_outside_prefix_is_rejected():
    with pytest.raises(BadRequest, match="does not start with prefix"):
        RangeQuery(prefix="d.", start="c").check()


async def test_unicode_orders_by_code_point(table):
    for k in ["é", "z", "\U0001f600", "a"]:
        await table.merge(Reg(k.encode(), 1))
    assert (await run(table))[0] == ["a", "z", "é", "\U0001f600"]


@pytest.mark.parametrize("keep", [0.5, 8192, 4096])
def test_a_database_file_cut_short_is_refused_not_a_crash(tmp_path, keep):
    """Reading past the end of a truncated LMDB file kills the process with SIGBUS: opening one
    is refused with what to do instead."""
    db = Database(tmp_path / "db", map_size=64 << 20)
    t = db.tree("t")
    with db.environment.begin(write=True) as txn:
        for i in range(2000):
            txn.put(b"%06d" % i, b"v" * 100, db=t)
    db.close()
    data = tmp_path / "db" / "db.lmdb" / "data.mdb"
    size = data.stat().st_size
    os.truncate(data, int(size * keep) if keep < 1 else keep)
    with pytest.raises(StorageError, match="cut short"):
        Database(tmp_path / "db", map_size=64 << 20)
    os.truncate(data, 0)  # an empty file is a new database (anti-entropy refills it)
    Database(tmp_path / "db", map_size=64 << 20).close()
