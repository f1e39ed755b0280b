"""Operations on keys, buckets and aliases shared by the CLI, the admin API and the K2V API.

Every change that touches two entries (a permission lives on both the key and the bucket, an
alias on the alias table and the bucket) is made under one lock with one shared timestamp, so a
concurrent operation on this node can never interleave between the two halves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from garagekv.model.bucket_table import Bucket, BucketAlias, bucket_name_problem
from garagekv.model.key_table import KEY_ID_RE, SECRET_RE, Key
from garagekv.model.permission import BucketKeyPerm
from garagekv.table.table import EMPTY_PARTITION, Table
from garagekv.util.crdt import DeletableEntry, EntryParams, Lww
from garagekv.util.errors import (
    AdminError,
    BucketAlreadyExists,
    BucketNotEmpty,
    InvalidBucketName,
    KeyAlreadyExists,
    NoSuchAccessKey,
    NoSuchBucket,
)
from garagekv.util.time import increment_logical_clock

_LAST_ALIAS = "Bucket {} doesn't have other aliases, please delete it instead of just unaliasing."
_ALIAS_TAKEN = "Alias {} already exists and points to different bucket: {}"

P = TypeVar("P", bound=EntryParams)


def live_params(entry: DeletableEntry[P]) -> P:
    """The params of a key or bucket that came through a lookup dropping deleted entries
    (``get_key``, ``find_key``, ``get_bucket``, ``find_bucket``, ``list_*``): never None there."""
    assert entry.params is not None, "a deleted entry past a lookup that drops them"
    return entry.params


class MetaHelper:
    def __init__(
        self,
        keys: Table[Key],
        buckets: Table[Bucket],
        aliases: Table[BucketAlias],
        bucket_is_empty: Callable[[bytes], Awaitable[bool]],
        allow_punycode: bool = False,
    ) -> None:
        self.keys = keys
        self.buckets = buckets
        self.aliases = aliases
        self._bucket_is_empty = bucket_is_empty
        self._allow_punycode = allow_punycode
        self._lock = asyncio.Lock()

    # ---- lookups used on the request path ---------------------------------------------------

    async def get_key(self, key_id: str) -> Key | None:
        return await self._key(key_id, shared=False)

    async def request_key(self, key_id: str) -> Key | None:
        """``get_key`` for the K2V request path: a shared entry, not to be modified."""
        return await self._key(key_id, shared=True)

    async def _key(self, key_id: str, shared: bool) -> Key | None:
        # The id may be a client's (bytes that are not UTF-8 arrive as surrogates): one that no
        # key can have is None without a lookup, and without encoding it.
        if not KEY_ID_RE.match(key_id):
            return None
        tree_key = EMPTY_PARTITION + key_id.encode()
        k = await (self.keys.get_shared(tree_key) if shared else self.keys.get(tree_key))
        return None if k is None or k.is_deleted else k

    async def get_bucket(self, bucket_id: bytes) -> Bucket | None:
        b = await self.buckets.get(EMPTY_PARTITION + bucket_id)
        return None if b is None or b.is_tombstone() else b

    async def resolve_global_alias(self, name: str) -> bytes | None:
        a = await self.aliases.get_shared(EMPTY_PARTITION + name.encode())
        return None if a is None else a.state.value

    async def resolve_bucket(self, name: str, key: Key | None) -> bytes:
        """Local alias of the key, then global alias, then a 64-hex bucket id (NoSuchBucket)."""
        if key is not None and key.params is not None:
            bid = key.params.local_aliases.get(name)
            if bid is not None:
                return bid
        bid = await self.resolve_global_alias(name)
        if bid is not None:
            return bid
        if len(name) == 64:
            try:
                raw = bytes.fromhex(name)
            except ValueError:
                raw = None
            if raw is not None:
                bucket = await self.buckets.get_shared(EMPTY_PARTITION + raw)
                if bucket is not None and not bucket.is_tombstone():
                    return raw
        raise NoSuchBucket(name)

    async def _reread_bucket(self, bucket_id: bytes) -> Bucket:
        """A bucket read back after a change made here: NoSuchBucket if it is gone meanwhile
        (the lock is this node's; another node may have deleted it)."""
        b = await self.get_bucket(bucket_id)
        if b is None:
            raise NoSuchBucket(bucket_id.hex())
        return b

    async def _reread_key(self, key_id: str) -> Key:
        """A key read back after a change made here: NoSuchAccessKey if another node deleted it."""
        k = await self.get_key(key_id)
        if k is None:
            raise NoSuchAccessKey(f"Key {key_id} was deleted meanwhile")
        return k

    # ---- keys ---------------------------------------------------------------------------------

    async def list_keys(self) -> list[Key]:
        return [k for _, k in await self.keys.get_range(EMPTY_PARTITION) if not k.is_deleted]

    async def find_key(self, pattern: str) -> Key:
        """A key whose id starts with ``pattern`` or whose name equals it (exactly one)."""
        if KEY_ID_RE.match(pattern):
            k = await self.get_key(pattern)
            if k is not None:
                return k
        p = pattern.lower()
        matches = [
            k for k in await self.list_keys() if k.key_id.lower().startswith(p) or live_params(k).name.value == pattern
        ]
        if len(matches) != 1:
            if not matches:
                raise NoSuchAccessKey(f"No key matching '{pattern}'")
            raise AdminError(f"{len(matches)} matching keys for '{pattern}'")
        return matches[0]

    async def create_key(self, name: str = "Unnamed key") -> Key:
        key = Key.new(name)
        await self.keys.insert(key)
        return key

    async def import_key(self, key_id: str, secret: str, name: str = "Imported key") -> Key:
        if not KEY_ID_RE.match(key_id):
            raise AdminError(
                # ("a valid garagekv key ..." would read as a command to the CLI's hints)
                "The specified key ID is not a valid access key ID (starts with `GK`, followed by 12 hex-encoded bytes)"
            )
        if not SECRET_RE.match(secret):
            raise AdminError("The specified secret key is not a valid secret key (composed of 32 hex-encoded bytes)")
        async with self._lock:
            if await self.keys.get(EMPTY_PARTITION + key_id.encode()) is not None:
                raise KeyAlreadyExists(
                    f"Key {key_id} already exists in data store. Even if it is deleted, "
                    "we can't let you create a new key with the same ID."
                )
            key = Key.imported(key_id, secret, name)
            await self.keys.insert(key)
            return key

    async def rename_key(self, pattern: str, name: str) -> Key:
        async with self._lock:
            key = await self.find_key(pattern)
            live_params(key).name.update(name)
            await self.keys.insert(key)
            return key

    async def set_key_create_bucket(self, pattern: str, allow: bool) -> Key:
        async with self._lock:
            key = await self.find_key(pattern)
            live_params(key).allow_create_bucket.update(allow)
            await self.keys.insert(key)
            return key

    async def delete_key(self, pattern: str) -> Key:
        async with self._lock:
            key = await self.find_key(pattern)
            params = live_params(key)
            for alias, bid in list(params.local_aliases.items()):
                if bid is not None:
                    await self._unset_local_alias(key, alias, bid)
            for bid in list(params.authorized_buckets):
                await self._set_perm(bid, key, BucketKeyPerm(0))
            await self.keys.insert(Key(key.key_id, None))
            return key

    # ---- buckets ------------------------------------------------------------------------------

    async def list_buckets(self) -> list[Bucket]:
        return [b for _, b in await self.buckets.get_range(EMPTY_PARTITION) if not b.is_tombstone()]

    async def find_bucket(self, name: str, key: Key | None = None) -> Bucket:
        """By alias (local to ``key`` first), or by a hex id prefix of at least 8 digits."""
        try:
            bid = await self.resolve_bucket(name, key)
            b = await self.get_bucket(bid)
            if b is not None:
                return b
        except NoSuchBucket:
            pass
        if len(name) >= 8 and all(c in "0123456789abcdef" for c in name.lower()):
            matches = [b for b in await self.list_buckets() if b.id.hex().startswith(name.lower())]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise AdminError(f"{len(matches)} buckets match '{name}'")
        raise NoSuchBucket(name)

    def _check_name(self, name: str) -> None:
        problem = bucket_name_problem(name, self._allow_punycode)
        if problem is not None:
            raise InvalidBucketName(
                f"{name}: Invalid bucket name: a bucket name {problem}. See AWS documentation for constraints "
                "on S3 bucket names:\nhttps://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html"
            )

    async def create_bucket(self, name: str, local_key: str | None = None) -> Bucket:
        self._check_name(name)
        async with self._lock:
            if local_key is not None:
                key = await self.find_key(local_key)
                if live_params(key).local_aliases.get(name) is not None:
                    raise BucketAlreadyExists(f"Key-local alias {name} already exists")
            else:
                key = None
                if await self.resolve_global_alias(name) is not None:
                    raise BucketAlreadyExists(f"Bucket {name} already exists")
            bucket = Bucket.new()
            await self.buckets.insert(bucket)
            if key is None:
                await self._set_global_alias(bucket, name)
            else:
                await self._set_local_alias(key, name, bucket)
                await self._set_perm(bucket.id, key, BucketKeyPerm(0, True, True, True))
            return await self._reread_bucket(bucket.id)

    async def delete_bucket(self, name: str) -> Bucket:
        async with self._lock:
            bucket = await self.find_bucket(name)
            n_aliases = len(bucket.global_aliases()) + len(bucket.local_aliases())
            if n_aliases > 1:
                raise AdminError(f"Bucket {name} still has other aliases; use `bucket unalias` to remove them first.")
            if not await self._bucket_is_empty(bucket.id):
                raise BucketNotEmpty(f"Bucket {name} is not empty")
            for alias in bucket.global_aliases():
                await self._unset_global_alias(bucket, alias)
            for key_id, alias in bucket.local_aliases():
                key = await self.get_key(key_id)
                if key is not None:
                    await self._unset_local_alias(key, alias, bucket.id)
            for key_id in list(live_params(bucket).authorized_keys):
                key = await self.get_key(key_id)
                if key is not None:
                    await self._set_perm(bucket.id, key, BucketKeyPerm(0))
            await self.buckets.insert(Bucket(bucket.id, None))
            return bucket

    async def change_permissions(
        self, bucket_name: str, key_pattern: str, *, allow: bool, read: bool, write: bool, owner: bool
    ) -> tuple[Bucket, Key, BucketKeyPerm]:
        """``allow`` ORs the named flags in; deny clears only the named flags."""
        if not (read or write or owner):
            raise AdminError("You must specify at least one of --read, --write or --owner")
        async with self._lock:
            bucket = await self.find_bucket(bucket_name)
            key = await self.find_key(key_pattern)
            cur = key.bucket_permissions(bucket.id)
            if allow:
                flags = (cur.allow_read or read, cur.allow_write or write, cur.allow_owner or owner)
            else:
                flags = (cur.allow_read and not read, cur.allow_write and not write, cur.allow_owner and not owner)
            perm = BucketKeyPerm(0, *flags)
            await self._set_perm(bucket.id, key, perm)
            return await self._reread_bucket(bucket.id), await self._reread_key(key.key_id), perm

    async def alias_bucket(self, bucket_name: str, new_alias: str, local_key: str | None = None) -> Bucket:
        self._check_name(new_alias)
        async with self._lock:
            bucket = await self.find_bucket(bucket_name)
            if local_key is None:
                existing = await self.resolve_global_alias(new_alias)
                if existing is not None and existing != bucket.id:
                    raise AdminError(_ALIAS_TAKEN.format(new_alias, existing.hex()))
                await self._set_global_alias(bucket, new_alias)
            else:
                key = await self.find_key(local_key)
                existing = live_params(key).local_aliases.get(new_alias)
                if existing is not None and existing != bucket.id:
                    raise AdminError(_ALIAS_TAKEN.format(new_alias, existing.hex()))
                if not key.bucket_permissions(bucket.id).is_any():
                    raise AdminError(f"Key {key.key_id} has no permissions on bucket {bucket.id.hex()}")
                await self._set_local_alias(key, new_alias, bucket)
            return await self._reread_bucket(bucket.id)

    async def unalias_bucket(self, alias: str, local_key: str | None = None) -> Bucket:
        async with self._lock:
            if local_key is None:
                bid = await self.resolve_global_alias(alias)
                bucket = None if bid is None else await self.get_bucket(bid)
                if bucket is None:
                    raise NoSuchBucket(alias)
                if len(bucket.global_aliases()) + len(bucket.local_aliases()) <= 1:
                    raise AdminError(_LAST_ALIAS.format(alias))
                await self._unset_global_alias(bucket, alias)
            else:
                key = await self.find_key(local_key)
                bid = live_params(key).local_aliases.get(alias)
                bucket = None if bid is None else await self.get_bucket(bid)
                if bid is None or bucket is None:
                    raise NoSuchBucket(alias)
                if len(bucket.global_aliases()) + len(bucket.local_aliases()) <= 1:
                    raise AdminError(_LAST_ALIAS.format(alias))
                await self._unset_local_alias(key, alias, bid)
            return await self._reread_bucket(bucket.id)

    # ---- two-sided updates (called under the lock) ---------------------------------------------

    async def _set_perm(self, bucket_id: bytes, key: Key, perm: BucketKeyPerm) -> None:
        bucket = await self.buckets.get(EMPTY_PARTITION + bucket_id)
        old_ts = max(
            key.bucket_permissions(bucket_id).timestamp,
            bucket.params.authorized_keys[key.key_id].timestamp
            if bucket and bucket.params and key.key_id in bucket.params.authorized_keys
            else 0,
        )
        perm.timestamp = increment_logical_clock(old_ts)
        live_params(key).authorized_buckets[bucket_id] = perm
        await self.keys.insert(key)
        if bucket is not None and bucket.params is not None:
            bucket.params.authorized_keys[key.key_id] = BucketKeyPerm(**vars(perm))
            await self.buckets.insert(bucket)

    async def _set_global_alias(self, bucket: Bucket, name: str) -> None:
        old = await self.aliases.get(EMPTY_PARTITION + name.encode())
        ts = increment_logical_clock(max(old.state.ts if old else 0, live_params(bucket).aliases.get_ts(name)))
        await self.aliases.insert(BucketAlias(name, Lww(ts, bucket.id)))
        live_params(bucket).aliases.put(name, True, ts)
        await self.buckets.insert(bucket)

    async def _unset_global_alias(self, bucket: Bucket, name: str) -> None:
        old = await self.aliases.get(EMPTY_PARTITION + name.encode())
        ts = increment_logical_clock(max(old.state.ts if old else 0, live_params(bucket).aliases.get_ts(name)))
        await self.aliases.insert(BucketAlias(name, Lww(ts, None)))
        live_params(bucket).aliases.put(name, False, ts)
        await self.buckets.insert(bucket)

    async def _set_local_alias(self, key: Key, name: str, bucket: Bucket) -> None:
        lk = f"{key.key_id}:{name}"
        kp, bp = live_params(key), live_params(bucket)
        ts = increment_logical_clock(max(kp.local_aliases.get_ts(name), bp.local_aliases.get_ts(lk)))
        kp.local_aliases.put(name, bucket.id, ts)
        await self.keys.insert(key)
        bp.local_aliases.put(lk, True, ts)
        await self.buckets.insert(bucket)

    async def _unset_local_alias(self, key: Key, name: str, bucket_id: bytes) -> None:
        lk = f"{key.key_id}:{name}"
        bucket = await self.buckets.get(EMPTY_PARTITION + bucket_id)
        bts = bucket.params.local_aliases.get_ts(lk) if bucket and bucket.params else 0
        kp = live_params(key)
        ts = increment_logical_clock(max(kp.local_aliases.get_ts(name), bts))
        kp.local_aliases.put(name, None, ts)
        await self.keys.insert(key)
        if bucket is not None and bucket.params is not None:
            bucket.params.local_aliases.put(lk, False, ts)
            await self.buckets.insert(bucket)


# ---- JSON views (shared by the CLI's --json and the admin API) ---------------------------------


async def key_info(helper: MetaHelper, key: Key, show_secret: bool = False) -> dict[str, Any]:
    p = live_params(key)
    buckets = []
    for bid, perm in sorted(p.authorized_buckets.items()):
        b = await helper.get_bucket(bid)
        if b is None or not perm.is_any():
            continue
        buckets.append(
            {
                "id": bid.hex(),
                "globalAliases": b.global_aliases(),
                "localAliases": [a for a, v in p.local_aliases.items() if v == bid],
                "permissions": {"read": perm.allow_read, "write": perm.allow_write, "owner": perm.allow_owner},
            }
        )
    return {
        "name": p.name.value,
        "accessKeyId": key.key_id,
        "secretAccessKey": p.secret_key if show_secret else None,
        "permissions": {"createBucket": p.allow_create_bucket.value},
        "buckets": buckets,
    }


async def bucket_info(helper: MetaHelper, bucket: Bucket) -> dict[str, Any]:
    p = live_params(bucket)
    keys = []
    for key_id, perm in sorted(p.authorized_keys.items()):
        if not perm.is_any():
            continue
        k = await helper.get_key(key_id)
        keys.append(
            {
                "accessKeyId": key_id,
                "name": live_params(k).name.value if k else "",
                "permissions": {"read": perm.allow_read, "write": perm.allow_write, "owner": perm.allow_owner},
                "bucketLocalAliases": [a for kid, a in bucket.local_aliases() if kid == key_id],
            }
        )
    return {
        "id": bucket.id.hex(),
        "globalAliases": bucket.global_aliases(),
        "localAliases": [{"accessKeyId": k, "alias": a} for k, a in bucket.local_aliases()],
        "keys": keys,
        "created": p.creation_date,
    }
