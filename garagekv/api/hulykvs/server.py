"""The Hulykvs listener: route, answer probes and CORS preflights, run the handler, turn every
error into ``{"error": ...}``, add CORS headers, report each request to the node's metrics.

CORS is Hulykvs's: any origin (echoed, since credentials are allowed), any method and header,
``max-age`` 3600.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from garagekv.api.hulykvs.context import HulyRequest, HulyState
from garagekv.api.hulykvs.errors import JSON_TYPE, HulyError, error_body, error_response
from garagekv.api.hulykvs.router import methods_of, route
from garagekv.util.errors import EntityTooLarge, GarageKVError
from garagekv.util.log import bind_request_id

log = logging.getLogger(__name__)

PROBES = ("Status", "Ready")

#: called once per answered request with (request, endpoint name or None, status, seconds)
Observer = Callable[[web.BaseRequest, str | None, int, float], None]


def _cors_headers(request: web.BaseRequest) -> dict[str, str]:
    origin = request.headers.get("Origin")
    if origin is None:
        return {}
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Credentials": "true",
        "Access-Control-Expose-Headers": "ETag",
        "Vary": "Origin",
    }


def _preflight(request: web.BaseRequest) -> web.Response:
    headers = _cors_headers(request)
    headers["Access-Control-Allow-Methods"] = request.headers.get(
        "Access-Control-Request-Method", "GET, HEAD, PUT, POST, DELETE"
    )
    requested = request.headers.get("Access-Control-Request-Headers")
    if requested:
        headers["Access-Control-Allow-Headers"] = requested
    headers["Access-Control-Max-Age"] = "3600"
    return web.Response(status=200, headers=headers)


class HulykvsApiServer:
    def __init__(self, state: HulyState) -> None:
        self.state = state
        self.observer: Observer | None = None
        self.in_flight: set[asyncio.Task[object]] = set()
        self._server: asyncio.base_events.Server | None = None
        self._http: _JsonErrorServer | None = None

    @property
    def serving(self) -> bool:
        return self._server is not None and self._server.is_serving()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None  # aiohttp runs each request handler in a task of its own
        self.in_flight.add(task)
        started = time.monotonic()
        request_id, _ = bind_request_id(request.headers.get("X-Request-Id"))
        endpoint: str | None = None
        resp: web.StreamResponse
        try:
            raw_path, _, raw_query = request.raw_path.partition("?")
            if request.method == "OPTIONS" and "Origin" in request.headers and methods_of(raw_path) is not None:
                endpoint = "Preflight"
                resp = _preflight(request)
            else:
                r = route(request.method, raw_path)
                endpoint = r.name
                if r.name not in PROBES:
                    refusal = self.state.refusal()
                    if refusal is not None:
                        raise HulyError(503, refusal)
                resp = await r.handler(HulyRequest(self.state, request, r.segments, raw_query))
        except HulyError as e:
            resp = error_response(e.status, e.message)
        except EntityTooLarge as e:
            resp = error_response(413, e.message)
        except GarageKVError as e:
            if e.status >= 500:
                log.warning("hulykvs %s %s: %s", request.method, request.path, e.full_message)
            resp = error_response(e.status, e.full_message)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a bug: 500 with a JSON body, logged with its traceback
            log.exception("internal error while handling %s %s", request.method, request.path, exc_info=e)
            resp = error_response(500, "internal error")
        finally:
            self.in_flight.discard(task)
        resp.headers.update(_cors_headers(request))
        resp.headers["X-Request-Id"] = request_id
        if self.observer is not None:
            self.observer(request, endpoint, resp.status, time.monotonic() - started)
        return resp

    async def start(self, host: str, port: int, reuse_port: bool = False) -> None:
        """Listen; ``reuse_port``: share the port with the other workers of the host (SO_REUSEPORT)."""
        # Bodies are decoded by the handlers, strictly (api/hulykvs/body_coding.py).
        self._http = _JsonErrorServer(self.handle, handler_cancellation=True, auto_decompress=False, access_log=None)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._http, host, port, reuse_address=True, reuse_port=reuse_port or None, backlog=1024
        )

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, let in-flight requests finish, close connections."""
        if self._server is None or self._http is None:
            return
        self._server.close()
        pending = list(self.in_flight)
        if pending:
            _, still = await asyncio.wait(pending, timeout=grace)
            for t in still:
                t.cancel()
        await self._http.shutdown(timeout=1.0)


class _JsonErrorRequestHandler(RequestHandler):
    """aiohttp answers requests it cannot parse itself, in plain text; answer ``{"error": ...}``."""

    def handle_error(
        self, request: Any, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        if status >= 500:
            self.log_exception("Error handling request", exc_info=exc)
            text = "internal error"
        else:
            text = message or (str(exc) if exc else "malformed HTTP request")
        resp = web.Response(status=status, body=error_body(text), headers={"Content-Type": JSON_TYPE})
        resp.force_close()
        return resp


class _JsonErrorServer(web.Server):
    # Same two private attributes as garagekv/api/http_server.py (tested there against aiohttp).
    def __call__(self) -> RequestHandler:
        return _JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)
