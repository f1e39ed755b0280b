"""Metadata snapshots: a consistent, compacted copy of a running node's LMDB environment.

LMDB copies a live environment from one read transaction, so a snapshot is exactly the state
of one commit while writes go on. Each snapshot is a directory named by its UTC time under the
snapshots directory, laid out like a metadata directory (``db.lmdb/data.mdb`` plus the node's
small files: identity, layout, peer list), so restoring one is copying it back
(docs/operations.md, Backups). The copy is written under a temporary name and renamed once
complete: a crash mid-copy never leaves something that looks like a snapshot.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from garagekv.db.env import Database
from garagekv.util.background import WorkerState

log = logging.getLogger(__name__)

# The metadata directory's files a restored node needs beside its database.
NODE_FILES = ("node_key", "node_key.pub", "cluster_layout", "peer_list")
_TMP_PREFIX = ".partial-"


def snapshot_name(at: float) -> str:
    """Sortable and readable: ``2026-12-05T01-30-00.123Z``."""
    ms = int(at * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H-%M-%S", time.gmtime(at)) + f".{ms:03d}Z"


def take_snapshot(db: Database, metadata_dir: Path, snapshots_dir: Path) -> Path:
    """Copy the environment (compacted) and the node's files; blocking: run it in a thread."""
    snapshots_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    name = snapshot_name(time.time())
    tmp = snapshots_dir / (_TMP_PREFIX + name)
    final = snapshots_dir / name
    (tmp / "db.lmdb").mkdir(parents=True, mode=0o700)
    try:
        db.environment.copy(str(tmp / "db.lmdb"), compact=True)
        for file in NODE_FILES:
            src = metadata_dir / file
            if src.exists():
                shutil.copy2(src, tmp / file)
        _fsync_tree(tmp)
        os.rename(tmp, final)
        _fsync_dir(snapshots_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def list_snapshots(snapshots_dir: Path) -> list[Path]:
    """Complete snapshots, oldest first."""
    if not snapshots_dir.is_dir():
        return []
    return sorted(p for p in snapshots_dir.iterdir() if p.is_dir() and not p.name.startswith(_TMP_PREFIX))


def prune_snapshots(snapshots_dir: Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest snapshots (and leftovers of interrupted ones)."""
    removed = []
    for leftover in snapshots_dir.glob(_TMP_PREFIX + "*") if snapshots_dir.is_dir() else []:
        shutil.rmtree(leftover, ignore_errors=True)
    snapshots = list_snapshots(snapshots_dir)
    for old in snapshots[: max(0, len(snapshots) - keep)]:
        shutil.rmtree(old, ignore_errors=True)
        removed.append(old)
    return removed


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Snapshotter:
    """Takes snapshots on request and, when an interval is set, every ``interval`` seconds.

    One snapshot at a time: a request arriving while one is being taken waits for it and gets
    a snapshot of its own right after (it asked for the state as of its own time).
    """

    def __init__(self, db: Database, metadata_dir: Path, snapshots_dir: Path, keep: int) -> None:
        self.db = db
        self.metadata_dir = metadata_dir
        self.snapshots_dir = snapshots_dir
        self.keep = keep
        self._lock = asyncio.Lock()
        self.last: Path | None = None
        self.last_at: float | None = None

    async def take(self) -> dict[str, Any]:
        async with self._lock:
            t0 = time.monotonic()
            path = await asyncio.to_thread(take_snapshot, self.db, self.metadata_dir, self.snapshots_dir)
            removed = await asyncio.to_thread(prune_snapshots, self.snapshots_dir, self.keep)
            self.last, self.last_at = path, time.time()
            size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            log.info("metadata snapshot %s taken (%d bytes, %.1fs)", path, size, time.monotonic() - t0)
            return {
                "path": str(path),
                "bytes": size,
                "seconds": round(time.monotonic() - t0, 3),
                "removed": [str(p) for p in removed],
            }


class AutoSnapshotWorker:
    """``metadata_auto_snapshot_interval``: a snapshot every interval, the newest ``keep`` kept."""

    name = "metadata auto-snapshot"

    def __init__(self, snapshotter: Snapshotter, interval: float) -> None:
        self.snapshotter = snapshotter
        self.interval = interval
        self._next = time.monotonic() + interval

    async def work(self) -> WorkerState:
        if time.monotonic() < self._next:
            return WorkerState.IDLE
        self._next = time.monotonic() + self.interval
        await self.snapshotter.take()
        return WorkerState.IDLE

    async def wait_for_work(self) -> None:
        await asyncio.sleep(max(0.0, self._next - time.monotonic()))

    def progress(self) -> dict[str, Any]:
        s = self.snapshotter
        return {
            "interval_secs": self.interval,
            "last_snapshot": None if s.last is None else s.last.name,
            "next_in_secs": round(max(0.0, self._next - time.monotonic())),
        }
