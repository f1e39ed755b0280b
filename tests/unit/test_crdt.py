"""The generic CRDTs: last-writer-wins registers and maps, and their deterministic tie rule."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from garagekv.util.crdt import Lww, LwwMap, merge_values

# Wire values of different kinds, so ties compare across types too.
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.text(max_size=2), st.binary(max_size=2))
LWW = st.builds(Lww, st.integers(0, 2), VALUES)


def merged(a: Lww, b: Lww) -> Lww:
    out = Lww(a.ts, a.value)
    out.merge(b)
    return out


def test_newer_timestamp_wins_whatever_the_value() -> None:
    assert merged(Lww(1, "z"), Lww(2, "a")) == Lww(2, "a")
    assert merged(Lww(2, "a"), Lww(1, "z")) == Lww(2, "a")
    assert merged(Lww(2, None), Lww(1, b"x")) == Lww(2, None)


@pytest.mark.parametrize(
    ("small", "large"),
    [
        ("a", "b"),
        (b"a", b"b"),
        (1, 2),
        (False, True),
        (None, False),  # None sorts below everything
        (None, b""),
        (7, "a"),  # numbers < text < bytes
        ("zzz", b""),
        (b"zzz", ("role", 1)),  # ... < anything else (layout roles, parameters), by repr
        (("a", 2), ("b", 1)),
    ],
)
def test_equal_timestamps_keep_the_larger_value(small: object, large: object) -> None:
    """The tie rule: the same timestamp with two values (two writers, one clock tick) keeps the
    larger value on both sides, so replicas converge whichever update they saw first."""
    assert merged(Lww(5, small), Lww(5, large)) == Lww(5, large)
    assert merged(Lww(5, large), Lww(5, small)) == Lww(5, large)
    assert merge_values(small, large) == large and merge_values(large, small) == large


@given(LWW, LWW, LWW)
def test_lww_merge_laws(a: Lww, b: Lww, c: Lww) -> None:
    assert merged(a, b) == merged(b, a)
    assert merged(merged(a, b), c) == merged(a, merged(b, c))
    assert merged(a, a) == a


def test_new_starts_past_zero() -> None:
    """A fresh register beats the all-zero defaults a fresh node starts with."""
    r = Lww.new("v")
    assert r.ts > 0 and r.value == "v"
    assert merged(Lww(0, "zzz"), r) == r


def test_update_moves_the_clock_forward() -> None:
    r = Lww(10, "a")
    r.update("b")
    assert r.value == "b" and r.ts > 10
    assert merged(Lww(10, "z"), r) == r


def test_lww_map_merge_copies_what_it_takes() -> None:
    """Merging must not alias the other map's registers: later local updates stay local."""
    mine, theirs = LwwMap(), LwwMap()
    theirs.put("k", "v", ts=3)
    mine.merge(theirs)
    assert mine.get("k") == "v" and mine.get_ts("k") == 3
    mine.entries["k"].update("local")
    assert theirs.entries["k"] == Lww(3, "v")


def test_lww_map_merges_per_key() -> None:
    a, b = LwwMap(), LwwMap()
    a.put("x", "a-old", ts=1)
    a.put("y", "a-new", ts=9)
    b.put("x", "b-new", ts=2)
    b.put("y", "b-old", ts=8)
    b.put("z", None, ts=1)
    a.merge(b)
    assert list(a.items()) == [("x", "b-new"), ("y", "a-new"), ("z", None)]
    assert LwwMap.from_wire(a.to_wire()) == a


def test_lww_map_put_without_ts_goes_past_the_previous_one() -> None:
    m = LwwMap()
    ahead = 2**62  # a timestamp from a peer whose clock is far ahead of ours
    m.put("k", 1, ts=ahead)
    m.put("k", 2)
    assert m.get("k") == 2 and m.get_ts("k") > ahead
    assert m.get("missing") is None and m.get_ts("missing") == 0
