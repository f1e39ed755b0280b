"""The table layer's endpoints over a real connection: a malformed request is a typed 400-class
protocol error for the sender (``InvalidRequest`` naming the message), never an internal error,
and a well-formed one still gets its answer."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from garagekv.db.env import Database
from garagekv.db.writer import GroupCommitWriter
from garagekv.net.identity import NodeKey
from garagekv.rpc.endpoint import EndpointRegistry, NetApp
from garagekv.table.anti_entropy import TableSyncer
from garagekv.table.data import TableData
from garagekv.table.gc import TableGc
from garagekv.table.table import Table
from garagekv.util.errors import BadRequest
from tests.support.tables import FakeHistory, FakeLayout, Lww, LwwSchema

SECRET = b"t" * 32
PART = bytes([7]) * 32


@pytest.fixture
async def peer(tmp_path):
    """Node ``server`` serves one table's three endpoints; ``client`` calls them by hand."""
    db = Database(tmp_path / "db", fsync=False, map_size=1 << 26)
    writer = GroupCommitWriter(db)
    registry = EndpointRegistry()
    server = NetApp(NodeKey.generate(), SECRET, registry.dispatch)
    client = NetApp(NodeKey.generate(), SECRET, EndpointRegistry().dispatch)
    data = TableData(db, writer, LwwSchema())
    table = Table(data, SimpleNamespace(node_id=server.node_id), server, registry)
    syncer = TableSyncer(table, FakeLayout(FakeHistory([server.node_id])), registry)
    gc = TableGc(table, db, writer, 1.0, registry)
    addr = await server.listen("127.0.0.1", 0)
    await client.connect(server.node_id, addr)
    await data.merge(Lww(PART + b"k", 1, b"v"))
    yield SimpleNamespace(client=client, to=server.node_id, table=table, syncer=syncer, gc=gc)
    await client.close()
    await server.close()
    writer.close()
    db.close()


GOOD_RANGE = ["range", PART, b"", b"", None, False, None, None, False]

MALFORMED = [
    # (endpoint, request, what the error names)
    ("table", GOOD_RANGE[:5], "malformed table range"),  # too few fields: once an unpacking ValueError
    ("table", [*GOOD_RANGE, True], "malformed table range"),
    ("table", ["range", PART, b"", b"", None, False, "ten", None, False], "limit"),
    ("table", ["range", PART, b"", b"", None, "yes", None, None, False], "reverse"),
    ("table", ["range", "a string", b"", b"", None, False, None, None, False], "partition"),
    ("table", ["get_many", [PART + b"k", 5]], "malformed table get_many"),
    ("table", ["update", "x"], "malformed table update"),
    ("table", ["nope", []], "unknown table request"),
    ("table", "not an array", "malformed table request"),
    ("sync", ["sums", 300, 1, [b""], None], "partition"),
    ("sync", ["sums", 7, 1, [b""]], "malformed sync sums"),
    ("sync", ["sums", 7, 0, [b""], None], "level"),
    ("sync", ["sums", 7, 9, [b""], None], "level"),
    ("sync", ["sums", 7, 1, [], None], "bounds"),
    ("sync", ["sums", 7, 1, [b"", PART + b"b", PART + b"a"], None], "bounds must increase"),
    ("sync", ["sums", 7, 1, [b"", PART + b"a"], PART + b"a"], "bounds must increase"),
    ("sync", ["sums", 7, 1, [b"", b"\x08" + PART[1:]], None], "a key of the partition"),
    ("sync", ["sums", 7, 1, [b"\x08" + PART[1:]], None], "a key of the partition"),
    ("sync", ["sums", 7, 1, [b""] * 5000, None], "bounds"),
    ("sync", ["elements", [PART, 3]], "malformed sync elements"),
    ("sync", ["elements", [PART] * 5000], "at most"),
    ("sync", ["items", [1, 2]], "malformed sync items"),
    ("sync", ["digest", 1], "malformed sync digest"),
    ("sync", ["gossip"], "unknown sync request"),
    ("gc", ["delete_if_equal_hash", [[PART + b"k"]]], "malformed GC delete_if_equal_hash"),
    ("gc", ["delete_if_equal_hash", [[PART + b"k", b"h"]], 1], "malformed GC delete_if_equal_hash"),
    ("gc", ["collect", []], "unknown GC request"),
]


def _path(p, endpoint: str) -> str:
    return {"table": p.table.endpoint, "sync": p.syncer.endpoint, "gc": p.gc.endpoint}[endpoint]


@pytest.mark.parametrize(("endpoint", "msg", "names"), MALFORMED)
async def test_a_malformed_request_is_an_invalid_request_for_the_sender(peer, endpoint, msg, names):
    with pytest.raises(BadRequest) as info:
        await peer.client.call(peer.to, _path(peer, endpoint), msg, timeout=10)
    assert info.value.code == "InvalidRequest" and names in info.value.message


async def test_well_formed_requests_still_get_their_answers(peer):
    rows = await peer.client.call(peer.to, peer.table.endpoint, GOOD_RANGE, timeout=10)
    assert rows == [[b"k", Lww(PART + b"k", 1, b"v").encode()]]
    got = await peer.client.call(peer.to, peer.table.endpoint, ["get_many", [PART + b"k", PART + b"x"]], timeout=10)
    assert got == [Lww(PART + b"k", 1, b"v").encode(), None]
    element = peer.table.data.sums.hasher.element(PART + b"k", Lww(PART + b"k", 1, b"v").encode())
    sums = await peer.client.call(peer.to, peer.syncer.endpoint, ["sums", 7, 1, [b"", PART + b"k"], None], timeout=10)
    assert sums == [bytes(32), element.to_bytes(32, "little")]
    got = await peer.client.call(peer.to, peer.syncer.endpoint, ["elements", [PART + b"k", PART + b"x"]], timeout=10)
    assert got == [element.to_bytes(32, "little"), None]
    assert await peer.client.call(peer.to, peer.gc.endpoint, ["delete_if_equal_hash", []], timeout=10) == 0
