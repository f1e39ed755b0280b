"""In-process subscriptions that wake PollItem, PollRange and PollRanges when an item changes locally.

Notifications are sent after the transaction that changed the item has committed, for every
local change (client inserts, replication, repair), so a woken poller always reads what woke it.
A waiter is a plain future; a slow or departed poller can never make a write fail. One
subscription may watch several partitions (all those of one PollRanges call on this node): it is
registered under each of them, and a write to any of them wakes its single waiter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from garagekv.model.k2v.item import K2VItem


class Subscription:
    """Collects the items that changed since it was opened; ``wait`` blocks until there is one."""

    __slots__ = ("_event", "changed")

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.changed: list[K2VItem] = []

    def push(self, item: K2VItem) -> None:
        self.changed.append(item)
        self._event.set()

    async def wait(self) -> list[K2VItem]:
        await self._event.wait()
        self._event.clear()
        items, self.changed = self.changed, []
        return items


class SubscriptionManager:
    def __init__(self) -> None:
        self._items: dict[bytes, set[Subscription]] = {}
        self._partitions: dict[bytes, set[Subscription]] = {}
        self._open = 0  # subscriptions open (one may be registered under several partitions)

    @contextmanager
    def item(self, tree_key: bytes) -> Iterator[Subscription]:
        with self._subscribed(self._items, (tree_key,)) as sub:
            yield sub

    @contextmanager
    def partitions(self, partition_hashes: Iterable[bytes]) -> Iterator[Subscription]:
        """One subscription woken by a change in any of ``partition_hashes``."""
        with self._subscribed(self._partitions, set(partition_hashes)) as sub:
            yield sub

    def notify(self, item: K2VItem) -> None:
        for sub in self._items.get(item.tree_key(), ()):
            sub.push(item)
        for sub in self._partitions.get(item.partition_hash(), ()):
            sub.push(item)

    def count(self) -> int:
        """Subscriptions open: one per local PollItem, PollRange or PollRanges poll."""
        return self._open

    @contextmanager
    def _subscribed(self, registry: dict[bytes, set[Subscription]], keys: Iterable[bytes]) -> Iterator[Subscription]:
        sub = Subscription()
        keys = tuple(keys)  # iterated again on the way out
        for key in keys:
            registry.setdefault(key, set()).add(sub)
        self._open += 1
        try:
            yield sub
        finally:
            self._open -= 1
            for key in keys:
                subs = registry.get(key)
                if subs is not None:
                    subs.discard(sub)
                    if not subs:
                        del registry[key]
