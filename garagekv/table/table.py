"""A table as the layers above see it: insert, get and range reads.

Today every table's replica set is this node, so the operations go straight to the local data.
The replicated strategies (sharded by the ring, or full copy) plug in here without changing the
callers: inserts and reads keep these signatures.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from garagekv.table.data import TableData

E = TypeVar("E")

EMPTY_PARTITION = b"\x00" * 32


class Table(Generic[E]):
    def __init__(self, data: TableData[E]) -> None:
        self.data = data
        self.schema = data.schema

    async def insert(self, entry: E) -> None:
        await self.data.merge(entry)

    async def insert_many(self, entries: list[E]) -> None:
        if entries:
            await self.data.merge_many(entries)

    async def get(self, tree_key: bytes) -> E | None:
        return self.data.get(tree_key)

    async def get_range(
        self, partition: bytes, start: bytes = b"", *, reverse: bool = False, limit: int | None = None,
        filt: Any = None,
    ) -> list[E]:
        rows = await self.data.scan_async(partition, start, reverse=reverse, limit=limit, filt=filt)
        return [e for _, e in rows]
