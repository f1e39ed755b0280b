"""Where a client's connection settings come from: arguments, ``garagekv dev --json``, environment."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

DEFAULT_REGION = "garage"

# Environment variables, most specific first (K2V_* are the names Garage's k2v-cli reads).
ENV_ENDPOINT = ("GARAGEKV_K2V_ENDPOINT", "K2V_ENDPOINT")
ENV_BUCKET = ("GARAGEKV_BUCKET", "K2V_BUCKET")
ENV_REGION = ("AWS_REGION", "AWS_DEFAULT_REGION")
ENV_KEY_ID = ("AWS_ACCESS_KEY_ID",)
ENV_SECRET = ("AWS_SECRET_ACCESS_KEY",)

_BUCKET_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~")


@dataclass(frozen=True)
class ConnectionSettings:
    """Endpoint, region, credentials and bucket: everything needed to address a K2V bucket."""

    endpoint: str
    region: str
    access_key_id: str
    secret_access_key: str
    bucket: str

    def __repr__(self) -> str:  # never print the secret
        return (
            f"ConnectionSettings(endpoint={self.endpoint!r}, region={self.region!r}, "
            f"access_key_id={self.access_key_id!r}, bucket={self.bucket!r})"
        )


def normalize_endpoint(endpoint: str) -> str:
    """``host:port`` → ``http://host:port``; no trailing slash; a path or query is refused."""
    endpoint = endpoint.strip()
    if not endpoint:
        raise ValueError("the K2V endpoint is empty")
    if "://" not in endpoint:
        endpoint = "http://" + endpoint
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"invalid K2V endpoint {endpoint!r} (expected http[s]://host[:port])")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"the K2V endpoint must not have a path or query: {endpoint!r}")
    if "@" in parts.netloc:
        raise ValueError(f"the K2V endpoint must not hold credentials (requests are signed): {endpoint!r}")
    try:
        port = parts.port  # raises for a port that is not a number from 0 to 65535
    except ValueError:
        port = 0
    if (port == 0 and parts.netloc.rpartition("]")[2].count(":")) or parts.netloc.endswith(":"):
        raise ValueError(f"invalid port in the K2V endpoint {endpoint!r} (1 to 65535)")
    if not parts.hostname:
        raise ValueError(f"invalid K2V endpoint {endpoint!r} (expected http[s]://host[:port])")
    return f"{parts.scheme}://{parts.netloc}"


def check_bucket(bucket: str) -> str:
    """Bucket names go on the wire as they are (the server does not percent-decode them)."""
    if not bucket or not set(bucket) <= _BUCKET_CHARS:
        raise ValueError(f"invalid bucket name {bucket!r} (letters, digits and -_.~ only)")
    return bucket


def load_dev_json(source: str | bytes | Path | Mapping[str, Any] | TextIO) -> dict[str, Any]:
    """The object printed by ``garagekv dev --json``: a mapping, JSON text, a path, or a file.

    Text may hold other lines (the non ``--json`` output): the first line that is a JSON object
    is used.
    """
    if isinstance(source, Mapping):
        return dict(source)
    if isinstance(source, Path):
        text = source.read_text()
    elif isinstance(source, bytes):
        text = source.decode("utf-8")
    elif isinstance(source, str):
        text = source
    else:
        text = source.read()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    data = json.loads(line)
                    break
                except ValueError:
                    continue
    if not isinstance(data, dict):
        raise ValueError("no JSON object found in the dev JSON (expected the output of `garagekv dev --json`)")
    return data


def dev_json_settings(data: Mapping[str, Any]) -> dict[str, str]:
    """Constructor keyword arguments from the ``garagekv dev --json`` object."""
    missing = [k for k in ("k2v_endpoint", "access_key_id", "secret_access_key", "bucket") if not data.get(k)]
    if missing:
        raise ValueError(f"the dev JSON lacks {', '.join(missing)}")
    return {
        "endpoint": data["k2v_endpoint"],
        "region": data.get("region") or DEFAULT_REGION,
        "access_key_id": data["access_key_id"],
        "secret_access_key": data["secret_access_key"],
        "bucket": data["bucket"],
    }


def _first(env: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    for name in names:
        value = env.get(name)
        if value:
            return value
    return None


def env_settings(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Constructor keyword arguments found in the environment (only those that are set).

    ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION`` (or ``AWS_DEFAULT_REGION``),
    ``GARAGEKV_K2V_ENDPOINT`` (or ``K2V_ENDPOINT``) and ``GARAGEKV_BUCKET`` (or ``K2V_BUCKET``).
    """
    env = os.environ if env is None else env
    out: dict[str, str] = {}
    for key, names in (
        ("endpoint", ENV_ENDPOINT),
        ("region", ENV_REGION),
        ("access_key_id", ENV_KEY_ID),
        ("secret_access_key", ENV_SECRET),
        ("bucket", ENV_BUCKET),
    ):
        value = _first(env, names)
        if value is not None:
            out[key] = value
    return out


def resolve(*sources: Mapping[str, str | None]) -> ConnectionSettings:
    """Merge keyword sources (earlier wins; ``None`` means unset) into complete settings."""
    merged: dict[str, str] = {}
    for src in sources:
        for k, v in src.items():
            if v is not None and k not in merged:
                merged[k] = v
    merged.setdefault("region", DEFAULT_REGION)
    missing = [k for k in ("endpoint", "access_key_id", "secret_access_key", "bucket") if not merged.get(k)]
    if missing:
        raise ValueError(f"missing K2V connection settings: {', '.join(missing)}")
    return ConnectionSettings(
        normalize_endpoint(merged["endpoint"]),
        merged["region"],
        merged["access_key_id"],
        merged["secret_access_key"],
        check_bucket(merged["bucket"]),
    )
