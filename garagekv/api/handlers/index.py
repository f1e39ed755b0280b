"""ReadIndex: the partition keys of a bucket with their counters (docs/k2v-api.md §8)."""

from __future__ import annotations

from aiohttp import web

from garagekv.api.context import RequestContext, json_response
from garagekv.model.k2v.range import RangeQuery


async def read_index(ctx: RequestContext) -> web.StreamResponse:
    ep = ctx.endpoint
    for name in ("prefix", "start", "end"):
        ctx.check_key_len(name, getattr(ep, name))
    q = RangeQuery(ep.prefix, ep.start, ep.end, ep.limit, ep.reverse)
    store = ctx.state.store
    page, filt = await store.read_index(ctx.bucket_id, q)
    keys = [{"pk": pk, **store.counter_values(entry, filt)} for pk, entry in page.entries]
    return json_response(
        {
            "prefix": ep.prefix,
            "start": ep.start,
            "end": ep.end,
            "limit": ep.limit,
            "reverse": ep.reverse,
            "partitionKeys": keys,
            "more": page.more,
            "nextStart": page.next_start,
        }
    )
