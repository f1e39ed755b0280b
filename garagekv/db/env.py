"""The node's LMDB environment: one file set per node, named trees, an exclusive process lock.

LMDB itself allows several processes on one environment; a node does not, because its
in-memory state (timestamps, subscriptions) assumes it is the only writer. The lock file makes
a second node on the same directory fail at once with a clear message.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import lmdb

from garagekv.util.errors import StorageError

DEFAULT_MAP_SIZE = 1 << 40


#: The smallest LMDB page: a database file holds at least its two meta pages.
MIN_PAGE = 4096


def _truncated(data: Path, size: int, need: int) -> str:
    return (
        f"the LMDB file {data} has {size} bytes but its pages need {need}: it was cut short (a copy or "
        "a disk that filled up). Restore the metadata directory from a snapshot, or empty it and let "
        "the node resync from the others (docs/operations.md §8)"
    )


class Database:
    """An open LMDB environment; trees are opened once and cached by name."""

    def __init__(self, path: Path, *, map_size: int = DEFAULT_MAP_SIZE, fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._lock_fd: int | None = None
        self._trees: dict[str, lmdb._Database] = {}
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot create database directory {self.path}: {e}") from e
        self._lock_fd = self._acquire_lock(self.path / "LOCK")
        data = self.path / "db.lmdb" / "data.mdb"
        if data.is_file() and 0 < data.stat().st_size < 2 * MIN_PAGE:
            self._release_lock()
            raise StorageError(_truncated(data, data.stat().st_size, 2 * MIN_PAGE))
        try:
            self.env: lmdb.Environment | None = lmdb.open(
                str(self.path / "db.lmdb"),
                map_size=map_size,
                max_dbs=128,
                max_readers=2048,
                readahead=False,
                sync=fsync,
                metasync=fsync,
                lock=True,
            )
        except lmdb.Error as e:
            self._release_lock()
            raise StorageError(f"cannot open LMDB database in {self.path}: {e}") from e
        # A file shorter than its own pages (a copy cut short, a full disk) would kill the
        # process with SIGBUS at the first read past its end: refuse it with the way out.
        if data.is_file():
            need = (self.env.info()["last_pgno"] + 1) * self.env.stat()["psize"]
            size = data.stat().st_size
            if size < need:
                self.env.close()
                self.env = None
                self._release_lock()
                raise StorageError(_truncated(data, size, need))

    @staticmethod
    def _acquire_lock(lock_path: Path) -> int:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise StorageError(f"database directory {lock_path.parent} is not usable: {e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StorageError(f"database directory {lock_path.parent} is locked by another garagekv process") from None
        return fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def tree(self, name: str) -> lmdb._Database:
        """The named tree, created on first use (creation takes a short write transaction)."""
        t = self._trees.get(name)
        if t is None:
            t = self.environment.open_db(name.encode(), create=True)
            self._trees[name] = t
        return t

    def tree_names(self) -> list[str]:
        """The trees this process has opened (for statistics)."""
        return sorted(self._trees)

    def entries(self, names: list[str]) -> dict[str, int]:
        """Number of entries in each named, already opened tree; O(1) per tree."""
        return {name: n for name, (n, _) in self.tree_stats(names).items()}

    def tree_stats(self, names: list[str]) -> dict[str, tuple[int, int]]:
        """(entries, bytes of its B-tree and overflow pages) of each named, already opened tree;
        O(1) per tree (LMDB keeps both in the tree's header)."""
        out: dict[str, tuple[int, int]] = {}
        if self.env is None:
            return out
        with self.env.begin(write=False) as txn:
            for name in names:
                t = self._trees.get(name)
                if t is not None:
                    st = txn.stat(t)
                    pages = st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
                    out[name] = (st["entries"], pages * st["psize"])
        return out

    def read(self) -> lmdb.Transaction[bytes]:
        """A read-only transaction; use as a context manager."""
        return self.environment.begin(write=False, buffers=False)

    @property
    def environment(self) -> lmdb.Environment:
        """The open environment; a closed database is a ``StorageError``, never an AttributeError."""
        if self.env is None:
            raise StorageError(f"the database in {self.path} is closed")
        return self.env

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def close(self) -> None:
        env = getattr(self, "env", None)
        if env is not None:
            env.close()
            self.env = None
        self._release_lock()
