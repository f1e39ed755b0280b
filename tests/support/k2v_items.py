"""K2V item histories for property tests: replica states reachable in a real cluster, and the
CRDT laws their merge must satisfy.

First written for the item tests (``tests/unit/test_k2v_item.py``); the expiry tests
(``tests/unit/test_k2v_item_expiry.py``) draw the same histories and check the same laws.
"""

from __future__ import annotations

from hypothesis import strategies as st

from garagekv.model.k2v.causality import CausalContext
from garagekv.model.k2v.item import K2VItem

BUCKET = bytes(range(32))
VALUES = st.sampled_from([None, b"", b"a", b"b", b"c"])
NODE_IDS = st.one_of(st.integers(0, 5), st.integers(0, 2**64 - 1))


def new() -> K2VItem:
    return K2VItem.new(BUCKET, "pk", "sk")


@st.composite
def histories(draw: st.DrawFn, ttl: bool = False) -> list[K2VItem]:
    """Replica states reachable in a real cluster.

    Each node coordinates writes on its own replica only (so it holds all its own dots and issues
    increasing timestamps), clients write with tokens from earlier reads (or none), and replicas
    exchange state in any order. Returns snapshots taken along the way plus the final replicas.

    ``ttl``: writes may carry an expiry, and a node's expiry worker may expire its replica's due
    values in place and add its tombstone dot (what ``ExpiryWorker`` does).
    """
    nodes = draw(st.lists(NODE_IDS, min_size=1, max_size=4, unique=True))
    replicas = {n: new() for n in nodes}
    last_ts = dict.fromkeys(nodes, 0)
    tokens: list[CausalContext | None] = [None]
    snapshots: list[K2VItem] = []
    for _ in range(draw(st.integers(1, 25))):
        op = draw(st.sampled_from(["write", "write", "write", "sync", "read"] + (["expire"] if ttl else [])))
        n = draw(st.sampled_from(nodes))
        if op == "write":
            now = draw(st.integers(0, 40))
            ctx = draw(st.sampled_from(tokens))
            value = draw(VALUES)
            exp = draw(st.one_of(st.none(), st.integers(0, 60))) if ttl and value is not None else None
            last_ts[n] = replicas[n].update(n, ctx, value, max(last_ts[n], now), expires=exp)
        elif op == "expire":
            now = draw(st.integers(0, 60))
            if replicas[n].expire(now):
                last_ts[n] = replicas[n].update(n, None, None, max(last_ts[n], now))
        elif op == "sync":
            replicas[n].merge(replicas[draw(st.sampled_from(nodes))])
        else:  # a quorum read of two replicas hands out a token
            seen = replicas[n].copy()
            seen.merge(replicas[draw(st.sampled_from(nodes))])
            tokens.append(seen.causal_context())
        snapshots.append(replicas[n].copy())
    return snapshots + list(replicas.values())


def merged(*items: K2VItem) -> K2VItem:
    out = items[0].copy()
    for it in items[1:]:
        out.merge(it)
    return out


def check_laws(a: K2VItem, b: K2VItem, c: K2VItem) -> None:
    assert merged(a, b).encode() == merged(b, a).encode()
    assert merged(merged(a, b), c).encode() == merged(a, merged(b, c)).encode()
    assert merged(a, a).encode() == a.encode()
    assert merged(a, b, b).encode() == merged(a, b).encode()
    assert merged(a, b).values() == merged(b, a).values()
