"""The client's extension calls without a node: request and answer building for conditional
writes, linearizable reads, PollRanges and transactions, checked against a scripted HTTP server."""

from __future__ import annotations

import json

import pytest
from aiohttp import web
from multidict import CIMultiDict

from garagekv.cli import k2v as k2v_cli
from garagekv.cli.main import build_parser, main
from garagekv.client import (
    CausalityToken,
    Compare,
    Delete,
    Item,
    OpResult,
    PollRangesResult,
    PreconditionFailed,
    ProtocolError,
    Put,
    RangeChanges,
    RangeSpec,
    Read,
    ServiceUnavailable,
    TxnResult,
    errors,
)
from garagekv.client.types import check_txn, txn_body, txn_op_from_json
from tests.support.scripted_server import Script, client, err

TOKEN = "X-Garage-Causality-Token"


def no_content(token: str | None = None) -> web.Response:
    return web.Response(status=204, headers={} if token is None else {TOKEN: token})


def precondition(token: str | None) -> web.Response:
    r = err(412, "PreconditionFailed")
    if token is not None:
        r.headers[TOKEN] = token
    return r


# --- transaction bodies and answers ------------------------------------------------------------


def test_compare_and_op_wire_format():
    assert Compare.token("a", CausalityToken("T")).to_json() == {"sk": "a", "target": "token", "token": "T"}
    assert Compare.exists("b", False).to_json() == {"sk": "b", "target": "exists", "exists": False}
    assert Compare.exists("b").to_json()["exists"] is True
    assert Compare.value("c", "é").to_json() == {"sk": "c", "target": "value", "value": "w6k="}
    assert Compare.md5("d", "AB" * 16).to_json() == {"sk": "d", "target": "md5", "md5": "AB" * 16}
    assert Put("a", b"\x00").to_json() == {"op": "put", "sk": "a", "v": "AA=="}
    assert Put("a", "x", ttl=60).to_json() == {"op": "put", "sk": "a", "v": "eA==", "ttl": 60}
    assert Put("a", "x").value == b"x" and Put("a", b"x") == Put("a", "x")
    assert Delete("b").to_json() == {"op": "delete", "sk": "b"}
    assert Read("c").to_json() == {"op": "read", "sk": "c"}
    body = txn_body([Compare.exists("a", False)], [Put("a", b"1")], [Read("a")])
    assert body == {
        "compare": [{"sk": "a", "target": "exists", "exists": False}],
        "success": [{"op": "put", "sk": "a", "v": "MQ=="}],
        "failure": [{"op": "read", "sk": "a"}],
    }


@pytest.mark.parametrize("obj", [c.to_json() for c in (Compare.token("a", "T"), Compare.exists("b", False))])
def test_compare_json_round_trip(obj):
    assert Compare.from_json(obj).to_json() == obj


def test_values_and_ops_round_trip_through_json():
    c = Compare.value("c", b"\xff\x00")
    assert Compare.from_json(c.to_json()) == c
    m = Compare.md5("d", "0f" * 16)
    assert Compare.from_json(m.to_json()) == m
    for op in (Put("a", b"v", ttl=5), Put("a", b""), Delete("b"), Read("c")):
        assert txn_op_from_json(op.to_json()) == op


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"sk": "a", "target": "size"}, "unknown target"),
        ({"sk": "a"}, "missing `target`"),
        ({"target": "exists", "exists": True}, "missing `sk`"),
        ({"sk": "a", "target": "exists", "exists": "yes"}, "wrong type"),
        ({"sk": "a", "target": "value", "value": "!!"}, "not base64"),
        ({"sk": "a", "target": "md5", "md5": "abc"}, "32 hex"),
        ({"sk": 1, "target": "token", "token": "T"}, "wrong type"),
        ("not an object", "missing `sk`"),
    ],
)
def test_bad_compares_name_the_field(obj, message):
    with pytest.raises(ValueError, match=message) as ei:
        Compare.from_json(obj, "compare[3]")
    assert str(ei.value).startswith("compare[3]")


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"op": "grow", "sk": "a"}, "unknown op"),
        ({"op": "put", "sk": "a"}, "missing `v`"),
        ({"op": "put", "sk": "a", "v": "*"}, "not base64"),
        ({"op": "put", "sk": "a", "v": "", "ttl": 0}, "ttl"),
        ({"op": "put", "sk": "a", "v": "", "ttl": True}, "ttl"),
        ({"op": "read"}, "missing `sk`"),
    ],
)
def test_bad_ops_name_the_field(obj, message):
    with pytest.raises(ValueError, match=message):
        txn_op_from_json(obj, "success[0]")


def test_local_limits():
    with pytest.raises(ValueError, match="ttl"):
        Put("a", b"", ttl=31_536_001)
    with pytest.raises(ValueError, match="32 hex"):
        Compare.md5("a", "g" * 32)
    with pytest.raises(ValueError, match="written twice"):
        check_txn([], [Put("a", b""), Delete("a")], [])
    with pytest.raises(ValueError, match="written twice"):
        check_txn([], [], [Delete("a"), Read("a"), Delete("a")])
    check_txn([], [Put("a", b""), Read("a"), Read("a")], [Put("a", b"")])  # reads repeat; branches apart
    check_txn([Compare.exists(str(i)) for i in range(64)], [Read(str(i)) for i in range(128)], [])
    with pytest.raises(ValueError, match="64 compares"):
        check_txn([Compare.exists(str(i)) for i in range(65)], [], [])
    with pytest.raises(ValueError, match="128 failure"):
        check_txn([], [], [Read(str(i)) for i in range(129)])
    with pytest.raises(TypeError):
        check_txn([], [("put", "a")], [])  # type: ignore[list-item]


def test_txn_answer_decoding():
    wire = {
        "succeeded": True,
        "results": [
            {"sk": "a", "ct": "T1"},
            {"sk": "c", "ct": "T2", "v": ["YQ==", None]},
            {"sk": "n", "ct": None, "v": []},
        ],
    }
    res = TxnResult.from_json(wire)
    assert res.succeeded and res.to_json() == wire
    put, read, never = res.results
    assert put == OpResult("a", CausalityToken("T1")) and put.values is None and put.item("p") is None
    assert read.values == [b"a", None] and read.item("p") == Item("p", "c", [b"a", None], CausalityToken("T2"))
    assert never.token is None and never.values == [] and never.item("p") is None
    for bad in ({"succeeded": "yes", "results": []}, {"succeeded": True}, {"succeeded": True, "results": [{}]}):
        with pytest.raises((KeyError, ValueError)):
            TxnResult.from_json(bad)


# --- PollRanges bodies and answers -------------------------------------------------------------


def test_range_specs():
    assert RangeSpec("p").to_json() == {"partitionKey": "p"}
    spec = RangeSpec("p", prefix="a", start="ab", end="b", seen_marker="M")
    assert spec.to_json() == {"partitionKey": "p", "prefix": "a", "start": "ab", "end": "b", "seenMarker": "M"}
    assert RangeSpec.from_json(spec.to_json()) == spec
    assert RangeSpec.coerce("p") == RangeSpec("p") and RangeSpec.coerce(spec) is spec
    assert spec.with_marker("N") == RangeSpec("p", "a", "ab", "b", "N")
    with pytest.raises(TypeError):
        RangeSpec.coerce(("p", "a"))  # type: ignore[arg-type]


def test_poll_ranges_answer_decoding():
    sent = [RangeSpec("p1", seen_marker="M1"), RangeSpec("p2", prefix="x"), RangeSpec("p3")]
    wire = {
        "ranges": [
            {"partitionKey": "p1", "seenMarker": "M1", "items": []},
            {"partitionKey": "p2", "seenMarker": "N2", "items": [{"sk": "x1", "ct": "T", "v": ["YQ=="]}]},
            {"partitionKey": "p3", "seenMarker": None, "items": []},  # its first scan was not in time
        ]
    }
    res = PollRangesResult.from_json(sent, wire)
    unchanged, changed, late = res.ranges
    assert [r.index for r in res.ranges] == [0, 1, 2]
    assert not unchanged.changed and unchanged.next_range == sent[0]
    assert changed.changed and changed.items == [Item("p2", "x1", [b"a"], CausalityToken("T"))]
    assert not late.changed and late.next_range == RangeSpec("p3")  # scanned afresh next time
    assert res.changed == [changed]
    assert res.next_ranges() == [sent[0], RangeSpec("p2", prefix="x", seen_marker="N2"), RangeSpec("p3")]
    assert changed.to_json() == {
        "partitionKey": "p2",
        "prefix": "x",
        "seenMarker": "N2",
        "items": [{"pk": "p2", "sk": "x1", "ct": "T", "v": ["YQ=="]}],
    }
    # a first scan with an empty range has news: its first marker
    assert RangeChanges(RangeSpec("p"), [], "M").changed
    with pytest.raises(ValueError):
        PollRangesResult.from_json(sent[:2], wire)
    with pytest.raises(ValueError):
        PollRangesResult.from_json([RangeSpec("other"), *sent[1:]], wire)


# --- error mapping -----------------------------------------------------------------------------


def test_precondition_failed_carries_the_current_token():
    body = json.dumps({"code": "PreconditionFailed", "message": "m", "region": "garage", "path": "/b/p"}).encode()
    e = errors.error_from_response(412, body, "/b/p", CIMultiDict({"x-garage-causality-token": "CUR"}))
    assert isinstance(e, PreconditionFailed) and e.current_token == CausalityToken("CUR") and "CUR" in str(e)
    e = errors.error_from_response(412, body, "/b/p", CIMultiDict())
    assert isinstance(e, PreconditionFailed) and e.current_token is None and "never written" in str(e)
    e = errors.error_from_response(412, b"proxy said no")  # no JSON, no headers: still the same class
    assert isinstance(e, PreconditionFailed) and e.current_token is None


# --- the wire, against a scripted server --------------------------------------------------------


async def test_conditional_writes_on_the_wire(serve):
    s = Script(lambda: no_content("NEW"))
    async with client(await serve(s)) as c:
        assert await c.insert_item("p", "s", b"v", if_none_match=True) == CausalityToken("NEW")
        assert await c.insert_item("p", "s", b"v", if_match=CausalityToken("OLD")) == CausalityToken("NEW")
        assert await c.delete_item("p", "s", if_match="*") == CausalityToken("NEW")
    conds = [{k: r.headers.get(k) for k in ("If-Match", "If-None-Match", TOKEN)} for r in s.seen]
    assert conds == [
        {"If-Match": None, "If-None-Match": "*", TOKEN: None},
        {"If-Match": "OLD", "If-None-Match": None, TOKEN: None},
        {"If-Match": "*", "If-None-Match": None, TOKEN: None},
    ]
    assert [r.method for r in s.seen] == ["PUT", "PUT", "DELETE"]
    # both headers are signed: a proxy cannot strip the condition without breaking the signature
    assert all("if-" in r.headers["Authorization"] for r in s.seen)


async def test_plain_writes_unchanged_on_the_wire(serve):
    s = Script(lambda: no_content())
    async with client(await serve(s)) as c:
        assert await c.insert_item("p", "s", b"v", "TOK") is None
        assert await c.delete_item("p", "s") is None
    assert s.seen[0].headers[TOKEN] == "TOK" and "If-Match" not in s.seen[0].headers
    assert not any(h in s.seen[1].headers for h in ("If-Match", "If-None-Match", TOKEN))


async def test_conditional_write_errors(serve):
    s = Script(lambda: precondition("CUR"))
    async with client(await serve(s)) as c:
        with pytest.raises(PreconditionFailed) as ei:
            await c.insert_item("p", "s", b"v", if_match="OLD")
        assert ei.value.current_token == CausalityToken("CUR") and ei.value.status == 412
        s.steps = [lambda: precondition(None)]
        with pytest.raises(PreconditionFailed) as ei:
            await c.delete_item("p", "s", if_match="*")
        assert ei.value.current_token is None
        s.steps = [lambda: no_content()]  # 204 without the new token: not a conditional write's answer
        with pytest.raises(ProtocolError, match="new causality token"):
            await c.insert_item("p", "s", b"v", if_none_match=True)
        s.steps = [lambda: err(503, "ServiceUnavailable"), lambda: no_content("NEW")]
        with pytest.raises(ServiceUnavailable):  # outcome unknown: never replayed
            await c.insert_item("p", "s", b"v", if_match="OLD")
        n = len(s.seen)
        with pytest.raises(ValueError):
            await c.insert_item("p", "s", b"v", if_match="*", if_none_match=True)
        with pytest.raises(ValueError):
            await c.insert_item("p", "s", b"v", "TOK", if_none_match=True)
        with pytest.raises(ValueError):
            await c.delete_item("p", "s", "TOK", if_match="TOK")
        with pytest.raises(ValueError):
            await c.insert_item("p", "s", b"v", if_match="")
        with pytest.raises(TypeError):
            await c.insert_item("p", "s", b"v", if_none_match="*")  # type: ignore[call-overload]
    assert len(s.seen) == n == 4  # the 503 was sent once; nothing sent for the refused combinations


async def test_linearizable_read_header(serve):
    s = Script(
        lambda: web.Response(status=200, body=b"v", headers={TOKEN: "T", "Content-Type": "application/octet-stream"})
    )
    async with client(await serve(s)) as c:
        assert (await c.read_item("p", "s", linearizable=True)).values == [b"v"]
        await c.read_item("p", "s")
    assert s.seen[0].headers["X-Garage-Consistency"] == "linearizable"
    assert "X-Garage-Consistency" not in s.seen[1].headers


async def test_empty_sort_key_goes_through_a_transaction(serve):
    answers = [
        {"succeeded": True, "results": [{"sk": "", "ct": "NEW"}]},
        {"succeeded": False, "results": [{"sk": "", "ct": "CUR", "v": ["eA=="]}]},
        {"succeeded": True, "results": [{"sk": "", "ct": "CUR", "v": ["eA=="]}]},
        {"succeeded": True, "results": [{"sk": "", "ct": None, "v": []}]},
    ]
    s = Script(*[lambda a=a: web.json_response(a) for a in answers])
    async with client(await serve(s)) as c:
        assert await c.insert_item("p", "", b"x", if_none_match=True) == CausalityToken("NEW")
        with pytest.raises(PreconditionFailed) as ei:
            await c.delete_item("p", "", if_match="OLD")
        assert ei.value.current_token == CausalityToken("CUR")
        assert await c.read_item("p", "", linearizable=True) == Item("p", "", [b"x"], CausalityToken("CUR"))
        with pytest.raises(errors.NoSuchKey):
            await c.read_item("p", "", linearizable=True)
    assert all(r.raw_path == "/b/p?txn=" and r.method == "POST" for r in s.seen)
    bodies = [json.loads(b) for b in s.bodies]
    assert bodies[0] == {
        "compare": [{"sk": "", "target": "exists", "exists": False}],
        "success": [{"op": "put", "sk": "", "v": "eA=="}],
        "failure": [{"op": "read", "sk": ""}],
    }
    assert bodies[1]["compare"] == [{"sk": "", "target": "token", "token": "OLD"}]
    assert bodies[1]["success"] == [{"op": "delete", "sk": ""}]
    assert bodies[2] == {"compare": [], "success": [{"op": "read", "sk": ""}], "failure": []}


async def test_txn_on_the_wire_and_its_retry_policy(serve):
    ok = {"succeeded": True, "results": [{"sk": "a", "ct": "T", "v": []}]}
    s = Script(lambda: err(503, "ServiceUnavailable"), lambda: web.json_response(ok))
    async with client(await serve(s)) as c:
        res = await c.txn("p", success=[Read("a")])  # only reads: retried like a read
        assert res.succeeded and len(s.seen) == 2
        s.steps = [lambda: err(503, "ServiceUnavailable"), lambda: web.json_response(ok)]
        with pytest.raises(ServiceUnavailable):  # it writes: never replayed
            await c.txn("p", [Compare.exists("a")], [Put("a", b"1")])
        assert len(s.seen) == 3
        s.steps = [lambda: web.json_response({"succeeded": True, "results": []})]
        with pytest.raises(ProtocolError, match="0 results for 1 ops"):
            await c.txn("p", success=[Read("a")])
        s.steps = [lambda: web.json_response({"succeeded": False, "results": []})]
        assert not (await c.txn("p", [Compare.exists("a")], [Read("a")])).succeeded  # failure branch: 0 ops
    assert s.seen[2].raw_path == "/b/p?txn=" and s.seen[2].headers["Content-Type"] == "application/json"
    assert json.loads(s.bodies[2]) == {
        "compare": [{"sk": "a", "target": "exists", "exists": True}],
        "success": [{"op": "put", "sk": "a", "v": "MQ=="}],
        "failure": [],
    }


async def test_poll_ranges_on_the_wire(serve):
    answer = {"ranges": [{"partitionKey": "p1", "seenMarker": "N", "items": []}]}
    s = Script(lambda: web.Response(status=304), lambda: web.json_response(answer))
    async with client(await serve(s)) as c:
        assert await c.poll_ranges([RangeSpec("p1", seen_marker="M")], timeout=5) is None
        res = await c.poll_ranges(["p1"])
        with pytest.raises(ValueError):
            await c.poll_ranges([])
        with pytest.raises(ValueError):
            await c.poll_ranges(["p"] * 65)
    assert res is not None and res.ranges[0].seen_marker == "N"
    assert s.seen[0].raw_path == "/b?poll_ranges=" and s.seen[0].method == "POST"
    assert json.loads(s.bodies[0]) == {"ranges": [{"partitionKey": "p1", "seenMarker": "M"}], "timeout": 5}
    assert json.loads(s.bodies[1]) == {"ranges": [{"partitionKey": "p1"}]}
    assert len(s.seen) == 2


async def test_watch_carries_markers_and_skips_what_it_should(serve):
    def answer(*ranges):
        return lambda: web.json_response({"ranges": list(ranges)})

    item = {"sk": "k", "ct": "T", "v": ["YQ=="]}
    s = Script(
        # p1's first scan; p2's is late (no marker yet)
        answer(
            {"partitionKey": "p1", "seenMarker": "A1", "items": [item]},
            {"partitionKey": "p2", "seenMarker": None, "items": []},
        ),
        lambda: web.Response(status=304),
        answer(
            {"partitionKey": "p1", "seenMarker": "A1", "items": []},
            {"partitionKey": "p2", "seenMarker": "B1", "items": [item]},
        ),
        answer(
            {"partitionKey": "p1", "seenMarker": "A2", "items": [item]},
            {"partitionKey": "p2", "seenMarker": "B1", "items": []},
        ),
    )
    async with client(await serve(s)) as c:
        watch = c.watch(["p1", "p2"], timeout=10, include_initial=False)
        got = await watch.__anext__()
        await watch.aclose()
    # the initial scans were not wanted (p2's came one answer late); p1's change was
    assert (got.index, got.seen_marker, got.range.seen_marker) == (0, "A2", "A1")
    sent = [json.loads(b)["ranges"] for b in s.bodies]
    assert sent == [
        [{"partitionKey": "p1"}, {"partitionKey": "p2"}],
        [{"partitionKey": "p1", "seenMarker": "A1"}, {"partitionKey": "p2"}],
        [{"partitionKey": "p1", "seenMarker": "A1"}, {"partitionKey": "p2"}],
        [{"partitionKey": "p1", "seenMarker": "A1"}, {"partitionKey": "p2", "seenMarker": "B1"}],
    ]


# --- the command line ------------------------------------------------------------------------


def parse(*argv: str):
    return build_parser().parse_args(["k2v", *argv])


def test_cli_parses_the_extension_flags():
    a = parse("insert", "p", "s", "v", "--if-match=-AbC")
    assert a.if_match == "-AbC" and a.if_none_match is False
    assert parse("insert", "p", "s", "v", "--if-none-match").if_none_match is True
    assert parse("delete", "p", "s", "--if-match=*").if_match == "*"
    assert parse("read", "p", "s", "--linearizable").linearizable is True
    a = parse("txn", "p")
    assert a.file == "-" and a.handler is k2v_cli.cmd_txn
    a = parse("watch", "p1", "p2/x/", "--seen-marker=M1", "--seen-marker", "")
    assert a.handler is k2v_cli.cmd_watch
    assert k2v_cli._watched_ranges(a) == [RangeSpec("p1", seen_marker="M1"), RangeSpec("p2", prefix="x/")]
    a = parse("watch", "p", "--prefix", "a", "--start", "ab")
    assert k2v_cli._watched_ranges(a) == [RangeSpec("p", prefix="a", start="ab")]
    assert parse("poll-range", "a/b", "--follow").handler is k2v_cli.cmd_poll_range  # a key with "/" as it is


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["insert", "p", "s", "v", "--if-match=*", "--if-none-match"], "together"),
        (["insert", "p", "s", "v", "--token=T", "--if-match=*"], "--token"),
        (["insert", "p", "s", "v", "--token=T", "--if-none-match"], "--token"),
        (["delete", "p", "s", "--token=T", "--if-match=T"], "--token"),
        (["delete", "p", "s", "--blind", "--if-match=T"], "--blind"),
        (["watch", "p1", "p2", "--seen-marker=M"], "once per range"),
        (["watch", "p1/a", "--prefix", "b"], "not both"),
        (["watch", "/a"], "partition key is empty"),
        (["watch", *[f"p{i}" for i in range(65)]], "at most 64"),
    ],
)
def test_cli_usage_errors_before_any_request(capsys, monkeypatch, argv, message):
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "GK"),
        ("AWS_SECRET_ACCESS_KEY", "s"),
        ("GARAGEKV_K2V_ENDPOINT", "127.0.0.1:1"),  # nothing listens: a request would be error 1
        ("GARAGEKV_BUCKET", "b"),
    ):
        monkeypatch.setenv(name, value)
    assert main(["k2v", *argv]) == 2
    assert message in capsys.readouterr().err
