"""Endpoint name -> handler; the only module that imports the handlers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from garagekv.api import routing as ep
from garagekv.api.context import RequestContext
from garagekv.api.handlers import batch, index, item, poll_range, poll_ranges, txn

Handler = Callable[[RequestContext], Awaitable[web.StreamResponse]]

HANDLERS: dict[str, Handler] = {
    ep.READ_ITEM: item.read_item,
    ep.INSERT_ITEM: item.insert_item,
    ep.DELETE_ITEM: item.delete_item,
    ep.POLL_ITEM: item.poll_item,
    ep.READ_INDEX: index.read_index,
    ep.INSERT_BATCH: batch.insert_batch,
    ep.READ_BATCH: batch.read_batch,
    ep.DELETE_BATCH: batch.delete_batch,
    ep.POLL_RANGE: poll_range.poll_range,
    ep.POLL_RANGES: poll_ranges.poll_ranges,
    ep.TXN: txn.txn,
}
