"""One error hierarchy for the whole node.

Every failure a client can cause or observe is one of these classes; the HTTP layer maps them
to responses in exactly one place (``garagekv.api.errors``) and the RPC layer carries them across
the wire by ``code`` so a remote error keeps its type.
"""

from __future__ import annotations


class GarageKVError(Exception):
    """Base class: ``code`` is the K2V error code, ``status`` the HTTP status."""

    code = "InternalError"
    status = 500
    prefix = "Internal error: "

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    @property
    def full_message(self) -> str:
        return f"{self.prefix}{self.message}"


class BadRequest(GarageKVError):
    code = "InvalidRequest"
    status = 400
    prefix = "Bad request: "


class InvalidCausalityToken(BadRequest):
    code = "CausalityToken"

    def __init__(self, message: str = "Invalid causality token") -> None:
        super().__init__(message)


class InvalidUtf8String(BadRequest):
    code = "InvalidUtf8String"


class InvalidHeaderValue(BadRequest):
    code = "InvalidHeaderValue"


class AuthorizationHeaderMalformed(BadRequest):
    code = "AuthorizationHeaderMalformed"


class InvalidDigest(BadRequest):
    code = "InvalidDigest"


class AccessDenied(GarageKVError):
    code = "AccessDenied"
    status = 403
    prefix = "Forbidden: "


class RequestTimeTooSkewed(AccessDenied):
    code = "RequestTimeTooSkewed"


class NoSuchBucket(GarageKVError):
    code = "NoSuchBucket"
    status = 404
    prefix = "Bucket not found: "


class NoSuchKey(GarageKVError):
    code = "NoSuchKey"
    status = 404
    prefix = ""

    def __init__(self, message: str = "Key not found") -> None:
        super().__init__(message)


class NotAcceptable(GarageKVError):
    code = "NotAcceptable"
    status = 406
    prefix = "Not acceptable: "


class PreconditionFailed(GarageKVError):
    """A conditional write's condition was false: nothing was written. ``headers`` go into the
    answer (the item's current causality token, so a client can retry without reading)."""

    code = "PreconditionFailed"
    status = 412
    prefix = "Precondition failed: "

    def __init__(self, message: str = "the condition does not hold", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.headers = dict(headers or {})


class EntityTooLarge(GarageKVError):
    code = "EntityTooLarge"
    status = 413
    prefix = "Entity too large: "


class InternalError(GarageKVError):
    pass


class ServiceUnavailable(GarageKVError):
    """Quorum not reached or a timeout: the request may or may not have taken effect."""

    code = "ServiceUnavailable"
    status = 503
    prefix = "Service unavailable: "


class WrittenWithoutQuorum(ServiceUnavailable):
    """Between nodes only: a K2V coordinator stored an insert but could not replicate it to a
    quorum. It tells the node that asked not to hand the insert to another coordinator, which
    would store it a second time under another dot; that node answers ``ServiceUnavailable``."""

    code = "WrittenWithoutQuorum"


class ConfigError(GarageKVError):
    """A configuration problem; the message names the key and an expected value.

    Part of the one hierarchy, though never a K2V answer: the node refuses to start with it, and
    the CLI prints its message as is.
    """

    code = "InvalidConfig"
    status = 400
    prefix = ""


class StorageError(InternalError):
    """The local database failed (full disk, corrupted file, locked directory)."""


class AdminError(GarageKVError):
    """An operator command that cannot be carried out (unknown key, bucket not empty, ...)."""

    code = "InvalidRequest"
    status = 400
    prefix = ""


class NoSuchEntity(AdminError):
    code = "NoSuchEntity"
    status = 404


# Admin errors with the codes and statuses of Garage's admin API (the message is the CLI's).


class NoSuchAccessKey(NoSuchEntity):
    code = "NoSuchAccessKey"


class KeyAlreadyExists(AdminError):
    code = "KeyAlreadyExists"
    status = 409


class BucketAlreadyExists(AdminError):
    code = "BucketAlreadyExists"
    status = 409


class BucketNotEmpty(AdminError):
    code = "BucketNotEmpty"
    status = 409


class InvalidBucketName(AdminError):
    code = "InvalidBucketName"


ERRORS_BY_CODE: dict[str, type[GarageKVError]] = {}


def _register(cls: type[GarageKVError]) -> None:
    # Breadth-first, base class excluded: the most general class owning a code wins
    # (InternalError for "InternalError", BadRequest for "InvalidRequest").
    level = list(cls.__subclasses__())
    while level:
        for c in level:
            ERRORS_BY_CODE.setdefault(c.code, c)
        level = [s for c in level for s in c.__subclasses__()]


_register(GarageKVError)


def error_from_code(code: str, message: str) -> GarageKVError:
    """Rebuild a typed error from its wire form (used by the RPC layer and the CLI)."""
    cls = ERRORS_BY_CODE.get(code, InternalError)
    err = cls.__new__(cls)
    GarageKVError.__init__(err, message)
    return err
