"""The node's network endpoint: listens, dials, and keeps exactly one connection per peer.

It is the only owner of sockets. Upper layers see two things: ``call(node_id, path, body)``
(calls to our own id run the handler in-process, without serialization) and the
``on_connect``/``on_disconnect`` hooks the peering layer uses to track who is up.
An optional ``observer(path, node_id, seconds, outcome)`` sees every call when it ends, for
metrics; ``outcome`` is ``ok``, ``remote`` (the handler answered an error), ``network``,
``timeout`` or ``cancelled``. The node sets it: this layer knows nothing of metrics.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from typing import Any

from garagekv.net.channel import MAX_RECORD_SIZE, SecureChannel
from garagekv.net.conn import MAX_IN_FLIGHT, Connection, Dispatcher, run_handler_error
from garagekv.net.errors import HandshakeFailed, NetError, NotConnected, RpcTimeout
from garagekv.net.handshake import HANDSHAKE_TIMEOUT, SECRET_LEN, client_handshake, server_handshake
from garagekv.net.identity import NodeKey, short_id
from garagekv.util.errors import InternalError

log = logging.getLogger(__name__)

#: Garage's default RPC timeout (``rpc_timeout_msec``).
RPC_TIMEOUT = 300.0
#: Incoming connections still in the handshake (not authenticated yet), in all and per source
#: address; more are closed at once. The per-source cap keeps one host from taking every slot,
#: so peers elsewhere can still connect while it floods us. Each lasts ``HANDSHAKE_TIMEOUT`` at most.
MAX_PENDING_HANDSHAKES = 256
MAX_PENDING_HANDSHAKES_PER_SOURCE = 16
#: A refused connection is logged at warning level at most this often (seconds).
REFUSED_LOG_INTERVAL = 10.0
RETIRE_LINGER = 2.0


class _Default(enum.Enum):
    TOKEN = 0


#: Pass as ``timeout`` to use the NetApp's default; ``None`` means "no timeout" (long polls).
DEFAULT = _Default.TOKEN

#: ``observer(endpoint_path, node_id, seconds, outcome)``, called once per ``NetApp.call``.
RpcObserver = Callable[[str, bytes, float, str], None]


async def _no_endpoints(_from: bytes, path: str, _body: Any) -> Any:
    raise InternalError(f"no handler for endpoint {path!r}: this peer serves no endpoints")


class NetApp:
    """Listener + dialer + connection table for one node identity and one ``rpc_secret``."""

    def __init__(
        self,
        key: NodeKey,
        rpc_secret: bytes,
        dispatch: Dispatcher | None = None,
        *,
        default_timeout: float | None = RPC_TIMEOUT,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        max_record: int = MAX_RECORD_SIZE,
        max_in_flight: int = MAX_IN_FLIGHT,
        max_pending_handshakes: int = MAX_PENDING_HANDSHAKES,
        max_pending_handshakes_per_source: int = MAX_PENDING_HANDSHAKES_PER_SOURCE,
        retire_linger: float = RETIRE_LINGER,
    ) -> None:
        if len(rpc_secret) != SECRET_LEN:
            raise ValueError("rpc_secret must be 32 bytes")
        self.key = key
        self.node_id = key.node_id
        self._secret = rpc_secret
        self._dispatch: Dispatcher = dispatch or _no_endpoints
        self.default_timeout = default_timeout
        self.handshake_timeout = handshake_timeout
        self.max_record = max_record
        self.max_in_flight = max_in_flight
        self.max_pending_handshakes = max_pending_handshakes
        self.max_pending_handshakes_per_source = max_pending_handshakes_per_source
        self.retire_linger = retire_linger
        self._server: asyncio.Server | None = None
        self._conns: dict[bytes, Connection] = {}
        self._all: set[Connection] = set()
        self._handshaking: set[asyncio.StreamWriter] = set()
        self._handshaking_from: dict[str, int] = {}  # source address -> connections in handshake
        self.refused_handshakes = 0  # connections closed because a cap was reached
        self._refused_logged_at = -REFUSED_LOG_INTERVAL
        self._dial_locks: dict[bytes, asyncio.Lock] = {}
        self._closing = False
        self.on_connect: list[Callable[[Connection], None]] = []
        self.on_disconnect: list[Callable[[Connection], None]] = []
        self.observer: RpcObserver | None = None

    @classmethod
    def client_only(cls, rpc_secret: bytes, **kwargs: Any) -> NetApp:
        """A dialer with a throwaway identity that serves nothing (the CLI)."""
        return cls(NodeKey.generate(), rpc_secret, None, **kwargs)

    # ---- connections ------------------------------------------------------------------------

    def connection(self, node_id: bytes) -> Connection | None:
        """The live connection to ``node_id``, if any."""
        conn = self._conns.get(node_id)
        return conn if conn is not None and not conn.closed else None

    def last_heard(self, node_id: bytes) -> float:
        """When ``node_id`` last sent this node anything (``time.monotonic()``; -inf: no connection)."""
        conn = self.connection(node_id)
        return float("-inf") if conn is None else conn.heard_at

    def is_connected(self, node_id: bytes) -> bool:
        return node_id == self.node_id or self.connection(node_id) is not None

    def connected_peers(self) -> list[bytes]:
        return [nid for nid, conn in self._conns.items() if not conn.closed]

    async def listen(self, host: str, port: int) -> tuple[str, int]:
        """Start accepting connections; returns the bound address (useful with port 0)."""
        self._server = await asyncio.start_server(self._on_incoming, host, port)
        bound = self._server.sockets[0].getsockname()
        return bound[0], bound[1]

    async def connect(self, node_id: bytes, addr: tuple[str, int]) -> Connection:
        """Return the connection to ``node_id``, dialing ``addr`` only if there is none."""
        if node_id == self.node_id:
            raise ValueError("cannot connect to ourselves")
        if self._closing:
            raise NetError("node is shutting down")
        lock = self._dial_locks.setdefault(node_id, asyncio.Lock())
        async with lock:
            existing = self.connection(node_id)
            if existing is not None:
                return existing
            return await self._dial(node_id, addr)

    async def _dial(self, node_id: bytes, addr: tuple[str, int]) -> Connection:
        host, port = addr
        where = f"{node_id.hex()}@{host}:{port}"
        try:
            async with asyncio.timeout(self.handshake_timeout):
                reader, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError) as e:
            raise NetError(f"could not connect to {where}: {e or 'timeout'}")
        try:
            keys = await client_handshake(
                reader,
                writer,
                secret=self._secret,
                key=self.key,
                server_id=node_id,
                timeout=self.handshake_timeout,
            )
        except BaseException as e:
            writer.close()
            if isinstance(e, HandshakeFailed):
                raise HandshakeFailed(
                    f"handshake with {where} failed: {e}. Check that both nodes use the same rpc_secret "
                    "and that the node id is the one `garagekv node id` prints on that node"
                )
            raise
        return self._adopt(SecureChannel(reader, writer, keys, max_record=self.max_record), self.node_id)

    def pending_handshakes(self, source: str | None = None) -> int:
        """Incoming connections in the handshake (from ``source`` only, if given)."""
        return len(self._handshaking) if source is None else self._handshaking_from.get(source, 0)

    def _refuse(self, writer: asyncio.StreamWriter, source: str, why: str) -> None:
        writer.close()
        self.refused_handshakes += 1
        self._log_refusal(f"refused an incoming connection from {source}: {why} ({self.refused_handshakes} so far)")

    def _log_refusal(self, message: str) -> None:
        """WARNING at most once per interval (a flood must not flood the log), DEBUG otherwise."""
        now = time.monotonic()
        level = logging.DEBUG
        if now - self._refused_logged_at >= REFUSED_LOG_INTERVAL:
            self._refused_logged_at, level = now, logging.WARNING
        log.log(level, "%s", message)

    async def _on_incoming(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closing:
            writer.close()
            return
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if len(self._handshaking) >= self.max_pending_handshakes:
            self._refuse(writer, source, f"{len(self._handshaking)} connections are in the handshake already")
            return
        from_source = self._handshaking_from.get(source, 0)
        if from_source >= self.max_pending_handshakes_per_source:
            self._refuse(writer, source, f"{from_source} connections from that address are in the handshake already")
            return
        self._handshaking.add(writer)
        self._handshaking_from[source] = from_source + 1
        try:
            keys = await server_handshake(
                reader, writer, secret=self._secret, key=self.key, timeout=self.handshake_timeout
            )
        except HandshakeFailed as e:
            # Say nothing to the peer: just drop it. Tell the operator (a node with another
            # rpc_secret is the usual cause), at most once per interval.
            self._log_refusal(f"handshake from {source} failed: {e} (does that node use this cluster's rpc_secret?)")
            writer.close()
            return
        except Exception:
            log.exception("incoming handshake failed")
            writer.close()
            return
        finally:
            self._handshaking.discard(writer)
            left = self._handshaking_from.pop(source) - 1
            if left:
                self._handshaking_from[source] = left
        if self._closing:
            writer.close()
            return
        self._adopt(SecureChannel(reader, writer, keys, max_record=self.max_record), keys.peer_id)

    def _adopt(self, channel: SecureChannel, dialer_id: bytes) -> Connection:
        """Install a new connection, resolving duplicates the same way on both sides.

        With two live connections to one peer, keep the newer one if both were dialed by the same
        side (the dialer evidently lost the old one), else the one dialed by the smaller node id.
        The other is retired: closed once idle, so requests already on it are not lost.
        """
        conn = Connection(channel, dialer_id=dialer_id, dispatch=self._dispatch, max_in_flight=self.max_in_flight)
        self._all.add(conn)
        conn.start(self._on_closed)
        peer = conn.peer_id
        existing = self.connection(peer)
        if existing is None:
            self._conns[peer] = conn
            # DEBUG: every CLI command is a connection too; nodes coming up are logged by the system.
            log.debug("connected to %s", short_id(peer))
            self._notify(self.on_connect, conn)
            return conn
        if existing.dialer_id == conn.dialer_id or conn.dialer_id == min(self.node_id, peer):
            winner, loser = conn, existing
        else:
            winner, loser = existing, conn
        self._conns[peer] = winner
        loser.retire(self.retire_linger)
        return winner

    def _on_closed(self, conn: Connection) -> None:
        self._all.discard(conn)
        if self._conns.get(conn.peer_id) is conn:
            del self._conns[conn.peer_id]
            log.debug("disconnected from %s: %s", short_id(conn.peer_id), conn.close_reason)
            self._notify(self.on_disconnect, conn)

    @staticmethod
    def _notify(callbacks: list[Callable[[Connection], None]], conn: Connection) -> None:
        for callback in callbacks:
            try:
                callback(conn)
            except Exception:
                log.exception("connection callback failed")

    # ---- calls ------------------------------------------------------------------------------

    async def call(self, node_id: bytes, path: str, body: Any, timeout: float | None | _Default = DEFAULT) -> Any:
        """Call endpoint ``path`` on ``node_id``; errors are ``GarageKVError``s (transport: ``NetError``)."""
        observer = self.observer
        if observer is None:
            return await self._call(node_id, path, body, timeout)
        started = time.monotonic()
        outcome = "remote"
        try:
            result = await self._call(node_id, path, body, timeout)
            outcome = "ok"
            return result
        except RpcTimeout:
            outcome = "timeout"
            raise
        except NetError:
            outcome = "network"
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            try:
                observer(path, node_id, time.monotonic() - started, outcome)
            except Exception:
                log.exception("RPC observer failed")

    async def _call(self, node_id: bytes, path: str, body: Any, timeout: float | None | _Default) -> Any:
        limit = self.default_timeout if timeout is DEFAULT else timeout
        assert not isinstance(limit, _Default)
        if node_id == self.node_id:
            return await self._call_local(path, body, limit)
        conn = self.connection(node_id)
        if conn is None:
            raise NotConnected(f"Not connected: {short_id(node_id)}")
        return await conn.call(path, body, limit)

    async def _call_local(self, path: str, body: Any, timeout: float | None) -> Any:
        """Run our own handler directly: same error types and timeout as a remote call."""
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                return await self._dispatch(self.node_id, path, body)
        except TimeoutError as e:
            if deadline.expired():
                raise RpcTimeout(f"Timeout: {path} on ourselves after {timeout}s")
            raise run_handler_error(e) from e
        except Exception as e:
            err = run_handler_error(e)
            if err is e:
                raise
            raise err from e

    async def close(self) -> None:
        """Stop listening and close every connection (pending calls fail with ``NetError``)."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for writer in list(self._handshaking):
            writer.close()
        conns = list(self._all)
        for conn in conns:
            conn.close("node shutting down")
        await asyncio.gather(*(conn.wait_closed() for conn in conns), return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
