"""Quorum helpers with fake async calls: ordering, fallback, early success and early failure."""

from __future__ import annotations

import asyncio

import pytest

from garagekv.rpc.quorum import (
    QuorumError,
    background_tasks,
    request_order,
    try_call_many,
    wait_read_quorum,
    wait_write_quorum,
)
from garagekv.util.errors import ServiceUnavailable


class Fake:
    """``call(node)``: sleeps ``delay[node]`` then fails if node is in ``fail``; records everything."""

    def __init__(self, delays: dict | None = None, fail: set | None = None) -> None:
        self.delays = delays or {}
        self.fail = fail or set()
        self.started: list = []
        self.finished: list = []
        self.cancelled: list = []

    async def __call__(self, node):
        self.started.append(node)
        try:
            await asyncio.sleep(self.delays.get(node, 0))
        except asyncio.CancelledError:
            self.cancelled.append(node)
            raise
        self.finished.append(node)
        if node in self.fail:
            raise ServiceUnavailable(f"{node} is down")
        return f"ok-{node}"


async def settle() -> None:
    await asyncio.gather(*background_tasks(), return_exceptions=True)


async def test_starts_only_quorum_and_returns_at_quorum():
    fake = Fake(delays={"c": 0.2})
    assert sorted(await try_call_many(fake, ["a", "b", "c"], 2)) == ["ok-a", "ok-b"]
    assert fake.started == ["a", "b"]


async def test_falls_back_on_error_in_order():
    fake = Fake(fail={"a"}, delays={"b": 0.01, "c": 0.02})
    assert sorted(await try_call_many(fake, ["a", "b", "c", "d"], 2)) == ["ok-b", "ok-c"]
    assert fake.started == ["a", "b", "c"]


async def test_send_all_at_once_leaves_the_rest_in_background():
    fake = Fake(delays={"c": 0.05})
    results = await try_call_many(fake, ["a", "b", "c"], 2, send_all_at_once=True)
    assert sorted(results) == ["ok-a", "ok-b"] and fake.started == ["a", "b", "c"]
    assert fake.finished == ["a", "b"]
    await settle()
    assert fake.finished == ["a", "b", "c"]


async def test_cancel_rest_cancels_stragglers():
    fake = Fake(delays={"c": 1})
    await try_call_many(fake, ["a", "b", "c"], 2, send_all_at_once=True, cancel_rest=True)
    await settle()
    assert fake.cancelled == ["c"]


async def test_fails_fast_with_garage_message():
    fake = Fake(fail={"a", "b"}, delays={"c": 5})
    with pytest.raises(QuorumError) as err:
        await try_call_many(fake, ["a", "b", "c"], 2, send_all_at_once=True)
    assert isinstance(err.value, ServiceUnavailable)
    message = str(err.value)
    assert message.startswith("Could not reach quorum of 2. 0 of 3 request succeeded, others returned errors: [")
    assert "a: a is down" in message and "b: b is down" in message
    assert "c" in fake.cancelled or "c" not in fake.finished  # did not wait for c
    for task in background_tasks():
        task.cancel()
    await settle()


async def test_not_enough_nodes():
    with pytest.raises(QuorumError, match="quorum of 3. 0 of 2"):
        await try_call_many(Fake(), ["a", "b"], 3)
    assert await try_call_many(Fake(), [], 0) == []


async def test_timeout_counts_as_error_and_next_node_starts():
    fake = Fake(delays={"a": 5})
    assert await try_call_many(fake, ["a", "b"], 1, timeout=0.05) == ["ok-b"]
    assert fake.cancelled == ["a"]
    with pytest.raises(QuorumError, match="Timeout"):
        await try_call_many(Fake(delays={"a": 5}), ["a"], 1, timeout=0.05)


async def test_node_ids_are_shown_as_short_hex():
    node = bytes(range(32))
    fake = Fake(fail={node})
    with pytest.raises(QuorumError, match="0001020304050607: "):
        await try_call_many(fake, [node], 1)


async def test_caller_cancellation_cancels_calls():
    fake = Fake(delays={"a": 5, "b": 5})
    task = asyncio.create_task(try_call_many(fake, ["a", "b"], 2))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await settle()
    assert sorted(fake.cancelled) == ["a", "b"]


def start_all(fake: Fake, nodes) -> dict:
    return {n: asyncio.ensure_future(fake(n)) for n in dict.fromkeys(nodes)}


async def test_write_sets_need_every_set():
    # Old layout {a,b,c}, new layout {c,d,e}: c counts for both.
    fake = Fake(delays={"a": 0.01, "c": 0.02, "d": 0.1, "e": 0.3, "b": 0.3})
    calls = start_all(fake, "abcde")
    results = await wait_write_quorum(calls, [["a", "b", "c"], ["c", "d", "e"]], 2)
    assert sorted(results) == ["ok-a", "ok-c", "ok-d"]
    assert "b" not in fake.finished and "e" not in fake.finished
    await asyncio.gather(*calls.values())
    assert sorted(fake.finished) == ["a", "b", "c", "d", "e"]  # nothing was cancelled


async def test_write_sets_fail_when_one_set_cannot_make_it():
    fake = Fake(fail={"d", "e"}, delays={"a": 1, "b": 1})
    calls = start_all(fake, "abcde")
    with pytest.raises(QuorumError) as err:
        await wait_write_quorum(calls, [["a", "b", "c"], ["c", "d", "e"]], 2)
    assert "(sets=2)" in str(err.value) and "d: d is down" in str(err.value)
    assert "a" not in fake.finished  # failed fast, without waiting for the slow nodes
    for t in calls.values():
        t.cancel()
    await asyncio.gather(*calls.values(), return_exceptions=True)


async def test_write_sets_edge_cases():
    with pytest.raises(QuorumError, match="fewer nodes"):
        await wait_write_quorum(start_all(Fake(), "a"), [["a"]], 2)
    assert await wait_write_quorum({}, [], 2) == []
    calls = start_all(Fake(), "ab")
    assert sorted(await wait_write_quorum(calls, [["a", "b"], ["a", "b"]], 2)) == ["ok-a", "ok-b"]


async def test_wait_write_quorum_on_running_calls_leaves_stragglers_alone():
    fake = Fake(delays={"a": 0.01, "b": 0.3, "c": 0.02})
    calls = {n: asyncio.ensure_future(fake(n)) for n in "abc"}
    assert sorted(await wait_write_quorum(calls, [["a", "b", "c"]], 2)) == ["ok-a", "ok-c"]
    assert not calls["b"].done() and not calls["b"].cancelled()
    assert await calls["b"] == "ok-b"


async def test_wait_write_quorum_counts_calls_already_finished():
    done = asyncio.get_running_loop().create_future()
    done.set_result("here")
    failed = asyncio.get_running_loop().create_future()
    failed.set_exception(ServiceUnavailable("down"))
    assert await wait_write_quorum({"a": done, "b": failed}, [["a", "b"]], 1) == ["here"]
    with pytest.raises(QuorumError, match="fewer nodes"):
        await wait_write_quorum({"a": done}, [["a"]], 2)


def test_request_order():
    zones = {"me": "z1", "x": "z2", "y": "z1", "z": "z2", "w": None}
    rtts = {"x": 0.001, "y": 0.5, "z": None, "w": 0.002}
    order = request_order(["z", "w", "x", "y", "me"], "me", zones.get, rtts.get)
    assert order == ["me", "y", "x", "w", "z"]
    # Without a zone for ourselves, RTT alone decides after ourselves.
    assert request_order(["x", "y", "me"], "me", lambda n: None, rtts.get) == ["me", "x", "y"]


async def test_wait_read_quorum_returns_at_quorum_and_fails_when_out_of_reach():
    fake = Fake(delays={"a": 0.01, "b": 0.5, "c": 0.02})
    calls = {n: asyncio.ensure_future(fake(n)) for n in "abc"}
    assert sorted(await wait_read_quorum(calls, 2)) == ["ok-a", "ok-c"]
    calls["b"].cancel()
    fake = Fake(fail={"b", "c"}, delays={"a": 1})
    calls = {n: asyncio.ensure_future(fake(n)) for n in "abc"}
    with pytest.raises(QuorumError) as err:
        await wait_read_quorum(calls, 2)
    assert err.value.operation == "read" and "sets=" not in str(err.value)
    calls["a"].cancel()
    await asyncio.gather(*calls.values(), return_exceptions=True)


# ---- what a QuorumError carries (metrics and messages), found by mutation testing --------------


async def test_quorum_errors_carry_operation_counts_and_reach_the_hooks(monkeypatch, caplog):
    import logging

    from garagekv.rpc import quorum as quorum_mod

    def broken_hook(err: QuorumError) -> None:
        raise RuntimeError("metrics broke")

    seen: list[QuorumError] = []
    monkeypatch.setattr(quorum_mod, "quorum_failure_hooks", [broken_hook, seen.append])

    with caplog.at_level(logging.ERROR, logger="garagekv.rpc.quorum"), pytest.raises(QuorumError) as err:
        await try_call_many(Fake(), ["a", "b"], 3)
    assert (err.value.quorum, err.value.successes, err.value.total) == (3, 0, 2)
    assert err.value.operation == "read" and seen == [err.value]
    assert "quorum failure hook failed" in caplog.text  # a failing hook never replaces the error

    with pytest.raises(QuorumError) as err:
        await try_call_many(Fake(), ["a"], 2, operation="k2v_insert")
    assert err.value.operation == "k2v_insert"
    with pytest.raises(QuorumError) as err:
        await try_call_many(Fake(fail={"a", "b"}), ["a", "b", "c"], 2, operation="k2v_poll")
    assert err.value.operation == "k2v_poll" and err.value.successes == 0

    with pytest.raises(QuorumError) as err:
        await wait_write_quorum(start_all(Fake(), "a"), [["a"]], 2)
    assert err.value.operation == "write" and "(sets=1)" in str(err.value)
    assert (err.value.quorum, err.value.successes, err.value.total) == (2, 0, 1)
    with pytest.raises(QuorumError) as err:
        await wait_write_quorum(start_all(Fake(), "a"), [["a"]], 2, operation="table_insert")
    assert err.value.operation == "table_insert"

    fake = Fake(fail={"b", "c"})
    with pytest.raises(QuorumError) as err:
        await wait_write_quorum(start_all(fake, "abc"), [["a", "b", "c"]], 2, operation="table_insert")
    assert err.value.operation == "table_insert"
    assert (err.value.quorum, err.value.successes, err.value.total) == (2, 1, 3)
    with pytest.raises(QuorumError) as err:
        await wait_read_quorum(start_all(Fake(fail={"b", "c"}), "abc"), 2, operation="table_get")
    assert err.value.operation == "table_get"
    assert len(seen) == 7


async def test_failures_without_a_message_and_cancelled_calls_are_described():
    class Silent(Exception):
        pass

    async def call(node):
        raise Silent()

    with pytest.raises(QuorumError, match="a: Silent"):
        await try_call_many(call, ["a"], 1)
    cancelled = asyncio.get_running_loop().create_future()
    cancelled.cancel()
    with pytest.raises(QuorumError, match="a: call was cancelled"):
        await wait_read_quorum({"a": cancelled}, 1)


def test_quorum_error_operation_defaults_to_read_or_write_by_sets():
    assert QuorumError(2, 0, 3, []).operation == "read"
    assert QuorumError(2, 0, 3, [], sets=2).operation == "write"
    assert QuorumError(2, 0, 3, [], sets=2, operation="gc").operation == "gc"


async def test_calls_still_running_after_a_quorum_error_are_left_to_finish():
    fake = Fake(fail={"a", "b"}, delays={"c": 0.05})
    with pytest.raises(QuorumError):
        await try_call_many(fake, ["a", "b", "c"], 2, send_all_at_once=True)
    await settle()
    assert fake.cancelled == [] and "c" in fake.finished
