"""Index counters: CRDT laws, per-layout filtering, local running totals and diffs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from garagekv.model.index_counter import (
    COUNTER_NAMES,
    CounterEntry,
    LocalCounter,
    counts_diff,
)
from garagekv.model.k2v.item import K2VItem
from garagekv.util import codec

BUCKET = b"\x01" * 32

REGISTERS = st.dictionaries(
    st.integers(0, 4),
    st.tuples(st.integers(0, 5), st.integers(-3, 3)),  # small ranges: ts ties are frequent
    max_size=4,
)
ENTRIES = st.builds(
    lambda v: CounterEntry(BUCKET, "pk", v),
    st.dictionaries(st.sampled_from(COUNTER_NAMES + ("other",)), REGISTERS, max_size=5),
)


def merged(*es: CounterEntry) -> CounterEntry:
    out = es[0].copy()
    for e in es[1:]:
        out.merge(e)
    return out


@settings(max_examples=300)
@given(ENTRIES, ENTRIES, ENTRIES)
def test_merge_laws(a: CounterEntry, b: CounterEntry, c: CounterEntry) -> None:
    assert merged(a, b).encode() == merged(b, a).encode()
    assert merged(merged(a, b), c).encode() == merged(a, merged(b, c)).encode()
    assert merged(a, a).encode() == a.encode()
    assert merged(a, b) == merged(b, a)


@given(ENTRIES)
def test_encode_roundtrip(e: CounterEntry) -> None:
    assert CounterEntry.decode(e.encode()) == e


def test_merge_keeps_higher_ts_then_larger_value() -> None:
    a = CounterEntry(BUCKET, "pk", {"values": {1: (5, 10), 2: (3, 1)}})
    b = CounterEntry(BUCKET, "pk", {"values": {1: (4, 99), 2: (3, 7), 3: (1, 1)}})
    a.merge(b)
    assert a.values == {"values": {1: (5, 10), 2: (3, 7), 3: (1, 1)}}
    with pytest.raises(ValueError):
        a.merge(CounterEntry(BUCKET, "other", {}))


def test_filtered_values_and_tombstone() -> None:
    e = CounterEntry(BUCKET, "pk", {"entries": {1: (1, 3), 2: (1, 5), 9: (1, 0)}, "bytes": {9: (1, 7)}})
    assert e.filtered_values() == {"entries": 5, "bytes": 7}
    assert e.filtered_values([1]) == {"entries": 3, "bytes": 0}
    assert e.filtered_values([]) == {"entries": 0, "bytes": 0}
    assert not e.is_tombstone()
    assert not e.is_tombstone([1, 2])
    # Only node 9 (which left the layout) still counts bytes; node 9 is ignored.
    zero = CounterEntry(BUCKET, "pk", {"entries": {1: (2, 0)}, "bytes": {9: (1, 7)}})
    assert zero.is_tombstone([1])
    assert not zero.is_tombstone()
    assert CounterEntry(BUCKET, "pk").is_tombstone()


def test_keys() -> None:
    e = CounterEntry(BUCKET, "pk é")
    assert e.partition_hash() == BUCKET
    assert e.tree_key() == BUCKET + "pk é".encode()


def test_local_counter_apply_diff() -> None:
    lc = LocalCounter(BUCKET, "pk")
    lc.apply_diff({"entries": 1, "bytes": 5}, now_ms=1000)
    assert lc.values == {"entries": (1000, 1), "bytes": (1000, 5)}
    lc.apply_diff({"bytes": -2}, now_ms=500)  # clock went back: ts still increases
    assert lc.values == {"entries": (1000, 1), "bytes": (1001, 3)}
    lc.apply_diff({"entries": -1}, now_ms=2000)
    assert lc.values["entries"] == (2000, 0)
    entry = lc.to_entry(42)
    assert entry == CounterEntry(BUCKET, "pk", {"entries": {42: (2000, 0)}, "bytes": {42: (1001, 3)}})
    assert LocalCounter.decode(lc.encode()) == lc


def test_local_updates_supersede_earlier_publications() -> None:
    lc = LocalCounter(BUCKET, "pk")
    global_entry = CounterEntry(BUCKET, "pk")
    for i, diff in enumerate([{"values": 1}, {"values": 1}, {"values": -1}]):
        lc.apply_diff(diff, now_ms=100)  # same wall clock every time
        global_entry.merge(lc.to_entry(7))
        if i == 0:
            stale = lc.to_entry(7)
    global_entry.merge(stale)  # a late, reordered publication
    assert global_entry.filtered_values([7]) == {"values": 1}


def test_counts_diff() -> None:
    assert counts_diff(None, None) == {}
    new = {"entries": 1, "conflicts": 0, "values": 1, "bytes": 3}
    assert counts_diff(None, new) == {"entries": 1, "values": 1, "bytes": 3}
    assert counts_diff(new, None) == {"entries": -1, "values": -1, "bytes": -3}
    assert counts_diff(new, dict(new)) == {}
    assert counts_diff(new, {**new, "conflicts": 1, "bytes": 1}) == {"conflicts": 1, "bytes": -2}


def test_counts_diff_tracks_item_lifecycle() -> None:
    """Summing diffs of an item's successive states always gives its current counts."""
    lc = LocalCounter(BUCKET, "pk")
    it = K2VItem.new(BUCKET, "pk", "sk")
    prev = None
    steps = [(1, None, b"abc"), (2, None, b"de"), (1, "ctx", None), (2, "ctx", None)]
    for node, ctx, value in steps:
        it.update(node, it.causal_context() if ctx else None, value, 0)
        lc.apply_diff(counts_diff(prev, it.counts()), now_ms=1)
        prev = it.counts()
        assert {k: lc.values.get(k, (0, 0))[1] for k in COUNTER_NAMES} == it.counts()
    assert all(v == 0 for _, v in lc.values.values())


@pytest.mark.parametrize(
    "body",
    [
        [BUCKET, "pk"],
        [b"short", "pk", []],
        [BUCKET, b"pk", []],
        [BUCKET, "pk", {}],
        [BUCKET, "pk", [["values"]]],
        [BUCKET, "pk", [[1, []]]],
        [BUCKET, "pk", [["values", [[1, 2]]]]],
        [BUCKET, "pk", [["values", [[-1, 2, 3]]]]],
        [BUCKET, "pk", [["values", [[1, -2, 3]]]]],
        [BUCKET, "pk", [["values", [[1, 2, 2**63]]]]],
        [BUCKET, "pk", [["values", [[1, 2, 3.0]]]]],
        [BUCKET, "pk", [["values", [[1, 2, True]]]]],
        [BUCKET, "pk", [["values", [[1, 2, 3], [1, 2, 4]]]]],
        [BUCKET, "pk", [["values", []], ["values", []]]],
    ],
)
def test_entry_decode_rejects_malformed(body: list) -> None:
    with pytest.raises(ValueError):
        CounterEntry.decode(b"\x01" + codec.encode(body))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x02" + codec.encode([BUCKET, "pk", []]),
        b"\x01\xc1",
        b"\x01" + codec.encode([BUCKET, "pk", [["values", 1]]]),
        b"\x01" + codec.encode([BUCKET, "pk", [["values", 1, 2], ["values", 1, 2]]]),
        b"\x01" + codec.encode([BUCKET, "pk", [["values", -1, 2]]]),
    ],
)
def test_local_decode_rejects_malformed(data: bytes) -> None:
    with pytest.raises(ValueError):
        LocalCounter.decode(data)
    assert LocalCounter.decode(b"\x01" + codec.encode([BUCKET, "pk", []])) == LocalCounter(BUCKET, "pk")
