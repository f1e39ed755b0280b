"""docs/k2v-api.md §5 (single-item endpoints), §6 (causality tokens) and §10 response details."""

from __future__ import annotations

import base64
import http.client
import re
import time

import pytest

from tests.support import wait_for
from tests.support.k2v import (
    BINARY,
    EMPTY_TOKEN,
    JSON,
    TOKEN,
    Background,
    assert_error,
    assert_partition_empty,
    b64,
    decode_token,
    delete,
    encode_token,
    ipath,
    partition,
    put,
    q,
    raw_send,
    read,
    read_json,
    send_signed,
    sign_headers,
    token_of,
)

# ---- Accept negotiation ------------------------------------------------------------------------

JSON_ONE = "json"
BIN_ONE = "binary"


@pytest.mark.parametrize(
    "accept,expect",
    [
        (None, JSON_ONE),
        ("application/json", JSON_ONE),
        ("application/octet-stream", BIN_ONE),
        ("application/octet-stream, application/json", BIN_ONE),
        ("application/json, application/octet-stream", BIN_ONE),
        ("*/*", BIN_ONE),
        ("text/html, */*", BIN_ONE),
        ("  application/octet-stream  ", BIN_ONE),
        ("text/plain,application/json", JSON_ONE),
        ("application/octet-stream;q=0.5, application/json", JSON_ONE),
        ("application/json;q=0.9, application/octet-stream", BIN_ONE),
        ("*/*;q=0.8, application/json", JSON_ONE),
    ],
)
def test_accept_one_value(k2v, pk, accept, expect):
    put(k2v, pk, "s", b"\x00\xffbinary")
    r = read(k2v, pk, "s", accept)
    assert r.status == 200, r.body
    assert r.header(TOKEN)
    if expect == JSON_ONE:
        assert r.header("Content-Type") == JSON
        assert r.json() == [b64(b"\x00\xffbinary")]
    else:
        assert r.header("Content-Type") == BINARY
        assert r.body == b"\x00\xffbinary"


@pytest.mark.parametrize(
    "accept",
    [
        "text/html",
        "application/json;q=0.9",
        "application/octet-stream; q=1",
        "application/JSON",
        "application/*",
        "*/*;q=1",
        "",
        "json",
    ],
)
def test_accept_not_acceptable(k2v, pk, accept):
    put(k2v, pk, "s", b"v")
    r = read(k2v, pk, "s", accept)
    assert_error(r, 406, "NotAcceptable", prefix="Not acceptable: ")


SIGNED = ["host", "x-amz-date", "x-amz-content-sha256"]


def test_accept_with_non_visible_ascii(k2v, pk):
    put(k2v, pk, "s", b"v")
    r = send_signed(
        k2v, "GET", ipath(pk), "sort_key=s", signed_names=SIGNED, extra_unsigned={"Accept": "application/jsoné"}
    )
    assert_error(r, 400, "InvalidHeaderValue")


@pytest.mark.parametrize("accept", ["application/json\x7f", "\x01application/json"])
def test_accept_with_control_characters(k2v, pk, accept):
    # The HTTP parser refuses control characters itself: still a JSON 400.
    put(k2v, pk, "s", b"v")
    r = send_signed(k2v, "GET", ipath(pk), "sort_key=s", signed_names=SIGNED, extra_unsigned={"Accept": accept})
    assert_error(r, 400, "InvalidRequest")


@pytest.mark.parametrize(
    "accept,expect",
    [
        (None, "json"),
        ("application/json", "json"),
        ("application/octet-stream", "409"),
        ("application/octet-stream, application/json", "json"),
        ("*/*", "json"),
    ],
)
def test_accept_two_values(k2v, pk, accept, expect):
    put(k2v, pk, "s", b"one")
    put(k2v, pk, "s", b"two")
    r = read(k2v, pk, "s", accept)
    token = r.header(TOKEN)
    assert token
    if expect == "json":
        assert r.status == 200
        assert r.header("Content-Type") == JSON
        assert r.json() == [b64("one"), b64("two")]
    else:
        assert r.status == 409
        assert r.body == b""
        assert r.header("Content-Type") is None
        assert token == token_of(k2v, pk, "s")


@pytest.mark.parametrize(
    "accept,expect",
    [
        (None, "json"),
        ("application/json", "json"),
        ("application/octet-stream", "204"),
        ("application/octet-stream, application/json", "204"),
        ("*/*", "204"),
    ],
)
def test_tombstone(k2v, pk, accept, expect):
    put(k2v, pk, "s", b"v")
    delete(k2v, pk, "s", token_of(k2v, pk, "s"))
    r = read(k2v, pk, "s", accept)
    assert r.header(TOKEN)
    if expect == "json":
        assert r.status == 200
        assert r.header("Content-Type") == JSON
        assert r.json() == [None]
    else:
        assert r.status == 204
        assert r.body == b""
        assert r.header("Content-Type") == BINARY


def test_value_and_tombstone_with_binary_accept_is_409(k2v, pk):
    put(k2v, pk, "s", b"v")
    delete(k2v, pk, "s")  # no token: concurrent tombstone
    r = read(k2v, pk, "s", BINARY)
    assert (r.status, r.body) == (409, b"")
    assert r.header(TOKEN)
    assert read(k2v, pk, "s").json() == [b64("v"), None]


def test_empty_value(k2v, pk):
    put(k2v, pk, "s", b"")
    r = read(k2v, pk, "s", BINARY)
    assert r.status == 200
    assert r.body == b""
    assert r.header("Content-Type") == BINARY
    assert r.header(TOKEN)
    r = read(k2v, pk, "s")
    assert r.json() == [""]


def test_large_binary_value_round_trips(k2v, pk):
    value = bytes(range(256)) * 4096
    put(k2v, pk, "s", value)
    r = read(k2v, pk, "s", BINARY)
    assert r.status == 200
    assert r.body == value
    assert base64.b64decode(read(k2v, pk, "s").json()[0]) == value


@pytest.mark.parametrize("accept", [None, BINARY, "application/json", "*/*"])
def test_never_written_is_404(k2v, pk, accept):
    r = read(k2v, pk, "never", accept)
    assert_error(r, 404, "NoSuchKey", message="Key not found", path=ipath(pk))


def test_deleted_item_is_not_404(k2v, pk):
    put(k2v, pk, "s", b"v")
    delete(k2v, pk, "s", token_of(k2v, pk, "s"))
    values, token = read_json(k2v, pk, "s")
    assert values == [None]
    assert token


def test_delete_of_never_written_item_writes_a_tombstone(k2v, pk):
    delete(k2v, pk, "s")
    values, token = read_json(k2v, pk, "s")
    assert values == [None]
    assert token


def test_json_is_standard_padded_base64(k2v, pk):
    put(k2v, pk, "s", b"\xfb\xff\xfe?")  # would contain '+' and '/' in standard base64
    values, _ = read_json(k2v, pk, "s")
    assert values == [base64.b64encode(b"\xfb\xff\xfe?").decode()]
    assert values[0].endswith("=")


# ---- InsertItem / DeleteItem -------------------------------------------------------------------


def test_insert_item_is_204_empty_without_token_header(k2v, pk):
    r = k2v.request("PUT", ipath(pk), "sort_key=s", b"v")
    assert (r.status, r.body) == (204, b"")
    assert r.header(TOKEN) is None
    r = k2v.request("DELETE", ipath(pk), "sort_key=s")
    assert (r.status, r.body) == (204, b"")
    assert r.header(TOKEN) is None


def test_insert_empty_body(k2v, pk):
    r = k2v.request("PUT", ipath(pk), "sort_key=s")
    assert r.status == 204, r.body
    assert partition(k2v, pk) == {"s": [""]}


def test_delete_without_token_is_concurrent(k2v, pk):
    put(k2v, pk, "s", b"v")
    delete(k2v, pk, "s")
    assert read_json(k2v, pk, "s")[0] == [b64("v"), None]


def test_delete_with_token_supersedes(k2v, pk):
    put(k2v, pk, "s", b"a")
    put(k2v, pk, "s", b"b")
    delete(k2v, pk, "s", token_of(k2v, pk, "s"))
    assert read_json(k2v, pk, "s")[0] == [None]


def test_delete_with_body_is_still_a_delete(k2v, pk):
    put(k2v, pk, "s", b"v")
    r = k2v.request("DELETE", ipath(pk), "sort_key=s", b"ignored", headers={TOKEN: token_of(k2v, pk, "s")})
    assert r.status == 204, r.body
    assert read_json(k2v, pk, "s")[0] == [None]


# ---- causality token header --------------------------------------------------------------------


def _bad_tokens() -> list[str]:
    good_pairs = [(7, 1000), (9, 1001)]  # 40 bytes: needs '=' padding in base64
    return [
        "!!bad!!",
        "A",
        "AAAAAAAAAA",  # 7 bytes
        encode_token(good_pairs, pad=True),  # '=' padding
        encode_token([(0xFBEF, 0xFFFF_FFFF)], urlsafe=False),  # standard alphabet ('+', '/')
        encode_token(good_pairs, checksum=1),  # bad checksum
        encode_token(good_pairs)[:-3],  # truncated: length not 8 + 16k
        encode_token([]) + "AAAA",
        "AAAAAAAAAAA AAAA",
    ]


def test_bad_tokens_really_are_malformed():
    for t in _bad_tokens():
        assert t != EMPTY_TOKEN
    assert "=" in _bad_tokens()[3]
    assert re.search(r"[+/]", _bad_tokens()[4])


@pytest.mark.parametrize("token", _bad_tokens())
def test_bad_token_header_on_insert(k2v, pk, token):
    r = k2v.request("PUT", ipath(pk), "sort_key=s", b"v", headers={TOKEN: token})
    assert_error(r, 400, "CausalityToken", message="Invalid causality token")
    assert_partition_empty(k2v, pk)


@pytest.mark.parametrize("token", _bad_tokens()[:4])
def test_bad_token_header_on_delete(k2v, pk, token):
    put(k2v, pk, "s", b"v")
    r = k2v.request("DELETE", ipath(pk), "sort_key=s", headers={TOKEN: token})
    assert_error(r, 400, "CausalityToken", message="Invalid causality token")
    assert partition(k2v, pk) == {"s": [b64("v")]}


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
def test_token_header_with_non_visible_ascii(k2v, pk, method):
    put(k2v, pk, "s", b"v")
    body = b"w" if method == "PUT" else None
    r = send_signed(
        k2v, method, ipath(pk), "sort_key=s", body, signed_names=SIGNED, extra_unsigned={TOKEN: "AAAAAAAAAAé"}
    )
    assert_error(r, 400, "InvalidHeaderValue")
    for bad in ("AAAA\x01AAAAAAA", "AAAAAAAAAAA\x7f"):  # refused by the HTTP parser itself
        r = send_signed(k2v, method, ipath(pk), "sort_key=s", body, signed_names=SIGNED, extra_unsigned={TOKEN: bad})
        assert_error(r, 400, "InvalidRequest")
    assert partition(k2v, pk) == {"s": [b64("v")]}


def test_empty_clock_token_is_valid(k2v, pk):
    put(k2v, pk, "s", b"a")
    put(k2v, pk, "s", b"b", token=EMPTY_TOKEN)
    assert read_json(k2v, pk, "s")[0] == [b64("a"), b64("b")]


# ---- PollItem ----------------------------------------------------------------------------------


def _poll(k2v, pk: str, sk: str, token: str, timeout: int | None = 1, accept: str | None = None, encode: bool = True):
    query = f"sort_key={q(sk)}&causality_token={q(token) if encode else token}"
    if timeout is not None:
        query += f"&timeout={timeout}"
    headers = {"Accept": accept} if accept else None
    return k2v.request("GET", ipath(pk), query, headers=headers, timeout=30)


def test_poll_item_immediate_when_newer(k2v, pk):
    put(k2v, pk, "s", b"v1")
    old = token_of(k2v, pk, "s")
    put(k2v, pk, "s", b"v2", token=old)
    t0 = time.monotonic()
    r = _poll(k2v, pk, "s", old, timeout=5)
    assert time.monotonic() - t0 < 2
    assert r.status == 200, r.body
    assert r.json() == [b64("v2")]
    assert r.header(TOKEN) == token_of(k2v, pk, "s")
    assert r.header("Content-Type") == JSON


def test_poll_item_with_empty_clock_on_existing_item(k2v, pk):
    put(k2v, pk, "s", b"v")
    r = _poll(k2v, pk, "s", EMPTY_TOKEN, timeout=5)
    assert r.status == 200
    assert r.json() == [b64("v")]


def test_poll_item_waits_then_wakes_on_write(k2v, pk):
    put(k2v, pk, "s", b"v1")
    token = token_of(k2v, pk, "s")
    bg = Background(lambda: _poll(k2v, pk, "s", token, timeout=10))
    time.sleep(0.3)
    assert not bg.done(), "the poll returned before any change"
    put(k2v, pk, "s", b"v2", token=token)
    r = bg.result()
    assert bg.elapsed < 5
    assert r.status == 200, r.body
    assert r.json() == [b64("v2")]
    assert r.header(TOKEN) == token_of(k2v, pk, "s")


def test_poll_item_waits_for_first_write(k2v, pk):
    bg = Background(lambda: _poll(k2v, pk, "s", EMPTY_TOKEN, timeout=10, accept=BINARY))
    time.sleep(0.3)
    assert not bg.done()
    put(k2v, pk, "s", b"first")
    r = bg.result()
    assert r.status == 200, r.body
    assert r.body == b"first"
    assert r.header("Content-Type") == BINARY


def test_poll_item_ignores_other_items(k2v, pk):
    put(k2v, pk, "s", b"v")
    token = token_of(k2v, pk, "s")
    bg = Background(lambda: _poll(k2v, pk, "s", token, timeout=1))
    time.sleep(0.2)
    put(k2v, pk, "other", b"x")
    put(k2v, f"{pk}-2", "s", b"x")
    r = bg.result()
    assert r.status == 304


def test_poll_item_timeout_is_304(k2v, pk):
    put(k2v, pk, "s", b"v")
    token = token_of(k2v, pk, "s")
    t0 = time.monotonic()
    r = _poll(k2v, pk, "s", token, timeout=1)
    elapsed = time.monotonic() - t0
    assert r.status == 304
    assert r.body == b""
    assert r.header(TOKEN) is None
    assert 0.9 <= elapsed < 5


def test_poll_item_timeout_zero_is_clamped_to_one_second(k2v, pk):
    put(k2v, pk, "s", b"v")
    token = token_of(k2v, pk, "s")
    t0 = time.monotonic()
    r = _poll(k2v, pk, "s", token, timeout=0)
    assert r.status == 304
    assert time.monotonic() - t0 >= 0.9


def test_poll_item_huge_timeout_is_accepted(k2v, pk):
    put(k2v, pk, "s", b"v")
    token = token_of(k2v, pk, "s")
    bg = Background(lambda: _poll(k2v, pk, "s", token, timeout=10**12))
    time.sleep(0.2)
    put(k2v, pk, "s", b"w")
    assert bg.result().status == 200


def test_poll_item_sees_deletion(k2v, pk):
    put(k2v, pk, "s", b"v")
    token = token_of(k2v, pk, "s")
    bg = Background(lambda: _poll(k2v, pk, "s", token, timeout=10, accept=BINARY))
    time.sleep(0.2)
    delete(k2v, pk, "s", token)
    r = bg.result()
    assert r.status == 204
    assert r.header(TOKEN)


def test_poll_item_conflict_with_binary_accept_is_409(k2v, pk):
    put(k2v, pk, "s", b"a")
    token = token_of(k2v, pk, "s")
    put(k2v, pk, "s", b"b")
    r = _poll(k2v, pk, "s", token, accept=BINARY)
    assert (r.status, r.body) == (409, b"")
    assert r.header(TOKEN)
    assert r.header("Content-Type") is None


@pytest.mark.parametrize("token", _bad_tokens()[:6])
def test_poll_item_bad_token_is_invalid_request(k2v, pk, token):
    put(k2v, pk, "s", b"v")
    r = _poll(k2v, pk, "s", token)
    assert_error(r, 400, "InvalidRequest")


def test_poll_item_accept_406_without_waiting(k2v, pk):
    put(k2v, pk, "s", b"v")
    t0 = time.monotonic()
    r = _poll(k2v, pk, "s", token_of(k2v, pk, "s"), timeout=5, accept="text/plain")
    assert_error(r, 406, "NotAcceptable")
    assert time.monotonic() - t0 < 2


def test_poll_item_token_unencoded_in_query(k2v, pk):
    # Tokens are URL-safe, so clients may paste them into the query as they are.
    put(k2v, pk, "s", b"v1")
    old = token_of(k2v, pk, "s")
    put(k2v, pk, "s", b"v2", token=old)
    r = _poll(k2v, pk, "s", old, encode=False)
    assert r.status == 200
    assert r.json() == [b64("v2")]


def test_poll_item_client_disconnect_does_not_break_the_item(k2v, pk):
    put(k2v, pk, "s", b"v")
    token = token_of(k2v, pk, "s")
    r = raw_send(k2v.host, "GET", "/", timeout=5)  # warm-up, and proves the node is fine
    assert r.status == 400
    query = f"sort_key=s&causality_token={token}&timeout=30"
    for _ in range(3):
        conn = http.client.HTTPConnection(k2v.host, timeout=5)
        conn.request("GET", f"{ipath(pk)}?{query}", headers=sign_headers(k2v, "GET", ipath(pk), query))
        time.sleep(0.1)
        conn.close()  # leave mid-poll
    put(k2v, pk, "s", b"after", token=token)
    assert read_json(k2v, pk, "s")[0] == [b64("after")]


def test_poll_disconnect_frees_subscription(node, k2v, pk):
    info = node.admin("node.info")
    if "poll_subscriptions" not in info:
        pytest.skip("node.info does not expose a subscription count")
    put(k2v, pk, "s", b"v")
    token = token_of(k2v, pk, "s")
    marker = k2v.json("POST", ipath(pk), {}, query="poll_range").json()["seenMarker"]
    base = info["poll_subscriptions"]
    conns = []
    item_query = f"sort_key=s&causality_token={token}&timeout=600"
    range_body = f'{{"seenMarker": "{marker}", "timeout": 600}}'.encode()
    for _ in range(2):
        c = http.client.HTTPConnection(k2v.host, timeout=5)
        c.request("GET", f"{ipath(pk)}?{item_query}", headers=sign_headers(k2v, "GET", ipath(pk), item_query))
        conns.append(c)
        c = http.client.HTTPConnection(k2v.host, timeout=5)
        c.request(
            "POST",
            f"{ipath(pk)}?poll_range",
            body=range_body,
            headers=sign_headers(k2v, "POST", ipath(pk), "poll_range", range_body),
        )
        conns.append(c)
    wait_for(lambda: node.admin("node.info")["poll_subscriptions"] == base + 4, timeout=10)
    for c in conns:
        c.sock.close()
        c.close()
    wait_for(lambda: node.admin("node.info")["poll_subscriptions"] == base, timeout=10)
    # Writes are unaffected by the departed pollers.
    put(k2v, pk, "s", b"after", token=token)
    assert read_json(k2v, pk, "s")[0] == [b64("after")]


# ---- §6 tokens ---------------------------------------------------------------------------------


def test_same_token_twice_gives_two_values(k2v, pk):
    put(k2v, pk, "s", b"base")
    token = token_of(k2v, pk, "s")
    put(k2v, pk, "s", b"one", token=token)
    put(k2v, pk, "s", b"two", token=token)
    assert read_json(k2v, pk, "s")[0] == [b64("one"), b64("two")]


def test_read_modify_write_supersedes(k2v, pk):
    put(k2v, pk, "s", b"a")
    put(k2v, pk, "s", b"b")
    put(k2v, pk, "s", b"c", token=token_of(k2v, pk, "s"))
    assert read_json(k2v, pk, "s")[0] == [b64("c")]


def test_write_without_token_is_concurrent(k2v, pk):
    put(k2v, pk, "s", b"a")
    put(k2v, pk, "s", b"b")
    put(k2v, pk, "s", b"c")
    assert read_json(k2v, pk, "s")[0] == [b64("a"), b64("b"), b64("c")]


def test_concurrent_value_survives_delete_with_token(k2v, pk):
    put(k2v, pk, "s", b"read")
    token = token_of(k2v, pk, "s")
    put(k2v, pk, "s", b"concurrent")
    delete(k2v, pk, "s", token)
    assert read_json(k2v, pk, "s")[0] == [b64("concurrent"), None]


def test_old_token_only_discards_what_it_saw(k2v, pk):
    put(k2v, pk, "s", b"a")
    t1 = token_of(k2v, pk, "s")
    put(k2v, pk, "s", b"b")
    put(k2v, pk, "s", b"c", token=t1)
    assert read_json(k2v, pk, "s")[0] == [b64("b"), b64("c")]


def test_identical_concurrent_values_are_deduplicated(k2v, pk):
    put(k2v, pk, "s", b"same")
    put(k2v, pk, "s", b"same")
    assert read_json(k2v, pk, "s")[0] == [b64("same")]
    r = read(k2v, pk, "s", BINARY)
    assert (r.status, r.body) == (200, b"same")


def test_two_tombstones_are_deduplicated(k2v, pk):
    delete(k2v, pk, "s")
    delete(k2v, pk, "s")
    assert read_json(k2v, pk, "s")[0] == [None]
    assert read(k2v, pk, "s", BINARY).status == 204


def test_token_layout_and_url_safety(k2v, pk):
    tokens = []
    for i in range(20):
        put(k2v, pk, f"s{i}", bytes([i]) * i)
        if i % 3 == 0:
            put(k2v, pk, f"s{i}", b"again")
        tokens.append(token_of(k2v, pk, f"s{i}"))
    for t in tokens:
        assert re.fullmatch(r"[A-Za-z0-9_-]+", t), t
        checksum, pairs = decode_token(t)
        x = 0
        for n, ts in pairs:
            x ^= n ^ ts
        assert checksum == x
        assert pairs == sorted(pairs)
        assert len(pairs) >= 1


def test_times_strictly_increase_across_items(k2v, pk):
    last = 0
    for i in range(10):
        put(k2v, pk, f"k{i}", b"v")
        _, pairs = decode_token(token_of(k2v, pk, f"k{i}"))
        assert len(pairs) == 1
        assert pairs[0][1] > last
        last = pairs[0][1]


def test_token_covers_discard_time(k2v, pk):
    put(k2v, pk, "s", b"a")
    t1 = token_of(k2v, pk, "s")
    delete(k2v, pk, "s", t1)
    t2 = token_of(k2v, pk, "s")
    ((n1, time1),) = decode_token(t1)[1]
    pairs2 = dict(decode_token(t2)[1])
    assert pairs2[n1] > time1
    # Writing with a token from another node id: its time is kept in the item's token.
    foreign = encode_token([(n1 ^ 1, 12345)])
    put(k2v, pk, "s", b"b", token=foreign)
    pairs3 = dict(decode_token(token_of(k2v, pk, "s"))[1])
    assert pairs3.get(n1 ^ 1) == 12345


def test_token_from_another_item_discards_nothing_newer(k2v, pk):
    put(k2v, pk, "a", b"1")
    put(k2v, pk, "b", b"2")
    # a's token is older than b's value, so it discards nothing of b.
    put(k2v, pk, "b", b"3", token=token_of(k2v, pk, "a"))
    assert read_json(k2v, pk, "b")[0] == [b64("2"), b64("3")]
