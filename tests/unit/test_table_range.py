"""Range reads over replicas that disagree: the coordinator filters after merging, and pages on
what the replicas returned, not on what survived the filter."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from garagekv.db.env import Database
from garagekv.db.writer import GroupCommitWriter
from garagekv.model.k2v.range import RangeQuery, read_range
from garagekv.rpc.endpoint import EndpointRegistry
from garagekv.table.data import TableData
from garagekv.table.table import Table
from tests.support import eventually
from tests.support.tables import IDS, Lww, LwwSchema, Net, Rep

P = bytes([7]) * 32


class LiveSchema(LwwSchema):
    """``filt`` True hides tombstones (as ReadBatch hides deleted items)."""

    name = "live"

    def matches_filter(self, entry: Lww, filt: bool) -> bool:
        return not (filt and entry.is_tombstone())


@pytest.fixture
def nodes(tmp_path):
    out: dict = {}
    for i, node_id in enumerate(IDS):
        db = Database(tmp_path / f"n{i}", map_size=64 << 20)
        writer = GroupCommitWriter(db)
        data = TableData(db, writer, LiveSchema())
        registry = EndpointRegistry()
        table = Table(data, Rep(node_id), Net(out, []), registry)
        out[node_id] = SimpleNamespace(db=db, writer=writer, data=data, registry=registry, table=table)
    yield [out[n] for n in IDS]
    for n in out.values():
        n.writer.close()
        n.db.close()


async def store(node, sk: str, ts: int, value: bytes) -> None:
    """Write straight into one replica, as if the others had missed or not yet seen it."""
    await node.data.merge(Lww(P + sk.encode(), ts, value))


async def read(table: Table, q: RangeQuery) -> tuple[list[str], bool, str | None]:
    page = await read_range(lambda start, **kw: table.get_range_page(P, start, **kw), q, True)
    return [k for k, _ in page.entries], page.more, page.next_start


async def test_a_stale_replica_does_not_resurrect_a_deleted_entry(nodes):
    a, b, stale = nodes
    for n in nodes:
        await store(n, "k", 1, b"old")
    for n in (a, b):
        await store(n, "k", 2, b"")  # deleted; the stale replica missed the delete
    # The stale node coordinates: its own answer is always in the quorum.
    assert await read(stale.table, RangeQuery()) == ([], False, None)
    await eventually(lambda: stale.data.get(P + b"k").is_tombstone())  # the read repairs it


async def test_entries_emptied_by_the_merge_do_not_end_the_paging(nodes):
    a, b, stale = nodes
    for i in range(3):
        for n in nodes:
            await store(n, f"k{i}", 1, b"old")
        for n in (a, b):
            await store(n, f"k{i}", 2, b"")
    for i in (3, 4):
        for n in nodes:
            await store(n, f"k{i}", 1, b"live")
    assert await read(stale.table, RangeQuery(limit=1)) == (["k3"], True, "k4")
    assert await read(stale.table, RangeQuery(limit=2)) == (["k3", "k4"], False, None)
    assert await read(stale.table, RangeQuery(reverse=True, limit=1)) == (["k4"], True, "k3")


async def read_paged(table: Table, q: RangeQuery, page: int) -> list[str]:
    got = await read_range(lambda start, **kw: table.get_range_page(P, start, **kw), q, True, page=page)
    assert not got.more
    return [k for k, _ in got.entries]


async def test_reverse_reads_around_the_empty_sort_key(nodes):
    """The empty key is the smallest: downwards from it is that key alone, and a scan continued
    past it ends (a reverse scan from an empty start means "from the end" to the storage)."""
    keys = ["", "a", "b", "c"]
    for n in nodes:
        for k in keys:
            await store(n, k, 1, b"v")
    t = nodes[0].table
    assert await read(t, RangeQuery(start="", reverse=True)) == ([""], False, None)
    assert await read(t, RangeQuery(start="", reverse=True, limit=1)) == ([""], False, None)
    assert await read(t, RangeQuery(start="", reverse=True, limit=0)) == ([], True, "")
    assert await read(t, RangeQuery(start="", end="", reverse=True)) == ([], False, None)
    # paging down to the empty key: it comes last, once, and its next_start reads it alone
    assert await read(t, RangeQuery(reverse=True, limit=3)) == (["c", "b", "a"], True, "")
    assert await read(t, RangeQuery(reverse=True, start="a", limit=1)) == (["a"], True, "")
    # internal pages that end exactly at the empty key do not start over from the end
    for page in (1, 2, 3, 4, 1000):
        assert await read_paged(t, RangeQuery(reverse=True), page) == keys[::-1], page
        assert await read_paged(t, RangeQuery(reverse=True, start="b"), page) == ["b", "a", ""], page
        assert await read_paged(t, RangeQuery(), page) == keys, page
    for n in nodes:  # a tombstone at the empty key: hidden, and still the end
        await store(n, "", 2, b"")
    assert await read(t, RangeQuery(start="", reverse=True)) == ([], False, None)
    assert await read_paged(t, RangeQuery(reverse=True), 1) == ["c", "b", "a"]


async def test_newer_elsewhere_reads_only_what_another_replica_holds_differently(nodes):
    """What the expiry worker merges before it writes tombstones: the entries of a read quorum
    that differ from this node's copies, merged; keys stored alike cost nothing to decode."""
    from garagekv.rpc.quorum import QuorumError

    me, other, third = nodes
    for n in nodes:
        await store(n, "same", 1, b"v")
        await store(n, "stale", 1, b"old")
    for n in (other, third):  # a write this node missed
        await store(n, "stale", 2, b"new")
    await store(other, "only-there", 1, b"x")
    keys = [P + k for k in (b"same", b"stale", b"only-there", b"nowhere")]
    got = {e.tree_key(): e for e in await me.table.newer_elsewhere(keys)}
    assert set(got) == {P + b"stale", P + b"only-there"}
    assert got[P + b"stale"].value == b"new" and got[P + b"only-there"].value == b"x"
    assert me.data.get(P + b"stale").value == b"old"  # it only reads: the caller merges

    def unreachable(node: bytes):
        async def fail(*args, **kwargs):
            raise ConnectionError("down")

        return fail

    other.registry.dispatch, saved = unreachable(other.table.node_id), other.registry.dispatch
    got = {e.tree_key(): e for e in await me.table.newer_elsewhere(keys)}  # the third one answers
    assert got[P + b"stale"].value == b"new" and P + b"only-there" not in got
    third.registry.dispatch = unreachable(third.table.node_id)
    with pytest.raises(QuorumError):
        await me.table.newer_elsewhere(keys)
    other.registry.dispatch = saved
