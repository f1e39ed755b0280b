"""A max-register table entry keyed by (partition hash, key): the simplest CRDT, for table tests."""

from __future__ import annotations

from dataclasses import dataclass

from garagekv.table.schema import BaseSchema


@dataclass
class Reg:
    part: bytes
    key: bytes
    value: int

    def tree_key(self) -> bytes:
        return self.part + self.key

    def encode(self) -> bytes:
        return bytes([len(self.key)]) + self.part + self.key + str(self.value).encode()

    def merge(self, other: Reg) -> None:
        self.value = max(self.value, other.value)

    def is_tombstone(self) -> bool:
        return False


class RegSchema(BaseSchema):
    name = "reg"

    def decode(self, data: bytes) -> Reg:
        n = data[0]
        return Reg(data[1:33], data[33 : 33 + n], int(data[33 + n :]))
