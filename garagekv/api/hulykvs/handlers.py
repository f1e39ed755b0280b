"""One function per Hulykvs request: API v2 (workspaces, conditions, ETags), API v1, probes."""

from __future__ import annotations

import json

from aiohttp import web

from garagekv.api.hulykvs.conditions import NONE, parse_conditions
from garagekv.api.hulykvs.context import HulyRequest, Target
from garagekv.api.hulykvs.errors import HulyError, not_found
from garagekv.api.hulykvs.store import PreconditionFailed

JSON_TYPE = "application/json"


def _json(data: object) -> web.Response:
    return web.Response(body=json.dumps(data, ensure_ascii=False).encode(), headers={"Content-Type": JSON_TYPE})


def _precondition_failed() -> HulyError:
    return HulyError(412, "precondition failed")


async def _get(ctx: HulyRequest, t: Target) -> web.StreamResponse:
    assert t.key is not None
    stored = await ctx.state.store.get(t.workspace, t.namespace, t.key)
    if stored is None:
        raise not_found("key not found")
    headers = {"ETag": stored.md5, "Content-Type": "application/octet-stream"}
    if ctx.request.method == "HEAD":
        # The same headers without the body; aiohttp leaves Content-Length out of a HEAD answer
        # whose body is empty, so it is set here, for an empty value too.
        headers["Content-Length"] = str(len(stored.value))
        return web.Response(headers=headers)
    return web.Response(body=stored.value, headers=headers)


async def _list(ctx: HulyRequest, t: Target, with_workspace: bool) -> web.StreamResponse:
    prefix = ctx.prefix()
    keys = await ctx.state.store.list(t.workspace, t.namespace, prefix)
    body: dict[str, object] = {"workspace": t.workspace} if with_workspace else {}
    body.update({"namespace": t.namespace, "count": len(keys), "keys": keys})
    return _json(body)


async def _delete(ctx: HulyRequest, t: Target, allow_conditions: bool) -> web.StreamResponse:
    assert t.key is not None
    cond = NONE
    if allow_conditions:
        cond = parse_conditions(ctx.header("If-Match"), ctx.header("If-None-Match"), allow_none_match=False)
    try:
        existed = await ctx.state.store.delete(t.workspace, t.namespace, t.key, cond)
    except PreconditionFailed:
        raise _precondition_failed()
    if not existed:
        raise not_found("key not found")
    return web.Response(status=204)


# ---- API v2: /api2/{workspace}/{namespace}[/{key}] ---------------------------------------------------


async def v2_get(ctx: HulyRequest) -> web.StreamResponse:
    return await _get(ctx, ctx.v2_target())


async def v2_put(ctx: HulyRequest) -> web.StreamResponse:
    t = ctx.v2_target()
    assert t.key is not None
    cond = parse_conditions(ctx.header("If-Match"), ctx.header("If-None-Match"))
    value = await ctx.body()
    try:
        created = await ctx.state.store.put(t.workspace, t.namespace, t.key, value, cond)
    except PreconditionFailed:
        raise _precondition_failed()
    # Hulykvs answers 201 only to a create-only write; an upsert is 204 either way.
    return web.Response(status=201 if created and cond.kind == "absent" else 204)


async def v2_delete(ctx: HulyRequest) -> web.StreamResponse:
    return await _delete(ctx, ctx.v2_target(), allow_conditions=True)


async def v2_list(ctx: HulyRequest) -> web.StreamResponse:
    return await _list(ctx, ctx.v2_target(), with_workspace=True)


# ---- API v1: /api/{namespace}[/{key}] in the default workspace --------------------------------------


async def v1_get(ctx: HulyRequest) -> web.StreamResponse:
    return await _get(ctx, ctx.v1_target())


async def v1_post(ctx: HulyRequest) -> web.StreamResponse:
    t = ctx.v1_target()
    assert t.key is not None
    await ctx.state.store.put(t.workspace, t.namespace, t.key, await ctx.body(), NONE)
    return web.Response(status=204)


async def v1_delete(ctx: HulyRequest) -> web.StreamResponse:
    return await _delete(ctx, ctx.v1_target(), allow_conditions=False)


async def v1_list(ctx: HulyRequest) -> web.StreamResponse:
    return await _list(ctx, ctx.v1_target(), with_workspace=False)


# ---- probes (no authentication) ----------------------------------------------------------------------


async def status(ctx: HulyRequest) -> web.StreamResponse:
    return web.Response(text="ok")


async def ready(ctx: HulyRequest) -> web.StreamResponse:
    if not ctx.state.ready():
        raise HulyError(503, "this node cannot reach a write quorum for every partition")
    return web.Response(text="ok")
