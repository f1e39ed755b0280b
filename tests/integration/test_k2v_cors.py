"""docs/k2v-api.md §9: OPTIONS preflights (before authentication) and CORS headers."""

from __future__ import annotations

import pytest

from tests.support import K2VHttp, NodeProcess
from tests.support.k2v import BUCKET, TOKEN, assert_error, ipath, put, raw_send

ORIGIN = "https://app.example"


def _preflight(host: str, path: str, origin: str | None = ORIGIN, req_headers: str | None = None):
    hdrs = {"Access-Control-Request-Method": "PUT"}
    if origin is not None:
        hdrs["Origin"] = origin
    if req_headers is not None:
        hdrs["Access-Control-Request-Headers"] = req_headers
    return raw_send(host, "OPTIONS", path, headers=hdrs)


def _methods(r) -> set[str]:
    return {m.strip() for m in r.header("Access-Control-Allow-Methods").split(",")}


@pytest.mark.parametrize(
    "path",
    [
        f"/{BUCKET}",
        f"/{BUCKET}/",
        f"/{BUCKET}/pk?sort_key=a",
        f"/{BUCKET}?search",
        f"/{BUCKET}/pk?poll_range",
        "/unknown-bucket/pk",
    ],
)
def test_preflight_allowed_origin(k2v, path):
    r = _preflight(k2v.host, path, req_headers="authorization, x-amz-date, x-amz-content-sha256, content-type")
    assert r.status == 200, r.body
    assert r.header("Access-Control-Allow-Origin") == ORIGIN
    assert {"GET", "PUT", "POST", "DELETE", "SEARCH"} <= _methods(r)
    assert r.header("Access-Control-Allow-Headers") == "authorization, x-amz-date, x-amz-content-sha256, content-type"
    assert TOKEN.lower() in r.header("Access-Control-Expose-Headers").lower()


def test_preflight_is_not_authenticated(k2v):
    r = _preflight(k2v.host, f"/{BUCKET}/pk?sort_key=a")
    assert r.status == 200
    assert r.header("Authorization") is None


@pytest.mark.parametrize(
    "origin", ["https://evil.example", "http://app.example", "https://app.example:8443", "https://APP.example", None]
)
def test_preflight_other_origin_is_403(k2v, origin):
    r = _preflight(k2v.host, f"/{BUCKET}/pk", origin=origin)
    assert_error(r, 403, "AccessDenied", path=f"/{BUCKET}/pk")
    assert r.header("Access-Control-Allow-Origin") is None


def test_authenticated_response_for_allowed_origin(k2v, pk):
    put(k2v, pk, "a", b"v")
    for method, query, body in (("GET", "sort_key=a", None), ("PUT", "sort_key=b", b"v")):
        r = k2v.request(method, ipath(pk), query, body, headers={"Origin": ORIGIN})
        assert r.status in (200, 204), r.body
        assert r.header("Access-Control-Allow-Origin") == ORIGIN
        assert TOKEN.lower() in r.header("Access-Control-Expose-Headers").lower()
    r = k2v.json("POST", f"/{BUCKET}", [{"partitionKey": pk}], query="search", headers={"Origin": ORIGIN})
    assert r.status == 200
    assert r.header("Access-Control-Allow-Origin") == ORIGIN


def test_no_cors_headers_for_other_or_missing_origin(k2v, pk):
    put(k2v, pk, "a", b"v")
    for headers in ({"Origin": "https://evil.example"}, {}):
        r = k2v.request("GET", ipath(pk), "sort_key=a", headers=headers)
        assert r.status == 200
        assert r.header("Access-Control-Allow-Origin") is None
        assert r.header("Access-Control-Expose-Headers") is None


# ---- other configurations ----------------------------------------------------------------------


def _node(tmp_path_factory, name: str, extra: str):
    n = NodeProcess(tmp_path_factory.mktemp(name), k2v_extra=extra)
    n.start()
    key = n.admin("key.create", {"name": "cors"})
    n.admin("bucket.create", {"name": BUCKET})
    n.admin(
        "bucket.permissions", {"bucket": BUCKET, "key": key["accessKeyId"], "allow": True, "read": True, "write": True}
    )
    return n, K2VHttp(n.endpoint, key["accessKeyId"], key["secretAccessKey"])


@pytest.fixture(scope="module")
def no_cors(tmp_path_factory):
    n, client = _node(tmp_path_factory, "no-cors", "")
    yield client
    n.stop()


@pytest.fixture(scope="module")
def star_cors(tmp_path_factory):
    n, client = _node(tmp_path_factory, "star-cors", 'cors_allowed_origins = ["*"]')
    yield client
    n.stop()


def test_default_is_no_cors(no_cors, pk):
    assert_error(_preflight(no_cors.host, f"/{BUCKET}/pk"), 403, "AccessDenied")
    put(no_cors, pk, "a", b"v")
    r = no_cors.request("GET", ipath(pk), "sort_key=a", headers={"Origin": ORIGIN})
    assert r.status == 200
    assert r.header("Access-Control-Allow-Origin") is None


def test_star_allows_any_origin(star_cors, pk):
    r = _preflight(star_cors.host, f"/{BUCKET}/pk", origin="https://anything.example", req_headers="x-amz-date")
    assert r.status == 200, r.body
    assert r.header("Access-Control-Allow-Origin") in ("*", "https://anything.example")
    assert r.header("Access-Control-Allow-Headers") == "x-amz-date"
    put(star_cors, pk, "a", b"v")
    r = star_cors.request("GET", ipath(pk), "sort_key=a", headers={"Origin": "https://other.example"})
    assert r.status == 200
    assert r.header("Access-Control-Allow-Origin") in ("*", "https://other.example")
    assert TOKEN.lower() in r.header("Access-Control-Expose-Headers").lower()
