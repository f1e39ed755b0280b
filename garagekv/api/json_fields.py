"""Strict readers for the fields of K2V JSON bodies.

Types are checked exactly (a boolean is not a number, null is not a boolean) so a malformed
body is a 400 that names the field, and nothing is written.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from garagekv.model.k2v.item import MAX_TTL_SEC, K2VItem
from garagekv.util.errors import BadRequest


def _bad(msg: str) -> BadRequest:
    return BadRequest(f"Invalid JSON: {msg}")


def expect_list(v: Any, what: str) -> list[Any]:
    if not isinstance(v, list):
        raise _bad(f"expected an array of {what}")
    return v


def expect_object(v: Any, what: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _bad(f"expected {what} to be an object")
    return v


def _unicode(name: str, v: str) -> str:
    # JSON escapes can spell lone surrogates ("\ud800"), which are not Unicode scalar values and
    # have no UTF-8 form: refuse them here, as serde_json does, rather than fail later on encode.
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad(f"field `{name}` is not a valid Unicode string (lone surrogate)")
    return v


def req_str(obj: dict[str, Any], name: str) -> str:
    if name not in obj or obj[name] is None:
        raise _bad(f"missing field `{name}`")
    v = obj[name]
    if not isinstance(v, str):
        raise _bad(f"field `{name}` must be a string")
    return _unicode(name, v)


def opt_str(obj: dict[str, Any], name: str) -> str | None:
    v = obj.get(name)
    if v is not None and not isinstance(v, str):
        raise _bad(f"field `{name}` must be a string or null")
    return None if v is None else _unicode(name, v)


def opt_uint(obj: dict[str, Any], name: str) -> int | None:
    v = obj.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 0 or v >= 2**64:
        raise _bad(f"field `{name}` must be an unsigned integer or null")
    return v


def opt_bool(obj: dict[str, Any], name: str) -> bool:
    if name not in obj:
        return False
    v = obj[name]
    if not isinstance(v, bool):
        raise _bad(f"field `{name}` must be a boolean")
    return v


def ttl_seconds(v: Any, where: str) -> int:
    """A TTL: a whole number of seconds from 1 to one year (booleans and floats are not)."""
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_TTL_SEC:
        raise BadRequest(f"{where} must be an integer number of seconds from 1 to {MAX_TTL_SEC}")
    return v


def opt_ttl(obj: dict[str, Any], name: str = "ttl") -> int | None:
    v = obj.get(name)
    return None if v is None else ttl_seconds(v, f"Invalid JSON: field `{name}`")


def b64_value(v: str) -> bytes:
    """Standard base64 with canonical padding; anything else is a 400."""
    try:
        raw = base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("Invalid base64 value")
    if base64.b64encode(raw).decode() != v:
        raise BadRequest("Invalid base64 value: non-canonical encoding")
    return raw


def values_json(item: K2VItem) -> list[str | None]:
    return [None if v is None else binascii.b2a_base64(v, newline=False).decode() for v in item.values()]


def item_json(item: K2VItem) -> dict[str, Any]:
    """An item of ReadBatch, PollRange and PollRanges; ``exp`` (unix ms) when a live value expires."""
    out: dict[str, Any] = {"sk": item.sort_key, "ct": item.causal_context().serialize(), "v": values_json(item)}
    exp = item.expires()
    if exp is not None:
        out["exp"] = exp
    return out
