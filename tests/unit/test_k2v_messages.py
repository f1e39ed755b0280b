"""K2V RPC messages: the same bytes on the wire as before they had classes, and every malformed
variant refused as a protocol error (400) instead of failing inside a handler."""

from __future__ import annotations

import msgpack
import pytest

from garagekv.model.k2v.causality import CausalContext
from garagekv.model.k2v.messages import (
    FlushCountersRequest,
    InsertedItem,
    InsertRequest,
    PollItemRequest,
    PollRangeReply,
    PollRangeRequest,
    PollRangesReply,
    PollRangesRequest,
    WatchedRange,
    parse_request,
)
from garagekv.rpc.messages import MalformedMessage

BUCKET = b"\x01" * 32
CTX = CausalContext({7: 100, 3: 50})


def packed(x) -> bytes:
    return msgpack.packb(x, use_bin_type=True)


def test_insert_request_round_trip_and_wire_form():
    items = (InsertedItem("p", "s", CTX, b"v"), InsertedItem("p", "t", None, None))
    for kind in ("insert", "check"):
        req = InsertRequest(kind, BUCKET, items)
        hand_built = [kind, BUCKET, [["p", "s", [[3, 50], [7, 100]], b"v"], ["p", "t", None, None]]]
        assert packed(req.to_wire()) == packed(hand_built)
        back = parse_request(msgpack.unpackb(packed(req.to_wire()), raw=False))
        assert back == req


def test_flush_counters_request_round_trip_and_wire_form():
    assert FlushCountersRequest().to_wire() == ["flush_counters"]
    assert parse_request(["flush_counters"]) == FlushCountersRequest()


def test_poll_requests_round_trip_and_wire_form():
    item = PollItemRequest(BUCKET, "p", "s", CTX, 30)
    assert packed(item.to_wire()) == packed(["poll_item", BUCKET, "p", "s", [[3, 50], [7, 100]], 30])
    assert parse_request(item.to_wire()) == PollItemRequest(BUCKET, "p", "s", CTX, 30.0)
    rng = PollRangeRequest(BUCKET, "p", "a", None, "z", "marker", 300)
    assert packed(rng.to_wire()) == packed(["poll_range", BUCKET, "p", "a", None, "z", "marker", 300])
    assert parse_request(rng.to_wire()) == rng
    reply = PollRangeReply(9, (b"x", b"y"), 1234)
    assert packed(reply.to_wire()) == packed([9, [b"x", b"y"], 1234])
    assert PollRangeReply.from_wire(reply.to_wire()) == reply


def test_poll_ranges_round_trip_and_wire_form():
    ranges = (WatchedRange("p", "a", None, "z", "marker"), WatchedRange("q", None, None, None, None))
    req = PollRangesRequest(BUCKET, ranges, 300)
    hand_built = ["poll_ranges", BUCKET, [["p", "a", None, "z", "marker"], ["q", None, None, None, None]], 300]
    assert packed(req.to_wire()) == packed(hand_built)
    assert parse_request(msgpack.unpackb(packed(req.to_wire()), raw=False)) == req
    reply = PollRangesReply(9, 1234, ((0, (b"x", b"y")), (1, ())))
    assert packed(reply.to_wire()) == packed([9, 1234, [[0, [b"x", b"y"]], [1, []]]])
    assert PollRangesReply.from_wire(msgpack.unpackb(packed(reply.to_wire()), raw=False), 2) == reply


GOOD_RANGE = ["p", None, None, None, None]


@pytest.mark.parametrize(
    "wire",
    [
        [],
        "insert",
        ["nope", BUCKET, []],
        ["insert", BUCKET],  # arity
        ["insert", "not bytes", []],
        ["insert", BUCKET, "not a list"],
        ["insert", BUCKET, [["p", "s", None]]],  # item arity
        ["insert", BUCKET, [["p", 5, None, b"v"]]],  # sort key type
        ["insert", BUCKET, [["p", "s", [[1]], b"v"]]],  # context pair
        ["insert", BUCKET, [["p", "s", [[1, -2]], b"v"]]],  # context time not u64
        ["insert", BUCKET, [["p", "s", None, "str value"]]],
        ["poll_item", BUCKET, "p", "s", [], 30, "extra"],
        ["poll_item", BUCKET, "p", "s", [], "30"],
        ["poll_item", BUCKET, "p", "s", [], True],
        ["poll_item", BUCKET, "p", "s", [], 10**9],
        ["poll_range", BUCKET, "p", None, None, None, None],  # arity
        ["poll_range", BUCKET, "p", 1, None, None, None, 30],
        ["poll_range", BUCKET, "p", None, None, None, b"bytes marker", 30],
        ["poll_ranges", BUCKET, [GOOD_RANGE]],  # arity
        ["poll_ranges", BUCKET, [GOOD_RANGE], 30, "extra"],
        ["poll_ranges", "bucket", [GOOD_RANGE], 30],
        ["poll_ranges", BUCKET, [], 30],  # no range
        ["poll_ranges", BUCKET, [GOOD_RANGE] * 65, 30],  # more than a call may have
        ["poll_ranges", BUCKET, "not a list", 30],
        ["poll_ranges", BUCKET, [GOOD_RANGE], -1],
        ["poll_ranges", BUCKET, [GOOD_RANGE], None],
        ["poll_ranges", BUCKET, [["p", None, None, None]], 30],  # range arity
        ["poll_ranges", BUCKET, [[b"p", None, None, None, None]], 30],  # partition key type
        ["poll_ranges", BUCKET, [["p", 1, None, None, None]], 30],
        ["poll_ranges", BUCKET, [["p", None, None, None, b"bytes marker"]], 30],
        ["poll_ranges", BUCKET, [["p", None, "k" * 480, None, None]], 30],  # past any sort key
        ["poll_ranges", BUCKET, [None], 30],
        ["flush_counters", BUCKET],  # arity
        ["flush_counters", None],
    ],
)
def test_malformed_requests_are_protocol_errors(wire):
    with pytest.raises(MalformedMessage) as info:
        parse_request(wire)
    assert info.value.status == 400 and info.value.code == "InvalidRequest"


@pytest.mark.parametrize("wire", [[9, [b"x"]], [9, [b"x"], -1], [9, "x", 0], ["9", [], 0], None])
def test_malformed_poll_range_replies_are_protocol_errors(wire):
    with pytest.raises(MalformedMessage):
        PollRangeReply.from_wire(wire)


@pytest.mark.parametrize(
    "wire",
    [
        None,
        [9, 0],
        [9, 0, [], "extra"],
        ["9", 0, []],
        [9, -1, []],
        [9, 0, "news"],
        [9, 0, [[0]]],
        [9, 0, [[2, []]]],  # the request had 2 ranges: indices 0 and 1
        [9, 0, [[-1, []]]],
        [9, 0, [[True, []]]],
        [9, 0, [[0, []], [0, []]]],  # a range listed twice
        [9, 0, [[0, "x"]]],
        [9, 0, [[0, ["not bytes"]]]],
    ],
)
def test_malformed_poll_ranges_replies_are_protocol_errors(wire):
    with pytest.raises(MalformedMessage):
        PollRangesReply.from_wire(wire, 2)
