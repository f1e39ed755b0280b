"""The message envelope carried in each sealed record (one record = one message).

msgpack arrays, so a message is self-describing and cheap to validate::

    request  = [0, id, endpoint_path, body] | [0, id, endpoint_path, body, request_id]
    response = [1, id, true, body] | [1, id, false, {"code": str, "message": str}]
    cancel   = [2, id]

Request ids belong to the side that sent the request: a REQUEST or CANCEL we receive names one of
the peer's requests, a RESPONSE names one of ours, so both sides may use the same counter values.
Anything else is a protocol violation and closes the connection.

The optional fifth element of a request is the id of the K2V or admin request that caused it (a
string, or nil), so the serving node's log lines carry the same ``request_id``. It is sent only
when there is one; four-element requests (older nodes, background work) are still accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from garagekv.net.errors import PeerProtocolError
from garagekv.util.errors import GarageKVError, InternalError, error_from_code

REQUEST = 0
RESPONSE = 1
CANCEL = 2
MAX_REQUEST_ID = 2**64 - 1


@dataclass(frozen=True)
class Request:
    id: int
    path: str
    body: Any
    request_id: str | None = None


@dataclass(frozen=True)
class Response:
    id: int
    ok: bool
    body: Any


@dataclass(frozen=True)
class Cancel:
    id: int


Message = Request | Response | Cancel


class EncodeError(ValueError):
    """The body cannot be represented in msgpack (a bug in the caller or the handler)."""


def _pack(obj: list[Any]) -> bytes:
    try:
        packed: bytes = msgpack.packb(obj, use_bin_type=True)
        return packed
    except (TypeError, ValueError, OverflowError) as e:
        raise EncodeError(f"cannot encode RPC body: {e}")


def encode_request(req_id: int, path: str, body: Any, request_id: str | None = None) -> bytes:
    if request_id is None:
        return _pack([REQUEST, req_id, path, body])
    return _pack([REQUEST, req_id, path, body, request_id])


def encode_response(req_id: int, body: Any) -> bytes:
    return _pack([RESPONSE, req_id, True, body])


def encode_error(req_id: int, err: GarageKVError) -> bytes:
    return _pack([RESPONSE, req_id, False, {"code": str(err.code), "message": str(err.message)}])


def encode_cancel(req_id: int) -> bytes:
    return _pack([CANCEL, req_id])


def error_from_body(body: Any) -> GarageKVError:
    """Rebuild the remote error with its type (unknown codes become ``InternalError``)."""
    if isinstance(body, dict) and isinstance(body.get("code"), str) and isinstance(body.get("message"), str):
        err = error_from_code(body["code"], body["message"])
        # "InternalError" is also the base class's code; callers catch the concrete class.
        return InternalError(err.message) if type(err) is GarageKVError else err
    return InternalError(f"malformed error from peer: {body!r:.200}")


def _req_id(value: Any) -> int:
    if type(value) is not int or not 0 <= value <= MAX_REQUEST_ID:
        raise PeerProtocolError("bad request id")
    return value


def decode_message(data: bytes) -> Message:
    """Parse and validate one message; raises ``PeerProtocolError`` on anything unexpected."""
    try:
        msg = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises a zoo of exception types on garbage
        raise PeerProtocolError(f"undecodable message: {e}")
    if not isinstance(msg, list) or not msg:
        raise PeerProtocolError("message is not a non-empty array")
    kind = msg[0]
    if type(kind) is not int:  # a bool would compare equal to 0/1
        raise PeerProtocolError("bad message kind")
    if kind == REQUEST and len(msg) == 4 and isinstance(msg[2], str):
        return Request(_req_id(msg[1]), msg[2], msg[3])
    if kind == REQUEST and len(msg) == 5 and isinstance(msg[2], str) and isinstance(msg[4], str | None):
        return Request(_req_id(msg[1]), msg[2], msg[3], msg[4])
    if kind == RESPONSE and len(msg) == 4 and isinstance(msg[2], bool):
        return Response(_req_id(msg[1]), msg[2], msg[3])
    if kind == CANCEL and len(msg) == 2:
        return Cancel(_req_id(msg[1]))
    raise PeerProtocolError("unknown message shape")
