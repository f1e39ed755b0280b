"""MetaHelper's answers after a change: the entry as read back, or an error if it is gone.

The helper's lock is this node's only: another node may delete the bucket or key being changed
between the write here and the read-back. The operation then says the entry no longer exists
instead of handing its caller None where a Bucket or Key is promised. The tables are in-memory
stand-ins that store the encoded form and merge on insert, as the replicated ones do.
"""

from __future__ import annotations

from typing import Any

import pytest

from garagekv.model.bucket_table import Bucket, BucketAlias
from garagekv.model.helper import MetaHelper
from garagekv.model.key_table import Key
from garagekv.util.errors import NoSuchAccessKey, NoSuchBucket


class FakeTable:
    """Entries by tree key; ``deleted_elsewhere``: every insert is followed by another node's
    deletion reaching this replica (the tombstone merges in and wins)."""

    def __init__(self, cls: Any) -> None:
        self.cls = cls
        self.rows: dict[bytes, bytes] = {}
        self.deleted_elsewhere = False

    def _merge_in(self, entry: Any) -> None:
        k = entry.tree_key()
        if k in self.rows:
            old = self.cls.decode(self.rows[k])
            old.merge(entry)
            entry = old
        self.rows[k] = entry.encode()

    async def insert(self, entry: Any) -> None:
        self._merge_in(self.cls.decode(entry.encode()))
        if self.deleted_elsewhere:
            self._merge_in(self.cls(entry.entry_id(), None))

    async def get(self, tree_key: bytes) -> Any:
        raw = self.rows.get(tree_key)
        return None if raw is None else self.cls.decode(raw)

    get_shared = get

    async def get_range(self, partition: bytes, start: bytes = b"", **opts: Any) -> list[tuple[bytes, Any]]:
        return [(k, self.cls.decode(v)) for k, v in sorted(self.rows.items()) if k.startswith(partition)]


async def _empty(_bucket_id: bytes) -> bool:
    return True


def _helper() -> MetaHelper:
    return MetaHelper(FakeTable(Key), FakeTable(Bucket), FakeTable(BucketAlias), _empty)


async def test_create_bucket_answers_the_bucket_as_stored():
    helper = _helper()
    bucket = await helper.create_bucket("photos")
    assert bucket.global_aliases() == ["photos"]
    assert await helper.resolve_global_alias("photos") == bucket.id


async def test_create_bucket_deleted_meanwhile_by_another_node_is_no_such_bucket():
    helper = _helper()
    helper.buckets.deleted_elsewhere = True
    with pytest.raises(NoSuchBucket):
        await helper.create_bucket("photos")


async def test_alias_bucket_deleted_meanwhile_by_another_node_is_no_such_bucket():
    helper = _helper()
    await helper.create_bucket("photos")
    helper.buckets.deleted_elsewhere = True
    with pytest.raises(NoSuchBucket):
        await helper.alias_bucket("photos", "pictures")


async def test_change_permissions_on_a_key_deleted_meanwhile_is_no_such_access_key():
    helper = _helper()
    key = await helper.create_key("reader")
    await helper.create_bucket("photos")
    helper.keys.deleted_elsewhere = True
    with pytest.raises(NoSuchAccessKey):
        await helper.change_permissions("photos", key.key_id, allow=True, read=True, write=False, owner=False)
