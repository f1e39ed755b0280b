"""Multiplexed connections over real loopback TCP: calls, errors, timeouts, cancellation, attacks."""

from __future__ import annotations

import asyncio
import random
import struct
from collections.abc import Callable

import pytest

from garagekv.net.errors import NetError, RpcTimeout
from garagekv.net.handshake import MSG1_LEN, MSG3_LEN
from garagekv.net.identity import NodeKey
from garagekv.net.netapp import NetApp
from garagekv.rpc.endpoint import EndpointRegistry
from garagekv.util.errors import (
    BadRequest,
    EntityTooLarge,
    GarageKVError,
    InternalError,
    NoSuchKey,
    ServiceUnavailable,
)
from tests.support import eventually

SECRET = b"k" * 32
ECHO, SLOW, BLOCK, FAIL, COUNT = (f"garagekv/test/{n}" for n in ("Echo", "Slow", "Block", "Fail", "Count"))


class WeirdError(GarageKVError):
    code = "SomethingThisVersionDoesNotKnow"


class Handlers:
    """Test endpoints; records what the server side saw."""

    def __init__(self) -> None:
        self.registry = EndpointRegistry()
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.calls = 0
        for path, fn in ((ECHO, self.echo), (SLOW, self.slow), (BLOCK, self.block), (FAIL, self.fail)):
            self.registry.register(path, fn)
        self.registry.register(COUNT, self.count)

    async def echo(self, frm: bytes, body):
        return {"from": frm, "body": body}

    async def slow(self, _frm: bytes, delay: float):
        await asyncio.sleep(delay)
        return delay

    async def block(self, _frm: bytes, _body):
        self.started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def fail(self, _frm: bytes, kind: str):
        if kind == "bad":
            raise BadRequest("bad thing")
        if kind == "nokey":
            raise NoSuchKey()
        if kind == "weird":
            raise WeirdError("from the future")
        if kind == "unserializable":
            return object()
        raise ValueError("boom")

    async def count(self, _frm: bytes, _body):
        self.calls += 1
        return self.calls


@pytest.fixture
async def pair():
    """A server node with test endpoints, and a client node connected to it."""
    handlers = Handlers()
    server = NetApp(NodeKey.generate(), SECRET, handlers.registry.dispatch, max_record=1 << 20)
    addr = await server.listen("127.0.0.1", 0)
    client = NetApp(NodeKey.generate(), SECRET, Handlers().registry.dispatch, max_record=1 << 20)
    conn = await client.connect(server.node_id, addr)
    yield server, client, conn, handlers, addr
    await client.close()
    await server.close()


async def fresh_client_works(server: NetApp, addr) -> None:
    other = NetApp.client_only(SECRET)
    try:
        await other.connect(server.node_id, addr)
        reply = await other.call(server.node_id, ECHO, "still here", timeout=2)
        assert reply["body"] == "still here"
    finally:
        await other.close()


async def test_many_concurrent_calls_both_directions(pair):
    server, client, _, _, _ = pair

    async def one(i: int):
        if i % 3 == 0:
            return await client.call(server.node_id, SLOW, random.random() / 20, timeout=5)
        reply = await client.call(server.node_id, ECHO, [i, b"\x00" * i], timeout=5)
        assert reply == {"from": client.node_id, "body": [i, b"\x00" * i]}
        return i

    results = await asyncio.gather(*(one(i) for i in range(300)))
    assert [r for i, r in enumerate(results) if i % 3] == [i for i in range(300) if i % 3]
    # The server can call the client back on the same connection.
    await eventually(lambda: server.connection(client.node_id) is not None)
    reply = await server.call(client.node_id, ECHO, "back", timeout=2)
    assert reply == {"from": server.node_id, "body": "back"}
    assert len(server.connected_peers()) == 1 and len(client.connected_peers()) == 1


async def test_slow_call_does_not_block_fast_ones(pair):
    server, client, _, _, _ = pair
    slow = asyncio.create_task(client.call(server.node_id, SLOW, 0.5, timeout=5))
    async with asyncio.timeout(0.3):
        await client.call(server.node_id, ECHO, 1)
    assert await slow == 0.5


async def test_typed_remote_errors(pair):
    server, client, conn, _, _ = pair
    with pytest.raises(BadRequest, match="bad thing") as bad:
        await client.call(server.node_id, FAIL, "bad", timeout=2)
    assert type(bad.value) is BadRequest and bad.value.full_message == "Bad request: bad thing"
    with pytest.raises(NoSuchKey):
        await client.call(server.node_id, FAIL, "nokey", timeout=2)
    with pytest.raises(InternalError, match="from the future"):
        await client.call(server.node_id, FAIL, "weird", timeout=2)
    with pytest.raises(InternalError, match="ValueError: boom"):
        await client.call(server.node_id, FAIL, "crash", timeout=2)
    with pytest.raises(InternalError, match="cannot encode"):
        await client.call(server.node_id, FAIL, "unserializable", timeout=2)
    with pytest.raises(InternalError, match="no handler"):
        await client.call(server.node_id, "garagekv/test/Nope", None, timeout=2)
    assert not conn.closed  # errors never cost the connection


async def test_per_request_timeout_cancels_remote_handler(pair):
    server, client, _, handlers, _ = pair
    with pytest.raises(RpcTimeout, match="Timeout") as err:
        await client.call(server.node_id, BLOCK, None, timeout=0.2)
    assert isinstance(err.value, ServiceUnavailable)
    await asyncio.wait_for(handlers.cancelled.wait(), 2)


async def test_cancellation_propagates_to_remote_handler(pair):
    server, client, conn, handlers, _ = pair
    task = asyncio.create_task(client.call(server.node_id, BLOCK, None, timeout=None))
    await asyncio.wait_for(handlers.started.wait(), 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(handlers.cancelled.wait(), 2)
    await eventually(lambda: server.connection(client.node_id).in_flight == 0)
    assert conn.in_flight == 0 and not conn.closed


async def test_connection_loss_fails_pending_calls(pair):
    server, client, conn, handlers, addr = pair
    pending = [asyncio.create_task(client.call(server.node_id, BLOCK, i, timeout=None)) for i in range(5)]
    await asyncio.wait_for(handlers.started.wait(), 2)
    server.connection(client.node_id).close("test")  # the server drops the peer
    for task in pending:
        with pytest.raises(NetError, match="lost"):
            await asyncio.wait_for(task, 2)
    await eventually(lambda: conn.closed)
    with pytest.raises(ServiceUnavailable, match="Not connected"):
        await client.call(server.node_id, ECHO, 1, timeout=1)
    # Reconnecting gives a new working connection.
    await client.connect(server.node_id, addr)
    assert (await client.call(server.node_id, ECHO, 1, timeout=2))["body"] == 1


async def test_request_too_large_fails_locally(pair):
    server, client, conn, _, _ = pair
    with pytest.raises(EntityTooLarge):
        await client.call(server.node_id, ECHO, b"x" * (2 << 20), timeout=2)
    assert not conn.closed


async def test_unencodable_request_fails_locally(pair):
    server, client, conn, _, _ = pair
    with pytest.raises(InternalError, match="cannot encode"):
        await client.call(server.node_id, ECHO, object(), timeout=2)
    assert not conn.closed


async def test_oversize_frame_closes_connection(pair):
    server, _, _, _, addr = pair
    big = NetApp(NodeKey.generate(), SECRET, None, max_record=4 << 20)
    try:
        await big.connect(server.node_id, addr)
        with pytest.raises(NetError, match="lost"):
            await big.call(server.node_id, ECHO, b"x" * (2 << 20), timeout=5)
    finally:
        await big.close()
    await fresh_client_works(server, addr)


async def test_protocol_violation_closes_only_that_connection(pair):
    server, client, conn, _, addr = pair
    other = NetApp.client_only(SECRET)
    other_conn = await other.connect(server.node_id, addr)
    other_conn._channel.send_nowait(b"\xc1 not msgpack")
    await eventually(lambda: other_conn.closed)
    assert not conn.closed
    assert (await client.call(server.node_id, ECHO, 1, timeout=2))["body"] == 1
    await other.close()


async def test_in_flight_limit_answers_busy():
    handlers = Handlers()
    server = NetApp(NodeKey.generate(), SECRET, handlers.registry.dispatch, max_in_flight=2)
    addr = await server.listen("127.0.0.1", 0)
    client = NetApp.client_only(SECRET)
    try:
        await client.connect(server.node_id, addr)
        blocked = [asyncio.create_task(client.call(server.node_id, BLOCK, None)) for _ in range(2)]
        await asyncio.wait_for(handlers.started.wait(), 2)
        with pytest.raises(ServiceUnavailable, match="too many"):
            await client.call(server.node_id, ECHO, 1, timeout=2)
        for task in blocked:
            task.cancel()
        await asyncio.gather(*blocked, return_exceptions=True)
    finally:
        await client.close()
        await server.close()


async def test_a_peer_that_stops_reading_cannot_make_the_node_buffer_its_answers(pair):
    """Requests cancelled while their answers wait for the socket leave nothing queued, so a peer
    that sends and cancels without reading gets at most about one answer buffered; one that goes
    on past the in-flight limit is disconnected rather than sent refusals it never reads."""
    from garagekv.net.frame import encode_cancel, encode_request

    server, _, _, _, addr = pair
    other = NetApp.client_only(SECRET)
    conn = await other.connect(server.node_id, addr)
    conn._channel._writer.transport.pause_reading()  # this peer reads nothing from now on
    peer = server.connection(other.node_id)
    assert peer is not None
    answer = b"a" * 100_000
    most = 0
    for round_ in range(20):
        ids = range(1000 + round_ * 20, 1000 + round_ * 20 + 20)
        for i in ids:
            conn._channel.send_nowait(encode_request(i, ECHO, answer))
        await asyncio.sleep(0.05)
        for i in ids:
            conn._channel.send_nowait(encode_cancel(i))
        await asyncio.sleep(0.02)
        most = max(most, peer._channel._writer.transport.get_write_buffer_size())
    # 400 answers of 100 kB were asked for (40 MB): one or two of them wait in the buffer.
    assert most < 3 * len(answer), most
    await other.close()
    await fresh_client_works(server, addr)


async def test_a_peer_flooding_past_the_in_flight_limit_without_reading_is_disconnected():
    from garagekv.net.frame import encode_request

    handlers = Handlers()
    server = NetApp(NodeKey.generate(), SECRET, handlers.registry.dispatch, max_in_flight=4, max_record=1 << 16)
    addr = await server.listen("127.0.0.1", 0)
    other = NetApp.client_only(SECRET)
    try:
        conn = await other.connect(server.node_id, addr)
        conn._channel._writer.transport.pause_reading()
        for i in range(1, 200_000):
            if server.connection(other.node_id) is None:
                break
            conn._channel.send_nowait(encode_request(i, BLOCK if i <= 4 else ECHO, None))
            if i % 1000 == 0:
                await asyncio.sleep(0.01)
        assert server.connection(other.node_id) is None  # refused with a disconnection
        await fresh_client_works(server, addr)
    finally:
        await other.close()
        await server.close()


# ---- a man in the middle on loopback ------------------------------------------------------------

Mutator = Callable[[int, bytes], list[bytes]]


class Proxy:
    """Forwards one TCP connection, letting a test rewrite client->server records after the handshake."""

    def __init__(self, target: tuple[str, int], mutate: Mutator) -> None:
        self.target, self.mutate = target, mutate
        self.tasks: list[asyncio.Task[None]] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[:2]

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        s_reader, s_writer = await asyncio.open_connection(*self.target)
        self.writers += [c_writer, s_writer]
        self.tasks += [
            asyncio.create_task(self._c2s(c_reader, s_writer)),
            asyncio.create_task(self._copy(s_reader, c_writer)),
        ]

    async def _c2s(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for size in (MSG1_LEN, MSG3_LEN):
                writer.write(await reader.readexactly(size))
            index = 0
            while True:
                header = await reader.readexactly(4)
                record = header + await reader.readexactly(struct.unpack(">I", header)[0])
                for out in self.mutate(index, record):
                    writer.write(out)
                index += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def _copy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
        except ConnectionError:
            pass
        writer.close()

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for writer in self.writers:
            writer.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def tamper(index: int, record: bytes) -> list[bytes]:
    if index == 0:
        return [record[:10] + bytes([record[10] ^ 0x80]) + record[11:]]
    return [record]


def replay(index: int, record: bytes) -> list[bytes]:
    return [record, record] if index == 0 else [record]


def reorder_state() -> Mutator:
    held: list[bytes] = []

    def reorder(index: int, record: bytes) -> list[bytes]:
        if index == 0:
            held.append(record)
            return []
        return [record, *held] if index == 1 else [record]

    return reorder


def truncate_length(index: int, record: bytes) -> list[bytes]:
    if index == 0:  # shrink the declared length: the body no longer authenticates
        (length,) = struct.unpack(">I", record[:4])
        return [struct.pack(">I", length - 1) + record[4:-1]]
    return [record]


@pytest.mark.parametrize(
    "mutator",
    [tamper, replay, reorder_state(), truncate_length],
    ids=["tamper", "replay", "reorder", "length"],
)
async def test_man_in_the_middle_gets_the_connection_closed(pair, mutator):
    server, _, _, handlers, addr = pair
    proxy = Proxy(addr, mutator)
    proxy_addr = await proxy.start()
    victim = NetApp.client_only(SECRET)
    try:
        conn = await victim.connect(server.node_id, proxy_addr)
        calls = [asyncio.create_task(victim.call(server.node_id, COUNT, None, timeout=3)) for _ in range(2)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        await eventually(lambda: conn.closed)
        assert any(isinstance(r, NetError) for r in results)
        # A replayed or reordered request was never executed twice.
        assert handlers.calls <= 1
    finally:
        await victim.close()
        await proxy.close()
    await fresh_client_works(server, addr)


async def test_retired_connection_finishes_in_flight_calls_then_closes(pair):
    server, client, conn, _, _ = pair
    slow = asyncio.create_task(client.call(server.node_id, SLOW, 0.2, timeout=2))
    await asyncio.sleep(0.05)
    conn.retire(0.05)
    assert await slow == 0.2
    await eventually(lambda: conn.closed)
    assert conn.close_reason == "retired duplicate connection"
