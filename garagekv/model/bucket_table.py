"""Buckets (full-copy table ``bucket``) and global aliases (full-copy table ``bucket_alias``).

The alias table is authoritative for name -> bucket; the bucket mirrors its aliases and key
permissions so ``bucket info`` needs one read. Both are updated together by the helper.
"""

from __future__ import annotations

import ipaddress
import re
import secrets as _secrets
from dataclasses import dataclass, field
from typing import Any

from garagekv.model.permission import BucketKeyPerm, merge_perm_maps
from garagekv.table.schema import BaseSchema
from garagekv.table.table import EMPTY_PARTITION
from garagekv.util import codec
from garagekv.util.crdt import DeletableEntry, Lww, LwwMap
from garagekv.util.time import now_ms

FORMAT = b"\x01"
_NAME_RE = re.compile(r"\A[a-z0-9.-]+\Z")


def bucket_name_problem(name: str, allow_punycode: bool = False) -> str | None:
    """The S3 naming rule ``name`` breaks, or None for a valid name.

    AWS's rules, stricter than Garage's on one point: a name is dot-separated labels, each
    starting and ending with a letter or digit, so ``a..b`` and ``a.-b`` are refused as AWS does.
    """
    if not 3 <= len(name) <= 63:
        return f"must be 3 to 63 characters long (this one has {len(name)})"
    if not _NAME_RE.match(name):
        return "may contain only lowercase letters, digits, dots and hyphens"
    for label in name.split("."):
        if not label:
            return "may not contain two dots in a row, nor start or end with a dot"
        if label[0] == "-" or label[-1] == "-":
            return "each dot-separated part must start and end with a letter or digit"
    try:
        ipaddress.ip_address(name)
        return "may not be formatted as an IP address"
    except ValueError:
        pass
    if not allow_punycode and (name.startswith("xn--") or ".xn--" in name):
        return "may not start a part with xn-- (punycode names are off: allow_punycode)"
    if name.endswith("-s3alias"):
        return "may not end with -s3alias"
    return None


@dataclass
class BucketParams:
    creation_date: int
    authorized_keys: dict[str, BucketKeyPerm] = field(default_factory=dict)
    aliases: LwwMap[bool] = field(default_factory=LwwMap)
    # key "<key_id>:<alias>" -> present
    local_aliases: LwwMap[bool] = field(default_factory=LwwMap)

    def merge(self, other: BucketParams) -> None:
        self.creation_date = min(self.creation_date, other.creation_date)
        merge_perm_maps(self.authorized_keys, other.authorized_keys)
        self.aliases.merge(other.aliases)
        self.local_aliases.merge(other.local_aliases)

    def to_wire(self) -> dict[str, Any]:
        return {
            "created": self.creation_date,
            "keys": {k: v.to_wire() for k, v in self.authorized_keys.items()},
            "aliases": self.aliases.to_wire(),
            "local": self.local_aliases.to_wire(),
        }

    @classmethod
    def from_wire(cls, p: dict[str, Any]) -> BucketParams:
        return cls(
            p["created"],
            {k: BucketKeyPerm.from_wire(v) for k, v in p["keys"].items()},
            LwwMap.from_wire(p["aliases"]),
            LwwMap.from_wire(p["local"]),
        )


@dataclass
class Bucket(DeletableEntry[BucketParams]):
    """A bucket; ``params`` None once deleted (merge, encode and decode: DeletableEntry)."""

    id: bytes
    params: BucketParams | None

    params_type = BucketParams

    @classmethod
    def new(cls) -> Bucket:
        return cls(_secrets.token_bytes(32), BucketParams(now_ms()))

    def global_aliases(self) -> list[str]:
        return [] if self.params is None else [a for a, on in self.params.aliases.items() if on]

    def local_aliases(self) -> list[tuple[str, str]]:
        if self.params is None:
            return []
        return [tuple(k.split(":", 1)) for k, on in self.params.local_aliases.items() if on]

    def tree_key(self) -> bytes:
        return EMPTY_PARTITION + self.id

    def entry_id(self) -> bytes:
        return self.id


@dataclass
class BucketAlias:
    name: str
    state: Lww[bytes | None]

    def tree_key(self) -> bytes:
        return EMPTY_PARTITION + self.name.encode()

    def is_tombstone(self) -> bool:
        return self.state.value is None

    def merge(self, other: BucketAlias) -> None:
        self.state.merge(other.state)

    def encode(self) -> bytes:
        return FORMAT + codec.encode({"name": self.name, "s": self.state.to_wire()})

    @classmethod
    def decode(cls, data: bytes) -> BucketAlias:
        w = codec.decode(data[1:])
        return cls(w["name"], Lww.from_wire(w["s"]))


class BucketSchema(BaseSchema):
    name = "bucket"

    def decode(self, data: bytes) -> Bucket:
        return Bucket.decode(data)


class BucketAliasSchema(BaseSchema):
    name = "bucket_alias"

    def decode(self, data: bytes) -> BucketAlias:
        return BucketAlias.decode(data)
