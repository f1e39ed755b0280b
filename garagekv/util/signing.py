"""AWS Signature V4 primitives shared by the server verifier and our own client signer.

Pure stdlib on purpose: the client, the benchmark and the server all import this, and a signer
and a verifier built from the same canonicalisation code cannot silently drift apart. The
server-side rules (which headers must be signed, clock skew, error types) live in
``garagekv.api.signature``; this module only knows how AWS builds the strings it signs.

K2V is a non-S3 service, so the canonical URI is the *raw* request path URI-encoded a second
time (``/b/my%20pk`` is signed as ``/b/my%2520pk``), with no path normalisation.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from urllib.parse import parse_qsl, quote_from_bytes

ALGORITHM = "AWS4-HMAC-SHA256"
AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_PAYLOAD = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
MAX_PRESIGN_EXPIRES = 7 * 24 * 3600

QueryPairs = Sequence[tuple[str, str]]

# Never signed by our Signer: proxies and HTTP libraries rewrite these.
_UNSIGNABLE = frozenset(
    {
        "authorization",
        "connection",
        "expect",
        "keep-alive",
        "te",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "x-amz-date",
        "x-amz-content-sha256",
    }
)


_PLAIN = re.compile(r"[A-Za-z0-9\-_.~]*")
_PLAIN_PATH = re.compile(r"[A-Za-z0-9\-_.~/]*")


def uri_encode(s: str, encode_slash: bool) -> str:
    """AWS URI encoding: unreserved ``A-Za-z0-9-_.~`` kept, everything else ``%XX`` (uppercase).

    ``surrogateescape`` lets a path that arrived as undecodable bytes round-trip to those bytes.
    Plain strings (the usual paths, query names and values) come back as they are, unencoded.
    """
    if (_PLAIN if encode_slash else _PLAIN_PATH).fullmatch(s):
        return s
    return quote_from_bytes(s.encode("utf-8", "surrogateescape"), safe="-_.~" if encode_slash else "-_.~/")


def parse_query(raw_query: str) -> list[tuple[str, str]]:
    """Decode a query string as application/x-www-form-urlencoded (``+`` is a space).

    Blank values are kept and a bare ``search`` becomes ``("search", "")``, so a keyword with
    and without ``=`` canonicalises the same way.
    """
    if "%" in raw_query or "+" in raw_query:
        return parse_qsl(raw_query, keep_blank_values=True)
    # Nothing to unquote (the usual K2V query): parse_qsl's own splitting, without its decoding.
    return [(name, value) for name, _, value in (part.partition("=") for part in raw_query.split("&") if part)]


def encode_query(pairs: QueryPairs) -> str:
    """Encode decoded pairs for the wire so that :func:`parse_query` gives them back exactly."""
    return "&".join(f"{uri_encode(k, True)}={uri_encode(v, True)}" for k, v in pairs)


def canonical_query(pairs: QueryPairs) -> str:
    """Decoded pairs re-encoded (``/`` included) and sorted as ``k=v`` strings, as Garage does."""
    return "&".join(sorted(f"{uri_encode(k, True)}={uri_encode(v, True)}" for k, v in pairs))


def canonical_request(
    method: str, canonical_uri: str, canonical_query: str, signed_headers: Sequence[tuple[str, str]], payload_hash: str
) -> str:
    """The canonical request; ``signed_headers`` are (lowercase name, value) in sorted order.

    Values are trimmed but inner runs of spaces are kept (Garage does not collapse them).
    """
    headers = "".join(f"{name}:{value.strip()}\n" for name, value in signed_headers)
    names = ";".join(name for name, _ in signed_headers)
    return "\n".join([method, canonical_uri, canonical_query, headers, names, payload_hash])


def credential_scope(date: str, region: str, service: str) -> str:
    """``YYYYMMDD/region/service/aws4_request``."""
    return f"{date}/{region}/{service}/aws4_request"


def string_to_sign(amz_date: str, scope: str, canonical_request: str) -> str:
    # A header value holds the bytes as received (undecodable ones as surrogates): they are what
    # the client signed.
    digest = hashlib.sha256(canonical_request.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{scope}\n{digest}"


def chunk_string_to_sign(amz_date: str, scope: str, previous_signature: str, chunk: bytes) -> str:
    """What each aws-chunked chunk signs: chained to the previous signature (the seed first)."""
    return (
        f"{ALGORITHM}-PAYLOAD\n{amz_date}\n{scope}\n{previous_signature}\n"
        f"{EMPTY_SHA256}\n{hashlib.sha256(chunk).hexdigest()}"
    )


def sign(key: bytes, sts: str) -> str:
    """Hex HMAC-SHA256 of a string to sign."""
    return hmac.digest(key, sts.encode("utf-8"), "sha256").hex()


def derive_signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """The HMAC chain secret → date → region → service → ``aws4_request`` (four HMACs)."""
    key = ("AWS4" + secret).encode("utf-8")
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
    return key


class SigningKeyCache:
    """LRU-bounded cache of derived signing keys.

    A key is valid for a whole UTC day, so a busy client hits the same entry for every request
    and the server skips four HMACs per request. Keyed by the secret itself (not only the key
    id) so a changed secret can never reuse a stale derivation.
    """

    def __init__(self, maxsize: int = 1024) -> None:
        self.maxsize = maxsize
        self.derivations = 0
        self._keys: OrderedDict[tuple[str, str, str, str], bytes] = OrderedDict()

    def get(self, secret: str, date: str, region: str, service: str) -> bytes:
        k = (secret, date, region, service)
        key = self._keys.get(k)
        if key is not None:
            self._keys.move_to_end(k)
            return key
        key = derive_signing_key(secret, date, region, service)
        self.derivations += 1
        self._keys[k] = key
        if len(self._keys) > self.maxsize:
            self._keys.popitem(last=False)
        return key

    def __len__(self) -> int:
        return len(self._keys)


def format_amz_date(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime(AMZ_DATE_FORMAT)


class Signer:
    """Signs requests for one access key (our client and benchmark use it).

    ``raw_path`` is the path exactly as it goes on the wire (already percent-encoded); the query
    is either decoded pairs (send them with :func:`encode_query`) or the raw query string.
    """

    def __init__(self, access_key_id: str, secret: str, region: str, service: str = "k2v") -> None:
        self.access_key_id = access_key_id
        self.region = region
        self.service = service
        self._secret = secret
        self._key: tuple[str, bytes] | None = None

    def _signing_key(self, date: str) -> bytes:
        if self._key is None or self._key[0] != date:
            self._key = (date, derive_signing_key(self._secret, date, self.region, self.service))
        return self._key[1]

    def _sign(
        self, method: str, raw_path: str, pairs: QueryPairs, signed: dict[str, str], payload_hash: str, amz_date: str
    ) -> tuple[str, str, str]:
        """Sign with ``signed`` = {lowercase name: value}; returns (scope, names, signature)."""
        if "host" not in signed:
            raise ValueError("the host header must be given: it is always signed")
        headers = sorted(signed.items())
        scope = credential_scope(amz_date[:8], self.region, self.service)
        creq = canonical_request(method, uri_encode(raw_path, False), canonical_query(pairs), headers, payload_hash)
        sig = sign(self._signing_key(amz_date[:8]), string_to_sign(amz_date, scope, creq))
        return scope, ";".join(k for k, _ in headers), sig

    def sign_headers(
        self,
        method: str,
        raw_path: str,
        query: QueryPairs | str | None,
        headers: Mapping[str, str],
        body: bytes | None,
        now: float | None = None,
        unsigned_payload: bool = False,
        content_sha256: str | None = None,
    ) -> dict[str, str]:
        """Headers to add: ``X-Amz-Date``, ``X-Amz-Content-Sha256`` and ``Authorization``.

        Every header given (host required) is signed, except hop-by-hop ones and the three this
        method returns (which replace any given). ``content_sha256`` forces the payload mode
        (e.g. ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD``, whose seed is the returned signature).
        """
        pairs = parse_query(query) if isinstance(query, str) else list(query or ())
        amz_date = format_amz_date(time.time() if now is None else now)
        payload = content_sha256 or (UNSIGNED_PAYLOAD if unsigned_payload else hashlib.sha256(body or b"").hexdigest())
        signed = _signable(headers)
        signed["x-amz-date"] = amz_date
        signed["x-amz-content-sha256"] = payload
        scope, names, sig = self._sign(method, raw_path, pairs, signed, payload, amz_date)
        auth = f"{ALGORITHM} Credential={self.access_key_id}/{scope}, SignedHeaders={names}, Signature={sig}"
        return {"X-Amz-Date": amz_date, "X-Amz-Content-Sha256": payload, "Authorization": auth}

    def presign_url(
        self,
        method: str,
        raw_path: str,
        query: QueryPairs | str | None,
        host: str,
        expires: int = 3600,
        now: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        """``raw_path?query`` carrying a presigned-URL signature (prefix it with scheme://host).

        The payload is ``UNSIGNED-PAYLOAD``; ``headers`` besides host are signed and must then be
        sent exactly as given.
        """
        if not 1 <= expires <= MAX_PRESIGN_EXPIRES:
            raise ValueError(f"expires must be between 1 and {MAX_PRESIGN_EXPIRES} seconds")
        pairs = parse_query(query) if isinstance(query, str) else list(query or ())
        amz_date = format_amz_date(time.time() if now is None else now)
        signed = _signable(headers or {})
        signed["host"] = host
        scope = credential_scope(amz_date[:8], self.region, self.service)
        pairs += [
            ("X-Amz-Algorithm", ALGORITHM),
            ("X-Amz-Credential", f"{self.access_key_id}/{scope}"),
            ("X-Amz-Date", amz_date),
            ("X-Amz-Expires", str(expires)),
            ("X-Amz-SignedHeaders", ";".join(sorted(signed))),
        ]
        _, _, sig = self._sign(method, raw_path, pairs, signed, UNSIGNED_PAYLOAD, amz_date)
        return f"{raw_path}?{encode_query([*pairs, ('X-Amz-Signature', sig)])}"


def _signable(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items() if k.lower() not in _UNSIGNABLE}
