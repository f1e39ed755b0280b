"""Partition assignment: invariants, optimal size, minimal movement, determinism, errors.

Optimality is checked independently of the implementation's closed-form cut formula:
feasibility at the chosen size S is witnessed by the assignment itself (checked here), and
infeasibility at S+1 by a cut of the flow graph found by brute force over vertex subsets.
Minimal movement is certified by the absence of a negative cycle in the residual graph.
"""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from garagekv.rpc.layout import (
    MAXIMUM,
    NB_PARTITIONS,
    LayoutError,
    LayoutHistory,
    LayoutVersion,
    NodeRole,
)
from tests.support.layouts import nid


def build(rf: int, nodes: list[tuple[str, int | None]], zr=MAXIMUM, base: LayoutHistory | None = None):
    """Make nid(1..len) have exactly these roles, apply, and return (history, messages)."""
    h = base if base is not None else LayoutHistory.new(rf)
    for node in h.current().roles:
        if node[0] > len(nodes):
            h.stage_role(node, None)
    for i, (zone, cap) in enumerate(nodes, start=1):
        h.stage_role(nid(i), NodeRole(zone, cap))
    h.stage_zone_redundancy(zr)
    return h.apply_staged_changes(h.current().version + 1)


def assert_invariants(v: LayoutVersion) -> None:
    """Everything a valid assignment must satisfy, checked without the implementation's check()."""
    rf = v.replication_factor
    zones_with_storage = {r.zone for r in v.roles.values() if r.capacity is not None}
    zr = min(rf, len(zones_with_storage)) if v.zone_redundancy == MAXIMUM else v.zone_redundancy
    usage: Counter[bytes] = Counter()
    for p in range(NB_PARTITIONS):
        nodes = v.nodes_of(p)
        assert len(nodes) == rf and len(set(nodes)) == rf
        assert all(v.roles[n].capacity is not None for n in nodes), "gateway assigned"
        assert len({v.roles[n].zone for n in nodes}) >= zr
        usage.update(nodes)
    for n, used in usage.items():
        assert used * v.partition_size <= v.roles[n].capacity


# ---------------------------------------------------------------------- brute-force min cut


def brute_force_min_cut(v: LayoutVersion, size: int) -> int:
    """Minimum cut of Garage's flow graph for partition size ``size``, by enumeration.

    Partitions' vertex groups {Pup, Pdown, PZ(z)} are disjoint and identical, so for each set A
    of node vertices on the source side, the cheapest cut is sum(k_n for A) + 256 * (cheapest
    source/sink split of one partition group), enumerated over all 2^(2+Z) splits.
    """
    rf = v.replication_factor
    storage = sorted(n for n, r in v.roles.items() if r.capacity is not None)
    zones = sorted({v.roles[n].zone for n in storage})
    zr = min(rf, len(zones)) if v.zone_redundancy == MAXIMUM else v.zone_redundancy
    k = {n: v.roles[n].capacity // size for n in storage}
    best = None
    for a_bits in itertools.product([False, True], repeat=len(storage)):
        in_a = {n for n, b in zip(storage, a_bits, strict=True) if b}
        outside = Counter(v.roles[n].zone for n in storage if n not in in_a)
        local_best = None
        for up_src, down_src, *pz_src in itertools.product([False, True], repeat=2 + len(zones)):
            cost = (0 if up_src else zr) + (0 if down_src else rf - zr)
            for z, src in zip(zones, pz_src, strict=True):
                if src:
                    cost += outside[z]  # arcs PZ -> N for sink-side nodes of zone z
                else:
                    cost += (1 if up_src else 0) + (rf if down_src else 0)
            local_best = cost if local_best is None else min(local_best, cost)
        total = sum(k[n] for n in in_a) + NB_PARTITIONS * local_best
        best = total if best is None else min(best, total)
    return best


def naive_fits(v: LayoutVersion, size: int) -> bool:
    """Garage's greedy token placement (as in its unit test): True if it places everything."""
    rf = v.replication_factor
    storage = [n for n in v.node_id_vec if v.roles[n].capacity is not None]
    zones = list(dict.fromkeys(v.roles[n].zone for n in storage))
    zr = min(rf, len(zones)) if v.zone_redundancy == MAXIMUM else v.zone_redundancy
    tokens = [0] * len(zones)
    for n in storage:
        tokens[zones.index(v.roles[n].zone)] += min(NB_PARTITIONS, v.roles[n].capacity // size)
    distinct = [0] * NB_PARTITIONS
    last = [None] * NB_PARTITIONS
    z = 0
    for replica in range(rf):
        for p in range(NB_PARTITIONS):
            while tokens[z] == 0 or (last[p] == z and zr - distinct[p] <= rf - replica):
                z += 1
                if z >= len(zones):
                    return False
            tokens[z] -= 1
            if last[p] != z:
                distinct[p] += 1
                last[p] = z
    return True


# ---------------------------------------------------------------------- min-cost certificate


def has_negative_cycle(v: LayoutVersion, previous: LayoutVersion) -> bool:
    """Is there a cheaper assignment (same size) than ``v`` w.r.t. moves from ``previous``?

    Builds the residual graph of the flow representing ``v`` (cost 1 on a partition->node arc
    unless the node held the partition before) and runs Bellman-Ford from a virtual source.
    """
    rf, size = v.replication_factor, v.partition_size
    storage = [n for n in v.node_id_vec if v.roles[n].capacity is not None]
    zones = sorted({v.roles[n].zone for n in storage})
    zr = min(rf, len(zones)) if v.zone_redundancy == MAXIMUM else v.zone_redundancy
    arcs: list[tuple[object, object, int]] = []  # residual arcs (u, v, cost)

    def edge(u, w, cap, flow, cost):
        if flow < cap:
            arcs.append((u, w, cost))
        if flow > 0:
            arcs.append((w, u, -cost))

    usage = Counter()
    for p in range(NB_PARTITIONS):
        nodes = set(v.nodes_of(p))
        old = set(previous.nodes_of(p))
        per_zone = Counter(v.roles[n].zone for n in nodes)
        up_zones = sorted(per_zone)[:zr]
        edge("S", ("up", p), zr, zr, 0)
        edge("S", ("down", p), rf - zr, rf - zr, 0)
        for z in zones:
            up_flow = 1 if z in up_zones else 0
            edge(("up", p), ("pz", p, z), 1, up_flow, 0)
            edge(("down", p), ("pz", p, z), rf, per_zone[z] - up_flow, 0)
        for n in storage:
            edge(("pz", p, v.roles[n].zone), ("n", n), 1, int(n in nodes), 0 if n in old else 1)
        usage.update(nodes)
    for n in storage:
        edge(("n", n), "T", v.roles[n].capacity // size, usage[n], 0)

    vertices = {u for u, _, _ in arcs} | {w for _, w, _ in arcs}
    dist = dict.fromkeys(vertices, 0)
    for _ in range(len(vertices) + 1):
        changed = False
        for u, w, c in arcs:
            if dist[u] + c < dist[w]:
                dist[w] = dist[u] + c
                changed = True
        if not changed:
            return False
    return True


def moved_copies(old: LayoutVersion, new: LayoutVersion) -> int:
    return sum(len(set(new.nodes_of(p)) - set(old.nodes_of(p))) for p in range(NB_PARTITIONS))


# ---------------------------------------------------------------------- Garage's scenario


def test_garage_scenario_four_applies():
    """Garage's test_assignment: four successive layouts on one history, rf = 3."""
    h, _ = build(3, [("A", 4000), ("B", 1000), ("C", 2000)], zr=3)
    rounds = [
        (2, [4000, 1000, 1000, 3000, 1000, 1000, 2000, 10000, 2000]),
        (3, [4000, 1000, 2000, 7000, 1000, 1000, 2000, 10000, 2000]),
        (1, [4_000_000, 4_000_000, 2_000_000, 7_000_000, 1_000_000, 9_000_000, 2_000_000, 10000, 2_000_000]),
    ]
    zones = ["A", "B", "C", "C", "C", "B", "G", "H", "I"]
    versions = [h.current()]
    for zr, caps in rounds:
        h, _ = build(3, list(zip(zones, caps, strict=True)), zr=zr, base=h)
        versions.append(h.current())
    for prev, v in zip([None, *versions], versions, strict=False):
        v.check()
        assert_invariants(v)
        assert not naive_fits(v, v.partition_size + 1)  # at least as good as the greedy
        assert brute_force_min_cut(v, v.partition_size + 1) < NB_PARTITIONS * 3
        if prev is not None:
            assert not has_negative_cycle(v, prev)
    assert [v.version for v in versions] == [1, 2, 3, 4]
    assert versions[0].partition_size == 1000 // 256


# ---------------------------------------------------------------------- property tests

ZONES = st.sampled_from(["dc1", "dc2", "dc3", "dc4"])
# Mostly storage nodes big enough for partitions of size >= 1; sometimes a gateway or a tiny node.
CAPACITY = st.one_of(
    st.integers(200, 5000), st.integers(1000, 10**7), st.integers(1000, 10**7), st.none(), st.integers(1, 300)
)
CLUSTER = st.lists(st.tuples(ZONES, CAPACITY), min_size=2, max_size=6)
RF = st.integers(1, 3)


def _zr(data, rf):
    return data.draw(st.one_of(st.just(MAXIMUM), st.just(MAXIMUM), st.integers(1, rf)))


def _feasible_or_expected_error(rf, nodes, zr) -> bool:
    storage = [(z, c) for z, c in nodes if c is not None]
    zones = {z for z, _ in storage}
    eff_zr = min(rf, len(zones)) if zr == MAXIMUM else zr
    return len(storage) >= rf and len(zones) >= eff_zr


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rf=RF, nodes=CLUSTER, data=st.data())
def test_assignment_invariants_and_optimal_size(rf, nodes, data):
    zr = _zr(data, rf)
    if not _feasible_or_expected_error(rf, nodes, zr):
        with pytest.raises(LayoutError, match="smaller than the"):
            build(rf, nodes, zr)
        return
    try:
        h, msg = build(rf, nodes, zr)
    except LayoutError as e:
        # Only possible when even partitions of size 1 do not fit.
        assert "impossible to store partitions of size 1" in e.message
        probe = LayoutVersion(1, rf, zr, {nid(i): NodeRole(z, c) for i, (z, c) in enumerate(nodes, 1)}, [], b"", 0)
        assert brute_force_min_cut(probe, 1) < NB_PARTITIONS * rf
        return
    v = h.current()
    v.check()
    assert_invariants(v)
    # Upper bound: S + 1 is infeasible (an explicit cut below 256 * rf exists).
    assert brute_force_min_cut(v, v.partition_size + 1) < NB_PARTITIONS * rf
    assert brute_force_min_cut(v, v.partition_size) >= NB_PARTITIONS * rf
    assert not naive_fits(v, v.partition_size + 1)
    assert any("Optimal partition size" in line for line in msg)


EDIT = st.one_of(
    st.tuples(st.just("add"), ZONES, CAPACITY),
    st.tuples(st.just("remove"), st.integers(0, 5)),
    st.tuples(st.just("resize"), st.integers(0, 5), st.integers(200, 10**7)),
    st.tuples(st.just("rezone"), st.integers(0, 5), ZONES),
)


def _edit(nodes, edits):
    nodes = list(nodes)
    for op, *args in edits:
        if op == "add":
            nodes.append((args[0], args[1]))
        elif nodes and op == "remove":
            nodes[args[0] % len(nodes)] = None
        elif nodes and op == "resize" and nodes[args[0] % len(nodes)] is not None:
            nodes[args[0] % len(nodes)] = (nodes[args[0] % len(nodes)][0], args[1])
        elif nodes and op == "rezone" and nodes[args[0] % len(nodes)] is not None:
            nodes[args[0] % len(nodes)] = (args[1], nodes[args[0] % len(nodes)][1])
    return nodes


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(rf=RF, first=CLUSTER, edits=st.lists(EDIT, min_size=1, max_size=3), data=st.data())
def test_second_layout_moves_the_fewest_copies(rf, first, edits, data):
    zr1, zr2 = _zr(data, rf), _zr(data, rf)
    second = _edit(first, edits)
    assume(_feasible_or_expected_error(rf, first, zr1))
    assume(_feasible_or_expected_error(rf, [n for n in second if n is not None], zr2))
    try:
        h1, _ = build(rf, first, zr1)
        h = h1.clone()
        for i, node in enumerate(second, start=1):
            h.stage_role(nid(i), None if node is None else NodeRole(*node))
        h.stage_zone_redundancy(zr2)
        h2, _ = h.apply_staged_changes(2)
    except LayoutError as e:
        assert "impossible to store partitions of size 1" in e.message
        return
    event(f"moved {min(moved_copies(h1.current(), h2.current()) // 50 * 50, 300)}+ copies")
    h2.current().check()
    assert_invariants(h2.current())
    assert not has_negative_cycle(h2.current(), h1.current())


def test_reapplying_the_same_roles_moves_nothing():
    nodes = [("dc1", 1000), ("dc1", 3000), ("dc2", 2000), ("dc2", 2500), ("dc3", 4000), ("dc3", None)]
    h1, _ = build(3, nodes)
    h2, msg = h1.apply_staged_changes(2)
    assert h2.current().ring_assignment_data == h1.current().ring_assignment_data
    assert h2.current().partition_size == h1.current().partition_size
    assert "A total of 0 new copies of partitions need to be transferred." in msg


def test_adding_a_node_moves_about_its_share():
    # One zone and zone redundancy 1: the only constraint is capacity.
    h1, _ = build(3, [("z", 1000)] * 4, zr=1)
    old = h1.current()
    h2, msg = build(3, [("z", 1000)] * 5, zr=1, base=h1.clone())
    new = h2.current()
    k_new = 1000 // new.partition_size
    lower_bound = NB_PARTITIONS * 3 - sum(min(u, k_new) for u in old.usage().values())
    moved = moved_copies(old, new)
    assert moved == lower_bound  # nothing moves between old nodes
    assert new.usage()[nid(5)] == moved  # every moved copy lands on the new node
    assert moved <= NB_PARTITIONS * 3 // 5  # at most the new node's fair share
    assert f"A total of {moved} new copies of partitions need to be transferred." in msg


def test_removing_a_node_moves_only_its_partitions():
    nodes = [("dc1", 2000), ("dc1", 2000), ("dc2", 2000), ("dc2", 2000), ("dc3", 2000), ("dc3", 2000)]
    h1, _ = build(3, nodes)
    old = h1.current()
    h1.stage_role(nid(6), None)
    h2, _ = h1.apply_staged_changes(2)
    new = h2.current()
    assert nid(6) not in new.roles
    assert moved_copies(old, new) == old.usage()[nid(6)]
    assert not has_negative_cycle(new, old)


def test_assignment_is_deterministic():
    nodes = [("dc1", 1000), ("dc2", 3000), ("dc3", 2000), ("dc1", 1500), ("dc2", None)]
    a, _ = build(3, nodes)
    b, _ = build(3, list(nodes))
    assert a.current().to_wire() == b.current().to_wire()
    # Staging order does not matter either.
    h = LayoutHistory.new(3)
    for i in reversed(range(len(nodes))):
        h.stage_role(nid(i + 1), NodeRole(*nodes[i]))
    c, _ = h.apply_staged_changes(1)
    assert c.current().to_wire() == a.current().to_wire()


def test_first_layout_spreads_partitions_evenly():
    h, _ = build(3, [("z", 10**9)] * 6, zr=1)
    usage = h.current().usage()
    assert max(usage.values()) - min(usage.values()) <= 1


def test_gateways_hold_nothing_and_come_last():
    h, _ = build(2, [("dc1", 1000), ("dc2", None), ("dc2", 1000)])
    v = h.current()
    assert v.node_id_vec == [nid(1), nid(3), nid(2)]
    assert v.storage_nodes() == [nid(1), nid(3)]
    assert v.gateway_nodes() == [nid(2)]
    assert all(nid(2) not in v.nodes_of(p) for p in range(NB_PARTITIONS))
    assert nid(2) not in v.usage()


def test_maximum_zone_redundancy_ignores_gateway_zones():
    h, _ = build(3, [("dc1", 1000), ("dc1", 1000), ("dc2", 1000), ("dc3", None)])
    v = h.current()
    assert v.effective_zone_redundancy() == 2
    assert_invariants(v)


@pytest.mark.parametrize(
    ("rf", "nodes", "zr", "message"),
    [
        (
            3,
            [("a", 100), ("b", 100)],
            MAXIMUM,
            r"The number of nodes with positive capacity \(2\) is smaller than the replication factor \(3\).",
        ),
        (
            3,
            [("a", 100), ("a", 100), ("b", 100), ("c", None)],
            3,
            r"The number of zones with non-gateway nodes \(2\) is smaller than the redundancy parameter \(3\)",
        ),
        (
            3,
            [("a", 100), ("b", 100), ("c", 100)],
            MAXIMUM,
            "The storage capacity of he cluster is to small. It is impossible to store partitions of size 1.",
        ),
        (
            3,
            [("a", None), ("b", None), ("c", None)],
            MAXIMUM,
            r"The number of nodes with positive capacity \(0\) is smaller",
        ),
    ],
)
def test_infeasible_layouts_are_refused(rf, nodes, zr, message):
    with pytest.raises(LayoutError, match=message):
        build(rf, nodes, zr)


def test_zone_redundancy_above_rf_is_refused():
    h = LayoutHistory.new(2)
    with pytest.raises(LayoutError, match=r"smaller or equal to the replication factor \(2\)"):
        h.stage_zone_redundancy(3)
    with pytest.raises(LayoutError, match="at least 1"):
        h.stage_zone_redundancy(0)


def test_more_than_256_storage_nodes_is_refused():
    h = LayoutHistory.new(1)
    for i in range(257):
        h.stage_role(i.to_bytes(32, "big"), NodeRole("z", 10**6))
    with pytest.raises(LayoutError, match="more than 256 non-gateway nodes"):
        h.apply_staged_changes(1)


@pytest.mark.timeout(60)  # a hang guard: speed is measured, not asserted
def test_twenty_heterogeneous_nodes_then_one_more():
    zones = [f"dc{i % 5}" for i in range(20)]
    caps = [(i % 7 + 1) * 10**12 for i in range(20)]
    h, _ = build(3, list(zip(zones, caps, strict=True)))
    assert_invariants(h.current())
    zones.append("dc2")
    caps.append(3 * 10**12)
    h2, _ = build(3, list(zip(zones, caps, strict=True)), base=h.clone())
    assert_invariants(h2.current())


@pytest.mark.parametrize("nb_zones", [1, 3, 20])
def test_big_reassignment_is_exactly_minimal(nb_zones):
    """20 heterogeneous nodes; resize half, add one, remove one: the moves are provably minimal."""
    caps = [((i * 7919) % 19 + 1) * 10**11 for i in range(20)]
    h1, _ = build(3, [(f"z{i % nb_zones}", c) for i, c in enumerate(caps)])
    second = [(f"z{(i * 3) % nb_zones}", c * (2 if i % 2 else 1)) for i, c in enumerate(caps)]
    second[1] = None
    second.append(("z0", 10**12))
    h = h1.clone()
    for i, node in enumerate(second, start=1):
        h.stage_role(nid(i), None if node is None else NodeRole(*node))
    h2, _ = h.apply_staged_changes(2)
    assert_invariants(h2.current())
    assert not has_negative_cycle(h2.current(), h1.current())
