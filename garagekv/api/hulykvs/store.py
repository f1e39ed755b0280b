"""The storage interface of the Hulykvs front-end, and its interim implementation over K2V.

Handlers only see :class:`HulyStore`. :class:`K2VHulyStore` implements it with the K2V model:
a conditional write reads the item (a quorum read, with its causal context), checks the
condition against the value that read returned, then writes with that context so the new value
supersedes everything that was read. Writes to one key through one node are serialised (a lock
per key), so they never race each other; but two conditional writes racing through different
nodes can both pass their check, so this is NOT linearizable; the consensus path will replace this module
(docs/hulykvs.md, "Consistency").
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass
from typing import Protocol

from garagekv.api.hulykvs.conditions import Condition, md5_hex
from garagekv.api.hulykvs.mapping import partition_key
from garagekv.model.helper import MetaHelper
from garagekv.model.k2v.item import K2VItem
from garagekv.model.k2v.messages import InsertedItem
from garagekv.model.k2v.range import RangeQuery
from garagekv.model.k2v.rpc import K2VService
from garagekv.model.k2v.schema import ItemFilter
from garagekv.util.errors import BucketAlreadyExists

#: Items read per round of a listing.
LIST_PAGE = 1000


class PreconditionFailed(Exception):
    """The write's condition does not hold: nothing was written."""


@dataclass(frozen=True)
class Stored:
    value: bytes
    md5: str  # lowercase hex


class HulyStore(Protocol):
    """What the Hulykvs handlers need from storage; workspaces are canonical UUID strings."""

    async def get(self, workspace: str, namespace: str, key: str) -> Stored | None: ...

    async def list(self, workspace: str, namespace: str, prefix: str | None) -> list[str]:
        """Every key of the namespace (with that plain prefix), in UTF-8 byte order."""
        ...

    async def put(self, workspace: str, namespace: str, key: str, value: bytes, condition: Condition) -> bool:
        """Store ``value``; True when the key did not exist. Raises :class:`PreconditionFailed`."""
        ...

    async def delete(self, workspace: str, namespace: str, key: str, condition: Condition) -> bool:
        """Delete the key; False when it did not exist. Raises :class:`PreconditionFailed`."""
        ...


def current_value(item: K2VItem | None) -> bytes | None:
    """The value a Hulykvs client sees in a K2V item that may hold concurrent values.

    The live value with the highest DVVS timestamp, ties broken by the highest node id; a
    tombstone among the values does not hide a live one. None if there is no live value.
    """
    if item is None:
        return None
    best: tuple[int, int] | None = None
    value = None
    for node, entry in item.items.items():
        for ts, v in entry.values:
            if v is not None and (best is None or (ts, node) > best):
                best, value = (ts, node), v
    return value


class K2VHulyStore:
    """:class:`HulyStore` over the K2V model, in one bucket (created on first use)."""

    def __init__(self, k2v: K2VService, helper: MetaHelper, bucket: str) -> None:
        self.k2v = k2v
        self.helper = helper
        self.bucket = bucket
        self._bucket_id: bytes | None = None
        self._bucket_lock = asyncio.Lock()
        # one lock per key being written through this node; gone once nobody holds or waits on it
        self._key_locks: weakref.WeakValueDictionary[tuple[str, str, str], asyncio.Lock] = weakref.WeakValueDictionary()

    async def bucket_id(self) -> bytes:
        """The bucket's id: its global alias, or a bucket created under that alias."""
        if self._bucket_id is not None:
            return self._bucket_id
        async with self._bucket_lock:
            if self._bucket_id is None:
                bid = await self.helper.resolve_global_alias(self.bucket)
                if bid is None:
                    try:
                        bid = (await self.helper.create_bucket(self.bucket)).id
                    except BucketAlreadyExists:
                        bid = await self.helper.resolve_global_alias(self.bucket)
                self._bucket_id = bid
        assert self._bucket_id is not None
        return self._bucket_id

    async def _read(self, workspace: str, namespace: str, key: str) -> tuple[bytes, K2VItem | None]:
        bid = await self.bucket_id()
        return bid, await self.k2v.read_item(bid, partition_key(workspace, namespace), key)

    async def get(self, workspace: str, namespace: str, key: str) -> Stored | None:
        _, item = await self._read(workspace, namespace, key)
        value = current_value(item)
        return None if value is None else Stored(value, md5_hex(value))

    async def list(self, workspace: str, namespace: str, prefix: str | None) -> list[str]:
        bid = await self.bucket_id()
        pk = partition_key(workspace, namespace)
        keys: list[str] = []
        start: str | None = None
        while True:  # page by page, keeping only the keys: values are never all in memory at once
            q = RangeQuery(prefix=prefix or None, start=start, limit=LIST_PAGE)
            page = await self.k2v.read_range(bid, pk, q, ItemFilter(exclude_only_tombstones=True))
            keys.extend(sk for sk, item in page.entries if current_value(item) is not None)
            if not page.more:
                return keys
            start = page.next_start

    async def _write(
        self, workspace: str, namespace: str, key: str, value: bytes | None, condition: Condition
    ) -> bytes | None:
        """Check ``condition`` against a quorum read, then write over what was read; returns the
        value that was current before the write."""
        lock = self._key_locks.get((workspace, namespace, key))
        if lock is None:
            lock = self._key_locks[(workspace, namespace, key)] = asyncio.Lock()
        async with lock:
            return await self._write_locked(workspace, namespace, key, value, condition)

    async def _write_locked(
        self, workspace: str, namespace: str, key: str, value: bytes | None, condition: Condition
    ) -> bytes | None:
        bid, item = await self._read(workspace, namespace, key)
        current = current_value(item)
        if not condition.holds(None if current is None else md5_hex(current)):
            raise PreconditionFailed()
        if value is None and current is None:
            return None  # deleting an absent key writes nothing
        ctx = None if item is None else item.causal_context()
        await self.k2v.insert(bid, InsertedItem(partition_key(workspace, namespace), key, ctx, value))
        return current

    async def put(self, workspace: str, namespace: str, key: str, value: bytes, condition: Condition) -> bool:
        return await self._write(workspace, namespace, key, value, condition) is None

    async def delete(self, workspace: str, namespace: str, key: str, condition: Condition) -> bool:
        return await self._write(workspace, namespace, key, None, condition) is not None
