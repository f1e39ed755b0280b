"""docs/k2v-api.md §8 PollRanges (POST|SEARCH /b?poll_ranges): one long poll over several ranges."""

from __future__ import annotations

import base64
import http.client
import json
import threading
import time

import pytest

from tests.support import K2VHttp, wait_for
from tests.support.k2v import (
    BUCKET,
    JSON,
    Background,
    assert_error,
    b64,
    ipath,
    new_pk,
    put,
    sign_headers,
    token_of,
)


def poll(k2v, body: dict | bytes, method: str = "POST", timeout: float = 30):
    raw = json.dumps(body).encode() if isinstance(body, dict) else body
    return k2v.request(method, ipath(), "poll_ranges", raw, timeout=timeout)


def poll_ok(k2v, body: dict, **kw) -> list[dict]:
    r = poll(k2v, body, **kw)
    assert r.status == 200, (r.status, r.body)
    assert r.header("Content-Type") == JSON
    res = r.json()
    assert set(res) == {"ranges"}
    for rng in res["ranges"]:
        assert set(rng) == {"partitionKey", "seenMarker", "items"}
        assert isinstance(rng["seenMarker"], str) and rng["seenMarker"]
    return res["ranges"]


def sks(rng: dict) -> list[str]:
    return [i["sk"] for i in rng["items"]]


def with_markers(pks: list[str], answered: list[dict]) -> list[dict]:
    """Whole-partition ranges carrying the markers of a previous answer."""
    return [{"partitionKey": p, "seenMarker": r["seenMarker"]} for p, r in zip(pks, answered, strict=True)]


@pytest.mark.parametrize("method", ["POST", "SEARCH"])
def test_initial_answer_without_markers_in_request_order(k2v, method):
    p1, p2, p3 = new_pk(), new_pk(), new_pk()
    put(k2v, p1, "a", b"1")
    put(k2v, p2, "x/1", b"2")
    put(k2v, p2, "y", b"3")
    ranges = poll_ok(
        k2v, {"ranges": [{"partitionKey": p3}, {"partitionKey": p2, "prefix": "x/"}, {"partitionKey": p1}]}
    )
    assert [r["partitionKey"] for r in ranges] == [p3, p2, p1]
    assert [sks(r) for r in ranges] == [[], ["x/1"], ["a"]]
    assert ranges[2]["items"] == [{"sk": "a", "ct": token_of(k2v, p1, "a"), "v": [b64("1")]}]


def test_one_change_wakes_the_call_and_only_that_range_has_items(k2v):
    pks = [new_pk() for _ in range(3)]
    for p in pks:
        put(k2v, p, "a", b"1")
    first = poll_ok(k2v, {"ranges": [{"partitionKey": p} for p in pks]})
    body = {"timeout": 20, "ranges": with_markers(pks, first)}
    bg = Background(lambda: poll(k2v, body))
    time.sleep(0.3)
    assert not bg.done(), "the poll returned before any change"
    put(k2v, pks[1], "b", b"2")
    r = bg.result()
    assert r.status == 200, r.body
    ranges = r.json()["ranges"]
    assert [rng["partitionKey"] for rng in ranges] == pks
    assert [sks(rng) for rng in ranges] == [[], ["b"], []]
    # Unchanged ranges keep a marker that means what the one sent meant.
    assert ranges[0]["seenMarker"] == first[0]["seenMarker"]
    assert ranges[2]["seenMarker"] == first[2]["seenMarker"]


def test_a_64_range_call_holds_one_poll_on_the_node_and_leaving_frees_it(node, k2v):
    """docs/k2v-api.md §8: one long poll per storage node per call, whatever its number of ranges."""
    pks = [new_pk() for _ in range(64)]
    first = poll_ok(k2v, {"ranges": [{"partitionKey": p} for p in pks]})
    body = json.dumps({"timeout": 600, "ranges": with_markers(pks, first)}).encode()
    base = node.admin("node.info")["poll_subscriptions"]
    conn = http.client.HTTPConnection(k2v.host, timeout=5)
    conn.request(
        "POST", f"{ipath()}?poll_ranges", body=body, headers=sign_headers(k2v, "POST", ipath(), "poll_ranges", body)
    )
    try:
        wait_for(lambda: node.admin("node.info")["poll_subscriptions"] == base + 1, timeout=10)
        time.sleep(0.3)
        assert node.admin("node.info")["poll_subscriptions"] == base + 1, "more than one poll for one call"
    finally:
        conn.sock.close()
        conn.close()
    wait_for(lambda: node.admin("node.info")["poll_subscriptions"] == base, timeout=10)


def test_markers_round_trip(k2v):
    p1, p2 = new_pk(), new_pk()
    put(k2v, p1, "a", b"1")
    first = poll_ok(k2v, {"ranges": [{"partitionKey": p1}, {"partitionKey": p2}]})
    put(k2v, p2, "z", b"1")
    second = poll_ok(
        k2v,
        {"timeout": 10, "ranges": with_markers([p1, p2], first)},
    )
    assert [sks(r) for r in second] == [[], ["z"]]
    # With the returned markers the call waits: nothing is new any more.
    body = {"timeout": 20, "ranges": with_markers([p1, p2], second)}
    bg = Background(lambda: poll(k2v, body))
    time.sleep(0.5)
    assert not bg.done(), "returned markers did not cover what was returned"
    put(k2v, p1, "b", b"2")
    r = bg.result()
    assert r.status == 200
    assert [sks(rng) for rng in r.json()["ranges"]] == [["b"], []]


def test_changes_outside_the_ranges_do_not_wake(k2v):
    p1, p2 = new_pk(), new_pk()
    first = poll_ok(k2v, {"ranges": [{"partitionKey": p1, "prefix": "in/"}, {"partitionKey": p2, "start": "m"}]})
    ranges = [
        {"partitionKey": p1, "prefix": "in/", "seenMarker": first[0]["seenMarker"]},
        {"partitionKey": p2, "start": "m", "seenMarker": first[1]["seenMarker"]},
    ]
    bg = Background(lambda: poll(k2v, {"timeout": 20, "ranges": ranges}))
    time.sleep(0.2)
    put(k2v, p1, "out/1", b"x")
    put(k2v, p2, "a", b"x")
    put(k2v, new_pk(), "in/1", b"x")
    time.sleep(0.3)
    assert not bg.done(), "woken by a change outside its ranges"
    put(k2v, p2, "n", b"x")
    r = bg.result()
    assert r.status == 200
    assert [sks(rng) for rng in r.json()["ranges"]] == [[], ["n"]]


def test_timeout_is_304(k2v):
    p1, p2 = new_pk(), new_pk()
    put(k2v, p1, "a", b"1")
    first = poll_ok(k2v, {"ranges": [{"partitionKey": p1}, {"partitionKey": p2}]})
    t0 = time.monotonic()
    body = {"timeout": 1, "ranges": with_markers([p1, p2], first)}
    r = poll(k2v, body, method="SEARCH")
    assert r.status == 304
    assert r.body == b""
    assert time.monotonic() - t0 >= 0.9


def test_same_partition_twice_and_64_ranges(k2v):
    p = new_pk()
    put(k2v, p, "a", b"1")
    ranges = poll_ok(k2v, {"ranges": [{"partitionKey": p}] * 64})
    assert len(ranges) == 64
    assert all(sks(r) == ["a"] for r in ranges)


def test_unknown_fields_are_ignored(k2v):
    p = new_pk()
    put(k2v, p, "a", b"1")
    ranges = poll_ok(k2v, {"extra": 1, "ranges": [{"partitionKey": p, "other": [1], "prefix": None}]})
    assert sks(ranges[0]) == ["a"]


def test_key_without_read_permission_is_denied(node, k2v):
    key = node.admin("key.create", {"name": "poll-ranges-writer"})
    node.admin("bucket.permissions", {"bucket": BUCKET, "key": key["accessKeyId"], "allow": True, "write": True})
    writer = K2VHttp(k2v.host, key["accessKeyId"], key["secretAccessKey"])
    assert_error(poll(writer, {"ranges": [{"partitionKey": "p"}]}), 403, "AccessDenied")


def test_read_only_key_may_poll_ranges(node, k2v):
    key = node.admin("key.create", {"name": "poll-ranges-reader"})
    node.admin("bucket.permissions", {"bucket": BUCKET, "key": key["accessKeyId"], "allow": True, "read": True})
    reader = K2VHttp(k2v.host, key["accessKeyId"], key["secretAccessKey"])
    p = new_pk()
    put(k2v, p, "a", b"1")
    assert sks(poll_ok(reader, {"ranges": [{"partitionKey": p}]})[0]) == ["a"]


def test_poll_ranges_with_a_partition_key_is_invalid(k2v):
    for method in ("POST", "SEARCH"):
        r = k2v.request(method, ipath("p"), "poll_ranges", b'{"ranges": [{"partitionKey": "p"}]}')
        assert_error(r, 400, "InvalidRequest", message="Invalid endpoint")


LONG = "k" * 480


@pytest.mark.parametrize(
    "body, message",
    [
        (b"", "Invalid JSON"),
        (b"not json", "Invalid JSON"),
        (b"[]", "poll_ranges request"),
        (b"null", "poll_ranges request"),
        (b"{}", "`ranges`"),
        (b'{"ranges": null}', "`ranges`"),
        (b'{"ranges": []}', "`ranges`"),
        (b'{"ranges": {}}', "array of ranges"),
        (json.dumps({"ranges": [{"partitionKey": "p"}] * 65}).encode(), "`ranges`"),
        (b'{"timeout": "1", "ranges": [{"partitionKey": "p"}]}', "`timeout`"),
        (b'{"timeout": -1, "ranges": [{"partitionKey": "p"}]}', "`timeout`"),
        (b'{"ranges": [1]}', "ranges[0]"),
        (b'{"ranges": [{}]}', "`partitionKey`"),
        (b'{"ranges": [{"partitionKey": null}]}', "`partitionKey`"),
        (b'{"ranges": [{"partitionKey": 5}]}', "`partitionKey`"),
        (b'{"ranges": [{"partitionKey": "p"}, {"prefix": "a"}]}', "ranges[1]"),
        (b'{"ranges": [{"partitionKey": "p", "prefix": 1}]}', "`prefix`"),
        (b'{"ranges": [{"partitionKey": "p", "start": []}]}', "`start`"),
        (b'{"ranges": [{"partitionKey": "p", "seenMarker": 5}]}', "`seenMarker`"),
        (b'{"ranges": [{"partitionKey": "p", "seenMarker": "!!!"}]}', "seenMarker"),
        (b'{"ranges": [{"partitionKey": "p", "seenMarker": "AAAA"}]}', "seenMarker"),
        (b'{"ranges": [{"partitionKey": "p", "prefix": "b", "start": "a"}]}', "ranges[0]"),
        (b'{"ranges": [{"partitionKey": "\\ud800"}]}', "Invalid JSON"),
        (json.dumps({"ranges": [{"partitionKey": LONG}]}).encode(), "partitionKey is 480 bytes"),
        (json.dumps({"ranges": [{"partitionKey": "p", "start": LONG}]}).encode(), "start is 480 bytes"),
    ],
)
def test_bad_bodies(k2v, body, message):
    assert_error(poll(k2v, body), 400, "InvalidRequest", message=message)


def test_bad_range_is_named_and_nothing_waits(k2v):
    p = new_pk()
    first = poll_ok(k2v, {"ranges": [{"partitionKey": p}]})
    body = {"timeout": 20, "ranges": [{"partitionKey": p, "seenMarker": first[0]["seenMarker"]}, {"partitionKey": 1}]}
    r = poll(k2v, body)  # validated before the first range's poll starts: not a 304 after 20 s
    assert_error(r, 400, "InvalidRequest", message="ranges[1]")
    assert "partitionKey" in r.json()["message"]


def test_looping_client_sees_every_last_value_and_never_goes_back(k2v):
    """Writers update keys of four partitions while a client loops on poll_ranges, always sending
    back the latest marker of each range: every key's last value reaches it, and no answer
    carries an older value of a key than one it already carried."""
    pks = [new_pk() for _ in range(4)]
    keys = [(p, f"k{i}") for p in pks for i in range(3)]
    rounds = 15
    final: dict[tuple[str, str], int] = {}
    latest: dict[tuple[str, str], int] = {}
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer(mine: list[tuple[str, str]]) -> None:
        try:
            for r in range(1, rounds + 1):
                for p, k in mine:
                    put(k2v, p, k, str(r).encode(), token_of(k2v, p, k) if r > 1 else None)
                    final[(p, k)] = r
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    def poller() -> None:
        try:
            ranges: list[dict] = [{"partitionKey": p} for p in pks]
            while not stop.is_set():
                r = poll(k2v, {"timeout": 1, "ranges": ranges})
                if r.status == 304:
                    continue
                assert r.status == 200, r.body
                answered = r.json()["ranges"]
                assert [a["partitionKey"] for a in answered] == pks
                for a in answered:
                    for item in a["items"]:
                        value = max(int(base64.b64decode(v)) for v in item["v"] if v is not None)
                        key = (a["partitionKey"], item["sk"])
                        assert value >= latest.get(key, 0), f"{key} went back from {latest[key]} to {value}"
                        latest[key] = value
                ranges = with_markers(pks, answered)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    poll_thread = threading.Thread(target=poller, daemon=True)
    poll_thread.start()
    writers = [threading.Thread(target=writer, args=(keys[i::3],), daemon=True) for i in range(3)]
    for t in writers:
        t.start()
    for t in writers:
        t.join(timeout=120)
    assert not errors, errors
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(latest.get(k) != final[k] for k in keys):
        time.sleep(0.2)
    stop.set()
    poll_thread.join(timeout=10)
    assert not errors, errors
    missed = {k: final[k] for k in keys if latest.get(k) != final[k]}
    assert not missed, f"poll_ranges never reported these last values: {missed}"
