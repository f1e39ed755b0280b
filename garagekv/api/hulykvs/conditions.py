"""Write conditions from ``If-Match`` / ``If-None-Match``, and the MD5 ETags they compare.

Hulykvs's ETag is the value's MD5 in lowercase hex, unquoted. A condition is one of: none,
``If-None-Match: *`` (create only), ``If-Match: *`` (must exist), ``If-Match: <md5>`` (must hold
exactly that value).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from garagekv.api.hulykvs.errors import bad_request

_MD5 = re.compile(r"[0-9a-fA-F]{32}")


@dataclass(frozen=True)
class Condition:
    """``kind`` is "none", "absent" (If-None-Match: *), "exists" (If-Match: *) or "md5"."""

    kind: str = "none"
    md5: str | None = None  # lowercase hex, for kind "md5"

    def holds(self, current_md5: str | None) -> bool:
        """Whether the write may go ahead given the current value's MD5 (None: absent)."""
        if self.kind == "absent":
            return current_md5 is None
        if self.kind == "exists":
            return current_md5 is not None
        if self.kind == "md5":
            return current_md5 == self.md5
        return True


NONE = Condition()


def md5_hex(value: bytes) -> str:
    return hashlib.md5(value, usedforsecurity=False).hexdigest()


def parse_if_match(raw: str) -> Condition:
    """``*`` or 32 hex digits, optionally in double quotes (as HTTP writes entity tags)."""
    v = raw.strip()
    if v == "*":
        return Condition("exists")
    if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
        v = v[1:-1]  # an entity tag has no whitespace inside its quotes
    if not _MD5.fullmatch(v):
        raise bad_request(f"If-Match must be '*' or an MD5 in 32 hex digits, got {raw!r}")
    return Condition("md5", v.lower())


def parse_conditions(if_match: str | None, if_none_match: str | None, *, allow_none_match: bool = True) -> Condition:
    """The condition of a request from its two headers (400 for anything unusable)."""
    if if_match is not None and if_none_match is not None:
        raise bad_request("If-Match and If-None-Match cannot be used together")
    if if_none_match is not None:
        if not allow_none_match:
            raise bad_request("If-None-Match is not supported on DELETE")
        if if_none_match.strip() != "*":
            raise bad_request("If-None-Match must be '*'")
        return Condition("absent")
    if if_match is not None:
        return parse_if_match(if_match)
    return NONE
