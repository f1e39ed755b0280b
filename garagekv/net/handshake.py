"""The mutual-authentication handshake that turns a TCP socket into two session keys.

Four fixed-size messages (see ``docs/protocol.md``)::

    1 C->S  MAGIC(8) | a_eph(32) | HMAC(K, "hello" | MAGIC | a_eph)(32)                  72 bytes
    2 S->C  b_eph(32) | HMAC(K, "accept" | msg1 | b_eph)(32)                              64 bytes
    3 C->S  AEAD(k_c, nonce 0, aad=th2, A_id(32) | sig_A(64))                             112 bytes
            sig_A = Sign_A("client" | th2 | B_id | A_id)
    4 S->C  AEAD(k_s, nonce 0, aad=th3, sig_B(64))                                         80 bytes
            sig_B = Sign_B("server" | th3 | A_id | B_id)

``K`` is ``rpc_secret``; ``th2 = H(msg1|msg2)``, ``th3 = H(th2|msg3)``, ``th4 = H(th3|msg4)``;
``k_c, k_s = HKDF(dh(a_eph, b_eph), salt=K, info="handshake"|th2)`` and the session keys are
``HKDF(dh, salt=K, info="session"|th4|A_id|B_id)``, one per direction.

Why this shape: the server answers nothing but a random ephemeral key until the client has shown
it knows ``K`` (message 1), and never sends its own id at all: the client proves it already knows
it by signing it (message 3), so a wrong-id client is dropped before the server signs anything.
Both signatures cover both ephemeral keys and both ids, so a transcript cannot be replayed or
spliced; the session keys come from ephemeral X25519 only, so stealing a node key later does not
decrypt recorded traffic.

The state machines below do no I/O so they can be unit-tested message by message; the two
``*_handshake`` coroutines drive them over asyncio streams with a deadline.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from garagekv.net.errors import HandshakeFailed
from garagekv.net.identity import NODE_ID_LEN, SIGNATURE_LEN, NodeKey, short_id, verify_signature

#: Protocol name and version: bumped on any incompatible change to the handshake, the framing or
#: the RPC messages nodes exchange (2: request ids in frames, batched table reads and updates;
#: 3: PollRange answers carry the issued clock; 4: K2V's ``poll_ranges``, docs/protocol.md).
PROTOCOL_MAGIC = b"GKVNET\x00\x05"
HANDSHAKE_TIMEOUT = 10.0
SECRET_LEN = 32

_LABEL = b"garagekv/net/1 "
_EPH_LEN = 32
_MAC_LEN = 32
_TAG_LEN = 16
_ZERO_NONCE = bytes(12)

MSG1_LEN = len(PROTOCOL_MAGIC) + _EPH_LEN + _MAC_LEN
MSG2_LEN = _EPH_LEN + _MAC_LEN
MSG3_LEN = NODE_ID_LEN + SIGNATURE_LEN + _TAG_LEN
MSG4_LEN = SIGNATURE_LEN + _TAG_LEN


@dataclass(frozen=True)
class SessionKeys:
    """What a completed handshake yields: one AEAD key per direction and the proven peer id."""

    send_key: bytes
    recv_key: bytes
    peer_id: bytes


def _mac(secret: bytes, label: bytes, *parts: bytes) -> bytes:
    return hmac.new(secret, _LABEL + label + b"".join(parts), hashlib.sha256).digest()


def _hash(*parts: bytes) -> bytes:
    return hashlib.sha256(b"".join(parts)).digest()


def _hkdf(secret: bytes, shared: bytes, info: bytes) -> tuple[bytes, bytes]:
    out = HKDF(algorithm=hashes.SHA256(), length=64, salt=secret, info=_LABEL + info).derive(shared)
    return out[:32], out[32:]


def _eph_keypair() -> tuple[X25519PrivateKey, bytes]:
    private = X25519PrivateKey.generate()
    return private, private.public_key().public_bytes_raw()


def _dh(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:  # low-order point: an all-zero shared secret
        raise HandshakeFailed("invalid ephemeral key from peer")


def _check_secret(secret: bytes) -> None:
    if len(secret) != SECRET_LEN:
        raise ValueError("rpc_secret must be 32 bytes")


class ClientHandshake:
    """The dialer's side: knows the server's node id in advance and proves its own."""

    def __init__(self, secret: bytes, key: NodeKey, server_id: bytes) -> None:
        _check_secret(secret)
        if len(server_id) != NODE_ID_LEN:
            raise ValueError("server node id must be 32 bytes")
        self._secret, self._key, self._server_id = secret, key, server_id
        self._eph, self._eph_pub = _eph_keypair()
        self._msg1 = b""
        self._th3 = b""
        self._shared = b""
        self._k_server = b""

    def hello(self) -> bytes:
        """Message 1: version magic, ephemeral key, and a MAC proving we know the secret."""
        mac = _mac(self._secret, b"hello", PROTOCOL_MAGIC, self._eph_pub)
        self._msg1 = PROTOCOL_MAGIC + self._eph_pub + mac
        return self._msg1

    def on_accept(self, msg2: bytes) -> bytes:
        """Check message 2 (the server knows the secret) and answer with our identity (message 3)."""
        if len(msg2) != MSG2_LEN:
            raise HandshakeFailed("truncated handshake")
        b_eph, mac = msg2[:_EPH_LEN], msg2[_EPH_LEN:]
        if not hmac.compare_digest(mac, _mac(self._secret, b"accept", self._msg1, b_eph)):
            raise HandshakeFailed("the server does not know our rpc_secret")
        self._shared = _dh(self._eph, b_eph)
        th2 = _hash(self._msg1, msg2)
        k_client, self._k_server = _hkdf(self._secret, self._shared, b"handshake" + th2)
        me = self._key.node_id
        sig = self._key.sign(_LABEL + b"client" + th2 + self._server_id + me)
        msg3 = ChaCha20Poly1305(k_client).encrypt(_ZERO_NONCE, me + sig, th2)
        self._th3 = _hash(th2, msg3)
        return msg3

    def on_confirm(self, msg4: bytes) -> SessionKeys:
        """Check the server's signature (message 4): it proves the server holds ``server_id``."""
        if len(msg4) != MSG4_LEN:
            raise HandshakeFailed("truncated handshake")
        try:
            sig = ChaCha20Poly1305(self._k_server).decrypt(_ZERO_NONCE, msg4, self._th3)
        except InvalidTag:
            raise HandshakeFailed("corrupted handshake message")
        me, server = self._key.node_id, self._server_id
        if not verify_signature(server, sig, _LABEL + b"server" + self._th3 + me + server):
            raise HandshakeFailed(f"the server is not node {short_id(server)}")
        c2s, s2c = _hkdf(self._secret, self._shared, b"session" + _hash(self._th3, msg4) + me + server)
        return SessionKeys(send_key=c2s, recv_key=s2c, peer_id=server)


class ServerHandshake:
    """The listener's side: accepts any client id that knows the secret and signs the transcript."""

    def __init__(self, secret: bytes, key: NodeKey) -> None:
        _check_secret(secret)
        self._secret, self._key = secret, key
        self._th2 = b""
        self._shared = b""
        self._k_client = b""
        self._k_server = b""

    def on_hello(self, msg1: bytes) -> bytes:
        """Check message 1 (version, secret) and answer with only an ephemeral key (message 2)."""
        if len(msg1) != MSG1_LEN:
            raise HandshakeFailed("truncated handshake")
        magic_len = len(PROTOCOL_MAGIC)
        magic, a_eph, mac = msg1[:magic_len], msg1[magic_len:-_MAC_LEN], msg1[-_MAC_LEN:]
        if magic != PROTOCOL_MAGIC:
            raise HandshakeFailed("protocol version mismatch")
        if not hmac.compare_digest(mac, _mac(self._secret, b"hello", magic, a_eph)):
            raise HandshakeFailed("the client does not know our rpc_secret")
        eph, b_eph = _eph_keypair()
        self._shared = _dh(eph, a_eph)
        msg2 = b_eph + _mac(self._secret, b"accept", msg1, b_eph)
        self._th2 = _hash(msg1, msg2)
        self._k_client, self._k_server = _hkdf(self._secret, self._shared, b"handshake" + self._th2)
        return msg2

    def on_auth(self, msg3: bytes) -> tuple[bytes, SessionKeys]:
        """Check the client's identity proof (message 3); return message 4 and the session keys."""
        if len(msg3) != MSG3_LEN:
            raise HandshakeFailed("truncated handshake")
        try:
            plain = ChaCha20Poly1305(self._k_client).decrypt(_ZERO_NONCE, msg3, self._th2)
        except InvalidTag:
            raise HandshakeFailed("corrupted handshake message")
        client, sig = plain[:NODE_ID_LEN], plain[NODE_ID_LEN:]
        me = self._key.node_id
        if client == me:
            raise HandshakeFailed("a client cannot use our own node id")
        if not verify_signature(client, sig, _LABEL + b"client" + self._th2 + me + client):
            # Either a forged identity, or the client expected another server id.
            raise HandshakeFailed("client identity proof failed")
        th3 = _hash(self._th2, msg3)
        my_sig = self._key.sign(_LABEL + b"server" + th3 + client + me)
        msg4 = ChaCha20Poly1305(self._k_server).encrypt(_ZERO_NONCE, my_sig, th3)
        c2s, s2c = _hkdf(self._secret, self._shared, b"session" + _hash(th3, msg4) + client + me)
        return msg4, SessionKeys(send_key=s2c, recv_key=c2s, peer_id=client)


async def _read(reader: asyncio.StreamReader, n: int) -> bytes:
    try:
        return await reader.readexactly(n)
    except asyncio.IncompleteReadError:
        raise HandshakeFailed("connection closed during handshake")


async def client_handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    secret: bytes,
    key: NodeKey,
    server_id: bytes,
    timeout: float = HANDSHAKE_TIMEOUT,
) -> SessionKeys:
    """Run the dialer's side; raises ``HandshakeFailed`` (the caller closes the socket)."""
    hs = ClientHandshake(secret, key, server_id)
    try:
        async with asyncio.timeout(timeout):
            writer.write(hs.hello())
            await writer.drain()
            msg3 = hs.on_accept(await _read(reader, MSG2_LEN))
            writer.write(msg3)
            await writer.drain()
            return hs.on_confirm(await _read(reader, MSG4_LEN))
    except TimeoutError:
        raise HandshakeFailed("handshake timed out")
    except (ConnectionError, OSError) as e:
        raise HandshakeFailed(f"connection error during handshake: {e}")


async def server_handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    secret: bytes,
    key: NodeKey,
    timeout: float = HANDSHAKE_TIMEOUT,
) -> SessionKeys:
    """Run the listener's side; on ``HandshakeFailed`` the caller closes without a word."""
    hs = ServerHandshake(secret, key)
    try:
        async with asyncio.timeout(timeout):
            writer.write(hs.on_hello(await _read(reader, MSG1_LEN)))
            await writer.drain()
            msg4, keys = hs.on_auth(await _read(reader, MSG3_LEN))
            writer.write(msg4)
            await writer.drain()
            return keys
    except TimeoutError:
        raise HandshakeFailed("handshake timed out")
    except (ConnectionError, OSError) as e:
        raise HandshakeFailed(f"connection error during handshake: {e}")
