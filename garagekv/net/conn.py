"""One authenticated connection to one peer, carrying many concurrent requests both ways.

Calls are matched to responses by request id, so a slow answer never blocks a fast one. A caller
that gives up (timeout or cancellation) sends a CANCEL so the peer stops the handler instead of
wasting work; when the connection dies every pending call fails at once with ``NetError`` so
quorum logic can move on to other nodes immediately.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from garagekv.net.channel import ChannelClosed, SecureChannel
from garagekv.net.errors import NetError, NotConnected, PeerProtocolError, RpcTimeout
from garagekv.net.frame import (
    Cancel,
    EncodeError,
    Request,
    Response,
    decode_message,
    encode_cancel,
    encode_error,
    encode_request,
    encode_response,
    error_from_body,
)
from garagekv.net.identity import short_id
from garagekv.util.errors import EntityTooLarge, GarageKVError, InternalError, ServiceUnavailable
from garagekv.util.log import current_request_id, request_id_var, valid_request_id

log = logging.getLogger(__name__)

#: ``dispatch(from_node_id, endpoint_path, body) -> body``; raising a GarageKVError sends it typed.
Dispatcher = Callable[[bytes, str, Any], Awaitable[Any]]
MAX_IN_FLIGHT = 1024


def run_handler_error(err: Exception) -> GarageKVError:
    """The error a caller sees for a handler exception: typed if ours, ``InternalError`` otherwise."""
    if isinstance(err, GarageKVError):
        return err
    return InternalError(f"{type(err).__name__}: {err}")


class Connection:
    """A multiplexed RPC connection over a ``SecureChannel`` (either side may call the other)."""

    def __init__(
        self,
        channel: SecureChannel,
        *,
        dialer_id: bytes,
        dispatch: Dispatcher,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self._channel = channel
        self.peer_id = channel.peer_id
        #: Who opened the TCP connection: used to pick the same survivor on both sides of a duplicate.
        self.dialer_id = dialer_id
        self._dispatch = dispatch
        self._max_in_flight = max_in_flight
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._serving: dict[int, asyncio.Task[None]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._linger: asyncio.Task[None] | None = None
        self._closed = False
        self._done = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._loop = asyncio.get_running_loop()
        self._last_activity = self._loop.time()
        #: When the peer last sent anything (``time.monotonic()``): a node that hangs sends nothing,
        #: a slow one still answers pings and other calls (docs/consensus.md §9).
        self.heard_at = time.monotonic()
        self._on_close: list[Callable[[Connection], None]] = []
        self.close_reason = ""

    def __repr__(self) -> str:
        return f"Connection({short_id(self.peer_id)}, dialer={short_id(self.dialer_id)})"

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def in_flight(self) -> int:
        """Requests waiting in either direction (ours pending + the peer's being served)."""
        return len(self._pending) + len(self._serving)

    def start(self, on_close: Callable[[Connection], None] | None = None) -> None:
        """Start reading; ``on_close(conn)`` runs once when the connection ends for any reason."""
        if on_close is not None:
            self._on_close.append(on_close)
        if self._reader is None:
            self._reader = asyncio.create_task(self._read_loop(), name=f"net-read-{short_id(self.peer_id)}")

    # ---- calling the peer -------------------------------------------------------------------

    async def call(self, path: str, body: Any, timeout: float | None = None) -> Any:
        """Call ``path`` on the peer; ``timeout=None`` waits forever (long polls)."""
        if self._closed:
            raise NotConnected(f"Not connected: {short_id(self.peer_id)} ({self.close_reason})")
        req_id = self._next_id
        self._next_id += 1
        try:
            frame = encode_request(req_id, path, body, current_request_id())
        except EncodeError as e:
            raise InternalError(str(e))
        if len(frame) > self._channel.max_record:
            raise EntityTooLarge(f"RPC request of {len(frame)} bytes exceeds the frame limit")
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._pending[req_id] = fut
        self._touch()
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                await self._channel.send(frame)
                return await fut
        except TimeoutError:
            if not deadline.expired():
                raise
            self._send_cancel(req_id, fut)
            raise RpcTimeout(f"Timeout: {path} on {short_id(self.peer_id)} after {timeout}s")
        except asyncio.CancelledError:
            self._send_cancel(req_id, fut)
            raise
        except ChannelClosed as e:
            raise NetError(f"connection to {short_id(self.peer_id)} lost: {e}")
        finally:
            self._pending.pop(req_id, None)
            self._touch()
            if fut.done() and not fut.cancelled():
                fut.exception()  # mark as retrieved: we may be leaving through another path

    def _send_cancel(self, req_id: int, fut: asyncio.Future[Any]) -> None:
        # Giving up cancels ``fut`` itself; a future with a result means the answer already came.
        if (fut.done() and not fut.cancelled()) or self._closed:
            return
        self._send_nowait(encode_cancel(req_id))

    def _send_nowait(self, frame: bytes) -> None:
        try:
            self._channel.send_nowait(frame)
        except ChannelClosed:
            pass

    # ---- reading ----------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        reason = "connection closed by peer"
        try:
            while True:
                msg = decode_message(await self._channel.recv())
                self._last_activity = self._loop.time()
                self.heard_at = time.monotonic()
                if isinstance(msg, Request):
                    self._on_request(msg)
                elif isinstance(msg, Response):
                    self._on_response(msg)
                elif isinstance(msg, Cancel):
                    task = self._serving.get(msg.id)
                    if task is not None:
                        task.cancel()
        except PeerProtocolError as e:
            reason = str(e)
            log.debug("closing connection to %s: %s", short_id(self.peer_id), reason)
        except asyncio.CancelledError:
            reason = self.close_reason or "closed locally"
        except Exception as e:  # never let one peer take the process down
            reason = f"internal error: {e}"
            log.exception("connection to %s failed", short_id(self.peer_id))
        finally:
            self._shutdown(reason)

    def _on_response(self, msg: Response) -> None:
        fut = self._pending.get(msg.id)
        if fut is None or fut.done():
            return  # the caller gave up (timeout or cancel): drop the late answer
        if msg.ok:
            fut.set_result(msg.body)
        else:
            fut.set_exception(error_from_body(msg.body))

    def _on_request(self, msg: Request) -> None:
        if msg.id in self._serving:
            raise PeerProtocolError("duplicate request id")
        if len(self._serving) >= self._max_in_flight:
            if self._channel.buffered > self._channel.max_record:
                # Its answers pile up unread: refusing more would only pile up refusals.
                raise PeerProtocolError("the peer keeps sending requests without reading the answers")
            self._send_nowait(encode_error(msg.id, ServiceUnavailable("too many requests in flight")))
            return
        task = asyncio.create_task(self._serve(msg))
        # A done callback, not a ``finally``: a task cancelled before its first step runs no code.
        req_id = msg.id
        task.add_done_callback(lambda _t: self._served(req_id))
        self._serving[msg.id] = task
        self._touch()

    def _served(self, req_id: int) -> None:
        self._serving.pop(req_id, None)
        self._touch()

    async def _serve(self, msg: Request) -> None:
        """Run one handler and send its answer; a peer CANCEL cancels this task."""
        # The caller's request id, or none (never the one the reader task may have inherited):
        # this task runs in its own copy of the context, so the id stays with this handler.
        request_id_var.set(valid_request_id(msg.request_id))
        try:
            try:
                frame = encode_response(msg.id, await self._dispatch(self.peer_id, msg.path, msg.body))
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # cancelled by the peer or by shutdown: nobody waits for an answer
                frame = encode_error(msg.id, InternalError("handler was cancelled"))
            except Exception as e:
                if not isinstance(e, GarageKVError):
                    log.exception("RPC handler for %s failed", msg.path)
                frame = encode_error(msg.id, run_handler_error(e))
            if len(frame) > self._channel.max_record:
                # Not a failure of this node: any node would give an answer that big (the caller
                # tells its client so, docs/protocol.md).
                too_large = EntityTooLarge(f"the answer to {msg.path} is {len(frame)} bytes, over the RPC frame limit")
                frame = encode_error(msg.id, too_large)
            if not self._closed:
                await self._channel.send(frame)
        except ChannelClosed:
            pass

    # ---- lifecycle --------------------------------------------------------------------------

    def _touch(self) -> None:
        self._last_activity = self._loop.time()
        if self.in_flight:
            self._idle.clear()
        else:
            self._idle.set()

    def close(self, reason: str = "closed locally") -> None:
        """Close now: pending calls fail with ``NetError``, handlers for the peer are cancelled."""
        self._shutdown(reason)

    def retire(self, linger: float) -> None:
        """Stop being the peer's connection: close once idle for ``linger`` seconds.

        Used for the loser of a simultaneous dial, which the peer retires too; lingering lets
        requests already racing on it finish instead of failing.
        """
        if self._linger is None and not self._closed:
            self._linger = asyncio.create_task(self._close_when_idle(linger))

    async def _close_when_idle(self, linger: float) -> None:
        while not self._closed:
            await self._idle.wait()
            quiet = self._loop.time() - self._last_activity
            if quiet >= linger and not self.in_flight:
                self._shutdown("retired duplicate connection")
                return
            await asyncio.sleep(max(linger - quiet, 0.01))

    def _shutdown(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self.close_reason = reason
        self._channel.close()
        err = f"connection to {short_id(self.peer_id)} lost: {reason}"
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(NetError(err))
        for task in list(self._serving.values()):
            task.cancel()
        current = asyncio.current_task()
        for own in (self._reader, self._linger):
            if own is not None and own is not current:
                own.cancel()
        self._done.set()
        for callback in self._on_close:
            try:
                callback(self)
            except Exception:
                log.exception("connection close callback failed")

    async def wait_closed(self) -> None:
        """Wait until the connection is closed and its socket released."""
        await self._done.wait()
        await self._channel.wait_closed()
