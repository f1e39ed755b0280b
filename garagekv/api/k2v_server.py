"""The K2V API server: route, authenticate, resolve the bucket, check permission, dispatch.

The order of checks is the one of docs/k2v-api.md §2, which decides which error a client sees
when several things are wrong at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiohttp import web

from garagekv.api import cors
from garagekv.api.context import ApiState, RequestContext
from garagekv.api.errors import error_response
from garagekv.api.http_server import JsonErrorServer
from garagekv.api.router import HANDLERS
from garagekv.api.routing import OPTIONS, POLL_ITEM, POLL_RANGE, POLL_RANGES, parse_endpoint
from garagekv.api.signature import Headers, parse_request
from garagekv.util.errors import AccessDenied, GarageKVError, ServiceUnavailable
from garagekv.util.log import bind_request_id
from garagekv.util.signing import SigningKeyCache

log = logging.getLogger(__name__)

POLL_ENDPOINTS = (POLL_ITEM, POLL_RANGE, POLL_RANGES)


class K2VApiServer:
    def __init__(self, state: ApiState) -> None:
        self.state = state
        self.key_cache = SigningKeyCache()
        self._server: asyncio.base_events.Server | None = None
        self._http: JsonErrorServer | None = None
        # request task -> endpoint name (None until routed), so shutdown can cut polls at once
        self.in_flight: dict[asyncio.Task[object], str | None] = {}
        # called once per answered request with (request, endpoint name or None, status,
        # error code or None, seconds): the node's metrics and access log
        self.observer: Callable[[web.BaseRequest, str | None, int, str | None, float], None] | None = None

    @property
    def serving(self) -> bool:
        return self._server is not None and self._server.is_serving()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.raw_path.partition("?")[0]
        task = asyncio.current_task()
        assert task is not None  # aiohttp runs each request handler in a task of its own
        self.in_flight[task] = None
        started = time.monotonic()
        # each request runs in its own task, so the id stays in this request's context
        request_id, _ = bind_request_id(request.headers.get("X-Request-Id"))
        error_code = None
        try:
            resp = await self._handle(request, task)
        except GarageKVError as e:
            error_code = e.code
            resp = error_response(e, self.state.region, path)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - becomes a 500 with a JSON body
            error_code = "InternalError"
            resp = error_response(e, self.state.region, path)
        finally:
            endpoint = self.in_flight.pop(task, None)
        cors.add_cors_headers(self.state.cors_allowed_origins, request, resp)
        resp.headers["X-Request-Id"] = request_id
        if self.observer is not None:
            self.observer(request, endpoint, resp.status, error_code, time.monotonic() - started)
        return resp

    async def _handle(self, request: web.BaseRequest, task: asyncio.Task[object]) -> web.StreamResponse:
        raw_path, _, raw_query = request.raw_path.partition("?")
        ep = parse_endpoint(request.method, raw_path, raw_query)
        self.in_flight[task] = ep.name
        if ep.name == OPTIONS:
            return cors.preflight(self.state.cors_allowed_origins, request)
        refusal = self.state.refusal()
        if refusal is not None:  # no layout yet: writes acknowledged now could be lost
            raise ServiceUnavailable(refusal)

        pending = parse_request(
            request.method, raw_path, raw_query, Headers(request.headers.items()), self.state.region
        )
        helper = self.state.helper
        key = await helper.request_key(pending.access_key_id)  # None if unknown or deleted
        secret = None if key is None or key.params is None else key.params.secret_key
        verified = pending.finish(secret, self.key_cache)
        assert key is not None  # finish refused a request whose key has no secret

        bucket_id = await helper.resolve_bucket(ep.bucket, key)
        perm = key.bucket_permissions(bucket_id)
        if (ep.needs_write and not perm.allow_write) or (ep.needs_read and not perm.allow_read):
            raise AccessDenied("Operation is not allowed for this key.")
        ctx = RequestContext(self.state, request, ep, key, bucket_id, verified)
        return await HANDLERS[ep.name](ctx)

    async def start(self, host: str, port: int, reuse_port: bool = False) -> None:
        """Listen; ``reuse_port``: share the port with the other workers of the host (SO_REUSEPORT)."""
        # Bodies are taken as sent (no Content-Encoding decoding): the signature covers those bytes.
        self._http = JsonErrorServer(
            self.handle, region=self.state.region, handler_cancellation=True, auto_decompress=False, access_log=None
        )
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._http, host, port, reuse_address=True, reuse_port=reuse_port or None, backlog=1024
        )

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, let in-flight requests finish (polls are cut), close connections."""
        if self._server is None or self._http is None:
            return
        self._server.close()
        for task, name in list(self.in_flight.items()):
            if name in POLL_ENDPOINTS:
                task.cancel()
        pending = list(self.in_flight)
        if pending:
            _, still = await asyncio.wait(pending, timeout=grace)
            for t in still:
                t.cancel()
        await self._http.shutdown(timeout=1.0)
