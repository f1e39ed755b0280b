"""Operator operations on keys and buckets, by name, with declared arguments and JSON-able results.

The CLI (over the cluster RPC) and the admin HTTP API call these by name through the node's
operation registry (``garagekv.admin.registry``), so every front end shares one implementation
of each operation. Keys are named by ``pattern`` (the CLI's: an id prefix or a name) or by an
exact ``id``; buckets by ``name`` (an alias or a hex id prefix), an exact ``id`` (64 hex digits)
or an exact ``global_alias``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from garagekv.admin.operation import NoArgs, Op, OpServices, required
from garagekv.model.helper import MetaHelper, bucket_info, key_info, live_params
from garagekv.model.key_table import KEY_ID_RE
from garagekv.util.errors import AdminError, BucketAlreadyExists, NoSuchAccessKey, NoSuchBucket


async def _key_ref(h: MetaHelper, pattern: str | None, key_id: str | None) -> str | None:
    """The key pattern to hand to the helper: ``pattern``, or ``key_id`` once it is known to
    be the id of an existing key (a full id never matches another key as a pattern)."""
    if key_id is None:
        return pattern
    if not KEY_ID_RE.match(key_id) or await h.get_key(key_id) is None:
        raise NoSuchAccessKey(f"No key with id '{key_id}'")
    return key_id


async def _bucket_ref(
    h: MetaHelper, name: str | None, bucket_id: str | None, global_alias: str | None = None, fuzzy: str = "name"
) -> str:
    """The bucket name to hand to the helper: ``name`` (the argument called ``fuzzy``), or the
    hex id of the bucket named exactly by ``bucket_id`` or ``global_alias`` (a 64-hex id is
    never an alias: those are at most 63 characters)."""
    if bucket_id is not None:
        bid = bucket_id
        try:
            raw = bytes.fromhex(bid) if len(bid) == 64 else None
        except ValueError:
            raw = None
        if raw is None:
            raise AdminError(f"Invalid bucket id: {bid!r} (expected 64 hex digits)")
        if await h.get_bucket(raw) is None:
            raise NoSuchBucket(bid)
        return raw.hex()  # canonical (lowercase), as stored and compared
    if global_alias is not None:
        raw = await h.resolve_global_alias(global_alias)
        if raw is None or await h.get_bucket(raw) is None:
            raise NoSuchBucket(global_alias)
        return raw.hex()
    return required(name, fuzzy)


@dataclass(frozen=True, kw_only=True)
class KeyRef:
    """A key by ``pattern`` (an id prefix or a name) or by exact ``id``."""

    pattern: str | None = None
    id: str | None = None


@dataclass(frozen=True, kw_only=True)
class BucketRef:
    """A bucket by ``name`` (an alias or a hex id prefix), exact ``id`` or exact ``global_alias``."""

    name: str | None = None
    id: str | None = None
    global_alias: str | None = None


@dataclass(frozen=True, kw_only=True)
class KeyCreateArgs:
    name: str | None = None


async def key_create(s: OpServices, a: KeyCreateArgs) -> dict[str, Any]:
    h = s.model.helper
    return await key_info(h, await h.create_key(a.name or "Unnamed key"), show_secret=True)


@dataclass(frozen=True, kw_only=True)
class KeyImportArgs:
    key_id: str
    secret: str
    name: str | None = None


async def key_import(s: OpServices, a: KeyImportArgs) -> dict[str, Any]:
    h = s.model.helper
    key = await h.import_key(a.key_id, a.secret, a.name or "Imported key")
    return await key_info(h, key, show_secret=True)


async def key_list(s: OpServices, a: NoArgs) -> list[dict[str, Any]]:
    return [{"id": k.key_id, "name": live_params(k).name.value} for k in await s.model.helper.list_keys()]


@dataclass(frozen=True, kw_only=True)
class KeyInfoArgs(KeyRef):
    show_secret: bool = False


async def key_info_op(s: OpServices, a: KeyInfoArgs) -> dict[str, Any]:
    h = s.model.helper
    pattern = await _key_ref(h, a.pattern, a.id)
    return await key_info(h, await h.find_key(required(pattern, "pattern")), show_secret=a.show_secret)


@dataclass(frozen=True, kw_only=True)
class KeyRenameArgs(KeyRef):
    name: str


async def key_rename(s: OpServices, a: KeyRenameArgs) -> dict[str, Any]:
    h = s.model.helper
    return await key_info(h, await h.rename_key(required(await _key_ref(h, a.pattern, a.id), "pattern"), a.name))


async def key_delete(s: OpServices, a: KeyRef) -> dict[str, Any]:
    h = s.model.helper
    key = await h.delete_key(required(await _key_ref(h, a.pattern, a.id), "pattern"))
    return {"id": key.key_id}


@dataclass(frozen=True, kw_only=True)
class KeySetCreateBucketArgs(KeyRef):
    allow: bool


async def key_set_create_bucket(s: OpServices, a: KeySetCreateBucketArgs) -> dict[str, Any]:
    h = s.model.helper
    pattern = required(await _key_ref(h, a.pattern, a.id), "pattern")
    return await key_info(h, await h.set_key_create_bucket(pattern, a.allow))


@dataclass(frozen=True, kw_only=True)
class KeyUpdateArgs(KeyRef):
    name: str | None = None
    allow_create_bucket: bool | None = None


async def key_update(s: OpServices, a: KeyUpdateArgs) -> dict[str, Any]:
    """Rename and/or change the create-bucket flag (``allow_create_bucket``: true, false or absent)."""
    h = s.model.helper
    pattern = required(await _key_ref(h, a.pattern, a.id), "pattern")
    key = await h.find_key(pattern)
    if a.name is not None:
        key = await h.rename_key(key.key_id, a.name)
    if a.allow_create_bucket is not None:
        key = await h.set_key_create_bucket(key.key_id, a.allow_create_bucket)
    return await key_info(h, key)


@dataclass(frozen=True, kw_only=True)
class BucketCreateArgs:
    name: str | None = None
    local_key: str | None = None
    local_key_id: str | None = None
    global_alias: str | None = None
    local_alias: str | None = None
    local_permissions: dict[str, Any] | None = None


async def bucket_create(s: OpServices, a: BucketCreateArgs) -> dict[str, Any]:
    """``name`` (+ ``local_key``): the CLI's form. Or ``global_alias`` and/or ``local_alias`` with
    ``local_key``/``local_key_id`` and optional ``local_permissions`` {read, write, owner} (the
    admin API's form; the key gets read, write and owner when they are not given)."""
    h = s.model.helper
    local_key = await _key_ref(h, a.local_key, a.local_key_id)
    global_alias, local_alias = a.global_alias, a.local_alias
    if global_alias is None and local_alias is None:
        return await bucket_info(h, await h.create_bucket(required(a.name, "name"), local_key))
    if local_alias is None:
        assert global_alias is not None  # both None was the CLI's form, above
        return await bucket_info(h, await h.create_bucket(global_alias))
    if local_key is None:
        raise AdminError("A local alias needs the access key it belongs to")
    if global_alias is not None:
        h._check_name(global_alias)
        if await h.resolve_global_alias(global_alias) is not None:
            raise BucketAlreadyExists(f"Bucket {global_alias} already exists")
    bucket = await h.create_bucket(local_alias, local_key)
    if global_alias is not None:
        bucket = await h.alias_bucket(bucket.id.hex(), global_alias)
    perms = a.local_permissions
    if perms is not None:
        clear = {f: not bool(perms.get(f)) for f in ("read", "write", "owner")}
        if any(clear.values()):
            await h.change_permissions(bucket.id.hex(), local_key, allow=False, **clear)
        reread = await h.get_bucket(bucket.id)
        if reread is None:  # another node deleted it meanwhile: a 404, not a crash in bucket_info
            raise NoSuchBucket(bucket.id.hex())
        bucket = reread
    return await bucket_info(h, bucket)


async def bucket_list(s: OpServices, a: NoArgs) -> list[dict[str, Any]]:
    out = []
    for b in await s.model.helper.list_buckets():
        out.append(
            {
                "id": b.id.hex(),
                "globalAliases": b.global_aliases(),
                "localAliases": [{"accessKeyId": k, "alias": al} for k, al in b.local_aliases()],
            }
        )
    return out


async def bucket_info_op(s: OpServices, a: BucketRef) -> dict[str, Any]:
    h = s.model.helper
    return await bucket_info(h, await h.find_bucket(await _bucket_ref(h, a.name, a.id, a.global_alias)))


async def bucket_delete(s: OpServices, a: BucketRef) -> dict[str, Any]:
    h = s.model.helper
    b = await h.delete_bucket(await _bucket_ref(h, a.name, a.id, a.global_alias))
    return {"id": b.id.hex()}


@dataclass(frozen=True, kw_only=True)
class BucketPermissionsArgs:
    bucket: str | None = None
    id: str | None = None
    global_alias: str | None = None
    key: str | None = None
    key_id: str | None = None
    allow: bool
    read: bool = False
    write: bool = False
    owner: bool = False


async def bucket_permissions(s: OpServices, a: BucketPermissionsArgs) -> dict[str, Any]:
    h = s.model.helper
    key_pattern = required(await _key_ref(h, a.key, a.key_id), "key")
    bucket, key, perm = await h.change_permissions(
        await _bucket_ref(h, a.bucket, a.id, a.global_alias, "bucket"),
        key_pattern,
        allow=a.allow,
        read=a.read,
        write=a.write,
        owner=a.owner,
    )
    return {
        "bucket": bucket.id.hex(),
        "key": key.key_id,
        "permissions": {"read": perm.allow_read, "write": perm.allow_write, "owner": perm.allow_owner},
    }


@dataclass(frozen=True, kw_only=True)
class BucketAliasArgs:
    bucket: str | None = None
    id: str | None = None
    global_alias: str | None = None
    alias: str
    local_key: str | None = None
    local_key_id: str | None = None


async def bucket_alias(s: OpServices, a: BucketAliasArgs) -> dict[str, Any]:
    h = s.model.helper
    local_key = await _key_ref(h, a.local_key, a.local_key_id)
    bucket = await _bucket_ref(h, a.bucket, a.id, a.global_alias, "bucket")
    return await bucket_info(h, await h.alias_bucket(bucket, a.alias, local_key))


@dataclass(frozen=True, kw_only=True)
class BucketUnaliasArgs:
    alias: str
    id: str | None = None
    local_key: str | None = None
    local_key_id: str | None = None


async def bucket_unalias(s: OpServices, a: BucketUnaliasArgs) -> dict[str, Any]:
    """Remove ``alias`` (global, or of ``local_key``); with ``id``, only if it names that bucket."""
    h = s.model.helper
    local_key = await _key_ref(h, a.local_key, a.local_key_id)
    if a.id is not None:
        bid = await _bucket_ref(h, None, a.id)
        if local_key is None:
            target = await h.resolve_global_alias(a.alias)
        else:
            target = live_params(await h.find_key(local_key)).local_aliases.get(a.alias)
        if target is None or target.hex() != bid:
            raise AdminError(f"Bucket {bid} doesn't have alias {a.alias}")
    return await bucket_info(h, await h.unalias_bucket(a.alias, local_key))


KEY_BUCKET_OPS: tuple[Op[Any], ...] = (
    Op("key.create", KeyCreateArgs, key_create),
    Op("key.import", KeyImportArgs, key_import),
    Op("key.list", NoArgs, key_list),
    Op("key.info", KeyInfoArgs, key_info_op),
    Op("key.rename", KeyRenameArgs, key_rename),
    Op("key.delete", KeyRef, key_delete),
    Op("key.set_create_bucket", KeySetCreateBucketArgs, key_set_create_bucket),
    Op("key.update", KeyUpdateArgs, key_update),
    Op("bucket.create", BucketCreateArgs, bucket_create),
    Op("bucket.list", NoArgs, bucket_list),
    Op("bucket.info", BucketRef, bucket_info_op),
    Op("bucket.delete", BucketRef, bucket_delete),
    Op("bucket.permissions", BucketPermissionsArgs, bucket_permissions),
    Op("bucket.alias", BucketAliasArgs, bucket_alias),
    Op("bucket.unalias", BucketUnaliasArgs, bucket_unalias),
)
