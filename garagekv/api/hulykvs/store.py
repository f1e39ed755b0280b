"""The storage interface of the Hulykvs front-end, and its implementation over K2V.

Handlers only see :class:`HulyStore`. :class:`K2VHulyStore` implements it with the K2V model.
Every write is a partition transaction on the consensus path (docs/consensus.md): the condition
is a compare, the write supersedes every value the round saw, so conditional writes are
linearizable whichever nodes they go through and two racing ``If-None-Match: *`` PUTs have
exactly one winner (docs/hulykvs.md, "Consistency"). Reads are K2V quorum reads.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from garagekv.api.hulykvs.conditions import Condition, md5_hex
from garagekv.api.hulykvs.mapping import partition_key
from garagekv.model.helper import MetaHelper
from garagekv.model.k2v.item import K2VItem
from garagekv.model.k2v.range import RangeQuery
from garagekv.model.k2v.rpc import K2VService
from garagekv.model.k2v.schema import ItemFilter
from garagekv.model.k2v.txn import DELETE, EXISTS, LATEST_MD5, PUT, READ, Compare, Txn, TxnOp, latest_value
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


#: The value a Hulykvs client sees in a K2V item that may hold concurrent values: the latest
#: live one (a tombstone among them does not hide it); None if there is no live value. The same
#: rule the consensus path's ``latest-md5`` compare uses.
current_value = latest_value


def _compares(key: str, condition: Condition) -> tuple[Compare, ...]:
    if condition.kind == "absent":
        return (Compare(key, EXISTS, exists=False),)
    if condition.kind == "exists":
        return (Compare(key, EXISTS, exists=True),)
    if condition.kind == "md5":
        assert condition.md5 is not None
        return (Compare(key, LATEST_MD5, md5=condition.md5),)
    return ()


class K2VHulyStore:
    """:class:`HulyStore` over the K2V model, in one bucket (created on first use)."""

    def __init__(self, k2v: K2VService, helper: MetaHelper, bucket: str) -> None:
        self.k2v = k2v
        self.helper = helper
        self.bucket = bucket
        self._bucket_id: bytes | None = None
        self._bucket_lock = asyncio.Lock()

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

    async def put(self, workspace: str, namespace: str, key: str, value: bytes, condition: Condition) -> bool:
        # The read before the put gives the value it replaced (201 or 204).
        txn = Txn(_compares(key, condition), (TxnOp(READ, key), TxnOp(PUT, key, value)))
        res = await self.k2v.conditional.txn(await self.bucket_id(), partition_key(workspace, namespace), txn)
        if not res.succeeded:
            raise PreconditionFailed()
        return current_value(res.results[0].item) is None

    async def delete(self, workspace: str, namespace: str, key: str, condition: Condition) -> bool:
        # Only a live key is deleted (an absent one gets no tombstone): "exists" is always a
        # compare, and the failure branch's read tells "absent" from "condition false".
        exists = Compare(key, EXISTS, exists=True)
        txn = Txn((exists, *_compares(key, condition)), (TxnOp(DELETE, key),), (TxnOp(READ, key),))
        res = await self.k2v.conditional.txn(await self.bucket_id(), partition_key(workspace, namespace), txn)
        if res.succeeded:
            return True
        if current_value(res.results[0].item) is None and condition.kind == "none":
            return False
        raise PreconditionFailed()
