"""Seen markers from clients are bounded at every decoding stage; encode stays inside the bounds."""

from __future__ import annotations

import base64
import struct
import tracemalloc
import zlib

import msgpack
import pytest

from garagekv.model.k2v import causality
from garagekv.model.k2v import seen as seen_mod
from garagekv.model.k2v.causality import MAX_CLOCK_AHEAD_MS, MAX_CLOCK_ENTRIES
from garagekv.model.k2v.seen import (
    MAX_MARKER_CHARS,
    MAX_MARKER_DECOMPRESSED,
    MAX_MARKER_ITEMS,
    MAX_MARKER_KEY_BYTES,
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
    RangeSeenMarker.decode(v1([1, [list(p) for p in long_clock[:-1]], [["a", [list(p) for p in long_clock[:-1]]]]]))


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


# ---- exact bounds (found by mutation testing) --------------------------------------------------


def packed_size(s: str) -> int:
    return len(zlib.decompress(base64.b64decode(s)))


def test_a_time_exactly_at_the_bound_is_accepted_one_more_is_refused(monkeypatch):
    now = 1_800_000_000_000
    monkeypatch.setattr(causality, "now_ms", lambda: now)
    bound = now + MAX_CLOCK_AHEAD_MS
    assert RangeSeenMarker.decode(v2([(7, bound)], [("a", [(8, bound)])])) == RangeSeenMarker(
        {7: bound}, {"a": {8: bound}}
    )
    assert RangeSeenMarker.decode(v1([1, [[7, bound]], [["a", [[8, bound]]]]])).items == {"a": {8: bound}}
    refused(v2([(7, bound + 1)], []), ": time")
    refused(v2([], [("a", [(8, bound + 1)])]), ": time")
    refused(v1([1, [[7, bound + 1]], []]), ": time")
    refused(v1([1, [], [["a", [[8, bound + 1]]]]]), ": time")


def test_text_exactly_at_the_length_bound_is_decoded(monkeypatch):
    s = RangeSeenMarker({1: 5}, {"a": {2: 3}}).encode()
    monkeypatch.setattr(seen_mod, "MAX_MARKER_CHARS", len(s))
    assert RangeSeenMarker.decode(s) == RangeSeenMarker({1: 5}, {"a": {2: 3}})
    monkeypatch.setattr(seen_mod, "MAX_MARKER_CHARS", len(s) - 1)
    refused(s, ": longer than")


def test_a_marker_decompressing_to_exactly_the_bound_is_decoded(monkeypatch):
    expected = RangeSeenMarker({1: 5}, {"a": {2: 3}})
    s = v2([(1, 5)], [("a", [(2, 3)])])
    monkeypatch.setattr(seen_mod, "MAX_MARKER_DECOMPRESSED", packed_size(s))
    assert RangeSeenMarker.decode(s) == expected
    monkeypatch.setattr(seen_mod, "MAX_MARKER_DECOMPRESSED", packed_size(s) - 1)
    refused(s, ": more than")
    monkeypatch.undo()
    old = v1([1, [[1, 5]], [["a", [[2, 3]]]]])
    monkeypatch.setattr(seen_mod, "MAX_V1_DECOMPRESSED", packed_size(old))
    assert RangeSeenMarker.decode(old) == expected
    monkeypatch.setattr(seen_mod, "MAX_V1_DECOMPRESSED", packed_size(old) - 1)
    refused(old, r": more than \d+ bytes once decompressed \(format 1\)")


def test_a_zlib_bomb_is_never_inflated_beyond_the_bound():
    """32 MiB of zeros compress to 32 KiB: decoding stops after the first MiB instead of
    inflating the rest and then finding it too large."""
    bomb = base64.b64encode(zlib.compress(bytes(32 << 20), 9)).decode()
    tracemalloc.start()
    try:
        refused(bomb, ": more than")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_sort_keys_are_bounded_in_length():
    at_bound = "k" * MAX_MARKER_KEY_BYTES
    assert list(RangeSeenMarker.decode(v2([], [(at_bound, [(1, 1)])])).items) == [at_bound]
    refused(v2([], [(at_bound + "k", [(1, 1)])]))


def test_format_1_is_held_to_max_marker_items_per_item_list():
    """One-character keys (3 bytes of UTF-8) keep 10,001 items inside format 1's size bound, so
    only the array cap can refuse them."""
    keys = [chr(0x4E00 + i) for i in range(MAX_MARKER_ITEMS + 1)]
    over = v1([1, [], [[k, []] for k in keys]])
    assert packed_size(over) <= MAX_V1_DECOMPRESSED
    refused(over)
    assert len(RangeSeenMarker.decode(v1([1, [], [[k, []] for k in keys[:-1]]])).items) == MAX_MARKER_ITEMS


@pytest.mark.parametrize("not_text", [None, 5, ["AAAA"], b"AAAA"])
def test_a_marker_that_is_not_text_is_refused(not_text):
    with pytest.raises(BadRequest, match="^Invalid seenMarker$"):
        RangeSeenMarker.decode(not_text)


def test_encode_halves_the_per_item_clocks_until_the_marker_fits(monkeypatch):
    """At exactly the bound nothing is shed; one byte below, the last half of the sort keys goes
    (the first keys are kept, so the holder sees again only items of the shed keys)."""
    m = RangeSeenMarker({1: 5}, {k: {2: 3} for k in "abcd"})
    size = packed_size(m.encode())
    monkeypatch.setattr(seen_mod, "MAX_MARKER_DECOMPRESSED", size)
    assert RangeSeenMarker.decode(m.encode()) == m
    monkeypatch.setattr(seen_mod, "MAX_MARKER_DECOMPRESSED", size - 1)
    assert RangeSeenMarker.decode(m.encode()) == RangeSeenMarker({1: 5}, {"a": {2: 3}, "b": {2: 3}})
