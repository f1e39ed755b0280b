"""Hosts in the layout: the workers of one host never hold two replicas of a partition.

The assignment is checked against the explicit flow graph with its host layer, independently of
the implementation: a brute-force minimum cut proves the partition size optimal, a Bellman-Ford
search for a negative cycle proves the moves minimal, and the ring itself witnesses feasibility.
One-worker hosts must give exactly the layouts of a cluster without hosts.
"""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from garagekv.rpc.layout import (
    MAXIMUM,
    NB_PARTITIONS,
    LayoutError,
    LayoutHistory,
    LayoutStaging,
    LayoutVersion,
    NodeRole,
)
from garagekv.rpc.layout.roles import host_key


def nid(i: int) -> bytes:
    return i.to_bytes(2, "big") * 16


def hid(i: int) -> bytes:
    return bytes([0xF0, i]) + bytes(30)


Node = tuple[str, int | None, int | None]  # zone, capacity (None: gateway), host index (None: own host)


def roles_of(nodes: list[Node]) -> dict[bytes, NodeRole]:
    return {nid(i): NodeRole(z, c, host=None if h is None else hid(h)) for i, (z, c, h) in enumerate(nodes, 1)}


def build(rf: int, nodes: list[Node], zr=MAXIMUM, base: LayoutHistory | None = None):
    h = base if base is not None else LayoutHistory.new(rf)
    for node in h.current().roles:
        if int.from_bytes(node[:2], "big") > len(nodes):
            h.stage_role(node, None)
    for n, role in roles_of(nodes).items():
        h.stage_role(n, role)
    h.stage_zone_redundancy(zr)
    return h.apply_staged_changes(h.current().version + 1)


def storage_of(v: LayoutVersion) -> list[bytes]:
    return sorted(n for n, r in v.roles.items() if r.capacity is not None)


def zr_of(v: LayoutVersion) -> int:
    zones = {v.roles[n].zone for n in storage_of(v)}
    return min(v.replication_factor, len(zones)) if v.zone_redundancy == MAXIMUM else v.zone_redundancy


def assert_invariants(v: LayoutVersion) -> None:
    rf = v.replication_factor
    usage: Counter[bytes] = Counter()
    for p in range(NB_PARTITIONS):
        nodes = v.nodes_of(p)
        assert len(set(nodes)) == rf
        assert all(v.roles[n].capacity is not None for n in nodes)
        assert len({v.roles[n].zone for n in nodes}) >= zr_of(v)
        assert len({host_key(n, v.roles[n]) for n in nodes}) == rf, f"partition {p}: two replicas on one host"
        usage.update(nodes)
    for n, used in usage.items():
        assert used * v.partition_size <= v.roles[n].capacity


def brute_force_min_cut(v: LayoutVersion, size: int) -> int:
    """Minimum cut of the flow graph with its host layer, by enumeration.

    Partition groups {Pup, Pdown, PZ(z), PH(h)} are disjoint and identical: for each set A of
    node vertices on the source side, every partition adds the same cheapest split of its group,
    enumerated over all source/sink sides of its vertices (a PH vertex per host of several nodes;
    a one-node host's node hangs directly below its zone, as in the implementation).
    """
    rf, zr = v.replication_factor, zr_of(v)
    storage = storage_of(v)
    zones = sorted({v.roles[n].zone for n in storage})
    hosts: dict[object, list[bytes]] = {}
    for n in storage:
        hosts.setdefault(host_key(n, v.roles[n]), []).append(n)
    multi = [m for m in hosts.values() if len(m) > 1]
    single = [m[0] for m in hosts.values() if len(m) == 1]
    k = {n: v.roles[n].capacity // size for n in storage}
    best = None
    for bits in itertools.product([False, True], repeat=len(storage)):
        in_a = {n for n, b in zip(storage, bits, strict=True) if b}
        group_best = None
        for up, down, *sides in itertools.product([False, True], repeat=2 + len(zones) + len(multi)):
            pz_src = dict(zip(zones, sides[: len(zones)], strict=True))
            ph_src = sides[len(zones) :]
            cost = (0 if up else zr) + (0 if down else rf - zr)
            for z in zones:
                if not pz_src[z]:
                    cost += (1 if up else 0) + (rf if down else 0)
            for n in single:  # PZ -> N, capacity 1
                if pz_src[v.roles[n].zone] and n not in in_a:
                    cost += 1
            for members, src in zip(multi, ph_src, strict=True):
                z = v.roles[members[0]].zone
                if pz_src[z] and not src:
                    cost += 1  # PZ -> PH, capacity 1
                if src:
                    cost += sum(1 for n in members if n not in in_a)  # PH -> N, capacity 1 each
            group_best = cost if group_best is None else min(group_best, cost)
        total = sum(k[n] for n in in_a) + NB_PARTITIONS * group_best
        best = total if best is None else min(best, total)
    return best


def has_negative_cycle(v: LayoutVersion, previous: LayoutVersion) -> bool:
    """Is there an assignment of the same size moving fewer copies from ``previous`` than ``v``?

    The residual graph of the flow that represents ``v`` (host layer included; an arc into a node
    costs 1 unless the node held the partition before), searched with Bellman-Ford.
    """
    rf, size, zr = v.replication_factor, v.partition_size, zr_of(v)
    storage = storage_of(v)
    zones = sorted({v.roles[n].zone for n in storage})
    arcs: list[tuple[object, object, int]] = []

    def edge(u, w, cap, flow, cost):
        if flow < cap:
            arcs.append((u, w, cost))
        if flow > 0:
            arcs.append((w, u, -cost))

    usage: Counter[bytes] = Counter()
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
        hosts: dict[object, list[bytes]] = {}
        for n in storage:
            hosts.setdefault(host_key(n, v.roles[n]), []).append(n)
        for key, members in hosts.items():
            z = v.roles[members[0]].zone
            if len(members) == 1:
                n = members[0]
                edge(("pz", p, z), ("n", n), 1, int(n in nodes), 0 if n in old else 1)
                continue
            used = sum(1 for n in members if n in nodes)
            edge(("pz", p, z), ("ph", p, key), 1, used, 0)
            for n in members:
                edge(("ph", p, key), ("n", n), 1, int(n in nodes), 0 if n in old else 1)
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


# ---------------------------------------------------------------------- one worker per host


def test_one_worker_hosts_give_the_layouts_of_a_cluster_without_hosts():
    nodes = [("dc1", 1000), ("dc1", 3000), ("dc2", 2000), ("dc2", 2500), ("dc3", 4000), ("dc3", None), ("dc1", 900)]
    plain, _ = build(3, [(z, c, None) for z, c in nodes])
    hosted, _ = build(3, [(z, c, i) for i, (z, c) in enumerate(nodes)])
    assert hosted.current().ring_assignment_data == plain.current().ring_assignment_data
    assert hosted.current().partition_size == plain.current().partition_size
    # and the next version too, moving from the previous one
    edit = [*nodes[:3], ("dc2", 5000), *nodes[4:], ("dc3", 1200)]
    plain2, _ = build(3, [(z, c, None) for z, c in edit], base=plain)
    hosted2, _ = build(3, [(z, c, i) for i, (z, c) in enumerate(edit)], base=hosted)
    assert hosted2.current().ring_assignment_data == plain2.current().ring_assignment_data


def test_a_role_without_host_encodes_as_before():
    assert NodeRole("dc1", 10, ("a",)).to_wire() == {"zone": "dc1", "capacity": 10, "tags": ["a"]}
    old = {"zone": "dc1", "capacity": 10, "tags": ["a"]}
    assert NodeRole.from_wire(old) == NodeRole("dc1", 10, ("a",))
    role = NodeRole("dc1", 10, ("a",), host=hid(3))
    assert role.to_wire()["host"] == hid(3)
    assert NodeRole.from_wire(role.to_wire()) == role
    with pytest.raises(LayoutError, match="host id"):
        NodeRole("dc1", 10, host=b"short")
    with pytest.raises(LayoutError, match="host id"):
        NodeRole.from_wire({**old, "host": 7})


def test_staged_host_ids_merge_like_the_rest_of_the_role():
    """Two nodes stage the same worker at the same timestamp with different hosts: both end up
    with the same role, whichever merge order (the host is part of the LWW value)."""
    a, b = LayoutStaging(), LayoutStaging()
    a.roles.put(nid(1), NodeRole("dc1", 10, host=hid(1)), ts=5)
    b.roles.put(nid(1), NodeRole("dc1", 10, host=hid(2)), ts=5)
    ab, ba = a.clone(), b.clone()
    assert ab.merge(b) is True
    ba.merge(a)
    assert ab == ba
    later = LayoutStaging()
    later.roles.put(nid(1), NodeRole("dc1", 10, host=hid(1)), ts=6)
    ab.merge(later)
    assert ab.roles.get(nid(1)).host == hid(1)
    assert LayoutStaging.from_wire(ab.to_wire()) == ab


# ---------------------------------------------------------------------- the host constraint


def test_two_workers_of_a_host_never_share_a_partition():
    """One zone, so zone redundancy is 1: only the host constraint keeps the big host's two
    workers apart. Each partition then has one replica on every one of the three hosts, and the
    partition size is bounded by the small hosts, not by the big one's capacity."""
    nodes = [("dc1", 10**9, 0), ("dc1", 10**9, 0), ("dc1", 10**6, 1), ("dc1", 10**6, 2)]
    h, msg = build(3, nodes)
    v = h.current()
    v.check()
    assert_invariants(v)
    for p in range(NB_PARTITIONS):
        assert {v.roles[n].host for n in v.nodes_of(p)} == {hid(0), hid(1), hid(2)}
    assert v.partition_size == 10**6 // NB_PARTITIONS
    # Without hosts the same capacities give a bigger partition size (two replicas on the big host).
    plain, _ = build(3, [(z, c, None) for z, c, _ in nodes])
    assert plain.current().partition_size > v.partition_size
    # The host's partitions are split between its two workers.
    usage = v.usage()
    assert usage[nid(1)] + usage[nid(2)] == NB_PARTITIONS
    assert abs(usage[nid(1)] - usage[nid(2)]) <= 1


def test_check_refuses_two_replicas_on_one_host():
    nodes = [("dc1", 10**6, 0), ("dc1", 10**6, 0), ("dc1", 10**6, 1), ("dc1", 10**6, 2)]
    h, _ = build(2, nodes)
    v = h.current()
    ring = bytearray(v.ring_assignment_data)
    ring[0:2] = bytes([0, 1])  # nid(1) and nid(2): the two workers of host 0
    bad = LayoutVersion(v.version, 2, v.zone_redundancy, v.roles, v.node_id_vec, bytes(ring), v.partition_size)
    with pytest.raises(LayoutError, match="distinct hosts"):
        bad.check()


def test_fewer_hosts_than_replicas_is_refused():
    with pytest.raises(LayoutError, match=r"number of hosts with positive capacity \(2\) is smaller"):
        build(3, [("dc1", 10**6, 0), ("dc1", 10**6, 0), ("dc3", 10**6, 1), ("dc3", 10**6, 1)])


def test_a_host_in_two_zones_is_refused():
    nodes = [("dc1", 10**6, 0), ("dc2", 10**6, 0), ("dc3", 10**6, 1), ("dc3", 10**6, 2)]
    with pytest.raises(
        LayoutError,
        match=r"^The nodes of host f000000000000000 are in several zones \(dc1, dc2\); "
        r"the workers of a host must all be in its zone\.$",
    ):
        build(3, nodes)


def test_gateway_workers_do_not_count_as_storage_hosts():
    nodes = [("dc1", 10**6, 0), ("dc1", None, 0), ("dc2", 10**6, 1), ("dc2", None, 2), ("dc3", 10**6, 3)]
    h, _ = build(3, nodes)
    assert_invariants(h.current())
    with pytest.raises(LayoutError, match=r"nodes with positive capacity \(2\)"):
        build(3, nodes[:4])


# ---------------------------------------------------------------------- property tests

ZONES = st.sampled_from(["dc1", "dc2", "dc3"])
CAPACITY = st.one_of(st.integers(200, 5000), st.integers(1000, 10**7), st.none(), st.integers(1, 300))
# Up to 6 nodes on up to 4 hosts (a node with host None is a host by itself); each host's zone is
# drawn once, so a host's nodes share it.
CLUSTER = st.lists(st.tuples(CAPACITY, st.one_of(st.none(), st.integers(0, 3))), min_size=2, max_size=6)


def _place(data, raw) -> list[Node]:
    host_zone = {h: data.draw(ZONES) for h in range(4)}
    return [(host_zone[h] if h is not None else data.draw(ZONES), c, h) for c, h in raw]


def _expected_error(rf: int, nodes: list[Node], zr) -> str | None:
    storage = [(z, h if h is not None else ("own", i)) for i, (z, c, h) in enumerate(nodes) if c is not None]
    zones = {z for z, _ in storage}
    eff = min(rf, len(zones)) if zr == MAXIMUM else zr
    if len(storage) < rf:
        return "nodes with positive capacity"
    if len(zones) < eff:
        return "zones with non-gateway nodes"
    if len({h for _, h in storage}) < rf:
        return "hosts with positive capacity"
    return None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rf=st.integers(1, 3), raw=CLUSTER, data=st.data())
def test_assignment_with_hosts_is_valid_and_of_optimal_size(rf, raw, data):
    nodes = _place(data, raw)
    zr = data.draw(st.one_of(st.just(MAXIMUM), st.integers(1, rf)))
    expected = _expected_error(rf, nodes, zr)
    if expected is not None:
        with pytest.raises(LayoutError, match=expected):
            build(rf, nodes, zr)
        return
    try:
        h, _ = build(rf, nodes, zr)
    except LayoutError as e:
        assert "impossible to store partitions of size 1" in e.message
        probe = LayoutVersion(1, rf, zr, roles_of(nodes), [], b"", 0)
        assert brute_force_min_cut(probe, 1) < NB_PARTITIONS * rf
        return
    v = h.current()
    v.check()
    assert_invariants(v)  # the ring witnesses that size S is feasible
    assert brute_force_min_cut(v, v.partition_size) >= NB_PARTITIONS * rf
    assert brute_force_min_cut(v, v.partition_size + 1) < NB_PARTITIONS * rf  # S + 1 is not


EDIT = st.one_of(
    st.tuples(st.just("resize"), st.integers(0, 5), st.integers(200, 10**7)),
    st.tuples(st.just("remove"), st.integers(0, 5)),
    st.tuples(st.just("add"), st.integers(0, 3), st.integers(1000, 10**7)),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(rf=st.integers(1, 3), raw=CLUSTER, edits=st.lists(EDIT, min_size=1, max_size=3), data=st.data())
def test_next_layout_with_hosts_moves_the_fewest_copies(rf, raw, edits, data):
    first = _place(data, raw)
    zone_of_host = {h: z for z, _, h in first if h is not None}
    second: list[Node | None] = list(first)
    for op, *args in edits:
        if op == "resize" and second[args[0] % len(second)] is not None:
            z, _, h = second[args[0] % len(second)]
            second[args[0] % len(second)] = (z, args[1], h)
        elif op == "remove":
            second[args[0] % len(second)] = None
        elif op == "add":
            second.append((zone_of_host.get(args[0], "dc1"), args[1], args[0]))
            zone_of_host.setdefault(args[0], "dc1")
    kept = [n for n in second if n is not None]
    assume(_expected_error(rf, first, MAXIMUM) is None and _expected_error(rf, kept, MAXIMUM) is None)
    try:
        h1, _ = build(rf, first)
        h = h1.clone()
        for i, node in enumerate(second, start=1):
            z, c, host = node if node is not None else (None, None, None)
            h.stage_role(nid(i), None if node is None else NodeRole(z, c, host=None if host is None else hid(host)))
        h2, _ = h.apply_staged_changes(2)
    except LayoutError as e:
        assert "impossible to store partitions of size 1" in e.message
        return
    h2.current().check()
    assert_invariants(h2.current())
    assert not has_negative_cycle(h2.current(), h1.current())


# ---------------------------------------------------------------------- scale


def big_cluster(nb_hosts: int = 32) -> list[Node]:
    """Workers of 8 per host, host j in zone j % 8: with 32 hosts, 256 workers, 4 hosts per zone."""
    return [(f"z{(i // 8) % 8}", 10**12, i // 8) for i in range(8 * nb_hosts)]


def moved_copies(old: LayoutVersion, new: LayoutVersion) -> int:
    return sum(len(set(new.nodes_of(p)) - set(old.nodes_of(p))) for p in range(NB_PARTITIONS))


@pytest.mark.timeout(60)  # a hang guard: speed is measured (docs/performance.md), not asserted
def test_256_workers_on_32_hosts_in_8_zones():
    """Computed in about 0.2 s each (docs/performance.md); speed is measured, not asserted."""
    h, _ = build(3, big_cluster())
    v = h.current()
    assert_invariants(v)
    usage = v.usage()
    assert max(usage.values()) - min(usage.values()) <= 1  # 768 copies over 256 workers: 3 each
    # The next version drops one host (8 workers): only the copies it held move.
    h2, msg = build(3, big_cluster(31), base=h.clone())
    v2 = h2.current()
    v2.check()
    assert_invariants(v2)
    gone = [n for n in v.storage_nodes() if n not in v2.roles]
    assert len(gone) == 8
    assert moved_copies(v, v2) == sum(usage[n] for n in gone) == 24
    assert "A total of 24 new copies of partitions need to be transferred." in msg
