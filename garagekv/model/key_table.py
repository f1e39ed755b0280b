"""Access keys (full-copy table ``key``): id, immutable secret, name, permissions, local aliases.

A deleted key stays as a tombstone forever, so its id can never be re-imported and a stale
replica can never resurrect it.
"""

from __future__ import annotations

import re
import secrets as _secrets
from dataclasses import dataclass, field
from typing import Any

from garagekv.model.permission import BucketKeyPerm, merge_perm_maps
from garagekv.table.schema import BaseSchema
from garagekv.table.table import EMPTY_PARTITION
from garagekv.util.crdt import DeletableEntry, Lww, LwwMap

KEY_ID_RE = re.compile(r"\AGK[0-9a-f]{24}\Z")  # \Z: "$" would also take a trailing newline
SECRET_RE = re.compile(r"\A[0-9a-f]{64}\Z")


@dataclass
class KeyParams:
    secret_key: str = field(repr=False)  # never in a repr, so never in a log line
    name: Lww[str]
    allow_create_bucket: Lww[bool]
    authorized_buckets: dict[bytes, BucketKeyPerm] = field(default_factory=dict)
    local_aliases: LwwMap[bytes | None] = field(default_factory=LwwMap)

    def merge(self, other: KeyParams) -> None:
        self.name.merge(other.name)
        self.allow_create_bucket.merge(other.allow_create_bucket)
        merge_perm_maps(self.authorized_buckets, other.authorized_buckets)
        self.local_aliases.merge(other.local_aliases)

    def to_wire(self) -> dict[str, Any]:
        return {
            "secret": self.secret_key,
            "name": self.name.to_wire(),
            "create": self.allow_create_bucket.to_wire(),
            "buckets": {k: v.to_wire() for k, v in self.authorized_buckets.items()},
            "aliases": self.local_aliases.to_wire(),
        }

    @classmethod
    def from_wire(cls, p: dict[str, Any]) -> KeyParams:
        return cls(
            p["secret"],
            Lww.from_wire(p["name"]),
            Lww.from_wire(p["create"]),
            {k: BucketKeyPerm.from_wire(v) for k, v in p["buckets"].items()},
            LwwMap.from_wire(p["aliases"]),
        )


@dataclass
class Key(DeletableEntry[KeyParams]):
    """An access key; ``params`` None once deleted (merge, encode and decode: DeletableEntry)."""

    key_id: str
    params: KeyParams | None

    params_type = KeyParams

    @classmethod
    def new(cls, name: str) -> Key:
        key_id = "GK" + _secrets.token_hex(12)
        return cls.imported(key_id, _secrets.token_hex(32), name)

    @classmethod
    def imported(cls, key_id: str, secret: str, name: str) -> Key:
        return cls(key_id, KeyParams(secret, Lww.new(name), Lww.new(False)))

    def bucket_permissions(self, bucket_id: bytes) -> BucketKeyPerm:
        if self.params is None:
            return BucketKeyPerm(0)
        return self.params.authorized_buckets.get(bucket_id) or BucketKeyPerm(0)

    # ---- table entry ---------------------------------------------------------------------------

    def tree_key(self) -> bytes:
        return EMPTY_PARTITION + self.key_id.encode()

    def entry_id(self) -> str:
        return self.key_id


class KeySchema(BaseSchema):
    name = "key"

    def decode(self, data: bytes) -> Key:
        return Key.decode(data)
