"""Strict decoding of JSON that comes from outside the node (K2V bodies, admin API bodies).

One decoder for every untrusted body so the whole class of hostile-but-syntactically-valid
input is refused in one place with a ``ValueError`` (the callers turn it into a 400):

* nesting deeper than :data:`MAX_DEPTH` (``[[[[…`` would otherwise exhaust the recursion limit
  of the standard library decoder and surface as a 500);
* strings, object keys included, holding a lone UTF-16 surrogate (``"\\ud800"``): they are not
  Unicode scalar values, have no UTF-8 form and would fail later, on encode;
* ``NaN``/``Infinity`` and numbers that overflow a double (not JSON);
* anything that is not UTF-8 (the standard library would guess UTF-16/32).

Integers beyond 64 bits come out as floats from orjson, and as ints bounded by Python's digit
limit from the fallback; the field readers accept only genuine ints in range, so both are 400s.
"""

from __future__ import annotations

import json
from typing import Any

orjson: Any
try:
    import orjson
except ImportError:  # a declared dependency; the fallback keeps the rules, only slower
    orjson = None

# orjson's own limit; the standard library's recursion limit (about 1000) is the fallback's.
MAX_DEPTH = 1024


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(s: str) -> float:
    f = float(s)
    if f in (float("inf"), float("-inf")):
        raise ValueError(f"number {s[:20]} overflows a double")
    return f


def loads(raw: bytes) -> Any:
    """Decode untrusted JSON bytes; every refusal is a ``ValueError`` with a short reason."""
    if orjson is not None:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise ValueError(str(e)) from None
    return _loads_stdlib(raw)


def _loads_stdlib(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8: {e}") from None
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
        # Re-encoding is the cheap (C) way to find a lone surrogate anywhere, keys included.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels") from None
    except UnicodeEncodeError:
        raise ValueError("a string holds a lone surrogate (not a Unicode scalar value)") from None
    return value
