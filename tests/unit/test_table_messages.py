"""The table layer's RPC message classes: each one's wire form is exactly the list nodes have
always sent (same msgpack bytes), it survives a msgpack round trip, and every malformed variant
(wrong arity, wrong types, unknown tag) is refused with ``MalformedMessage``."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from garagekv.rpc.messages import MalformedMessage
from garagekv.table.data import ScanRange
from garagekv.table.messages import (
    DeleteIfEqualHash,
    DigestRequest,
    ElementsRequest,
    GetMany,
    GetManyAnswer,
    ItemsPush,
    RangeAnswer,
    RangeRequest,
    SumsRequest,
    Update,
    parse_gc_request,
    parse_sync_request,
    parse_table_request,
)
from garagekv.util.errors import BadRequest

P = bytes([7]) * 32
K = P + b"sort"
H = bytes(range(32))


def pack(w: Any) -> bytes:
    """What a frame carries (garagekv/net/frame.py packs bodies this way)."""
    return msgpack.packb(w, use_bin_type=True)


def unpack(b: bytes) -> Any:
    return msgpack.unpackb(b, raw=False, strict_map_key=False)


# (message, the list built by hand as the code before these classes did, malformed variants)
CASES: list[tuple[Any, list[Any], list[Any]]] = [
    (
        Update((b"e1", b"e2")),
        ["update", [b"e1", b"e2"]],
        [["update"], ["update", [b"e1"], 1], ["update", "x"], ["update", [b"e1", 2]], ["items", [b"e1"]]],
    ),
    (
        GetMany((K, P + b"x")),
        ["get_many", [K, P + b"x"]],
        [
            ["get_many"],
            ["get_many", [K], []],
            ["get_many", K],
            ["get_many", [K, None]],
            ["get", [K]],
            ["get_many", [b""]],
            ["get_many", [K, b"x" * 512]],
        ],  # keys LMDB cannot look up
    ),
    (
        RangeRequest(ScanRange(P, b"a", prefix=b"p", end=b"z", reverse=True, limit=10, filt=None, skip_start=True)),
        ["range", P, b"a", b"p", b"z", True, 10, None, True],
        [
            ["range", P, b"a", b"p", b"z", True, 10, None],
            ["range", P, b"a", b"p", b"z", True, 10, None, True, 0],
            ["range", "P", b"a", b"p", b"z", True, 10, None, True],
            ["range", P, None, b"p", b"z", True, 10, None, True],
            ["range", P, b"a", 1, b"z", True, 10, None, True],
            ["range", P, b"a", b"p", "z", True, 10, None, True],
            ["range", P, b"a", b"p", b"z", 1, 10, None, True],
            ["range", P, b"a", b"p", b"z", True, -1, None, True],
            ["range", P, b"a", b"p", b"z", True, 1.5, None, True],
            ["range", P, b"a", b"p", b"z", True, True, None, True],
            ["range", P, b"a", b"p", b"z", True, 10, None, "yes"],
            ["scan", P, b"a", b"p", b"z", True, 10, None, True],
        ],
    ),
    (
        SumsRequest(7, 2, (b"", K), K + b"z"),
        ["sums", 7, 2, [b"", K], K + b"z"],
        [
            ["sums", 7, 2, [b"", K]],
            ["sums", "7", 2, [b"", K], None],
            ["sums", 256, 2, [b""], None],
            ["sums", 7, 5, [b""], None],
            ["sums", 7, True, [b""], None],
            ["sums", 7, 2, b"", None],
            ["sums", 7, 2, [K, b""], None],
            ["sums", 7, 2, [b"", K], K],
            ["sums", 7, 2, [b"", K], "z"],
            ["sums", 6, 2, [b"", K], None],
        ],
    ),
    (
        ElementsRequest((K, P)),
        ["elements", [K, P]],
        [["elements"], ["elements", [K], []], ["elements", K], ["elements", [1]]],
    ),
    (
        ItemsPush((b"e1",)),
        ["items", [b"e1"]],
        [["items"], ["items", [b"e1"], []], ["items", b"e1"], ["items", [1]], ["update", [b"e1"]]],
    ),
    (DigestRequest(), ["digest"], [["digest", 1], [], "digest", ["hash"]]),
    (
        DeleteIfEqualHash(((K, H), (P + b"x", H))),
        ["delete_if_equal_hash", [[K, H], [P + b"x", H]]],
        [
            ["delete_if_equal_hash"],
            ["delete_if_equal_hash", [], []],
            ["delete_if_equal_hash", {K: H}],
            ["delete_if_equal_hash", [[K]]],
            ["delete_if_equal_hash", [[K, H, H]]],
            ["delete_if_equal_hash", [[K, "h"]]],
            ["delete_if_equal_hash", [K, H]],
            ["delete", [[K, H]]],
        ],
    ),
]
IDS = [type(m).__name__ for m, _, _ in CASES]


@pytest.mark.parametrize(("msg", "hand_built", "malformed"), CASES, ids=IDS)
def test_wire_form_is_todays_list_and_round_trips(msg, hand_built, malformed):
    assert msg.to_wire() == hand_built
    assert pack(msg.to_wire()) == pack(hand_built)  # byte-identical on the wire
    assert type(msg).from_wire(unpack(pack(hand_built))) == msg
    assert type(msg).from_wire(hand_built) == msg  # and straight from the list, as an in-process caller builds it


@pytest.mark.parametrize(("msg", "hand_built", "malformed"), CASES, ids=IDS)
def test_malformed_variants_are_a_protocol_error(msg, hand_built, malformed):
    for bad in [None, 7, *malformed]:
        with pytest.raises(MalformedMessage) as info:
            type(msg).from_wire(bad)
        assert isinstance(info.value, BadRequest) and info.value.code == "InvalidRequest"
        assert info.value.message.startswith("malformed ")


def test_each_endpoint_parses_its_own_requests_and_only_those():
    for parse, msgs, others in [
        (parse_table_request, [Update((b"e",)), GetMany((K,)), RangeRequest(ScanRange(P))], [ItemsPush((b"e",))]),
        (
            parse_sync_request,
            [SumsRequest(1, 1, (b"",), None), ElementsRequest((K,)), ItemsPush((b"e",)), DigestRequest()],
            [Update((b"e",))],
        ),
        (parse_gc_request, [Update((b"e",)), DeleteIfEqualHash(((K, H),))], [GetMany((K,))]),
    ]:
        for m in msgs:
            assert parse(unpack(pack(m.to_wire()))) == m
        for m in others:
            with pytest.raises(MalformedMessage, match="unknown"):
                parse(m.to_wire())
        for bad in (None, [], "update", [7], [b"update", []]):
            with pytest.raises(MalformedMessage):
                parse(bad)


def test_a_range_request_keeps_the_filter_in_its_wire_form():
    """The receiver rebuilds the filter with its schema; the message carries it as it came."""
    w = ["range", P, b"", b"", None, False, None, {"nodes": [1, 2]}, False]
    assert RangeRequest.from_wire(w).query.filt == {"nodes": [1, 2]}
    assert RangeRequest.from_wire(w).to_wire() == w


def test_get_many_answer():
    a = GetManyAnswer((b"e", None, False))
    assert a.to_wire() == [b"e", None, False]
    assert pack(a.to_wire()) == pack([b"e", None, False])
    assert GetManyAnswer.from_wire(unpack(pack(a.to_wire())), 3) == a
    for bad, asked in [([b"e", None], 3), ([b"e", None, False, None], 3), ([b"e", None, True], 3), ([1], 1), (None, 0)]:
        with pytest.raises(MalformedMessage, match="get_many answer"):
            GetManyAnswer.from_wire(bad, asked)


def test_range_answer():
    rows = ((b"a", b"e1"), (b"b", b"e2"))
    full, cut = RangeAnswer(rows), RangeAnswer(rows, more=True)
    assert full.to_wire() == [[b"a", b"e1"], [b"b", b"e2"]]
    assert cut.to_wire() == {"rows": [[b"a", b"e1"], [b"b", b"e2"]], "more": True}
    assert pack(cut.to_wire()) == pack({"rows": [[b"a", b"e1"], [b"b", b"e2"]], "more": True})
    assert RangeAnswer.from_wire(unpack(pack(full.to_wire()))) == full
    assert RangeAnswer.from_wire(unpack(pack(cut.to_wire()))) == cut
    assert RangeAnswer.from_wire([]) == RangeAnswer(())
    for bad in [
        None,
        [[b"a"]],
        [[b"a", b"e", b"x"]],
        [[b"a", 1]],
        [["a", b"e"]],
        {"rows": [], "more": True},
        {"rows": [[b"a", b"e"]], "more": False},
        {"rows": [[b"a", b"e"]]},
        {"rows": [[b"a", 1]], "more": True},
    ]:
        with pytest.raises(MalformedMessage, match="range answer"):
            RangeAnswer.from_wire(bad)


def test_sums_and_elements_answers_are_checked_before_use():
    sums = SumsRequest(7, 1, (b"", K), None)
    assert sums.answer([bytes(32), (5).to_bytes(32, "little")]) == [0, 5]
    for bad in [None, [bytes(32)], [bytes(32), None], [bytes(32), 5], (bytes(32), bytes(32))]:
        with pytest.raises(MalformedMessage, match="sync sums answer"):
            sums.answer(bad)
    elements = ElementsRequest((K, P))
    assert elements.answer([None, (9).to_bytes(32, "little")]) == [None, 9]
    for bad in [[None], [None, None, None], [None, "x"], {"a": 1}]:
        with pytest.raises(MalformedMessage, match="sync elements answer"):
            elements.answer(bad)


def test_entries_that_do_not_decode_are_a_protocol_error():
    """A peer's update, sync or GC entries that are not entries get the sender a 400, never an
    internal error of this node."""
    from types import SimpleNamespace

    from garagekv.model.k2v.item import K2VItem
    from garagekv.model.k2v.schema import CounterSchema
    from garagekv.table.messages import decode_entries

    for schema in (SimpleNamespace(decode=K2VItem.decode), CounterSchema()):
        for garbage in (b"", b"\x00", b"\xff\x00garbage", pack([1, 2, 3])):
            with pytest.raises(MalformedMessage) as info:
                decode_entries(schema, [garbage], "table update")
            assert info.value.message.startswith("malformed table update")


def test_an_unknown_tag_nested_deep_is_refused_without_a_recursion():
    deep: Any = []
    for _ in range(5000):
        deep = [deep]
    for parse in (parse_table_request, parse_sync_request, parse_gc_request):
        with pytest.raises(MalformedMessage):
            parse([deep, 1])
