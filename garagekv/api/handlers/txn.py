"""Partition transactions: ``POST /<bucket>/<partition key>?txn`` (docs/k2v-api.md §5b).

The whole body is checked before anything is read or written, so every malformed field is a
400 naming it and nothing happens; the transaction then runs as one consensus round.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from garagekv.api.context import RequestContext, json_response
from garagekv.api.json_fields import b64_value, expect_list, expect_object, req_str, values_json
from garagekv.model.k2v.causality import CausalContext
from garagekv.model.k2v.txn import (
    MAX_COMPARES,
    MAX_OPS,
    MAX_TTL_SECONDS,
    MD5,
    OPS,
    PUT,
    READ,
    TARGETS,
    TOKEN,
    VALUE,
    Compare,
    Txn,
    TxnOp,
    TxnResult,
    valid_ttl,
)
from garagekv.util.errors import BadRequest, InvalidCausalityToken, ServiceUnavailable

_MD5_HEX = re.compile(r"[0-9a-fA-F]{32}")


def _at(where: str, e: BadRequest) -> BadRequest:
    return type(e)(f"{where}: {e.message}")


def _entries(body: dict[str, Any], name: str, limit: int) -> list[Any]:
    raw = body.get(name)
    if raw is None:
        return []
    entries = expect_list(raw, f"`{name}` entries")
    if len(entries) > limit:
        raise BadRequest(f"`{name}` holds {len(entries)} entries, over the limit of {limit}")
    return entries


def _compare(ctx: RequestContext, raw: Any) -> Compare:
    obj = expect_object(raw, "a compare")
    sk = req_str(obj, "sk")
    ctx.check_key_len("sk", sk)
    target = req_str(obj, "target")
    if target not in TARGETS:
        raise BadRequest(f"unknown compare target {target!r} (expected one of {', '.join(TARGETS)})")
    if target == TOKEN:
        try:
            return Compare(sk, TOKEN, CausalContext.parse_client(req_str(obj, "token")))
        except InvalidCausalityToken:
            raise BadRequest("field `token` is not a valid causality token") from None
    if target == VALUE:
        return Compare(sk, VALUE, value=b64_value(req_str(obj, "value")))
    if target == MD5:
        md5 = req_str(obj, "md5")
        if not _MD5_HEX.fullmatch(md5):
            raise BadRequest("field `md5` must be 32 hexadecimal digits")
        return Compare(sk, MD5, md5=md5.lower())
    exists = obj.get("exists")
    if not isinstance(exists, bool):
        raise BadRequest("field `exists` must be a boolean")
    return Compare(sk, target, exists=exists)


def _op(ctx: RequestContext, raw: Any) -> TxnOp:
    obj = expect_object(raw, "an operation")
    op = req_str(obj, "op")
    if op not in OPS:
        raise BadRequest(f"unknown op {op!r} (expected one of {', '.join(OPS)})")
    sk = req_str(obj, "sk")
    ctx.check_key_len("sk", sk)
    if op != PUT:
        for name in ("v", "ttl"):
            if obj.get(name) is not None:
                raise BadRequest(f"field `{name}` is only allowed on a put")
        return TxnOp(op, sk)
    value = b64_value(req_str(obj, "v"))
    ttl = obj.get("ttl")
    if ttl is not None and not valid_ttl(ttl):
        raise BadRequest(f"field `ttl` must be an integer number of seconds from 1 to {MAX_TTL_SECONDS}")
    return TxnOp(PUT, sk, value, ttl)


def parse_txn(ctx: RequestContext, body: Any) -> Txn:
    """The transaction of a request body; every bad field is a 400 naming where it is."""
    obj = expect_object(body, "the transaction")
    compares = []
    for i, raw in enumerate(_entries(obj, "compare", MAX_COMPARES)):
        try:
            compares.append(_compare(ctx, raw))
        except BadRequest as e:
            raise _at(f"compare[{i}]", e) from None
    branches: dict[str, tuple[TxnOp, ...]] = {}
    for name in ("success", "failure"):
        ops = []
        for i, raw in enumerate(_entries(obj, name, MAX_OPS)):
            try:
                ops.append(_op(ctx, raw))
            except BadRequest as e:
                raise _at(f"{name}[{i}]", e) from None
        branches[name] = tuple(ops)
    return Txn(tuple(compares), branches["success"], branches["failure"])


def result_json(res: TxnResult) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    for r in res.results:
        ct = None if r.item is None else r.item.causal_context().serialize()
        entry: dict[str, Any] = {"sk": r.sort_key, "ct": ct}
        if r.op == READ:
            entry["v"] = [] if r.item is None else values_json(r.item)
            exp = None if r.item is None else r.item.expires()
            if exp is not None:
                entry["exp"] = exp  # as ReadBatch items carry it
        out.append(entry)
    return {"succeeded": res.succeeded, "results": out}


async def txn(ctx: RequestContext) -> web.StreamResponse:
    ctx.check_key_len("partition key", ctx.endpoint.partition_key)
    parsed = parse_txn(ctx, await ctx.json_body())
    pk = ctx.endpoint.partition_key
    assert pk is not None
    outcomes = ctx.state.store.transaction_outcomes
    try:
        res = await ctx.state.store.conditional.txn(ctx.bucket_id, pk, parsed)
    except ServiceUnavailable:
        outcomes.count("unavailable")
        raise
    outcomes.count("succeeded" if res.succeeded else "failed")
    return json_response(result_json(res))
