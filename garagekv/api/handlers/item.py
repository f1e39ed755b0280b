"""ReadItem, InsertItem, DeleteItem and PollItem (docs/k2v-api.md §5)."""

from __future__ import annotations

from aiohttp import web

from garagekv.api.context import BINARY_TYPE, EXPIRES_HEADER, TOKEN_HEADER, RequestContext, json_response
from garagekv.api.json_fields import ttl_seconds, values_json
from garagekv.model.k2v.causality import CausalContext
from garagekv.model.k2v.conditional import IF_MATCH, IF_MATCH_ANY, IF_NONE_MATCH_ANY, Condition
from garagekv.model.k2v.item import K2VItem
from garagekv.model.k2v.messages import InsertedItem
from garagekv.util.errors import (
    BadRequest,
    InvalidCausalityToken,
    InvalidHeaderValue,
    NoSuchKey,
    NotAcceptable,
    PreconditionFailed,
    ServiceUnavailable,
)

CONSISTENCY_HEADER = "X-Garage-Consistency"
TTL_HEADER = "X-Garage-TTL"
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
    headers = {TOKEN_HEADER: item.causal_context().serialize()}
    exp = item.expires()
    if exp is not None:
        headers[EXPIRES_HEADER] = str(exp)
    values = item.values()
    if bin_ok and len(values) == 1:
        v = values[0]
        headers["Content-Type"] = BINARY_TYPE
        if v is None:
            return web.Response(status=204, headers=headers)
        return web.Response(status=200, body=v, headers=headers)
    if not json_ok:
        return web.Response(status=409, headers=headers)
    return json_response(values_json(item), headers=headers)


def _header_token(ctx: RequestContext) -> CausalContext | None:
    raw = _header(ctx, TOKEN_HEADER)  # twice is "a,b": not a token, so a 400
    if raw is None:
        return None
    _visible_ascii(raw, TOKEN_HEADER)
    return CausalContext.parse_client(raw)


def _ttl(ctx: RequestContext) -> int | None:
    """The X-Garage-TTL header: whole seconds, 1 to one year (docs/k2v-api.md, expiring values)."""
    raw = _header(ctx, TTL_HEADER)
    if raw is None:
        return None
    raw = raw.strip()
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 12:
        raise BadRequest(f"{TTL_HEADER} must be an integer number of seconds")
    return ttl_seconds(int(raw), TTL_HEADER)


def _check_keys(ctx: RequestContext) -> None:
    ctx.check_key_len("partition key", ctx.endpoint.partition_key)
    ctx.check_key_len("sort_key", ctx.endpoint.sort_key)


def _item_keys(ctx: RequestContext) -> tuple[str, str]:
    """(partition key, sort key) of an item endpoint: routing gives it both (api/routing.py)."""
    pk, sk = ctx.endpoint.partition_key, ctx.endpoint.sort_key
    assert pk is not None and sk is not None
    return pk, sk


def _linearizable(ctx: RequestContext) -> bool:
    raw = _header(ctx, CONSISTENCY_HEADER)
    if raw is None:
        return False
    if raw.strip() != "linearizable":
        raise BadRequest(f"{CONSISTENCY_HEADER} must be 'linearizable'")
    return True


def _condition(ctx: RequestContext) -> Condition | None:
    """The write's If-Match / If-None-Match condition (docs/k2v-api.md, conditional writes);
    every malformed combination is a 400 before anything is read or written."""
    im = _header(ctx, "If-Match")
    inm = _header(ctx, "If-None-Match")
    if im is None and inm is None:
        return None
    if im is not None and inm is not None:
        raise BadRequest("If-Match and If-None-Match cannot be used together")
    if _header(ctx, TOKEN_HEADER) is not None:
        raise BadRequest(f"{TOKEN_HEADER} cannot be used with If-Match or If-None-Match")
    if inm is not None:
        if inm.strip() != "*":
            raise BadRequest("If-None-Match only accepts '*'")
        return Condition(IF_NONE_MATCH_ANY)
    assert im is not None
    im = im.strip()
    if im == "*":
        return Condition(IF_MATCH_ANY)
    _visible_ascii(im, "If-Match")
    try:
        return Condition(IF_MATCH, CausalContext.parse_client(im))
    except InvalidCausalityToken:
        raise BadRequest("If-Match must be '*' or a causality token") from None


async def read_item(ctx: RequestContext) -> web.StreamResponse:
    json_ok, bin_ok = _accept(ctx)
    _check_keys(ctx)
    pk, sk = _item_keys(ctx)
    if _linearizable(ctx):
        item = await ctx.state.store.conditional.read(ctx.bucket_id, pk, sk)
    else:
        item = await ctx.state.store.read_item(ctx.bucket_id, pk, sk)
    if item is None or not item.values():
        raise NoSuchKey()
    return item_response(item, json_ok, bin_ok)


async def _insert(
    ctx: RequestContext, value: bytes | None, cond: Condition | None = None, ttl: int | None = None
) -> web.StreamResponse:
    pk, sk = _item_keys(ctx)
    if cond is not None:
        outcomes = ctx.state.store.conditional_outcomes
        conditional = ctx.state.store.conditional
        try:
            out = await conditional.write(ctx.bucket_id, pk, sk, cond, value, ttl=ttl)
        except ServiceUnavailable:
            outcomes.count("unavailable")
            raise
        if not out.applied:
            outcomes.count("precondition_failed")
            raise PreconditionFailed(headers={} if out.token is None else {TOKEN_HEADER: out.token})
        assert out.token is not None
        outcomes.count("applied")
        return web.Response(status=204, headers={TOKEN_HEADER: out.token})
    ins = InsertedItem(pk, sk, _header_token(ctx), value, ttl)
    await ctx.state.store.insert(ctx.bucket_id, ins)
    return web.Response(status=204)


async def insert_item(ctx: RequestContext) -> web.StreamResponse:
    _check_keys(ctx)
    cond = _condition(ctx)
    _header_token(ctx)  # a bad token is refused before the body is read
    ttl = _ttl(ctx)
    return await _insert(ctx, await ctx.body(), cond, ttl)


async def delete_item(ctx: RequestContext) -> web.StreamResponse:
    _check_keys(ctx)
    cond = _condition(ctx)
    _header_token(ctx)
    if _header(ctx, TTL_HEADER) is not None:
        raise BadRequest(f"{TTL_HEADER} cannot be used with DeleteItem")
    await ctx.body()  # verifies the payload hash of whatever was sent
    return await _insert(ctx, None, cond)


async def poll_item(ctx: RequestContext) -> web.StreamResponse:
    json_ok, bin_ok = _accept(ctx)
    _check_keys(ctx)
    pk, sk = _item_keys(ctx)
    ep = ctx.endpoint
    assert ep.causality_token is not None  # routing: a GET with a causality_token is PollItem
    try:
        ct = CausalContext.parse_client(ep.causality_token)
    except InvalidCausalityToken:
        raise BadRequest("Invalid causality token")
    item = await ctx.state.store.poll_item(ctx.bucket_id, pk, sk, ct, clamp_timeout(ep.timeout))
    if item is None:
        return web.Response(status=304)
    if not item.values():
        raise NoSuchKey()
    return item_response(item, json_ok, bin_ok)
