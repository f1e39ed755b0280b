"""Logging: one line per event (JSON or text), request ids, and redaction of secrets.

Secrets are never logged on purpose; the redaction filter installed on the node's log handler is
defence in depth against a careless ``log.debug("%r", thing)``. It removes the values registered
with ``register_secret`` (rpc_secret, admin and metrics tokens) wherever they appear, values that
follow a secret-sounding name (``secret_key=...``, ``"secretAccessKey": "..."``), bearer tokens,
``Authorization`` header values and SigV4 signatures, in the message, its arguments, extra
fields and exception text.

The request id of the K2V or admin request being served lives in a context variable, so every
line logged while serving it carries it, and the RPC layer can forward it to other nodes.
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import re
import secrets
import sys
import threading
from collections.abc import Iterable
from typing import Any

REDACTED = "[REDACTED]"

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("garagekv_request_id", default=None)
_VALID_REQUEST_ID = re.compile(r"\A[A-Za-z0-9._:-]{1,64}\Z")


def new_request_id() -> str:
    return secrets.token_hex(8)


def current_request_id() -> str | None:
    """The id of the request this task is serving (for log lines and RPC messages), if any."""
    return request_id_var.get()


def bind_request_id(incoming: str | None = None) -> tuple[str, contextvars.Token[Any]]:
    """Start a request: reuse a well-formed incoming ``X-Request-Id`` or make a new one."""
    rid = incoming if incoming is not None and _VALID_REQUEST_ID.match(incoming) else new_request_id()
    return rid, request_id_var.set(rid)


def valid_request_id(value: object) -> str | None:
    """``value`` if it is a well-formed request id (1 to 64 of ``[A-Za-z0-9._:-]``), else None.

    Used on ids that arrive from elsewhere (another node's RPC) before they reach log lines.
    """
    return value if isinstance(value, str) and _VALID_REQUEST_ID.match(value) else None


# ---- redaction -------------------------------------------------------------------------------

_SENSITIVE_NAME = (
    r"secret[\s_-]?(?:access[\s_-]?)?key|rpc[_-]?secret|admin[_-]?token|"
    r"metrics[_-]?token|password|passwd|\btoken\b|\bsecret\b|x-amz-signature|\bsignature\b"
)
_SENSITIVE_KEY = re.compile(rf"(?i)(?:{_SENSITIVE_NAME}|authorization)")
_NAME_VALUE = re.compile(rf"""(?i)((?<![a-z])(?:{_SENSITIVE_NAME})["']?\s*[:=]\s*(?:b?["']|\()?)([^\s"',;)&}}\]]+)""")
_AUTHORIZATION = re.compile(r"""(?i)(authorization["']?\s*[:=,]\s*["']?)([^\r\n"']+)""")
_BEARER = re.compile(r"(?i)\b(bearer\s+)([^\s\"',;]+)")


class SecretRedactor:
    """Replaces secrets in text; known secret values are registered at start-up."""

    def __init__(self) -> None:
        self._values: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def register(self, value: str | None) -> None:
        if value and len(value) >= 6:
            with self._lock:
                self._values = self._values | {value}

    def clear(self) -> None:
        with self._lock:
            self._values = frozenset()

    def redact(self, text: str) -> str:
        for v in self._values:
            if v in text:
                text = text.replace(v, REDACTED)
        text = _AUTHORIZATION.sub(lambda m: m.group(1) + REDACTED, text)
        text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
        return _NAME_VALUE.sub(lambda m: m.group(1) + REDACTED, text)

    def redact_value(self, name: str, value: Any) -> Any:
        if _SENSITIVE_KEY.search(name):
            return REDACTED
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {k: self.redact_value(str(k), v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.redact_value(name, v) for v in value]
        return value


redactor = SecretRedactor()


def register_secret(*values: str | None) -> None:
    """Never let these values reach a log line (rpc_secret, tokens...)."""
    for v in values:
        redactor.register(v)


_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "request_id",
    "taskName",
}


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS and not k.startswith("_")}


class RedactingFilter(logging.Filter):
    """Handler filter: stamps the request id, then redacts the message, extras and traceback."""

    def __init__(self, redactor_: SecretRedactor = redactor) -> None:
        super().__init__()
        self.redactor = redactor_
        self._exc_formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not lose the line
            message = f"{record.msg!r} {record.args!r}"
        record.msg, record.args = self.redactor.redact(message), None
        for k, v in extra_fields(record).items():
            setattr(record, k, self.redactor.redact_value(k, v))
        if record.exc_info and not record.exc_text:
            record.exc_text = self._exc_formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redactor.redact(record.stack_info)
        return True


class WorkerTag(logging.Filter):
    """Adds ``worker=<index>`` to every line of a worker of a multi-worker host: their lines
    share the supervisor's output."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


# ---- formats ---------------------------------------------------------------------------------


def _iso(ts: float) -> str:
    t = datetime.datetime.fromtimestamp(ts, tz=datetime.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, request_id (if any), extra fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid is not None:
            out["request_id"] = rid
        for k, v in extra_fields(record).items():
            out.setdefault(k, v)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``ts LEVEL logger: msg [rid=...] key=value ...`` then the traceback, if any."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [f"{_iso(record.created)} {record.levelname} {record.name}: {record.getMessage()}"]
        rid = getattr(record, "request_id", None)
        if rid is not None:
            parts.append(f"[rid={rid}]")
        parts.extend(f"{k}={v}" for k, v in extra_fields(record).items())
        line = " ".join(parts)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + record.stack_info
        return line


def setup_logging(
    level: str = "info", fmt: str = "text", *, secrets_: Iterable[str | None] = (), stream: Any = None
) -> logging.Handler:
    """Send every log record to stderr (or ``stream``) in ``fmt``, redacted; returns the handler."""
    register_secret(*secrets_)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    return handler
