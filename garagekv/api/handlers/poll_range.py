"""PollRange: wait for changes in a range of sort keys, tracked by a seen marker."""

from __future__ import annotations

from aiohttp import web

from garagekv.api.context import RequestContext, json_response
from garagekv.api.handlers.item import clamp_timeout
from garagekv.api.json_fields import expect_object, item_json, opt_str, opt_uint
from garagekv.model.k2v.range import RangeQuery
from garagekv.model.k2v.seen import RangeSeenMarker


async def poll_range(ctx: RequestContext) -> web.StreamResponse:
    obj = expect_object(await ctx.json_body(), "the poll request")
    q = RangeQuery(opt_str(obj, "prefix"), opt_str(obj, "start"), opt_str(obj, "end"))
    for name in ("prefix", "start", "end"):
        ctx.check_key_len(name, getattr(q, name))
    ctx.check_key_len("partition key", ctx.endpoint.partition_key)
    timeout = clamp_timeout(opt_uint(obj, "timeout"))
    raw_marker = opt_str(obj, "seenMarker")
    q.check()
    marker = None if raw_marker is None else RangeSeenMarker.decode(raw_marker)
    pk = ctx.endpoint.partition_key
    assert pk is not None  # routing: PollRange is only on /<bucket>/<partition key>
    res = await ctx.state.store.poll_range(ctx.bucket_id, pk, q, marker, timeout)
    if res is None:
        return web.Response(status=304)
    items, new_marker = res
    return json_response({"items": [item_json(i) for i in items], "seenMarker": new_marker.encode()})
