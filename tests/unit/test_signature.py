"""SigV4: AWS's published vectors, our signer, botocore's signer, and every rejection path.

Chunked bodies are built here from the AWS streaming spec with hashlib/hmac directly, so the
verifier is not only checked against the primitives it is built from.
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import hmac
import io
import zlib
from urllib.parse import quote_from_bytes, urlsplit

import pytest
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum, Sha1Checksum, Sha256Checksum
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

import garagekv.util.signing as sv
from garagekv.api.signature import Headers, Verified, parse_request, verify_request
from garagekv.util.errors import (
    AccessDenied,
    AuthorizationHeaderMalformed,
    BadRequest,
    InvalidDigest,
    RequestTimeTooSkewed,
)
from garagekv.util.signing import (
    EMPTY_SHA256,
    STREAMING_PAYLOAD,
    STREAMING_UNSIGNED_TRAILER,
    UNSIGNED_PAYLOAD,
    Signer,
    SigningKeyCache,
    canonical_query,
    canonical_request,
    derive_signing_key,
    encode_query,
    parse_query,
    sign,
    string_to_sign,
    uri_encode,
)

AK = "GK31c2f218a2e44f485b94239e"
SK = "b892c0665f0ada8a4755dae98baa3b133590e11dae3bcc1f9d769d67f16c3835"
REGION, HOST = "garage", "127.0.0.1:3904"
T0 = calendar.timegm((2024, 3, 1, 12, 0, 0))
SIGNER = Signer(AK, SK, REGION)
KEYS = {AK: SK}


def utc(*args: int) -> float:
    return float(calendar.timegm(args))


def signed_headers(
    method: str,
    path: str,
    query: object = None,
    body: bytes = b"",
    now: float = T0,
    extra: dict[str, str] | None = None,
    **kw: object,
) -> dict[str, str]:
    headers = {"Host": HOST, **(extra or {})}
    return {**headers, **SIGNER.sign_headers(method, path, query, headers, body, now=now, **kw)}


def verify(method: str, path: str, query: str, headers: object, now: float | None = T0, **kw: object) -> Verified:
    return verify_request(method, path, query, headers, REGION, KEYS.get, now=now, **kw)


def with_auth(headers: dict[str, str], **changes: str) -> dict[str, str]:
    """Rewrite parts of the Authorization header (Credential, SignedHeaders, Signature)."""
    kind, _, rest = headers["Authorization"].partition(" ")
    parts = dict(p.strip().split("=", 1) for p in rest.split(","))
    parts.update(changes)
    return {**headers, "Authorization": kind + " " + ", ".join(f"{k}={v}" for k, v in parts.items())}


# --------------------------------------------------------------------------------------------------
# AWS published vectors

IAM_SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
S3_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
S3_AK = "AKIAIOSFODNN7EXAMPLE"
S3_NOW = utc(2013, 5, 24, 0, 0, 0)


def test_signing_key_vectors() -> None:
    # "Deriving the signing key" example and the IAM ListUsers example.
    assert (
        derive_signing_key(IAM_SECRET, "20120215", "us-east-1", "iam").hex()
        == "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
    )
    assert (
        derive_signing_key(IAM_SECRET, "20150830", "us-east-1", "iam").hex()
        == "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
    )


def test_iam_list_users_vector() -> None:
    creq = canonical_request(
        "GET",
        "/",
        canonical_query(parse_query("Action=ListUsers&Version=2010-05-08")),
        [
            ("content-type", "application/x-www-form-urlencoded; charset=utf-8"),
            ("host", "iam.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
        ],
        EMPTY_SHA256,
    )
    assert (
        hashlib.sha256(creq.encode()).hexdigest() == "f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59"
    )
    sts = string_to_sign("20150830T123600Z", "20150830/us-east-1/iam/aws4_request", creq)
    assert sts == (
        "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/iam/aws4_request\n"
        "f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59"
    )
    key = derive_signing_key(IAM_SECRET, "20150830", "us-east-1", "iam")
    assert sign(key, sts) == "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"


@pytest.mark.parametrize(
    ("method", "query", "expected"),
    [
        ("GET", "", "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),  # get-vanilla
        (
            "GET",
            "Param2=value2&Param1=value1",  # get-vanilla-query-order-key-case
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
        ),
        ("POST", "", "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"),  # post-vanilla
    ],
)
def test_sigv4_test_suite_service_vectors(method: str, query: str, expected: str) -> None:
    creq = canonical_request(
        method,
        uri_encode("/", False),
        canonical_query(parse_query(query)),
        [("host", "example.amazonaws.com"), ("x-amz-date", "20150830T123600Z")],
        EMPTY_SHA256,
    )
    sts = string_to_sign("20150830T123600Z", "20150830/us-east-1/service/aws4_request", creq)
    assert sign(derive_signing_key(IAM_SECRET, "20150830", "us-east-1", "service"), sts) == expected


def test_s3_get_object_vector_through_the_verifier() -> None:
    headers = {
        "Host": "examplebucket.s3.amazonaws.com",
        "Range": "bytes=0-9",
        "x-amz-content-sha256": EMPTY_SHA256,
        "x-amz-date": "20130524T000000Z",
        "Authorization": "AWS4-HMAC-SHA256 "
        "Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,"
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
    }
    v = verify_request("GET", "/test.txt", "", headers, "us-east-1", {S3_AK: S3_SECRET}.get, now=S3_NOW, service="s3")
    assert v.access_key_id == S3_AK and not v.presigned and v.check_body(b"") == b""


S3_PRESIGNED_QUERY = (
    "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2F"
    "aws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
    "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
)


def test_s3_presigned_vector_through_the_verifier_and_our_presigner() -> None:
    host = {"host": "examplebucket.s3.amazonaws.com"}
    v = verify_request(
        "GET",
        "/test.txt",
        S3_PRESIGNED_QUERY,
        host,
        "us-east-1",
        {S3_AK: S3_SECRET}.get,
        now=S3_NOW + 3600,
        service="s3",
    )
    assert v.presigned and v.content_sha256 == UNSIGNED_PAYLOAD
    url = Signer(S3_AK, S3_SECRET, "us-east-1", "s3").presign_url(
        "GET", "/test.txt", None, host["host"], expires=86400, now=S3_NOW
    )
    assert url == "/test.txt?" + S3_PRESIGNED_QUERY


S3_CHUNKED_HEADERS = {
    "Host": "s3.amazonaws.com",
    "x-amz-date": "20130524T000000Z",
    "x-amz-storage-class": "REDUCED_REDUNDANCY",
    "x-amz-content-sha256": STREAMING_PAYLOAD,
    "Content-Encoding": "aws-chunked",
    "x-amz-decoded-content-length": "66560",
    "Content-Length": "66824",
    "Authorization": "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
    "SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
    "x-amz-decoded-content-length;x-amz-storage-class,"
    "Signature=4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9",
}
S3_CHUNK_SIGS = (
    "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
    "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
    "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
)


def s3_chunked_body(data: bytes = b"a" * 66560) -> bytes:
    return (
        f"10000;chunk-signature={S3_CHUNK_SIGS[0]}\r\n".encode()
        + data[:65536]
        + f"\r\n400;chunk-signature={S3_CHUNK_SIGS[1]}\r\n".encode()
        + data[65536:]
        + f"\r\n0;chunk-signature={S3_CHUNK_SIGS[2]}\r\n\r\n".encode()
    )


def test_s3_chunked_upload_vector() -> None:
    v = verify_request(
        "PUT",
        "/examplebucket/chunkObject.txt",
        "",
        S3_CHUNKED_HEADERS,
        "us-east-1",
        {S3_AK: S3_SECRET}.get,
        now=S3_NOW,
        service="s3",
    )
    assert v.streaming
    body = s3_chunked_body()
    assert len(body) == 66824
    assert v.check_body(body) == b"a" * 66560
    with pytest.raises(AccessDenied):
        v.check_body(s3_chunked_body(b"a" * 66559 + b"b"))


# --------------------------------------------------------------------------------------------------
# Primitives


def test_uri_encode() -> None:
    assert uri_encode("AZaz09-_.~", True) == "AZaz09-_.~"
    assert uri_encode("/a b/c", False) == "/a%20b/c"
    assert uri_encode("/a b/c", True) == "%2Fa%20b%2Fc"
    assert uri_encode("é+*%", True) == "%C3%A9%2B%2A%25"
    assert uri_encode("/b/my%20pk", False) == "/b/my%2520pk"  # the double encoding of non-S3 services
    assert uri_encode("/b/\udcff", False) == "/b/%FF"  # undecodable byte kept (surrogateescape)


def test_query_parse_encode_and_canonical_form() -> None:
    assert parse_query("search") == [("search", "")]
    assert parse_query("a=&b=x+y%2B&&c=%2F") == [("a", ""), ("b", "x y+"), ("c", "/")]
    pairs = [("sort_key", "a b/é"), ("search", "")]
    assert parse_query(encode_query(pairs)) == pairs
    assert canonical_query(pairs) == "search=&sort_key=a%20b%2F%C3%A9"
    assert canonical_query(parse_query("search")) == canonical_query(parse_query("search="))


def test_canonical_request_keeps_inner_spaces() -> None:
    creq = canonical_request("GET", "/", "", [("host", "h"), ("x-a", "  a   b  ")], EMPTY_SHA256)
    assert creq == f"GET\n/\n\nhost:h\nx-a:a   b\n\nhost;x-a\n{EMPTY_SHA256}"


def test_signer_requires_host_and_bounds_presign_expiry() -> None:
    with pytest.raises(ValueError):
        SIGNER.sign_headers("GET", "/b", None, {}, None, now=T0)
    with pytest.raises(ValueError):
        SIGNER.presign_url("GET", "/b", None, HOST, expires=604801, now=T0)


# --------------------------------------------------------------------------------------------------
# Our signer round-tripping


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/bucket", None),
        ("/bucket", [("search", "")]),
        ("/bucket/", "search"),
        ("/bucket/my%20pk", [("sort_key", "a b")]),
        ("/bucket/caf%C3%A9/x%2Fy%25", [("sort_key", "é/%+&=")]),
        ("/bucket//a/./../b", [("causality_token", "abc"), ("timeout", "")]),
        ("/bucket/pk", "sort_key=a+b&prefix=%2F"),
    ],
)
def test_signer_round_trip(path: str, query: object) -> None:
    headers = signed_headers("GET", path, query)
    raw = query if isinstance(query, str) else encode_query(query or [])
    v = verify("GET", path, raw, headers)
    assert v.access_key_id == AK and not v.presigned and v.content_sha256 == EMPTY_SHA256


def test_plus_is_a_space_and_bare_keyword_equals_empty_value() -> None:
    headers = signed_headers("GET", "/b/pk", [("sort_key", "a b")])
    verify("GET", "/b/pk", "sort_key=a+b", headers)
    verify("GET", "/b/pk", "sort_key=a%20b", headers)
    headers = signed_headers("POST", "/b", [("search", "")])
    verify("POST", "/b", "search", headers)
    verify("POST", "/b", "search=", headers)


def test_raw_path_with_query_is_split() -> None:
    headers = signed_headers("GET", "/b/pk", [("sort_key", "x")])
    verify("GET", "/b/pk?sort_key=x", "", headers)


def test_body_digest_checked() -> None:
    body = b'{"k": 1}'
    headers = signed_headers("PUT", "/b/pk", [("sort_key", "s")], body=body)
    v = verify("PUT", "/b/pk", "sort_key=s", headers)
    assert v.check_body(body) == body
    with pytest.raises(InvalidDigest):
        v.check_body(body + b" ")
    headers = signed_headers("PUT", "/b/pk", [("sort_key", "s")], unsigned_payload=True)
    v = verify("PUT", "/b/pk", "sort_key=s", headers)
    assert v.content_sha256 == UNSIGNED_PAYLOAD and v.check_body(b"anything") == b"anything"


def test_uppercase_hex_content_sha256_accepted() -> None:
    body = b"x"
    digest = hashlib.sha256(body).hexdigest().upper()
    headers = signed_headers("PUT", "/b/pk", None, content_sha256=digest)
    assert verify("PUT", "/b/pk", "", headers).check_body(body) == body


def test_header_values_are_trimmed_but_inner_spaces_kept() -> None:
    headers = signed_headers("GET", "/b", None, extra={"X-Amz-Meta-A": "a  b", "Content-Type": "text/x"})
    verify("GET", "/b", "", {**headers, "X-Amz-Meta-A": "  a  b \t"})
    with pytest.raises(AccessDenied, match="Invalid signature"):
        verify("GET", "/b", "", {**headers, "X-Amz-Meta-A": "a b"})


def test_unsigned_headers_other_than_x_amz_are_ignored() -> None:
    headers = signed_headers("GET", "/b", None)
    verify("GET", "/b", "", {**headers, "Content-Type": "application/json", "Accept": "*/*"})


def test_ci_multidict_headers_and_repeated_header_values() -> None:
    headers = CIMultiDict(signed_headers("GET", "/b", None, extra={"x-amz-meta-a": "1,2"}))
    del headers["x-amz-meta-a"]
    headers.add("X-AMZ-META-A", "1")
    headers.add("x-amz-meta-a", " 2 ")
    verify("GET", "/b", "", headers)  # repeated values are joined with "," as AWS does
    verify("GET", "/b", "", Headers(headers))


def test_presigned_round_trip_and_payload() -> None:
    url = SIGNER.presign_url("GET", "/b/my%20pk", [("sort_key", "é x")], HOST, expires=60, now=T0)
    path, _, query = url.partition("?")
    v = verify("GET", path, query, {"Host": HOST}, now=T0 + 30)
    assert v.presigned and v.content_sha256 == UNSIGNED_PAYLOAD
    assert v.check_body(b"whatever") == b"whatever"


def test_presigned_with_signed_extra_header() -> None:
    url = SIGNER.presign_url(
        "PUT", "/b/pk", "sort_key=a", HOST, expires=60, now=T0, headers={"Content-Type": "text/plain"}
    )
    path, _, query = url.partition("?")
    verify("PUT", path, query, {"Host": HOST, "content-type": "text/plain"})
    with pytest.raises(AccessDenied, match="Invalid signature"):
        verify("PUT", path, query, {"Host": HOST, "content-type": "text/html"})


def test_presigned_is_checked_against_expires_not_skew() -> None:
    url = SIGNER.presign_url("GET", "/b", None, HOST, expires=7200, now=T0)
    path, _, query = url.partition("?")
    verify("GET", path, query, {"Host": HOST}, now=T0 + 7000)  # well past 15 minutes
    with pytest.raises(AccessDenied, match="expired") as e:
        verify("GET", path, query, {"Host": HOST}, now=T0 + 7201)
    assert type(e.value) is AccessDenied
    with pytest.raises(AccessDenied, match="not valid yet"):
        verify("GET", path, query, {"Host": HOST}, now=T0 - 3600)


def test_presigned_signature_param_is_excluded_and_query_is_signed() -> None:
    url = SIGNER.presign_url("GET", "/b/pk", [("sort_key", "a")], HOST, expires=60, now=T0)
    path, _, query = url.partition("?")
    with pytest.raises(AccessDenied, match="Invalid signature"):
        verify("GET", path, query.replace("sort_key=a", "sort_key=b"), {"Host": HOST})
    with pytest.raises(AccessDenied, match="Invalid signature"):
        verify("GET", path, query + "&extra=1", {"Host": HOST})


def _presigned_query(**changes: str | None) -> str:
    url = SIGNER.presign_url("GET", "/b", None, HOST, expires=60, now=T0)
    pairs = dict(parse_query(url.partition("?")[2]))
    for k, v in changes.items():
        if v is None:
            pairs.pop(k)
        else:
            pairs[k] = v
    return encode_query(list(pairs.items()))


@pytest.mark.parametrize(
    "changes",
    [
        {"X-Amz-Algorithm": "AWS4-HMAC-SHA1"},
        {"X-Amz-Credential": None},
        {"X-Amz-Date": None},
        {"X-Amz-Date": "2024-03-01T12:00:00Z"},
        {"X-Amz-Expires": None},
        {"X-Amz-Expires": "604801"},
        {"X-Amz-Expires": "-1"},
        {"X-Amz-Expires": "soon"},
        {"X-Amz-SignedHeaders": None},
        {"X-Amz-SignedHeaders": "content-type"},
        {"X-Amz-Signature": None},
    ],
)
def test_presigned_malformed_is_400(changes: dict[str, str | None]) -> None:
    with pytest.raises(BadRequest) as e:
        verify("GET", "/b", _presigned_query(**changes), {"Host": HOST})
    assert type(e.value) is BadRequest


def test_presigned_max_expiry_accepted_and_bad_scope() -> None:
    url = SIGNER.presign_url("GET", "/b", None, HOST, expires=604800, now=T0)
    verify("GET", "/b", url.partition("?")[2], {"Host": HOST}, now=T0 + 604000)
    bad = _presigned_query(**{"X-Amz-Credential": f"{AK}/20240301/us-east-1/k2v/aws4_request"})
    with pytest.raises(AuthorizationHeaderMalformed):
        verify("GET", "/b", bad, {"Host": HOST})


def test_presigned_with_bad_signature_or_unknown_key() -> None:
    with pytest.raises(AccessDenied, match="Invalid signature"):
        verify("GET", "/b", _presigned_query(**{"X-Amz-Signature": "0" * 64}), {"Host": HOST})
    other = Signer("GKunknown", SK, REGION).presign_url("GET", "/b", None, HOST, now=T0)
    with pytest.raises(AccessDenied, match="No such key: GKunknown"):
        verify("GET", "/b", other.partition("?")[2], {"Host": HOST})


def test_two_phase_api_for_async_key_lookup() -> None:
    headers = signed_headers("GET", "/b", None)
    pending = parse_request("GET", "/b", "", headers, REGION, now=T0)
    assert pending.access_key_id == AK
    assert pending.finish(SK).access_key_id == AK
    with pytest.raises(AccessDenied, match="No such key"):
        pending.finish(None)
    with pytest.raises(AccessDenied, match="Invalid signature"):
        pending.finish("another secret")


@settings(max_examples=60, deadline=None)
@given(
    segments=st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=3),
    pairs=st.lists(
        st.tuples(st.sampled_from(["sort_key", "prefix", "start", "end", "search"]), st.text(max_size=10)),
        max_size=4,
        unique_by=lambda kv: kv[0],
    ),
    body=st.binary(max_size=64),
)
def test_round_trip_property(segments: list[str], pairs: list[tuple[str, str]], body: bytes) -> None:
    path = "/bucket/" + "/".join(uri_encode(s, True) for s in segments)
    headers = signed_headers("POST", path, pairs, body=body)
    assert verify("POST", path, encode_query(pairs), headers).check_body(body) == body


# --------------------------------------------------------------------------------------------------
# botocore's signer (a third-party implementation)

BOTO_CREDS = Credentials(AK, SK)
BOTO_CASES = [
    ("/b/my%20pk", {"sort_key": "a b"}),
    ("/b/caf%C3%A9%20%E2%82%AC/x%2Fy%25z", {"sort_key": "é/%+&=~ x"}),
    ("/b/%F0%9F%98%80", {"causality_token": "tok", "timeout": "10"}),
    ("/b", {"search": ""}),
    ("/b/", {"prefix": "", "limit": "10", "reverse": "true"}),
    ("/b", {}),
]


def run_botocore(request: AWSRequest, **kw: object) -> Verified:
    prepared = request.prepare()
    url = urlsplit(prepared.url)
    headers = CIMultiDict(prepared.headers.items())
    headers.setdefault("Host", url.netloc)  # what the HTTP client sends; botocore signs it from the URL
    return verify_request(prepared.method, url.path, url.query, headers, REGION, KEYS.get, now=None, **kw)


@pytest.mark.parametrize(("path", "params"), BOTO_CASES)
def test_botocore_header_signed(path: str, params: dict[str, str]) -> None:
    body = b'{"a": 1}'
    req = AWSRequest(
        method="POST",
        url=f"http://{HOST}{path}",
        params=params,
        data=body,
        headers={"X-Amz-Content-SHA256": hashlib.sha256(body).hexdigest(), "Content-Type": "application/json"},
    )
    SigV4Auth(BOTO_CREDS, "k2v", REGION).add_auth(req)
    v = run_botocore(req)
    assert v.access_key_id == AK and v.check_body(body) == body


@pytest.mark.parametrize(("path", "params"), BOTO_CASES)
def test_botocore_header_signed_unsigned_payload_raw_query(path: str, params: dict[str, str]) -> None:
    req = AWSRequest(
        method="GET",
        url=f"http://{HOST}{path}?{encode_query(list(params.items()))}",
        headers={"X-Amz-Content-SHA256": UNSIGNED_PAYLOAD},
    )
    SigV4Auth(BOTO_CREDS, "k2v", REGION).add_auth(req)
    assert run_botocore(req).content_sha256 == UNSIGNED_PAYLOAD


@pytest.mark.parametrize(("path", "params"), BOTO_CASES)
def test_botocore_presigned(path: str, params: dict[str, str]) -> None:
    req = AWSRequest(method="GET", url=f"http://{HOST}{path}", params=params)
    SigV4QueryAuth(BOTO_CREDS, "k2v", REGION, expires=300).add_auth(req)
    v = run_botocore(req)
    # botocore signs the empty-body hash (not UNSIGNED-PAYLOAD) for non-S3 presigned URLs.
    assert v.presigned and v.content_sha256 == EMPTY_SHA256
    assert v.check_body(b"") == b""
    with pytest.raises(InvalidDigest):
        v.check_body(b"smuggled")


def test_botocore_presigned_with_content_sha256_header() -> None:
    req = AWSRequest(
        method="GET",
        url=f"http://{HOST}/b/pk",
        params={"sort_key": "s"},
        headers={"X-Amz-Content-SHA256": UNSIGNED_PAYLOAD},
    )
    SigV4QueryAuth(BOTO_CREDS, "k2v", REGION, expires=300).add_auth(req)
    assert run_botocore(req).content_sha256 == UNSIGNED_PAYLOAD


def test_botocore_collapses_inner_spaces_so_such_headers_do_not_verify() -> None:
    # Garage (and so garagekv) does not collapse runs of spaces; botocore does. Documented divergence.
    req = AWSRequest(
        method="GET", url=f"http://{HOST}/b", headers={"X-Amz-Content-SHA256": UNSIGNED_PAYLOAD, "X-Amz-Meta-A": "a  b"}
    )
    SigV4Auth(BOTO_CREDS, "k2v", REGION).add_auth(req)
    with pytest.raises(AccessDenied, match="Invalid signature"):
        run_botocore(req)


@pytest.mark.parametrize(
    ("cls", "name"),
    [
        (Crc32Checksum, "x-amz-checksum-crc32"),
        (Sha1Checksum, "x-amz-checksum-sha1"),
        (Sha256Checksum, "x-amz-checksum-sha256"),
        (None, None),
    ],
)
def test_botocore_aws_chunked_unsigned_trailer(cls: type | None, name: str | None) -> None:
    data = bytes(range(256)) * 50
    body = AwsChunkedWrapper(io.BytesIO(data), checksum_cls=cls, checksum_name=name or "x", chunk_size=3000).read()
    headers = {
        "X-Amz-Content-SHA256": STREAMING_UNSIGNED_TRAILER,
        "Content-Encoding": "aws-chunked",
        "X-Amz-Decoded-Content-Length": str(len(data)),
    }
    if name:
        headers["X-Amz-Trailer"] = name
    req = AWSRequest(method="PUT", url=f"http://{HOST}/b/pk", params={"sort_key": "s"}, data=body, headers=headers)
    SigV4Auth(BOTO_CREDS, "k2v", REGION).add_auth(req)
    v = run_botocore(req)
    assert v.streaming and v.check_body(body) == data
    if name:
        tampered = body.replace(b"\x00\x01\x02", b"\x00\x01\x03", 1)
        with pytest.raises(InvalidDigest):
            v.check_body(tampered)


def test_botocore_signed_streaming_seed() -> None:
    data = b"k2v " * 5000
    req = AWSRequest(
        method="PUT",
        url=f"http://{HOST}/b/pk",
        params={"sort_key": "s"},
        headers={
            "X-Amz-Content-SHA256": STREAMING_PAYLOAD,
            "Content-Encoding": "aws-chunked",
            "X-Amz-Decoded-Content-Length": str(len(data)),
        },
    )
    SigV4Auth(BOTO_CREDS, "k2v", REGION).add_auth(req)
    seed = req.headers["Authorization"].rsplit("Signature=", 1)[1]
    amz_date = req.headers["X-Amz-Date"]
    body = build_signed_chunks([data[:8192], data[8192:16384], data[16384:]], seed, amz_date)
    assert run_botocore(req).check_body(body) == data


# --------------------------------------------------------------------------------------------------
# aws-chunked bodies built here, from the spec


def spec_chunk_signature(key: bytes, amz_date: str, scope: str, prev: str, chunk: bytes) -> str:
    sts = "\n".join(
        [
            "AWS4-HMAC-SHA256-PAYLOAD",
            amz_date,
            scope,
            prev,
            hashlib.sha256(b"").hexdigest(),
            hashlib.sha256(chunk).hexdigest(),
        ]
    )
    return hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()


def spec_signing_key(date: str) -> bytes:
    key = b"AWS4" + SK.encode()
    for part in (date, REGION, "k2v", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def build_signed_chunks(chunks: list[bytes], seed: str, amz_date: str) -> bytes:
    key, scope = spec_signing_key(amz_date[:8]), f"{amz_date[:8]}/{REGION}/k2v/aws4_request"
    out, prev = b"", seed
    for chunk in [*chunks, b""]:
        prev = spec_chunk_signature(key, amz_date, scope, prev, chunk)
        out += f"{len(chunk):x};chunk-signature={prev}\r\n".encode() + chunk + b"\r\n"
    return out


def streaming_request(
    data: bytes, mode: str = STREAMING_PAYLOAD, extra: dict[str, str] | None = None
) -> tuple[Verified, str]:
    extra = {"Content-Encoding": "aws-chunked", "X-Amz-Decoded-Content-Length": str(len(data)), **(extra or {})}
    headers = signed_headers("PUT", "/b/pk", [("sort_key", "s")], extra=extra, content_sha256=mode)
    seed = headers["Authorization"].rsplit("Signature=", 1)[1]
    return verify("PUT", "/b/pk", "sort_key=s", headers), seed


DATA = bytes(range(256)) * 100
PIECES = [DATA[:10000], DATA[10000:20000], DATA[20000:]]


def test_signed_chunks_decode() -> None:
    v, seed = streaming_request(DATA)
    assert v.check_body(build_signed_chunks(PIECES, seed, "20240301T120000Z")) == DATA


def test_signed_chunks_empty_payload() -> None:
    v, seed = streaming_request(b"")
    assert v.check_body(build_signed_chunks([], seed, "20240301T120000Z")) == b""


def test_signed_chunks_tampered_or_reordered_or_wrong_seed() -> None:
    v, seed = streaming_request(DATA)
    good = build_signed_chunks(PIECES, seed, "20240301T120000Z")
    tampered = good.replace(DATA[15000:15010], bytes(10), 1)
    with pytest.raises(AccessDenied, match="chunk signature"):
        v.check_body(tampered)
    frames = good.split(b"\r\n")  # header, data, header, data, ...: swap the first two chunks
    swapped = b"\r\n".join([*frames[2:4], *frames[0:2], *frames[4:]])
    assert len(swapped) == len(good)
    with pytest.raises(AccessDenied):
        v.check_body(swapped)
    with pytest.raises(AccessDenied):
        v.check_body(build_signed_chunks(PIECES, "0" * 64, "20240301T120000Z"))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b[:-2],  # no final CRLF
        lambda b: b + b"x",  # garbage after the final chunk
        lambda b: b[: b.rindex(b"0;chunk-signature")],  # final 0-size chunk missing
        lambda b: b.replace(b";chunk-signature=", b";chunk-sig=", 1),
        lambda b: b.replace(b";chunk-signature=", b"", 1),
        lambda b: b"zz" + b[b.index(b";") :],  # bad size
        lambda b: b[:5000],  # truncated
        lambda b: b"",
    ],
)
def test_signed_chunks_malformed_is_400(mutate: object) -> None:
    v, seed = streaming_request(DATA)
    body = mutate(build_signed_chunks(PIECES, seed, "20240301T120000Z"))  # type: ignore[operator]
    with pytest.raises(BadRequest) as e:
        v.check_body(body)
    assert type(e.value) is BadRequest


def test_signed_chunks_decoded_length_mismatch() -> None:
    headers_v, seed = streaming_request(DATA + b"x")
    with pytest.raises(BadRequest, match="decoded-content-length"):
        headers_v.check_body(build_signed_chunks(PIECES, seed, "20240301T120000Z"))


def unsigned_chunks(chunks: list[bytes], trailers: list[tuple[str, str]]) -> bytes:
    out = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks) + b"0\r\n"
    return out + b"".join(f"{k}:{v}\r\n".encode() for k, v in trailers) + b"\r\n"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.mark.parametrize(
    ("name", "digest"),
    [
        ("x-amz-checksum-crc32", b64(zlib.crc32(DATA).to_bytes(4, "big"))),
        ("x-amz-checksum-sha1", b64(hashlib.sha1(DATA).digest())),
        ("x-amz-checksum-sha256", b64(hashlib.sha256(DATA).digest())),
        ("x-amz-checksum-crc32c", "AAAAAA=="),  # not verifiable with the stdlib: accepted unchecked
    ],
)
def test_unsigned_trailer_checksums(name: str, digest: str) -> None:
    v, _ = streaming_request(DATA, STREAMING_UNSIGNED_TRAILER, {"X-Amz-Trailer": name})
    assert v.check_body(unsigned_chunks(PIECES, [(name, digest)])) == DATA
    if name != "x-amz-checksum-crc32c":
        other = hashlib.sha256(b"no").digest()[: len(base64.b64decode(digest))]
        wrong = unsigned_chunks(PIECES, [(name, b64(other))])
        with pytest.raises(InvalidDigest):
            v.check_body(wrong)
        with pytest.raises(InvalidDigest):
            v.check_body(unsigned_chunks(PIECES, [(name, "not base64!")]))


def test_unsigned_trailer_without_trailer_and_missing_declared_trailer() -> None:
    v, _ = streaming_request(DATA, STREAMING_UNSIGNED_TRAILER)
    assert v.check_body(unsigned_chunks(PIECES, [])) == DATA
    v, _ = streaming_request(DATA, STREAMING_UNSIGNED_TRAILER, {"X-Amz-Trailer": "x-amz-checksum-crc32"})
    with pytest.raises(BadRequest, match="declared"):
        v.check_body(unsigned_chunks(PIECES, []))


@pytest.mark.parametrize(
    "body",
    [
        b"5\r\nabc\r\n0\r\n\r\n",  # short chunk
        b"3\r\nabcX\r\n0\r\n\r\n",  # no CRLF after data
        b"3\r\nabc\r\n",  # no final chunk
        b"3\r\nabc\r\n0\r\nbad trailer\r\n\r\n",
        b"3\r\nabc\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n",  # no empty line after the trailers
        b"g\r\nabc\r\n0\r\n\r\n",
    ],
)
def test_unsigned_trailer_malformed_is_400(body: bytes) -> None:
    v, _ = streaming_request(b"abc", STREAMING_UNSIGNED_TRAILER)
    with pytest.raises(BadRequest) as e:
        v.check_body(body)
    assert type(e.value) is BadRequest


# --------------------------------------------------------------------------------------------------
# Rejections (header form)


def test_anonymous_request() -> None:
    with pytest.raises(AccessDenied) as e:
        verify("GET", "/b", "search", {"Host": HOST})
    assert str(e.value) == "Garage does not support anonymous access yet" and type(e.value) is AccessDenied


@pytest.mark.parametrize(
    "query", ["search&Search", "sort_key=a&sort_key=b", "SORT_KEY=a&sort_key=a", "a%20b=1", "=x", "%C3%A9=1", "a:b=1"]
)
def test_bad_query_keys_are_400_even_unsigned(query: str) -> None:
    with pytest.raises(BadRequest):
        verify("GET", "/b", query, {"Host": HOST})
    with pytest.raises(BadRequest):
        verify("GET", "/b", query, signed_headers("GET", "/b", query))


@pytest.mark.parametrize(
    "auth",
    [
        "Bearer abc",
        "AWS4-HMAC-SHA256",
        "AWS4-HMAC-SHA1 Credential=x, SignedHeaders=host, Signature=00",
        f"AWS4-HMAC-SHA256 SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={'0' * 64}",
        f"AWS4-HMAC-SHA256 Credential={AK}/20240301/garage/k2v/aws4_request, Signature={'0' * 64}",
        f"AWS4-HMAC-SHA256 Credential={AK}/20240301/garage/k2v/aws4_request, "
        "SignedHeaders=host;x-amz-content-sha256;x-amz-date",
    ],
)
def test_malformed_authorization_is_400(auth: str) -> None:
    headers = {**signed_headers("GET", "/b"), "Authorization": auth}
    with pytest.raises(BadRequest) as e:
        verify("GET", "/b", "", headers)
    assert type(e.value) is BadRequest


@pytest.mark.parametrize(
    "scope",
    [
        "20240301/us-east-1/k2v/aws4_request",
        "20240301/garage/s3/aws4_request",
        "20240302/garage/k2v/aws4_request",
        "20240301/garage/k2v/aws4",
        "",
        "20240301/garage/k2v/aws4_request/",
    ],
)
def test_wrong_scope(scope: str) -> None:
    headers = with_auth(signed_headers("GET", "/b"), Credential=f"{AK}/{scope}" if scope else AK)
    with pytest.raises(AuthorizationHeaderMalformed) as e:
        verify("GET", "/b", "", headers)
    assert e.value.message == (
        f"Authorization header malformed, unexpected scope: {scope} (expected 20240301/garage/k2v/aws4_request: "
        "region 'garage', service 'k2v', the date of X-Amz-Date)"
    )
    assert e.value.status == 400 and e.value.code == "AuthorizationHeaderMalformed"


def test_scope_is_checked_before_the_key() -> None:
    headers = with_auth(signed_headers("GET", "/b"), Credential="GKnobody/20240301/eu/k2v/aws4_request")
    with pytest.raises(AuthorizationHeaderMalformed):
        verify("GET", "/b", "", headers)


def test_x_amz_date_missing_or_unparsable() -> None:
    headers = signed_headers("GET", "/b")
    no_date = {k: v for k, v in headers.items() if k != "X-Amz-Date"}
    with pytest.raises(BadRequest, match="X-Amz-Date"):
        verify("GET", "/b", "", with_auth(no_date, SignedHeaders="host;x-amz-content-sha256"))
    with pytest.raises(BadRequest, match="X-Amz-Date"):  # a Date header does not replace it
        verify(
            "GET",
            "/b",
            "",
            {
                **with_auth(no_date, SignedHeaders="date;host;x-amz-content-sha256"),
                "Date": "Fri, 01 Mar 2024 12:00:00 GMT",
            },
        )
    for bad in ["2024-03-01T12:00:00Z", "20241301T120000Z", "20240301T120000", "20240301t120000z", ""]:
        with pytest.raises(BadRequest, match="Invalid date"):
            verify("GET", "/b", "", {**headers, "X-Amz-Date": bad})


@pytest.mark.parametrize("offset", [-16 * 60, 16 * 60, -2 * 86400, 400 * 86400])
def test_clock_skew(offset: int) -> None:
    headers = signed_headers("GET", "/b", now=T0 + offset)
    with pytest.raises(RequestTimeTooSkewed) as e:
        verify("GET", "/b", "", headers, now=T0)
    assert e.value.status == 403 and e.value.code == "RequestTimeTooSkewed"


@pytest.mark.parametrize("offset", [-14 * 60, 14 * 60, 0])
def test_clock_skew_within_tolerance(offset: int) -> None:
    verify("GET", "/b", "", signed_headers("GET", "/b", now=T0 + offset), now=T0)


def test_content_sha256_missing_or_invalid() -> None:
    headers = signed_headers("GET", "/b")
    missing = {k: v for k, v in headers.items() if k != "X-Amz-Content-Sha256"}
    with pytest.raises(BadRequest, match="(?i)x-amz-content-sha256"):
        verify("GET", "/b", "", with_auth(missing, SignedHeaders="host;x-amz-date"))
    for bad in ["abc", "0" * 63, "g" * 64, "unsigned-payload", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"]:
        with pytest.raises(BadRequest) as e:
            verify("GET", "/b", "", {**headers, "X-Amz-Content-Sha256": bad})
        assert e.value.message == "Invalid content sha256 hash" and type(e.value) is BadRequest


def test_host_and_every_x_amz_header_must_be_signed() -> None:
    headers = signed_headers("GET", "/b")
    with pytest.raises(BadRequest, match="Host"):
        verify("GET", "/b", "", with_auth(headers, SignedHeaders="x-amz-content-sha256;x-amz-date"))
    with pytest.raises(BadRequest, match="x-amz-date"):
        verify("GET", "/b", "", with_auth(headers, SignedHeaders="host;x-amz-content-sha256"))
    with pytest.raises(BadRequest, match="x-amz-meta-extra"):
        verify("GET", "/b", "", {**headers, "X-Amz-Meta-Extra": "1"})


def test_signed_header_absent_from_request() -> None:
    headers = signed_headers("GET", "/b", extra={"Content-Type": "text/plain"})
    del headers["Content-Type"]
    with pytest.raises(BadRequest, match="content-type") as e:
        verify("GET", "/b", "", headers)
    assert type(e.value) is BadRequest


def test_unknown_key() -> None:
    headers = Signer("GKdeadbeef", SK, REGION).sign_headers("GET", "/b", None, {"Host": HOST}, None, now=T0)
    with pytest.raises(AccessDenied) as e:
        verify("GET", "/b", "", {"Host": HOST, **headers})
    assert str(e.value) == "No such key: GKdeadbeef"


@pytest.mark.parametrize("signature", ["0" * 64, "zz" * 32, "abc", "", "0" * 66])
def test_bad_or_non_hex_signature(signature: str) -> None:
    with pytest.raises(AccessDenied) as e:
        verify("GET", "/b", "", with_auth(signed_headers("GET", "/b"), Signature=signature))
    assert str(e.value) == "Invalid signature" and type(e.value) is AccessDenied


@pytest.mark.parametrize(
    ("method", "path", "query", "header"),
    [
        ("PUT", "/b/pk", "sort_key=s", None),
        ("GET", "/b/pj", "sort_key=s", None),
        ("GET", "/b/pk", "sort_key=t", None),
        ("GET", "/b/pk", "sort_key=s&search", None),
        ("GET", "/b/pk", "sort_key=s", ("Host", "evil:3904")),
        ("GET", "/b/pk", "sort_key=s", ("X-Amz-Content-Sha256", UNSIGNED_PAYLOAD)),
    ],
)
def test_tampered_request(method: str, path: str, query: str, header: tuple[str, str] | None) -> None:
    headers = signed_headers("GET", "/b/pk", [("sort_key", "s")])
    if header:
        headers[header[0]] = header[1]
    with pytest.raises(AccessDenied, match="Invalid signature"):
        verify(method, path, query, headers)


def test_wrong_secret() -> None:
    headers = {
        "Host": HOST,
        **Signer(AK, "not the secret", REGION).sign_headers("GET", "/b", None, {"Host": HOST}, None, now=T0),
    }
    with pytest.raises(AccessDenied, match="Invalid signature"):
        verify("GET", "/b", "", headers)


def test_error_messages_have_no_prefix() -> None:
    with pytest.raises(BadRequest) as e:
        verify("GET", "/b", "search&search", {"Host": HOST})
    assert not e.value.message.startswith("Bad request")
    assert e.value.full_message.startswith("Bad request: ")


# --------------------------------------------------------------------------------------------------
# Signing-key cache


def test_second_verification_does_not_rederive(monkeypatch: pytest.MonkeyPatch) -> None:
    requests = [
        ("sort_key=a", signed_headers("GET", "/b", [("sort_key", "a")]), T0),
        ("sort_key=b", signed_headers("GET", "/b", [("sort_key", "b")]), T0),
        ("", signed_headers("GET", "/b", now=T0 + 86400), T0 + 86400),
    ]
    calls: list[tuple[str, ...]] = []
    real = sv.derive_signing_key

    def counting(*args: str) -> bytes:
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(sv, "derive_signing_key", counting)
    cache = SigningKeyCache()
    for query, headers, now in requests[:2]:
        verify("GET", "/b", query, headers, now=now, cache=cache)
    assert len(calls) == 1 and cache.derivations == 1
    query, headers, now = requests[2]
    verify("GET", "/b", query, headers, now=now, cache=cache)
    assert len(calls) == 2  # a new day is a new key


def test_cache_is_lru_bounded_and_keyed_by_secret() -> None:
    cache = SigningKeyCache(maxsize=2)
    k1 = cache.get("s1", "20240301", REGION, "k2v")
    cache.get("s2", "20240301", REGION, "k2v")
    assert cache.get("s1", "20240301", REGION, "k2v") is k1  # hit, now most recent
    cache.get("s3", "20240301", REGION, "k2v")  # evicts s2
    assert len(cache) == 2 and cache.derivations == 3
    cache.get("s1", "20240301", REGION, "k2v")
    assert cache.derivations == 3
    cache.get("s2", "20240301", REGION, "k2v")
    assert cache.derivations == 4
    assert k1 == derive_signing_key("s1", "20240301", REGION, "k2v")
    assert cache.get("s1", "20240301", REGION, "s3") != k1


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)) | st.sampled_from("-_.~/%+ aZ09")), st.booleans())
def test_uri_encode_fast_path_agrees_with_percent_encoding(s, encode_slash):
    expected = quote_from_bytes(s.encode("utf-8"), safe="-_.~" if encode_slash else "-_.~/")
    assert sv.uri_encode(s, encode_slash) == expected


def test_headers_join_repeated_values_and_strip_single_ones():
    h = Headers([("X-A", " 1 "), ("x-a", "2"), ("X-B", "  v ")])
    assert h.get("x-a") == "1,2" and h.get("X-B") == "v" and h.get("x-c") is None


# --------------------------------------------------------------------------------------------------
# Edge cases found by mutation testing


def test_a_skipped_checksum_trailer_does_not_hide_the_next_one() -> None:
    """crc32c cannot be checked with the stdlib and is skipped; a wrong crc32 after it still fails."""
    v, _ = streaming_request(
        DATA, STREAMING_UNSIGNED_TRAILER, {"X-Amz-Trailer": "x-amz-checksum-crc32c,x-amz-checksum-crc32"}
    )
    good = b64(zlib.crc32(DATA).to_bytes(4, "big"))
    wrong = b64((zlib.crc32(DATA) ^ 1).to_bytes(4, "big"))
    crc32c = ("x-amz-checksum-crc32c", "AAAAAA==")
    assert v.check_body(unsigned_chunks(PIECES, [crc32c, ("x-amz-checksum-crc32", good)])) == DATA
    with pytest.raises(InvalidDigest, match="crc32 trailer"):
        v.check_body(unsigned_chunks(PIECES, [crc32c, ("x-amz-checksum-crc32", wrong)]))


def test_signed_chunks_may_not_carry_trailer_lines() -> None:
    """Trailers are for STREAMING-UNSIGNED-PAYLOAD-TRAILER; after signed chunks they are unsigned
    data nobody vouched for."""
    v, seed = streaming_request(DATA)
    body = build_signed_chunks(PIECES, seed, "20240301T120000Z")
    assert body.endswith(b"\r\n\r\n")
    with_trailer = (
        body[:-2] + b"x-amz-checksum-crc32:" + b64(zlib.crc32(DATA).to_bytes(4, "big")).encode() + b"\r\n\r\n"
    )
    with pytest.raises(BadRequest, match="after the final chunk") as e:
        v.check_body(with_trailer)
    assert type(e.value) is BadRequest


def test_presigned_url_that_signs_a_content_digest() -> None:
    """A generic AWS presigner signs the x-amz-content-sha256 header it is given: that digest,
    not UNSIGNED-PAYLOAD or the empty-body hash, is what the body is then held to."""
    body = b'{"k": "v"}'
    digest = hashlib.sha256(body).hexdigest()
    req = AWSRequest(
        method="PUT", url=f"http://{HOST}/b/pk", params={"sort_key": "s"}, headers={"X-Amz-Content-SHA256": digest}
    )
    SigV4QueryAuth(BOTO_CREDS, "k2v", REGION, expires=300).add_auth(req)
    v = run_botocore(req)
    assert v.presigned and v.content_sha256 == digest
    assert v.check_body(body) == body
    with pytest.raises(InvalidDigest):
        v.check_body(body + b" ")
    prepared = req.prepare()
    url = urlsplit(prepared.url)
    headers = {"Host": HOST, "X-Amz-Content-SHA256": "not-a-digest"}
    with pytest.raises(BadRequest, match="content sha256"):
        verify_request("PUT", url.path, url.query, headers, REGION, KEYS.get, now=None)


@pytest.mark.parametrize("value", ["abc", "", "-1", "+5", "1.5", "0x10", "1_000", "٣", "9" * 5000, "1" * 21])
def test_bad_decoded_content_length_is_400(value: str) -> None:
    """Not a plain number of at most 20 digits: 400 (5000 digits used to escape ``int()`` as a 500)."""
    headers = signed_headers("PUT", "/b/pk", [("sort_key", "s")], extra={"X-Amz-Decoded-Content-Length": value})
    with pytest.raises(BadRequest, match="decoded-content-length") as e:
        verify("PUT", "/b/pk", "sort_key=s", headers)
    assert type(e.value) is BadRequest


def test_decoded_content_length_of_20_digits_is_read() -> None:
    headers = signed_headers(
        "PUT", "/b/pk", [("sort_key", "s")], extra={"X-Amz-Decoded-Content-Length": "0" * 19 + "7"}
    )
    assert verify("PUT", "/b/pk", "sort_key=s", headers).decoded_length == 7


@pytest.mark.parametrize("sign", [-1, 1])
def test_clock_skew_boundary_is_exactly_15_minutes(sign: int) -> None:
    headers = signed_headers("GET", "/b", now=T0)
    verify("GET", "/b", "", headers, now=T0 + sign * 900)
    with pytest.raises(RequestTimeTooSkewed):
        verify("GET", "/b", "", headers, now=T0 + sign * 901)


def test_presign_expiry_and_not_yet_valid_boundaries() -> None:
    url = SIGNER.presign_url("GET", "/b", None, HOST, expires=600, now=T0)
    path, _, query = url.partition("?")
    verify("GET", path, query, {"Host": HOST}, now=T0 + 600)  # the last valid second
    with pytest.raises(AccessDenied, match="expired"):
        verify("GET", path, query, {"Host": HOST}, now=T0 + 601)
    verify("GET", path, query, {"Host": HOST}, now=T0 - 900)  # signed by a clock 15 minutes ahead
    with pytest.raises(AccessDenied, match="not valid yet"):
        verify("GET", path, query, {"Host": HOST}, now=T0 - 901)


def test_decoded_content_length_with_thousands_of_leading_zeros_is_read() -> None:
    """Leading zeros are stripped before ``int()``, which refuses more than 4300 digits."""
    headers = signed_headers(
        "PUT", "/b/pk", [("sort_key", "s")], extra={"X-Amz-Decoded-Content-Length": "0" * 5000 + "7"}
    )
    assert verify("PUT", "/b/pk", "sort_key=s", headers).decoded_length == 7


@pytest.mark.parametrize(("expires", "seconds"), [("0" * 5000 + "60", 60), ("0", 0), ("000", 0)])
def test_presign_expiry_with_leading_zeros_or_zero(expires: str, seconds: int) -> None:
    """X-Amz-Expires is read as a decimal number whatever its zeros; 0 is valid for the signing
    second only. (Only the parsing is checked here: the altered query no longer verifies.)"""
    query = _presigned_query(**{"X-Amz-Expires": expires})
    assert parse_request("GET", "/b", query, {"Host": HOST}, REGION, now=T0 + seconds).presigned
    with pytest.raises(AccessDenied, match="expired"):
        parse_request("GET", "/b", query, {"Host": HOST}, REGION, now=T0 + seconds + 1)


def test_raw_query_given_wins_over_a_query_left_in_the_path() -> None:
    headers = signed_headers("GET", "/b/pk", [("sort_key", "x")])
    verify("GET", "/b/pk?sort_key=y", "sort_key=x", headers)
    with pytest.raises(AccessDenied, match="Invalid signature"):
        verify("GET", "/b/pk?sort_key=x", "sort_key=y", headers)


def test_trailer_line_without_a_colon_is_400() -> None:
    v, _ = streaming_request(b"abc", STREAMING_UNSIGNED_TRAILER)
    with pytest.raises(BadRequest, match="bad trailer line"):
        v.check_body(b"3\r\nabc\r\n0\r\nx-amz-checksum-crc32\r\n\r\n")


def test_trailer_value_may_contain_colons() -> None:
    """Only the first colon separates the name: ``name:a:b`` is the name with the value ``a:b``."""
    v, _ = streaming_request(DATA, STREAMING_UNSIGNED_TRAILER, {"X-Amz-Trailer": "x-amz-meta-at"})
    assert v.check_body(unsigned_chunks(PIECES, [("x-amz-meta-at", "12:00:00")])) == DATA


def test_checksum_trailer_with_a_stray_character_is_rejected() -> None:
    """The base64 of a checksum is decoded strictly: a character outside the alphabet is an error,
    not skipped (a lenient decoder would accept this otherwise correct crc32)."""
    good = b64(zlib.crc32(DATA).to_bytes(4, "big"))
    v, _ = streaming_request(DATA, STREAMING_UNSIGNED_TRAILER, {"X-Amz-Trailer": "x-amz-checksum-crc32"})
    assert v.check_body(unsigned_chunks(PIECES, [("x-amz-checksum-crc32", good)])) == DATA
    with pytest.raises(InvalidDigest, match="Invalid x-amz-checksum-crc32 trailer"):
        v.check_body(unsigned_chunks(PIECES, [("x-amz-checksum-crc32", good[:2] + "!" + good[2:])]))
