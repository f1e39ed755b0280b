"""In-process consensus clusters for the unit tests: real acceptors on real LMDB environments
(fsync off), connected by a fake transport that round-trips every message through msgpack.

Shared by the consensus unit tests (``tests/unit/test_consensus_*.py``); ``settle`` waits for the
commits that outlived their round."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from garagekv.consensus import Acceptor, ConsensusMetrics, Decision, Proposer
from garagekv.consensus.acceptor import BATCH
from garagekv.consensus.proposer import background_tasks
from garagekv.db.env import Database
from garagekv.db.writer import GroupCommitWriter, WriteTxn
from garagekv.net.errors import NetError
from garagekv.rpc.endpoint import EndpointRegistry
from garagekv.util import codec
from garagekv.util.errors import GarageKVError

REGISTER_TREE = "test:register"


def node_id(i: int) -> bytes:
    return bytes([i + 1]) * 32


def key_of(partition: int, name: bytes = b"pk") -> bytes:
    """A consensus key: 32-byte ring hash (first byte = partition) then a name."""
    return bytes([partition]) + b"\x00" * 31 + name


def encode_register(version: int, value: int) -> bytes:
    return codec.encode_lists([version, value])


def decode_register(raw: bytes | None) -> tuple[int, int]:
    if raw is None:
        return 0, 0
    version, value = codec.decode(raw)
    return int(version), int(value)


class RegisterMachine:
    """Each read key holds a versioned register ``[version, value]``; merge keeps the highest."""

    def __init__(self, db: Database | None = None) -> None:
        self.tree = None if db is None else db.tree(REGISTER_TREE)

    def read_in(self, tx: WriteTxn, key: bytes, read_keys: Sequence[bytes]) -> list[bytes | None]:
        tree = self.tree
        out: list[bytes | None] = []
        for rk in read_keys:
            raw = tx.get(tree, key + b"/" + rk)
            out.append(None if raw is None else bytes(raw))
        return out

    def merge(self, read_key: bytes, states: Sequence[bytes | None]) -> bytes | None:
        present = [s for s in states if s is not None]
        return max(present, key=decode_register) if present else None

    def apply_in(self, tx: WriteTxn, key: bytes, update: bytes) -> None:
        tree = self.tree
        for rk, state in codec.decode(update):
            old = tx.get(tree, key + b"/" + rk)
            merged = self.merge(rk, [None if old is None else bytes(old), state])
            assert merged is not None
            tx.put(tree, key + b"/" + rk, merged)


def increment(rk: bytes = b"x") -> Callable[[Any], Decision[int]]:
    """A compare-and-set increment of register ``rk``: returns the version it wrote."""

    def decide(merged: Any) -> Decision[int]:
        version, value = decode_register(merged[rk])
        update = codec.encode_lists([[rk, encode_register(version + 1, value + 1)]])
        return Decision(update, version + 1)

    return decide


def increment_once(op: bytes, rk: bytes = b"x") -> Callable[[Any], Decision[int]]:
    """``increment`` that applies at most once however many attempts it takes: it also writes
    the register ``op`` (read key) with the version it wrote, and an attempt that finds it there
    (an earlier attempt of the operation was completed by some round after it lost its ballot)
    returns that version instead of incrementing again — what the K2V adapter does with its dots.
    Run it with read keys ``[rk, op]``."""

    def decide(merged: Any) -> Decision[int]:
        done, _ = decode_register(merged[op])
        if done:
            return Decision(None, done)
        version, value = decode_register(merged[rk])
        mine = encode_register(version + 1, value + 1)
        return Decision(codec.encode_lists([[rk, mine], [op, encode_register(version + 1, 0)]]), version + 1)

    return decide


def read(rk: bytes = b"x") -> Callable[[Any], Decision[tuple[int, int]]]:
    def decide(merged: Any) -> Decision[tuple[int, int]]:
        return Decision(None, decode_register(merged[rk]))

    return decide


class Node:
    def __init__(self, path: Path, i: int, *, fsync: bool = False, machine: type = RegisterMachine) -> None:
        self.id = node_id(i)
        self.path = path
        self.db = Database(path, fsync=fsync, map_size=1 << 26)
        self.writer = GroupCommitWriter(self.db)
        self.metrics = ConsensusMetrics()
        self.acceptor = Acceptor(self.db, self.writer, machine(self.db), self.metrics)
        self.registry = EndpointRegistry()
        self.acceptor.register(self.registry)

    def register_value(self, key: bytes, rk: bytes = b"x") -> tuple[int, int]:
        with self.db.read() as txn:
            return decode_register(txn.get(key + b"/" + rk, db=self.db.tree(REGISTER_TREE)))

    def close(self) -> None:
        self.writer.close()
        self.db.close()


class FakeTransport:
    """Delivers calls to the nodes' registries. ``down`` nodes fail at once, ``hung`` ones never
    answer, ``drop(path, node, body)`` makes calls fail; ``before`` runs before each delivery."""

    def __init__(self, nodes: dict[bytes, Node]) -> None:
        self.nodes = nodes
        self.down: set[bytes] = set()
        self.hung: set[bytes] = set()
        self.drop: Callable[..., bool] = lambda path, node, body=None: False
        self.before: Callable[[str, bytes], Awaitable[None]] | None = None
        #: After the node handled the call: lose its answer (the effect stays).
        self.drop_reply: Callable[[str, bytes], bool] = lambda path, node: False
        #: Seconds to wait before delivering a call and before returning its answer.
        self.delay: Callable[[], float] = lambda: 0.0
        self.calls: list[tuple[str, bytes]] = []
        #: When each node last answered (``last_heard``, as a connection records any frame).
        self.heard: dict[bytes, float] = {}

    def last_heard(self, node: bytes) -> float:
        return self.heard.get(node, float("-inf"))

    async def call(self, node: bytes, path: str, body: Any, timeout: float | None = None) -> Any:
        if path == BATCH:
            # Deliver a batch's messages one by one, so faults and ``calls`` see each of them.
            async def one(raw: bytes) -> list[Any]:
                inner_path, inner_body = codec.decode(raw)
                try:
                    return [True, await self.call(node, inner_path, inner_body, timeout)]
                except GarageKVError as e:
                    return [False, {"code": e.code, "message": e.message}]

            return list(await asyncio.gather(*(one(raw) for raw in body)))
        self.calls.append((path, node))
        if self.before is not None:
            await self.before(path, node)
        if node in self.down or self.drop(path, node, body):
            raise NetError(f"node {node[:4].hex()} unreachable")
        if node in self.hung:
            await asyncio.Event().wait()
        if (d := self.delay()) > 0:
            await asyncio.sleep(d)
        reply = await self.nodes[node].registry.dispatch(b"\x00" * 32, path, codec.decode(codec.encode(body)))
        if self.drop_reply(path, node):
            raise NetError(f"connection to {node[:4].hex()} lost")
        if (d := self.delay()) > 0:
            await asyncio.sleep(d)
        self.heard[node] = time.monotonic()
        return codec.decode(codec.encode(reply))


class StaticPlacement:
    def __init__(self, me: bytes, sets: list[list[bytes]]) -> None:
        self._me = me
        self.sets = sets
        self.locked = 0
        self.epoch = 0

    def layout_version(self) -> int:
        return self.epoch

    @property
    def node_id(self) -> bytes:
        return self._me

    def write_sets(self, h32: bytes) -> list[list[bytes]]:
        return self.sets

    def storage_nodes(self, h32: bytes) -> list[bytes]:
        return sorted({n for s in self.sets for n in s})

    @contextlib.contextmanager
    def write_lock(self) -> Iterator[None]:
        self.locked += 1
        try:
            yield
        finally:
            self.locked -= 1


class Cluster:
    def __init__(self, root: Path, n: int, machine: type = RegisterMachine) -> None:
        self.machine = machine
        self.nodes = [Node(root / f"n{i}", i, machine=machine) for i in range(n)]
        self.by_id = {node.id: node for node in self.nodes}
        self.transport = FakeTransport(self.by_id)

    def ids(self, *indexes: int) -> list[bytes]:
        return [self.nodes[i].id for i in indexes]

    def proposer(self, i: int, sets: list[list[bytes]] | None = None, timeout: float = 10.0) -> Proposer:
        placement = StaticPlacement(self.nodes[i].id, sets or [self.ids(*range(len(self.nodes)))])
        return Proposer(placement, self.transport, self.machine(), timeout=timeout)

    def close(self) -> None:
        for node in self.nodes:
            node.close()


async def settle() -> None:
    """Let commits that outlived their round finish (they go to every storage node)."""
    while background_tasks():
        await asyncio.wait(background_tasks())
