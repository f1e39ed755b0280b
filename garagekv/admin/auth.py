"""Bearer-token checks of the admin API, as Garage does them, in constant time.

Only SHA-256 digests of the configured tokens are kept, and a presented token is hashed and
compared with ``hmac.compare_digest``, so neither the comparison time nor the digest length
says anything about the token. Every refusal is a 403 (Garage's behaviour), with a message
that tells a missing token from a wrong one.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from garagekv.util.errors import AccessDenied

NONE = "none"  # /health, OPTIONS
METRICS = "metrics"  # /metrics: open without a metrics token; else the metrics or the admin token
ADMIN = "admin"  # everything else: disabled without an admin token

DISABLED = "Admin token isn't configured, admin API access is disabled for security."
MISSING = "Authorization token must be provided"
INVALID = "Invalid authorization token provided"


def _digest(token: str) -> bytes:
    # A presented token holds the bytes as received (undecodable ones as surrogates).
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of ``Authorization: Bearer <token>`` (scheme case-insensitive), else None."""
    value = headers.get("Authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return ""
    return token.strip()


class TokenAuth:
    def __init__(self, admin_token: str | None, metrics_token: str | None) -> None:
        self._admin = _digest(admin_token) if admin_token else None
        self._metrics = _digest(metrics_token) if metrics_token else None

    @property
    def admin_enabled(self) -> bool:
        return self._admin is not None

    def check(self, level: str, headers: Mapping[str, str]) -> None:
        """Raise AccessDenied unless ``headers`` carry a token good for ``level``."""
        if level == NONE:
            return
        if level == METRICS:
            if self._metrics is None:
                return
            accepted = [self._metrics] + ([self._admin] if self._admin is not None else [])
        else:
            if self._admin is None:
                raise AccessDenied(DISABLED)
            accepted = [self._admin]
        token = bearer_token(headers)
        if token is None:
            raise AccessDenied(MISSING)
        presented = _digest(token)
        ok = False
        for expected in accepted:  # every candidate is compared: no early exit
            ok |= hmac.compare_digest(presented, expected)
        if not ok:
            raise AccessDenied(INVALID)
