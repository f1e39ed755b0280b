"""When a node may serve K2V: with the cluster's layout, or alone by configuration."""

from __future__ import annotations

from garagekv.rpc.layout import LayoutHistory
from garagekv.rpc.readiness import Readiness
from garagekv.util.config import parse_config
from tests.support.layouts import THREE, with_nodes

PEER = "ab" * 32 + "@127.0.0.1:3901"


def config(**kw):
    return parse_config({"metadata_dir": "meta", "s3_api": {"s3_region": "garage"}, **kw})


def readiness(history: LayoutHistory, peers=(), **kw) -> Readiness:
    return Readiness(config(**kw), lambda: history, set(peers))


def test_a_single_node_deployment_serves_without_a_layout():
    assert config().single_node_deployment
    assert readiness(LayoutHistory.new(1)).refusal() is None


def test_without_a_layout_a_cluster_node_refuses():
    assert "no cluster layout" in readiness(LayoutHistory.new(3), replication_factor=3).refusal()
    # rf 1 but joining others, or already knowing other nodes: part of a cluster, not alone
    assert readiness(LayoutHistory.new(1), bootstrap_peers=[PEER]).refusal() is not None
    assert readiness(LayoutHistory.new(1), peers=[b"\x01" * 32]).refusal() is not None


def test_with_an_applied_layout_every_node_serves():
    h = with_nodes(LayoutHistory.new(3), THREE)
    assert readiness(h, peers=[b"\x01" * 32], replication_factor=3).refusal() is None


def test_the_answer_follows_the_layout_as_it_arrives():
    current = [LayoutHistory.new(3)]
    r = Readiness(config(replication_factor=3), lambda: current[0], set())
    assert r.refusal() is not None
    current[0] = with_nodes(LayoutHistory.new(3), THREE)
    assert r.refusal() is None
