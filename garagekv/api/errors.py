"""The one place where errors become K2V HTTP responses (docs/k2v-api.md §4)."""

from __future__ import annotations

import logging

from aiohttp import web

from garagekv.api.context import JSON_TYPE
from garagekv.util import jsonout
from garagekv.util.errors import GarageKVError, InternalError

log = logging.getLogger(__name__)


def error_body(err: GarageKVError, region: str, path: str) -> bytes:
    return jsonout.dumps({"code": err.code, "message": err.full_message, "region": region, "path": path})


def error_response(err: BaseException, region: str, path: str) -> web.Response:
    if not isinstance(err, GarageKVError):
        log.exception("internal error while handling %s", path, exc_info=err)
        err = InternalError(str(err) or type(err).__name__)
    headers = {"Content-Type": JSON_TYPE}
    headers.update(getattr(err, "headers", None) or {})
    return web.Response(status=err.status, body=error_body(err, region, path), headers=headers)
