"""Answer bodies are valid UTF-8 JSON even when a message quotes bytes that were not UTF-8."""

from __future__ import annotations

import json

from garagekv.util import jsonout


def test_text_is_encoded_as_is():
    assert jsonout.dumps({"message": "café ✓"}) == json.dumps({"message": "café ✓"}, ensure_ascii=False).encode()
    assert jsonout.dumps([1], indent=2) == b"[\n  1\n]"


def test_bytes_that_were_not_utf8_show_as_replacement_characters():
    raw = b"scope caf\xe9 \xff\xfe end"
    quoted = raw.decode("utf-8", "surrogateescape")  # how the HTTP server hands such a header over
    body = jsonout.dumps({"message": quoted})
    assert json.loads(body.decode("utf-8")) == {"message": "scope caf\ufffd \ufffd\ufffd end"}
