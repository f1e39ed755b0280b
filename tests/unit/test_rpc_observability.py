"""Operations hooks of the lower layers: request ids in RPC frames, the RPC observer, quorum hooks,
and the scrape-time metric families built on them."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import msgpack
import pytest
from prometheus_client.parser import text_string_to_metric_families

from garagekv.admin.cluster_metrics import peer_families, worker_families
from garagekv.admin.metrics import NodeMetrics
from garagekv.net.errors import NetError, PeerProtocolError
from garagekv.net.frame import Request, decode_message, encode_request
from garagekv.net.identity import NodeKey, short_id
from garagekv.net.netapp import NetApp
from garagekv.rpc import quorum
from garagekv.rpc.endpoint import EndpointRegistry
from garagekv.rpc.quorum import QuorumError, try_call_many, wait_write_quorum
from garagekv.util.errors import BadRequest, ServiceUnavailable
from garagekv.util.log import RedactingFilter, bind_request_id, current_request_id, request_id_var

SECRET = b"o" * 32
WHO = "garagekv/test/Who"
FAIL = "garagekv/test/Fail"
SLOW = "garagekv/test/Slow"

# ---- frames ----------------------------------------------------------------------------------------


def test_request_frames_carry_an_optional_request_id():
    assert decode_message(encode_request(7, "p", [1, b"x"], "req-1")) == Request(7, "p", [1, b"x"], "req-1")
    # Without an id the frame is the old 4-element one, byte for byte.
    plain = encode_request(7, "p", {"a": 1})
    assert plain == msgpack.packb([0, 7, "p", {"a": 1}], use_bin_type=True)
    assert decode_message(plain) == Request(7, "p", {"a": 1}, None)
    assert decode_message(msgpack.packb([0, 1, "p", None, None])).request_id is None
    with pytest.raises(PeerProtocolError):
        decode_message(msgpack.packb([0, 1, "p", None, 42]))
    with pytest.raises(PeerProtocolError):
        decode_message(msgpack.packb([0, 1, "p", None, "id", "extra"]))


# ---- request ids across a real connection -----------------------------------------------------------


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.addFilter(RedactingFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
async def pair():
    registry = EndpointRegistry()
    served_log = logging.getLogger("garagekv.test.served")

    async def who(_frm: bytes, _body):
        served_log.info("serving")
        return current_request_id()

    async def fail(_frm: bytes, _body):
        raise BadRequest("no")

    async def slow(_frm: bytes, delay: float):
        await asyncio.sleep(delay)

    for path, fn in ((WHO, who), (FAIL, fail), (SLOW, slow)):
        registry.register(path, fn)
    server = NetApp(NodeKey.generate(), SECRET, registry.dispatch)
    addr = await server.listen("127.0.0.1", 0)
    client = NetApp(NodeKey.generate(), SECRET, EndpointRegistry().dispatch)
    await client.connect(server.node_id, addr)
    rec = Recorder()
    served_log.addHandler(rec)
    served_log.setLevel(logging.INFO)
    yield server, client, rec
    served_log.removeHandler(rec)
    await client.close()
    await server.close()


async def test_request_id_follows_the_rpc(pair):
    server, client, rec = pair
    assert await client.call(server.node_id, WHO, None) is None  # no request: no id, and none made up
    _, token = bind_request_id("trace-42")
    try:
        assert await client.call(server.node_id, WHO, None) == "trace-42"

        # Concurrent requests keep their own ids.
        async def with_id(rid: str) -> str | None:
            request_id_var.set(rid)
            return await client.call(server.node_id, WHO, None)

        ids = [f"r{i}" for i in range(20)]
        assert await asyncio.gather(*(asyncio.create_task(with_id(r)) for r in ids)) == ids
    finally:
        request_id_var.reset(token)
    stamped = [r.request_id for r in rec.records]
    assert stamped[0] is None and stamped[1] == "trace-42" and sorted(stamped[2:]) == sorted(ids)


async def test_malformed_request_id_from_a_peer_is_dropped(pair):
    server, client, _ = pair
    token = request_id_var.set("bad id with spaces")
    try:
        assert await client.call(server.node_id, WHO, None) is None
    finally:
        request_id_var.reset(token)


# ---- the RPC observer -----------------------------------------------------------------------------


async def test_observer_sees_every_call_with_its_outcome(pair):
    server, client, _ = pair
    seen: list[tuple[str, bytes, float, str]] = []
    client.observer = lambda *a: seen.append(a)
    await client.call(server.node_id, WHO, None)
    with pytest.raises(BadRequest):
        await client.call(server.node_id, FAIL, None)
    with pytest.raises(ServiceUnavailable):
        await client.call(server.node_id, SLOW, 1.0, timeout=0.05)
    with pytest.raises(NetError):
        await client.call(NodeKey.generate().node_id, WHO, None)
    task = asyncio.create_task(client.call(server.node_id, SLOW, 5.0))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [(p, n == server.node_id, o) for p, n, _, o in seen] == [
        (WHO, True, "ok"),
        (FAIL, True, "remote"),
        (SLOW, True, "timeout"),
        (WHO, False, "network"),
        (SLOW, True, "cancelled"),
    ]
    assert all(s >= 0 for _, _, s, _ in seen)

    def broken(*_a) -> None:
        raise RuntimeError("observer bug")

    client.observer = broken  # a failing observer never changes what the caller sees
    assert await client.call(server.node_id, WHO, None) is None


def test_observe_rpc_counts_cancelled_calls_as_requests_only():
    m = NodeMetrics()
    m.observe_rpc("ep", "aa", 0.5, outcome="cancelled")
    m.observe_rpc("ep", "aa", 0.1, outcome="network")
    s = _samples(m.render().decode())
    assert s[("garagekv_rpc_requests_total", (("peer", "aa"), ("rpc_endpoint", "ep")))] == 2
    assert s[("garagekv_rpc_errors_total", (("kind", "network"), ("peer", "aa"), ("rpc_endpoint", "ep")))] == 1
    assert s[("garagekv_rpc_duration_seconds_count", (("peer", "aa"), ("rpc_endpoint", "ep")))] == 1


# ---- quorum hooks ---------------------------------------------------------------------------------


@pytest.fixture
def quorum_events():
    events: list[QuorumError] = []
    quorum.quorum_failure_hooks.append(events.append)
    yield events
    quorum.quorum_failure_hooks.remove(events.append)


async def test_every_quorum_error_reaches_the_hooks(quorum_events):
    async def down(node):
        raise ServiceUnavailable(f"{node} down")

    with pytest.raises(QuorumError):
        await try_call_many(down, ["a", "b", "c"], 2)
    calls = {n: asyncio.ensure_future(down(n)) for n in "abc"}
    with pytest.raises(QuorumError):
        await wait_write_quorum(calls, [["a", "b", "c"]], 2)
    with pytest.raises(QuorumError):
        await try_call_many(down, ["a"], 2, operation="k2v_insert")
    QuorumError(2, 0, 3, [], operation="poll")
    assert [e.operation for e in quorum_events] == ["read", "write", "k2v_insert", "poll"]


async def test_a_failing_hook_does_not_change_the_error(quorum_events):
    def broken(_err) -> None:
        raise RuntimeError("hook bug")

    quorum.quorum_failure_hooks.insert(0, broken)
    try:
        err = QuorumError(2, 1, 3, ["x"])
    finally:
        quorum.quorum_failure_hooks.remove(broken)
    assert isinstance(err, ServiceUnavailable) and quorum_events == [err]


# ---- scrape-time families -------------------------------------------------------------------------


def _samples(text: str) -> dict:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_peer_and_worker_families():
    a, b = b"\xaa" * 32, b"\xbb" * 32
    system = SimpleNamespace(
        peers={
            a: SimpleNamespace(rtt_ms=2.5, failed_pings=0, last_seen=1700000000.0),
            b: SimpleNamespace(rtt_ms=None, failed_pings=3, last_seen=0.0),
        },
        is_up=lambda n: n == a,
        netapp=SimpleNamespace(refused_handshakes=7, pending_handshakes=lambda: 2),
    )
    syncer = SimpleNamespace(
        table_name="k2v_item",
        items_sent=12,
        last_full_sync_at=1700000001.0,
        progress=lambda: {"done": 3, "total": 8, "queue": 5, "full_syncs": 2},
        unsyncable={7: {b"k1": 20 << 20, b"k2": 17 << 20}},
        unsyncable_entries=lambda: 2,
    )
    model = SimpleNamespace(
        syncers=[syncer],
        sync_coordinator=SimpleNamespace(synced={"k2v_item": 4}),
        gcs=[SimpleNamespace(table=SimpleNamespace(schema=SimpleNamespace(name="k2v_item")), collected=6)],
        background=SimpleNamespace(
            workers=[SimpleNamespace(worker=SimpleNamespace(name="k2v_item sync"), errors=1, state="throttled")]
        ),
    )
    m = NodeMetrics()
    m.add_source(lambda: peer_families(system))
    m.add_source(lambda: worker_families(model))
    s = _samples(m.render().decode())
    pa, pb = (("peer", short_id(a)),), (("peer", short_id(b)),)
    assert s[("garagekv_rpc_peer_rtt_seconds", pa)] == 0.0025 and ("garagekv_rpc_peer_rtt_seconds", pb) not in s
    assert s[("garagekv_rpc_peer_up", pa)] == 1 and s[("garagekv_rpc_peer_up", pb)] == 0
    assert s[("garagekv_rpc_peer_failed_pings", pb)] == 3
    assert s[("garagekv_rpc_peer_last_seen_timestamp_seconds", pa)] == 1700000000.0
    assert s[("garagekv_rpc_handshakes_refused_total", ())] == 7
    assert s[("garagekv_rpc_handshakes_pending", ())] == 2
    t = (("table_name", "k2v_item"),)
    assert s[("garagekv_table_sync_items_sent_total", t)] == 12
    assert s[("garagekv_table_sync_full_syncs_total", t)] == 2
    assert s[("garagekv_table_sync_partitions_done", t)] == 3 and s[("garagekv_table_sync_partitions", t)] == 8
    assert s[("garagekv_table_sync_queue_length", t)] == 5
    assert s[("garagekv_table_sync_layout_version", t)] == 4
    assert s[("garagekv_table_sync_unsyncable_entries", t)] == 2
    assert s[("garagekv_table_sync_unsyncable_partitions", t)] == 1
    assert s[("garagekv_table_gc_deleted_total", t)] == 6
    assert s[("garagekv_background_worker_errors_total", (("worker", "k2v_item sync"),))] == 1
    assert s[("garagekv_background_worker_throttled", (("worker", "k2v_item sync"),))] == 1
