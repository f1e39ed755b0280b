"""aiohttp's low-level server with every framework-level error turned into a K2V JSON body.

aiohttp answers requests it cannot parse (bad request lines, bad methods, broken chunked
bodies) itself in plain text; K2V clients expect the JSON error body for every error. aiohttp has
no public hook for that answer, so the server subclasses its request handler, which needs
``web.Server._loop`` and ``_kwargs``: pyproject pins aiohttp below 4 and
tests/unit/test_api_http_server.py fails if a release moves them.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod
from aiohttp.web_protocol import RequestHandler

from garagekv.api.errors import error_body
from garagekv.util.errors import BadRequest, GarageKVError, InternalError

# The request line as aiohttp's parsers quote it in their error messages (as a bytes repr).
_REQUEST_LINE = re.compile(r"(?:b['\"])?([^\s'\"]+) (/[^\s?']*)(?:\?\S*)? HTTP/")


class _JsonErrorRequestHandler(RequestHandler):
    region = ""

    def handle_error(
        self, request: Any, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        err: GarageKVError
        if status >= 500:
            self.log_exception("Error handling request", exc_info=exc)
            err = InternalError("unexpected server error")
        else:
            err = BadRequest(message or (str(exc) if exc else "malformed HTTP request"))
            err.status = status
        try:
            path = request.path
        except Exception:  # noqa: BLE001 - an unparsable request has no usable path
            path = "/"
        line = _REQUEST_LINE.search(str(exc)) if exc is not None else None
        if line is not None:
            path = line.group(2)
            if isinstance(exc, BadHttpMethod):
                # Methods the HTTP parser refuses (lowercase, unknown tokens) get the same answer
                # as the methods it accepts but K2V does not know.
                err = BadRequest(f"Unknown method: {line.group(1)}")
        resp = web.Response(
            status=status, body=error_body(err, self.region, path), headers={"Content-Type": "application/json"}
        )
        resp.force_close()
        return resp


class JsonErrorServer(web.Server):
    def __init__(self, handler: Any, *, region: str, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        # A subclass per server carrying its region (three-argument type() is typed plain ``type``).
        handler_class = type("K2VRequestHandler", (_JsonErrorRequestHandler,), {"region": region})
        self._handler_class: type[_JsonErrorRequestHandler] = handler_class

    def __call__(self) -> RequestHandler:
        return self._handler_class(self, loop=self._loop, **self._kwargs)
