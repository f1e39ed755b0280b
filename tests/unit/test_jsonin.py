"""The strict decoder for untrusted JSON (garagekv.util.jsonin), with orjson and without it."""

from __future__ import annotations

import pytest

from garagekv.util import jsonin

DECODERS = [jsonin.loads, jsonin._loads_stdlib]

HOSTILE = [
    b"[" * 20000,  # unbalanced: the stdlib decoder used to raise RecursionError
    b"[" * 5000 + b"]" * 5000,
    b'{"a":' * 5000 + b"1" + b"}" * 5000,
    b'"\\ud800"',
    b'["x\\udfff"]',
    b'{"\\ud800": 1}',  # a lone surrogate in an object key
    b'{"pk": "a\\ud83d"}',
    b"NaN",
    b"[-Infinity]",
    b"1e400",
    b"-1e400",
    b"\xff\xfe[]",
    b'"\xed\xa0\x80"',  # a surrogate spelled in (invalid) UTF-8
    b"",
    b"[1,]",
]


@pytest.mark.parametrize("decode", DECODERS, ids=["default", "stdlib"])
@pytest.mark.parametrize("raw", HOSTILE, ids=lambda r: repr(r[:12]))
def test_hostile_json_is_a_value_error(decode, raw):
    with pytest.raises(ValueError):
        decode(raw)


@pytest.mark.parametrize("decode", DECODERS, ids=["default", "stdlib"])
def test_ordinary_json_decodes(decode):
    raw = b'[{"pk": "\\ud83d\\ude00", "sk": "\xc3\xa9", "limit": 18446744073709551615, "f": 1.5, "n": null}]'
    assert decode(raw) == [{"pk": "\U0001f600", "sk": "é", "limit": 2**64 - 1, "f": 1.5, "n": None}]
    assert decode(b"[" * 100 + b"]" * 100) is not None


@pytest.mark.parametrize("decode", DECODERS, ids=["default", "stdlib"])
def test_huge_integers_never_come_out_as_u64(decode):
    """Beyond 64 bits: refused, a float (orjson) or an int out of range; field readers refuse all."""
    for raw in (b"18446744073709551616", b"9" * 400, b"-" + b"9" * 30):
        try:
            v = decode(raw)
        except ValueError:
            continue
        assert not (isinstance(v, int) and 0 <= v < 2**64)
    with pytest.raises(ValueError):
        decode(b"9" * 5000)  # Python's own digit limit (stdlib) or a double overflow (orjson)
