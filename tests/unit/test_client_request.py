"""K2V client request building and signing, checked against the server's verifier and botocore."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from urllib.parse import urlsplit

import botocore.auth
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from garagekv.api.signature import verify_request
from garagekv.client import K2VClient
from garagekv.client.config import resolve
from garagekv.client.request import ACCEPT_ITEM, RequestBuilder, encode_partition_key
from garagekv.util.errors import AccessDenied, InvalidDigest

AK, SK, REGION = "GK0123456789abcdef01234567", "s3cr3t" * 10, "garage"
NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def builder(clock: float = NOW, **kw) -> RequestBuilder:
    settings = resolve(
        {
            "endpoint": "http://127.0.0.1:3904",
            "region": REGION,
            "access_key_id": AK,
            "secret_access_key": SK,
            "bucket": "my-bucket",
        }
    )
    return RequestBuilder(settings, clock=lambda: clock, **kw)


def verify(req, now: float = NOW):
    split = urlsplit(req.url)
    assert split.path == req.path and split.query == req.query
    return verify_request(
        req.method, req.path, req.query, req.headers, REGION, lambda ak: SK if ak == AK else None, now=now
    )


def botocore_authorization(req, monkeypatch) -> str:
    """What botocore's SigV4 signer puts in Authorization for the same request at the same time."""
    monkeypatch.setattr(
        botocore.auth,
        "get_current_datetime",
        lambda *a, **k: dt.datetime.fromtimestamp(NOW, dt.UTC).replace(tzinfo=None),
    )
    headers = {k: v for k, v in req.headers.items() if k not in ("Authorization", "X-Amz-Date", "User-Agent")}
    aws = AWSRequest(method=req.method, url=req.url, data=req.body, headers=headers)
    botocore.auth.SigV4Auth(Credentials(AK, SK), "k2v", REGION).add_auth(aws)
    assert aws.headers["X-Amz-Date"] == req.headers["X-Amz-Date"]
    return aws.headers["Authorization"]


CASES = [
    ("GET", "inbox", [("sort_key", "msg-1")], b"", {"Accept": ACCEPT_ITEM}),
    ("GET", "users/alice smith", [("sort_key", "a b&c=d/e+f?")], b"", {"Accept": ACCEPT_ITEM}),
    (
        "GET",
        "émoji ☃",
        [("sort_key", "ü"), ("causality_token", "3f0I59lGWo_d_QlF2epVHw"), ("timeout", "10")],
        b"",
        {"Accept": ACCEPT_ITEM},
    ),
    ("PUT", "pk", [("sort_key", "sk")], b"\x00\xffvalue", {"X-Garage-Causality-Token": "AAAAAAAAAAA"}),
    ("DELETE", "/leading", [("sort_key", "x")], b"", {}),
    ("GET", None, [("prefix", "a/b"), ("start", "a/b c"), ("limit", "5"), ("reverse", "true")], b"", {}),
    ("POST", None, [("search", "")], b'[{"partitionKey":"p"}]', {"Content-Type": "application/json"}),
    ("POST", None, [("delete", "")], b'[{"partitionKey":"p"}]', {"Content-Type": "application/json"}),
    ("POST", "p", [("poll_range", "")], b'{"prefix":"x"}', {"Content-Type": "application/json"}),
    ("POST", None, [], b"[]", {"Content-Type": "application/json"}),
]


@pytest.mark.parametrize(("method", "pk", "query", "body", "headers"), CASES)
def test_signature_verified_by_server_code(method, pk, query, body, headers):
    req = builder().build(method, pk, query, body, headers)
    v = verify(req)
    assert v.access_key_id == AK
    assert v.check_body(body) == body
    # what the server decodes from the wire is what we asked for
    from garagekv.util.signing import parse_query

    assert parse_query(req.query) == query


@pytest.mark.parametrize(("method", "pk", "query", "body", "headers"), CASES)
def test_signature_byte_for_byte_equal_to_botocore(method, pk, query, body, headers, monkeypatch):
    req = builder().build(method, pk, query, body, headers)
    assert req.headers["Authorization"] == botocore_authorization(req, monkeypatch)


def test_signed_headers_and_payload_hash():
    req = builder().build("PUT", "pk", [("sort_key", "s")], b"abc", {"X-Garage-Causality-Token": "T"})
    auth = req.headers["Authorization"]
    assert auth.startswith(f"AWS4-HMAC-SHA256 Credential={AK}/20231114/garage/k2v/aws4_request, ")
    assert "SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-garage-causality-token," in auth
    assert req.headers["X-Amz-Content-Sha256"] == hashlib.sha256(b"abc").hexdigest()
    assert req.headers["X-Amz-Date"] == "20231114T221320Z"
    assert req.headers["Host"] == "127.0.0.1:3904"
    assert req.url == "http://127.0.0.1:3904/my-bucket/pk?sort_key=s"


def test_user_agent_not_signed_and_unsigned_payload():
    req = builder(user_agent="ua/1", unsigned_payload=True).build("PUT", "pk", [("sort_key", "s")], b"abc")
    assert req.headers["User-Agent"] == "ua/1"
    assert "user-agent" not in req.headers["Authorization"]
    assert req.headers["X-Amz-Content-Sha256"] == "UNSIGNED-PAYLOAD"
    verify(req)


def test_tampering_is_detected():
    req = builder().build("PUT", "pk", [("sort_key", "s")], b"abc")
    with pytest.raises(InvalidDigest):
        verify(req).check_body(b"abd")
    req.headers["X-Amz-Date"] = "20231114T221321Z"
    with pytest.raises(AccessDenied):
        verify(req)


def test_signing_key_is_cached_per_day():
    b = builder()
    b.build("GET", None)
    first = b.signer._key
    b.build("GET", None)
    assert b.signer._key is first  # same day: no new derivation


@pytest.mark.parametrize(
    ("pk", "wire"),
    [
        ("simple", "simple"),
        ("a/b", "a%2Fb"),
        ("/lead", "%2Flead"),
        ("a b+c", "a%20b%2Bc"),
        ("é", "%C3%A9"),
        (".", "%2E"),
        ("..", "%2E%2E"),
        ("...", "..."),
        ("a.b~c_d-e", "a.b~c_d-e"),
        ("\udcff", "%FF"),  # surrogate-escaped bytes go out as they were (not UTF-8: server answers 400)
    ],
)
def test_partition_key_encoding(pk, wire):
    assert encode_partition_key(pk) == wire
    assert builder().path(pk) == f"/my-bucket/{wire}"


def test_empty_partition_key_refused():
    with pytest.raises(ValueError):
        encode_partition_key("")


def test_bucket_level_paths_and_keywords():
    b = builder()
    assert b.build("POST", None, [("search", "")]).url == "http://127.0.0.1:3904/my-bucket?search="
    assert b.build("GET", None).url == "http://127.0.0.1:3904/my-bucket"


def test_client_prepare_uses_clock_and_settings():
    c = K2VClient(
        endpoint="localhost:3904", access_key_id=AK, secret_access_key=SK, bucket="my-bucket", clock=lambda: NOW
    )
    assert c.endpoint == "http://localhost:3904"
    req = c.prepare("GET", "pk", [("sort_key", "s")])
    assert req.headers["X-Amz-Date"] == "20231114T221320Z"
    assert req.headers["Host"] == "localhost:3904"
    verify(req)


def test_json_bodies_are_compact_and_match_the_wire_format():
    from garagekv.client import DeleteQuery, InsertOp, ReadQuery

    assert ReadQuery("p").to_json() == {"partitionKey": "p"}
    assert ReadQuery(
        "p", prefix="a", start="ab", end="b", limit=0, reverse=True, conflicts_only=True, tombstones=True
    ).to_json() == {
        "partitionKey": "p",
        "prefix": "a",
        "start": "ab",
        "end": "b",
        "limit": 0,
        "reverse": True,
        "conflictsOnly": True,
        "tombstones": True,
    }
    assert ReadQuery("p", start="", single_item=True).to_json() == {
        "partitionKey": "p",
        "start": "",
        "singleItem": True,
    }
    assert DeleteQuery("p", prefix="x", single_item=False).to_json() == {"partitionKey": "p", "prefix": "x"}
    assert InsertOp("p", "s", b"\x00", None).to_json() == {"pk": "p", "sk": "s", "ct": None, "v": "AA=="}
    assert json.loads(json.dumps(InsertOp("p", "s", None).to_json()))["v"] is None
