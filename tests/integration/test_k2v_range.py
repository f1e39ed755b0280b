"""docs/k2v-api.md §7: range rules, through ReadBatch (sort keys) and ReadIndex (partition keys)."""

from __future__ import annotations

import uuid

import pytest

from tests.support import wait_for
from tests.support.k2v import (
    assert_error,
    b64,
    delete,
    insert_batch,
    put,
    q,
    read_batch,
    token_of,
)

KEYS = ["a", "b", "c", "d.1", "d.2", "e"]

# (query, expected keys, more, nextStart)
CASES = [
    ({}, KEYS, False, None),
    ({"prefix": "d."}, ["d.1", "d.2"], False, None),
    ({"prefix": "d"}, ["d.1", "d.2"], False, None),
    ({"prefix": "x"}, [], False, None),
    ({"prefix": "d.1"}, ["d.1"], False, None),
    ({"start": "c"}, ["c", "d.1", "d.2", "e"], False, None),
    ({"start": "bb"}, ["c", "d.1", "d.2", "e"], False, None),
    ({"start": "c", "end": "d.2"}, ["c", "d.1"], False, None),
    ({"end": "c"}, ["a", "b"], False, None),
    ({"end": "a"}, [], False, None),
    ({"start": "c", "end": "c"}, [], False, None),
    ({"prefix": "d", "start": "d.2"}, ["d.2"], False, None),
    ({"prefix": "d", "end": "d.2"}, ["d.1"], False, None),
    ({"prefix": "d", "end": "z"}, ["d.1", "d.2"], False, None),
    ({"reverse": True}, KEYS[::-1], False, None),
    ({"reverse": True, "start": "c", "end": "a"}, ["c", "b"], False, None),
    ({"reverse": True, "start": "c"}, ["c", "b", "a"], False, None),
    ({"reverse": True, "start": "cz"}, ["c", "b", "a"], False, None),
    ({"reverse": True, "end": "c"}, ["e", "d.2", "d.1"], False, None),
    ({"reverse": True, "prefix": "d"}, ["d.2", "d.1"], False, None),
    ({"reverse": True, "prefix": "d."}, ["d.2", "d.1"], False, None),
    ({"reverse": True, "prefix": "d", "end": "d.1"}, ["d.2"], False, None),
    ({"reverse": True, "prefix": "d", "start": "d.1"}, ["d.1"], False, None),
    ({"reverse": True, "prefix": "c"}, ["c"], False, None),
    ({"reverse": True, "prefix": "e"}, ["e"], False, None),
    ({"reverse": True, "prefix": "a"}, ["a"], False, None),
    ({"limit": 2}, ["a", "b"], True, "c"),
    ({"limit": 2, "start": "c"}, ["c", "d.1"], True, "d.2"),
    ({"limit": 5}, KEYS[:5], True, "e"),
    ({"limit": 6}, KEYS, False, None),
    ({"limit": 100}, KEYS, False, None),
    ({"limit": 2, "reverse": True}, ["e", "d.2"], True, "d.1"),
    ({"limit": 1, "reverse": True, "start": "c", "end": "a"}, ["c"], True, "b"),
    ({"limit": 2, "reverse": True, "start": "c", "end": "a"}, ["c", "b"], False, None),
    ({"limit": 1, "prefix": "d"}, ["d.1"], True, "d.2"),
    ({"limit": 2, "prefix": "d"}, ["d.1", "d.2"], False, None),
    ({"limit": 1, "prefix": "d", "reverse": True}, ["d.2"], True, "d.1"),
    ({"limit": 2, "end": "c"}, ["a", "b"], False, None),
    ({"limit": 0}, [], True, "a"),
    ({"limit": 0, "start": "c"}, [], True, "c"),
    ({"limit": 0, "reverse": True}, [], True, "e"),
    ({"limit": 0, "prefix": "x"}, [], False, None),
    ({"limit": 0, "end": "a"}, [], False, None),
]


def _ids(cases):
    return [",".join(f"{k}={v}" for k, v in c[0].items()) or "all" for c in cases]


@pytest.fixture(scope="module")
def range_pk(k2v) -> str:
    pk = f"range-{uuid.uuid4().hex[:8]}"
    insert_batch(k2v, [{"pk": pk, "sk": k, "v": b64(k)} for k in KEYS])
    return pk


@pytest.fixture(scope="module")
def index_bucket(node, creds, k2v) -> str:
    """A bucket of its own whose partition keys are exactly KEYS (ReadIndex counts per bucket)."""
    name = f"range-index-{uuid.uuid4().hex[:8]}"
    node.admin("bucket.create", {"name": name})
    node.admin(
        "bucket.permissions", {"bucket": name, "key": creds["access_key"], "allow": True, "read": True, "write": True}
    )
    insert_batch(k2v, [{"pk": k, "sk": "x", "v": b64(k)} for k in KEYS], bucket=name)

    def ready():
        r = k2v.request("GET", f"/{name}")
        return [p["pk"] for p in r.json()["partitionKeys"]] == KEYS

    wait_for(ready, timeout=10)
    return name


@pytest.mark.parametrize("query,keys,more,next_start", CASES, ids=_ids(CASES))
def test_read_batch_range(k2v, range_pk, query, keys, more, next_start):
    res = read_batch(k2v, [{"partitionKey": range_pk, **query}])[0]
    assert [i["sk"] for i in res["items"]] == keys
    assert [i["v"] for i in res["items"]] == [[b64(k)] for k in keys]
    assert res["more"] is more
    assert res["nextStart"] == next_start


def _index_query(query: dict) -> str:
    parts = []
    for k, v in query.items():
        parts.append(f"{k}={str(v).lower() if isinstance(v, bool) else q(str(v))}")
    return "&".join(parts)


@pytest.mark.parametrize("query,keys,more,next_start", CASES, ids=_ids(CASES))
def test_read_index_range(k2v, index_bucket, query, keys, more, next_start):
    r = k2v.request("GET", f"/{index_bucket}", _index_query(query))
    assert r.status == 200, r.body
    body = r.json()
    assert [p["pk"] for p in body["partitionKeys"]] == keys
    assert body["more"] is more
    assert body["nextStart"] == next_start


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("limit", [1, 2, 4])
def test_paging_with_next_start(k2v, range_pk, index_bucket, reverse, limit):
    seen, start = [], None
    while True:
        query = {"partitionKey": range_pk, "limit": limit, "reverse": reverse, "start": start}
        res = read_batch(k2v, [query])[0]
        seen += [i["sk"] for i in res["items"]]
        if not res["more"]:
            assert res["nextStart"] is None
            break
        start = res["nextStart"]
    assert seen == (KEYS[::-1] if reverse else KEYS)

    seen, start = [], None
    while True:
        query = {"limit": limit, "reverse": reverse} | ({"start": start} if start else {})
        body = k2v.request("GET", f"/{index_bucket}", _index_query(query)).json()
        seen += [p["pk"] for p in body["partitionKeys"]]
        if not body["more"]:
            break
        start = body["nextStart"]
    assert seen == (KEYS[::-1] if reverse else KEYS)


@pytest.mark.parametrize("prefix,start", [("d", "c"), ("d.", "d"), ("b", "a"), ("abc", "ab")])
def test_start_not_in_prefix(k2v, range_pk, index_bucket, prefix, start):
    r = k2v.json("POST", "/test-bucket", [{"partitionKey": range_pk, "prefix": prefix, "start": start}], query="search")
    assert_error(r, 400, "InvalidRequest", message=f"Start key '{start}' does not start with prefix '{prefix}'")
    r = k2v.request("GET", f"/{index_bucket}", f"prefix={q(prefix)}&start={q(start)}")
    assert_error(r, 400, "InvalidRequest", message=f"Start key '{start}' does not start with prefix '{prefix}'")
    r = k2v.json("POST", "/test-bucket", [{"partitionKey": range_pk, "prefix": prefix, "start": start}], query="delete")
    assert_error(r, 400, "InvalidRequest", message="does not start with prefix")
    assert len(read_batch(k2v, [{"partitionKey": range_pk}])[0]["items"]) == len(KEYS)


def test_start_not_in_prefix_reverse(k2v, range_pk):
    r = k2v.json(
        "POST",
        "/test-bucket",
        [{"partitionKey": range_pk, "prefix": "d", "start": "e", "reverse": True}],
        query="search",
    )
    assert_error(r, 400, "InvalidRequest", message="does not start with prefix")


# ---- filters before limit ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def filter_pk(k2v) -> str:
    """a: value, b: tombstone, c: value, d: conflict (two values), e: value + tombstone, f: value."""
    pk = f"filters-{uuid.uuid4().hex[:8]}"
    for k in "abcdef":
        put(k2v, pk, k, k.encode())
    delete(k2v, pk, "b", token_of(k2v, pk, "b"))
    put(k2v, pk, "d", b"d2")
    delete(k2v, pk, "e")
    return pk


@pytest.mark.parametrize(
    "query,keys,more,next_start",
    [
        ({}, ["a", "c", "d", "e", "f"], False, None),
        ({"tombstones": True}, ["a", "b", "c", "d", "e", "f"], False, None),
        ({"limit": 2}, ["a", "c"], True, "d"),
        ({"limit": 2, "tombstones": True}, ["a", "b"], True, "c"),
        ({"limit": 1, "start": "b"}, ["c"], True, "d"),
        ({"conflictsOnly": True}, ["d", "e"], False, None),
        ({"conflictsOnly": True, "limit": 1}, ["d"], True, "e"),
        ({"conflictsOnly": True, "limit": 2}, ["d", "e"], False, None),
        ({"conflictsOnly": True, "reverse": True, "limit": 1}, ["e"], True, "d"),
        ({"reverse": True, "limit": 2, "end": "a"}, ["f", "e"], True, "d"),
        ({"reverse": True, "start": "c", "limit": 1}, ["c"], True, "a"),
        ({"reverse": True, "start": "c", "limit": 1, "tombstones": True}, ["c"], True, "b"),
    ],
)
def test_filters_apply_before_limit(k2v, filter_pk, query, keys, more, next_start):
    res = read_batch(k2v, [{"partitionKey": filter_pk, **query}])[0]
    assert [i["sk"] for i in res["items"]] == keys
    assert res["more"] is more
    assert res["nextStart"] == next_start


# ---- code-point order --------------------------------------------------------------------------

UNICODE_KEYS = [
    "Z",
    "a",
    "a\u0000b",
    "ab",
    "z",
    "\u00e9",
    "\u00e9t\u00e9",
    "\u20ac",
    "\ufb01",
    "\uffee",
    "\U0001f600",
    "\U0001f600\U0001f600",
    "\U0010fff0",
]


@pytest.fixture(scope="module")
def unicode_pk(k2v) -> str:
    pk = f"uni-{uuid.uuid4().hex[:8]}"
    insert_batch(k2v, [{"pk": pk, "sk": k, "v": b64(k.encode())} for k in reversed(UNICODE_KEYS)])
    return pk


def test_unicode_keys_are_in_code_point_order(k2v, unicode_pk):
    assert sorted(UNICODE_KEYS) == UNICODE_KEYS
    # UTF-16 order would put the astral U+1F600 before U+FFEE: code-point order does not.
    assert "\uffee" < "\U0001f600"
    res = read_batch(k2v, [{"partitionKey": unicode_pk}])[0]
    assert [i["sk"] for i in res["items"]] == UNICODE_KEYS
    res = read_batch(k2v, [{"partitionKey": unicode_pk, "reverse": True}])[0]
    assert [i["sk"] for i in res["items"]] == UNICODE_KEYS[::-1]


@pytest.mark.parametrize(
    "query,keys",
    [
        ({"prefix": "\u00e9"}, ["\u00e9", "\u00e9t\u00e9"]),
        ({"prefix": "\u00e9", "reverse": True}, ["\u00e9t\u00e9", "\u00e9"]),
        ({"prefix": "\U0001f600", "reverse": True}, ["\U0001f600\U0001f600", "\U0001f600"]),
        ({"start": "\uffee", "end": "\U0010fff0"}, ["\uffee", "\U0001f600", "\U0001f600\U0001f600"]),
        ({"start": "\U0001f600", "reverse": True, "limit": 2}, ["\U0001f600", "\uffee"]),
        ({"prefix": "a"}, ["a", "a\u0000b", "ab"]),
        ({"end": "a\u0000"}, ["Z", "a"]),
    ],
)
def test_unicode_ranges(k2v, unicode_pk, query, keys):
    res = read_batch(k2v, [{"partitionKey": unicode_pk, **query}])[0]
    assert [i["sk"] for i in res["items"]] == keys


def test_unicode_partition_keys_in_index(node, creds, k2v):
    name = f"uni-index-{uuid.uuid4().hex[:8]}"
    node.admin("bucket.create", {"name": name})
    node.admin(
        "bucket.permissions", {"bucket": name, "key": creds["access_key"], "allow": True, "read": True, "write": True}
    )
    pks = [k for k in UNICODE_KEYS if "\u0000" not in k]
    insert_batch(k2v, [{"pk": k, "sk": "s", "v": b64("v")} for k in reversed(pks)], bucket=name)

    def listed():
        return [p["pk"] for p in k2v.request("GET", f"/{name}").json()["partitionKeys"]] == pks

    wait_for(listed, timeout=10)
    body = k2v.request("GET", f"/{name}", f"prefix={q(chr(0xE9))}&reverse=true").json()
    assert [p["pk"] for p in body["partitionKeys"]] == ["\u00e9t\u00e9", "\u00e9"]


def test_no_maximum_limit(k2v, range_pk, index_bucket):
    big = 2**64 - 1
    res = read_batch(k2v, [{"partitionKey": range_pk, "limit": big}])[0]
    assert [i["sk"] for i in res["items"]] == KEYS
    assert (res["limit"], res["more"]) == (big, False)
    body = k2v.request("GET", f"/{index_bucket}", f"limit={big}").json()
    assert [p["pk"] for p in body["partitionKeys"]] == KEYS
    assert body["limit"] == big


def test_reverse_reads_reach_the_empty_sort_key_once(k2v):
    """The empty sort key is the smallest: a reverse read from it returns it alone, and a reverse
    read whose internal page of 1000 ends on it stops there (it once started over from the top)."""
    pk = f"range-empty-{uuid.uuid4().hex[:8]}"
    keys = [""] + [f"k{i:04d}" for i in range(999)]
    insert_batch(k2v, [{"pk": pk, "sk": k, "v": b64("v")} for k in keys])
    res = read_batch(k2v, [{"partitionKey": pk, "start": "", "reverse": True}])[0]
    assert ([i["sk"] for i in res["items"]], res["more"], res["nextStart"]) == ([""], False, None)
    res = read_batch(k2v, [{"partitionKey": pk, "reverse": True}])[0]
    assert [i["sk"] for i in res["items"]] == keys[::-1]
    res = read_batch(k2v, [{"partitionKey": pk, "reverse": True, "limit": 1001}])[0]
    assert ([i["sk"] for i in res["items"]], res["more"]) == (keys[::-1], False)
    res = read_batch(k2v, [{"partitionKey": pk, "reverse": True, "start": "k0000", "limit": 1}])[0]
    assert ([i["sk"] for i in res["items"]], res["more"], res["nextStart"]) == (["k0000"], True, "")
