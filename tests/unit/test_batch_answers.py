"""Batches of whole messages (rpc/batching.py ``answer_each``): one answer per message in order,
errors in their own slot, and answers past the batch's byte budget held for their caller."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from garagekv.rpc.batching import HeldAnswers, answer_each, resolve_held, unwrap_answer
from garagekv.rpc.messages import MalformedMessage
from garagekv.util import codec
from garagekv.util.errors import BadRequest, EntityTooLarge, ServiceUnavailable


async def handle(msg: Any) -> Any:
    if msg == "bad":
        raise BadRequest("no")
    if msg == "boom":
        raise RuntimeError("boom")
    return b"x" * msg if isinstance(msg, int) else msg


async def test_each_message_gets_its_own_answer_or_error():
    held = HeldAnswers()
    items = [codec.encode("a"), codec.encode("bad"), b"\xc1", codec.encode("boom"), codec.encode(3)]
    answers = await answer_each("test batch", items, handle, 16, held)
    assert answers[0] == [True, "a"] and answers[4] == [True, b"xxx"]
    assert answers[1] == [False, {"code": "InvalidRequest", "message": "no"}]
    assert answers[2][0] is False and answers[2][1]["code"] == "InvalidRequest"
    assert answers[3][0] is False and answers[3][1]["code"] == "InternalError"
    with pytest.raises(BadRequest):
        unwrap_answer(answers[1])
    with pytest.raises(MalformedMessage):
        await answer_each("test batch", "not a list", handle, 16, held)
    with pytest.raises(MalformedMessage):
        await answer_each("test batch", [codec.encode("a")] * 17, handle, 16, held)
    assert len(held) == 0


async def test_answers_past_the_budget_are_held_and_fetched_once():
    """Three answers of 400 bytes under a 1,000-byte budget: the first two travel, the third is
    held (it was computed: it must not be lost, nor the message run again) and fetched alone."""
    held = HeldAnswers()
    answers = await answer_each("test batch", [codec.encode(400)] * 3, handle, 16, held, max_bytes=1000)
    assert answers[0] == answers[1] == [True, b"x" * 400]
    assert answers[2][0] is None and len(held) == 1
    fetched: list[Any] = []

    async def fetch(token: Any) -> Any:
        fetched.append(token)
        return held.take(token)

    loop = asyncio.get_running_loop()
    outs = []
    for a in answers:
        f = loop.create_future()
        f.set_result(a)
        outs.append(resolve_held(f, fetch))
    assert [unwrap_answer(await o) for o in outs] == [b"x" * 400] * 3
    assert len(fetched) == 1 and len(held) == 0
    with pytest.raises(ServiceUnavailable):
        held.take(fetched[0])  # fetched once only


async def test_a_single_answer_is_never_held_and_unfetched_ones_expire():
    held = HeldAnswers(ttl=0.0)
    (only,) = await answer_each("test batch", [codec.encode(5000)], handle, 16, held, max_bytes=1000)
    assert only == [True, b"x" * 5000]
    token = held.hold("late")
    await asyncio.sleep(0.01)
    held.hold("next")  # holding cleans the expired ones up
    with pytest.raises(ServiceUnavailable):
        held.take(token)


async def test_a_failed_fetch_fails_the_answer():
    loop = asyncio.get_running_loop()
    f = loop.create_future()
    f.set_result([None, 7])

    async def fetch(token: Any) -> Any:
        raise EntityTooLarge("still too big")

    with pytest.raises(EntityTooLarge):
        await resolve_held(f, fetch)
