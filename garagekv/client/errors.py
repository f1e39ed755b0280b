"""Typed exceptions for the K2V client.

Every error answer of a K2V server (a JSON body ``{"code", "message", "region", "path"}``) becomes
an instance of the class registered for its ``code``; an unknown code falls back to the class of
its HTTP status (``BadRequest``, ``Forbidden``, ``NotFound``, ``ServerError``...). Failures that
never got an HTTP answer (refused connection, reset, timeout) are :class:`K2VConnectionError`.

Catch by family (``except NotFound``) or by exact code (``except NoSuchBucket``); all of them
are :class:`K2VError` and carry ``code``, ``message``, ``status``, ``path`` and ``region``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from garagekv.client.request import CAUSALITY_HEADER
from garagekv.client.types import CausalityToken


class K2VError(Exception):
    """Base class of every client error.

    ``code`` is the K2V error code (``"NoSuchKey"``...), ``message`` the server's message,
    ``status`` the HTTP status (``None`` when no answer was received).
    """

    default_code = "K2VError"
    default_status: int | None = None

    def __init__(
        self,
        message: str = "",
        *,
        code: str | None = None,
        status: int | None = None,
        path: str | None = None,
        region: str | None = None,
    ) -> None:
        self.code = code or self.default_code
        self.message = message
        self.status = status if status is not None else self.default_status
        self.path = path
        self.region = region
        super().__init__(message)

    def __str__(self) -> str:
        where = f" ({self.path})" if self.path else ""
        status = f"{self.status} " if self.status is not None else ""
        return f"{status}{self.code}: {self.message}{where}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, status={self.status!r}, message={self.message!r})"


class K2VConnectionError(K2VError):
    """No HTTP answer: connection refused or reset, DNS failure, TLS error."""

    default_code = "ConnectionError"


class K2VTimeoutError(K2VConnectionError, TimeoutError):
    """The server did not answer within the client's timeout."""

    default_code = "Timeout"


class ProtocolError(K2VError):
    """The server answered something this client cannot understand (not K2V?)."""

    default_code = "ProtocolError"


# --- by status ------------------------------------------------------------------------------


class BadRequest(K2VError):
    default_code = "InvalidRequest"
    default_status = 400


class Forbidden(K2VError):
    default_code = "AccessDenied"
    default_status = 403


class NotFound(K2VError):
    default_code = "NotFound"
    default_status = 404


class NotAcceptable(K2VError):
    default_code = "NotAcceptable"
    default_status = 406


class Conflict(K2VError):
    default_code = "Conflict"
    default_status = 409


class EntityTooLarge(K2VError):
    default_code = "EntityTooLarge"
    default_status = 413


class PreconditionFailed(K2VError):
    """A conditional write's condition was false; nothing was written.

    ``current_token`` is the item's token at that moment (retry with it after re-reading), or
    ``None`` when the item was never written.
    """

    default_code = "PreconditionFailed"
    default_status = 412

    def __init__(self, message: str = "", *, current_token: CausalityToken | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.current_token = current_token

    def __str__(self) -> str:
        current = "never written" if self.current_token is None else f"current token {self.current_token}"
        return f"{super().__str__()} [{current}]"


class ServerError(K2VError):
    default_code = "InternalError"
    default_status = 500


# --- by code --------------------------------------------------------------------------------


class InvalidRequest(BadRequest):
    default_code = "InvalidRequest"


class InvalidCausalityToken(BadRequest):
    """A malformed causality token (K2V code ``CausalityToken``)."""

    default_code = "CausalityToken"


class InvalidUtf8String(BadRequest):
    default_code = "InvalidUtf8String"


class InvalidHeaderValue(BadRequest):
    default_code = "InvalidHeaderValue"


class AuthorizationHeaderMalformed(BadRequest):
    """Usually a wrong region (the credential scope must name the server's region)."""

    default_code = "AuthorizationHeaderMalformed"


class InvalidDigest(BadRequest):
    default_code = "InvalidDigest"


class AccessDenied(Forbidden):
    """Unknown key, bad secret, or no permission on the bucket."""

    default_code = "AccessDenied"


class RequestTimeTooSkewed(Forbidden):
    """The local clock is too far from the server's."""

    default_code = "RequestTimeTooSkewed"


class NoSuchKey(NotFound):
    """The item was never written (a deleted item is not an error: it reads as ``[None]``)."""

    default_code = "NoSuchKey"


class NoSuchBucket(NotFound):
    default_code = "NoSuchBucket"


class InternalError(ServerError):
    default_code = "InternalError"


class ServiceUnavailable(ServerError):
    default_code = "ServiceUnavailable"
    default_status = 503


BY_CODE: dict[str, type[K2VError]] = {
    cls.default_code: cls
    for cls in (
        InvalidRequest,
        InvalidCausalityToken,
        InvalidUtf8String,
        InvalidHeaderValue,
        AuthorizationHeaderMalformed,
        InvalidDigest,
        AccessDenied,
        RequestTimeTooSkewed,
        NoSuchKey,
        NoSuchBucket,
        NotAcceptable,
        EntityTooLarge,
        PreconditionFailed,
        InternalError,
        ServiceUnavailable,
    )
}
BY_STATUS: dict[int, type[K2VError]] = {
    400: BadRequest,
    403: Forbidden,
    404: NotFound,
    406: NotAcceptable,
    409: Conflict,
    412: PreconditionFailed,
    413: EntityTooLarge,
}


def error_from_response(
    status: int, body: bytes, path: str | None = None, headers: Mapping[str, str] | None = None
) -> K2VError:
    """The exception for an error answer; tolerant of non-JSON bodies (proxies, load balancers).

    ``headers`` (case-insensitive) give a :class:`PreconditionFailed` its ``current_token``.
    """
    data: Any = None
    if body:
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            data = None
    if isinstance(data, dict) and isinstance(data.get("code"), str):
        code: str | None = data["code"]
        message = str(data.get("message", ""))
        path = data.get("path") if isinstance(data.get("path"), str) else path
        region = data.get("region") if isinstance(data.get("region"), str) else None
    else:
        code = None
        message = body[:200].decode("utf-8", "replace").strip() or f"HTTP {status}"
        region = None
    cls = BY_CODE.get(code or "")
    if cls is None:
        cls = BY_STATUS.get(status) or (ServerError if status >= 500 else K2VError)
    err = cls(message, code=code or cls.default_code, status=status, path=path, region=region)
    if isinstance(err, PreconditionFailed) and headers is not None:
        token = headers.get(CAUSALITY_HEADER)
        err.current_token = None if token is None else CausalityToken(token)
    return err
