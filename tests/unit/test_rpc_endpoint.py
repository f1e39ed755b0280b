"""Endpoint registry, self calls, and one-connection-per-peer over loopback TCP."""

from __future__ import annotations

import asyncio

import pytest

from garagekv.net.conn import Connection
from garagekv.net.errors import RpcTimeout
from garagekv.net.identity import NodeKey
from garagekv.rpc.endpoint import EndpointRegistry, NetApp, endpoint_path
from garagekv.util.errors import BadRequest, InternalError, ServiceUnavailable
from tests.support import eventually

SECRET = b"s" * 32
WHO = endpoint_path("test/endpoint", "Who")
SLEEP = endpoint_path("test/endpoint", "Sleep")
FAIL = endpoint_path("test/endpoint", "Fail")


def make_registry(seen: list | None = None) -> EndpointRegistry:
    registry = EndpointRegistry()

    async def who(frm: bytes, body):
        if seen is not None:
            seen.append(body)
        return [frm, body]

    async def sleep(_frm: bytes, delay: float):
        await asyncio.sleep(delay)
        return delay

    async def fail(_frm: bytes, kind: str):
        if kind == "bad":
            raise BadRequest("nope")
        raise KeyError(kind)

    registry.register(WHO, who)
    registry.register(SLEEP, sleep)
    registry.register(FAIL, fail)
    return registry


def test_registry_paths():
    registry = make_registry()
    assert WHO == "garagekv/test/endpoint/Who"
    assert endpoint_path("table/table", "Rpc", "k2v_item") == "garagekv/table/table/Rpc:k2v_item"
    assert WHO in registry and registry.paths() == sorted([WHO, SLEEP, FAIL])
    with pytest.raises(ValueError, match="already registered"):
        registry.register(WHO, registry.dispatch)
    with pytest.raises(ValueError):
        registry.register("", registry.dispatch)
    registry.unregister(WHO)
    assert WHO not in registry


async def test_unknown_endpoint_is_internal_error():
    with pytest.raises(InternalError, match="no handler"):
        await make_registry().dispatch(b"x" * 32, "garagekv/nope", None)


async def test_call_to_self_is_in_process():
    seen: list = []
    app = NetApp(NodeKey.generate(), SECRET, make_registry(seen).dispatch)
    body = (1, {"a": b"b"})
    result = await app.call(app.node_id, WHO, body)
    assert result[0] == app.node_id and result[1] is body and seen[0] is body  # no copy, tuple kept
    with pytest.raises(BadRequest, match="nope"):
        await app.call(app.node_id, FAIL, "bad")
    with pytest.raises(InternalError, match="KeyError"):
        await app.call(app.node_id, FAIL, "other")
    with pytest.raises(RpcTimeout):
        await app.call(app.node_id, SLEEP, 1.0, timeout=0.05)
    assert await app.call(app.node_id, SLEEP, 0.0, timeout=None) == 0.0
    await app.close()


async def test_not_connected_is_service_unavailable():
    app = NetApp(NodeKey.generate(), SECRET, make_registry().dispatch)
    other = NodeKey.generate().node_id
    with pytest.raises(ServiceUnavailable, match=f"Not connected: {other[:8].hex()}"):
        await app.call(other, WHO, None)
    with pytest.raises(ValueError):
        await app.connect(app.node_id, ("127.0.0.1", 1))
    with pytest.raises(ValueError, match="32 bytes"):
        NetApp(NodeKey.generate(), b"short")


@pytest.fixture
async def nodes():
    apps = [NetApp(NodeKey.generate(), SECRET, make_registry().dispatch, retire_linger=0.05) for _ in range(2)]
    addrs = [await app.listen("127.0.0.1", 0) for app in apps]
    yield apps, addrs
    for app in apps:
        await app.close()


async def test_connect_reuses_existing_connection(nodes):
    (a, b), (addr_a, addr_b) = nodes
    conns = await asyncio.gather(*(a.connect(b.node_id, addr_b) for _ in range(5)))
    assert all(c is conns[0] for c in conns)
    await eventually(lambda: b.connection(a.node_id) is not None)
    # b already has a connection from a: it does not dial a second one.
    assert await b.connect(a.node_id, addr_a) is b.connection(a.node_id)
    assert len(a._all) == 1 and len(b._all) == 1


async def test_simultaneous_dial_keeps_one_connection(nodes, monkeypatch):
    (a, b), (addr_a, addr_b) = nodes
    retired: list[Connection] = []
    original = Connection.retire

    def spy(self: Connection, linger: float) -> None:
        retired.append(self)
        original(self, linger)

    monkeypatch.setattr(Connection, "retire", spy)
    # Dial both ways at once, bypassing connect()'s "already connected" shortcut.
    await asyncio.gather(a._dial(b.node_id, addr_b), b._dial(a.node_id, addr_a))
    await eventually(lambda: len(retired) == 2)
    # Both sides retired the same TCP connection: the one the larger node id dialed.
    assert {c.dialer_id for c in retired} == {max(a.node_id, b.node_id)}
    await eventually(lambda: len(a._all) == 1 and len(b._all) == 1)
    ca, cb = a.connection(b.node_id), b.connection(a.node_id)
    assert ca is not None and cb is not None
    assert ca.dialer_id == cb.dialer_id == min(a.node_id, b.node_id)
    assert (await a.call(b.node_id, WHO, 1, timeout=2)) == [a.node_id, 1]
    assert (await b.call(a.node_id, WHO, 2, timeout=2)) == [b.node_id, 2]


async def test_peer_restart_reconnects_and_hooks_fire(nodes):
    (a, b), (_, addr_b) = nodes
    ups: list[bytes] = []
    downs: list[bytes] = []
    a.on_connect.append(lambda c: ups.append(c.peer_id))
    a.on_disconnect.append(lambda c: downs.append(c.peer_id))
    await a.connect(b.node_id, addr_b)
    await b.close()
    await eventually(lambda: downs == [b.node_id])
    b2 = NetApp(b.key, SECRET, make_registry().dispatch)  # same identity, new process
    try:
        new_addr = await b2.listen("127.0.0.1", 0)
        await a.connect(b2.node_id, new_addr)
        assert (await a.call(b.node_id, WHO, 3, timeout=2)) == [a.node_id, 3]
        assert ups == [b.node_id, b.node_id]
    finally:
        await b2.close()


async def test_client_only_dialer(nodes):
    (a, _), (addr_a, _) = nodes
    cli = NetApp.client_only(SECRET)
    try:
        await cli.connect(a.node_id, addr_a)
        assert (await cli.call(a.node_id, WHO, "hi", timeout=2)) == [cli.node_id, "hi"]
        await eventually(lambda: a.connection(cli.node_id) is not None)
        with pytest.raises(InternalError, match="serves no endpoints"):
            await a.call(cli.node_id, WHO, None, timeout=2)
    finally:
        await cli.close()


async def test_close_fails_pending_calls(nodes):
    (a, b), (_, addr_b) = nodes
    await a.connect(b.node_id, addr_b)
    pending = asyncio.create_task(a.call(b.node_id, SLEEP, 30, timeout=None))
    await asyncio.sleep(0.05)
    await a.close()
    with pytest.raises(ServiceUnavailable, match="shutting down"):
        await pending
