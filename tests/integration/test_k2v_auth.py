"""docs/k2v-api.md §2 (order of checks) and §3 (SigV4 authentication), against a real node."""

from __future__ import annotations

import datetime
import gzip
import hashlib
import hmac
import time
import uuid
import zlib

import botocore.auth
import pytest
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from garagekv.util.signing import (
    STREAMING_PAYLOAD,
    STREAMING_UNSIGNED_TRAILER,
    UNSIGNED_PAYLOAD,
    Signer,
    canonical_query,
    canonical_request,
    chunk_string_to_sign,
    credential_scope,
    derive_signing_key,
    parse_query,
    sign,
    string_to_sign,
    uri_encode,
)
from tests.support import K2VHttp
from tests.support.k2v import (
    BUCKET,
    EMPTY_TOKEN,
    TOKEN,
    assert_error,
    assert_partition_empty,
    b64,
    botocore_headers,
    ipath,
    new_pk,
    partition,
    put,
    q,
    raw_send,
    send_signed,
    sign_headers,
)


def _key(node, name: str, **perms: bool) -> K2VHttp:
    key = node.admin("key.create", {"name": name})
    if perms:
        node.admin("bucket.permissions", {"bucket": BUCKET, "key": key["accessKeyId"], "allow": True, **perms})
    return K2VHttp(node.endpoint, key["accessKeyId"], key["secretAccessKey"])


@pytest.fixture(scope="module")
def ro(node, creds) -> K2VHttp:
    return _key(node, "read-only", read=True)


@pytest.fixture(scope="module")
def wo(node, creds) -> K2VHttp:
    return _key(node, "write-only", write=True)


@pytest.fixture(scope="module")
def noperm(node, creds) -> K2VHttp:
    return _key(node, "no-permission")


# ---- §2 order of checks ------------------------------------------------------------------------


def test_routing_error_beats_auth(k2v):
    bad = K2VHttp(k2v.host, k2v.access_key, "wrong-secret")
    for client, signed in ((k2v, False), (bad, True)):
        r = client.request("PUT", f"/{BUCKET}", "sort_key=a", b"v", sign=signed)
        assert_error(r, 400, "InvalidRequest", message="Invalid endpoint")
        r = client.request("GET", f"/{BUCKET}", "limit=x", sign=signed)
        assert_error(r, 400, "InvalidRequest", message="Failed to parse query parameter")
        r = client.request("GET", f"/{BUCKET}/%FF", "sort_key=a", sign=signed)
        assert_error(r, 400, "InvalidUtf8String")


@pytest.mark.parametrize(
    "method,path,query,body",
    [
        ("GET", "/test-bucket/pk", "sort_key=a", None),
        ("PUT", "/test-bucket/pk", "sort_key=a", b"v"),
        ("GET", "/test-bucket", "", None),
        ("POST", "/test-bucket", "search", b"[]"),
        ("GET", "/no-such-bucket", "", None),
    ],
)
def test_unsigned_request_is_access_denied(k2v, method, path, query, body):
    r = k2v.request(method, path, query, body, sign=False)
    assert_error(r, 403, "AccessDenied", path=path, message="Forbidden: Garage does not support anonymous access yet")


def test_unsigned_write_writes_nothing(k2v, pk):
    r = k2v.request("PUT", ipath(pk), "sort_key=a", b"v", sign=False)
    assert_error(r, 403, "AccessDenied")
    assert_partition_empty(k2v, pk)


@pytest.mark.parametrize(
    "method,path,query,body",
    [
        ("GET", "/no-such-bucket/pk", "sort_key=a", None),
        ("GET", "/no-such-bucket", "", None),
        ("POST", "/no-such-bucket", "search", b"[]"),
        ("PUT", "/no-such-bucket/pk", "sort_key=a", b"v"),
    ],
)
def test_unknown_bucket_is_404(k2v, method, path, query, body):
    r = k2v.request(method, path, query, body)
    assert_error(r, 404, "NoSuchBucket", path=path.split("?")[0], message="Bucket not found: no-such-bucket")


def test_auth_beats_unknown_bucket(k2v):
    bad = K2VHttp(k2v.host, k2v.access_key, "wrong-secret")
    assert_error(
        bad.request("GET", "/no-such-bucket/pk", "sort_key=a"), 403, "AccessDenied", message="Invalid signature"
    )


def test_unknown_bucket_beats_permission(noperm):
    assert_error(noperm.request("GET", "/no-such-bucket/pk", "sort_key=a"), 404, "NoSuchBucket")


ALL_ENDPOINTS = [
    ("ReadItem", "GET", "/test-bucket/pk", "sort_key=a", None),
    ("PollItem", "GET", "/test-bucket/pk", f"sort_key=a&causality_token={EMPTY_TOKEN}&timeout=1", None),
    ("ReadIndex", "GET", "/test-bucket", "", None),
    ("ReadBatch", "POST", "/test-bucket", "search", b'[{"partitionKey": "PK"}]'),
    ("ReadBatch-SEARCH", "SEARCH", "/test-bucket", "", b'[{"partitionKey": "PK"}]'),
    ("PollRange", "POST", "/test-bucket/pk", "poll_range", b"{}"),
    ("InsertItem", "PUT", "/test-bucket/pk", "sort_key=a", b"v"),
    ("DeleteItem", "DELETE", "/test-bucket/pk", "sort_key=a", None),
    ("InsertBatch", "POST", "/test-bucket", "", b'[{"pk": "PK", "sk": "b", "v": "dg=="}]'),
    ("DeleteBatch", "POST", "/test-bucket", "delete", b'[{"partitionKey": "PK"}]'),
]
READS = {"ReadItem", "PollItem", "ReadIndex", "ReadBatch", "ReadBatch-SEARCH", "PollRange"}


def _on_partition(pk: str, path: str, body: bytes | None) -> tuple[str, bytes | None]:
    path = path.replace("/pk", f"/{pk}")
    return path, None if body is None else body.replace(b'"PK"', f'"{pk}"'.encode())


@pytest.mark.parametrize("name,method,path,query,body", ALL_ENDPOINTS, ids=[e[0] for e in ALL_ENDPOINTS])
def test_key_without_permission(k2v, noperm, pk, name, method, path, query, body):
    put(k2v, pk, "a", b"x")
    path, body = _on_partition(pk, path, body)
    r = noperm.request(method, path, query, body)
    assert_error(r, 403, "AccessDenied", message="Forbidden: Operation is not allowed for this key.")
    assert partition(k2v, pk) == {"a": [b64("x")]}


@pytest.mark.parametrize("name,method,path,query,body", ALL_ENDPOINTS, ids=[e[0] for e in ALL_ENDPOINTS])
def test_read_only_key(k2v, ro, pk, name, method, path, query, body):
    put(k2v, pk, "a", b"x")
    path, body = _on_partition(pk, path, body)
    r = ro.request(method, path, query, body)
    if name in READS:
        assert r.status == 200, (r.status, r.body)
    else:
        assert_error(r, 403, "AccessDenied", message="Operation is not allowed for this key.")
    assert partition(k2v, pk) == {"a": [b64("x")]}


@pytest.mark.parametrize("name,method,path,query,body", ALL_ENDPOINTS, ids=[e[0] for e in ALL_ENDPOINTS])
def test_write_only_key(k2v, wo, pk, name, method, path, query, body):
    put(k2v, pk, "a", b"x")
    path, body = _on_partition(pk, path, body)
    r = wo.request(method, path, query, body)
    if name in READS:  # PollRange needs read permission in garagekv
        assert_error(r, 403, "AccessDenied", message="Operation is not allowed for this key.")
        assert partition(k2v, pk) == {"a": [b64("x")]}
    else:
        assert r.status in (200, 204), (r.status, r.body)


def test_permission_beats_endpoint_checks(noperm, pk):
    r = noperm.request("GET", ipath(pk), "sort_key=a", headers={"Accept": "text/html"})
    assert_error(r, 403, "AccessDenied")
    r = noperm.request("PUT", ipath(pk), "sort_key=a", b"v", headers={TOKEN: "bad"})
    assert_error(r, 403, "AccessDenied")
    r = noperm.request("POST", f"/{BUCKET}", "search", b"not json")
    assert_error(r, 403, "AccessDenied")


def test_accept_406_before_404(k2v, pk):
    r = k2v.request("GET", ipath(pk), "sort_key=never", headers={"Accept": "text/html"})
    assert_error(r, 406, "NotAcceptable", prefix="Not acceptable: ")


def test_token_header_checked_before_body(k2v, pk):
    # The body does not match its declared hash, but the bad token is reported first.
    r = k2v.request(
        "PUT",
        ipath(pk),
        "sort_key=a",
        b"v",
        headers={TOKEN: "!!bad!!"},
        content_sha=hashlib.sha256(b"other").hexdigest(),
    )
    assert_error(r, 400, "CausalityToken", message="Invalid causality token")
    assert_partition_empty(k2v, pk)


def test_digest_checked_before_json(k2v, pk):
    r = k2v.request("POST", f"/{BUCKET}", "", b"{not json", content_sha=hashlib.sha256(b"[]").hexdigest())
    assert_error(r, 400, "InvalidDigest")


def test_json_parse_before_query_validation(k2v):
    r = k2v.request("POST", f"/{BUCKET}", "search", b'[{"partitionKey": "a", "start": "b", "prefix": "c"}')
    assert_error(r, 400, "InvalidRequest", message="Invalid JSON")


# ---- §3 scope and Authorization header ----------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [{"region": "us-east-1"}, {"service": "s3"}, {"scope_date": "20200101"}, {"service": "K2V"}, {"region": "Garage"}],
)
def test_wrong_scope_is_malformed(k2v, pk, kw):
    r = send_signed(k2v, "PUT", ipath(pk), "sort_key=a", b"v", **kw)
    assert_error(r, 400, "AuthorizationHeaderMalformed")
    # Checked before the key is looked up.
    r = send_signed(k2v, "PUT", ipath(pk), "sort_key=a", b"v", access_key="GKunknown", **kw)
    assert_error(r, 400, "AuthorizationHeaderMalformed")
    assert_partition_empty(k2v, pk)


def test_wrong_region_with_botocore(k2v, pk):
    other = K2VHttp(k2v.host, k2v.access_key, k2v.secret_key, region="us-east-1")
    assert_error(other.request("GET", ipath(pk), "sort_key=a"), 400, "AuthorizationHeaderMalformed")


def _good_auth(k2v, pk) -> dict[str, str]:
    return botocore_headers(k2v, "GET", ipath(pk), "sort_key=a")


@pytest.mark.parametrize(
    "auth",
    [
        "Basic dXNlcjpwYXNz",
        "AWS4-HMAC-SHA256",
        "AWS4-HMAC-SHA256 Credential=GKx/20240101/garage/k2v/aws4_request, SignedHeaders=host",
        "AWS4-HMAC-SHA256 SignedHeaders=host;x-amz-date, Signature=" + "0" * 64,
        "AWS4-HMAC-SHA256 Credential=GKx/20240101/garage/k2v/aws4_request, Signature=" + "0" * 64,
        "AWS2-HMAC-SHA1 Credential=a, SignedHeaders=host, Signature=b",
    ],
)
def test_malformed_authorization_header(k2v, pk, auth):
    hdrs = _good_auth(k2v, pk)
    hdrs["Authorization"] = auth
    r = raw_send(k2v.host, "GET", f"{ipath(pk)}?sort_key=a", None, hdrs)
    assert r.status == 400, (r.status, r.body)
    assert r.json()["code"] in ("InvalidRequest", "AuthorizationHeaderMalformed")


def test_authorization_parts_are_trimmed(k2v, pk):
    put(k2v, pk, "a", b"v")
    hdrs = _good_auth(k2v, pk)
    alg, _, rest = hdrs["Authorization"].partition(" ")
    parts = [p.strip() for p in rest.split(",")]
    hdrs["Authorization"] = f"{alg} " + " ,  ".join(parts)
    r = raw_send(k2v.host, "GET", f"{ipath(pk)}?sort_key=a", None, hdrs)
    assert r.status == 200, r.body


def test_bad_signature(k2v, pk):
    hdrs = _good_auth(k2v, pk)
    auth = hdrs["Authorization"]
    last = auth[-1]
    hdrs["Authorization"] = auth[:-1] + ("0" if last != "0" else "1")
    r = raw_send(k2v.host, "GET", f"{ipath(pk)}?sort_key=a", None, hdrs)
    assert_error(r, 403, "AccessDenied", message="Forbidden: Invalid signature")


@pytest.mark.parametrize("sig", ["zz" * 32, "abc", ""])
def test_non_hex_signature(k2v, pk, sig):
    hdrs = _good_auth(k2v, pk)
    head, _, _ = hdrs["Authorization"].rpartition("Signature=")
    hdrs["Authorization"] = head + "Signature=" + sig
    r = raw_send(k2v.host, "GET", f"{ipath(pk)}?sort_key=a", None, hdrs)
    assert_error(r, 403, "AccessDenied")


def test_wrong_secret(k2v, pk):
    bad = K2VHttp(k2v.host, k2v.access_key, "0" * 64)
    r = bad.request("PUT", ipath(pk), "sort_key=a", b"v")
    assert_error(r, 403, "AccessDenied", message="Invalid signature")
    assert_partition_empty(k2v, pk)


def test_unknown_key(k2v, pk):
    unknown = K2VHttp(k2v.host, "GK0123456789abcdef01234567", k2v.secret_key)
    r = unknown.request("GET", ipath(pk), "sort_key=a")
    assert_error(r, 403, "AccessDenied", message="Forbidden: No such key: GK0123456789abcdef01234567")


def test_deleted_key(node, k2v, pk):
    client = _key(node, "soon-deleted", read=True, write=True)
    put(client, pk, "a", b"v")
    node.admin("key.delete", {"pattern": client.access_key})
    r = client.request("GET", ipath(pk), "sort_key=a")
    assert_error(r, 403, "AccessDenied", message=f"No such key: {client.access_key}")


# ---- §3 dates ----------------------------------------------------------------------------------


@pytest.fixture
def shifted_botocore(monkeypatch):
    """Make botocore sign as if the clock were shifted by ``offset`` seconds."""

    def shift(offset: float) -> None:
        monkeypatch.setattr(
            botocore.auth,
            "get_current_datetime",
            lambda: datetime.datetime.now(datetime.UTC).replace(tzinfo=None) + datetime.timedelta(seconds=offset),
        )

    return shift


@pytest.mark.parametrize("offset", [-20 * 60, 20 * 60, -25 * 3600, 3 * 86400])
def test_skewed_date_rejected(k2v, pk, shifted_botocore, offset):
    shifted_botocore(offset)
    r = k2v.request("PUT", ipath(pk), "sort_key=a", b"v")
    assert_error(r, 403, "RequestTimeTooSkewed")
    r = send_signed(k2v, "PUT", ipath(pk), "sort_key=a", b"v", now=time.time() + offset)
    assert_error(r, 403, "RequestTimeTooSkewed")
    shifted_botocore(0)
    assert_partition_empty(k2v, pk)


@pytest.mark.parametrize("offset", [-10 * 60, 10 * 60])
def test_date_within_fifteen_minutes_accepted(k2v, pk, shifted_botocore, offset):
    shifted_botocore(offset)
    put(k2v, pk, "a", b"v")
    shifted_botocore(0)
    assert partition(k2v, pk) == {"a": [b64("v")]}


@pytest.mark.parametrize(
    "date",
    [
        None,
        "",
        "2024-01-01T00:00:00Z",
        "20240101",
        "20241301T000000Z",
        "20240101T250000Z",
        "Mon, 01 Jan 2024 00:00:00 GMT",
    ],
)
def test_missing_or_bad_amz_date(k2v, pk, date):
    hdrs = _good_auth(k2v, pk)
    hdrs = {k: v for k, v in hdrs.items() if k.lower() != "x-amz-date"}
    if date is not None:
        hdrs["X-Amz-Date"] = date
    r = raw_send(k2v.host, "GET", f"{ipath(pk)}?sort_key=a", None, hdrs)
    assert_error(r, 400, "InvalidRequest")


def test_date_header_does_not_replace_amz_date(k2v, pk):
    now = time.time()
    amz = datetime.datetime.fromtimestamp(now, datetime.UTC)
    date_hdr = amz.strftime("%a, %d %b %Y %H:%M:%S GMT")
    hdrs = send_headers_without_amz_date(k2v, pk, date_hdr)
    r = raw_send(k2v.host, "GET", f"{ipath(pk)}?sort_key=a", None, hdrs)
    assert_error(r, 400, "InvalidRequest")


def send_headers_without_amz_date(k2v, pk, date_hdr: str) -> dict[str, str]:
    """A request signed with a ``Date`` header (and its date in the scope) but no X-Amz-Date."""
    payload = hashlib.sha256(b"").hexdigest()
    amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    signed = [("date", date_hdr), ("host", k2v.host), ("x-amz-content-sha256", payload)]
    scope = credential_scope(amz_date[:8], k2v.region, "k2v")
    creq = canonical_request(
        "GET", uri_encode(ipath(pk), False), canonical_query(parse_query("sort_key=a")), signed, payload
    )
    key = derive_signing_key(k2v.secret_key, amz_date[:8], k2v.region, "k2v")
    sig = sign(key, string_to_sign(amz_date, scope, creq))
    return {
        "Date": date_hdr,
        "X-Amz-Content-Sha256": payload,
        "Authorization": f"AWS4-HMAC-SHA256 Credential={k2v.access_key}/{scope}, "
        f"SignedHeaders=date;host;x-amz-content-sha256, Signature={sig}",
    }


# ---- §3 payload hash ---------------------------------------------------------------------------


def test_missing_content_sha256(k2v, pk):
    r = send_signed(
        k2v, "PUT", ipath(pk), "sort_key=a", b"v", drop=("x-amz-content-sha256",), signed_names=["host", "x-amz-date"]
    )
    assert_error(r, 400, "InvalidRequest")
    hdrs = _good_auth(k2v, pk)
    hdrs = {k: v for k, v in hdrs.items() if k.lower() != "x-amz-content-sha256"}
    r = raw_send(k2v.host, "GET", f"{ipath(pk)}?sort_key=a", None, hdrs)
    assert_error(r, 400, "InvalidRequest")
    assert_partition_empty(k2v, pk)


@pytest.mark.parametrize("value", ["abc", "g" * 64, "0" * 63, "0" * 65, "unsigned-payload", "STREAMING-FOO"])
def test_invalid_content_sha256_value(k2v, pk, value):
    r = send_signed(k2v, "PUT", ipath(pk), "sort_key=a", b"v", payload=value)
    assert_error(r, 400, "InvalidRequest", message="Invalid content sha256 hash")
    assert_partition_empty(k2v, pk)


def test_wrong_hash_on_insert_item(k2v, pk):
    r = k2v.request("PUT", ipath(pk), "sort_key=a", b"value", content_sha=hashlib.sha256(b"other").hexdigest())
    assert_error(r, 400, "InvalidDigest")
    assert_partition_empty(k2v, pk)


@pytest.mark.parametrize(
    "method,query,body",
    [
        ("POST", "", b'[{"pk": "PK", "sk": "a", "v": "dg=="}]'),
        ("POST", "delete", b'[{"partitionKey": "PK"}]'),
        ("DELETE", "sort_key=a", b""),
    ],
)
def test_wrong_hash_on_body_endpoints(k2v, pk, method, query, body):
    put(k2v, pk, "a", b"keep")
    body = body.replace(b"PK", pk.encode())
    path = ipath(pk) if method == "DELETE" else f"/{BUCKET}"
    r = k2v.request(method, path, query, body, content_sha=hashlib.sha256(b"x").hexdigest())
    assert_error(r, 400, "InvalidDigest")
    assert partition(k2v, pk) == {"a": [b64("keep")]}


def test_uppercase_hex_hash_accepted(k2v, pk):
    r = k2v.request("PUT", ipath(pk), "sort_key=a", b"v", content_sha=hashlib.sha256(b"v").hexdigest().upper())
    assert r.status == 204, r.body
    assert partition(k2v, pk) == {"a": [b64("v")]}


def test_wrong_hash_ignored_where_no_body_is_read(k2v, pk):
    put(k2v, pk, "a", b"v")
    r = k2v.request("GET", ipath(pk), "sort_key=a", content_sha=hashlib.sha256(b"x").hexdigest())
    assert r.status == 200, r.body
    r = k2v.request("GET", f"/{BUCKET}", "", content_sha=hashlib.sha256(b"x").hexdigest())
    assert r.status == 200, r.body


def test_unsigned_payload_accepted(k2v, pk):
    r = k2v.request("PUT", ipath(pk), "sort_key=a", b"v1", content_sha=UNSIGNED_PAYLOAD)
    assert r.status == 204, r.body
    r = k2v.json("POST", f"/{BUCKET}", [{"pk": pk, "sk": "b", "v": b64("v2")}], content_sha=UNSIGNED_PAYLOAD)
    assert r.status == 204, r.body
    r = k2v.json("POST", f"/{BUCKET}", [{"partitionKey": pk}], query="search", content_sha=UNSIGNED_PAYLOAD)
    assert r.status == 200
    assert {i["sk"]: i["v"] for i in r.json()[0]["items"]} == {"a": [b64("v1")], "b": [b64("v2")]}


def _chunked_signed(k2v, pk: str, chunks: list[bytes], tamper: bool = False):
    now = time.time()
    amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    total = sum(len(c) for c in chunks)
    hdrs = send_signed_headers(
        k2v, "PUT", ipath(pk), "sort_key=a", {"x-amz-decoded-content-length": str(total)}, STREAMING_PAYLOAD, now
    )
    seed = hdrs["Authorization"].rpartition("Signature=")[2]
    key = derive_signing_key(k2v.secret_key, amz_date[:8], k2v.region, "k2v")
    scope = credential_scope(amz_date[:8], k2v.region, "k2v")
    prev, body = seed, b""
    for data in [*chunks, b""]:
        sig = sign(key, chunk_string_to_sign(amz_date, scope, prev, data))
        if tamper and data:
            sig = "0" * 64
        body += f"{len(data):x};chunk-signature={sig}\r\n".encode() + data + b"\r\n"
        prev = sig
    return raw_send(k2v.host, "PUT", f"{ipath(pk)}?sort_key=a", body, hdrs)


def send_signed_headers(k2v, method, path, query, headers, payload, now):
    return sign_headers(k2v, method, path, query, b"", headers, payload=payload, now=now)


def test_streaming_signed_payload(k2v, pk):
    r = _chunked_signed(k2v, pk, [b"hello ", b"chunked ", b"world"])
    assert r.status == 204, r.body
    assert partition(k2v, pk) == {"a": [b64("hello chunked world")]}


def test_streaming_signed_payload_bad_chunk_signature(k2v, pk):
    r = _chunked_signed(k2v, pk, [b"hello"], tamper=True)
    assert r.status in (400, 403), r.body
    assert r.json()["code"] in ("AccessDenied", "InvalidRequest", "InvalidDigest")
    assert_partition_empty(k2v, pk)


def test_streaming_unsigned_trailer(k2v, pk):
    data = b"trailer payload"
    crc = b64(zlib.crc32(data).to_bytes(4, "big"))
    body = f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n" + f"x-amz-checksum-crc32:{crc}\r\n\r\n".encode()
    hdrs = send_signed_headers(
        k2v,
        "PUT",
        ipath(pk),
        "sort_key=a",
        {"x-amz-trailer": "x-amz-checksum-crc32", "x-amz-decoded-content-length": str(len(data))},
        STREAMING_UNSIGNED_TRAILER,
        time.time(),
    )
    r = raw_send(k2v.host, "PUT", f"{ipath(pk)}?sort_key=a", body, hdrs)
    assert r.status == 204, r.body
    assert partition(k2v, pk) == {"a": [b64(data)]}


@pytest.mark.parametrize("value", ["abc", "-5", "1e3", "9" * 5000])
def test_streaming_with_a_bad_decoded_length_is_400(k2v, pk, value):
    """x-amz-decoded-content-length must be a plain number; one too long for ``int()`` (Python
    caps string conversion at 4300 digits) used to escape as a 500."""
    data = b"payload"
    body = f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n\r\n"
    hdrs = send_signed_headers(
        k2v,
        "PUT",
        ipath(pk),
        "sort_key=a",
        {"x-amz-decoded-content-length": value},
        STREAMING_UNSIGNED_TRAILER,
        time.time(),
    )
    r = raw_send(k2v.host, "PUT", f"{ipath(pk)}?sort_key=a", body, hdrs)
    assert_error(r, 400, "InvalidRequest")
    assert_partition_empty(k2v, pk)


# ---- §3 signed headers -------------------------------------------------------------------------


def test_unsigned_amz_header_rejected(k2v, pk):
    hdrs = botocore_headers(k2v, "PUT", ipath(pk), "sort_key=a", b"v")
    hdrs["x-amz-meta-extra"] = "1"
    r = raw_send(k2v.host, "PUT", f"{ipath(pk)}?sort_key=a", b"v", hdrs)
    assert_error(r, 400, "InvalidRequest")
    assert_partition_empty(k2v, pk)


def test_unsigned_content_type_and_other_headers_accepted(k2v, pk):
    hdrs = botocore_headers(k2v, "PUT", ipath(pk), "sort_key=a", b"v")
    hdrs.update({"Content-Type": "text/plain", "X-Custom": "1", "User-Agent": "test"})
    r = raw_send(k2v.host, "PUT", f"{ipath(pk)}?sort_key=a", b"v", hdrs)
    assert r.status == 204, r.body
    assert partition(k2v, pk) == {"a": [b64("v")]}


def test_host_must_be_signed(k2v, pk):
    r = send_signed(k2v, "PUT", ipath(pk), "sort_key=a", b"v", signed_names=["x-amz-content-sha256", "x-amz-date"])
    assert_error(r, 400, "InvalidRequest")
    assert_partition_empty(k2v, pk)


def test_amz_date_must_be_signed(k2v, pk):
    r = send_signed(k2v, "PUT", ipath(pk), "sort_key=a", b"v", signed_names=["host", "x-amz-content-sha256"])
    assert_error(r, 400, "InvalidRequest")
    assert_partition_empty(k2v, pk)


def test_signed_header_absent_from_request(k2v, pk):
    r = send_signed(k2v, "PUT", ipath(pk), "sort_key=a", b"v", headers={"x-extra": "1"}, drop=("x-extra",))
    assert_error(r, 400, "InvalidRequest")
    assert_partition_empty(k2v, pk)


def test_header_values_are_trimmed_but_inner_spaces_kept(k2v, pk):
    # Signed as "a  b" (two spaces); sent with outer spaces: must verify.
    hdrs = send_signed_headers(k2v, "PUT", ipath(pk), "sort_key=a", {"x-custom": "a  b"}, None, time.time())
    hdrs["x-custom"] = "  a  b  "
    r = raw_send(k2v.host, "PUT", f"{ipath(pk)}?sort_key=a", b"", hdrs)
    assert r.status == 204, r.body


def test_signature_covers_path_and_query(k2v, pk):
    hdrs = botocore_headers(k2v, "PUT", ipath(pk), "sort_key=a", b"v")
    r = raw_send(k2v.host, "PUT", f"{ipath(pk)}?sort_key=b", b"v", hdrs)
    assert_error(r, 403, "AccessDenied", message="Invalid signature")
    r = raw_send(k2v.host, "PUT", f"{ipath(pk)}x?sort_key=a", b"v", hdrs)
    assert_error(r, 403, "AccessDenied", message="Invalid signature")
    assert_partition_empty(k2v, pk)


@pytest.mark.parametrize("query", ["search&Search", "search&SEARCH=", "sort_key=a&Sort_Key=b"])
def test_query_keys_differing_only_by_case_are_duplicates(k2v, query):
    r = send_signed(k2v, "POST", f"/{BUCKET}", query, b"[]")
    assert_error(r, 400, "InvalidRequest")


@pytest.mark.parametrize("query", ["a%20b=1&search", "search&%28x%29=2", "search&a%3Ab="])
def test_query_key_must_be_a_header_name(k2v, query):
    r = send_signed(k2v, "POST", f"/{BUCKET}", query, b"[]")
    assert_error(r, 400, "InvalidRequest")


def test_encoded_path_is_signed_double_encoded(k2v):
    pk = new_pk("enc é/%")
    r = k2v.request("PUT", ipath(pk), "sort_key=a", b"v")  # botocore encodes the raw path once more
    assert r.status == 204, r.body
    r = send_signed(k2v, "GET", ipath(pk), "sort_key=a")
    assert r.status == 200, r.body


# ---- §3 presigned URLs -------------------------------------------------------------------------


def _presign_botocore(k2v, path: str, query: str, expires: int = 300) -> str:
    url = f"http://{k2v.host}{path}?{query}"
    req = AWSRequest(method="GET", url=url, headers={})
    SigV4QueryAuth(Credentials(k2v.access_key, k2v.secret_key), "k2v", k2v.region, expires=expires).add_auth(req)
    return req.url.split(k2v.host, 1)[1]


def test_presigned_read_item_botocore(k2v, pk):
    put(k2v, pk, "a", b"presigned")
    target = _presign_botocore(k2v, ipath(pk), "sort_key=a")
    r = raw_send(k2v.host, "GET", target)
    assert r.status == 200, r.body
    assert r.json() == [b64("presigned")]


def test_presigned_read_item_unsigned_payload(k2v, pk):
    put(k2v, pk, "a", b"presigned")
    signer = Signer(k2v.access_key, k2v.secret_key, k2v.region)
    target = signer.presign_url("GET", ipath(pk), "sort_key=a", k2v.host, expires=60)
    r = raw_send(k2v.host, "GET", target, headers={"Accept": "application/octet-stream"})
    assert r.status == 200, r.body
    assert r.body == b"presigned"


def test_presigned_insert_item_unsigned_payload(k2v, pk):
    signer = Signer(k2v.access_key, k2v.secret_key, k2v.region)
    target = signer.presign_url("PUT", ipath(pk), "sort_key=a", k2v.host, expires=60)
    r = raw_send(k2v.host, "PUT", target, b"via presign")
    assert r.status == 204, r.body
    assert partition(k2v, pk) == {"a": [b64("via presign")]}


def test_expired_presigned_url(k2v, pk, shifted_botocore):
    put(k2v, pk, "a", b"v")
    shifted_botocore(-3600)
    target = _presign_botocore(k2v, ipath(pk), "sort_key=a", expires=60)
    r = raw_send(k2v.host, "GET", target)
    assert_error(r, 403, "AccessDenied")
    signer = Signer(k2v.access_key, k2v.secret_key, k2v.region)
    target = signer.presign_url("GET", ipath(pk), "sort_key=a", k2v.host, expires=10, now=time.time() - 60)
    assert_error(raw_send(k2v.host, "GET", target), 403, "AccessDenied")


def test_old_presigned_url_within_expiry_accepted(k2v, pk, shifted_botocore):
    # X-Amz-Expires replaces the 15-minute skew rule for presigned URLs.
    put(k2v, pk, "a", b"v")
    shifted_botocore(-3600)
    target = _presign_botocore(k2v, ipath(pk), "sort_key=a", expires=7200)
    r = raw_send(k2v.host, "GET", target)
    assert r.status == 200, r.body


def test_presigned_expires_over_a_week(k2v, pk):
    put(k2v, pk, "a", b"v")
    target = _presign_botocore(k2v, ipath(pk), "sort_key=a", expires=7 * 86400 + 1)
    assert_error(raw_send(k2v.host, "GET", target), 400, "InvalidRequest")


def test_presigned_bad_signature(k2v, pk):
    put(k2v, pk, "a", b"v")
    target = _presign_botocore(k2v, ipath(pk), "sort_key=a")
    target = target[:-1] + ("0" if target[-1] != "0" else "1")
    assert_error(raw_send(k2v.host, "GET", target), 403, "AccessDenied")


# ---- §2 bucket resolution ----------------------------------------------------------------------


def test_bucket_by_hex_id(node, k2v, pk):
    put(k2v, pk, "a", b"by-alias")
    bucket_id = node.admin("bucket.info", {"name": BUCKET})["id"]
    assert len(bucket_id) == 64
    r = k2v.request("GET", f"/{bucket_id}/{pk}", "sort_key=a")
    assert r.status == 200, r.body
    assert r.json() == [b64("by-alias")]
    unknown = "0" * 64
    assert_error(k2v.request("GET", f"/{unknown}/{pk}", "sort_key=a"), 404, "NoSuchBucket")


def test_key_local_alias(node, k2v, pk):
    owner = _key(node, "local-owner")
    alias = f"mine-{uuid.uuid4().hex[:8]}"
    node.admin("bucket.create", {"name": alias, "local_key": owner.access_key})
    put(owner, pk, "a", b"local", bucket=alias)
    r = owner.request("GET", f"/{alias}/{pk}", "sort_key=a")
    assert r.status == 200, r.body
    assert r.json() == [b64("local")]
    # Another key does not see the local alias.
    assert_error(k2v.request("GET", f"/{alias}/{pk}", "sort_key=a"), 404, "NoSuchBucket")


def test_local_alias_shadows_global_alias(node, k2v, pk):
    owner = _key(node, "shadow-owner", read=True, write=True)
    other = f"other-{uuid.uuid4().hex[:8]}"
    other_id = node.admin("bucket.create", {"name": other, "local_key": owner.access_key})["id"]
    node.admin("bucket.alias", {"bucket": other_id, "alias": BUCKET, "local_key": owner.access_key})
    put(owner, pk, "a", b"in-local", bucket=BUCKET)
    # The write went to the key's local bucket, not the global test-bucket.
    assert_partition_empty(k2v, pk)
    r = owner.request("GET", f"/{other}/{pk}", "sort_key=a")
    assert r.json() == [b64("in-local")]


# ---- bodies are taken as sent ------------------------------------------------------------------


def test_content_encoding_is_not_interpreted(k2v, pk):
    raw = gzip.compress(b"compressed?")
    r = k2v.request("PUT", ipath(pk), "sort_key=a", raw, headers={"Content-Encoding": "gzip"})
    assert r.status == 204, r.body
    assert partition(k2v, pk) == {"a": [b64(raw)]}


def test_unknown_content_encoding_is_not_interpreted(k2v, pk):
    r = k2v.request("PUT", ipath(pk), "sort_key=a", b"plain", headers={"Content-Encoding": "bogus"})
    assert r.status == 204, r.body
    assert partition(k2v, pk) == {"a": [b64("plain")]}


def test_signature_helpers_agree_with_botocore(k2v):
    # Sanity check of the hand-built signer used in this module: same signature as botocore.
    req = AWSRequest(method="GET", url=f"http://{k2v.host}/{BUCKET}/p?sort_key=a", headers={})
    req.headers["X-Amz-Content-SHA256"] = hashlib.sha256(b"").hexdigest()
    SigV4Auth(Credentials(k2v.access_key, k2v.secret_key), "k2v", k2v.region).add_auth(req)
    amz_date = req.headers["X-Amz-Date"]
    now = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC).timestamp()
    ours = send_signed_headers(k2v, "GET", f"/{BUCKET}/p", "sort_key=a", {}, None, now)
    theirs = req.headers["Authorization"].rpartition("Signature=")[2]
    assert hmac.compare_digest(ours["Authorization"].rpartition("Signature=")[2], theirs)
    assert q("a b") == "a%20b"
