"""InsertBatch, ReadBatch and DeleteBatch (docs/k2v-api.md §8).

Every query or item is parsed and validated before anything is read or written, so one bad
element fails the request with nothing changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from garagekv.api.context import RequestContext, json_response
from garagekv.api.json_fields import (
    b64_value,
    expect_list,
    expect_object,
    item_json,
    opt_bool,
    opt_str,
    opt_ttl,
    opt_uint,
    req_str,
)
from garagekv.model.k2v.causality import CausalContext
from garagekv.model.k2v.item import K2VItem
from garagekv.model.k2v.messages import InsertedItem
from garagekv.model.k2v.range import RangeQuery
from garagekv.model.k2v.schema import ItemFilter
from garagekv.util.errors import BadRequest


def _check_count(ctx: RequestContext, n: int, what: str) -> None:
    limit = ctx.state.limits.max_batch_items
    if n > limit:
        raise BadRequest(f"Too many {what} in batch: {n} (the limit is {limit})")


async def insert_batch(ctx: RequestContext) -> web.StreamResponse:
    body = expect_list(await ctx.json_body(), "items")
    _check_count(ctx, len(body), "items")
    items: list[InsertedItem] = []
    for raw in body:
        obj = expect_object(raw, "an item")
        pk, sk = req_str(obj, "pk"), req_str(obj, "sk")
        ct_raw, v_raw = opt_str(obj, "ct"), opt_str(obj, "v")
        ctx.check_key_len("pk", pk)
        ctx.check_key_len("sk", sk)
        ct = None if ct_raw is None else CausalContext.parse_client(ct_raw)
        value = None if v_raw is None else b64_value(v_raw)
        ttl = opt_ttl(obj)
        if ttl is not None and value is None:
            raise BadRequest("Invalid JSON: a deletion (`v` null) cannot have a `ttl`")
        items.append(InsertedItem(pk, sk, ct, value, ttl))
    if items:
        await ctx.state.store.insert_many(ctx.bucket_id, items)
    return web.Response(status=204)


@dataclass
class BatchQuery:
    partition_key: str
    range: RangeQuery
    single_item: bool
    conflicts_only: bool = False
    tombstones: bool = False

    def echo(self) -> dict[str, Any]:
        return {
            "partitionKey": self.partition_key,
            "prefix": self.range.prefix,
            "start": self.range.start,
            "end": self.range.end,
            "singleItem": self.single_item,
        }


def _parse_query(ctx: RequestContext, raw: Any, *, for_delete: bool) -> BatchQuery:
    obj = expect_object(raw, "a query")
    pk = req_str(obj, "partitionKey")
    q = RangeQuery(opt_str(obj, "prefix"), opt_str(obj, "start"), opt_str(obj, "end"))
    single = opt_bool(obj, "singleItem")
    bq = BatchQuery(pk, q, single)
    if not for_delete:
        q.limit = opt_uint(obj, "limit")
        q.reverse = opt_bool(obj, "reverse")
        bq.conflicts_only = opt_bool(obj, "conflictsOnly")
        bq.tombstones = opt_bool(obj, "tombstones")
    ctx.check_key_len("partitionKey", pk)
    for name in ("prefix", "start", "end"):
        ctx.check_key_len(name, getattr(q, name))
    if single:
        if q.start is None:
            raise BadRequest("singleItem requires start")
        if q.prefix is not None or q.end is not None or q.limit is not None or q.reverse:
            raise BadRequest("singleItem cannot be combined with prefix, end, limit or reverse")
    else:
        q.check()
    return bq


def _parse_queries(ctx: RequestContext, body: Any, *, for_delete: bool) -> list[BatchQuery]:
    queries = expect_list(body, "queries")
    _check_count(ctx, len(queries), "queries")
    return [_parse_query(ctx, q, for_delete=for_delete) for q in queries]


async def _run_query(ctx: RequestContext, bq: BatchQuery, filt: ItemFilter) -> tuple[list[K2VItem], bool, str | None]:
    store = ctx.state.store
    if bq.single_item:
        assert bq.range.start is not None  # _parse_query refuses singleItem without start
        item = await store.read_item(ctx.bucket_id, bq.partition_key, bq.range.start)
        if item is not None and item.values() and store.items.schema.matches_filter(item, filt):
            return [item], False, None
        return [], False, None
    page = await store.read_range(ctx.bucket_id, bq.partition_key, bq.range, filt)
    return [e for _, e in page.entries], page.more, page.next_start


async def read_batch(ctx: RequestContext) -> web.StreamResponse:
    queries = _parse_queries(ctx, await ctx.json_body(), for_delete=False)
    out = []
    for bq in queries:
        filt = ItemFilter(exclude_only_tombstones=not bq.tombstones, conflicts_only=bq.conflicts_only)
        items, more, next_start = await _run_query(ctx, bq, filt)
        res = bq.echo()
        res.update(
            {
                "limit": bq.range.limit,
                "reverse": bq.range.reverse,
                "conflictsOnly": bq.conflicts_only,
                "tombstones": bq.tombstones,
                "items": [item_json(i) for i in items],
                "more": more,
                "nextStart": next_start,
            }
        )
        out.append(res)
    return json_response(out)


async def delete_batch(ctx: RequestContext) -> web.StreamResponse:
    queries = _parse_queries(ctx, await ctx.json_body(), for_delete=True)
    out = []
    live = ItemFilter(exclude_only_tombstones=True)
    for bq in queries:
        items, _, _ = await _run_query(ctx, bq, live)
        deletes = [InsertedItem(bq.partition_key, i.sort_key, i.causal_context(), None) for i in items]
        if deletes:
            await ctx.state.store.insert_many(ctx.bucket_id, deletes)
        res = bq.echo()
        res["deletedItems"] = len(deletes)
        out.append(res)
    return json_response(out)
