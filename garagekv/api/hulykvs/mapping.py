"""Where a Hulykvs key lives in K2V: ``(workspace, namespace, key)`` -> (partition key, sort key).

The partition key is ``"<workspace>/<namespace>"`` with the workspace in canonical UUID form (so
every spelling of a workspace names the same partition) and the sort key is the key itself; one
namespace is one K2V partition, which is what makes listing it a single range scan.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from garagekv.api.hulykvs.errors import bad_request
from garagekv.util.config import MAX_KEY_BYTES, canonical_uuid


def partition_key(workspace: str, namespace: str) -> str:
    return f"{workspace}/{namespace}"


def decode_segment(raw: str, what: str) -> str:
    """A percent-decoded path segment (or query value); invalid UTF-8 is a 400."""
    try:
        return unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request(f"the {what} is not valid UTF-8 once percent-decoded")


def workspace_of(raw: str) -> str:
    """The canonical workspace UUID of a path segment (400 if it is not a UUID)."""
    ws = canonical_uuid(decode_segment(raw, "workspace"))
    if ws is None:
        raise bad_request(f"invalid UUID in workspace: {raw!r}")
    return ws


def check_sizes(workspace: str, namespace: str, key: str | None, max_key_bytes: int = MAX_KEY_BYTES) -> None:
    """Refuse namespaces and keys that do not fit in a K2V partition key / sort key."""
    pk = len(partition_key(workspace, namespace).encode())
    if pk > max_key_bytes:
        raise bad_request(
            f"namespace is {len(namespace.encode())} bytes of UTF-8, over the limit of "
            f"{max_key_bytes - len(workspace) - 1}"
        )
    if key is not None and len(key.encode()) > max_key_bytes:
        raise bad_request(f"key is {len(key.encode())} bytes of UTF-8, over the limit of {max_key_bytes}")
