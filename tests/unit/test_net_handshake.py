"""The handshake: message-level state machine, then over real loopback TCP."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from garagekv.net import handshake
from garagekv.net.errors import HandshakeFailed
from garagekv.net.handshake import (
    MSG1_LEN,
    MSG2_LEN,
    MSG3_LEN,
    MSG4_LEN,
    PROTOCOL_MAGIC,
    ClientHandshake,
    ServerHandshake,
)
from garagekv.net.identity import NodeKey
from garagekv.net.netapp import NetApp
from garagekv.util.errors import ServiceUnavailable
from tests.support import eventually

SECRET = bytes(range(32))
OTHER_SECRET = bytes(32)
ECHO = "garagekv/test/Echo"


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def run(client: ClientHandshake, server: ServerHandshake):
    msg1 = client.hello()
    msg2 = server.on_hello(msg1)
    msg3 = client.on_accept(msg2)
    msg4, server_keys = server.on_auth(msg3)
    return client.on_confirm(msg4), server_keys, (msg1, msg2, msg3, msg4)


# ---- state machine ------------------------------------------------------------------------------


def test_success_gives_matching_keys_and_ids():
    ckey, skey = NodeKey.generate(), NodeKey.generate()
    ck, sk, msgs = run(ClientHandshake(SECRET, ckey, skey.node_id), ServerHandshake(SECRET, skey))
    assert [len(m) for m in msgs] == [MSG1_LEN, MSG2_LEN, MSG3_LEN, MSG4_LEN] == [72, 64, 112, 80]
    assert ck.send_key == sk.recv_key and ck.recv_key == sk.send_key and ck.send_key != ck.recv_key
    assert ck.peer_id == skey.node_id and sk.peer_id == ckey.node_id
    assert msgs[0].startswith(PROTOCOL_MAGIC)
    # Neither static id travels in clear; the server's never travels at all.
    assert all(skey.node_id not in m and ckey.node_id not in m for m in msgs)
    # Fresh ephemeral keys: a second session has different keys.
    ck2, _, _ = run(ClientHandshake(SECRET, ckey, skey.node_id), ServerHandshake(SECRET, skey))
    assert ck2.send_key != ck.send_key


def test_wrong_secret_is_rejected_before_the_server_says_anything():
    skey = NodeKey.generate()
    client = ClientHandshake(OTHER_SECRET, NodeKey.generate(), skey.node_id)
    with pytest.raises(HandshakeFailed, match="rpc_secret"):
        ServerHandshake(SECRET, skey).on_hello(client.hello())


def test_server_without_secret_is_detected_by_client():
    skey = NodeKey.generate()
    client = ClientHandshake(SECRET, NodeKey.generate(), skey.node_id)
    client.hello()
    with pytest.raises(HandshakeFailed, match="rpc_secret"):
        client.on_accept(os.urandom(MSG2_LEN))


def test_version_mismatch_is_rejected():
    skey = NodeKey.generate()
    msg1 = ClientHandshake(SECRET, NodeKey.generate(), skey.node_id).hello()
    other_version = b"GKVNET\x00\x01" + msg1[len(PROTOCOL_MAGIC) :]
    with pytest.raises(HandshakeFailed, match="version"):
        ServerHandshake(SECRET, skey).on_hello(other_version)


def test_wrong_expected_server_id_is_rejected_by_the_server():
    skey = NodeKey.generate()
    client = ClientHandshake(SECRET, NodeKey.generate(), NodeKey.generate().node_id)
    server = ServerHandshake(SECRET, skey)
    msg3 = client.on_accept(server.on_hello(client.hello()))
    with pytest.raises(HandshakeFailed):
        server.on_auth(msg3)


def test_impostor_server_with_the_secret_is_detected_by_the_client(monkeypatch):
    real, impostor = NodeKey.generate(), NodeKey.generate()
    client = ClientHandshake(SECRET, NodeKey.generate(), real.node_id)
    server = ServerHandshake(SECRET, impostor)
    msg3 = client.on_accept(server.on_hello(client.hello()))
    # The impostor knows the secret and skips its check of the client's proof (which names ``real``).
    with monkeypatch.context() as m:
        m.setattr(handshake, "verify_signature", lambda *_: True)
        msg4, _ = server.on_auth(msg3)
    with pytest.raises(HandshakeFailed, match="is not node"):
        client.on_confirm(msg4)


def test_client_claiming_someone_elses_id_is_rejected():
    skey, victim, attacker = NodeKey.generate(), NodeKey.generate(), NodeKey.generate()
    forged = NodeKey(private=attacker.private, node_id=victim.node_id)
    client = ClientHandshake(SECRET, forged, skey.node_id)
    server = ServerHandshake(SECRET, skey)
    msg3 = client.on_accept(server.on_hello(client.hello()))
    with pytest.raises(HandshakeFailed, match="identity"):
        server.on_auth(msg3)


def test_client_using_the_servers_own_id_is_rejected():
    skey = NodeKey.generate()
    client = ClientHandshake(SECRET, skey, skey.node_id)
    server = ServerHandshake(SECRET, skey)
    with pytest.raises(HandshakeFailed):
        server.on_auth(client.on_accept(server.on_hello(client.hello())))


@pytest.mark.parametrize("which", [1, 2, 3, 4])
def test_any_tampered_message_is_rejected(which):
    skey = NodeKey.generate()
    client = ClientHandshake(SECRET, NodeKey.generate(), skey.node_id)
    server = ServerHandshake(SECRET, skey)
    with pytest.raises(HandshakeFailed):
        msg1 = client.hello()
        msg2 = server.on_hello(flip(msg1, 20) if which == 1 else msg1)
        msg3 = client.on_accept(flip(msg2, 5) if which == 2 else msg2)
        msg4, _ = server.on_auth(flip(msg3, 40) if which == 3 else msg3)
        client.on_confirm(flip(msg4, 70) if which == 4 else msg4)


def test_replayed_messages_are_rejected():
    ckey, skey = NodeKey.generate(), NodeKey.generate()
    _, _, (msg1, _, msg3, msg4) = run(ClientHandshake(SECRET, ckey, skey.node_id), ServerHandshake(SECRET, skey))
    # Replaying a recorded client session to a fresh server: message 1 passes (it is only a MAC),
    # but the recorded message 3 is bound to the old ephemeral keys.
    server = ServerHandshake(SECRET, skey)
    server.on_hello(msg1)
    with pytest.raises(HandshakeFailed):
        server.on_auth(msg3)
    # Replaying a recorded server answer to a fresh client fails at message 2 already.
    client = ClientHandshake(SECRET, ckey, skey.node_id)
    client.hello()
    with pytest.raises(HandshakeFailed):
        client.on_accept(os.urandom(32) + msg4[:32])


def test_truncated_messages_are_rejected():
    skey = NodeKey.generate()
    client = ClientHandshake(SECRET, NodeKey.generate(), skey.node_id)
    with pytest.raises(HandshakeFailed, match="truncated"):
        ServerHandshake(SECRET, skey).on_hello(client.hello()[:-1])


# ---- over TCP -----------------------------------------------------------------------------------


async def echo(_frm: bytes, path: str, body):
    return body


@pytest.fixture
async def server():
    app = NetApp(NodeKey.generate(), SECRET, echo, handshake_timeout=0.3, max_pending_handshakes=4)
    addr = await app.listen("127.0.0.1", 0)
    yield app, addr
    await app.close()


async def good_client_works(app: NetApp, addr) -> None:
    client = NetApp.client_only(SECRET)
    try:
        await client.connect(app.node_id, addr)
        assert await client.call(app.node_id, ECHO, "hello", timeout=2) == "hello"
    finally:
        await client.close()


async def read_until_closed(reader: asyncio.StreamReader, limit: float = 2.0) -> bytes:
    async with asyncio.timeout(limit):
        return await reader.read()


async def test_tcp_success(server):
    app, addr = server
    await good_client_works(app, addr)


async def test_tcp_wrong_secret_disconnected_then_good_client_served(server):
    app, addr = server
    bad = NetApp.client_only(OTHER_SECRET)
    with pytest.raises(HandshakeFailed, match="rpc_secret"):
        await bad.connect(app.node_id, addr)
    # The server said nothing at all to a peer without the secret.
    reader, writer = await asyncio.open_connection(*addr)
    writer.write(ClientHandshake(OTHER_SECRET, NodeKey.generate(), app.node_id).hello())
    assert await read_until_closed(reader) == b""
    writer.close()
    await good_client_works(app, addr)
    async with asyncio.timeout(2):
        while app.connected_peers():  # the server notices the client's goodbye (EOF)
            await asyncio.sleep(0.01)


async def test_tcp_wrong_node_id_fails(server):
    app, addr = server
    client = NetApp.client_only(SECRET)
    with pytest.raises(HandshakeFailed):
        await client.connect(NodeKey.generate().node_id, addr)
    await good_client_works(app, addr)


@pytest.mark.parametrize(
    "payload",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"x" * 100,
        os.urandom(MSG1_LEN),
        b"",  # a client that never speaks: the handshake deadline frees the slot
    ],
    ids=["http", "random", "silent"],
)
async def test_tcp_garbage_and_silence_are_closed(server, payload):
    app, addr = server
    reader, writer = await asyncio.open_connection(*addr)
    writer.write(payload)
    start = time.monotonic()
    assert await read_until_closed(reader) == b""
    assert time.monotonic() - start < 1.5
    writer.close()
    await good_client_works(app, addr)


async def test_tcp_truncated_handshake_is_closed(server):
    app, addr = server
    client = ClientHandshake(SECRET, NodeKey.generate(), app.node_id)
    reader, writer = await asyncio.open_connection(*addr)
    writer.write(client.hello())
    msg3 = client.on_accept(await reader.readexactly(MSG2_LEN))
    writer.write(msg3[:50])  # then stop talking
    assert await read_until_closed(reader) == b""
    writer.close()
    await good_client_works(app, addr)


async def test_tcp_silent_clients_cannot_exhaust_the_server(server):
    app, addr = server
    silent = [await asyncio.open_connection(*addr) for _ in range(6)]
    for reader, _ in silent:
        assert await read_until_closed(reader) == b""  # refused or timed out, never kept
    for _, writer in silent:
        writer.close()
    await good_client_works(app, addr)


async def test_client_handshake_times_out_on_a_silent_server():
    writers: list[asyncio.StreamWriter] = []

    async def silent(_reader, writer):
        writers.append(writer)  # accept, then say nothing

    srv = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    client = NetApp.client_only(SECRET, handshake_timeout=0.2)
    try:
        with pytest.raises(HandshakeFailed, match="timed out"):
            await client.connect(NodeKey.generate().node_id, ("127.0.0.1", port))
    finally:
        for writer in writers:
            writer.close()
        srv.close()
        await srv.wait_closed()


async def test_connect_refused_is_a_net_error():
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    client = NetApp.client_only(SECRET)
    with pytest.raises(ServiceUnavailable, match="could not connect"):
        await client.connect(NodeKey.generate().node_id, ("127.0.0.1", port))


# ---- caps on connections in the handshake -----------------------------------------------------------


async def open_from(source: str, addr) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection from another loopback address (Linux routes all of 127/8 to lo)."""
    return await asyncio.open_connection(*addr, local_addr=(source, 0))


async def is_closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True if the server closed the connection; False if it is still waiting for the handshake."""
    try:
        async with asyncio.timeout(0.2):
            return await reader.read() == b""
    except TimeoutError:
        return False


@pytest.fixture
async def capped():
    """A server whose silent clients are never timed out during the test: only the caps act."""
    app = NetApp(
        NodeKey.generate(),
        SECRET,
        echo,
        handshake_timeout=60,
        max_pending_handshakes=6,
        max_pending_handshakes_per_source=3,
    )
    addr = await app.listen("127.0.0.1", 0)
    opened: list[asyncio.StreamWriter] = []
    yield app, addr, opened
    for w in opened:
        w.close()
    await app.close()


async def test_one_source_cannot_take_more_than_its_share_of_handshakes(capped):
    app, addr, opened = capped
    flood = []
    for _ in range(5):
        reader, writer = await open_from("127.0.0.2", addr)
        opened.append(writer)
        flood.append(reader)
    await eventually(lambda: app.refused_handshakes == 2)
    assert app.pending_handshakes("127.0.0.2") == 3 and app.pending_handshakes() == 3
    closed = [await is_closed_by_server(r) for r in flood]
    assert closed.count(True) == 2 and closed.count(False) == 3
    # Another source is still served while 127.0.0.2 sits at its cap.
    await good_client_works(app, addr)
    reader, writer = await open_from("127.0.0.3", addr)
    opened.append(writer)
    await eventually(lambda: app.pending_handshakes("127.0.0.3") == 1)
    assert not await is_closed_by_server(reader)


async def test_handshakes_in_progress_are_capped_in_total(capped):
    app, addr, opened = capped
    readers = []
    for i in range(4):  # 2 from each of 4 sources: 8 > the total cap of 6
        for _ in range(2):
            reader, writer = await open_from(f"127.0.1.{i + 1}", addr)
            opened.append(writer)
            readers.append(reader)
    await eventually(lambda: app.refused_handshakes == 2)
    assert app.pending_handshakes() == 6
    assert [await is_closed_by_server(r) for r in readers].count(True) == 2
    for w in opened:  # the flood goes away: its slots are freed and peers connect again
        w.close()
    await eventually(lambda: app.pending_handshakes() == 0)
    await good_client_works(app, addr)


async def test_an_idle_unauthenticated_connection_is_closed_at_the_handshake_deadline():
    app = NetApp(NodeKey.generate(), SECRET, echo, handshake_timeout=0.5, max_pending_handshakes_per_source=1)
    addr = await app.listen("127.0.0.1", 0)
    try:
        reader, writer = await open_from("127.0.0.2", addr)
        await eventually(lambda: app.pending_handshakes("127.0.0.2") == 1)
        assert await read_until_closed(reader, limit=10) == b""  # closed by the deadline, not by us
        writer.close()
        assert app.pending_handshakes() == 0 and app.refused_handshakes == 0
        # The slot is free again: the same source may try once more.
        reader, writer = await open_from("127.0.0.2", addr)
        await eventually(lambda: app.pending_handshakes("127.0.0.2") == 1)
        writer.close()
    finally:
        await app.close()
