"""The consensus endpoints over real connections: NetApp is the proposer's transport as is."""

from __future__ import annotations

import pytest

from garagekv.consensus import Acceptor, Proposer
from garagekv.consensus.acceptor import PREPARE
from garagekv.db.env import Database
from garagekv.db.writer import GroupCommitWriter
from garagekv.net.identity import NodeKey
from garagekv.rpc.endpoint import EndpointRegistry, NetApp
from garagekv.util.errors import BadRequest
from tests.support.consensus_fakes import RegisterMachine, StaticPlacement, increment, key_of, read

SECRET = b"c" * 32
KEY = key_of(5)


@pytest.fixture
async def apps(tmp_path):
    stores, apps, addrs = [], [], []
    for i in range(3):
        db = Database(tmp_path / f"n{i}", fsync=False, map_size=1 << 26)
        writer = GroupCommitWriter(db)
        registry = EndpointRegistry()
        Acceptor(db, writer, RegisterMachine(db)).register(registry)
        app = NetApp(NodeKey.generate(), SECRET, registry.dispatch)
        addrs.append(await app.listen("127.0.0.1", 0))
        stores.append((db, writer))
        apps.append(app)
    for a in apps:
        for b, addr in zip(apps, addrs, strict=True):
            if a is not b:
                await a.connect(b.node_id, addr)
    yield apps
    for app in apps:
        await app.close()
    for db, writer in stores:
        writer.close()
        db.close()


async def test_rounds_over_real_connections(apps):
    ids = [a.node_id for a in apps]
    proposers = [Proposer(StaticPlacement(a.node_id, [ids]), a, RegisterMachine()) for a in apps]
    assert await proposers[0].run(KEY, [b"x"], increment()) == 1
    assert await proposers[1].run(KEY, [b"x"], increment()) == 2  # a call to itself runs in-process
    assert await proposers[2].run(KEY, [b"x"], read()) == (2, 2)


async def test_a_malformed_message_is_a_typed_protocol_error_for_the_sender(apps):
    with pytest.raises(BadRequest) as info:
        await apps[0].call(apps[1].node_id, PREPARE, [KEY, "not a ballot", []])
    assert info.value.code == "InvalidRequest" and "malformed consensus Prepare" in info.value.message
