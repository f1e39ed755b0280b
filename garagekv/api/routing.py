"""Routing: (method, raw path, raw query) -> the K2V endpoint and its parameters.

Pure and done before authentication, as Garage does, so routing errors are 400 even for
unsigned requests. The rules are those of docs/k2v-api.md §1, quirks included.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote_to_bytes

from garagekv.util.errors import BadRequest, InvalidUtf8String

KEYWORDS = ("search", "delete", "poll_range", "poll_ranges", "txn")
FIELDS = ("sort_key", "causality_token", "timeout", "prefix", "start", "end", "limit", "reverse")
# At most 20 significant digits (u64): int() is never handed the thousands of digits Python refuses with a
# ValueError, and fullmatch (not match with $) refuses a trailing newline.
_UINT = re.compile(r"0*[0-9]{1,20}")
U64_MAX = 2**64 - 1

# endpoint names
READ_ITEM = "ReadItem"
POLL_ITEM = "PollItem"
READ_INDEX = "ReadIndex"
INSERT_ITEM = "InsertItem"
DELETE_ITEM = "DeleteItem"
INSERT_BATCH = "InsertBatch"
READ_BATCH = "ReadBatch"
DELETE_BATCH = "DeleteBatch"
POLL_RANGE = "PollRange"
POLL_RANGES = "PollRanges"
TXN = "Txn"
OPTIONS = "Options"

READ_ENDPOINTS = frozenset({READ_ITEM, POLL_ITEM, READ_INDEX, READ_BATCH, POLL_RANGE, POLL_RANGES})
# Endpoints that need both permissions (a transaction reads what it compares).
READ_WRITE_ENDPOINTS = frozenset({TXN})


@dataclass
class Endpoint:
    name: str
    bucket: str
    partition_key: str | None
    sort_key: str | None = None
    causality_token: str | None = None
    timeout: int | None = None
    prefix: str | None = None
    start: str | None = None
    end: str | None = None
    limit: int | None = None
    reverse: bool = False
    query_pairs: list[tuple[str, str]] | None = None

    @property
    def needs_write(self) -> bool:
        return self.name not in READ_ENDPOINTS

    @property
    def needs_read(self) -> bool:
        return self.name in READ_ENDPOINTS or self.name in READ_WRITE_ENDPOINTS


def parse_query(raw_query: str) -> list[tuple[str, str]]:
    """Form-decode the query string (``+`` is a space); invalid UTF-8 is a 400."""
    try:
        return parse_qsl(raw_query, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise BadRequest("Invalid query string: not valid UTF-8")


def split_path(raw_path: str) -> tuple[str, str | None]:
    """``/<bucket>[/<partition key>]``: the bucket is not decoded, the partition key is."""
    rest = raw_path.lstrip("/")
    bucket, sep, pk_raw = rest.partition("/")
    if not bucket:
        raise BadRequest("Missing bucket name")
    pk_raw = pk_raw.lstrip("/")
    if not sep or not pk_raw:
        return bucket, None
    try:
        pk = unquote_to_bytes(pk_raw).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidUtf8String("Invalid utf8 key")
    return bucket, pk


def _uint(name: str, value: str) -> int:
    if not _UINT.fullmatch(value) or int(value.lstrip("0") or "0") > U64_MAX:
        shown = value if len(value) <= 64 else value[:64] + "..."
        raise BadRequest(f"Failed to parse query parameter '{name}': expected an unsigned integer, got '{shown}'")
    return int(value.lstrip("0") or "0")


def parse_endpoint(method: str, raw_path: str, raw_query: str) -> Endpoint:
    bucket, pk = split_path(raw_path)
    pairs = parse_query(raw_query)
    seen: set[str] = set()
    keywords: list[str] = []
    fields: dict[str, str] = {}
    for k, v in pairs:
        if k in seen:
            raise BadRequest(f"Query parameter repeated: '{k}'")
        seen.add(k)
        if k in KEYWORDS:
            keywords.append(k)
        elif k in FIELDS and v != "":
            fields[k] = v
    if len(keywords) > 1:
        raise BadRequest(f"Invalid endpoint: several keywords in query ({', '.join(keywords)})")
    kw = keywords[0] if keywords else None

    ep = Endpoint("", bucket, pk, query_pairs=pairs)
    ep.sort_key = fields.get("sort_key")
    ep.causality_token = fields.get("causality_token")
    ep.prefix = fields.get("prefix")
    ep.start = fields.get("start")
    ep.end = fields.get("end")
    if "limit" in fields:
        ep.limit = _uint("limit", fields["limit"])
    if "timeout" in fields:
        ep.timeout = _uint("timeout", fields["timeout"])
    if "reverse" in fields:
        if fields["reverse"] not in ("true", "false"):
            raise BadRequest(
                f"Failed to parse query parameter 'reverse': expected true or false, got '{fields['reverse']}'"
            )
        ep.reverse = fields["reverse"] == "true"

    ep.name = _route(method, pk is not None, kw, ep)
    if ep.name in (READ_ITEM, POLL_ITEM, INSERT_ITEM, DELETE_ITEM) and ep.sort_key is None:
        raise BadRequest("Missing argument for endpoint: sort_key")
    return ep


def _route(method: str, has_pk: bool, kw: str | None, ep: Endpoint) -> str:
    def invalid() -> BadRequest:
        desc = f"{method} {'/<bucket>/<partition key>' if has_pk else '/<bucket>'}" + (f"?{kw}" if kw else "")
        return BadRequest(f"Invalid endpoint: {desc}")

    if method == "OPTIONS":
        return OPTIONS
    if method == "GET":
        if kw is not None:
            raise invalid()
        if not has_pk:
            return READ_INDEX
        return POLL_ITEM if ep.causality_token is not None else READ_ITEM
    if method in ("PUT", "DELETE"):
        if kw is not None or not has_pk:
            raise invalid()
        return INSERT_ITEM if method == "PUT" else DELETE_ITEM
    if method == "POST":
        if has_pk:
            if kw == "poll_range":
                return POLL_RANGE
            if kw == "txn":
                return TXN
            raise invalid()
        if kw is None:
            return INSERT_BATCH
        if kw == "search":
            return READ_BATCH
        if kw == "delete":
            return DELETE_BATCH
        if kw == "poll_ranges":
            return POLL_RANGES
        raise invalid()
    if method == "SEARCH":
        if has_pk and kw == "poll_range":
            return POLL_RANGE
        if not has_pk and kw is None:
            return READ_BATCH
        if not has_pk and kw == "poll_ranges":
            return POLL_RANGES
        raise invalid()
    raise BadRequest(f"Unknown method: {method}")
