"""Server-side SigV4 verification for the K2V API (docs/k2v-api.md §3, clock skew included).

Framework-independent: it takes the method, the raw path and query as received, and the
headers, so it can be tested without a server and reused by anything that speaks K2V. Only the
body check is deferred (:meth:`Verified.check_body`), because the contract reads and digests the
body after bucket and permission checks (§2).

For callers whose key lookup is asynchronous, :func:`parse_request` does every check that needs
no secret and :meth:`PendingAuth.finish` completes it; :func:`verify_request` chains the two.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import re
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from garagekv.util.errors import (
    AccessDenied,
    AuthorizationHeaderMalformed,
    BadRequest,
    InvalidDigest,
    RequestTimeTooSkewed,
)
from garagekv.util.signing import (
    ALGORITHM,
    AMZ_DATE_FORMAT,
    EMPTY_SHA256,
    MAX_PRESIGN_EXPIRES,
    STREAMING_PAYLOAD,
    STREAMING_UNSIGNED_TRAILER,
    UNSIGNED_PAYLOAD,
    SigningKeyCache,
    canonical_query,
    canonical_request,
    chunk_string_to_sign,
    credential_scope,
    parse_query,
    sign,
    string_to_sign,
    uri_encode,
)

MAX_SKEW_SECONDS = 15 * 60
DEFAULT_CACHE = SigningKeyCache()

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_AMZ_DATE = re.compile(r"\d{8}T\d{6}Z")
# RFC 9110 token characters: what a header name (and so a query key, §3) may contain.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CHUNK_SIZE = re.compile(rb"[0-9a-fA-F]{1,16}")
# A decimal count (content length, expiry seconds): ASCII digits, at most 20 significant (u64), so
# int() never meets thousands of digits (Python refuses more than 4300 with a ValueError).
_DECIMAL = re.compile(r"0*[0-9]{1,20}")

# Trailer checksums we can verify with the stdlib; others (crc32c, crc64nvme) are accepted unchecked.
_CHECKSUMS: dict[str, Callable[[bytes], bytes]] = {
    "x-amz-checksum-crc32": lambda b: zlib.crc32(b).to_bytes(4, "big"),
    "x-amz-checksum-sha1": lambda b: hashlib.sha1(b).digest(),
    "x-amz-checksum-sha256": lambda b: hashlib.sha256(b).digest(),
}


class Headers:
    """Case-insensitive, multi-valued view of request headers.

    Accepts a CIMultiDict (repeated headers kept) or any plain mapping, in any letter case.
    """

    def __init__(self, headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> None:
        items = headers.items() if isinstance(headers, Mapping) else headers
        # Each name's values, trimmed and joined with "," once here: the checks read some ten
        # headers per request, a few of them twice.
        self._h: dict[str, str] = {}
        for name, value in items:
            key = name.lower()
            seen = self._h.get(key)
            self._h[key] = value.strip() if seen is None else f"{seen},{value.strip()}"

    def get(self, name: str) -> str | None:
        value = self._h.get(name)
        if value is None and not name.islower():
            return self._h.get(name.lower())
        return value

    def names(self) -> Iterable[str]:
        return self._h.keys()


@dataclass(slots=True)
class Verified:
    """A request whose signature checked out; ``content_sha256`` says how the body is covered.

    It is the ``x-amz-content-sha256`` value that was signed: a hex digest, ``UNSIGNED-PAYLOAD``
    or one of the aws-chunked ``STREAMING-*`` modes.
    """

    access_key_id: str
    content_sha256: str
    presigned: bool
    signature: str
    amz_date: str
    scope: str
    signing_key: bytes = field(repr=False)
    trailer: str | None = None
    decoded_length: int | None = None

    @property
    def streaming(self) -> bool:
        return self.content_sha256 in (STREAMING_PAYLOAD, STREAMING_UNSIGNED_TRAILER)

    def check_body(self, body: bytes) -> bytes:
        """The payload, after checking it against what was signed.

        Hex digest → compared (InvalidDigest); aws-chunked → decoded, each chunk signature
        verified (chained from the seed signature) or the trailer checksum checked.
        """
        mode = self.content_sha256
        if mode == UNSIGNED_PAYLOAD:
            return body
        if mode == STREAMING_PAYLOAD:
            payload, _ = self._decode_chunked(body, signed=True)
        elif mode == STREAMING_UNSIGNED_TRAILER:
            payload, trailers = self._decode_chunked(body, signed=False)
            _check_trailers(payload, trailers, self.trailer)
        else:
            if not hmac.compare_digest(hashlib.sha256(body).hexdigest(), mode.lower()):
                raise InvalidDigest("Body does not match the x-amz-content-sha256 header")
            return body
        if self.decoded_length is not None and self.decoded_length != len(payload):
            raise BadRequest("aws-chunked body does not match x-amz-decoded-content-length")
        return payload

    def _decode_chunked(self, body: bytes, signed: bool) -> tuple[bytes, dict[str, str]]:
        """Parse ``size[;chunk-signature=sig]\\r\\ndata\\r\\n``... up to the 0-size chunk."""
        out: list[bytes] = []
        prev, pos = self.signature, 0
        while True:
            eol = body.find(b"\r\n", pos)
            if eol < 0:
                raise BadRequest("Malformed aws-chunked body: missing chunk header")
            size_hex, _, ext = body[pos:eol].partition(b";")
            if not _CHUNK_SIZE.fullmatch(size_hex):
                raise BadRequest("Malformed aws-chunked body: bad chunk size")
            size, pos = int(size_hex, 16), eol + 2
            data = body[pos : pos + size]
            if len(data) < size:
                raise BadRequest("Malformed aws-chunked body: truncated chunk")
            pos += size
            if signed:
                name, _, sig = ext.partition(b"=")
                if name != b"chunk-signature" or not _HEX64.fullmatch(sig.decode("latin-1")):
                    raise BadRequest("Malformed aws-chunked body: missing chunk signature")
                expected = sign(self.signing_key, chunk_string_to_sign(self.amz_date, self.scope, prev, data))
                if not hmac.compare_digest(expected, sig.decode("ascii").lower()):
                    raise AccessDenied("Invalid chunk signature")
                prev = expected
            if size == 0:
                break
            if body[pos : pos + 2] != b"\r\n":
                raise BadRequest("Malformed aws-chunked body: chunk not followed by CRLF")
            pos += 2
            out.append(data)
        return b"".join(out), _parse_trailers(body[pos:], allow=not signed)


def _parse_trailers(rest: bytes, allow: bool) -> dict[str, str]:
    """After the final chunk: ``\r\n`` alone, or (trailer mode) ``name:value\r\n`` lines then ``\r\n``."""
    if rest == b"\r\n":
        return {}
    if not allow or not rest.endswith(b"\r\n\r\n"):
        raise BadRequest("Malformed aws-chunked body: bad data after the final chunk")
    trailers: dict[str, str] = {}
    for line in rest[:-4].split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name.decode("latin-1")):
            raise BadRequest("Malformed aws-chunked body: bad trailer line")
        trailers[name.decode("ascii").lower()] = value.decode("latin-1").strip()
    return trailers


def _check_trailers(payload: bytes, trailers: dict[str, str], declared: str | None) -> None:
    for name in (n.strip().lower() for n in (declared or "").split(",") if n.strip()):
        if name not in trailers:
            raise BadRequest(f"Trailer {name} declared in x-amz-trailer but not sent")
    for name, value in trailers.items():
        digest = _CHECKSUMS.get(name)
        if digest is None:
            continue
        try:
            sent = base64.b64decode(value, validate=True)
        except binascii.Error:
            raise InvalidDigest(f"Invalid {name} trailer")
        if not hmac.compare_digest(sent, digest(payload)):
            raise InvalidDigest(f"Body does not match the {name} trailer")


@dataclass(slots=True)
class PendingAuth:
    """A parsed, well-formed signed request; :meth:`finish` checks the signature itself."""

    access_key_id: str
    presigned: bool
    amz_date: str
    scope: str
    canonical_requests: tuple[tuple[str, str], ...]  # (payload mode, canonical request) to try
    signature: str
    trailer: str | None
    decoded_length: int | None
    region: str
    service: str

    def finish(self, secret: str | None, cache: SigningKeyCache | None = None) -> Verified:
        """Verify against the key's secret (None = unknown key) in constant time."""
        if secret is None:
            raise AccessDenied(f"No such key: {self.access_key_id}")
        if not _HEX64.fullmatch(self.signature):
            raise AccessDenied("Invalid signature")
        cache = DEFAULT_CACHE if cache is None else cache
        key = cache.get(secret, self.amz_date[:8], self.region, self.service)
        given = self.signature.lower()
        for mode, creq in self.canonical_requests:
            if hmac.compare_digest(sign(key, string_to_sign(self.amz_date, self.scope, creq)), given):
                return Verified(
                    self.access_key_id,
                    mode,
                    self.presigned,
                    given,
                    self.amz_date,
                    self.scope,
                    key,
                    self.trailer,
                    self.decoded_length,
                )
        raise AccessDenied("Invalid signature")


def verify_request(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Mapping[str, str] | Headers,
    region: str,
    lookup_secret: Callable[[str], str | None],
    now: float | None = None,
    cache: SigningKeyCache | None = None,
    service: str = "k2v",
) -> Verified:
    """Check a request's SigV4 signature (header or presigned form) or raise the contract's error."""
    pending = parse_request(method, raw_path, raw_query, headers, region, now, service)
    return pending.finish(lookup_secret(pending.access_key_id), cache)


def parse_request(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Mapping[str, str] | Headers,
    region: str,
    now: float | None = None,
    service: str = "k2v",
) -> PendingAuth:
    """Every check that needs no secret, in the contract's order (400s before 403s)."""
    path, sep, q = raw_path.partition("?")
    if sep and not raw_query:
        raw_query = q
    h = headers if isinstance(headers, Headers) else Headers(headers)
    query = _parse_query_checked(raw_query)
    now = time.time() if now is None else now
    if "x-amz-algorithm" in query:  # the presigned form wins over an Authorization header, as in Garage
        return _parse_presigned(method, path, query, h, region, service, now)
    auth = h.get("authorization")
    if auth is None:
        raise AccessDenied("Garage does not support anonymous access yet")
    return _parse_header_auth(method, path, query, h, auth, region, service, now)


def _parse_query_checked(raw_query: str) -> dict[str, tuple[str, str]]:
    """{lowercase key: (key as sent, value)}; keys are header names, so case-folded duplicates clash."""
    query: dict[str, tuple[str, str]] = {}
    for key, value in parse_query(raw_query):
        if not _TOKEN.fullmatch(key):
            raise BadRequest(f"Invalid query parameter name: {key!r}")
        if key.lower() in query:
            raise BadRequest(f"Duplicate query parameter: {key}")
        query[key.lower()] = (key, value)
    return query


def _parse_header_auth(
    method: str,
    path: str,
    query: dict[str, tuple[str, str]],
    h: Headers,
    auth: str,
    region: str,
    service: str,
    now: float,
) -> PendingAuth:
    params = _authorization_params(auth)
    content_sha256 = h.get("x-amz-content-sha256")
    if content_sha256 is None:
        raise BadRequest("Missing X-Amz-Content-Sha256 header")
    if content_sha256 not in (UNSIGNED_PAYLOAD, STREAMING_PAYLOAD, STREAMING_UNSIGNED_TRAILER) and not _HEX64.fullmatch(
        content_sha256
    ):
        raise BadRequest("Invalid content sha256 hash")
    amz_date = _parse_amz_date(h.get("x-amz-date"))
    signed = _signed_headers(params["SignedHeaders"], h)
    key_id, scope = _check_scope(params["Credential"], amz_date, region, service)
    if abs(now - _timestamp(amz_date)) > MAX_SKEW_SECONDS:
        raise RequestTimeTooSkewed("The difference between the request time and the server's time is too large")
    creq = canonical_request(method, uri_encode(path, False), _canonical_query(query), signed, content_sha256)
    decoded = h.get("x-amz-decoded-content-length")
    if decoded is not None and not _DECIMAL.fullmatch(decoded):
        raise BadRequest("Invalid x-amz-decoded-content-length")
    return PendingAuth(
        key_id,
        False,
        amz_date,
        scope,
        ((content_sha256, creq),),
        params["Signature"],
        h.get("x-amz-trailer"),
        None if decoded is None else int(decoded.lstrip("0") or "0"),
        region,
        service,
    )


def _authorization_params(auth: str) -> dict[str, str]:
    """The fields of an ``AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...`` header.

    A client sends the same header but for its last field, the signature, on every request of a
    day: everything before the last comma is parsed once (``_authorization_head``) and only the
    last field each time. Headers not of that shape take the same parse whole.
    """
    comma = auth.rfind(",")
    if comma > len(ALGORITHM) and auth.startswith(ALGORITHM + " "):
        params = dict(_authorization_head(auth[:comma]))
        name, eq, value = auth[comma + 1 :].strip().partition("=")
        if eq:
            params[name] = value
    else:
        params = dict(_authorization_head(auth))
    for name in ("Credential", "SignedHeaders", "Signature"):
        if name not in params:
            raise BadRequest(f"Could not find {name} in Authorization header")
    return params


# Bounded small: keyed by what clients send (a header may be 8 KiB), and a miss costs about 1 us.
@functools.lru_cache(maxsize=256)
def _authorization_head(auth: str) -> tuple[tuple[str, str], ...]:
    """The ``name=value`` fields after the algorithm, in order (a later one wins when repeated)."""
    kind, _, rest = auth.strip().partition(" ")
    if kind != ALGORITHM:
        raise BadRequest("Unsupported authorization method")
    fields = []
    for part in rest.split(","):
        name, eq, value = part.strip().partition("=")
        if eq:
            fields.append((name, value))
    return tuple(fields)


def _parse_presigned(
    method: str, path: str, query: dict[str, tuple[str, str]], h: Headers, region: str, service: str, now: float
) -> PendingAuth:
    def param(name: str) -> str:
        if name.lower() not in query:
            raise BadRequest(f"Missing {name} query parameter")
        return query[name.lower()][1]

    if param("X-Amz-Algorithm") != ALGORITHM:
        raise BadRequest("Unsupported signature algorithm")
    credential, signature = param("X-Amz-Credential"), param("X-Amz-Signature")
    amz_date = _parse_amz_date(param("X-Amz-Date"))
    expires_s = param("X-Amz-Expires")
    if not _DECIMAL.fullmatch(expires_s):
        raise BadRequest("X-Amz-Expires is not a number of seconds")
    expires = int(expires_s.lstrip("0") or "0")
    if expires > MAX_PRESIGN_EXPIRES:
        raise BadRequest("X-Amz-Expires may not exceed a week")
    signed = _signed_headers(param("X-Amz-SignedHeaders"), h)
    key_id, scope = _check_scope(credential, amz_date, region, service)
    date = _timestamp(amz_date)
    if now > date + expires:
        raise AccessDenied("Presigned URL expired")
    if date > now + MAX_SKEW_SECONDS:
        raise AccessDenied("Presigned URL is not valid yet")
    # Garage signs presigned URLs with UNSIGNED-PAYLOAD, as S3 does. Generic (non-S3) AWS signers
    # such as botocore's SigV4QueryAuth sign the x-amz-content-sha256 header if sent, otherwise
    # the hash of the (empty) body: accept those too; check_body then enforces the digest.
    content_sha256 = h.get("x-amz-content-sha256")
    if content_sha256 is not None and content_sha256 != UNSIGNED_PAYLOAD and not _HEX64.fullmatch(content_sha256):
        raise BadRequest("Invalid content sha256 hash")
    cquery = _canonical_query(query)
    uri = uri_encode(path, False)
    modes = dict.fromkeys([UNSIGNED_PAYLOAD, content_sha256 or EMPTY_SHA256])
    creqs = tuple((m, canonical_request(method, uri, cquery, signed, m)) for m in modes)
    return PendingAuth(key_id, True, amz_date, scope, creqs, signature, None, None, region, service)


def _canonical_query(query: dict[str, tuple[str, str]]) -> str:
    return canonical_query([kv for lk, kv in query.items() if lk != "x-amz-signature"])


def _parse_amz_date(value: str | None) -> str:
    if value is None:
        raise BadRequest("Missing X-Amz-Date field")
    value = value.strip()
    if not _AMZ_DATE.fullmatch(value):
        raise BadRequest("Invalid date")
    try:
        _timestamp(value)
    except ValueError:
        raise BadRequest("Invalid date")
    return value


@functools.lru_cache(maxsize=256)
def _timestamp(amz_date: str) -> float:
    """Seconds since the epoch of an X-Amz-Date; cached, since every request of a second shares it."""
    return datetime.strptime(amz_date, AMZ_DATE_FORMAT).replace(tzinfo=UTC).timestamp()


def _signed_headers(spec: str, h: Headers) -> list[tuple[str, str]]:
    """(name, value) of each signed header, sorted; host and every x-amz-* header must be in it."""
    names = _signed_names(spec)
    for name in h.names():
        if name.startswith("x-amz-") and name not in names:
            raise BadRequest(f"Header `{name}` should be signed")
    signed = []
    for name in names:
        value = h.get(name)
        if value is None:
            raise BadRequest(f"Signed header `{name}` is not present")
        signed.append((name, value))
    return signed


@functools.lru_cache(maxsize=256)
def _signed_names(spec: str) -> tuple[str, ...]:
    """A SignedHeaders list as sorted lowercase names; cached, since a client sends the same one."""
    names = tuple(sorted({n.strip().lower() for n in spec.split(";")}))
    if "host" not in names:
        raise BadRequest("Header `Host` should be signed")
    return names


@functools.lru_cache(maxsize=256)
def _check_scope(credential: str, amz_date: str, region: str, service: str) -> tuple[str, str]:
    """Split ``AK/scope`` and require the scope to be exactly today's for this region and k2v."""
    key_id, _, scope = credential.partition("/")
    expected = credential_scope(amz_date[:8], region, service)
    if scope != expected:
        raise AuthorizationHeaderMalformed(
            f"Authorization header malformed, unexpected scope: {scope} (expected {expected}: "
            f"region {region!r}, service {service!r}, the date of X-Amz-Date)"
        )
    return key_id, scope
