"""Seen markers from clients are bounded at every decoding stage; encode stays inside the bounds."""

from __future__ import annotations

import base64
import struct
import zlib

import msgpack
import pytest

from garagekv.model.k2v.causality import MAX_CLOCK_AHEAD_MS, MAX_CLOCK_ENTRIES
from garagekv.model.k2v.seen import (
    MAX_MARKER_CHARS,
    MAX_MARKER_DECOMPRESSED,
    MAX_MARKER_ITEMS,
    MAX_V1_DECOMPRESSED,
    RangeSeenMarker,
)
from garagekv.util import codec
from garagekv.util.errors import BadRequest
from garagekv.util.time import now_ms


def wrap_packed(packed: bytes, level: int = 9) -> str:
    return base64.b64encode(zlib.compress(packed, level)).decode()


def clock(pairs: list[tuple[int, int]]) -> bytes:
    return b"".join(struct.pack(">QQ", n, t) for n, t in pairs)


def v2(vc: list[tuple[int, int]], items: list[tuple[str, list[tuple[int, int]]]]) -> str:
    flat: list = []
    for sk, pairs in items:
        flat += [sk, clock(pairs)]
    return wrap_packed(codec.encode_lists([2, clock(vc), flat]))


def v1(body: object) -> str:
    return wrap_packed(codec.encode(body))


def refused(s: str, why: str = "") -> BadRequest:
    with pytest.raises(BadRequest, match="Invalid seenMarker" + why) as e:
        RangeSeenMarker.decode(s)
    assert e.value.code == "InvalidRequest" and e.value.status == 400
    return e.value


def test_encode_writes_format_2_and_reads_it_back():
    m = RangeSeenMarker({1: 5, 2: 7}, {"a": {3: 9}, "b": {1: 6, 4: 1}})
    s = m.encode()
    body = msgpack.unpackb(zlib.decompress(base64.b64decode(s)), raw=False)
    assert body == [2, clock([(1, 5), (2, 7)]), ["a", clock([(3, 9)]), "b", clock([(1, 6), (4, 1)])]]
    assert RangeSeenMarker.decode(s) == m


def test_format_1_markers_handed_out_before_still_decode():
    m = RangeSeenMarker.decode(v1([1, [[1, 2]], [["a", [[3, 4]]]]]))
    assert m == RangeSeenMarker({1: 2}, {"a": {3: 4}})


def test_millions_of_distinct_sort_keys_are_refused():
    """The bomb of the issue: a few hundred KiB of compressed distinct keys, far more objects."""
    for s in (
        v1([1, [], [[f"{i:07d}", []] for i in range(300_000)]]),
        v2([], [(f"{i:07d}", []) for i in range(300_000)]),
    ):
        assert len(s) < MAX_MARKER_CHARS  # it is the decoded size that gives it away
        refused(s)


def test_format_1_is_held_to_a_smaller_size():
    refused(v1([1, [], [[f"k{i:06d}", [[1, 1]]] for i in range(MAX_V1_DECOMPRESSED // 10)]]), ": more than")


def test_too_many_per_item_clocks_are_refused():
    refused(v2([], [(f"k{i}", [(1, 1)]) for i in range(MAX_MARKER_ITEMS + 1)]))
    ok = RangeSeenMarker.decode(v2([], [(f"k{i}", [(1, 1)]) for i in range(MAX_MARKER_ITEMS)]))
    assert len(ok.items) == MAX_MARKER_ITEMS


def test_too_long_clocks_are_refused():
    long_clock = [(n, 1) for n in range(MAX_CLOCK_ENTRIES + 1)]
    refused(v2(long_clock, []))
    refused(v2([], [("a", long_clock)]))
    refused(v1([1, [list(p) for p in long_clock], []]), ": a clock has more than")
    RangeSeenMarker.decode(v2(long_clock[:-1], [("a", long_clock[:-1])]))


@pytest.mark.parametrize("t", [2**64 - 1, 2**63, "bound+1"])
def test_times_no_node_could_have_issued_are_refused(t):
    t = now_ms() + MAX_CLOCK_AHEAD_MS + 10**6 if t == "bound+1" else t
    refused(v2([(7, t)], []), ": time")
    refused(v2([], [("a", [(7, t)])]), ": time")
    refused(v1([1, [[7, t]], []]), ": time")


def test_zlib_bomb_is_refused_at_the_decompressed_bound():
    refused(v2([], [("a" * (MAX_MARKER_DECOMPRESSED + 10), [])]), ": more than")


def test_over_long_text_is_refused_before_decoding():
    refused("A" * (MAX_MARKER_CHARS + 4), ": longer than")


@pytest.mark.parametrize(
    "body",
    [
        [2, b"", ["a"]],  # odd item list
        [2, b"", ["a", b"\x00" * 15]],  # not whole pairs
        [2, b"", [b"a", b""]],
        [2, b"", ["a", b"", "a", b""]],  # duplicate sort key
        [2, clock([(1, 1), (1, 2)]), []],  # duplicate node
        [2, [], []],
        [2, b"", {}],
        [2.0, b"", []],
        [3, b"", []],
        [1, [], [["a", {}]]],
        [1, [], [[b"a", []]]],
        {1: 2},
    ],
)
def test_wrong_shapes_are_refused(body):
    refused(wrap_packed(msgpack.packb(body, use_bin_type=True)))


def test_encode_sheds_per_item_clocks_to_stay_decodable():
    many = RangeSeenMarker({1: 5}, {f"k{i:06d}": {2: 3} for i in range(MAX_MARKER_ITEMS + 500)})
    back = RangeSeenMarker.decode(many.encode())
    assert back.vector_clock == {1: 5} and len(back.items) == MAX_MARKER_ITEMS
    big_keys = RangeSeenMarker({1: 5}, {f"{i:06d}" + "x" * 400: {2: 3} for i in range(5000)})
    back = RangeSeenMarker.decode(big_keys.encode())
    assert back.vector_clock == {1: 5} and 0 < len(back.items) < 5000
