"""Expiring values in the DVVS item (docs/k2v-api.md "Expiring values"): the expiry is part of
the dot, merges as a CRDT, and expiring a value touches that value's dot alone."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from garagekv.model.k2v.causality import CausalContext
from garagekv.model.k2v.item import ITEM_FORMAT_EXPIRY, ITEM_FORMAT_VERSION, DvvsEntry, K2VItem
from garagekv.util import codec
from tests.support.k2v_items import BUCKET, VALUES, check_laws, histories, merged, new

NOW = st.integers(0, 70)


@st.composite
def arbitrary_items(draw: st.DrawFn) -> K2VItem:
    """Well-formed items with expiring dots, ignoring the per-node dot invariant: the same dot may
    hold other values or expiries on other replicas, and expired (tombstone + expiry) dots."""
    item = new()
    for n in draw(st.lists(st.integers(0, 4), unique=True, max_size=4)):
        td = draw(st.integers(0, 6))
        tss = sorted(draw(st.lists(st.integers(td + 1, td + 8), unique=True, max_size=4)))
        values = [(ts, draw(VALUES)) for ts in tss]
        expiry = {ts: e for ts in tss if (e := draw(st.one_of(st.none(), st.integers(0, 12)))) is not None}
        item.items[n] = DvvsEntry(td, values, expiry)
    return item


def live_dots(item: K2VItem) -> dict[tuple[int, int], bytes]:
    return {(n, ts): v for n, e in item.items.items() for ts, v in e.values if v is not None}


# --- CRDT laws ---------------------------------------------------------------------------------


@settings(max_examples=300)
@given(histories(ttl=True), st.data())
def test_merge_laws_on_reachable_states_with_expiry(snaps: list[K2VItem], data: st.DataObject) -> None:
    pick = st.sampled_from(snaps)
    check_laws(data.draw(pick), data.draw(pick), data.draw(pick))


@settings(max_examples=300)
@given(arbitrary_items(), arbitrary_items(), arbitrary_items())
def test_merge_laws_with_expiry_without_invariant(a: K2VItem, b: K2VItem, c: K2VItem) -> None:
    check_laws(a, b, c)


@settings(max_examples=200)
@given(histories(ttl=True), st.randoms(use_true_random=False))
def test_replicas_with_expiry_converge_in_any_order(snaps: list[K2VItem], rnd) -> None:
    orders = [list(snaps) for _ in range(3)]
    for o in orders:
        rnd.shuffle(o)
    assert len({merged(*o).encode() for o in orders}) == 1


@settings(max_examples=300)
@given(arbitrary_items(), arbitrary_items(), NOW)
def test_reading_at_a_time_commutes_with_merge(a: K2VItem, b: K2VItem, now: int) -> None:
    """Expiring before or after merging gives the same state: a replica that expired a value and
    one that did not yet agree on what a reader sees, whichever way they meet."""
    assert merged(a, b).at(now).encode() == merged(a.at(now), b.at(now)).encode()


@settings(max_examples=300)
@given(histories(ttl=True), NOW)
def test_expiry_never_resurrects(snaps: list[K2VItem], now: int) -> None:
    """Once a replica holds a dot as expired, no merge shows that dot's value again."""
    expired = {(n, ts) for s in snaps for n, e in s.items.items() for ts, v in e.values if v is None and ts in e.expiry}
    assert not expired & live_dots(merged(*snaps)).keys()


@settings(max_examples=300)
@given(arbitrary_items(), NOW)
def test_expire_touches_exactly_the_due_dots(item: K2VItem, now: int) -> None:
    view = item.at(now)
    assert view.causal_context() == item.causal_context()
    assert {n: e.expiry for n, e in view.items.items()} == {n: e.expiry for n, e in item.items.items()}
    for n, e in item.items.items():
        for (ts, v), (ts2, v2) in zip(e.values, view.items[n].values, strict=True):
            assert ts == ts2
            due = v is not None and ts in e.expiry and e.expiry[ts] <= now
            assert v2 == (None if due else v)
    assert all(exp > now for exp in view.pending_expiries())
    assert item.at(now) is item or item.pending_expiries()  # no copy when nothing can expire


@given(histories(ttl=True))
def test_encode_roundtrip_with_expiry(snaps: list[K2VItem]) -> None:
    for s in snaps:
        raw = s.encode()
        assert raw[0] == (ITEM_FORMAT_EXPIRY if any(e.expiry for e in s.items.values()) else ITEM_FORMAT_VERSION)
        assert K2VItem.decode(raw) == s
        assert K2VItem.decode(raw).encode() == raw


# --- the rules clients see ---------------------------------------------------------------------


def test_items_without_expiry_keep_format_1_bytes() -> None:
    """Existing items encode exactly as before (same Merkle hashes), and old bytes decode."""
    it = new()
    it.update(1, None, b"v", 0)
    it.update(2, None, None, 0)
    raw = it.encode()
    assert raw == b"\x01" + codec.encode_lists([BUCKET, "pk", "sk", [[1, 0, [[1, b"v"]]], [2, 0, [[1, None]]]]])
    assert K2VItem.decode(raw) == it


def test_expiring_value_encodes_its_expiry_with_the_dot() -> None:
    it = new()
    it.update(1, None, b"v", 0, expires=1234)
    it.update(1, None, b"w", 0)
    raw = it.encode()
    assert raw[0] == ITEM_FORMAT_EXPIRY
    assert codec.decode(raw[1:])[3] == [[1, 0, [[1, b"v", 1234], [2, b"w", None]]]]
    assert K2VItem.decode(raw).items[1].expiry == {1: 1234}


@pytest.mark.parametrize(
    "dots",
    [
        [[1, b"v", None]],  # format 2 without any expiry is not canonical
        [[1, b"v", -1]],
        [[1, b"v", "soon"]],
        [[1, b"v"]],
        [[1, b"v", 5, 6]],
    ],
)
def test_decode_rejects_malformed_expiring_dots(dots: list) -> None:
    body = [BUCKET, "pk", "sk", [[1, 0, dots]]]
    with pytest.raises(ValueError):
        K2VItem.decode(bytes([ITEM_FORMAT_EXPIRY]) + codec.encode(body))


def test_only_values_can_expire() -> None:
    with pytest.raises(ValueError, match="^only a value can expire, at a u64 time$"):
        new().update(1, None, None, 0, expires=10)
    with pytest.raises(ValueError, match="^only a value can expire, at a u64 time$"):
        new().update(1, None, b"v", 0, expires=-1)


def test_expired_value_reads_as_tombstone_and_later_concurrent_values_survive() -> None:
    it = new()
    it.update(1, None, b"plain-before", 0)
    it.update(1, None, b"ttl", 0, expires=100)
    it.update(1, None, b"plain-after", 0)
    it.update(2, None, b"other-node", 0)
    assert it.expires() == 100
    assert it.at(99).values() == [b"plain-before", b"ttl", b"plain-after", b"other-node"]
    view = it.at(100)
    assert view.values() == [b"plain-before", None, b"plain-after", b"other-node"]
    assert view.expires() is None
    assert it.values()[1] == b"ttl"  # the view is a copy


def test_only_value_expired_reads_as_deleted_item() -> None:
    it = new()
    it.update(1, None, b"ttl", 0, expires=100)
    assert not it.at(99).is_tombstone()
    assert it.at(100).is_tombstone() and it.at(100).values() == [None]


def test_expire_then_tombstone_dot_counts_and_wakes() -> None:
    """What the expiry worker writes: the dot expired in place plus its own tombstone dot, so the
    counters drop and the token moves (pollers wake) while the old token's values are untouched."""
    it = new()
    it.update(1, None, b"ttl", 0, expires=100)
    it.update(2, None, b"keep", 0)
    token = it.causal_context()
    assert it.counts()["values"] == 2 and it.pending_expiries() == {100}
    assert it.expire(100) == 1
    it.update(3, None, None, 200)
    assert it.counts() == {"entries": 1, "conflicts": 1, "values": 1, "bytes": 4}
    assert it.pending_expiries() == set()
    assert it.causal_context().is_newer_than(token)
    assert it.values() == [None, b"keep"]


def test_write_with_token_and_no_ttl_no_longer_expires() -> None:
    it = new()
    it.update(1, None, b"ttl", 0, expires=100)
    it.update(1, it.causal_context(), b"forever", 0)
    assert it.pending_expiries() == set() and it.items[1].expiry == {}
    assert it.at(10**12).values() == [b"forever"]
    assert it.encode()[0] == ITEM_FORMAT_VERSION


def test_a_stale_replica_with_the_live_value_does_not_bring_it_back() -> None:
    live = new()
    live.update(1, None, b"ttl", 0, expires=100)
    expired = live.copy()
    expired.expire(100)
    expired.update(2, None, None, 150)
    for a, b in ((live, expired), (expired, live)):
        m = merged(a, b)
        assert m.values() == [None] and m.is_tombstone()
        assert m.items[1].values == [(1, None)] and m.items[1].expiry == {1: 100}


def test_context_covering_an_expired_dot_discards_it_and_its_expiry() -> None:
    it = new()
    it.update(1, None, b"ttl", 0, expires=100)
    it.expire(100)
    it.update(2, CausalContext({1: 1}), b"new", 0)
    assert it.items[1].values == [] and it.items[1].expiry == {}
    assert it.values() == [b"new"]


# --- found by mutation testing -----------------------------------------------------------------


def test_expire_counts_every_value_it_turns_into_a_tombstone() -> None:
    it = new()
    it.update(1, None, b"a", 0, expires=100)
    it.update(1, None, b"b", 0, expires=90)
    it.update(1, None, b"late", 0, expires=200)
    it.update(2, None, b"c", 0, expires=50)
    assert it.expire(100) == 3
    assert it.values() == [None, b"late"]
    assert it.expire(100) == 0  # already tombstones


@pytest.mark.parametrize("expiry", [None, 10])
def test_under_one_dot_the_larger_bytes_win_even_against_the_empty_value(expiry: int | None) -> None:
    """The rank of a dot's bytes is the bytes themselves: the empty value is below every other
    value, under one expiry as without one, and no two values rank alike."""
    for small, large in ((b"", b"a"), (b"", b"XXXX"), (b"a", b"b")):
        x, y = new(), new()
        x.items[1] = DvvsEntry(0, [(5, small)], {} if expiry is None else {5: expiry})
        y.items[1] = DvvsEntry(0, [(5, large)], {} if expiry is None else {5: expiry})
        assert merged(x, y).values() == merged(y, x).values() == [large]
