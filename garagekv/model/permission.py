"""Per-(bucket, key) permissions, stored on both sides and merged most-restrictive on ties."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

K = TypeVar("K")  # buckets key their map by key id (str), keys theirs by bucket id (bytes)


@dataclass
class BucketKeyPerm:
    timestamp: int
    allow_read: bool = False
    allow_write: bool = False
    allow_owner: bool = False

    def merge(self, other: BucketKeyPerm) -> None:
        if other.timestamp > self.timestamp:
            self.timestamp = other.timestamp
            self.allow_read, self.allow_write, self.allow_owner = (
                other.allow_read,
                other.allow_write,
                other.allow_owner,
            )
        elif other.timestamp == self.timestamp:
            self.allow_read &= other.allow_read
            self.allow_write &= other.allow_write
            self.allow_owner &= other.allow_owner

    def is_any(self) -> bool:
        return self.allow_read or self.allow_write or self.allow_owner

    def flags(self) -> str:
        return (
            ("R" if self.allow_read else " ") + ("W" if self.allow_write else " ") + ("O" if self.allow_owner else " ")
        )

    def to_wire(self) -> list[Any]:
        return [self.timestamp, self.allow_read, self.allow_write, self.allow_owner]

    @classmethod
    def from_wire(cls, w: list[Any]) -> BucketKeyPerm:
        return cls(int(w[0]), bool(w[1]), bool(w[2]), bool(w[3]))


def merge_perm_maps(mine: dict[K, BucketKeyPerm], other: dict[K, BucketKeyPerm]) -> None:
    for k, p in other.items():
        if k in mine:
            mine[k].merge(p)
        else:
            mine[k] = BucketKeyPerm(p.timestamp, p.allow_read, p.allow_write, p.allow_owner)
