"""Huly's bearer tokens: HS256 JWTs carrying ``account``, ``workspace`` and ``extra``.

Verification is PyJWT's (signature, algorithm, ``exp`` with no leeway); this module adds Huly's
claim rules and the workspace checks of API v1 and v2. Only HS256 is accepted: a token naming
``none``, another HMAC size or a public-key algorithm is refused before any key is used.

A client sends the same token on every request, and verifying it costs tens of microseconds of
the event loop (docs/performance.md §6), so :class:`TokenVerifier` keeps the claims of recently
verified tokens and re-checks only their time claims when one comes back.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt

from garagekv.api.hulykvs.errors import HulyError, forbidden, unauthorized
from garagekv.util.config import canonical_uuid

try:  # PyJWT >= 2.10 warns on every use of a short HMAC key
    from jwt.warnings import InsecureKeyLengthWarning
except ImportError:  # pragma: no cover - older PyJWT: nothing to silence
    pass
else:
    # Huly deployments choose their secret (its examples use "secret"): the node warns once at
    # start-up (``short_secret_warning``) instead of PyJWT warning on every request.
    warnings.filterwarnings("ignore", category=InsecureKeyLengthWarning)
MIN_SECRET_BYTES = 32

#: The account of Huly's own services: allowed in every workspace.
SYSTEM_ACCOUNT = "1749089e-22e6-48de-af4e-165e18fbd2f9"
ALGORITHM = "HS256"


@dataclass(frozen=True)
class Claims:
    """A verified token's claims, UUIDs in canonical form."""

    account: str
    workspace: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def is_system(self) -> bool:
        return self.account == SYSTEM_ACCOUNT


def short_secret_warning(secret: str) -> str | None:
    """A warning for the operator when the secret is shorter than HS256's 32-byte recommendation."""
    n = len(secret.encode())
    if n >= MIN_SECRET_BYTES:
        return None
    return f"[hulykvs_api] token_secret is {n} bytes; HS256 wants at least {MIN_SECRET_BYTES} random bytes"


def bearer_token(header: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header (401 otherwise)."""
    if header is None:
        raise unauthorized("missing Authorization header (expected: Bearer <token>)")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("Authorization header is not 'Bearer <token>'")
    if not token.isascii():  # a JWT is base64url and dots; other bytes cannot even be hashed as text
        raise unauthorized("invalid token: it is not ASCII")
    return token.strip()


def claims_of(payload: Any) -> Claims:
    """Huly's claims from a verified payload; anything malformed is a 401 (an unusable token)."""
    if not isinstance(payload, dict):
        raise unauthorized("invalid token: the payload is not a JSON object")
    account = payload.get("account")
    acc = canonical_uuid(account) if isinstance(account, str) else None
    if acc is None:
        raise unauthorized("invalid token: 'account' is missing or not a UUID")
    ws_raw = payload.get("workspace")
    ws = None
    if ws_raw is not None:
        ws = canonical_uuid(ws_raw) if isinstance(ws_raw, str) else None
        if ws is None:
            raise unauthorized("invalid token: 'workspace' is not a UUID")
    extra = payload.get("extra", {})
    if extra is None:
        extra = {}
    if not isinstance(extra, dict) or not all(isinstance(v, str) for v in extra.values()):
        raise unauthorized("invalid token: 'extra' is not a map of strings")
    return Claims(acc, ws, dict(extra))


def verify(header: str | None, secret: str) -> Claims:
    """The claims of the request's token, or a 401 naming what is wrong with it (no cache)."""
    return claims_of(_decode(bearer_token(header), secret))


def _decode(token: str, secret: str) -> dict[str, Any]:
    """The verified payload of ``token`` (signature, algorithm and time claims), or a 401."""
    try:
        alg = jwt.get_unverified_header(token).get("alg")
    except jwt.InvalidTokenError as e:
        raise unauthorized(f"invalid token: {e}")
    if alg != ALGORITHM:
        raise unauthorized(f"invalid token: algorithm {alg!r} is not accepted (only {ALGORITHM})")
    try:
        payload: dict[str, Any] = jwt.decode(token, secret, algorithms=[ALGORITHM], options={"require": []}, leeway=0)
    except jwt.ExpiredSignatureError:
        raise unauthorized("invalid token: expired")
    except jwt.InvalidSignatureError:
        raise unauthorized("invalid token: bad signature")
    except jwt.InvalidTokenError as e:
        raise unauthorized(f"invalid token: {e}")
    return payload


#: Verified tokens a :class:`TokenVerifier` remembers: a few per client service is plenty.
TOKEN_CACHE_SIZE = 4096


class TokenVerifier:
    """:func:`verify` with a bounded cache of the tokens it verified, for one secret.

    The cache maps the SHA-256 of a token (not the token: its size is the client's choice) to
    its claims and its time claims (``iat``, ``nbf``, ``exp``, as PyJWT reads them). A token
    found in the cache is accepted only if those still hold at the time of use, in PyJWT's order
    and with its messages; the one entry found expired (or, after the clock stepped back, not
    yet valid) is dropped, so a cached token answers exactly as verifying it again would. The
    cache is an LRU of ``maxsize`` entries, so many distinct tokens cost at most ``maxsize``
    entries. It lives in the verifier, which is built for one secret: a new secret means a new
    verifier with an empty cache, and tokens of the old one are verified again (and refused).

    Refused tokens are not remembered. Entries are only made by tokens signed with the secret,
    which clients cannot forge, so the cache's content stays under the token issuer's control;
    a negative cache would be keyed by whatever strings a client sends, which a hostile client
    can vary at will (it would never hit, and would churn the LRU out of the valid tokens), and
    a refusal costs one verification, as every request did before the cache.
    """

    def __init__(self, secret: str, maxsize: int = TOKEN_CACHE_SIZE, clock: Callable[[], float] = time.time) -> None:
        if maxsize < 1:
            raise ValueError("the token cache needs at least one entry")
        self.secret = secret
        self.maxsize = maxsize
        self._clock = clock
        self._cache: OrderedDict[bytes, tuple[Claims, int | None, int | None, int | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._cache)

    def verify(self, header: str | None) -> Claims:
        """The claims of the request's token (cached while its time claims hold), or a 401."""
        token = bearer_token(header)
        key = hashlib.sha256(token.encode()).digest()
        hit = self._cache.get(key)
        if hit is not None:
            claims, iat, nbf, exp = hit
            now = self._clock()
            # PyJWT's checks and order (leeway 0): iat and nbf not in the future, exp not reached
            if iat is not None and iat > now:
                del self._cache[key]
                raise unauthorized("invalid token: The token is not yet valid (iat)")
            if nbf is not None and nbf > now:
                del self._cache[key]
                raise unauthorized("invalid token: The token is not yet valid (nbf)")
            if exp is not None and exp <= now:
                del self._cache[key]
                raise unauthorized("invalid token: expired")
            self._cache.move_to_end(key)
            return claims
        payload = _decode(token, self.secret)
        claims = claims_of(payload)
        # PyJWT has checked that these are integers (int() of the claim) and hold now
        entry = (claims, _int_claim(payload, "iat"), _int_claim(payload, "nbf"), _int_claim(payload, "exp"))
        self._cache[key] = entry
        if len(self._cache) > self.maxsize:
            self._cache.popitem(last=False)
        return claims


def _int_claim(payload: dict[str, Any], name: str) -> int | None:
    """A time claim as PyJWT compares it (``int()`` of the value), or None when absent."""
    value = payload.get(name)
    return None if value is None else int(value)


def authorize_v2(claims: Claims, workspace: str) -> None:
    """API v2: the system account anywhere, other accounts only in their token's workspace."""
    if claims.is_system:
        return
    if claims.workspace is None:
        raise forbidden("the token names no workspace")
    if claims.workspace != workspace:
        raise forbidden("the token is for another workspace")


def authorize_v1(claims: Claims, default_workspace: str) -> None:
    """API v1 works in the default workspace: a token bound to another workspace is refused."""
    if claims.is_system or claims.workspace is None or claims.workspace == default_workspace:
        return
    raise forbidden("the token is for another workspace than the API v1 workspace")


def mint(
    secret: str,
    account: str,
    workspace: str | None = None,
    ttl: float | None = None,
    extra: dict[str, str] | None = None,
) -> str:
    """A token as Huly's services make them (for operators and tests); ``ttl`` adds ``exp``."""
    acc = canonical_uuid(account)
    if acc is None:
        raise HulyError(400, f"account {account!r} is not a UUID")
    payload: dict[str, Any] = {"account": acc}
    if workspace is not None:
        ws = canonical_uuid(workspace)
        if ws is None:
            raise HulyError(400, f"workspace {workspace!r} is not a UUID")
        payload["workspace"] = ws
    if extra:
        payload["extra"] = dict(extra)
    if ttl is not None:
        payload["exp"] = int(time.time() + ttl)
    return jwt.encode(payload, secret, algorithm=ALGORITHM)
