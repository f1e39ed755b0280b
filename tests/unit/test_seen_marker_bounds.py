"""Seen markers from clients are bounded at every decoding stage; encode stays inside the bounds."""

from __future__ import annotations

import base64
import zlib

import msgpack
import pytest

from garagekv.model.k2v.causality import MAX_CLOCK_AHEAD_MS, MAX_CLOCK_ENTRIES
from garagekv.model.k2v.seen import (
    MAX_MARKER_CHARS,
    MAX_MARKER_DECOMPRESSED,
    MAX_MARKER_ITEMS,
    RangeSeenMarker,
)
from garagekv.util import codec
from garagekv.util.errors import BadRequest
from garagekv.util.time import now_ms


def wrap_packed(packed: bytes, level: int = 9) -> str:
    return base64.b64encode(zlib.compress(packed, level)).decode()


def wrap(body: object) -> str:
    return wrap_packed(codec.encode(body))


def refused(s: str, why: str = "") -> BadRequest:
    with pytest.raises(BadRequest, match="Invalid seenMarker" + why) as e:
        RangeSeenMarker.decode(s)
    assert e.value.code == "InvalidRequest" and e.value.status == 400
    return e.value


def test_millions_of_distinct_sort_keys_are_refused():
    """The bomb of the issue: a few hundred KiB of compressed distinct keys, far more objects."""
    items = [[f"{i:07d}", []] for i in range(300_000)]
    s = wrap([1, [], items])
    assert len(s) < MAX_MARKER_CHARS  # it is the decoded size that gives it away
    refused(s)


def test_too_many_per_item_clocks_are_refused():
    refused(wrap([1, [], [[f"k{i}", [[1, 1]]] for i in range(MAX_MARKER_ITEMS + 1)]]))
    ok = RangeSeenMarker.decode(wrap([1, [], [[f"k{i}", [[1, 1]]] for i in range(MAX_MARKER_ITEMS)]]))
    assert len(ok.items) == MAX_MARKER_ITEMS


def test_too_long_clocks_are_refused():
    long_clock = [[n, 1] for n in range(MAX_CLOCK_ENTRIES + 1)]
    refused(wrap([1, long_clock, []]), ": a clock has more than")
    refused(wrap([1, [], [["a", long_clock]]]), ": a clock has more than")
    RangeSeenMarker.decode(wrap([1, long_clock[:-1], [["a", long_clock[:-1]]]]))


@pytest.mark.parametrize("t", [2**64 - 1, 2**63, "bound+1"])
def test_times_no_node_could_have_issued_are_refused(t):
    t = now_ms() + MAX_CLOCK_AHEAD_MS + 10**6 if t == "bound+1" else t
    refused(wrap([1, [[7, t]], []]), ": time")
    refused(wrap([1, [], [["a", [[7, t]]]]]), ": time")


def test_zlib_bomb_is_refused_at_the_decompressed_bound():
    packed = codec.encode([1, [], [["a" * (MAX_MARKER_DECOMPRESSED + 10), []]]])
    refused(wrap_packed(packed), ": more than")


def test_over_long_text_is_refused_before_decoding():
    refused("A" * (MAX_MARKER_CHARS + 4), ": longer than")


@pytest.mark.parametrize("body", [[1, [], [["a", {}]]], [1, [], [[b"a", []]]], {1: 2}])
def test_maps_and_binaries_are_refused_while_decoding(body):
    refused(wrap_packed(msgpack.packb(body, use_bin_type=True)))


def test_encode_sheds_per_item_clocks_to_stay_decodable():
    many = RangeSeenMarker({1: 5}, {f"k{i:06d}": {2: 3} for i in range(MAX_MARKER_ITEMS + 500)})
    back = RangeSeenMarker.decode(many.encode())
    assert back.vector_clock == {1: 5} and len(back.items) == MAX_MARKER_ITEMS
    big_keys = RangeSeenMarker({1: 5}, {f"{i:06d}" + "x" * 400: {2: 3} for i in range(5000)})
    back = RangeSeenMarker.decode(big_keys.encode())
    assert back.vector_clock == {1: 5} and 0 < len(back.items) < 5000
