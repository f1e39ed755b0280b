"""Integer min-cost maximum flow on small graphs (primal-dual: Dijkstra + Dinic phases).

The layout assignment is a flow problem (see ``assignment.py``). Garage finds a max flow, then
cancels negative cycles with a bounded Bellman-Ford; here one exact algorithm does both:

* each phase computes shortest distances from the source with Dijkstra on reduced costs
  (Johnson potentials keep them non-negative), stopping once the sink is settled;
* potentials are raised by ``min(dist, dist[sink])``, so every arc on a shortest path gets reduced
  cost 0 and no reduced cost becomes negative;
* Dinic then pushes a maximum flow using only zero-reduced-cost arcs.

Each phase augments only along shortest (cheapest) paths, so the flow of every value reached is
of minimum cost, and the final flow is a minimum-cost maximum flow (successive shortest paths).
Phases are few because the layout's costs are 0/1 and shortest-path lengths are small integers.

Complexity: one phase is O(E log V) for Dijkstra plus O(E * augmenting rounds) for Dinic; the
number of phases is at most the number of distinct shortest-path costs (<= max path cost + 1).
Everything is deterministic: arcs are scanned in insertion order.

Arcs are stored in flat lists (arc ``a`` and its reverse ``a ^ 1``) because attribute access and
small objects dominate CPython's cost for graphs of ~10^4 arcs.
"""

from __future__ import annotations

import heapq

# "Unreached" / "unbounded" as an integer, so distances and flows stay ``int`` throughout: larger
# than any capacity total or path cost a layout graph can have (Python ints do not overflow).
INF = 1 << 62


class FlowGraph:
    """A directed graph with integer capacities and costs; vertices are ``0 .. n-1``."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.adj: list[list[int]] = [[] for _ in range(n)]
        self.to: list[int] = []
        self.cap: list[int] = []  # residual capacity
        self.orig: list[int] = []  # capacity at creation (0 for reverse arcs)
        self.cost: list[int] = []

    def add_edge(self, u: int, v: int, cap: int, cost: int = 0) -> int:
        """Add ``u -> v``; returns the arc id (its flow is ``flow_on(arc)``)."""
        a = len(self.to)
        self.to += (v, u)
        self.cap += (cap, 0)
        self.orig += (cap, 0)
        self.cost += (cost, -cost)
        self.adj[u].append(a)
        self.adj[v].append(a + 1)
        return a

    def flow_on(self, arc: int) -> int:
        return self.orig[arc] - self.cap[arc]

    def total_cost(self) -> int:
        return sum(self.cost[a] * (self.orig[a] - self.cap[a]) for a in range(0, len(self.to), 2))

    # ------------------------------------------------------------------ min-cost flow

    def min_cost_max_flow(self, s: int, t: int, limit: int | None = None) -> int:
        """Push up to ``limit`` units from ``s`` to ``t`` at minimum cost; returns the flow value.

        Arc costs must be non-negative on a zero flow (true for the layout graph), so the
        initial potentials can be zero.
        """
        remaining = INF if limit is None else limit
        pi = [0] * self.n
        pushed = 0
        while remaining > 0:
            dist = self._dijkstra(s, t, pi)
            d_t = dist[t]
            if d_t == INF:
                break
            for v in range(self.n):
                dv = dist[v]
                pi[v] += dv if dv < d_t else d_t
            f = self._dinic(s, t, pi, remaining)
            if f == 0:  # cannot happen with consistent potentials; guard against looping
                break
            pushed += f
            remaining -= f
        return pushed

    def _dijkstra(self, s: int, t: int, pi: list[int]) -> list[int]:
        adj, to, cap, cost = self.adj, self.to, self.cap, self.cost
        dist = [INF] * self.n
        dist[s] = 0
        heap = [(0, s)]
        pop, push = heapq.heappop, heapq.heappush
        while heap:
            d, u = pop(heap)
            if d > dist[u]:
                continue
            if u == t:
                break
            base = d + pi[u]
            for a in adj[u]:
                if cap[a] > 0:
                    v = to[a]
                    nd = base + cost[a] - pi[v]
                    if nd < dist[v]:
                        dist[v] = nd
                        push(heap, (nd, v))
        return dist

    def _dinic(self, s: int, t: int, pi: list[int], limit: int) -> int:
        """Max flow (up to ``limit``) over arcs with residual capacity and zero reduced cost."""
        adj, to, cap, cost = self.adj, self.to, self.cap, self.cost
        n = self.n
        total = 0
        while total < limit:
            # BFS levels over admissible arcs.
            level = [-1] * n
            level[s] = 0
            queue = [s]
            for u in queue:
                lu = level[u] + 1
                pu = pi[u]
                for a in adj[u]:
                    if cap[a] > 0:
                        v = to[a]
                        if level[v] < 0 and cost[a] + pu == pi[v]:
                            level[v] = lu
                            queue.append(v)
            if level[t] < 0:
                break
            it = [0] * n
            # Iterative DFS with current-arc pointers: find paths, augment, retreat.
            stack: list[int] = []
            u = s
            while total < limit:
                if u == t:
                    f = limit - total
                    for a in stack:
                        if cap[a] < f:
                            f = cap[a]
                    retreat = len(stack)
                    for i, a in enumerate(stack):
                        cap[a] -= f
                        cap[a ^ 1] += f
                        if cap[a] == 0 and i < retreat:
                            retreat = i
                    total += f
                    del stack[retreat:]
                    u = to[stack[-1]] if stack else s
                    continue
                lst = adj[u]
                i = it[u]
                nl = level[u] + 1
                pu = pi[u]
                found = -1
                while i < len(lst):
                    a = lst[i]
                    if cap[a] > 0:
                        v = to[a]
                        if level[v] == nl and cost[a] + pu == pi[v]:
                            found = a
                            break
                    i += 1
                it[u] = i
                if found >= 0:
                    stack.append(found)
                    u = to[found]
                    continue
                if u == s:
                    break
                level[u] = -1  # dead end for this phase
                a = stack.pop()
                u = to[a ^ 1]
                it[u] += 1
        return total
