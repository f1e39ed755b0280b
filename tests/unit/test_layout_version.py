"""A layout version: ring lookups, check() against tampered layouts, wire format and text."""

from __future__ import annotations

import dataclasses

import pytest

from garagekv.rpc.layout import (
    MAX_NODE_NUMBER,
    NB_PARTITIONS,
    LayoutError,
    LayoutHistory,
    LayoutVersion,
    NodeRole,
    describe_version,
    format_bytes,
    parse_zone_redundancy,
)
from garagekv.util import codec
from garagekv.util.errors import AdminError
from tests.support.layouts import nid

NODES = [("dc1", 2000), ("dc1", 1000), ("dc2", 3000), ("dc3", 2000), ("dc3", None)]


@pytest.fixture(scope="module")
def version() -> LayoutVersion:
    h = LayoutHistory.new(3)
    for i, (zone, cap) in enumerate(NODES, start=1):
        h.stage_role(nid(i), NodeRole(zone, cap, ["rack1"] if i == 1 else []))
    h2, _ = h.apply_staged_changes(1)
    return h2.current()


def tampered(v: LayoutVersion, **changes) -> LayoutVersion:
    fields = {"roles": dict(v.roles), "node_id_vec": list(v.node_id_vec), **changes}
    return dataclasses.replace(v, **fields)


def set_ring(v: LayoutVersion, partition: int, nodes: list[int]) -> LayoutVersion:
    ring = bytearray(v.ring_assignment_data)
    rf = v.replication_factor
    ring[partition * rf : (partition + 1) * rf] = bytes(nodes)
    return tampered(v, ring_assignment_data=bytes(ring))


def test_valid_version_passes_check(version):
    version.check()


def test_ring_lookup(version):
    assert LayoutVersion.partition_of(bytes([0xAB]) + bytes(31)) == 0xAB
    h = bytes([7]) + b"x" * 31
    assert version.nodes_of_hash(h) == version.nodes_of(7)
    nodes = version.nodes_of(7)
    assert len(nodes) == 3 and len(set(nodes)) == 3
    assert set(nodes) <= set(version.storage_nodes())
    assert sum(version.usage().values()) == NB_PARTITIONS * 3
    assert nid(5) not in version.usage()  # the gateway
    assert all(7 in version.partitions_of(n) for n in nodes)
    assert all(len(version.partitions_of(n)) == used for n, used in version.usage().items())


def test_nodes_are_listed_in_zone_order(version):
    zone_rank = {z: i for i, z in enumerate(version.storage_zones())}
    for p in range(NB_PARTITIONS):
        ranks = [zone_rank[version.roles[n].zone] for n in version.nodes_of(p)]
        assert ranks == sorted(ranks)


def test_initial_version_has_no_ring():
    v = LayoutVersion.initial(3)
    assert not v.is_ready
    assert v.nodes_of(0) == [] and v.nodes_of_hash(bytes(32)) == []
    with pytest.raises(LayoutError, match="ring_assignment_data has incorrect length 0 instead of 768"):
        v.check()


def test_layout_error_is_an_admin_error():
    assert issubclass(LayoutError, AdminError)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda v: tampered(v, partition_size=v.partition_size - 1), r"partition_size \(\d+\) is different"),
        (lambda v: tampered(v, partition_size=v.partition_size + 1), r"node usage \(\d+\) is bigger than"),
        (lambda v: set_ring(v, 3, [0, 0, 2]), "partition does not contain 3 unique node ids"),
        (lambda v: set_ring(v, 3, [0, 1, 2]), "nodes of partition are in less than 3 distinct zones"),
        (lambda v: set_ring(v, 3, [0, 2, 9]), "ring_assignment_data contains invalid node id 9"),
        (lambda v: set_ring(v, 3, [0, 2, 5]), "ring_assignment_data contains invalid node id 5"),
        (lambda v: set_ring(v, 3, [0, 2, 4]), "ring_assignment_data contains id of a gateway node"),
        (lambda v: tampered(v, ring_assignment_data=v.ring_assignment_data[:-1]), "length 767 instead of 768"),
        (lambda v: tampered(v, replication_factor=2), "incorrect length 768 instead of 512"),
        (lambda v: tampered(v, node_id_vec=v.node_id_vec[:-1]), "node_id_vec does not contain the correct set"),
        (lambda v: tampered(v, node_id_vec=list(reversed(v.node_id_vec))), "node_id_vec is not ordered"),
        (lambda v: tampered(v, zone_redundancy=4), "smaller or equal to the replication factor"),
        (lambda v: tampered(v, replication_factor=0), "^invalid replication factor 0$"),
        (lambda v: tampered(v, replication_factor=True), "^invalid replication factor True$"),
        (lambda v: tampered(v, replication_factor="3"), "^invalid replication factor '3'$"),
        (lambda v: tampered(v, partition_size=0), "^invalid partition_size 0$"),
        (lambda v: tampered(v, partition_size=True), "^invalid partition_size True$"),
        (lambda v: tampered(v, partition_size="5"), "^invalid partition_size '5'$"),
    ],
)
def test_check_rejects_tampered_layouts(version, mutate, message):
    with pytest.raises(LayoutError, match=message):
        mutate(version).check()


def test_check_rejects_a_role_changed_after_computation(version):
    bad = tampered(version)
    bad.roles[nid(3)] = NodeRole("dc2", 10)  # shrinks a node below what it holds
    with pytest.raises(LayoutError, match="bigger than node capacity"):
        bad.check()


def test_check_refuses_more_storage_nodes_than_the_ring_can_index(version):
    roles = {i.to_bytes(32, "big"): NodeRole("z", 10**6) for i in range(MAX_NODE_NUMBER + 1)}
    bad = tampered(version, roles=roles, node_id_vec=sorted(roles))
    with pytest.raises(LayoutError, match=f"^There are more than {MAX_NODE_NUMBER} non-gateway nodes"):
        bad.check()


def test_wire_round_trip(version):
    wire = version.to_wire()
    data = codec.encode(wire)
    back = LayoutVersion.from_wire(codec.decode(data))
    assert back == version
    assert codec.encode(back.to_wire()) == data
    back.check()


@pytest.mark.parametrize(
    "breakage",
    [
        lambda w: w.pop("roles"),
        lambda w: w.__setitem__("roles", [[b"short", {"zone": "a", "capacity": 1, "tags": []}]]),
        lambda w: w.__setitem__("roles", [[nid(1), {"zone": "a", "capacity": 0, "tags": []}]]),
        lambda w: w.__setitem__("zone_redundancy", "lots"),
        lambda w: w.__setitem__("version", "x"),
        lambda w: w.__setitem__("node_id_vec", None),
    ],
)
def test_from_wire_rejects_malformed_input(version, breakage):
    w = version.to_wire()
    breakage(w)
    with pytest.raises(LayoutError):
        LayoutVersion.from_wire(w)


def test_node_role_validation():
    assert NodeRole("z", 5, ["a", "b"]).tags == ("a", "b")
    assert NodeRole("z", None).is_gateway
    with pytest.raises(LayoutError, match="Invalid capacity value: 0"):
        NodeRole("z", 0)
    assert NodeRole("z", 2**64 - 1).capacity == 2**64 - 1
    with pytest.raises(LayoutError, match="Invalid capacity value"):
        NodeRole("z", 2**64)  # a layout could not be encoded any more
    with pytest.raises(LayoutError, match="zone"):
        NodeRole("", 5)
    # bounded, so that a history of many versions of hundreds of roles fits in one RPC message
    assert NodeRole("z" * 255, 5, ["t" * 255] * 32).zone == "z" * 255
    for zone, tags in (("z" * 256, []), ("é" * 128, []), ("z", ["t" * 256]), ("z", ["t"] * 33)):
        with pytest.raises(LayoutError, match="at most"):
            NodeRole(zone, 5, tags)


def test_parse_zone_redundancy():
    assert parse_zone_redundancy("max") == "maximum"
    assert parse_zone_redundancy("none") == "maximum"
    assert parse_zone_redundancy("2", 3) == 2
    with pytest.raises(LayoutError, match="'none'/'max' or an integer"):
        parse_zone_redundancy("two")
    with pytest.raises(LayoutError, match="at least 1"):
        parse_zone_redundancy("0")


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1.0 KB"),
        (10**9, "1000.0 MB"),
        (2 * 10**9, "2.0 GB"),
        (10**12, "1000.0 GB"),
        (5 * 10**12, "5.0 TB"),
    ],
)
def test_format_bytes_matches_garage(n, text):
    assert format_bytes(n) == text


def test_describe_lists_roles(version):
    text = describe_version(version)
    assert "ID                Tags   Zone  Capacity  Usable capacity" in text
    assert nid(1).hex()[:16] in text and "rack1" in text
    assert "gateway" in text
    assert "Zone redundancy: maximum" in text
    assert text.endswith("Current cluster layout version: 1")
