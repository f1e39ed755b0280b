"""docs/k2v-api.md §8: InsertBatch, ReadBatch, DeleteBatch and the JSON conventions."""

from __future__ import annotations

import json

import pytest

from tests.support.k2v import (
    BUCKET,
    EMPTY_TOKEN,
    JSON,
    TOKEN,
    assert_error,
    assert_partition_empty,
    b64,
    delete,
    encode_token,
    insert_batch,
    new_pk,
    partition,
    put,
    read_batch,
    read_json,
    token_of,
)


def _post(k2v, body, query: str = ""):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return k2v.request("POST", f"/{BUCKET}", query, raw)


# ---- InsertBatch -------------------------------------------------------------------------------


def test_insert_batch_several_partitions(k2v, pk):
    other = new_pk()
    r = _post(
        k2v,
        [
            {"pk": pk, "sk": "a", "v": b64("1")},
            {"pk": pk, "sk": "b", "v": b64("2")},
            {"pk": other, "sk": "a", "v": b64("3")},
        ],
    )
    assert (r.status, r.body) == (204, b"")
    assert r.header(TOKEN) is None
    assert partition(k2v, pk) == {"a": [b64("1")], "b": [b64("2")]}
    assert partition(k2v, other) == {"a": [b64("3")]}


def test_insert_batch_empty_list(k2v):
    r = _post(k2v, [])
    assert (r.status, r.body) == (204, b"")


@pytest.mark.parametrize("item", [{"v": None}, {}])
def test_insert_batch_absent_or_null_v_is_tombstone(k2v, pk, item):
    put(k2v, pk, "s", b"old")
    insert_batch(k2v, [{"pk": pk, "sk": "s", "ct": token_of(k2v, pk, "s"), **item}])
    assert partition(k2v, pk) == {"s": [None]}
    insert_batch(k2v, [{"pk": pk, "sk": "new", **item}])
    assert partition(k2v, pk) == {"new": [None], "s": [None]}


def test_insert_batch_null_ct_and_v(k2v, pk):
    put(k2v, pk, "s", b"old")
    insert_batch(k2v, [{"pk": pk, "sk": "s", "ct": None, "v": None}])
    assert partition(k2v, pk) == {"s": [b64("old"), None]}


def test_insert_batch_without_ct_is_concurrent(k2v, pk):
    put(k2v, pk, "s", b"old")
    insert_batch(k2v, [{"pk": pk, "sk": "s", "v": b64("new")}])
    assert partition(k2v, pk) == {"s": [b64("old"), b64("new")]}
    insert_batch(k2v, [{"pk": pk, "sk": "s", "ct": None, "v": b64("newer")}])
    assert partition(k2v, pk) == {"s": [b64("old"), b64("new"), b64("newer")]}


def test_insert_batch_with_ct_supersedes(k2v, pk):
    put(k2v, pk, "s", b"old")
    insert_batch(k2v, [{"pk": pk, "sk": "s", "ct": token_of(k2v, pk, "s"), "v": b64("new")}])
    assert partition(k2v, pk) == {"s": [b64("new")]}


def test_insert_batch_empty_value_and_empty_sort_key(k2v, pk):
    insert_batch(k2v, [{"pk": pk, "sk": "", "v": ""}, {"pk": pk, "sk": "x", "v": b64(b"\x00")}])
    assert partition(k2v, pk) == {"": [""], "x": ["AA=="]}
    res = read_batch(k2v, [{"partitionKey": pk, "singleItem": True, "start": ""}])[0]
    assert [i["sk"] for i in res["items"]] == [""]


def test_insert_batch_unknown_fields_ignored(k2v, pk):
    insert_batch(k2v, [{"pk": pk, "sk": "s", "v": b64("x"), "extra": [1, 2], "value": "nope", "PK": 3}])
    assert partition(k2v, pk) == {"s": [b64("x")]}


@pytest.mark.parametrize(
    "v", ["not base64!", "YQ", "YQ=", "YR==", "YWI=x", "Y Q==", "YQ==\n", "-_8=", "====", "YWJj=", "YW\nJj"]
)
def test_insert_batch_bad_base64_writes_nothing(k2v, pk, v):
    r = _post(k2v, [{"pk": pk, "sk": "good", "v": b64("ok")}, {"pk": pk, "sk": "bad", "v": v}])
    assert_error(r, 400, "InvalidRequest")
    assert_partition_empty(k2v, pk)


@pytest.mark.parametrize(
    "ct", ["!!", "AAAA", encode_token([(1, 2)], checksum=5), encode_token([(1, 2)], pad=True) + "=", ""]
)
def test_insert_batch_bad_ct_writes_nothing(k2v, pk, ct):
    r = _post(k2v, [{"pk": pk, "sk": "good", "v": b64("ok")}, {"pk": pk, "sk": "bad", "ct": ct, "v": b64("x")}])
    assert_error(r, 400, "CausalityToken", message="Invalid causality token")
    assert_partition_empty(k2v, pk)


def test_insert_batch_bad_item_after_good_partition_writes_nothing(k2v, pk):
    other = new_pk()
    r = _post(k2v, [{"pk": other, "sk": "a", "v": b64("x")}, {"pk": pk, "sk": 5, "v": b64("x")}])
    assert_error(r, 400, "InvalidRequest")
    assert_partition_empty(k2v, other)


@pytest.mark.parametrize(
    "item",
    [
        {"sk": "s", "v": "dg=="},
        {"pk": "P", "v": "dg=="},
        {"pk": None, "sk": "s"},
        {"pk": "P", "sk": None},
        {"pk": 1, "sk": "s"},
        {"pk": "P", "sk": ["s"]},
        {"pk": "P", "sk": True},
        {"pk": "P", "sk": "s", "v": 12},
        {"pk": "P", "sk": "s", "v": True},
        {"pk": "P", "sk": "s", "ct": 0},
        {"pk": "P", "sk": "s", "ct": ["AAAAAAAAAAA"]},
        {"partitionKey": "P", "sortKey": "s", "v": "dg=="},
    ],
)
def test_insert_batch_missing_or_wrong_types(k2v, pk, item):
    item = {k: (pk if v == "P" else v) for k, v in item.items()}
    r = _post(k2v, [{"pk": pk, "sk": "good", "v": b64("ok")}, item])
    assert_error(r, 400, "InvalidRequest", prefix="Bad request: Invalid JSON")
    assert_partition_empty(k2v, pk)


@pytest.mark.parametrize("body", [{"pk": "x", "sk": "y"}, "text", 3, None, [["pk", "sk"]], [None], ["item"]])
def test_insert_batch_wrong_shapes(k2v, body):
    r = _post(k2v, body)
    assert_error(r, 400, "InvalidRequest", prefix="Bad request: Invalid JSON")


@pytest.mark.parametrize("raw", [b"", b"[", b"[{]", b"{'pk': 1}", b"[1,]", b"\xff\xfe", b"nul", b"[] []"])
def test_malformed_json_bodies(k2v, raw):
    for query in ("", "search", "delete"):
        r = _post(k2v, raw, query)
        assert_error(r, 400, "InvalidRequest", prefix="Bad request: Invalid JSON")


# ---- ReadBatch ---------------------------------------------------------------------------------

DEFAULT_ECHO = {
    "prefix": None,
    "start": None,
    "end": None,
    "limit": None,
    "reverse": False,
    "singleItem": False,
    "conflictsOnly": False,
    "tombstones": False,
}


def test_read_batch_echo_defaults_and_item_format(k2v, pk):
    put(k2v, pk, "s", b"v")
    token = token_of(k2v, pk, "s")
    r = _post(k2v, [{"partitionKey": pk}], "search")
    assert r.status == 200
    assert r.header("Content-Type") == JSON
    assert r.header(TOKEN) is None
    assert r.json() == [
        {
            "partitionKey": pk,
            **DEFAULT_ECHO,
            "items": [{"sk": "s", "ct": token, "v": [b64("v")]}],
            "more": False,
            "nextStart": None,
        }
    ]


def test_read_batch_echo_given_fields(k2v, pk):
    q = {
        "partitionKey": pk,
        "prefix": "p",
        "start": "p1",
        "end": "p9",
        "limit": 7,
        "reverse": False,
        "singleItem": False,
        "conflictsOnly": True,
        "tombstones": True,
    }
    assert read_batch(k2v, [q]) == [{**q, "items": [], "more": False, "nextStart": None}]
    q2 = {"partitionKey": pk, "start": "x", "singleItem": True, "tombstones": True}
    assert read_batch(k2v, [q2]) == [{**DEFAULT_ECHO, **q2, "items": [], "more": False, "nextStart": None}]


def test_read_batch_keeps_query_order(k2v):
    pks = [new_pk() for _ in range(4)]
    for i, p in enumerate(pks):
        put(k2v, p, "s", str(i).encode())
    order = [pks[2], pks[0], new_pk("missing"), pks[3], pks[0], pks[1]]
    res = read_batch(k2v, [{"partitionKey": p} for p in order])
    assert [r["partitionKey"] for r in res] == order
    assert [[i["v"] for i in r["items"]] for r in res] == [
        [[b64("2")]],
        [[b64("0")]],
        [],
        [[b64("3")]],
        [[b64("0")]],
        [[b64("1")]],
    ]


def test_read_batch_empty_list(k2v):
    assert read_batch(k2v, []) == []


def test_search_method_is_read_batch(k2v, pk):
    put(k2v, pk, "s", b"v")
    r = k2v.json("SEARCH", f"/{BUCKET}", [{"partitionKey": pk}])
    assert r.status == 200
    assert r.json() == read_batch(k2v, [{"partitionKey": pk}])


def test_read_batch_explicit_nulls_like_the_rust_client(k2v, pk):
    put(k2v, pk, "s", b"v")
    body = [
        {
            "partitionKey": pk,
            "start": None,
            "end": None,
            "prefix": None,
            "limit": None,
            "reverse": False,
            "singleItem": False,
            "conflictsOnly": False,
            "tombstones": False,
        }
    ]
    r = k2v.json("POST", f"/{BUCKET}", body, query="search=")
    assert r.status == 200, r.body
    assert [i["sk"] for i in r.json()[0]["items"]] == ["s"]


def test_read_batch_unknown_fields_ignored(k2v, pk):
    put(k2v, pk, "s", b"v")
    res = read_batch(k2v, [{"partitionKey": pk, "partition_key": "other", "foo": {"bar": 1}, "Limit": "x"}])
    assert [i["sk"] for i in res[0]["items"]] == ["s"]
    assert "foo" not in res[0]


@pytest.mark.parametrize("field", ["reverse", "singleItem", "conflictsOnly", "tombstones"])
def test_read_batch_null_boolean_rejected(k2v, pk, field):
    r = _post(k2v, [{"partitionKey": pk, field: None}], "search")
    assert_error(r, 400, "InvalidRequest", prefix="Bad request: Invalid JSON")


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"partition_key": "x"},
        {"partitionKey": None},
        {"partitionKey": 1},
        {"partitionKey": "P", "limit": -1},
        {"partitionKey": "P", "limit": 1.5},
        {"partitionKey": "P", "limit": "3"},
        {"partitionKey": "P", "limit": True},
        {"partitionKey": "P", "reverse": "true"},
        {"partitionKey": "P", "reverse": 1},
        {"partitionKey": "P", "tombstones": 0},
        {"partitionKey": "P", "prefix": 5},
        {"partitionKey": "P", "start": ["a"]},
        {"partitionKey": "P", "end": {}},
    ],
)
def test_read_batch_wrong_types(k2v, pk, query):
    query = {k: (pk if v == "P" else v) for k, v in query.items()}
    r = _post(k2v, [query], "search")
    assert_error(r, 400, "InvalidRequest", prefix="Bad request: Invalid JSON")


@pytest.mark.parametrize("body", [{"partitionKey": "x"}, "x", [1], [None], [[]]])
def test_read_batch_wrong_shapes(k2v, body):
    assert_error(_post(k2v, body, "search"), 400, "InvalidRequest")


def test_one_failing_query_fails_the_request(k2v, pk):
    put(k2v, pk, "s", b"v")
    r = _post(k2v, [{"partitionKey": pk}, {"partitionKey": pk, "prefix": "a", "start": "b"}], "search")
    assert_error(r, 400, "InvalidRequest", message="does not start with prefix")


# singleItem


def test_single_item(k2v, pk):
    put(k2v, pk, "a", b"1")
    put(k2v, pk, "b", b"2")
    token = token_of(k2v, pk, "b")
    res = read_batch(
        k2v,
        [
            {"partitionKey": pk, "singleItem": True, "start": "b"},
            {"partitionKey": pk, "singleItem": True, "start": "zz"},
            {
                "partitionKey": pk,
                "singleItem": True,
                "start": "a",
                "limit": None,
                "reverse": False,
                "prefix": None,
                "end": None,
            },
        ],
    )
    assert res[0]["items"] == [{"sk": "b", "ct": token, "v": [b64("2")]}]
    assert (res[0]["more"], res[0]["nextStart"]) == (False, None)
    assert res[1]["items"] == []
    assert (res[1]["more"], res[1]["nextStart"]) == (False, None)
    assert [i["sk"] for i in res[2]["items"]] == ["a"]


def test_single_item_filters(k2v, pk):
    put(k2v, pk, "t", b"x")
    delete(k2v, pk, "t", token_of(k2v, pk, "t"))
    put(k2v, pk, "c", b"1")
    put(k2v, pk, "c", b"2")
    put(k2v, pk, "v", b"plain")
    res = read_batch(
        k2v,
        [
            {"partitionKey": pk, "singleItem": True, "start": "t"},
            {"partitionKey": pk, "singleItem": True, "start": "t", "tombstones": True},
            {"partitionKey": pk, "singleItem": True, "start": "c", "conflictsOnly": True},
            {"partitionKey": pk, "singleItem": True, "start": "v", "conflictsOnly": True},
            {"partitionKey": pk, "singleItem": True, "start": "v", "conflictsOnly": False},
        ],
    )
    assert res[0]["items"] == []
    assert [i["v"] for i in res[1]["items"]] == [[None]]
    assert [i["v"] for i in res[2]["items"]] == [[b64("1"), b64("2")]]
    assert res[3]["items"] == []
    assert [i["v"] for i in res[4]["items"]] == [[b64("plain")]]


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"start": None},
        {"start": "a", "prefix": "a"},
        {"start": "a", "end": "b"},
        {"start": "a", "limit": 1},
        {"start": "a", "limit": 0},
        {"start": "a", "reverse": True},
    ],
)
def test_single_item_invalid_combinations(k2v, pk, extra):
    r = _post(k2v, [{"partitionKey": pk, "singleItem": True, **extra}], "search")
    assert_error(r, 400, "InvalidRequest")


# tombstones / conflictsOnly


def test_tombstones_and_conflicts_filters(k2v, pk):
    put(k2v, pk, "live", b"x")
    put(k2v, pk, "dead", b"x")
    delete(k2v, pk, "dead", token_of(k2v, pk, "dead"))
    put(k2v, pk, "conflict", b"1")
    put(k2v, pk, "conflict", b"2")
    put(k2v, pk, "half", b"x")
    delete(k2v, pk, "half")  # [x, null]: a conflict, and not all-tombstone
    put(k2v, pk, "same", b"dup")
    put(k2v, pk, "same", b"dup")  # identical concurrent values: one distinct value
    delete(k2v, pk, "dead2")
    delete(k2v, pk, "dead2")  # two tombstones: one distinct value

    def sks(**kw):
        return [i["sk"] for i in read_batch(k2v, [{"partitionKey": pk, **kw}])[0]["items"]]

    assert sks() == ["conflict", "half", "live", "same"]
    assert sks(tombstones=True) == ["conflict", "dead", "dead2", "half", "live", "same"]
    assert sks(conflictsOnly=True) == ["conflict", "half"]
    assert sks(conflictsOnly=True, tombstones=True) == ["conflict", "half"]
    res = read_batch(k2v, [{"partitionKey": pk, "tombstones": True, "prefix": "dead"}])[0]
    assert [i["v"] for i in res["items"]] == [[None], [None]]


def test_nonexistent_partition_is_empty(k2v):
    res = read_batch(k2v, [{"partitionKey": new_pk("nothing"), "tombstones": True, "limit": 0}])[0]
    assert (res["items"], res["more"], res["nextStart"]) == ([], False, None)


# ---- DeleteBatch -------------------------------------------------------------------------------


def test_delete_batch_range_counts_live_items(k2v, pk):
    for k in ("a", "b", "c", "d", "e"):
        put(k2v, pk, k, k.encode())
    delete(k2v, pk, "b", token_of(k2v, pk, "b"))  # already a tombstone: not counted
    put(k2v, pk, "c", b"c2")  # a conflict counts once
    r = _post(k2v, [{"partitionKey": pk, "start": "b", "end": "e"}], "delete")
    assert r.status == 200, r.body
    assert r.header("Content-Type") == JSON
    assert r.json() == [
        {"partitionKey": pk, "prefix": None, "start": "b", "end": "e", "singleItem": False, "deletedItems": 2}
    ]
    # Every value read is superseded: c's two values included.
    assert partition(k2v, pk) == {"a": [b64("a")], "b": [None], "c": [None], "d": [None], "e": [b64("e")]}


def test_delete_batch_whole_partition_and_prefix(k2v, pk):
    other = new_pk()
    for k in ("x1", "x2", "y1"):
        put(k2v, pk, k, b"v")
        put(k2v, other, k, b"v")
    res = _post(
        k2v, [{"partitionKey": pk, "prefix": "x"}, {"partitionKey": other}, {"partitionKey": new_pk("none")}], "delete"
    ).json()
    assert [r["deletedItems"] for r in res] == [2, 3, 0]
    assert res[0] == {
        "partitionKey": pk,
        "prefix": "x",
        "start": None,
        "end": None,
        "singleItem": False,
        "deletedItems": 2,
    }
    assert partition(k2v, pk) == {"x1": [None], "x2": [None], "y1": [b64("v")]}
    assert partition(k2v, other) == {"x1": [None], "x2": [None], "y1": [None]}
    # Deleting again deletes nothing live.
    res = _post(k2v, [{"partitionKey": pk}], "delete").json()
    assert res[0]["deletedItems"] == 1


def test_delete_batch_ignores_other_fields(k2v, pk):
    for k in ("a", "b", "c"):
        put(k2v, pk, k, b"v")
    body = [{"partitionKey": pk, "limit": 1, "reverse": True, "tombstones": None, "conflictsOnly": "x", "foo": 1}]
    r = _post(k2v, body, "delete")
    assert r.status == 200, r.body
    assert r.json() == [
        {"partitionKey": pk, "prefix": None, "start": None, "end": None, "singleItem": False, "deletedItems": 3}
    ]
    assert partition(k2v, pk) == {"a": [None], "b": [None], "c": [None]}


def test_delete_batch_single_item(k2v, pk):
    put(k2v, pk, "a", b"v")
    put(k2v, pk, "ab", b"v")
    body = [{"partitionKey": pk, "singleItem": True, "start": "a", "limit": 5, "reverse": True}]
    res = _post(k2v, body, "delete").json()
    assert res == [
        {"partitionKey": pk, "prefix": None, "start": "a", "end": None, "singleItem": True, "deletedItems": 1}
    ]
    assert partition(k2v, pk) == {"a": [None], "ab": [b64("v")]}
    assert _post(k2v, body, "delete").json()[0]["deletedItems"] == 0
    assert (
        _post(k2v, [{"partitionKey": pk, "singleItem": True, "start": "zz"}], "delete").json()[0]["deletedItems"] == 0
    )


@pytest.mark.parametrize("extra", [{}, {"start": None}, {"start": "a", "prefix": "a"}, {"start": "a", "end": "b"}])
def test_delete_batch_single_item_invalid(k2v, pk, extra):
    put(k2v, pk, "a", b"v")
    r = _post(k2v, [{"partitionKey": pk, "singleItem": True, **extra}], "delete")
    assert_error(r, 400, "InvalidRequest")
    assert partition(k2v, pk) == {"a": [b64("v")]}


def test_delete_batch_bad_query_deletes_nothing(k2v, pk):
    put(k2v, pk, "a", b"v")
    r = _post(k2v, [{"partitionKey": pk}, {"partitionKey": pk, "singleItem": None}], "delete")
    assert_error(r, 400, "InvalidRequest")
    r = _post(k2v, [{"partitionKey": pk}, {"partition_key": pk}], "delete")
    assert_error(r, 400, "InvalidRequest")
    r = _post(k2v, [{"partitionKey": pk}, {"partitionKey": pk, "prefix": "b", "start": "a"}], "delete")
    assert_error(r, 400, "InvalidRequest")
    assert partition(k2v, pk) == {"a": [b64("v")]}


def test_delete_batch_explicit_nulls(k2v, pk):
    put(k2v, pk, "a", b"v")
    body = [{"partitionKey": pk, "prefix": None, "start": None, "end": None, "singleItem": False}]
    r = k2v.json("POST", f"/{BUCKET}", body, query="delete=")
    assert r.status == 200, r.body
    assert r.json()[0]["deletedItems"] == 1


def test_delete_batch_tombstone_supersedes_only_what_it_read(k2v, pk):
    put(k2v, pk, "a", b"v")
    _post(k2v, [{"partitionKey": pk}], "delete")
    values, token = read_json(k2v, pk, "a")
    assert values == [None]
    # A write with the token of the tombstone replaces it.
    put(k2v, pk, "a", b"back", token=token)
    assert partition(k2v, pk) == {"a": [b64("back")]}


def test_empty_token_in_batch_is_valid(k2v, pk):
    insert_batch(k2v, [{"pk": pk, "sk": "s", "ct": EMPTY_TOKEN, "v": b64("x")}])
    assert partition(k2v, pk) == {"s": [b64("x")]}


# ---- strings that are not Unicode, bodies that are not JSON ------------------------------------


@pytest.mark.parametrize(
    "query,body",
    [
        ("", b'[{"pk": "PK", "sk": "good", "v": "dg=="}, {"pk": "\\ud800", "sk": "b", "v": "dg=="}]'),
        ("", b'[{"pk": "PK", "sk": "good", "v": "dg=="}, {"pk": "PK", "sk": "x\\udfff", "v": "dg=="}]'),
        ("", b'[{"pk": "PK", "sk": "good", "v": "dg=="}, {"pk": "PK", "sk": "b", "ct": "\\ud800"}]'),
        ("", b'[{"pk": "PK", "sk": "good", "v": "dg=="}, {"pk": "PK", "sk": "b", "v": "\\ud800"}]'),
        ("search", b'[{"partitionKey": "\\ud800"}]'),
        ("search", b'[{"partitionKey": "PK", "start": "\\udfff"}]'),
        ("search", b'[{"partitionKey": "PK", "prefix": "a\\ud83d"}]'),
        ("search", b'[{"partitionKey": "PK", "end": "\\ude00"}]'),
        ("delete", b'[{"partitionKey": "PK", "start": "\\udfff"}]'),
    ],
)
def test_lone_surrogates_are_invalid_json_strings(k2v, pk, query, body):
    put(k2v, pk, "a", b"v")
    r = _post(k2v, body.replace(b"PK", pk.encode()), query)
    assert_error(r, 400, "InvalidRequest", prefix="Bad request: Invalid JSON")
    assert partition(k2v, pk) == {"a": [b64("v")]}


def test_escaped_surrogate_pair_is_fine(k2v, pk):
    insert_batch(k2v, [{"pk": pk, "sk": "\U0001f600", "v": b64("v")}])
    r = _post(k2v, f'[{{"partitionKey": "{pk}", "start": "\\ud83d\\ude00", "singleItem": true}}]'.encode(), "search")
    assert r.status == 200
    assert [i["sk"] for i in r.json()[0]["items"]] == ["\U0001f600"]


@pytest.mark.parametrize("kind", ["NaN", "-Infinity", "utf-16", "utf-32"])
def test_non_json_bodies_python_accepts(k2v, pk, kind):
    if kind.startswith("utf"):
        raw = json.dumps([{"pk": pk, "sk": "s", "v": "dg=="}]).encode(kind)
    else:
        raw = f'[{{"pk": "{pk}", "sk": "s", "v": "dg==", "extra": {kind}}}]'.encode()
    r = _post(k2v, raw)
    assert_error(r, 400, "InvalidRequest", prefix="Bad request: Invalid JSON")
    assert_partition_empty(k2v, pk)


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", "application/x-www-form-urlencoded"])
def test_content_type_of_json_bodies_is_irrelevant(k2v, pk, content_type):
    body = json.dumps([{"pk": pk, "sk": "s", "v": b64("x")}]).encode()
    r = k2v.request("POST", f"/{BUCKET}", "", body, headers={"Content-Type": content_type})
    assert r.status == 204, r.body
    r = k2v.request(
        "POST",
        f"/{BUCKET}",
        "search",
        json.dumps([{"partitionKey": pk}]).encode(),
        headers={"Content-Type": content_type},
    )
    assert r.status == 200
    assert [i["sk"] for i in r.json()[0]["items"]] == ["s"]
