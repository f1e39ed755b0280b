"""ReadItem, InsertItem, DeleteItem and PollItem (docs/k2v-api.md §5)."""

from __future__ import annotations

from aiohttp import web

from garagekv.api.context import BINARY_TYPE, TOKEN_HEADER, RequestContext, json_response
from garagekv.api.json_fields import values_json
from garagekv.model.k2v.causality import CausalContext
from garagekv.model.k2v.item import K2VItem
from garagekv.model.k2v.messages import InsertedItem
from garagekv.util.errors import BadRequest, InvalidCausalityToken, InvalidHeaderValue, NoSuchKey, NotAcceptable

DEFAULT_POLL_TIMEOUT = 300
MAX_POLL_TIMEOUT = 600


def clamp_timeout(t: int | None) -> int:
    return min(max(DEFAULT_POLL_TIMEOUT if t is None else t, 1), MAX_POLL_TIMEOUT)


def _visible_ascii(value: str, header: str) -> str:
    if not all(0x20 <= ord(c) < 0x7F or c == "\t" for c in value):
        raise InvalidHeaderValue(f"Invalid header value for {header}")
    return value


def _header(ctx: RequestContext, name: str) -> str | None:
    """A header's value; a repeated header counts as its values joined by ``,`` (RFC 9110 5.3),
    the same value the signature covered, rather than whichever line came first."""
    values = ctx.request.headers.getall(name, None)
    if values is None:
        return None
    return values[0] if len(values) == 1 else ",".join(values)


def _accept(ctx: RequestContext) -> tuple[bool, bool]:
    """(json allowed, binary allowed) from the Accept header, compared exactly (no q-values)."""
    raw = _header(ctx, "Accept")
    if raw is None:
        return True, False
    _visible_ascii(raw, "Accept")
    parts = [p.strip() for p in raw.split(",")]
    any_type = "*/*" in parts
    json_ok = any_type or "application/json" in parts
    bin_ok = any_type or BINARY_TYPE in parts
    if not (json_ok or bin_ok):
        raise NotAcceptable(
            "Invalid Accept: header value, must contain either application/json or application/octet-stream (or */*)"
        )
    return json_ok, bin_ok


def item_response(item: K2VItem, json_ok: bool, bin_ok: bool) -> web.StreamResponse:
    token = item.causal_context().serialize()
    values = item.values()
    if bin_ok and len(values) == 1:
        v = values[0]
        if v is None:
            return web.Response(status=204, headers={TOKEN_HEADER: token, "Content-Type": BINARY_TYPE})
        return web.Response(status=200, body=v, headers={TOKEN_HEADER: token, "Content-Type": BINARY_TYPE})
    if not json_ok:
        return web.Response(status=409, headers={TOKEN_HEADER: token})
    return json_response(values_json(item), headers={TOKEN_HEADER: token})


def _header_token(ctx: RequestContext) -> CausalContext | None:
    raw = _header(ctx, TOKEN_HEADER)  # twice is "a,b": not a token, so a 400
    if raw is None:
        return None
    _visible_ascii(raw, TOKEN_HEADER)
    return CausalContext.parse_client(raw)


def _check_keys(ctx: RequestContext) -> None:
    ctx.check_key_len("partition key", ctx.endpoint.partition_key)
    ctx.check_key_len("sort_key", ctx.endpoint.sort_key)


async def read_item(ctx: RequestContext) -> web.StreamResponse:
    json_ok, bin_ok = _accept(ctx)
    _check_keys(ctx)
    ep = ctx.endpoint
    item = await ctx.state.store.read_item(ctx.bucket_id, ep.partition_key, ep.sort_key)
    if item is None or not item.values():
        raise NoSuchKey()
    return item_response(item, json_ok, bin_ok)


async def _insert(ctx: RequestContext, value: bytes | None) -> web.StreamResponse:
    ep = ctx.endpoint
    await ctx.state.store.insert(ctx.bucket_id, InsertedItem(ep.partition_key, ep.sort_key, _header_token(ctx), value))
    return web.Response(status=204)


async def insert_item(ctx: RequestContext) -> web.StreamResponse:
    _check_keys(ctx)
    _header_token(ctx)  # a bad token is refused before the body is read
    return await _insert(ctx, await ctx.body())


async def delete_item(ctx: RequestContext) -> web.StreamResponse:
    _check_keys(ctx)
    _header_token(ctx)
    await ctx.body()  # verifies the payload hash of whatever was sent
    return await _insert(ctx, None)


async def poll_item(ctx: RequestContext) -> web.StreamResponse:
    json_ok, bin_ok = _accept(ctx)
    _check_keys(ctx)
    ep = ctx.endpoint
    try:
        ct = CausalContext.parse_client(ep.causality_token)
    except InvalidCausalityToken:
        raise BadRequest("Invalid causality token")
    item = await ctx.state.store.poll_item(ctx.bucket_id, ep.partition_key, ep.sort_key, ct, clamp_timeout(ep.timeout))
    if item is None:
        return web.Response(status=304)
    if not item.values():
        raise NoSuchKey()
    return item_response(item, json_ok, bin_ok)
