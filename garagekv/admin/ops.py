"""Operator operations on keys and buckets, by name, with JSON-able arguments and results.

The CLI (and later the admin HTTP API) call these by name so every front end shares one
implementation of each operation.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from garagekv.model.helper import MetaHelper, bucket_info, key_info
from garagekv.util.errors import AdminError

Op = Callable[[MetaHelper, dict[str, Any]], Awaitable[Any]]


async def key_create(h: MetaHelper, a: dict) -> dict:
    return await key_info(h, await h.create_key(a.get("name") or "Unnamed key"), show_secret=True)


async def key_import(h: MetaHelper, a: dict) -> dict:
    key = await h.import_key(a["key_id"], a["secret"], a.get("name") or "Imported key")
    return await key_info(h, key, show_secret=True)


async def key_list(h: MetaHelper, a: dict) -> list:
    return [{"id": k.key_id, "name": k.params.name.value} for k in await h.list_keys()]


async def key_info_op(h: MetaHelper, a: dict) -> dict:
    return await key_info(h, await h.find_key(a["pattern"]), show_secret=bool(a.get("show_secret")))


async def key_rename(h: MetaHelper, a: dict) -> dict:
    return await key_info(h, await h.rename_key(a["pattern"], a["name"]))


async def key_delete(h: MetaHelper, a: dict) -> dict:
    key = await h.delete_key(a["pattern"])
    return {"id": key.key_id}


async def key_set_create_bucket(h: MetaHelper, a: dict) -> dict:
    return await key_info(h, await h.set_key_create_bucket(a["pattern"], bool(a["allow"])))


async def bucket_create(h: MetaHelper, a: dict) -> dict:
    return await bucket_info(h, await h.create_bucket(a["name"], a.get("local_key")))


async def bucket_list(h: MetaHelper, a: dict) -> list:
    out = []
    for b in await h.list_buckets():
        out.append({"id": b.id.hex(), "globalAliases": b.global_aliases(),
                    "localAliases": [{"accessKeyId": k, "alias": al} for k, al in b.local_aliases()]})
    return out


async def bucket_info_op(h: MetaHelper, a: dict) -> dict:
    return await bucket_info(h, await h.find_bucket(a["name"]))


async def bucket_delete(h: MetaHelper, a: dict) -> dict:
    b = await h.delete_bucket(a["name"])
    return {"id": b.id.hex()}


async def bucket_permissions(h: MetaHelper, a: dict) -> dict:
    bucket, key, perm = await h.change_permissions(
        a["bucket"], a["key"], allow=bool(a["allow"]), read=bool(a.get("read")),
        write=bool(a.get("write")), owner=bool(a.get("owner")),
    )
    return {"bucket": bucket.id.hex(), "key": key.key_id,
            "permissions": {"read": perm.allow_read, "write": perm.allow_write, "owner": perm.allow_owner}}


async def bucket_alias(h: MetaHelper, a: dict) -> dict:
    return await bucket_info(h, await h.alias_bucket(a["bucket"], a["alias"], a.get("local_key")))


async def bucket_unalias(h: MetaHelper, a: dict) -> dict:
    return await bucket_info(h, await h.unalias_bucket(a["alias"], a.get("local_key")))


OPS: dict[str, Op] = {
    "key.create": key_create,
    "key.import": key_import,
    "key.list": key_list,
    "key.info": key_info_op,
    "key.rename": key_rename,
    "key.delete": key_delete,
    "key.set_create_bucket": key_set_create_bucket,
    "bucket.create": bucket_create,
    "bucket.list": bucket_list,
    "bucket.info": bucket_info_op,
    "bucket.delete": bucket_delete,
    "bucket.permissions": bucket_permissions,
    "bucket.alias": bucket_alias,
    "bucket.unalias": bucket_unalias,
}


async def run_op(helper: MetaHelper, name: str, args: dict[str, Any]) -> Any:
    op = OPS.get(name)
    if op is None:
        raise AdminError(f"unknown operation {name!r}")
    try:
        return await op(helper, args)
    except KeyError as e:
        raise AdminError(f"missing argument {e.args[0]!r} for {name}")
