"""The AEAD record layer: after the handshake, every byte on the socket is a sealed record.

Record = ``u32 BE ciphertext length`` | ChaCha20-Poly1305 ciphertext (plaintext + 16-byte tag).
The length header is the associated data, and the nonce is a per-direction counter the receiver
keeps itself, so a tampered, replayed, reordered, dropped or spliced record fails to decrypt and
the channel is closed. A length above the limit is refused before reading the body, so a peer
cannot make us buffer more than one maximum record.
"""

from __future__ import annotations

import asyncio
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from garagekv.net.errors import PeerProtocolError
from garagekv.net.handshake import SessionKeys

#: Largest plaintext record: a 16 MiB body plus room for the message envelope.
MAX_RECORD_SIZE = 16 * 1024 * 1024 + 64 * 1024
TAG_LEN = 16
_HEADER = struct.Struct(">I")
_MAX_COUNTER = 2**64 - 1


def _nonce(counter: int) -> bytes:
    return b"\x00\x00\x00\x00" + counter.to_bytes(8, "big")


class ChannelClosed(PeerProtocolError):
    """The peer closed the socket, or a record failed authentication."""


class SecureChannel:
    """A sealed, ordered, message-oriented pipe over one TCP stream."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        keys: SessionKeys,
        *,
        max_record: int = MAX_RECORD_SIZE,
    ) -> None:
        self._reader, self._writer = reader, writer
        self._send = ChaCha20Poly1305(keys.send_key)
        self._recv = ChaCha20Poly1305(keys.recv_key)
        self._send_ctr = 0
        self._recv_ctr = 0
        self._drain_lock = asyncio.Lock()
        self.max_record = max_record
        self.peer_id = keys.peer_id

    @property
    def closed(self) -> bool:
        return self._writer.is_closing()

    def send_nowait(self, plaintext: bytes) -> None:
        """Seal and queue one record without awaiting: safe from a cancelled task.

        Sealing and queueing happen without a suspension point, so concurrent senders can never
        interleave the counter order with the byte order.
        """
        if len(plaintext) > self.max_record:
            raise ValueError(f"record of {len(plaintext)} bytes exceeds the {self.max_record}-byte limit")
        if self.closed:
            raise ChannelClosed("channel closed")
        if self._send_ctr >= _MAX_COUNTER:
            raise ChannelClosed("nonce space exhausted")
        header = _HEADER.pack(len(plaintext) + TAG_LEN)
        sealed = self._send.encrypt(_nonce(self._send_ctr), plaintext, header)
        self._send_ctr += 1
        self._writer.write(header + sealed)

    @property
    def buffered(self) -> int:
        """Bytes queued for the socket and not sent yet."""
        return self._writer.transport.get_write_buffer_size()

    async def send(self, plaintext: bytes) -> None:
        """Send one record once the socket buffer has room (backpressure).

        The wait comes before the record is queued: a sender cancelled while it waits (its caller
        gave up, or the peer cancelled the request being answered) leaves nothing behind, so a
        peer that stops reading cannot make this node buffer more than one record past the
        transport's high-water mark, however many requests it sends and cancels.
        """
        try:
            async with self._drain_lock:
                await self._writer.drain()
                self.send_nowait(plaintext)
        except (ConnectionError, OSError) as e:
            raise ChannelClosed(f"connection lost: {e}")

    async def recv(self) -> bytes:
        """Receive and open the next record; raises ``ChannelClosed`` on EOF or any violation."""
        try:
            header = await self._reader.readexactly(_HEADER.size)
            (length,) = _HEADER.unpack(header)
            if length < TAG_LEN or length > self.max_record + TAG_LEN:
                raise ChannelClosed(f"record length {length} out of bounds")
            sealed = await self._reader.readexactly(length)
        except asyncio.IncompleteReadError:
            raise ChannelClosed("connection closed by peer")
        except (ConnectionError, OSError) as e:
            raise ChannelClosed(f"connection lost: {e}")
        try:
            plaintext = self._recv.decrypt(_nonce(self._recv_ctr), sealed, header)
        except InvalidTag:
            raise ChannelClosed("record failed authentication (tampered, replayed or reordered)")
        self._recv_ctr += 1
        return plaintext

    def close(self) -> None:
        """Close the socket (no goodbye record: the peer just sees the stream end)."""
        if not self._writer.is_closing():
            self._writer.close()

    async def wait_closed(self) -> None:
        try:
            await self._writer.wait_closed()
        except (ConnectionError, OSError):
            pass
