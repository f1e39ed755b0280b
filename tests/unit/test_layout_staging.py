"""The staging area is a CRDT: merge laws, concurrent edits, and epoch bumps on apply/revert."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from garagekv.rpc.layout import LayoutHistory, LayoutParameters, LayoutStaging, NodeRole
from garagekv.util.crdt import Lww, LwwMap
from tests.support.layouts import nid

# Small domains so that equal timestamps with different values (the tie-break path) are common.
TS = st.integers(0, 3)
ROLE = st.one_of(
    st.none(),
    st.builds(NodeRole, st.sampled_from(["a", "b"]), st.sampled_from([None, 10, 20]), st.just(())),
)
PARAMS = st.builds(LayoutParameters, st.sampled_from(["maximum", 1, 2, 3]))
STAGING = st.builds(
    LayoutStaging,
    TS,
    st.builds(Lww, TS, PARAMS),
    st.builds(LwwMap, st.dictionaries(st.sampled_from([nid(1), nid(2), nid(3)]), st.builds(Lww, TS, ROLE))),
)


def merged(*parts: LayoutStaging) -> LayoutStaging:
    out = parts[0].clone()
    for p in parts[1:]:
        out.merge(p)
    return out


@given(STAGING, STAGING)
def test_merge_is_commutative(a, b):
    assert merged(a, b) == merged(b, a)


@given(STAGING, STAGING, STAGING)
def test_merge_is_associative(a, b, c):
    ab_c = merged(merged(a, b), c)
    a_bc = merged(a, merged(b, c))
    assert ab_c == a_bc


@given(STAGING, STAGING)
def test_merge_is_idempotent_and_reports_changes(a, b):
    ab = merged(a, b)
    again = ab.clone()
    assert again.merge(b) is False and again == ab
    assert merged(a, a) == a
    x = a.clone()
    assert x.merge(b) == (ab != a)


@given(STAGING, STAGING)
def test_merge_does_not_alias_the_other_side(a, b):
    snapshot = b.clone()
    out = merged(a, b)
    out.stage_role(nid(1), NodeRole("z", 5))
    out.stage_parameters(LayoutParameters(1))
    assert b == snapshot


@given(STAGING)
def test_wire_round_trip(a):
    assert LayoutStaging.from_wire(a.to_wire()) == a


def test_concurrent_edits_on_two_nodes_merge():
    base = LayoutHistory.new(3)
    on_a, on_b = base.clone(), base.clone()
    on_a.stage_role(nid(1), NodeRole("dc1", 100))
    on_b.stage_role(nid(2), NodeRole("dc2", 200))
    on_b.stage_zone_redundancy(2)
    assert on_a.merge(on_b) is True
    assert on_b.merge(on_a) is True
    assert on_a.staging == on_b.staging
    assert on_a.planned_roles() == {nid(1): NodeRole("dc1", 100), nid(2): NodeRole("dc2", 200)}
    assert on_a.staging.parameters.value == LayoutParameters(2)


def test_a_later_edit_of_the_same_node_wins():
    h = LayoutHistory.new(3)
    h.stage_role(nid(1), NodeRole("dc1", 100))
    other = h.clone()
    other.stage_role(nid(1), None)  # staged later: its timestamp is above the first edit's
    h.merge(other)
    assert h.staging.roles.get(nid(1)) is None
    assert h.planned_roles() == {}


def test_apply_discards_edits_staged_concurrently_against_the_previous_version():
    h = LayoutHistory.new(1)
    h.stage_role(nid(1), NodeRole("dc1", 10**6))
    stale = h.clone()
    stale.stage_role(nid(2), NodeRole("dc1", 10**6))  # never saw the apply below
    applied, _ = h.apply_staged_changes(1)
    assert applied.staging.ts > h.staging.ts
    assert applied.merge(stale) is False
    assert not applied.has_staged_changes()
    # The staged parameters survive an apply unchanged.
    assert applied.staging.parameters == h.staging.parameters


def test_revert_drops_staged_edits_and_restores_parameters():
    h = LayoutHistory.new(1)
    h.stage_role(nid(1), NodeRole("dc1", 10**6))
    h, _ = h.apply_staged_changes(1)
    h.stage_role(nid(2), NodeRole("dc1", 10**6))
    h.stage_zone_redundancy(1)
    assert h.has_staged_changes()
    reverted = h.revert_staged_changes()
    assert not reverted.has_staged_changes()
    assert reverted.current() == h.current()  # no new version
    assert reverted.staging.parameters.value == h.current().parameters
    assert reverted.staging.ts > h.staging.ts
    # The revert wins over the pre-revert staging wherever it meets it.
    stale = h.clone()
    assert reverted.clone().merge(stale) is False
    assert stale.merge(reverted) is True and not stale.has_staged_changes()


def test_changes_lists_only_real_differences():
    h = LayoutHistory.new(1)
    h.stage_role(nid(1), NodeRole("dc1", 10**6))
    h, _ = h.apply_staged_changes(1)
    h.stage_role(nid(1), NodeRole("dc1", 10**6))  # same as current: not a change
    h.stage_role(nid(2), None)  # removing a node without a role: not a change either
    assert h.staging.changes(h.current().roles) == []
    assert not h.has_staged_changes()
    h.stage_role(nid(1), NodeRole("dc2", 10**6))
    assert h.staging.changes(h.current().roles) == [(nid(1), NodeRole("dc2", 10**6))]
    assert h.has_staged_changes()
