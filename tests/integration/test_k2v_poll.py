"""docs/k2v-api.md §8 PollRange (POST|SEARCH /b/<pk>?poll_range)."""

from __future__ import annotations

import time

import pytest

from tests.support import K2VHttp
from tests.support.k2v import (
    BUCKET,
    JSON,
    TOKEN,
    Background,
    assert_error,
    b64,
    delete,
    insert_batch,
    ipath,
    new_pk,
    put,
    token_of,
)


def poll(k2v, pk: str, body: dict | bytes, method: str = "POST", query: str = "poll_range", timeout: float = 30):
    if isinstance(body, dict):
        return k2v.json(method, ipath(pk), body, query=query, timeout=timeout)
    return k2v.request(method, ipath(pk), query, body, timeout=timeout)


def poll_ok(k2v, pk: str, body: dict, **kw) -> dict:
    r = poll(k2v, pk, body, **kw)
    assert r.status == 200, (r.status, r.body)
    assert r.header("Content-Type") == JSON
    assert r.header(TOKEN) is None
    res = r.json()
    assert set(res) == {"items", "seenMarker"}
    assert isinstance(res["seenMarker"], str) and res["seenMarker"]
    return res


def sks(res: dict) -> list[str]:
    return [i["sk"] for i in res["items"]]


# ---- without a marker --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "SEARCH"])
def test_first_poll_returns_everything_at_once(k2v, pk, method):
    put(k2v, pk, "b", b"2")
    put(k2v, pk, "a", b"1")
    put(k2v, pk, "c", b"3")
    delete(k2v, pk, "c", token_of(k2v, pk, "c"))
    put(k2v, pk, "d", b"x")
    put(k2v, pk, "d", b"y")
    t0 = time.monotonic()
    res = poll_ok(k2v, pk, {"timeout": 10}, method=method)
    assert time.monotonic() - t0 < 2
    assert res["items"] == [
        {"sk": "a", "ct": token_of(k2v, pk, "a"), "v": [b64("1")]},
        {"sk": "b", "ct": token_of(k2v, pk, "b"), "v": [b64("2")]},
        {"sk": "c", "ct": token_of(k2v, pk, "c"), "v": [None]},
        {"sk": "d", "ct": token_of(k2v, pk, "d"), "v": [b64("x"), b64("y")]},
    ]


def test_first_poll_on_empty_partition(k2v, pk):
    assert poll_ok(k2v, pk, {})["items"] == []


@pytest.mark.parametrize(
    "body",
    [
        b"{}",
        b'{"start": null, "end": null, "prefix": null, "seenMarker": null, "timeout": 300}',
        b'{"timeout": null}',
        b'{"unknown": [1, 2], "prefix": null}',
    ],
)
def test_valid_bodies(k2v, pk, body):
    put(k2v, pk, "a", b"1")
    r = poll(k2v, pk, body)
    assert r.status == 200, r.body
    assert sks(r.json()) == ["a"]


def test_range_fields(k2v, pk):
    for k in ("a", "b", "c", "d.1", "d.2", "e"):
        put(k2v, pk, k, k.encode())
    assert sks(poll_ok(k2v, pk, {"prefix": "d"})) == ["d.1", "d.2"]
    assert sks(poll_ok(k2v, pk, {"start": "b", "end": "d.2"})) == ["b", "c", "d.1"]
    assert sks(poll_ok(k2v, pk, {"prefix": "d", "start": "d.2"})) == ["d.2"]
    assert sks(poll_ok(k2v, pk, {"end": "a"})) == []


def test_first_poll_returns_the_whole_range(k2v, pk):
    items = [{"pk": pk, "sk": f"p/{i:05}", "v": b64("v")} for i in range(2100)]
    for i in range(0, len(items), 1000):
        insert_batch(k2v, items[i : i + 1000])
    insert_batch(k2v, [{"pk": pk, "sk": "o", "v": b64("v")}, {"pk": pk, "sk": "q", "v": b64("v")}])
    res = poll_ok(k2v, pk, {"prefix": "p/"})
    assert sks(res) == [i["sk"] for i in items]
    res = poll_ok(k2v, pk, {})
    assert len(res["items"]) == 2102


# ---- with a marker -----------------------------------------------------------------------------


def test_timeout_is_304(k2v, pk):
    put(k2v, pk, "a", b"1")
    marker = poll_ok(k2v, pk, {})["seenMarker"]
    t0 = time.monotonic()
    r = poll(k2v, pk, {"seenMarker": marker, "timeout": 1})
    assert r.status == 304
    assert r.body == b""
    assert r.header(TOKEN) is None
    assert 0.9 <= time.monotonic() - t0 < 5


def test_timeout_zero_is_clamped_to_one_second(k2v, pk):
    marker = poll_ok(k2v, pk, {})["seenMarker"]
    t0 = time.monotonic()
    r = poll(k2v, pk, {"seenMarker": marker, "timeout": 0})
    assert r.status == 304
    assert time.monotonic() - t0 >= 0.9


@pytest.mark.parametrize("method", ["POST", "SEARCH"])
def test_marker_blocks_until_a_change(k2v, pk, method):
    put(k2v, pk, "a", b"1")
    put(k2v, pk, "b", b"2")
    marker = poll_ok(k2v, pk, {})["seenMarker"]
    bg = Background(lambda: poll(k2v, pk, {"seenMarker": marker, "timeout": 10}, method=method))
    time.sleep(0.3)
    assert not bg.done(), "the poll returned before any change"
    put(k2v, pk, "c", b"3")
    r = bg.result()
    assert r.status == 200, r.body
    assert bg.elapsed < 5
    res = r.json()
    assert res["items"] == [{"sk": "c", "ct": token_of(k2v, pk, "c"), "v": [b64("3")]}]
    # The new marker has seen c: nothing new now.
    r = poll(k2v, pk, {"seenMarker": res["seenMarker"], "timeout": 1})
    assert r.status == 304


def test_marker_returns_changes_made_before_the_call(k2v, pk):
    put(k2v, pk, "a", b"1")
    put(k2v, pk, "b", b"2")
    marker = poll_ok(k2v, pk, {})["seenMarker"]
    put(k2v, pk, "b", b"2bis", token=token_of(k2v, pk, "b"))
    put(k2v, pk, "c", b"3")
    delete(k2v, pk, "a", token_of(k2v, pk, "a"))
    t0 = time.monotonic()
    res = poll_ok(k2v, pk, {"seenMarker": marker, "timeout": 10})
    assert time.monotonic() - t0 < 2
    assert [(i["sk"], i["v"]) for i in res["items"]] == [("a", [None]), ("b", [b64("2bis")]), ("c", [b64("3")])]


def test_changes_outside_the_range_do_not_wake(k2v, pk):
    put(k2v, pk, "in/1", b"1")
    marker = poll_ok(k2v, pk, {"prefix": "in/"})["seenMarker"]
    bg = Background(lambda: poll(k2v, pk, {"prefix": "in/", "seenMarker": marker, "timeout": 10}))
    time.sleep(0.2)
    put(k2v, pk, "out/1", b"x")
    put(k2v, pk, "in", b"x")
    put(k2v, new_pk(), "in/1", b"x")
    time.sleep(0.3)
    assert not bg.done(), "woken by a change outside its range"
    put(k2v, pk, "in/2", b"2")
    r = bg.result()
    assert r.status == 200
    assert sks(r.json()) == ["in/2"]


def test_start_end_range_with_marker(k2v, pk):
    marker = poll_ok(k2v, pk, {"start": "b", "end": "d"})["seenMarker"]
    put(k2v, pk, "a", b"x")
    put(k2v, pk, "d", b"x")
    r = poll(k2v, pk, {"start": "b", "end": "d", "seenMarker": marker, "timeout": 1})
    assert r.status == 304
    put(k2v, pk, "b", b"x")
    put(k2v, pk, "c", b"x")
    res = poll_ok(k2v, pk, {"start": "b", "end": "d", "seenMarker": marker, "timeout": 5})
    assert sks(res) == ["b", "c"]


def test_marker_reused_for_a_sub_range(k2v, pk):
    put(k2v, pk, "x/1", b"1")
    put(k2v, pk, "y/1", b"1")
    marker = poll_ok(k2v, pk, {})["seenMarker"]
    r = poll(k2v, pk, {"prefix": "x/", "seenMarker": marker, "timeout": 1})
    assert r.status == 304
    put(k2v, pk, "y/2", b"2")
    put(k2v, pk, "x/2", b"2")
    res = poll_ok(k2v, pk, {"prefix": "x/", "seenMarker": marker, "timeout": 5})
    assert sks(res) == ["x/2"]


def test_concurrent_write_seen_as_change(k2v, pk):
    put(k2v, pk, "a", b"1")
    marker = poll_ok(k2v, pk, {})["seenMarker"]
    insert_batch(k2v, [{"pk": pk, "sk": "a", "v": b64("2")}])  # no token: concurrent
    res = poll_ok(k2v, pk, {"seenMarker": marker, "timeout": 5})
    assert res["items"] == [{"sk": "a", "ct": token_of(k2v, pk, "a"), "v": [b64("1"), b64("2")]}]


@pytest.mark.parametrize("marker", ["", "!!!", "AAAA", "bm90IHpzdGQ=", "A" * 200, "eyJ4IjoxfQ"])
def test_bad_marker(k2v, pk, marker):
    r = poll(k2v, pk, {"seenMarker": marker, "timeout": 1})
    assert_error(r, 400, "InvalidRequest")


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b"null",
        b'"x"',
        b"not json",
        b"",
        b'{"timeout": "1"}',
        b'{"timeout": -1}',
        b'{"timeout": 1.5}',
        b'{"timeout": true}',
        b'{"prefix": 1}',
        b'{"start": []}',
        b'{"end": {}}',
        b'{"seenMarker": 5}',
        b'{"prefix": "b", "start": "a"}',
        b'{"prefix": "\\ud800"}',
    ],
)
def test_bad_bodies(k2v, pk, body):
    r = poll(k2v, pk, body)
    assert_error(r, 400, "InvalidRequest")


def test_read_only_key_may_poll_range(node, k2v, pk):
    key = node.admin("key.create", {"name": "poll-reader"})
    node.admin("bucket.permissions", {"bucket": BUCKET, "key": key["accessKeyId"], "allow": True, "read": True})
    reader = K2VHttp(k2v.host, key["accessKeyId"], key["secretAccessKey"])
    put(k2v, pk, "a", b"1")
    res = poll_ok(reader, pk, {})
    assert sks(res) == ["a"]
    bg = Background(lambda: poll(reader, pk, {"seenMarker": res["seenMarker"], "timeout": 10}))
    time.sleep(0.2)
    put(k2v, pk, "b", b"2")
    assert sks(bg.result().json()) == ["b"]


def test_poll_range_without_partition_key_is_invalid(k2v):
    for method in ("POST", "SEARCH"):
        r = k2v.request(method, f"/{BUCKET}", "poll_range", b"{}")
        assert_error(r, 400, "InvalidRequest", message="Invalid endpoint")


def test_non_empty_200_even_with_several_pollers(k2v, pk):
    marker = poll_ok(k2v, pk, {})["seenMarker"]
    pollers = [Background(lambda: poll(k2v, pk, {"seenMarker": marker, "timeout": 10})) for _ in range(5)]
    time.sleep(0.3)
    put(k2v, pk, "z", b"1")
    for p in pollers:
        r = p.result()
        assert r.status == 200
        assert sks(r.json()) == ["z"]


def test_default_timeouts_are_long(k2v, pk):
    """Without ``timeout`` (default 300 s) neither poll gives up after the 1 s minimum."""
    put(k2v, pk, "a", b"1")
    token = token_of(k2v, pk, "a")
    marker = poll_ok(k2v, pk, {})["seenMarker"]
    item = Background(lambda: k2v.request("GET", ipath(pk), f"sort_key=a&causality_token={token}", timeout=30))
    rng = Background(lambda: poll(k2v, pk, {"seenMarker": marker}))
    time.sleep(1.3)
    assert not item.done() and not rng.done()
    put(k2v, pk, "a", b"2", token=token)
    assert item.result().json() == [b64("2")]
    assert [i["v"] for i in rng.result().json()["items"]] == [[b64("2")]]
