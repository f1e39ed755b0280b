"""What a K2V handler receives: the node's services and one authenticated request."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from garagekv.api.interim import send_continue
from garagekv.api.routing import Endpoint
from garagekv.api.signature import Verified
from garagekv.model.helper import MetaHelper
from garagekv.model.k2v.rpc import K2VService
from garagekv.model.key_table import Key
from garagekv.util import jsonin
from garagekv.util.errors import BadRequest, EntityTooLarge

_orjson_dumps: Callable[[Any], bytes] | None
try:
    from orjson import dumps as _orjson_dumps
except ImportError:  # optional: the standard library encodes the same JSON, only slower
    _orjson_dumps = None

JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"
TOKEN_HEADER = "X-Garage-Causality-Token"
EXPIRES_HEADER = "X-Garage-Expires"  # when a live value expires (docs/k2v-api.md §5c)


@dataclass
class ApiLimits:
    max_body_bytes: int = 16 * 1024 * 1024
    max_batch_items: int = 1000
    max_key_bytes: int = 479


@dataclass
class ApiState:
    """Long-lived services shared by every request of the K2V API server."""

    store: K2VService
    helper: MetaHelper
    region: str
    limits: ApiLimits = field(default_factory=ApiLimits)
    cors_allowed_origins: tuple[str, ...] = ()
    #: Why requests must be refused with 503 right now (None: serve them); see rpc/readiness.py.
    refusal: Callable[[], str | None] = lambda: None


@dataclass
class RequestContext:
    state: ApiState
    request: web.BaseRequest  # aiohttp's low-level server (api/http_server.py) hands these
    endpoint: Endpoint
    key: Key
    bucket_id: bytes
    verified: Verified  # checks the body against x-amz-content-sha256

    async def body(self) -> bytes:
        """The request body, size-limited and checked against the signed payload hash."""
        limit = self.state.limits.max_body_bytes
        cl = self.request.content_length
        if cl is not None and cl > limit:
            raise EntityTooLarge(f"Request body of {cl} bytes is over the limit of {limit} bytes")
        await send_continue(self.request)
        chunks: list[bytes] = []
        size = 0
        async for chunk in self.request.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise EntityTooLarge(f"Request body is over the limit of {limit} bytes")
            chunks.append(chunk)
        return self.verified.check_body(b"".join(chunks))

    async def json_body(self) -> Any:
        raw = await self.body()
        try:
            return jsonin.loads(raw)  # depth, lone surrogates, NaN, non-UTF-8: see jsonin
        except ValueError as e:
            raise BadRequest(f"Invalid JSON: {e}")

    def check_key_len(self, field_name: str, value: str | None) -> None:
        if value is not None and len(value.encode()) > self.state.limits.max_key_bytes:
            raise BadRequest(
                f"{field_name} is {len(value.encode())} bytes of UTF-8, over the limit of "
                f"{self.state.limits.max_key_bytes}"
            )


def encode_json(data: Any) -> bytes:
    """Compact UTF-8 JSON: orjson when installed (it makes big ReadBatch answers several times
    cheaper), the standard library for what orjson refuses (strings with lone surrogates)."""
    if _orjson_dumps is not None:
        try:
            return _orjson_dumps(data)
        except TypeError:
            pass
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    body = encode_json(data)
    h = {"Content-Type": JSON_TYPE}
    if headers:
        h.update(headers)
    return web.Response(status=status, body=body, headers=h)
