"""JSON bodies of answers: always valid UTF-8, whatever text they echo.

The HTTP server hands header values, paths and query strings over as text, with the bytes that
are not UTF-8 as lone surrogates. An error message quoting such input must still encode, or a
4xx answer would turn into a 500: those bytes show as U+FFFD.
"""

from __future__ import annotations

import json
from typing import Any


def dumps(obj: Any, indent: int | None = None) -> bytes:
    text = json.dumps(obj, ensure_ascii=False, indent=indent)
    try:
        return text.encode()
    except UnicodeEncodeError:  # lone surrogates: the bytes they stand for, then U+FFFD for each bad one
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace").encode()
