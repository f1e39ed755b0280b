"""Operator operations on keys and buckets, by name, with JSON-able arguments and results.

The CLI (through the control socket) and the admin HTTP API call these by name, so every front
end shares one implementation of each operation. Keys are named by ``pattern`` (the CLI's: an id
prefix or a name) or by an exact ``id``; buckets by ``name`` (an alias or a hex id prefix), an
exact ``id`` (64 hex digits) or an exact ``global_alias``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from garagekv.model.helper import MetaHelper, bucket_info, key_info
from garagekv.model.key_table import KEY_ID_RE
from garagekv.util.errors import AdminError, BucketAlreadyExists, NoSuchAccessKey, NoSuchBucket

Op = Callable[[MetaHelper, dict[str, Any]], Awaitable[Any]]


async def _key_ref(h: MetaHelper, a: dict, fuzzy: str = "pattern", exact: str = "id") -> str | None:
    """The key pattern to hand to the helper: ``a[fuzzy]``, or ``a[exact]`` once it is known to
    be the id of an existing key (a full id never matches another key as a pattern)."""
    key_id = a.get(exact)
    if key_id is None:
        return a.get(fuzzy)
    if not isinstance(key_id, str) or not KEY_ID_RE.match(key_id) or await h.get_key(key_id) is None:
        raise NoSuchAccessKey(f"No key with id '{key_id}'")
    return key_id


async def _bucket_ref(h: MetaHelper, a: dict, fuzzy: str = "name") -> str:
    """The bucket name to hand to the helper: ``a[fuzzy]``, or the hex id of the bucket named
    exactly by ``a["id"]`` or ``a["global_alias"]`` (a 64-hex id is never an alias: those are at
    most 63 characters)."""
    if a.get("id") is not None:
        bid = a["id"]
        try:
            raw = bytes.fromhex(bid) if isinstance(bid, str) and len(bid) == 64 else None
        except ValueError:
            raw = None
        if raw is None:
            raise AdminError(f"Invalid bucket id: {bid!r} (expected 64 hex digits)")
        if await h.get_bucket(raw) is None:
            raise NoSuchBucket(bid)
        return bid
    if a.get("global_alias") is not None:
        raw = await h.resolve_global_alias(a["global_alias"])
        if raw is None or await h.get_bucket(raw) is None:
            raise NoSuchBucket(a["global_alias"])
        return raw.hex()
    return a[fuzzy]


async def key_create(h: MetaHelper, a: dict) -> dict:
    return await key_info(h, await h.create_key(a.get("name") or "Unnamed key"), show_secret=True)


async def key_import(h: MetaHelper, a: dict) -> dict:
    key = await h.import_key(a["key_id"], a["secret"], a.get("name") or "Imported key")
    return await key_info(h, key, show_secret=True)


async def key_list(h: MetaHelper, a: dict) -> list:
    return [{"id": k.key_id, "name": k.params.name.value} for k in await h.list_keys()]


async def key_info_op(h: MetaHelper, a: dict) -> dict:
    pattern = await _key_ref(h, a)
    return await key_info(h, await h.find_key(_required(pattern, "pattern")), show_secret=bool(a.get("show_secret")))


async def key_rename(h: MetaHelper, a: dict) -> dict:
    return await key_info(h, await h.rename_key(_required(await _key_ref(h, a), "pattern"), a["name"]))


async def key_delete(h: MetaHelper, a: dict) -> dict:
    key = await h.delete_key(_required(await _key_ref(h, a), "pattern"))
    return {"id": key.key_id}


async def key_set_create_bucket(h: MetaHelper, a: dict) -> dict:
    pattern = _required(await _key_ref(h, a), "pattern")
    return await key_info(h, await h.set_key_create_bucket(pattern, bool(a["allow"])))


async def key_update(h: MetaHelper, a: dict) -> dict:
    """Rename and/or change the create-bucket flag (``allow_create_bucket``: true, false or absent)."""
    pattern = _required(await _key_ref(h, a), "pattern")
    key = await h.find_key(pattern)
    if a.get("name") is not None:
        key = await h.rename_key(key.key_id, a["name"])
    if a.get("allow_create_bucket") is not None:
        key = await h.set_key_create_bucket(key.key_id, bool(a["allow_create_bucket"]))
    return await key_info(h, key)


async def bucket_create(h: MetaHelper, a: dict) -> dict:
    """``name`` (+ ``local_key``): the CLI's form. Or ``global_alias`` and/or ``local_alias`` with
    ``local_key``/``local_key_id`` and optional ``local_permissions`` {read, write, owner} (the
    admin API's form; the key gets read, write and owner when they are not given)."""
    local_key = await _key_ref(h, a, "local_key", "local_key_id")
    global_alias, local_alias = a.get("global_alias"), a.get("local_alias")
    if global_alias is None and local_alias is None:
        return await bucket_info(h, await h.create_bucket(a["name"], local_key))
    if local_alias is None:
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
    perms = a.get("local_permissions")
    if perms is not None:
        clear = {f: not bool(perms.get(f)) for f in ("read", "write", "owner")}
        if any(clear.values()):
            await h.change_permissions(bucket.id.hex(), local_key, allow=False, **clear)
        bucket = await h.get_bucket(bucket.id)
    return await bucket_info(h, bucket)


async def bucket_list(h: MetaHelper, a: dict) -> list:
    out = []
    for b in await h.list_buckets():
        out.append(
            {
                "id": b.id.hex(),
                "globalAliases": b.global_aliases(),
                "localAliases": [{"accessKeyId": k, "alias": al} for k, al in b.local_aliases()],
            }
        )
    return out


async def bucket_info_op(h: MetaHelper, a: dict) -> dict:
    return await bucket_info(h, await h.find_bucket(await _bucket_ref(h, a)))


async def bucket_delete(h: MetaHelper, a: dict) -> dict:
    b = await h.delete_bucket(await _bucket_ref(h, a))
    return {"id": b.id.hex()}


async def bucket_permissions(h: MetaHelper, a: dict) -> dict:
    key = _required(await _key_ref(h, a, "key", "key_id"), "key")
    bucket, key, perm = await h.change_permissions(
        await _bucket_ref(h, a, "bucket"),
        key,
        allow=bool(a["allow"]),
        read=bool(a.get("read")),
        write=bool(a.get("write")),
        owner=bool(a.get("owner")),
    )
    return {
        "bucket": bucket.id.hex(),
        "key": key.key_id,
        "permissions": {"read": perm.allow_read, "write": perm.allow_write, "owner": perm.allow_owner},
    }


async def bucket_alias(h: MetaHelper, a: dict) -> dict:
    local_key = await _key_ref(h, a, "local_key", "local_key_id")
    return await bucket_info(h, await h.alias_bucket(await _bucket_ref(h, a, "bucket"), a["alias"], local_key))


async def bucket_unalias(h: MetaHelper, a: dict) -> dict:
    """Remove ``alias`` (global, or of ``local_key``); with ``id``, only if it names that bucket."""
    local_key = await _key_ref(h, a, "local_key", "local_key_id")
    if a.get("id") is not None:
        bid = await _bucket_ref(h, a)
        if local_key is None:
            target = await h.resolve_global_alias(a["alias"])
        else:
            target = (await h.find_key(local_key)).params.local_aliases.get(a["alias"])
        if target is None or target.hex() != bid:
            raise AdminError(f"Bucket {bid} doesn't have alias {a['alias']}")
    return await bucket_info(h, await h.unalias_bucket(a["alias"], local_key))


OPS: dict[str, Op] = {
    "key.create": key_create,
    "key.import": key_import,
    "key.list": key_list,
    "key.info": key_info_op,
    "key.rename": key_rename,
    "key.delete": key_delete,
    "key.set_create_bucket": key_set_create_bucket,
    "key.update": key_update,
    "bucket.create": bucket_create,
    "bucket.list": bucket_list,
    "bucket.info": bucket_info_op,
    "bucket.delete": bucket_delete,
    "bucket.permissions": bucket_permissions,
    "bucket.alias": bucket_alias,
    "bucket.unalias": bucket_unalias,
}


def _required(value: Any, name: str) -> Any:
    if value is None:
        raise KeyError(name)
    return value


async def run_op(helper: MetaHelper, name: str, args: dict[str, Any]) -> Any:
    op = OPS.get(name)
    if op is None:
        raise AdminError(f"unknown operation {name!r}")
    try:
        return await op(helper, args)
    except KeyError as e:
        raise AdminError(f"missing argument {e.args[0]!r} for {name}")
