"""Snapshots of a real LMDB environment: consistent under concurrent writes, pruned, never partial."""

from __future__ import annotations

import asyncio
import os

import lmdb
import pytest

from garagekv.db.env import Database
from garagekv.db.snapshot import AutoSnapshotWorker, Snapshotter, list_snapshots, prune_snapshots, take_snapshot
from garagekv.db.writer import GroupCommitWriter
from garagekv.util.background import WorkerState


@pytest.fixture
def db(tmp_path):
    d = Database(tmp_path / "meta", map_size=64 << 20)
    (tmp_path / "meta" / "node_key").write_bytes(b"k" * 32)
    (tmp_path / "meta" / "node_key.pub").write_bytes(b"p" * 32)
    yield d
    d.close()


def read_all(path) -> dict[bytes, bytes]:
    env = lmdb.open(str(path / "db.lmdb"), readonly=True, max_dbs=128, lock=False)
    try:
        with env.begin() as txn:
            tree = env.open_db(b"t", txn=txn, create=False)
            return dict(txn.cursor(tree))
    finally:
        env.close()


async def test_snapshot_is_one_commit_while_writes_go_on(db, tmp_path):
    """Each commit writes a pair of keys with the same counter: a snapshot never splits a pair."""
    writer = GroupCommitWriter(db)
    tree = db.tree("t")
    stop = False

    async def write_pairs() -> int:
        i = 0
        while not stop:
            i += 1

            def job(tx, i=i):
                tx.put(tree, b"a", str(i).encode())
                tx.put(tree, b"b", str(i).encode())

            await writer.submit(job)
        return i

    task = asyncio.create_task(write_pairs())
    await asyncio.sleep(0.05)
    snaps = [await asyncio.to_thread(take_snapshot, db, tmp_path / "meta", tmp_path / "snaps") for _ in range(3)]
    stop = True
    await task
    writer.close()
    for snap in snaps:
        data = read_all(snap)
        assert data[b"a"] == data[b"b"]
        assert (snap / "node_key").read_bytes() == b"k" * 32
    assert list_snapshots(tmp_path / "snaps") == sorted(snaps)


def test_prune_keeps_the_newest_and_drops_partial_copies(db, tmp_path):
    snaps = tmp_path / "snaps"
    taken = [take_snapshot(db, tmp_path / "meta", snaps) for _ in range(4)]
    (snaps / ".partial-interrupted").mkdir()
    removed = prune_snapshots(snaps, keep=2)
    assert removed == taken[:2]
    assert sorted(os.listdir(snaps)) == [p.name for p in taken[2:]]


def test_a_failed_copy_leaves_nothing(db, tmp_path):
    (tmp_path / "meta" / "peer_list").mkdir()  # copying it fails after the database was copied
    with pytest.raises(OSError):
        take_snapshot(db, tmp_path / "meta", tmp_path / "snaps")
    assert os.listdir(tmp_path / "snaps") == []


async def test_auto_worker_takes_one_per_interval(db, tmp_path):
    snapshotter = Snapshotter(db, tmp_path / "meta", tmp_path / "snaps", keep=5)
    worker = AutoSnapshotWorker(snapshotter, interval=3600)
    assert await worker.work() is WorkerState.IDLE
    assert list_snapshots(tmp_path / "snaps") == []  # not due yet
    worker._next = 0  # due now
    await worker.work()
    assert len(list_snapshots(tmp_path / "snaps")) == 1
    assert worker.progress()["last_snapshot"] == snapshotter.last.name
    assert 3590 < worker.progress()["next_in_secs"] <= 3600
