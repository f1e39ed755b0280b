"""What the layer above supplies: the state a round reads and how a decision is stored.

The consensus layer moves opaque bytes; a ``StateMachine`` gives them meaning. For K2V
(docs/consensus.md, "The K2V adapter"), a read key is a sort key, a state is an encoded item,
``merge`` is the DVVS merge and an update is a list of items to merge into the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from garagekv.db.writer import TxnReader, WriteTxn

T_co = TypeVar("T_co", covariant=True)


class StateMachine(Protocol):
    def read_in(self, tx: TxnReader, key: bytes, read_keys: Sequence[bytes]) -> list[bytes | None]:
        """The local state of each read key of ``key`` (``None``: absent), read inside the
        transaction that records the promise (so it is exactly the state promised upon), or in
        the snapshot of a held ballot's Read (docs/consensus.md §3b). Runs on the writer thread
        or the event loop: no asyncio, nothing beyond LMDB reads."""
        ...

    def merge(self, read_key: bytes, states: Sequence[bytes | None]) -> bytes | None:
        """Merge the states of one read key answered by the replicas of a quorum; must be
        commutative, associative and idempotent (a join), ``None`` being the identity."""
        ...

    def apply_in(self, tx: WriteTxn, key: bytes, update: bytes) -> None:
        """Merge a committed update into the local store, in the transaction that records the
        commit's ballot. Must be idempotent and commute with every other update (a commit may
        arrive twice, late, or after a newer one): a join, like the DVVS merge."""
        ...


@dataclass(frozen=True)
class Decision(Generic[T_co]):
    """What an operation decided: ``update`` to commit (``None``: write nothing, e.g. a false
    condition or a read) and ``result``, returned to the caller once the round succeeded."""

    update: bytes | None
    result: T_co
