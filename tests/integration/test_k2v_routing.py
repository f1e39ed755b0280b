"""docs/k2v-api.md §1: routing of method + path + query to an endpoint, against a real node."""

from __future__ import annotations

import uuid

import pytest

from tests.support.k2v import (
    BUCKET,
    EMPTY_TOKEN,
    JSON,
    assert_error,
    assert_partition_empty,
    b64,
    ipath,
    partition,
    put,
    q,
    raw_send,
    raw_socket,
    read_json,
    send_signed,
)

# ---- every endpoint of the table ---------------------------------------------------------------


def test_get_with_pk_and_token_is_poll_item(k2v, pk):
    put(k2v, pk, "s", b"v")
    r = k2v.request("GET", ipath(pk), f"sort_key=s&causality_token={EMPTY_TOKEN}&timeout=1")
    assert r.status == 200, r.body
    assert r.json() == [b64("v")]


def test_get_with_pk_is_read_item(k2v, pk):
    assert_error(k2v.request("GET", ipath(pk), "sort_key=s"), 404, "NoSuchKey")
    put(k2v, pk, "s", b"v")
    assert k2v.request("GET", ipath(pk), "sort_key=s").json() == [b64("v")]


@pytest.mark.parametrize("path", [f"/{BUCKET}", f"/{BUCKET}/"])
def test_get_bucket_is_read_index_with_or_without_slash(k2v, path):
    r = k2v.request("GET", path)
    assert r.status == 200, r.body
    body = r.json()
    assert set(body) == {"prefix", "start", "end", "limit", "reverse", "partitionKeys", "more", "nextStart"}


def test_put_and_delete_with_pk_are_insert_and_delete_item(k2v, pk):
    r = k2v.request("PUT", ipath(pk), "sort_key=s", b"v")
    assert (r.status, r.body) == (204, b"")
    r = k2v.request("DELETE", ipath(pk), "sort_key=s")
    assert (r.status, r.body) == (204, b"")
    assert partition(k2v, pk) == {"s": [b64("v"), None]}  # no token: concurrent tombstone


@pytest.mark.parametrize("path", [f"/{BUCKET}", f"/{BUCKET}/"])
def test_post_bucket_is_insert_batch(k2v, pk, path):
    r = k2v.json("POST", path, [{"pk": pk, "sk": "s", "v": b64("x")}])
    assert (r.status, r.body) == (204, b"")
    assert partition(k2v, pk) == {"s": [b64("x")]}


@pytest.mark.parametrize("path", [f"/{BUCKET}", f"/{BUCKET}/"])
@pytest.mark.parametrize("query", ["search", "search=", "search=x", "search=true&foo=bar"])
def test_post_search_forms_are_read_batch(k2v, pk, path, query):
    put(k2v, pk, "s", b"v")
    r = k2v.json("POST", path, [{"partitionKey": pk}], query=query)
    assert r.status == 200, r.body
    assert [i["sk"] for i in r.json()[0]["items"]] == ["s"]


@pytest.mark.parametrize("query", ["delete", "delete=", "delete=yes"])
def test_post_delete_forms_are_delete_batch(k2v, pk, query):
    put(k2v, pk, "s", b"v")
    r = k2v.json("POST", f"/{BUCKET}/", [{"partitionKey": pk}], query=query)
    assert r.status == 200, r.body
    assert r.json()[0]["deletedItems"] == 1


@pytest.mark.parametrize("method", ["POST", "SEARCH"])
@pytest.mark.parametrize("query", ["poll_range", "poll_range=", "poll_range=1"])
def test_poll_range_forms(k2v, pk, method, query):
    put(k2v, pk, "s", b"v")
    r = k2v.json(method, ipath(pk), {}, query=query)
    assert r.status == 200, r.body
    assert [i["sk"] for i in r.json()["items"]] == ["s"]


@pytest.mark.parametrize("method", ["POST", "SEARCH"])
@pytest.mark.parametrize("query", ["poll_ranges", "poll_ranges=", "poll_ranges=1"])
@pytest.mark.parametrize("path", [f"/{BUCKET}", f"/{BUCKET}/"])
def test_poll_ranges_forms(k2v, pk, method, query, path):
    put(k2v, pk, "s", b"v")
    r = k2v.json(method, path, {"ranges": [{"partitionKey": pk}]}, query=query)
    assert r.status == 200, r.body
    assert [i["sk"] for i in r.json()["ranges"][0]["items"]] == ["s"]


@pytest.mark.parametrize("path", [f"/{BUCKET}", f"/{BUCKET}/"])
def test_search_bucket_is_read_batch(k2v, pk, path):
    put(k2v, pk, "s", b"v")
    r = k2v.json("SEARCH", path, [{"partitionKey": pk}])
    assert r.status == 200, r.body
    assert [i["sk"] for i in r.json()[0]["items"]] == ["s"]


# ---- invalid combinations ----------------------------------------------------------------------

INVALID = [
    ("PUT", "/test-bucket", "sort_key=a"),
    ("PUT", "/test-bucket/", "sort_key=a"),
    ("DELETE", "/test-bucket", "sort_key=a"),
    ("POST", "/test-bucket/pk", ""),
    ("POST", "/test-bucket/pk", "search"),
    ("POST", "/test-bucket/pk", "delete"),
    ("POST", "/test-bucket", "poll_range"),
    ("GET", "/test-bucket/pk", "sort_key=a&search"),
    ("GET", "/test-bucket/pk", "sort_key=a&delete="),
    ("GET", "/test-bucket/pk", "sort_key=a&poll_range"),
    ("GET", "/test-bucket", "search"),
    ("GET", "/test-bucket", "delete"),
    ("GET", "/test-bucket", "poll_range"),
    ("PUT", "/test-bucket/pk", "sort_key=a&search"),
    ("DELETE", "/test-bucket/pk", "sort_key=a&delete"),
    ("SEARCH", "/test-bucket", "search"),
    ("SEARCH", "/test-bucket", "poll_range"),
    ("SEARCH", "/test-bucket", "delete"),
    ("SEARCH", "/test-bucket/pk", ""),
    ("SEARCH", "/test-bucket/pk", "search"),
    ("POST", "/test-bucket/pk", "poll_ranges"),
    ("SEARCH", "/test-bucket/pk", "poll_ranges"),
    ("GET", "/test-bucket", "poll_ranges"),
    ("GET", "/test-bucket/pk", "sort_key=a&poll_ranges"),
    ("PUT", "/test-bucket/pk", "sort_key=a&poll_ranges"),
    ("DELETE", "/test-bucket/pk", "sort_key=a&poll_ranges"),
]


@pytest.mark.parametrize("sign", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("method,path,query", INVALID)
def test_invalid_endpoint_combinations(k2v, method, path, query, sign):
    r = k2v.request(method, path, query, b"[]" if method in ("POST", "SEARCH", "PUT") else None, sign=sign)
    assert_error(r, 400, "InvalidRequest", path=path, message="Invalid endpoint")


def test_invalid_put_writes_nothing(k2v, pk):
    r = k2v.request("PUT", ipath(pk), "sort_key=a&search", b"v")
    assert_error(r, 400, "InvalidRequest")
    assert_partition_empty(k2v, pk)


@pytest.mark.parametrize("sign", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize(
    "query",
    [
        "search&delete",
        "search=&poll_range=",
        "delete&poll_range",
        "poll_range&search",
        "poll_range&poll_ranges",
        "poll_ranges&search",
    ],
)
def test_two_keywords_rejected(k2v, query, sign):
    for path in (f"/{BUCKET}", f"/{BUCKET}/pk"):
        r = k2v.request("POST", path, query, b"[]", sign=sign)
        assert_error(r, 400, "InvalidRequest", path=path)


@pytest.mark.parametrize("sign", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("query", ["sort_key=a&sort_key=b", "sort_key=a&sort_key=a", "sort_key=a&limit=1&limit=2"])
def test_repeated_field_rejected(k2v, pk, query, sign):
    r = k2v.request("PUT", ipath(pk), query, b"v", sign=sign)
    assert_error(r, 400, "InvalidRequest", message="Query parameter repeated")
    assert_partition_empty(k2v, pk)


# ---- empty fields, missing arguments ------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
@pytest.mark.parametrize("query", ["", "sort_key=", "sort_key", "foo=bar", "prefix=a"])
def test_missing_sort_key(k2v, pk, method, query):
    r = k2v.request(method, ipath(pk), query, b"v" if method == "PUT" else None)
    assert_error(r, 400, "InvalidRequest", message="Missing argument for endpoint")
    assert_partition_empty(k2v, pk)


def test_poll_item_with_empty_sort_key_is_missing_argument(k2v, pk):
    r = k2v.request("GET", ipath(pk), f"sort_key=&causality_token={EMPTY_TOKEN}&timeout=1")
    assert_error(r, 400, "InvalidRequest", message="Missing argument for endpoint")


def test_empty_causality_token_means_read_item(k2v, pk):
    put(k2v, pk, "s", b"v")
    r = k2v.request("GET", ipath(pk), "sort_key=s&causality_token=")
    assert r.status == 200
    assert r.json() == [b64("v")]


def test_empty_fields_are_absent_for_read_index(k2v):
    r = k2v.request("GET", f"/{BUCKET}", "prefix=&start=&end=&limit=&reverse=")
    assert r.status == 200, r.body
    body = r.json()
    assert (body["prefix"], body["start"], body["end"], body["limit"], body["reverse"]) == (
        None,
        None,
        None,
        None,
        False,
    )


def test_unknown_and_unused_parameters_are_ignored(k2v, pk):
    r = k2v.request("PUT", ipath(pk), "sort_key=s&foo=bar&prefix=zz&limit=3&reverse=true&start=q&x-id=1", b"v")
    assert r.status == 204, r.body
    r = k2v.request("GET", ipath(pk), "sort_key=s&end=a&unknown")
    assert r.status == 200
    assert r.json() == [b64("v")]


# ---- unknown methods ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["PATCH", "COPY", "TRACE", "PROPFIND", "FOO", "CONNECTX"])
@pytest.mark.parametrize("path", [f"/{BUCKET}", f"/{BUCKET}/pk"])
def test_unknown_method(k2v, method, path):
    for sign in (True, False):
        r = k2v.request(method, path, "sort_key=a", sign=sign)
        assert_error(r, 400, "InvalidRequest")


@pytest.mark.parametrize("method", ["PATCH", "COPY", "TRACE", "PROPFIND"])
def test_unknown_method_message_and_path(k2v, method):
    r = k2v.request(method, f"/{BUCKET}/pk", "sort_key=a")
    assert_error(r, 400, "InvalidRequest", message="Unknown method", path=f"/{BUCKET}/pk")


@pytest.mark.parametrize("method", ["FOO", "CONNECTX", "get"])
def test_unparsable_method_message_and_path(k2v, method):
    r = raw_send(k2v.host, method, f"/{BUCKET}/pk?sort_key=a")
    assert_error(r, 400, "InvalidRequest", message=f"Unknown method: {method}", path=f"/{BUCKET}/pk")


@pytest.mark.parametrize("path", [f"/{BUCKET}", f"/{BUCKET}/pk"])
def test_head_is_400(k2v, path):
    for sign in (True, False):
        r = k2v.request("HEAD", path, "sort_key=a", sign=sign)
        assert r.status == 400
        assert r.body == b""


@pytest.mark.parametrize("method", ["get", "put", "Get", "search", "options"])
def test_lowercase_method_is_json_400(k2v, pk, method):
    r = raw_send(k2v.host, method, f"/{BUCKET}/{pk}?sort_key=a", b"v" if method == "put" else None)
    assert_error(r, 400, "InvalidRequest")
    assert_partition_empty(k2v, pk)


# ---- limit / timeout / reverse parse errors ------------------------------------------------------


@pytest.mark.parametrize("sign", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize(
    "query",
    [
        "limit=abc",
        "limit=-1",
        "limit=1.5",
        "limit=+3",
        "limit=0x10",
        "limit=1e3",
        "limit=18446744073709551616",
        "reverse=TRUE",
        "reverse=1",
        "reverse=yes",
        "reverse=False",
        "timeout=soon",
        "timeout=-5",
        "timeout=1.0",
    ],
)
def test_bad_limit_timeout_reverse(k2v, query, sign):
    r = k2v.request("GET", f"/{BUCKET}", query, sign=sign)
    assert_error(r, 400, "InvalidRequest", message="Failed to parse query parameter")


@pytest.mark.parametrize("query", ["timeout=x", "limit=-2", "reverse=maybe"])
def test_parse_errors_apply_to_every_endpoint(k2v, pk, query):
    r = k2v.request("PUT", ipath(pk), f"sort_key=s&{query}", b"v")
    assert_error(r, 400, "InvalidRequest", message="Failed to parse query parameter")
    r = k2v.request("GET", ipath(pk), f"sort_key=s&causality_token={EMPTY_TOKEN}&{query}", sign=False)
    assert_error(r, 400, "InvalidRequest", message="Failed to parse query parameter")
    assert_partition_empty(k2v, pk)


def test_valid_limit_and_reverse_values(k2v):
    r = k2v.request("GET", f"/{BUCKET}", "limit=0&reverse=false")
    assert r.status == 200, r.body
    assert (r.json()["limit"], r.json()["reverse"]) == (0, False)
    r = k2v.request("GET", f"/{BUCKET}", "limit=007&reverse=true")
    assert r.status == 200, r.body
    assert (r.json()["limit"], r.json()["reverse"]) == (7, True)


# ---- partition key decoding ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["a b", "ünï€ødé 😀", "a/b", "a%b", "x+y", "with?question", "#hash", "~tilde.-_", "a/b/c/", "\u00a0nbsp"]
)
def test_percent_decoded_partition_key(k2v, key):
    key = f"{key}-{uuid.uuid4().hex[:8]}"
    r = k2v.request("PUT", f"/{BUCKET}/{q(key)}", "sort_key=s", b"v")
    assert r.status == 204, r.body
    assert partition(k2v, key) == {"s": [b64("v")]}
    r = k2v.request("GET", f"/{BUCKET}/{q(key)}", "sort_key=s")
    assert r.status == 200


def test_slash_in_path_and_encoded_slash_are_the_same_partition(k2v, pk):
    put(k2v, f"{pk}/sub", "s", b"one")
    r = k2v.request("GET", f"/{BUCKET}/{pk}/sub", "sort_key=s")
    assert r.status == 200, r.body
    assert r.json() == [b64("one")]
    r = k2v.request("PUT", f"/{BUCKET}/{pk}/sub", "sort_key=t", b"two")
    assert r.status == 204
    assert partition(k2v, f"{pk}/sub") == {"s": [b64("one")], "t": [b64("two")]}


def test_plus_in_path_is_not_a_space(k2v, pk):
    r = k2v.request("PUT", f"/{BUCKET}/{pk}+x", "sort_key=s", b"v")
    assert r.status == 204, r.body
    assert partition(k2v, f"{pk}+x") == {"s": [b64("v")]}
    assert partition(k2v, f"{pk} x") == {}


@pytest.mark.parametrize("sign", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("raw", ["%FF", "a%C3", "%C3%28", "%ED%A0%80", "%80abc"])
def test_invalid_utf8_partition_key(k2v, raw, sign):
    for method, query, body in (
        ("GET", "sort_key=a", None),
        ("PUT", "sort_key=a", b"v"),
        ("POST", "poll_range", b"{}"),
    ):
        r = k2v.request(method, f"/{BUCKET}/{raw}", query, body, sign=sign)
        assert_error(r, 400, "InvalidUtf8String", path=f"/{BUCKET}/{raw}")


def test_leading_slashes_of_partition_key_are_removed(k2v, pk):
    r = send_signed(k2v, "PUT", f"/{BUCKET}//{pk}", "sort_key=a", b"v1")
    assert r.status == 204, r.body
    r = send_signed(k2v, "PUT", f"/{BUCKET}///{pk}", "sort_key=b", b"v2")
    assert r.status == 204, r.body
    assert partition(k2v, pk) == {"a": [b64("v1")], "b": [b64("v2")]}
    r = send_signed(k2v, "GET", f"/{BUCKET}////{pk}", "sort_key=a")
    assert r.status == 200
    assert r.json() == [b64("v1")]


def test_encoded_leading_slash_is_kept(k2v, pk):
    # The leading '/' are removed before percent-decoding: %2F survives as the first character.
    r = k2v.request("PUT", f"/{BUCKET}/%2F{pk}", "sort_key=a", b"v")
    assert r.status == 204, r.body
    assert partition(k2v, f"/{pk}") == {"a": [b64("v")]}
    assert partition(k2v, pk) == {}


def test_only_slashes_after_bucket_means_no_partition_key(k2v):
    r = send_signed(k2v, "GET", f"/{BUCKET}//")
    assert r.status == 200, r.body
    assert "partitionKeys" in r.json()
    r = send_signed(k2v, "PUT", f"/{BUCKET}//", "sort_key=a", b"v")
    assert_error(r, 400, "InvalidRequest", message="Invalid endpoint")


def test_leading_slashes_before_bucket(k2v, pk):
    put(k2v, pk, "a", b"v")
    r = send_signed(k2v, "GET", f"//{BUCKET}/{pk}", "sort_key=a")
    assert r.status == 200, r.body
    assert r.json() == [b64("v")]


@pytest.mark.parametrize("segment", [".", "..", "./x", "a/../b", "a/./b", "a//b"])
def test_paths_are_not_normalised(k2v, pk, segment):
    key = f"{pk}/{segment}"
    r = send_signed(k2v, "PUT", f"/{BUCKET}/{key}", "sort_key=a", b"v")
    assert r.status == 204, r.body
    assert partition(k2v, key) == {"a": [b64("v")]}


def test_bucket_name_is_not_percent_decoded(k2v):
    r = k2v.request("GET", "/test%2Dbucket")
    assert_error(r, 404, "NoSuchBucket", path="/test%2Dbucket", message="test%2Dbucket")


@pytest.mark.parametrize("sign", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("method,query", [("GET", ""), ("POST", "search"), ("PUT", "sort_key=a")])
def test_empty_bucket(k2v, method, query, sign):
    r = k2v.request(method, "/", query, b"[]" if method != "GET" else None, sign=sign)
    assert_error(r, 400, "InvalidRequest", path="/", message="Missing bucket name")


def test_empty_bucket_with_many_slashes(k2v):
    r = send_signed(k2v, "GET", "///")
    assert_error(r, 400, "InvalidRequest", message="Missing bucket name")


# ---- query decoding ----------------------------------------------------------------------------


def test_query_is_form_decoded(k2v, pk):
    # '+' is a space and %XX is decoded: "a b" three ways.
    r = send_signed(k2v, "PUT", ipath(pk), "sort_key=a+b", b"plus")
    assert r.status == 204, r.body
    assert partition(k2v, pk) == {"a b": [b64("plus")]}
    values, _ = read_json(k2v, pk, "a b")
    assert values == [b64("plus")]
    r = send_signed(k2v, "GET", ipath(pk), "sort%5Fkey=a%20b")
    assert r.status == 200, r.body
    assert r.json() == [b64("plus")]


def test_raw_unencoded_query_values(k2v, pk):
    sk = "a/b:c@d,e;f=g"
    r = send_signed(k2v, "PUT", ipath(pk), f"sort_key={sk}", b"raw")
    assert r.status == 204, r.body
    assert partition(k2v, pk) == {sk: [b64("raw")]}
    r = k2v.request("GET", ipath(pk), f"sort_key={q(sk)}")
    assert r.status == 200
    assert r.json() == [b64("raw")]


def test_unicode_sort_key_in_query(k2v, pk):
    sk = "clé €😀"
    r = k2v.request("PUT", ipath(pk), f"sort_key={q(sk)}", b"u")
    assert r.status == 204, r.body
    assert partition(k2v, pk) == {sk: [b64("u")]}


# ---- oddly encoded requests still get JSON errors ----------------------------------------------


def test_raw_non_ascii_path_is_handled(k2v, pk):
    # Request-target bytes outside ASCII: either served or refused, but never a 500 or plain text.
    req = (f"GET /{BUCKET}/{pk}é?sort_key=a HTTP/1.1\r\nHost: {k2v.host}\r\nConnection: close\r\n\r\n").encode()
    r = raw_socket(k2v.host, req)
    assert 400 <= r.status < 500, r
    assert r.header("Content-Type") == JSON
    assert set(r.json()) == {"code", "message", "region", "path"}


def test_garbage_request_line_gets_json_error(k2v):
    r = raw_socket(k2v.host, b"THIS IS NOT HTTP\r\n\r\n")
    assert 400 <= r.status < 500
    assert r.header("Content-Type") == JSON
    assert set(r.json()) == {"code", "message", "region", "path"}
