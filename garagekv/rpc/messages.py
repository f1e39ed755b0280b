"""Checks for RPC messages rebuilt from the wire, and the protocol error they raise.

A message travels as a msgpack array (``to_wire``) and is rebuilt by its class's ``from_wire``,
which checks it once, on receipt, with these helpers: the tag, the arity and every field's type.
A message of the wrong shape raises ``MalformedMessage``, a 400-class error that the RPC layer
carries back to the sender by its code (``InvalidRequest``), instead of failing later inside a
handler as an internal error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from garagekv.util.errors import BadRequest


class MalformedMessage(BadRequest):
    """A peer sent an RPC message of the wrong shape (unknown tag, arity, field types)."""


def malformed(what: str, why: str) -> MalformedMessage:
    return MalformedMessage(f"malformed {what}: {why}")


def fields(what: str, w: Any, tag: str, n: int) -> Sequence[Any]:
    """``w`` as an array of ``n`` fields (the tag included) whose first is ``tag``."""
    if not isinstance(w, list | tuple) or not w:
        raise malformed(what, "expected a non-empty array")
    if w[0] != tag:
        raise malformed(what, f"expected tag {tag!r}, got {w[0]!r:.40}")
    if len(w) != n:
        raise malformed(what, f"expected an array of {n} fields, got {len(w)}")
    return w


def tag_of(what: str, w: Any, known: Sequence[str]) -> str:
    """The tag of a request, which must be one of ``known``."""
    if not isinstance(w, list | tuple) or not w:
        raise malformed(what, "expected a non-empty array")
    tag = w[0]
    if not isinstance(tag, str) or tag not in known:
        shown = repr(tag[:40]) if isinstance(tag, str | bytes) else type(tag).__name__  # never a deep repr
        raise MalformedMessage(f"unknown {what} {shown:.40}")
    return tag


def as_bytes(what: str, field: str, v: Any, max_len: int | None = None) -> bytes:
    if not isinstance(v, bytes):
        raise malformed(what, f"{field} must be bytes")
    if max_len is not None and len(v) > max_len:
        raise malformed(what, f"{field} must be at most {max_len} bytes")
    return v


def as_opt_bytes(what: str, field: str, v: Any) -> bytes | None:
    return None if v is None else as_bytes(what, field, v)


def as_bool(what: str, field: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise malformed(what, f"{field} must be a boolean")
    return v


def as_int(what: str, field: str, v: Any, lo: int, hi: int | None = None) -> int:
    """An integer in ``lo..hi`` (booleans, which msgpack keeps apart, are refused)."""
    if not isinstance(v, int) or isinstance(v, bool) or v < lo or (hi is not None and v > hi):
        bounds = f"from {lo}" if hi is None else f"from {lo} to {hi}"
        raise malformed(what, f"{field} must be an integer {bounds}")
    return v


def as_opt_int(what: str, field: str, v: Any, lo: int) -> int | None:
    return None if v is None else as_int(what, field, v, lo)


def as_bytes_list(what: str, field: str, v: Any) -> tuple[bytes, ...]:
    if not isinstance(v, list | tuple) or not all(isinstance(x, bytes) for x in v):
        raise malformed(what, f"{field} must be an array of bytes")
    return tuple(v)
