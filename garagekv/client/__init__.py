"""A typed Python client for the K2V HTTP API (Garage's, as served by garagekv).

>>> from garagekv.client import K2VClientSync
>>> k2v = K2VClientSync.from_env()        # or K2VClientSync(endpoint=..., region=..., bucket=..., ...)
>>> k2v.insert_item("inbox", "msg-1", b"hello")
>>> item = k2v.read_item("inbox", "msg-1")
>>> item.values, item.token               # ([b'hello'], CausalityToken('...'))
>>> new = k2v.insert_item("inbox", "msg-1", b"hi", if_match=item.token)   # compare-and-set

:class:`K2VClient` is the asyncio client; :class:`K2VClientSync` runs it on a private loop thread.
See ``docs/client.md``; the wire format it speaks is docs/k2v-api.md.

May import only garagekv.util (layer 1 beside db): applications install and use it without the
server's layers.
"""

from garagekv.client.blocking import K2VClientSync
from garagekv.client.client import K2VClient, RawResponse
from garagekv.client.config import ConnectionSettings
from garagekv.client.errors import (
    AccessDenied,
    AuthorizationHeaderMalformed,
    BadRequest,
    Conflict,
    EntityTooLarge,
    Forbidden,
    InternalError,
    InvalidCausalityToken,
    InvalidDigest,
    InvalidHeaderValue,
    InvalidRequest,
    InvalidUtf8String,
    K2VConnectionError,
    K2VError,
    K2VTimeoutError,
    NoSuchBucket,
    NoSuchKey,
    NotAcceptable,
    NotFound,
    PreconditionFailed,
    ProtocolError,
    RequestTimeTooSkewed,
    ServerError,
    ServiceUnavailable,
)
from garagekv.client.request import PreparedRequest
from garagekv.client.types import (
    CausalityToken,
    Compare,
    Delete,
    DeleteQuery,
    DeleteResult,
    IndexEntry,
    IndexPage,
    InsertOp,
    Item,
    ItemPage,
    OpResult,
    PollRangeResult,
    PollRangesResult,
    Put,
    RangeChanges,
    RangeSpec,
    Read,
    ReadQuery,
    TxnOp,
    TxnResult,
    Value,
)

__all__ = [
    "AccessDenied",
    "AuthorizationHeaderMalformed",
    "BadRequest",
    "CausalityToken",
    "Compare",
    "Conflict",
    "ConnectionSettings",
    "Delete",
    "DeleteQuery",
    "DeleteResult",
    "EntityTooLarge",
    "Forbidden",
    "IndexEntry",
    "IndexPage",
    "InsertOp",
    "InternalError",
    "InvalidCausalityToken",
    "InvalidDigest",
    "InvalidHeaderValue",
    "InvalidRequest",
    "InvalidUtf8String",
    "Item",
    "ItemPage",
    "K2VClient",
    "K2VClientSync",
    "K2VConnectionError",
    "K2VError",
    "K2VTimeoutError",
    "NoSuchBucket",
    "NoSuchKey",
    "NotAcceptable",
    "NotFound",
    "OpResult",
    "PollRangeResult",
    "PollRangesResult",
    "PreconditionFailed",
    "PreparedRequest",
    "ProtocolError",
    "Put",
    "RangeChanges",
    "RangeSpec",
    "RawResponse",
    "Read",
    "ReadQuery",
    "RequestTimeTooSkewed",
    "ServerError",
    "ServiceUnavailable",
    "TxnOp",
    "TxnResult",
    "Value",
]
