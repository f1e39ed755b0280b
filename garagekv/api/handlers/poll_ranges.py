"""PollRanges: one long poll over several ranges, each tracked by its own seen marker.

The model sends each storage node one poll carrying every range of the call it holds, and
answers once one range has news, after a short grace so that changes landing together are
reported together (garagekv/model/k2v/poll_ranges.py). Every range is validated before any poll
starts, so one bad range fails the request with nothing waited for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from garagekv.api.context import RequestContext, json_response
from garagekv.api.handlers.item import clamp_timeout
from garagekv.api.json_fields import expect_list, expect_object, item_json, opt_str, opt_uint, req_str
from garagekv.model.k2v.messages import MAX_POLLED_RANGES
from garagekv.model.k2v.poll_ranges import RangePoll
from garagekv.model.k2v.range import RangeQuery
from garagekv.model.k2v.seen import RangeSeenMarker
from garagekv.util.errors import BadRequest

MAX_RANGES = MAX_POLLED_RANGES


@dataclass
class PolledRange:
    partition_key: str
    query: RangeQuery
    raw_marker: str | None
    marker: RangeSeenMarker | None


def _parse_range(ctx: RequestContext, raw: Any) -> PolledRange:
    obj = expect_object(raw, "a range")
    pk = req_str(obj, "partitionKey")
    q = RangeQuery(opt_str(obj, "prefix"), opt_str(obj, "start"), opt_str(obj, "end"))
    raw_marker = opt_str(obj, "seenMarker")
    ctx.check_key_len("partitionKey", pk)
    for name in ("prefix", "start", "end"):
        ctx.check_key_len(name, getattr(q, name))
    q.check()
    # Pollers send the same markers call after call; this one is changed (restrict): a copy.
    marker = None if raw_marker is None else RangeSeenMarker.decode_shared(raw_marker).copy()
    return PolledRange(pk, q, raw_marker, marker)


def parse_ranges(ctx: RequestContext, body: Any) -> tuple[list[PolledRange], int]:
    """The ranges and the clamped timeout; any bad field is a 400 naming the range it is in."""
    obj = expect_object(body, "the poll_ranges request")
    timeout = clamp_timeout(opt_uint(obj, "timeout"))
    if obj.get("ranges") is None:
        raise BadRequest("Invalid JSON: missing field `ranges`")
    ranges = expect_list(obj["ranges"], "ranges")
    if not 1 <= len(ranges) <= MAX_RANGES:
        raise BadRequest(f"`ranges` must hold 1 to {MAX_RANGES} ranges, got {len(ranges)}")
    out = []
    for i, raw in enumerate(ranges):
        try:
            out.append(_parse_range(ctx, raw))
        except BadRequest as e:
            raise type(e)(f"ranges[{i}]: {e.message}") from None
    return out, timeout


async def poll_ranges(ctx: RequestContext) -> web.StreamResponse:
    ranges, timeout = parse_ranges(ctx, await ctx.json_body())
    polls = [RangePoll(r.partition_key, r.query, r.marker, r.raw_marker) for r in ranges]
    results = await ctx.state.store.poll_ranges(ctx.bucket_id, polls, timeout)
    if results is None:
        return web.Response(status=304)
    out: list[dict[str, Any]] = []
    for r, res in zip(ranges, results, strict=True):
        if res is None:
            # Unchanged: the marker sent means exactly what it meant (a range without a marker
            # always has a result, its initial scan).
            out.append({"partitionKey": r.partition_key, "seenMarker": r.raw_marker, "items": []})
        else:
            items, marker = res
            out.append(
                {"partitionKey": r.partition_key, "seenMarker": marker.encode(), "items": [item_json(i) for i in items]}
            )
    return json_response({"ranges": out})
