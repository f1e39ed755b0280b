"""CallBatcher: one call per node and loop turn, each submitter gets its own slice."""

from __future__ import annotations

import asyncio

import pytest

from garagekv.rpc.batching import CallBatcher, forward_outcome


class Recorder:
    def __init__(self, fail_for: set[str] | None = None, answer: bool = True) -> None:
        self.calls: list[tuple[str, list[bytes]]] = []
        self.fail_for = fail_for or set()
        self.answer = answer
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, node: str, items: list[bytes]) -> list[bytes] | None:
        self.calls.append((node, list(items)))
        await self.release.wait()
        if node in self.fail_for:
            raise RuntimeError(f"{node} is down")
        return [b"r:" + i for i in items] if self.answer else None


async def test_same_turn_submissions_share_one_call_per_node():
    rec = Recorder()
    b = CallBatcher(rec)
    results = await asyncio.gather(
        b.submit("a", [b"1"]),
        b.submit("a", [b"2", b"3"]),
        b.submit("b", [b"4"]),
        b.submit("a", [b"5"]),
    )
    assert sorted(rec.calls) == [("a", [b"1", b"2", b"3", b"5"]), ("b", [b"4"])]
    assert results == [[b"r:1"], [b"r:2", b"r:3"], [b"r:4"], [b"r:5"]]


async def test_later_turns_get_their_own_call():
    rec = Recorder(answer=False)
    b = CallBatcher(rec)
    assert await b.submit("a", [b"1"]) is None
    assert await b.submit("a", [b"2"]) is None
    assert rec.calls == [("a", [b"1"]), ("a", [b"2"])]


async def test_a_full_batch_is_closed_and_a_new_one_opened():
    rec = Recorder()
    b = CallBatcher(rec, max_bytes=4)
    await asyncio.gather(*(b.submit("a", [b"xx"]) for _ in range(5)))
    assert [len(items) for _, items in rec.calls] == [2, 2, 1]


async def test_a_big_submission_travels_alone():
    rec = Recorder()
    b = CallBatcher(rec, max_bytes=4)
    await asyncio.gather(b.submit("a", [b"x"]), b.submit("a", [b"yyyyyy"]), b.submit("a", [b"z"]))
    assert [items for _, items in rec.calls] == [[b"x"], [b"yyyyyy"], [b"z"]]


async def test_a_failed_call_fails_its_submitters_only():
    rec = Recorder(fail_for={"b"})
    b = CallBatcher(rec)
    ok, bad1, bad2 = await asyncio.gather(
        b.submit("a", [b"1"]),
        b.submit("b", [b"2"]),
        b.submit("b", [b"3"]),
        return_exceptions=True,
    )
    assert ok == [b"r:1"]
    assert isinstance(bad1, RuntimeError) and isinstance(bad2, RuntimeError)


async def test_a_cancelled_submitter_leaves_the_shared_call_running():
    rec = Recorder()
    rec.release.clear()
    b = CallBatcher(rec)
    first = asyncio.ensure_future(b.submit("a", [b"1"]))
    second = asyncio.ensure_future(b.submit("a", [b"2"]))
    await asyncio.sleep(0.01)
    assert b.in_flight() == 1
    first.cancel()
    rec.release.set()
    assert await second == [b"r:2"]
    with pytest.raises(asyncio.CancelledError):
        await first
    assert rec.calls == [("a", [b"1", b"2"])]


async def test_item_futures_get_their_own_answer_and_share_the_call():
    rec = Recorder()
    b = CallBatcher(rec)
    f1, f2 = b.item_future("a", b"1"), b.item_future("a", b"2")
    assert await f2 == b"r:2" and await f1 == b"r:1"
    assert rec.calls == [("a", [b"1", b"2"])]


async def test_item_futures_fail_together_and_can_be_dropped():
    rec = Recorder(fail_for={"a"})
    b = CallBatcher(rec)
    kept, dropped = b.item_future("a", b"1"), b.item_future("a", b"2")
    with pytest.raises(RuntimeError, match="a is down"):
        await kept
    await asyncio.sleep(0)
    assert dropped.done()  # failed too, already marked as seen: no warning when nobody awaits it


async def test_a_submission_over_the_limit_is_split_never_sent_whole():
    """Many entries for one replica (or a few big ones) go out as several calls under the limit."""
    rec = Recorder()
    b = CallBatcher(rec, max_bytes=4)
    items = [b"aa", b"bb", b"cc", b"dddddd", b"e"]
    assert await b.submit("a", items) == [b"r:" + i for i in items]
    assert [c for _, c in rec.calls] == [[b"aa", b"bb"], [b"cc"], [b"dddddd"], [b"e"]]
    assert all(sum(map(len, c)) <= 4 for _, c in rec.calls if len(c) > 1)


async def test_a_split_submission_shares_calls_with_others():
    rec = Recorder()
    b = CallBatcher(rec, max_bytes=4)
    small, big = await asyncio.gather(b.submit("a", [b"x"]), b.submit("a", [b"yy", b"zz", b"w"]))
    assert small == [b"r:x"] and big == [b"r:yy", b"r:zz", b"r:w"]
    assert [c for _, c in rec.calls] == [[b"x", b"yy"], [b"zz", b"w"]]


async def test_a_split_update_future_waits_for_every_call_and_fails_with_any():
    rec = Recorder(answer=False)
    b = CallBatcher(rec, max_bytes=4)
    fut = b.future("a", [b"aaa", b"bbb", b"ccc"])
    assert await fut == [None, None, None] and len(rec.calls) == 3

    class FailSecond(Recorder):
        async def __call__(self, node, items):
            if b"bbb" in items:
                raise RuntimeError("second call failed")
            return await super().__call__(node, items)

    b = CallBatcher(FailSecond(answer=False), max_bytes=4)
    with pytest.raises(RuntimeError, match="second call failed"):
        await b.future("a", [b"aaa", b"bbb", b"ccc"])
    with pytest.raises(RuntimeError, match="second call failed"):
        await b.submit("a", [b"aaa", b"bbb", b"ccc"])


async def test_forward_outcome_settles_once_and_marks_failures_seen():
    """The one helper behind the batcher's and the table's futures: cancellation, failure and
    result pass on; a result goes through ``on_result`` when given; a settled target is left alone."""
    loop = asyncio.get_running_loop()
    src, out = loop.create_future(), loop.create_future()
    forward_outcome(src, out)
    src.set_result(3)
    await asyncio.sleep(0)
    assert out.result() == 3

    src, out = loop.create_future(), loop.create_future()
    forward_outcome(src, out, lambda r: out.set_result(r * 2))
    src.set_result(3)
    await asyncio.sleep(0)
    assert out.result() == 6

    src, out = loop.create_future(), loop.create_future()
    forward_outcome(src, out)
    src.cancel()
    await asyncio.sleep(0)
    assert out.cancelled()

    src, out = loop.create_future(), loop.create_future()
    forward_outcome(src, out)
    src.set_exception(RuntimeError("down"))
    await asyncio.sleep(0)
    assert out.done() and out._log_traceback is False  # seen: no "never retrieved" warning
    with pytest.raises(RuntimeError, match="down"):
        out.result()

    src, out = loop.create_future(), loop.create_future()
    out.set_result("first")
    forward_outcome(src, out, lambda r: out.set_result(r))  # would raise InvalidStateError
    src.set_result("second")
    await asyncio.sleep(0)
    assert out.result() == "first"
