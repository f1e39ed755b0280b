"""Membership messages: status and peer list, checked once on receipt."""

from __future__ import annotations

import pytest

from garagekv.rpc.layout import LayoutDigest
from garagekv.rpc.messages import MalformedMessage
from garagekv.rpc.system_messages import NodeStatus, peers_from_wire, peers_to_wire

DIGEST = LayoutDigest(3, 1, b"\x01" * 32, b"\x02" * 32)


def test_status_round_trip_keeps_the_wire_map():
    s = NodeStatus("host", "127.0.0.1:3901", DIGEST, 1234, b"\x03" * 32)
    wire = s.to_wire()
    assert set(wire) == {"hostname", "addr", "layout", "meta_free", "peers_hash"}
    assert NodeStatus.from_wire(wire) == s


@pytest.mark.parametrize(
    "change",
    [
        {"hostname": 5},
        {"addr": None},
        {"layout": "x"},
        {"layout": [1]},
        {"meta_free": -1},
        {"meta_free": "lots"},
        {"peers_hash": "abc"},
    ],
)
def test_malformed_status_is_refused_whole(change):
    wire = {**NodeStatus("h", "a:1", DIGEST, 0, b"").to_wire(), **change}
    with pytest.raises(MalformedMessage):
        NodeStatus.from_wire(wire)
    with pytest.raises(MalformedMessage):
        NodeStatus.from_wire([wire])


def test_peer_list_round_trip_and_refusals():
    peers = [(b"\x01" * 32, "10.0.0.1:3901"), (b"\x02" * 32, "[::1]:3901")]
    assert peers_from_wire(peers_to_wire(peers)) == peers
    for bad in [None, [[b"x"]], [[b"x", 5]], [["not bytes", "a:1"]], [[b"\x01" * 33, "a:1"]]]:
        with pytest.raises(MalformedMessage):
            peers_from_wire(bad)
