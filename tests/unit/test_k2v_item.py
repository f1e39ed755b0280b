"""K2V items: DVVS update/merge rules, the semantics clients see (docs/k2v-api.md §5-§6), encoding."""

from __future__ import annotations

import hashlib
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from garagekv.model.k2v.causality import CausalContext
from garagekv.model.k2v.item import DvvsEntry, K2VItem, partition_hash
from garagekv.util import codec
from tests.support.k2v_items import BUCKET, VALUES, check_laws, histories, merged, new

# --- simulation of a cluster -----------------------------------------------------------------


@st.composite
def arbitrary_items(draw: st.DrawFn) -> K2VItem:
    """Well-formed items that ignore the per-node dot invariant (same dot may hold other values)."""
    item = new()
    for n in draw(st.lists(st.integers(0, 4), unique=True, max_size=4)):
        td = draw(st.integers(0, 6))
        tss = draw(st.lists(st.integers(td + 1, td + 8), unique=True, max_size=4))
        item.items[n] = DvvsEntry(td, [(ts, draw(VALUES)) for ts in sorted(tss)])
    return item


def garage_rule_merge(a: K2VItem, b: K2VItem) -> K2VItem:
    """Reference: Garage's append-newer-than-max-time merge, as K2VItem.merge's docstring states it."""
    out = a.copy()
    for n, theirs in b.items.items():
        if n not in out.items:
            out.items[n] = theirs.copy()
            continue
        e = out.items[n]
        e.t_discard = max(e.t_discard, theirs.t_discard)
        e.discard()
        t_max = e.max_time()
        e.values += [d for d in theirs.values if d[0] > t_max]
    return out


@settings(max_examples=300)
@given(histories(), st.data())
def test_merge_laws_on_reachable_states(snaps: list[K2VItem], data: st.DataObject) -> None:
    pick = st.sampled_from(snaps)
    check_laws(data.draw(pick), data.draw(pick), data.draw(pick))


@settings(max_examples=300)
@given(histories(), st.data())
def test_merge_equals_garage_rule_under_invariant(snaps: list[K2VItem], data: st.DataObject) -> None:
    a, b = data.draw(st.sampled_from(snaps)), data.draw(st.sampled_from(snaps))
    assert merged(a, b) == garage_rule_merge(a, b)


@settings(max_examples=200)
@given(histories(), st.randoms(use_true_random=False))
def test_replicas_converge_in_any_order(snaps: list[K2VItem], rnd) -> None:
    orders = [list(snaps) for _ in range(3)]
    for o in orders:
        rnd.shuffle(o)
    results = {merged(*o).encode() for o in orders}
    assert len(results) == 1


@settings(max_examples=300)
@given(arbitrary_items(), arbitrary_items(), arbitrary_items())
def test_merge_laws_without_invariant(a: K2VItem, b: K2VItem, c: K2VItem) -> None:
    check_laws(a, b, c)


@given(histories())
def test_encode_roundtrip(snaps: list[K2VItem]) -> None:
    for s in snaps:
        assert K2VItem.decode(s.encode()) == s
        assert K2VItem.decode(s.encode()).encode() == s.encode()


# --- update rules ----------------------------------------------------------------------------


def test_update_timestamps() -> None:
    it = new()
    assert it.update(1, None, b"a", 100) == 101
    assert it.update(1, None, b"b", 50) == 102  # item time wins over a lagging node clock
    assert it.update(2, None, b"c", 0) == 1  # per-node entries are independent
    assert it.causal_context() == CausalContext({1: 102, 2: 1})


def test_context_creates_discard_entries_and_counts_in_token() -> None:
    it = new()
    it.update(1, CausalContext({7: 30}), b"a", 0)
    assert it.items[7] == DvvsEntry(30, [])
    assert it.causal_context() == CausalContext({1: 1, 7: 30})
    # A zero time discards nothing and creates no entry.
    it.update(1, CausalContext({8: 0}), b"b", 0)
    assert 8 not in it.items


def test_insert_with_read_token_supersedes_exactly_the_read_values() -> None:
    it = new()
    it.update(1, None, b"a", 0)
    it.update(2, None, b"b", 0)
    token = it.causal_context()  # client reads [a, b]
    it.update(3, None, b"c", 0)  # concurrent write the client never saw
    it.update(2, token, b"d", 0)
    assert it.values() == [b"d", b"c"]


def test_write_without_token_is_concurrent() -> None:
    it = new()
    it.update(1, None, b"old", 0)
    it.update(1, None, b"new", 0)
    assert it.values() == [b"old", b"new"]
    tok = it.causal_context()
    it.update(1, tok, b"x", 0)
    it.update(1, tok, b"y", 0)  # same token twice: two concurrent values
    assert it.values() == [b"x", b"y"]


def test_delete_with_old_token_keeps_concurrent_write() -> None:
    it = new()
    it.update(1, None, b"v1", 0)
    token = it.causal_context()
    it.update(1, None, b"v2", 0)  # concurrent with the delete below
    it.update(1, token, None, 0)
    assert it.values() == [b"v2", None]
    assert not it.is_tombstone()
    assert it.counts() == {"entries": 1, "conflicts": 1, "values": 1, "bytes": 2}


def test_delete_with_current_token_is_tombstone() -> None:
    it = new()
    it.update(1, None, b"v1", 0)
    it.update(1, it.causal_context(), None, 0)
    assert it.values() == [None]
    assert it.is_tombstone()
    assert it.counts() == {"entries": 0, "conflicts": 0, "values": 0, "bytes": 0}
    # A deleted item still has a token; writing with it resurrects cleanly.
    it.update(1, it.causal_context(), b"back", 0)
    assert it.values() == [b"back"]


def test_delete_without_token_is_concurrent_tombstone() -> None:
    it = new()
    it.update(1, None, b"v", 0)
    it.update(1, None, None, 0)
    assert it.values() == [b"v", None]


def test_dedup_of_identical_concurrent_values() -> None:
    it = new()
    it.update(1, None, b"same", 0)
    it.update(2, None, b"same", 0)  # a retried write through another coordinator
    assert it.values() == [b"same"]
    assert it.counts() == {"entries": 1, "conflicts": 0, "values": 1, "bytes": 4}
    it.update(1, None, b"", 0)
    it.update(2, None, b"", 0)
    assert it.values() == [b"same", b""]


def test_two_tombstones_count_as_one() -> None:
    it = new()
    it.update(1, None, None, 0)
    it.update(2, None, None, 0)
    assert it.values() == [None]
    assert it.is_tombstone()
    assert it.counts()["conflicts"] == 0


def test_values_in_node_then_time_order() -> None:
    it = new()
    it.update(5, None, b"n5a", 0)
    it.update(2, None, b"n2a", 0)
    it.update(5, None, b"n5b", 0)
    it.update(2, None, b"n2b", 0)
    assert it.values() == [b"n2a", b"n2b", b"n5a", b"n5b"]


def test_empty_item() -> None:
    it = new()
    assert it.values() == []
    assert it.is_tombstone()
    assert it.causal_context() == CausalContext({})
    assert it.counts() == {"entries": 0, "conflicts": 0, "values": 0, "bytes": 0}


def test_counts_use_deduplicated_values() -> None:
    it = new()
    for node, v in [(1, b"xx"), (2, b"xx"), (3, b"yyy"), (4, None), (5, None)]:
        it.update(node, None, v, 0)
    assert it.values() == [b"xx", b"yyy", None]
    assert it.counts() == {"entries": 1, "conflicts": 1, "values": 2, "bytes": 5}


def test_update_rejects_bad_node() -> None:
    with pytest.raises(ValueError):
        new().update(-1, None, b"", 0)
    with pytest.raises(ValueError):
        new().update(2**64, None, b"", 0)


def test_merge_refuses_other_item() -> None:
    with pytest.raises(ValueError):
        new().merge(K2VItem.new(BUCKET, "pk", "other"))


def test_merge_applies_discards_from_other_replica() -> None:
    a = new()
    a.update(1, None, b"x", 0)
    b = a.copy()
    b.update(2, b.causal_context(), b"y", 0)
    a.update(1, None, b"z", 0)  # concurrent with y
    a.merge(b)
    assert a.values() == [b"z", b"y"]


# --- keys and encoding -----------------------------------------------------------------------


def test_partition_hash_and_tree_key() -> None:
    expect = hashlib.blake2b(BUCKET + "pk é".encode(), digest_size=64).digest()[:32]
    it = K2VItem.new(BUCKET, "pk é", "s/k")
    assert partition_hash(BUCKET, "pk é") == it.partition_hash() == expect
    assert it.tree_key() == expect + b"s/k"
    with pytest.raises(ValueError):
        K2VItem.new(b"short", "pk", "sk")


def test_encode_is_deterministic_across_construction_orders() -> None:
    a = new()
    a.update(9, None, b"nine", 0)
    a.update(1, None, b"one", 0)
    b = new()
    b.update(1, None, b"one", 0)
    b.update(9, None, b"nine", 0)
    assert list(a.items) != list(b.items)  # dict insertion orders differ
    assert a == b and a.encode() == b.encode()
    # Same state reached through merges in different orders.
    parts = []
    for n in (3, 1, 2):
        p = new()
        p.update(n, None, bytes([n]), 0)
        parts.append(p)
    encs = {merged(*perm).encode() for perm in itertools.permutations(parts)}
    assert len(encs) == 1


def test_encode_keeps_bytes_as_bytes() -> None:
    it = new()
    it.update(1, None, b"\xff\x00", 0)
    body = codec.decode(it.encode()[1:])
    assert body[3][0][2][0][1] == b"\xff\x00"


def good_body() -> list:
    return [BUCKET, "pk", "sk", [[1, 2, [[3, b"v"], [4, None]]], [5, 0, []]]]


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b.__setitem__(0, b"short"),
        lambda b: b.__setitem__(1, b"pk"),
        lambda b: b.__setitem__(3, {}),
        lambda b: b.append(1),
        lambda b: b[3].reverse(),  # nodes out of order
        lambda b: b[3][0].__setitem__(0, -1),
        lambda b: b[3][0].__setitem__(0, True),
        lambda b: b[3][0].__setitem__(1, 3),  # value at ts 3 not above t_discard
        lambda b: b[3][0][2].reverse(),  # ts out of order
        lambda b: b[3][0][2][0].__setitem__(1, "str"),
        lambda b: b[3][0][2][0].__setitem__(0, 1.5),
        lambda b: b[3][0][2].append([9]),
    ],
)
def test_decode_rejects_malformed(mutate) -> None:
    body = good_body()
    assert K2VItem.decode(b"\x01" + codec.encode(body)).values() == [b"v", None]
    mutate(body)
    with pytest.raises(ValueError):
        K2VItem.decode(b"\x01" + codec.encode(body))


@pytest.mark.parametrize("data", [b"", b"\x02" + codec.encode(good_body()), b"\x01", b"\x01\xc1", b"\x01\x91"])
def test_decode_rejects_garbage(data: bytes) -> None:
    with pytest.raises(ValueError):
        K2VItem.decode(data)


# --- edge cases found by mutation testing ------------------------------------------------------


def test_zero_entry_in_a_token_does_not_stop_the_discards_after_it() -> None:
    """A token's pairs are applied in node order; a 0 time is skipped, not the end of the token."""
    it = new()
    it.update(1, None, b"one", 0)
    it.update(2, None, b"two", 0)
    token = CausalContext({0: 0, 1: 0, 2: it.causal_context().get(2)})
    it.update(3, token, b"three", 0)
    assert it.values() == [b"one", b"three"]  # node 2's value superseded, node 1's kept
    assert 0 not in it.items and it.items[1].t_discard == 0


def test_tombstone_and_bytes_under_one_dot_keep_the_bytes() -> None:
    """Two values under one dot (a node that reissued a timestamp): bytes win over a tombstone."""
    with_bytes, with_tombstone = new(), new()
    with_bytes.items[1] = DvvsEntry(0, [(5, b"data")])
    with_tombstone.items[1] = DvvsEntry(0, [(5, None)])
    for a, b in ((with_bytes, with_tombstone), (with_tombstone, with_bytes)):
        m = merged(a, b)
        assert m.items[1].values == [(5, b"data")]
        assert not m.is_tombstone()
    # Two different byte strings under one dot: the larger one, whichever side it came from.
    x, y = new(), new()
    x.items[1] = DvvsEntry(0, [(5, b"b")])
    y.items[1] = DvvsEntry(0, [(5, b"a")])
    assert merged(x, y).values() == merged(y, x).values() == [b"b"]


def test_merge_leaves_the_other_replica_untouched() -> None:
    """``a.merge(b)`` copies what it takes from ``b``: later writes to ``a`` never show in ``b``."""
    a, b = new(), new()
    a.update(1, None, b"a", 0)
    b.update(2, None, b"b", 0)
    b.update(1, CausalContext({1: 0}), b"b1", 5)
    before = b.encode()
    a.merge(b)
    assert b.encode() == before
    a.update(2, a.causal_context(), b"later", 10)
    a.update(1, None, b"later1", 10)
    assert b.encode() == before


# --- bounds of client-supplied contexts and of the encoding (found by mutation testing) -------


def test_other_nodes_times_in_a_context_are_cut_to_others_limit():
    item = new()
    item.update(1, CausalContext({2: 10**15, 3: 50}), b"v", 100, others_limit=1000)
    assert item.items[2].t_discard == 1000 and item.items[3].t_discard == 50
    # Without a limit the times are taken as they come.
    free = new()
    free.update(1, CausalContext({2: 10**15}), b"v", 100)
    assert free.items[2].t_discard == 10**15


def test_this_nodes_time_in_a_context_is_cut_to_what_it_issued():
    item = new()
    item.update(1, CausalContext({1: 10**15}), b"v", 0)
    # Nothing issued yet (node_ts 0, no entry): the claimed time discards nothing.
    assert item.items[1].t_discard == 0 and item.items[1].values == [(1, b"v")]
    item.update(1, CausalContext({1: 10**15}), b"w", 7)
    assert item.items[1].t_discard == 7 and item.items[1].values == [(8, b"w")]


def test_unknown_nodes_stop_entering_an_item_at_the_soft_cap_but_its_own_node_always_does():
    from garagekv.model.k2v.causality import ITEM_CLOCK_SOFT_CAP

    item = new()
    ctx = CausalContext({n: 5 for n in range(100, 100 + ITEM_CLOCK_SOFT_CAP - 1)})
    item.update(1, ctx, b"v", 10)
    assert len(item.items) == ITEM_CLOCK_SOFT_CAP  # the cap minus one known nodes, plus node 1
    item.update(2, CausalContext({999: 5, 2: 3}), b"w", 10)
    assert 999 not in item.items and 2 in item.items  # at the cap: new others refused, the writer kept
    below = new()
    below.update(1, CausalContext({n: 5 for n in range(100, 100 + ITEM_CLOCK_SOFT_CAP - 2)}), b"v", 10)
    below.update(1, CausalContext({999: 5}), b"w", 10)
    assert 999 in below.items  # one below the cap: still admitted


def test_the_last_timestamp_of_a_node_is_usable_and_the_next_is_refused():
    from garagekv.model.k2v.item import ClockExhausted

    item = new()
    assert item.update(1, None, b"v", 2**64 - 2) == 2**64 - 1
    with pytest.raises(ClockExhausted, match="no timestamp left"):
        item.update(1, None, b"w", 2**64 - 2)


def test_precondition_messages_name_what_is_wrong():
    with pytest.raises(ValueError, match="^bucket_id must be 32 bytes$"):
        K2VItem.new(b"short", "pk", "sk")
    with pytest.raises(ValueError, match="^node id and node_ts must be u64$"):
        new().update(-1, None, b"v", 1)
    other = K2VItem.new(BUCKET, "pk", "other")
    with pytest.raises(ValueError, match="^merging replicas of different K2V items$"):
        new().merge(other)
    with pytest.raises(ValueError, match="^unknown K2V item format$"):
        K2VItem.decode(b"\x09" + new().encode()[1:])
    with pytest.raises(ValueError, match="^corrupt K2V item: "):
        K2VItem.decode(b"\x01\xc1")


def _encoded(body: object) -> bytes:
    return b"\x01" + codec.encode_lists(body)


@pytest.mark.parametrize(
    "entries",
    [
        [[1, 0, [[1, b"a"]]], [1, 0, [[2, b"b"]]]],  # the same node twice
        [[2, 0, [[1, b"a"]]], [1, 0, [[2, b"b"]]]],  # nodes out of order
        [[1, 0, [[1, b"a"], [1, b"b"]]]],  # the same dot twice
        [[1, 5, [[5, b"a"]]]],  # a value at or below the discard time
        [[1, 0, [[1, b"a", 3]]]],  # a dot of three fields
        [[1, 0]],  # an entry of two fields
    ],
)
def test_non_canonical_encodings_are_refused(entries):
    ok = _encoded([BUCKET, "pk", "sk", [[1, 0, [[1, b"a"]]]]])
    assert K2VItem.decode(ok).values() == [b"a"]
    with pytest.raises(ValueError, match="corrupt K2V item"):
        K2VItem.decode(_encoded([BUCKET, "pk", "sk", entries]))


@pytest.mark.parametrize("body", [[BUCKET, "pk", "sk"], [BUCKET, "pk", "sk", [], 5], {"a": 1, "b": 2, "c": 3, "d": 4}])
def test_bodies_of_the_wrong_shape_are_refused(body):
    with pytest.raises(ValueError, match="^corrupt K2V item$"):
        K2VItem.decode(_encoded(body))


def test_merge_encoded_is_the_merge_of_the_replicas_it_was_given():
    from garagekv.model.k2v.item import merge_encoded

    a, b = new(), new()
    a.update(1, None, b"a", 10)
    b.update(2, None, b"b", 20)
    merged = merge_encoded([None, a.encode(), None, b.encode(), a.encode()])
    assert merged is not None and sorted(merged.values()) == [b"a", b"b"]
    assert merge_encoded([]) is None and merge_encoded([None, None]) is None
    assert merge_encoded([a.encode()]).encode() == a.encode()


def test_soft_cap_is_reached_at_exactly_its_size_and_does_not_stop_the_other_discards():
    """An item holding exactly ITEM_CLOCK_SOFT_CAP entries refuses a new other node, written by a
    node it already knows (so the writer adds no entry first); the refusal skips that node only:
    a known node after it in the context still has its values discarded."""
    from garagekv.model.k2v.causality import ITEM_CLOCK_SOFT_CAP

    item = new()
    item.update(1, CausalContext({n: 5 for n in range(100, 100 + ITEM_CLOCK_SOFT_CAP - 1)}), b"v", 10)
    assert len(item.items) == ITEM_CLOCK_SOFT_CAP
    known = 100 + ITEM_CLOCK_SOFT_CAP - 2
    item.update(1, CausalContext({99: 5, known: 9}), b"w", 20)
    assert 99 not in item.items and len(item.items) == ITEM_CLOCK_SOFT_CAP
    assert item.items[known].t_discard == 9
