"""Errors of the Hulykvs API: a status code and a message, sent as ``{"error": "<message>"}``.

Hulykvs answers plain JSON errors, not K2V's ``{code, message, region, path}``, so this surface
has its own small error type; the server turns K2V-side errors (``GarageKVError``) into it too.
"""

from __future__ import annotations

from aiohttp import web

from garagekv.util import jsonout

JSON_TYPE = "application/json"


class HulyError(Exception):
    """An answer with an error status; ``message`` names the problem for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bad_request(message: str) -> HulyError:
    return HulyError(400, message)


def unauthorized(message: str) -> HulyError:
    return HulyError(401, message)


def forbidden(message: str) -> HulyError:
    return HulyError(403, message)


def not_found(message: str) -> HulyError:
    return HulyError(404, message)


def error_body(message: str) -> bytes:
    return jsonout.dumps({"error": message})


def error_response(status: int, message: str) -> web.Response:
    return web.Response(status=status, body=error_body(message), headers={"Content-Type": JSON_TYPE})
