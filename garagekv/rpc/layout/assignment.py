"""Partition assignment: the largest equal partition size, then the fewest moved copies.

The model is Garage's flow graph (``doc/optimal_layout_report``) with one more layer for hosts,
per partition ``p``::

    Source -> Pup(p)      cap zr          Source -> Pdown(p)    cap rf - zr
    Pup(p) -> PZ(p, z)    cap 1           Pdown(p) -> PZ(p, z)  cap rf        (every zone z)
    PZ(p, zone(h)) -> PH(p, h)  cap 1     PH(p, h) -> N(n)      cap 1         (n a node of host h)
    N(n) -> Sink          cap floor(capacity(n) / S)

An integral flow of value ``256 * rf`` is exactly an assignment giving each partition ``rf``
storage nodes on ``rf`` distinct hosts in at least ``zr`` zones (the ``Pup`` units force ``zr``
distinct zones, the ``PH`` arcs one replica per host) with no node holding more than
``floor(capacity / S)`` partitions of size ``S``. A host is the set of worker processes one
``garagekv server`` supervises (``roles.py``); every node of a host is in the host's zone. A host
with a single node needs no ``PH`` vertex: ``PZ -> N`` with capacity 1 says the same, so for a
cluster of one-node hosts the graph, and hence the result, is exactly Garage's.

Optimal size (``optimal_partition_size``). Feasibility of ``S`` is monotone, so we binary-search
``S`` like Garage, but each test is a closed-form minimum cut instead of a max-flow run: all
partitions are identical, so for a fixed set ``A`` of node vertices left on the source side, every
partition contributes the same cheapest cut, one of four shapes (which of ``Pup``/``Pdown`` is on
the source side, giving ``c``, the capacity entering a sink-side ``PZ``), each a sum of
independent per-zone terms. A source-side ``PZ(p, z)`` pays, per host of ``z``, 1 if the host has
a node outside ``A`` (its ``PH`` on the sink side, or the arc ``PZ -> N`` of a one-node host) and 0
otherwise, so a zone costs ``min(c, m)`` where ``m`` counts its hosts with a node outside ``A``.
Putting only part of a host in ``A`` pays for those nodes and still counts the host in ``m``, so
the cheapest ``A`` takes whole hosts, those of smallest total sink capacity. Hence
``maxflow(S) = min(256*rf, c2, c3, c4)`` with ``c_i`` computed in ``O(#nodes)`` from the hosts'
capacities per zone (see ``max_flow_value``); the binary search costs
``O(#nodes * log(total capacity))``. ``check()`` reuses it, so every receiver can verify optimality
in microseconds, and the unit tests compare it with a brute-force minimum cut of the explicit
graph, host layer included.

Assignment (``assign``). With the size fixed, we solve a min-cost max flow on the explicit graph
where the arc into ``N(n)`` for partition ``p`` costs 0 if node ``n`` held partition ``p`` in the
previous version and 1 otherwise. Its cost is the number of partition copies that must be
transferred, and it is exactly minimal (primal-dual, ``flow.py``); Garage's negative-cycle
cancelling bounds Bellman-Ford to 4 * #nodes rounds, so it can miss long cycles. The graph has
``V = 2 + 256*(2 + Z + H) + N`` vertices and ``E = 256*(2 + 2Z + H + N) + N`` arcs (Z zones, N
storage nodes, H hosts of several nodes); with rf = 3 and 20 nodes it takes about 20-40 ms in
CPython, with 256 nodes on 32 hosts well under a second. Arc order is fixed (rotated per partition
so that a first layout spreads partitions evenly over hosts and over the nodes of each host), so
the result is a deterministic function of the input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from garagekv.rpc.layout.errors import LayoutError
from garagekv.rpc.layout.flow import FlowGraph

PARTITION_BITS = 8
NB_PARTITIONS = 1 << PARTITION_BITS


@dataclass(frozen=True)
class Problem:
    """Storage nodes (by ring index) with their capacity and zone id, plus the constraints."""

    capacities: Sequence[int]
    zone_of: Sequence[int]  # zone id of each node; zone ids are 0 .. nb_zones-1
    nb_zones: int
    replication_factor: int
    zone_redundancy: int
    # Host id of each node (0 .. nb_hosts-1), every host's nodes in one zone; None: each node is
    # a host of its own (the graph without the host layer).
    host_of: Sequence[int] | None = None

    def __post_init__(self) -> None:
        if len(self.capacities) != len(self.zone_of):
            raise ValueError("capacities and zone_of differ in length")
        if self.host_of is not None:
            if len(self.host_of) != len(self.zone_of):
                raise ValueError("host_of and zone_of differ in length")
            zone_of_host: dict[int, int] = {}
            for h, z in zip(self.host_of, self.zone_of, strict=True):
                if zone_of_host.setdefault(h, z) != z:
                    raise ValueError("the nodes of a host must be in one zone")
        if not 1 <= self.zone_redundancy <= self.replication_factor:
            raise LayoutError(
                f"Invalid zone redundancy {self.zone_redundancy} for replication factor {self.replication_factor}"
            )

    @property
    def target(self) -> int:
        return NB_PARTITIONS * self.replication_factor

    @property
    def nb_hosts(self) -> int:
        return len(self.capacities) if self.host_of is None else len(set(self.host_of))

    def hosts(self) -> list[list[int]]:
        """Node indices of each host, hosts in order of their first node (one per node if none)."""
        if self.host_of is None:
            return [[n] for n in range(len(self.capacities))]
        groups: dict[int, list[int]] = {}
        for n, h in enumerate(self.host_of):
            groups.setdefault(h, []).append(n)
        return list(groups.values())


def max_flow_value(problem: Problem, partition_size: int) -> int:
    """Value of the maximum flow of the layout graph for ``partition_size`` (closed form)."""
    rf, zr, nb_p = problem.replication_factor, problem.zone_redundancy, NB_PARTITIONS
    by_zone: list[list[int]] = [[] for _ in range(problem.nb_zones)]
    for nodes in problem.hosts():
        by_zone[problem.zone_of[nodes[0]]].append(sum(problem.capacities[n] // partition_size for n in nodes))
    # prefix[z][j] = sum of the j smallest host sink capacities of zone z: the price of putting
    # those j hosts on the source side (leaving m = len - j hosts with a node outside A).
    prefixes = []
    for ks in by_zone:
        ks.sort()
        pre = [0]
        for k in ks:
            pre.append(pre[-1] + k)
        prefixes.append(pre)

    def best(cap_per_partition: int) -> int:
        # Sum over zones of min over m of (price of A in zone) + 256 * min(cap, m): a source-side
        # PZ(p, z) pays one arc per host with a sink-side node, a sink-side one cap_per_partition.
        total = 0
        for pre in prefixes:
            size = len(pre) - 1
            total += min(pre[size - m] + nb_p * min(cap_per_partition, m) for m in range(size + 1))
        return total

    c1 = nb_p * rf  # Pup and Pdown on the sink side: cut both source arcs
    c2 = nb_p * (rf - zr) + best(1)  # Pup source side, Pdown sink side
    c3 = nb_p * zr + best(rf)  # Pdown source side, Pup sink side
    c4 = best(rf + 1)  # both on the source side
    return min(c1, c2, c3, c4)


def is_feasible(problem: Problem, partition_size: int) -> bool:
    return max_flow_value(problem, partition_size) >= problem.target


def optimal_partition_size(problem: Problem) -> int:
    """Largest ``S`` such that all partitions fit with size ``S`` (binary search, like Garage)."""
    if not problem.capacities or not is_feasible(problem, 1):
        raise LayoutError(
            "The storage capacity of he cluster is to small. It is impossible to store partitions of size 1."
        )
    lo, hi = 1, sum(problem.capacities)
    while lo + 1 < hi:
        mid = (lo + hi) // 2
        if is_feasible(problem, mid):
            lo = mid
        else:
            hi = mid
    return lo


def assign(problem: Problem, partition_size: int, previous: Sequence[Sequence[int]] | None) -> list[list[int]]:
    """Nodes of each partition (zone order, then node index) minimising moves from ``previous``.

    ``previous[p]`` lists the node indices (in this problem's numbering) that held partition p;
    ``None`` means there is no previous assignment and every placement costs the same.
    """
    rf, zr = problem.replication_factor, problem.zone_redundancy
    nb_nodes, nb_zones = len(problem.capacities), problem.nb_zones
    nodes_in_zone: list[list[int]] = [[] for _ in range(nb_zones)]
    for n, z in enumerate(problem.zone_of):
        nodes_in_zone[z].append(n)
    # Hosts of each zone, in order of their first node: with one node per host, exactly the
    # zone's nodes (and the graph built below is the one without a host layer).
    hosts = problem.hosts()
    hosts_in_zone: list[list[list[int]]] = [[] for _ in range(nb_zones)]
    for members in hosts:
        hosts_in_zone[problem.zone_of[members[0]]].append(members)
    multi = [members for members in hosts if len(members) > 1]
    ph_index = {members[0]: i for i, members in enumerate(multi)}

    source, sink = 0, 1
    pup0 = 2
    pdown0 = pup0 + NB_PARTITIONS
    pz0 = pdown0 + NB_PARTITIONS
    node0 = pz0 + NB_PARTITIONS * nb_zones
    ph0 = node0 + nb_nodes
    g = FlowGraph(ph0 + NB_PARTITIONS * len(multi))

    # arc_of[p][n]: the arc into N(n) for partition p (from PZ or PH), to read the assignment back.
    arc_of: list[list[int]] = []
    for p in range(NB_PARTITIONS):
        old = set(previous[p]) if previous is not None else None
        pup, pdown = pup0 + p, pdown0 + p
        g.add_edge(source, pup, zr)
        if rf > zr:
            g.add_edge(source, pdown, rf - zr)
        arcs = [0] * nb_nodes
        for j in range(nb_zones):
            z = (p + j) % nb_zones  # rotate preferences so a first layout spreads evenly
            pz = pz0 + p * nb_zones + z
            g.add_edge(pup, pz, 1)
            if rf > zr:
                g.add_edge(pdown, pz, rf)
            zone_hosts = hosts_in_zone[z]
            for i in range(len(zone_hosts)):
                members = zone_hosts[(p + i) % len(zone_hosts)]
                if len(members) == 1:
                    n = members[0]
                    arcs[n] = g.add_edge(pz, node0 + n, 1, 0 if old is None or n in old else 1)
                    continue
                ph = ph0 + p * len(multi) + ph_index[members[0]]
                g.add_edge(pz, ph, 1)
                # Partitions that reach this host at the same rank i come len(zone_hosts) apart:
                # they start on successive workers, and so do those of successive ranks.
                turn = p // len(zone_hosts) + i
                for k in range(len(members)):
                    n = members[(turn + k) % len(members)]
                    arcs[n] = g.add_edge(ph, node0 + n, 1, 0 if old is None or n in old else 1)
        arc_of.append(arcs)
    for n, cap in enumerate(problem.capacities):
        g.add_edge(node0 + n, sink, min(cap // partition_size, NB_PARTITIONS))

    flow = g.min_cost_max_flow(source, sink, problem.target)
    if flow != problem.target:
        raise LayoutError("Critical Error : the association ring we produced does not have the right size.")

    ring: list[list[int]] = []
    for p in range(NB_PARTITIONS):
        arcs = arc_of[p]
        ring.append([n for z in range(nb_zones) for n in nodes_in_zone[z] if g.flow_on(arcs[n]) > 0])
    return ring
