"""In-process subscriptions that wake PollItem and PollRange when an item changes locally.

Notifications are sent after the transaction that changed the item has committed, for every
local change (client inserts, replication, repair), so a woken poller always reads what woke it.
A waiter is a plain future; a slow or departed poller can never make a write fail.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
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

    @contextmanager
    def item(self, tree_key: bytes) -> Iterator[Subscription]:
        with _subscribed(self._items, tree_key) as sub:
            yield sub

    @contextmanager
    def partition(self, partition_hash: bytes) -> Iterator[Subscription]:
        with _subscribed(self._partitions, partition_hash) as sub:
            yield sub

    def notify(self, item: K2VItem) -> None:
        for sub in self._items.get(item.tree_key(), ()):
            sub.push(item)
        for sub in self._partitions.get(item.partition_hash(), ()):
            sub.push(item)

    def count(self) -> int:
        return sum(len(s) for s in self._items.values()) + sum(len(s) for s in self._partitions.values())


@contextmanager
def _subscribed(registry: dict[bytes, set[Subscription]], key: bytes) -> Iterator[Subscription]:
    sub = Subscription()
    registry.setdefault(key, set()).add(sub)
    try:
        yield sub
    finally:
        subs = registry.get(key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del registry[key]
