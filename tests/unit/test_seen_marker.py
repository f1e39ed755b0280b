"""PollRange seen markers: bookkeeping of what was seen, and strict decoding of client input."""

from __future__ import annotations

import base64
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from garagekv.model.k2v import seen as seen_mod
from garagekv.model.k2v.item import K2VItem
from garagekv.model.k2v.seen import RangeSeenMarker
from garagekv.util import codec
from garagekv.util.errors import BadRequest

BUCKET = b"\x07" * 32
U64 = st.integers(0, 2**64 - 1)
TIMES = st.integers(0, 2**48)  # what a client clock may carry (see test_seen_marker_bounds)
CLOCKS = st.dictionaries(U64, TIMES, max_size=4)


def item(sk: str, *writes: int) -> K2VItem:
    it = K2VItem.new(BUCKET, "pk", sk)
    for node in writes:
        it.update(node, None, f"{sk}@{node}".encode(), 0)
    return it


def wrap(body: object) -> str:
    return base64.b64encode(zlib.compress(codec.encode(body))).decode()


# --- round trip ------------------------------------------------------------------------------


@given(CLOCKS, st.dictionaries(st.text(max_size=5), CLOCKS, max_size=4))
def test_roundtrip_is_canonical(vc: dict[int, int], items: dict[str, dict[int, int]]) -> None:
    m = RangeSeenMarker(vc, items)
    s = m.encode()
    assert m.items == items  # encode does not mutate
    base64.b64decode(s, validate=True)  # standard alphabet, padded
    assert len(s) % 4 == 0
    m.canonicalize()
    assert RangeSeenMarker.decode(s) == m
    assert RangeSeenMarker.decode(s).encode() == s


def test_empty_marker() -> None:
    s = RangeSeenMarker().encode()
    assert RangeSeenMarker.decode(s) == RangeSeenMarker({}, {})


# --- restrict and canonicalize ---------------------------------------------------------------


def test_restrict() -> None:
    keys = ["a", "b", "c", "d.1", "d.2", "e"]
    m = RangeSeenMarker({1: 1}, {k: {2: 5} for k in keys})
    m.restrict(start="b", end="e")
    assert sorted(m.items) == ["b", "c", "d.1", "d.2"]  # start included, end excluded
    m.restrict(prefix="d.")
    assert sorted(m.items) == ["d.1", "d.2"]
    m.restrict(prefix="d.", start="d.2")
    assert sorted(m.items) == ["d.2"]
    assert m.vector_clock == {1: 1}
    m2 = RangeSeenMarker({}, {k: {2: 5} for k in keys})
    m2.restrict()
    assert sorted(m2.items) == keys


def test_canonicalize_drops_covered_items() -> None:
    m = RangeSeenMarker({1: 10, 2: 10}, {"a": {1: 5}, "b": {1: 5, 3: 1}, "c": {2: 11}})
    m.canonicalize()
    assert m.items == {"b": {1: 5, 3: 1}, "c": {2: 11}}


# --- mark_seen_node_items / is_new_item ------------------------------------------------------


def test_fresh_marker_sees_everything_written() -> None:
    m = RangeSeenMarker()
    assert m.is_new_item(item("a", 1))
    assert not m.is_new_item(item("a"))  # never written: empty clock


def test_items_from_their_own_coordinator_advance_the_vector_clock() -> None:
    m = RangeSeenMarker()
    a, b = item("a", 1), item("b", 1, 1)
    m.mark_seen_node_items(1, [a, b])
    assert m.vector_clock == {1: 2}
    assert m.items == {}
    assert not m.is_new_item(a) and not m.is_new_item(b)
    # Node timestamps increase across items (node 1 already issued 2), so the next dot is newer.
    a.update(1, a.causal_context(), b"again", 2)
    assert m.is_new_item(a)


def test_the_vector_clock_stops_at_the_answering_nodes_stable_bound() -> None:
    """Node 1 had issued time 1 (item a) and reserved time 2 for a conditional write when it read
    its items; b got time 3 from a plain insert. The marker must not claim time 2."""
    m = RangeSeenMarker()
    a = item("a", 1)
    b = K2VItem.new(BUCKET, "pk", "b")
    b.update(1, None, b"plain", 2)  # dot 3 of node 1
    m.mark_seen_node_items(1, [a, b], issued=1, stable=1)
    assert m.vector_clock == {1: 1}
    assert m.items == {"b": {1: 3}}
    assert not m.is_new_item(a) and not m.is_new_item(b)  # b is seen, through its own clock
    cond = K2VItem.new(BUCKET, "pk", "c")
    cond.update(1, None, b"conditional", 1)  # dot 2, committed after b was reported
    assert m.is_new_item(cond)
    m2 = RangeSeenMarker.decode(m.encode())
    assert m2.is_new_item(cond) and not m2.is_new_item(b)
    # Without the bound, node 1's answer claimed dot 2 as well.
    unbounded = RangeSeenMarker()
    unbounded.mark_seen_node_items(1, [a, b], issued=1)
    assert not unbounded.is_new_item(cond)


def test_partially_covered_item_is_remembered_per_sort_key() -> None:
    m = RangeSeenMarker()
    x = item("x", 1, 2)  # dots from nodes 1 and 2, answered by node 1 only
    m.mark_seen_node_items(1, [x])
    assert m.vector_clock == {1: 1}
    assert m.items == {"x": {1: 1, 2: 1}}
    assert not m.is_new_item(x)
    # Another key with a dot of node 2 was not seen: the per-item clock does not leak across keys.
    assert m.is_new_item(item("y", 2))
    # A later write to x by node 2 is new.
    x2 = x.copy()
    x2.update(2, None, b"later", 0)
    assert m.is_new_item(x2)
    # When node 2 answers as well, the per-item clock becomes redundant.
    m.mark_seen_node_items(2, [x])
    assert m.vector_clock == {1: 1, 2: 1}
    m.canonicalize()
    assert m.items == {}
    assert not m.is_new_item(x)


def test_per_item_clock_accumulates_with_vclock_max() -> None:
    m = RangeSeenMarker()
    a = item("k", 1, 2, 3)
    b = a.copy()
    b.update(3, None, b"more", 0)
    m.mark_seen_node_items(1, [b])
    m.mark_seen_node_items(2, [a])
    assert m.items["k"] == {1: 1, 2: 1, 3: 2}
    assert not m.is_new_item(a) and not m.is_new_item(b)


def test_marker_survives_encoding_for_is_new_item() -> None:
    m = RangeSeenMarker()
    x = item("x", 1, 2)
    m.mark_seen_node_items(1, [x])
    m2 = RangeSeenMarker.decode(m.encode())
    assert not m2.is_new_item(x)
    assert m2.is_new_item(item("y", 2))


# --- decode rejections -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "s",
    [
        "",
        "!!!!",
        "not base64 at all",
        "AAAA====",
        "eJw",  # missing padding
        RangeSeenMarker().encode() + "\n",
        RangeSeenMarker().encode().replace("=", "") + "A=",
        "é",
        base64.b64encode(b"garbage that is not zlib").decode(),
        base64.b64encode(zlib.compress(codec.encode([1, [], []]))[:-2]).decode(),  # truncated
        base64.b64encode(zlib.compress(codec.encode([1, [], []])) + b"x").decode(),  # trailing
        base64.b64encode(zlib.compress(b"\xc1")).decode(),  # invalid msgpack
        base64.b64encode(zlib.compress(codec.encode([1, [], []]) + b"\x00")).decode(),  # extra data
    ],
)
def test_decode_rejects_garbage(s: str) -> None:
    with pytest.raises(BadRequest, match="^Invalid seenMarker$"):
        RangeSeenMarker.decode(s)


@pytest.mark.parametrize(
    "body",
    [
        None,
        {},
        "x",
        [],
        [1, [], []][:2],
        [1, [], [], []],
        [2, [], []],  # unknown version
        [True, [], []],
        [1.0, [], []],
        [1, {}, []],
        [1, [], {}],
        [1, [[1]], []],
        [1, [[1, 2, 3]], []],
        [1, [[-1, 2]], []],
        [1, [[1, -2]], []],
        [1, [[1, 2.0]], []],
        [1, [[True, 2]], []],
        [1, [[1, "2"]], []],
        [1, [[1, 2], [1, 3]], []],  # duplicate node
        [1, [], [["a"]]],
        [1, [], [[b"a", []]]],
        [1, [], [[1, []]]],
        [1, [], [["a", [[1, -1]]]]],
        [1, [], [["a", {}]]],
        [1, [], [["a", []], ["a", []]]],  # duplicate sort key
    ],
)
def test_decode_rejects_wrong_shapes(body: object) -> None:
    with pytest.raises(BadRequest, match="Invalid seenMarker"):
        RangeSeenMarker.decode(wrap(body))


def test_decode_accepts_valid_hand_built_body() -> None:
    m = RangeSeenMarker.decode(wrap([1, [[1, 2]], [["a", [[3, 4]]]]]))
    assert m == RangeSeenMarker({1: 2}, {"a": {3: 4}})


def test_decode_caps_decompressed_size(monkeypatch: pytest.MonkeyPatch) -> None:
    s = wrap([1, [[n, n] for n in range(200)], []])
    assert len(RangeSeenMarker.decode(s).vector_clock) == 200
    monkeypatch.setattr(seen_mod, "MAX_MARKER_DECOMPRESSED", 100)
    with pytest.raises(BadRequest, match="Invalid seenMarker"):
        RangeSeenMarker.decode(s)


def test_decode_rejects_non_str() -> None:
    with pytest.raises(BadRequest):
        RangeSeenMarker.decode(b"AAAA")  # type: ignore[arg-type]


# --- found by mutation testing ---------------------------------------------------------------


def test_vector_clock_never_goes_backwards_within_one_answer() -> None:
    """Items come in sort-key order, not clock order: a later key with an older dot must not
    pull ``vector_clock`` back (PollRange would then hand the newer key out again)."""
    a = K2VItem.new(BUCKET, "pk", "a")
    b = K2VItem.new(BUCKET, "pk", "b")
    b.update(1, None, b"old", 0)  # node 1 writes b first (ts 1) ...
    a.update(1, None, b"new", 7)  # ... then a (ts 8): clocks decrease in sort-key order
    m = RangeSeenMarker()
    m.mark_seen_node_items(1, [a, b])
    assert m.vector_clock == {1: 8}
    assert not m.is_new_item(a) and not m.is_new_item(b)
    # Nor across answers: a later answer with only the old key keeps the clock where it was.
    m.mark_seen_node_items(1, [b])
    assert m.vector_clock == {1: 8}
    assert not RangeSeenMarker.decode(m.encode()).is_new_item(a)


def test_decode_shared_remembers_small_markers_and_copies_are_independent() -> None:
    m = RangeSeenMarker({1: 5}, {"a": {2: 3}})
    s = m.encode()
    shared = RangeSeenMarker.decode_shared(s)
    assert shared == m and RangeSeenMarker.decode_shared(s) is shared
    mine = shared.copy()
    mine.restrict(start="b")
    mine.mark_seen_node_items(1, [item("z", 1, 1)])
    assert RangeSeenMarker.decode_shared(s) == m  # the shared one did not change
    big = RangeSeenMarker({1: 5}, {f"k{i:05}": {2: i + 1} for i in range(2000)}).encode()
    assert len(big) > seen_mod.SHARED_MAX_CHARS
    assert RangeSeenMarker.decode_shared(big) is not RangeSeenMarker.decode_shared(big)
    with pytest.raises(BadRequest):
        RangeSeenMarker.decode_shared("AAAA")
