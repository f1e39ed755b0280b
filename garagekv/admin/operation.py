"""One operator command: a name, its declared arguments, and what it does on the node.

The CLI (over the cluster RPC) and the admin HTTP API send a command as a name and a map of
arguments. Each :class:`Op` declares its arguments as a dataclass; the map is checked against it
once, here (unknown, missing and ill-typed fields are an :class:`AdminError`, a 400), so the
operation itself receives typed values. Every operation receives the same :class:`OpServices`:
the running node (``garagekv.server.Node`` provides it).

Argument types understood: ``str``, ``int``, ``bool``, ``Any``, ``list[T]``, ``dict[str, T]``
and unions of them (``T | None`` is optional). ``None`` on the wire is the same as absent, so a
front end may send every field it knows; a field without a default and not accepting ``None``
is required.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from garagekv.db.env import Database
from garagekv.db.snapshot import Snapshotter
from garagekv.db.writer import GroupCommitWriter
from garagekv.model.model import Model
from garagekv.rpc.system import System
from garagekv.util.config import Config
from garagekv.util.errors import AdminError


class OpServices(Protocol):
    """What operations see of the running node."""

    config: Config
    db: Database
    writer: GroupCommitWriter
    system: System
    model: Model
    snapshotter: Snapshotter

    def info(self) -> dict[str, Any]:
        """The node's identity and endpoints (``node.info``)."""
        ...


@dataclass(frozen=True)
class NoArgs:
    """The arguments of an operation that takes none."""


A = TypeVar("A")
T = TypeVar("T")


class MissingArgument(Exception):
    """Raised by :func:`required` inside an operation; :class:`Op` reports it with its name."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def required(value: T | None, name: str) -> T:
    """``value``, which must be set: for arguments that are required only in some forms of a
    command (a key named by ``pattern`` or by ``id``)."""
    if value is None:
        raise MissingArgument(name)
    return value


@dataclass(frozen=True)
class Op(Generic[A]):
    """An operator command: ``await op(services, wire_args)`` validates, then runs it."""

    name: str
    args: type[A]
    run: Callable[[OpServices, A], Awaitable[Any]]

    def parse(self, wire: Any) -> A:
        """The declared arguments from the wire map, or an AdminError naming the bad field."""
        if wire is None:
            wire = {}
        if not isinstance(wire, Mapping):
            raise AdminError(f"the arguments of {self.name} must be a map, not {_type_name(wire)}")
        fields = _fields(self.args)
        unknown = sorted(str(k) for k in wire if k not in fields)
        if unknown:
            raise AdminError(f"unknown argument {unknown[0]!r} for {self.name}")
        values = {}
        for name, (hint, has_default) in fields.items():
            value = wire.get(name)
            if value is None:
                if has_default:
                    continue
                if not _accepts(hint, None):
                    raise AdminError(f"missing argument {name!r} for {self.name}")
            elif not _accepts(hint, value):
                raise AdminError(
                    f"invalid argument {name!r} for {self.name}: expected {_describe(hint)}, got {_type_name(value)}"
                )
            values[name] = value
        return self.args(**values)

    async def __call__(self, services: OpServices, wire: Any = None) -> Any:
        args = self.parse(wire)
        try:
            return await self.run(services, args)
        except MissingArgument as e:
            raise AdminError(f"missing argument {e.name!r} for {self.name}") from None


def registry(*groups: tuple[Op[Any], ...]) -> dict[str, Op[Any]]:
    """Name -> operation over ``groups``; a name defined twice is a programming error."""
    out: dict[str, Op[Any]] = {}
    for group in groups:
        for op in group:
            if op.name in out:
                raise ValueError(f"operation {op.name!r} is defined twice")
            out[op.name] = op
    return out


# ---- argument checking --------------------------------------------------------------------------


_FIELDS: dict[type, dict[str, tuple[Any, bool]]] = {}


def _fields(cls: type) -> dict[str, tuple[Any, bool]]:
    """Field name -> (resolved type hint, has a default) of an argument dataclass (cached)."""
    out = _FIELDS.get(cls)
    if out is None:
        hints = typing.get_type_hints(cls)
        out = {}
        for f in dataclasses.fields(cls):
            has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            out[f.name] = (hints[f.name], has_default)
        _FIELDS[cls] = out
    return out


def _accepts(hint: Any, value: Any) -> bool:
    if hint is Any:
        return True
    if hint is None or hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(h, value) for h in typing.get_args(hint))
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and all(_accepts(item, v) for v in value)
    if origin is dict:
        key, item = typing.get_args(hint) or (Any, Any)
        return isinstance(value, dict) and all(_accepts(key, k) and _accepts(item, v) for k, v in value.items())
    if hint is bool:
        return isinstance(value, bool)
    if hint in (int, float):
        return isinstance(value, hint) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    if hint is Any:
        return "any value"
    if hint is None or hint is type(None):
        return "null"
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return "a list" if item is Any else f"a list of {_describe(item)}"
    if origin is dict:
        return "a map"
    return {str: "a string", int: "an integer", bool: "a boolean", float: "a number"}.get(hint, str(hint.__name__))


def _type_name(value: Any) -> str:
    return _describe(type(value)) if type(value) in (str, int, bool, float) else type(value).__name__
