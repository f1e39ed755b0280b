"""docs/k2v-api.md §4 (error bodies, codes, statuses) and §10 (response details)."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.support import REGION, K2VHttp
from tests.support.k2v import (
    BINARY,
    BUCKET,
    EMPTY_TOKEN,
    JSON,
    TOKEN,
    assert_error,
    b64,
    delete,
    ipath,
    put,
    token_of,
)

# (name, request builder, status, code, message prefix)
CASES = [
    ("routing", lambda c, pk: c.request("PUT", f"/{BUCKET}", "sort_key=a&x=1"), 400, "InvalidRequest", "Bad request: "),
    (
        "bad-json",
        lambda c, pk: c.request("POST", f"/{BUCKET}", "search", b"{"),
        400,
        "InvalidRequest",
        "Bad request: Invalid JSON",
    ),
    (
        "bad-ct",
        lambda c, pk: c.request("PUT", ipath(pk), "sort_key=a", b"v", headers={TOKEN: "x"}),
        400,
        "CausalityToken",
        "Bad request: Invalid causality token",
    ),
    (
        "utf8",
        lambda c, pk: c.request("GET", f"/{BUCKET}/%FF%FE", "sort_key=a"),
        400,
        "InvalidUtf8String",
        "Bad request: ",
    ),
    (
        "scope",
        lambda c, pk: K2VHttp(c.host, c.access_key, c.secret_key, "elsewhere").request("GET", ipath(pk), "sort_key=a"),
        400,
        "AuthorizationHeaderMalformed",
        "Bad request: ",
    ),
    (
        "digest",
        lambda c, pk: c.request("PUT", ipath(pk), "sort_key=a", b"v", content_sha=hashlib.sha256(b"w").hexdigest()),
        400,
        "InvalidDigest",
        "Bad request: ",
    ),
    (
        "anonymous",
        lambda c, pk: c.request("GET", ipath(pk), "sort_key=a", sign=False),
        403,
        "AccessDenied",
        "Forbidden: ",
    ),
    (
        "no-bucket",
        lambda c, pk: c.request("GET", "/nope-bucket", "limit=1"),
        404,
        "NoSuchBucket",
        "Bucket not found: nope-bucket",
    ),
    ("no-key", lambda c, pk: c.request("GET", ipath(pk), "sort_key=a"), 404, "NoSuchKey", "Key not found"),
    (
        "not-acceptable",
        lambda c, pk: c.request("GET", ipath(pk), "sort_key=a", headers={"Accept": "x/y"}),
        406,
        "NotAcceptable",
        "Not acceptable: ",
    ),
    (
        "poll-token",
        lambda c, pk: c.request("GET", ipath(pk), "sort_key=a&causality_token=zz"),
        400,
        "InvalidRequest",
        "Bad request: ",
    ),
]


@pytest.mark.parametrize("name,make,status,code,prefix", CASES, ids=[c[0] for c in CASES])
def test_error_body(k2v, pk, name, make, status, code, prefix):
    r = make(k2v, pk)
    body = assert_error(r, status, code, prefix=prefix)
    assert r.header("Content-Type") == "application/json"
    assert body["region"] == REGION
    assert "?" not in body["path"]
    assert body["path"].startswith("/")
    # The body is one JSON object with exactly the four string fields.
    assert json.loads(r.body) == body


def test_error_path_is_raw_and_without_query(k2v):
    raw = f"/{BUCKET}/a%20b%2Fc%C3%A9"
    r = k2v.request("GET", raw, "sort_key=zz&foo=bar")
    assert_error(r, 404, "NoSuchKey", path=raw)
    r = k2v.request("GET", "/no-bucket/x%41", "sort_key=a")
    assert_error(r, 404, "NoSuchBucket", path="/no-bucket/x%41")
    r = k2v.request("PUT", f"/{BUCKET}/", "sort_key=a")
    assert_error(r, 400, "InvalidRequest", path=f"/{BUCKET}/")


# ---- §10 response details ----------------------------------------------------------------------


def test_token_header_only_on_item_reads(k2v, pk):
    put(k2v, pk, "a", b"v")
    token = token_of(k2v, pk, "a")
    no_token = [
        k2v.request("PUT", ipath(pk), "sort_key=b", b"v"),
        k2v.request("DELETE", ipath(pk), "sort_key=b"),
        k2v.json("POST", f"/{BUCKET}", [{"pk": pk, "sk": "c", "v": b64("v")}]),
        k2v.json("POST", f"/{BUCKET}", [{"partitionKey": pk}], query="search"),
        k2v.json("POST", f"/{BUCKET}", [{"partitionKey": pk, "start": "zz"}], query="delete"),
        k2v.request("GET", f"/{BUCKET}", "limit=1"),
        k2v.json("POST", ipath(pk), {}, query="poll_range"),
        k2v.request("GET", ipath(pk), "sort_key=never"),
        k2v.request("GET", ipath(pk), f"sort_key=a&causality_token={token}&timeout=1"),  # 304
    ]
    for r in no_token:
        assert r.status in (200, 204, 304, 404), r
        assert r.header(TOKEN) is None, r
    assert no_token[-1].status == 304
    with_token = [
        k2v.request("GET", ipath(pk), "sort_key=a"),
        k2v.request("GET", ipath(pk), "sort_key=a", headers={"Accept": BINARY}),
        k2v.request("GET", ipath(pk), f"sort_key=a&causality_token={EMPTY_TOKEN}"),
    ]
    for r in with_token:
        assert r.status == 200
        assert r.header(TOKEN) == token


def test_empty_bodies_and_exact_content_types(k2v, pk):
    r = k2v.request("PUT", ipath(pk), "sort_key=a", b"v")
    assert (r.status, r.body) == (204, b"")
    put(k2v, pk, "a", b"w")
    r = k2v.request("GET", ipath(pk), "sort_key=a", headers={"Accept": BINARY})
    assert (r.status, r.body, r.header("Content-Type")) == (409, b"", None)
    r = k2v.request("GET", ipath(pk), "sort_key=a")
    assert r.header("Content-Type") == JSON
    delete(k2v, pk, "a", token_of(k2v, pk, "a"))
    r = k2v.request("GET", ipath(pk), "sort_key=a", headers={"Accept": BINARY})
    assert (r.status, r.body, r.header("Content-Type")) == (204, b"", BINARY)
    for r in (
        k2v.json("POST", f"/{BUCKET}", [], query="search"),
        k2v.request("GET", f"/{BUCKET}"),
        k2v.json("POST", f"/{BUCKET}", [], query="delete"),
        k2v.json("POST", ipath(pk), {}, query="poll_range"),
    ):
        assert r.status == 200
        assert r.header("Content-Type") == JSON


def test_read_your_writes(k2v, pk):
    for i in range(20):
        put(k2v, pk, "a", str(i).encode(), token=token_of(k2v, pk, "a") if i else None)
        assert k2v.request("GET", ipath(pk), "sort_key=a", headers={"Accept": BINARY}).body == str(i).encode()
