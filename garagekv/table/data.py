"""A table's local data on this node: the entry tree and its range sums (table/range_sums.py).

Writes merge the incoming entry into the stored one inside a transaction; if the canonical
bytes do not change nothing is written, so replaying an update (read repair, anti-entropy) is
free and does not wake pollers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from garagekv.db.env import Database
from garagekv.db.writer import GroupCommitWriter, WriteTxn
from garagekv.table.range_sums import RangeSums
from garagekv.table.schema import Entry, StoredForm, TableSchema
from garagekv.util.codec import blake2sum
from garagekv.util.errors import EntityTooLarge

if TYPE_CHECKING:
    import lmdb

E = TypeVar("E", bound=Entry)

#: Range pages up to this many entries are read on the event loop (see ``scan_async``).
INLINE_SCAN_LIMIT = 128
#: Decoded entries ``get_shared`` keeps (the cache is simply emptied when full).
SHARED_CACHE_ENTRIES = 4096


@dataclass(frozen=True)
class ScanRange:
    """One range read of a partition's entries, in sort-key order (see ``TableData.scan``).

    The same value is what a local scan runs, what the ``range`` message carries to a replica
    (see garagekv/table/messages.py) and what ``Table.range_page`` merges over a read quorum.
    ``filt`` is the schema's filter object (``TableSchema.matches_filter``); None keeps all.
    """

    partition: bytes
    start: bytes = b""
    prefix: bytes = b""
    end: bytes | None = None
    reverse: bool = False
    limit: int | None = None
    filt: Any = None
    skip_start: bool = False

    def after(self, key: bytes) -> ScanRange:
        """The same range, continued past ``key`` (the last key of a page)."""
        return replace(self, start=key, skip_start=True)


class TableData(Generic[E]):
    def __init__(self, db: Database, writer: GroupCommitWriter, schema: TableSchema[E], sums_key: bytes = b"") -> None:
        """``sums_key``: the key of the range sums' hashes, the same on every node of a cluster."""
        self.db = db
        self.writer = writer
        self.schema = schema
        self.store = db.tree(f"{schema.name}:data")
        # Set by the table's tombstone GC: called in the writer transaction whenever an entry
        # becomes a tombstone, with its tree key and new bytes (see garagekv/table/gc.py).
        self.on_tombstone: Callable[[WriteTxn, bytes, bytes], None] | None = None
        self._shared: dict[bytes, tuple[bytes, E]] = {}  # see get_shared
        # Entries kept in another form than their canonical bytes (see TableSchema / StoredForm).
        self.stored_form: StoredForm | None = getattr(schema, "stored_form", None)
        # What anti-entropy compares, updated in the transaction of every change below.
        self.sums = RangeSums(db, schema.name, self.store, self.canonical)
        self.sums.open(sums_key)

    def canonical(self, tree_key: bytes, stored: bytes) -> bytes:
        """The canonical bytes of an entry read from ``store`` under ``tree_key``.

        Whoever reads the entry tree without going through this class (a cursor of its own)
        must pass what it read through here before hashing, sending or decoding it.
        """
        sf = self.stored_form
        return stored if sf is None else sf.unpack(tree_key, stored)

    def get_raw_at(self, txn: Any, tree_key: bytes) -> bytes | None:
        """The entry's canonical bytes, read in ``txn``, a read transaction of the caller's."""
        raw = txn.get(tree_key, db=self.store)
        return None if raw is None else self.canonical(tree_key, raw)

    # ---- reads -------------------------------------------------------------------------------

    def get(self, tree_key: bytes) -> E | None:
        """A single-key read; short enough to run on the event loop."""
        with self.db.read() as txn:
            raw = self.get_raw_at(txn, tree_key)
        return None if raw is None else self.schema.decode(raw)

    def get_shared(self, tree_key: bytes) -> E | None:
        """Like ``get``, but decodes only when the stored bytes changed since the last call.

        For hot lookups of a few entries (the access key and bucket of every request). The
        entry returned is shared between callers: it must not be modified.
        """
        with self.db.read() as txn:
            raw = txn.get(tree_key, db=self.store)
        if raw is None:
            return None
        hit = self._shared.get(tree_key)
        if hit is not None and hit[0] == raw:
            return hit[1]
        entry = self.schema.decode(self.canonical(tree_key, raw))
        if len(self._shared) >= SHARED_CACHE_ENTRIES:
            self._shared.clear()
        self._shared[tree_key] = (raw, entry)
        return entry

    def get_in(self, tx: WriteTxn, tree_key: bytes) -> E | None:
        raw = self.get_raw_in(tx, tree_key)
        return None if raw is None else self.schema.decode(raw)

    def get_raw_in(self, tx: WriteTxn, tree_key: bytes) -> bytes | None:
        """The entry's canonical bytes, read in ``tx``."""
        raw = tx.get(self.store, tree_key)
        return None if raw is None else self.canonical(tree_key, raw)

    def get_raw(self, tree_key: bytes) -> bytes | None:
        with self.db.read() as txn:
            return self.get_raw_at(txn, tree_key)

    def get_raw_many(self, tree_keys: list[bytes]) -> list[bytes | None]:
        with self.db.read() as txn:
            return [self.get_raw_at(txn, k) for k in tree_keys]

    def scan(self, q: ScanRange) -> list[tuple[bytes, E]]:
        """Entries of ``q.partition`` whose sort key begins with ``q.prefix``, from ``q.start`` on.

        Forward scans stop at ``end`` (excluded); reverse scans start at the greatest key
        <= ``start`` (the end of the partition when ``start`` is empty) and stop at ``end``
        (excluded). ``skip_start`` excludes ``start`` itself (to continue after a page).
        ``limit`` counts only entries that pass ``filt``. Blocking: run big scans in a thread.
        """
        return [(sk, entry) for sk, _, entry in self._scan(q, decode=True)]

    def scan_raw(self, q: ScanRange) -> list[tuple[bytes, bytes]]:
        """``scan`` as (sort key, stored bytes), decoding only to apply ``filt`` (replica answers)."""
        return [(sk, raw) for sk, raw, _ in self._scan(q, decode=q.filt is not None)]

    async def scan_async(self, q: ScanRange, *, raw: bool = False) -> list[tuple[bytes, Any]]:
        """``scan`` (``scan_raw`` with ``raw``) without blocking the event loop for long.

        Pages of up to ``INLINE_SCAN_LIMIT`` entries run right here: they take well under a
        millisecond, and in a thread the cursor would wait for the GIL at every step while the
        loop serves other requests (a 100-item page took milliseconds instead of microseconds).
        Bigger or unbounded scans go to a worker thread.
        """
        fn: Callable[[ScanRange], list[tuple[bytes, Any]]] = self.scan_raw if raw else self.scan
        if q.limit is not None and q.limit <= INLINE_SCAN_LIMIT:
            return fn(q)
        return await asyncio.to_thread(fn, q)

    def _scan(self, q: ScanRange, decode: bool) -> list[tuple[bytes, bytes, Any]]:
        partition, start, prefix, end, reverse = q.partition, q.start, q.prefix, q.end, q.reverse
        out: list[tuple[bytes, bytes, Any]] = []
        if reverse and q.skip_start and not start:
            # Past the empty key downwards: nothing (an empty start alone means "from the end").
            return out
        unpack = None if self.stored_form is None else self.stored_form.unpack
        with self.db.read() as txn:
            for key, stored in _iter_prefix(txn.cursor(db=self.store), partition, start, reverse):
                sk = key[len(partition) :]
                if q.skip_start and sk == start:
                    continue
                if not sk.startswith(prefix):
                    if reverse and sk > prefix:
                        continue  # reverse scans may begin past the prefix's keys
                    break
                if end is not None and (sk <= end if reverse else sk >= end):
                    break
                raw = stored if unpack is None else unpack(key, stored)
                entry: E | None = None
                if decode or q.filt is not None:
                    decoded = self.schema.decode(raw)
                    if q.filt is not None and not self.schema.matches_filter(decoded, q.filt):
                        continue
                    entry = decoded
                out.append((sk, raw, entry))
                if q.limit is not None and len(out) >= q.limit:
                    break
        return out

    def iter_all(self) -> Iterator[tuple[bytes, E]]:
        with self.db.read() as txn:
            for key, raw in txn.cursor(db=self.store):
                yield key, self.schema.decode(self.canonical(key, raw))

    # ---- writes ------------------------------------------------------------------------------

    def merge_in(self, tx: WriteTxn, entry: E, raw: bytes | None = None) -> E | None:
        """Merge ``entry`` into the stored one; returns the new entry if the bytes changed.

        ``raw``: the canonical bytes ``entry`` was decoded from, stored as they are if there is
        no entry yet (a replica receiving a new item need not encode it again).
        """
        return self.update_in(tx, entry.tree_key(), lambda old: _merged(old, entry), fresh_raw=raw)

    def update_in(
        self,
        tx: WriteTxn,
        tree_key: bytes,
        fn: Callable[[E | None], E],
        fresh_raw: bytes | None = None,
        max_bytes: int | None = None,
    ) -> E | None:
        """Read-modify-write one entry inside ``tx``; returns the new entry if it changed.

        ``max_bytes``: refuse (``EntityTooLarge``, nothing written) a change that would leave the
        entry bigger than this and bigger than it was. An entry already over the limit (older
        data) may still shrink, so it can be repaired.
        """
        old_raw = self.get_raw_in(tx, tree_key)
        old = None if old_raw is None else self.schema.decode(old_raw)
        # ``fn`` may change its argument in place while ``old`` must stay as it was (the schema's
        # ``updated`` compares them): it gets a copy, made without decoding again if it can be.
        new = fn(None if old_raw is None else _fresh_copy(old, old_raw, self.schema))
        new_raw = fresh_raw if old_raw is None and fresh_raw is not None else new.encode()
        if new_raw == old_raw:
            return None
        if max_bytes is not None:
            check_size(len(new_raw), None if old_raw is None else len(old_raw), max_bytes)
        sf = self.stored_form
        tx.put(self.store, tree_key, new_raw if sf is None else sf.pack(tx, tree_key, new_raw))
        self.sums.change_in(tx, tree_key, old_raw, new_raw)
        self.schema.updated(tx, old, new)
        if self.on_tombstone is not None and new.is_tombstone():
            self.on_tombstone(tx, tree_key, new_raw)
        return new

    def delete_if_equal_hash_in(self, tx: WriteTxn, tree_key: bytes, value_hash: bytes) -> bool:
        """Delete the entry only if its stored bytes still hash to ``value_hash`` (GC, offload)."""
        old_raw = self.get_raw_in(tx, tree_key)
        if old_raw is None or blake2sum(old_raw) != value_hash:
            return False
        tx.delete(self.store, tree_key)
        self.sums.change_in(tx, tree_key, old_raw, None)
        self.schema.updated(tx, self.schema.decode(old_raw), None)
        return True

    async def delete_if_equal_hash(self, items: list[tuple[bytes, bytes]]) -> int:
        """``delete_if_equal_hash_in`` for each (tree key, hash) in one transaction; how many went."""

        def apply(tx: WriteTxn) -> int:
            return sum(self.delete_if_equal_hash_in(tx, k, h) for k, h in items)

        return await self.writer.submit(apply)

    async def merge(self, entry: E) -> E | None:
        return await self.writer.submit(lambda tx: self.merge_in(tx, entry))

    async def merge_many(self, entries: list[E], raws: list[bytes] | None = None) -> None:
        """Merge ``entries`` in one transaction (``raws``: their canonical bytes, see merge_in)."""

        def apply(tx: WriteTxn) -> None:
            for i, e in enumerate(entries):
                self.merge_in(tx, e, None if raws is None else raws[i])

        await self.writer.submit(apply)


def check_size(new_size: int, old_size: int | None, max_bytes: int) -> None:
    """Raise ``EntityTooLarge`` if an entry would grow to ``new_size`` bytes, over ``max_bytes``."""
    if new_size > max_bytes and (old_size is None or new_size > old_size):
        raise EntityTooLarge(f"the stored item would be {new_size} bytes, over the limit of {max_bytes} bytes")


def _fresh_copy(entry: Any, raw: bytes, schema: TableSchema[Any]) -> Any:
    """An independent copy of ``entry`` (decoded from ``raw``): its ``copy()`` if it has one."""
    copy = getattr(entry, "copy", None)
    return copy() if copy is not None else schema.decode(raw)


def _merged(old: Any, new: Any) -> Any:
    if old is None:
        return new
    old.merge(new)
    return old


def _iter_prefix(cur: lmdb.Cursor[bytes], prefix: bytes, start: bytes, reverse: bool) -> Iterator[tuple[bytes, bytes]]:
    if not reverse:
        if not cur.set_range(prefix + start):
            return
        for key, value in cur:
            if not key.startswith(prefix):
                return
            yield key, value
        return
    # Reverse: position on the greatest key <= prefix+start (start=b"" with reverse means the
    # whole prefix, from its end).
    if start:
        target = prefix + start
        if cur.set_range(target):
            if cur.key() != target and not cur.prev():
                return
        elif not cur.last():
            return
    else:
        upper = prefix_end(prefix)
        if upper is None or not cur.set_range(upper):
            if not cur.last():
                return
        elif not cur.prev():
            return
    while True:
        key = cur.key()
        if not key.startswith(prefix):
            if key < prefix:
                return
        else:
            yield key, cur.value()
        if not cur.prev():
            return


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix`` (None if unbounded)."""
    p = bytearray(prefix)
    while p:
        if p[-1] < 0xFF:
            p[-1] += 1
            return bytes(p)
        p.pop()
    return None
