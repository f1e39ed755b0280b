"""Which storage node coordinates an insert, and when the next one may take over.

One node on real LMDB with a three-node layout; the network is a fake that answers for the
other two. The rule under test: an insert is handed to another coordinator only when nothing was
stored, because a second coordinator stores the values again under its own dot, and that copy
can surface later next to values written over the first one.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from garagekv.model.k2v.item import partition_hash
from garagekv.model.k2v.messages import InsertedItem
from garagekv.model.k2v.rpc import ENDPOINT
from garagekv.net.errors import NetError, NotConnected, RpcTimeout
from garagekv.net.frame import encode_error, error_from_body
from garagekv.net.identity import node_number
from garagekv.rpc.layout import LayoutHistory
from garagekv.rpc.quorum import QuorumError, node_label
from garagekv.util.errors import InternalError, ServiceUnavailable, StorageError, WrittenWithoutQuorum
from tests.support.layouts import THREE, nid, with_nodes
from tests.support.standalone import StandaloneModel

BUCKET = b"\x07" * 32
HERE, B, C = nid(1), nid(2), nid(3)


class Peers:
    """The other nodes: K2V requests get ``k2v[node]`` (an error to raise, or None for success);
    table updates (replication) fail while ``cut``."""

    on_connect: list[Any] = []

    def __init__(self) -> None:
        self.cut = True
        self.k2v: dict[bytes, Exception | None] = {}
        self.asked: list[tuple[bytes, str]] = []

    async def call(self, node: bytes, path: str, msg: Any, timeout: float | None = None) -> Any:
        if path == ENDPOINT:
            self.asked.append((node, msg[0]))
            err = self.k2v.get(node)
            if err is not None:
                raise err
            return None
        if self.cut:
            raise ServiceUnavailable(f"connection to {node[:4].hex()} lost")
        return None


@pytest.fixture
def peers() -> Peers:
    return Peers()


def node(tmp_path, peers: Peers, history: LayoutHistory) -> StandaloneModel:
    return StandaloneModel(tmp_path / "db", node_id=HERE, history=history, netapp=peers)


@pytest.fixture
def storage_node(tmp_path, peers):
    """This node is one of the three storage nodes of every partition (rf 3)."""
    o = node(tmp_path, peers, with_nodes(LayoutHistory.new(3), THREE))
    yield o
    o.close()


@pytest.fixture
def gateway(tmp_path, peers):
    """This node stores nothing: nodes 2, 3 and 4 are the storage nodes (rf 3)."""
    o = node(tmp_path, peers, with_nodes(LayoutHistory.new(3), {2: THREE[2], 3: THREE[3], 4: ("dc1", 10**9)}))
    yield o
    o.close()


def stored_dots(o: StandaloneModel, sk: str) -> list[int]:
    """The nodes whose dots this node's own copy of item ``p``/``sk`` holds."""
    item = o.model.items.data.get(partition_hash(BUCKET, "p") + sk.encode())
    return [] if item is None else sorted(item.items)


async def test_an_insert_stored_here_but_not_replicated_is_not_written_again_elsewhere(storage_node, peers):
    with pytest.raises(ServiceUnavailable) as e:
        await storage_node.model.k2v.insert(BUCKET, InsertedItem("p", "a", None, b"v"))
    assert e.value.code == "ServiceUnavailable"  # what a client sees: the outcome is unknown
    assert e.value.message.startswith(f"The write is stored on {node_label(HERE)} but not on a quorum")
    assert isinstance(e.value, QuorumError) and e.value.operation == "k2v_insert"
    assert peers.asked == [], "no other storage node was asked to coordinate it"
    assert stored_dots(storage_node, "a") == [node_number(HERE)]  # one copy, this node's dot


async def test_an_insert_that_could_not_be_stored_here_goes_to_the_next_storage_node(storage_node, peers, monkeypatch):
    async def broken(bucket_id: bytes, items: list[InsertedItem]) -> Any:
        raise StorageError("disk full")

    monkeypatch.setattr(storage_node.model.store, "insert_many", broken)
    await storage_node.model.k2v.insert(BUCKET, InsertedItem("p", "a", None, b"v"))
    assert [kind for _, kind in peers.asked] == ["insert"] and peers.asked[0][0] in (B, C)


async def test_a_remote_coordinator_that_stored_the_insert_is_the_last_one_asked(gateway, peers):
    first = gateway.model.k2v.items.order([B, C, nid(4)])[0]
    peers.k2v[first] = WrittenWithoutQuorum("Could not reach quorum of 2")
    with pytest.raises(ServiceUnavailable) as e:
        await gateway.model.k2v.insert(BUCKET, InsertedItem("p", "a", None, b"v"))
    assert isinstance(e.value, QuorumError) and e.value.operation == "k2v_insert"  # counted as a failed insert
    assert e.value.message.startswith(f"The write is stored on {node_label(first)} but not on a quorum")
    assert peers.asked == [(first, "insert")]


@pytest.mark.parametrize("lost", [RpcTimeout("Timeout: k2v on it after 30s"), NetError("connection to it lost")])
async def test_a_remote_coordinator_that_took_the_insert_and_never_answered_is_the_last_one_asked(gateway, peers, lost):
    first = gateway.model.k2v.items.order([B, C, nid(4)])[0]
    peers.k2v[first] = lost
    with pytest.raises(ServiceUnavailable) as e:
        await gateway.model.k2v.insert(BUCKET, InsertedItem("p", "a", None, b"v"))
    assert e.value.message.startswith(f"The write may be stored on {node_label(first)}")
    assert isinstance(e.value, QuorumError) and e.value.operation == "k2v_insert"
    assert peers.asked == [(first, "insert")]


async def test_a_storage_node_not_connected_is_skipped(gateway, peers):
    first, second, _ = gateway.model.k2v.items.order([B, C, nid(4)])
    peers.k2v[first] = NotConnected("Not connected")  # the request never left: it had no effect
    await gateway.model.k2v.insert(BUCKET, InsertedItem("p", "a", None, b"v"))
    assert peers.asked == [(first, "insert"), (second, "insert")]


async def test_a_remote_coordinator_that_failed_before_storing_hands_over_to_the_next(gateway, peers):
    first, second, _ = gateway.model.k2v.items.order([B, C, nid(4)])
    peers.k2v[first] = InternalError("disk full")
    await gateway.model.k2v.insert(BUCKET, InsertedItem("p", "a", None, b"v"))
    assert peers.asked == [(first, "insert"), (second, "insert")]


async def test_coordinating_for_another_node_says_when_it_stored_without_a_quorum(storage_node, peers):
    msg = ["insert", BUCKET, [InsertedItem("p", "a", None, b"v").to_wire()]]
    with pytest.raises(WrittenWithoutQuorum) as e:
        await storage_node.registry.dispatch(B, ENDPOINT, msg)
    # The RPC layer carries it by code, so the node that asked sees the same class.
    assert type(error_from_body(_error_body(e.value))) is WrittenWithoutQuorum
    assert stored_dots(storage_node, "a") == [node_number(HERE)]
    peers.cut = False
    await storage_node.registry.dispatch(B, ENDPOINT, msg)  # replicated: a plain success


def _error_body(err: WrittenWithoutQuorum) -> Any:
    return msgpack.unpackb(encode_error(1, err), raw=False)[3]
