"""The aiohttp hooks the JSON-error server relies on.

``JsonErrorServer`` builds its own request handler class, which needs two attributes aiohttp keeps
private (``web.Server._loop`` and ``_kwargs``) and the ``RequestHandler.handle_error`` signature.
pyproject pins aiohttp below 4; these tests make a minor release that moves them fail here rather
than turn malformed requests into plain-text answers.
"""

from __future__ import annotations

import inspect

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from garagekv.api.http_server import JsonErrorServer


async def _handler(request: web.BaseRequest) -> web.StreamResponse:
    return web.Response()


async def test_server_builds_handlers_of_its_own_class_with_the_region() -> None:
    server = JsonErrorServer(_handler, region="garage-test")
    handler = server()
    assert isinstance(handler, RequestHandler)
    assert type(handler).__name__ == "K2VRequestHandler"
    assert handler.region == "garage-test"  # type: ignore[attr-defined]


def test_handle_error_signature_is_the_one_overridden() -> None:
    params = list(inspect.signature(RequestHandler.handle_error).parameters)
    assert params[:5] == ["self", "request", "status", "exc", "message"]
