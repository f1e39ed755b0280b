"""What the benchmark sends: signed K2V requests the server's verifier accepts, etcd bodies,
key naming, and the CLI's configuration sources."""

from __future__ import annotations

import argparse
import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from garagekv.api.signature import Headers, parse_request
from garagekv.bench.config import BenchConfig, BenchError
from garagekv.bench.http import Response
from garagekv.bench.summary import summarize
from garagekv.bench.workload import (
    EtcdTarget,
    HulyTarget,
    K2VSigner,
    K2VTarget,
    KeySpace,
    encode_pairs,
    mint_huly_token,
)
from garagekv.cli import bench as bench_cli
from garagekv.util.signing import Signer, canonical_query, encode_query

AK, SK, REGION = "GKbench0123", "s3cr3t" * 8, "garage"
NOW = 1_700_000_000.5


def split_request(data: bytes) -> tuple[str, str, str, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ")
    assert version == "HTTP/1.1"
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip()] = v.strip()
    path, _, query = target.partition("?")
    if body or method in ("PUT", "POST"):
        assert int(headers["Content-Length"]) == len(body)
    return method, path, query, headers, body


def verify(data: bytes, secret: str = SK) -> tuple[str, bytes]:
    """Check a request the way the K2V server does; returns (method, body)."""
    method, path, query, headers, body = split_request(data)
    pending = parse_request(method, path, query, Headers(headers), REGION)
    verified = pending.finish(secret)
    verified.check_body(body)
    return method, body


safe_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20)


@given(pk=safe_text, sk=safe_text)
def test_k2v_requests_pass_the_server_verifier(pk, sk):
    t = K2VTarget("127.0.0.1:3904", "my-bucket", AK, SK, REGION)
    assert verify(t.write(pk, sk, b"value")) == ("PUT", b"value")
    assert verify(t.read(pk, sk))[0] == "GET"
    assert verify(t.read_batch(pk, sk, 100))[0] == "POST"
    assert verify(t.poll(pk, sk, "AAAAAAAAAAA", 5))[0] == "GET"


def test_more_k2v_requests_pass_the_verifier_and_a_wrong_secret_fails():
    t = K2VTarget("127.0.0.1:3904", "b", AK, SK, REGION)
    _, body = verify(t.insert_batch([("p", "s", None, b"v"), ("p", "t", "AAAAAAAAAAA", None)]))
    assert json.loads(body) == [
        {"pk": "p", "sk": "s", "ct": None, "v": base64.b64encode(b"v").decode()},
        {"pk": "p", "sk": "t", "ct": "AAAAAAAAAAA", "v": None},
    ]
    verify(t.read_index("bench-p000001", 10))
    verify(t.read_index(None, 10))
    # a cached value hash is used as given
    from garagekv.bench.workload import sha256_hex

    verify(t.write("p", "s", b"xyz", sha256_hex(b"xyz"), token="AAAAAAAAAAA"))
    with pytest.raises(Exception, match="Invalid signature"):
        verify(t.write("p", "s", b"v"), secret="other")


def test_signer_matches_the_reference_signer():
    fast = K2VSigner(AK, SK, REGION, "127.0.0.1:3904")
    ref = Signer(AK, SK, REGION)
    pairs = [("sort_key", "a b/c"), ("causality_token", "x-y_z"), ("timeout", "10")]
    payload = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    _, canonical = encode_pairs(pairs)
    lines = fast.headers("GET", "/b/p%20k", canonical, payload, now=NOW)
    got = dict(line.split(": ", 1) for line in lines.strip().split("\r\n"))
    want = ref.sign_headers("GET", "/b/p%20k", pairs, {"host": "127.0.0.1:3904"}, None, now=NOW, content_sha256=payload)
    assert got == want


def test_signing_key_and_date_are_cached_per_second():
    s = K2VSigner(AK, SK, REGION, "h:1")
    s.headers("GET", "/b", "", "x" * 64, now=NOW)
    derivations = s._keys.derivations
    d1 = s.headers("GET", "/b", "", "x" * 64, now=NOW + 0.3)
    assert s._keys.derivations == derivations
    d2 = s.headers("GET", "/b", "", "x" * 64, now=NOW + 1)
    assert d1 != d2 and s._keys.derivations == derivations  # new second, same day
    s.headers("GET", "/b", "", "x" * 64, now=NOW + 86400)
    assert s._keys.derivations == derivations + 1


@given(st.lists(st.tuples(safe_text, st.text(max_size=10)), max_size=4))
def test_encode_pairs_matches_the_reference_encoders(pairs):
    wire, canonical = encode_pairs(pairs)
    assert wire == encode_query(pairs)
    assert canonical == canonical_query(pairs)


def test_keyspace():
    ks = KeySpace("bench", 2500, 1000)
    assert ks.partitions == 3
    assert ks.item(0) == ("bench-p000000", "00000000")
    assert ks.item(1999) == ("bench-p000001", "00000999")
    # byte order is numeric order inside a partition
    sks = [ks.item(i)[1] for i in range(1000, 2000)]
    assert sks == sorted(sks)
    assert ks.new_item("r.1", 7) != ks.new_item("r.1", 8)
    assert ks.new_item("r.1", 7)[0].startswith("bench-w")


def test_etcd_requests():
    t = EtcdTarget("127.0.0.1:2379")
    method, path, _, headers, body = split_request(t.write("pk", "sk", b"\x00\xff"))
    assert (method, path, headers["Host"]) == ("POST", "/v3/kv/put", "127.0.0.1:2379")
    obj = json.loads(body)
    assert base64.b64decode(obj["key"]) == b"pk/sk" and base64.b64decode(obj["value"]) == b"\x00\xff"
    _, path, _, _, body = split_request(t.read("pk", "sk"))
    assert path == "/v3/kv/range" and base64.b64decode(json.loads(body)["key"]) == b"pk/sk"


def _args(**kw) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command")
    bench_cli.add_parser(sub)
    argv = ["bench"]
    for k, v in kw.items():
        flag = "--" + k.replace("_", "-")
        argv += [flag] if v is True else [flag, str(v)]
    return p.parse_args(argv)


def test_config_from_dev_json(tmp_path, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    dev = {
        "k2v_endpoint": "http://127.0.0.1:3904",
        "region": "garage",
        "access_key_id": "GKa",
        "secret_access_key": "sec",
        "bucket": "dev-bucket",
        "nodes": [
            {"k2v_endpoint": "http://127.0.0.1:3904", "pid": 999_999_999},
            {"k2v_endpoint": "http://127.0.0.1:3914", "pid": 999_999_998},
        ],
    }
    f = tmp_path / "dev.json"
    f.write_text("some log line\n" + json.dumps(dev) + "\n")
    cfg = bench_cli.config_from_args(_args(dev_json=f, mix="read", conns=8))
    assert cfg.endpoints == ["http://127.0.0.1:3904", "http://127.0.0.1:3914"]
    assert (cfg.bucket, cfg.access_key_id, cfg.secret_access_key, cfg.region) == ("dev-bucket", "GKa", "sec", "garage")
    assert cfg.server_pids == []  # those PIDs do not exist
    cfg.validate()
    # flags win over the file
    cfg = bench_cli.config_from_args(
        _args(dev_json=f, endpoint="127.0.0.1:1,127.0.0.1:2", access_key_id="GKb", server_pids="1,2")
    )
    assert cfg.endpoints == ["127.0.0.1:1", "127.0.0.1:2"] and cfg.access_key_id == "GKb"
    assert cfg.server_pids == [1, 2]


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"mix": "batch", "target": "etcd", "endpoint": "127.0.0.1:2379"}, "needs a K2V endpoint"),
        ({"endpoint": "127.0.0.1:3904"}, "needs --bucket"),
        ({}, "no endpoint"),
        ({"endpoint": "https://127.0.0.1:1", "target": "etcd"}, "plain http"),
        ({"endpoint": "127.0.0.1:1", "target": "etcd", "conns": 2, "procs": 3}, "cannot exceed"),
        ({"endpoint": "127.0.0.1:1", "target": "etcd", "duration": 0}, "positive"),
    ],
)
def test_config_validation(kw, message, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    with pytest.raises(BenchError, match=message):
        bench_cli.config_from_args(_args(**kw)).validate()


def test_summarize_merges_workers():
    from garagekv.bench.hist import Histogram

    def worker(lat_us: list[int], errors: dict[str, int]) -> dict:
        h = Histogram()
        h.record_many(lat_us)
        return {
            "stats": {
                "write": {"hist": h.to_dict(), "ok": len(lat_us), "errors": errors, "items": 0},
                "read": {"hist": h.to_dict(), "ok": len(lat_us), "errors": {}, "items": 0},
            },
            "client_cpu": 0.5,
        }

    cfg = BenchConfig(endpoints=["127.0.0.1:1"], mix="write", duration=2.0)
    s = summarize(
        cfg,
        [worker([1000] * 10, {"503": 1}), worker([3000] * 10, {"503": 2, "timeout": 1})],
        server_cpu_s=0.2,
        machine_cpu_s=2.0,
        other_cpu_s=0.6,
    )
    assert s["ops"] == 20 and s["ops_per_sec"] == 10.0  # only the write kind counts for the write mix
    assert s["latency_ms"]["p50"] == pytest.approx(1.0, rel=0.01)
    assert s["latency_ms"]["p99"] == pytest.approx(3.0, rel=0.01)
    assert s["errors"] == {"503": 3, "timeout": 1} and s["error_count"] == 4
    assert s["by_op"]["read"]["ops"] == 20
    assert s["server_cpu"]["us_per_op"] == 10_000.0
    assert s["client_cpu"]["seconds"] == 1.0
    assert s["machine_cpu"]["other_cores"] == 0.3
    assert s["machine_cpu"]["kernel_cores"] == 0.1  # (2.0 - 0.2 - 1.0 - 0.6) / 2 s
    assert "secret_access_key" not in s["config"]
    json.dumps(s)


def test_ttl_write_carries_the_header_and_passes_the_verifier():
    t = K2VTarget("127.0.0.1:3904", "b", AK, SK, REGION)
    data = t.write_ttl("p", "s", b"v", None, 2)
    assert verify(data) == ("PUT", b"v")
    assert split_request(data)[3]["X-Garage-TTL"] == "2"


# --- the consensus scenarios (cas, txn, counter) and the Hulykvs target ----------------------------


def _resp(status: int, body: bytes = b"", **headers: str) -> Response:
    return Response(status, {k.lower().replace("_", "-"): v for k, v in headers.items()}, body)


def test_k2v_conditional_requests_pass_the_verifier_and_carry_their_condition():
    t = K2VTarget("127.0.0.1:3904", "my-bucket", AK, SK, REGION)
    _, _, query, headers, _ = split_request(t.cas("pk", "sk", b"v"))
    assert (query, headers["If-None-Match"]) == ("sort_key=sk", "*") and "If-Match" not in headers
    data = t.cas("pk", "sk", b"v", None, "TOKEN1")
    assert verify(data) == ("PUT", b"v")
    assert split_request(data)[3]["If-Match"] == "TOKEN1"
    data = t.read_latest("pk", "sk")
    assert verify(data)[0] == "GET" and split_request(data)[3]["X-Garage-Consistency"] == "linearizable"
    data = t.txn("pk", [("a", "TA"), ("b", None)], [("a", b"x"), ("b", b"y")])
    method, body = verify(data)
    _, path, query, _, _ = split_request(data)
    assert (method, path, query) == ("POST", "/my-bucket/pk", "txn=")
    assert json.loads(body) == {
        "compare": [{"sk": "a", "target": "token", "token": "TA"}, {"sk": "b", "target": "exists", "exists": False}],
        "success": [{"op": "put", "sk": "a", "v": "eA=="}, {"op": "put", "sk": "b", "v": "eQ=="}],
        "failure": [{"op": "read", "sk": "a"}, {"op": "read", "sk": "b"}],
    }


def test_k2v_consensus_answers():
    t = K2VTarget
    assert t.cas_result(_resp(204, x_garage_causality_token="NEW")) == (None, "NEW")
    assert t.cas_result(_resp(412, x_garage_causality_token="CUR")) == ("412", "CUR")
    assert t.cas_result(_resp(503)) == ("503", None)
    ok = {"succeeded": True, "results": [{"sk": "a", "ct": "A2"}, {"sk": "b", "ct": "B2"}]}
    assert t.txn_result(_resp(200, json.dumps(ok).encode()), ["a", "b"]) == (None, ["A2", "B2"])
    failed = {"succeeded": False, "results": [{"sk": "a", "ct": "A1", "v": ["eA=="]}, {"sk": "b", "ct": None, "v": []}]}
    assert t.txn_result(_resp(200, json.dumps(failed).encode()), ["a", "b"]) == ("412", ["A1", None])
    assert t.txn_result(_resp(503), ["a", "b"]) == ("503", [None, None])
    binary = _resp(200, b"41", content_type="application/octet-stream", x_garage_causality_token="T")
    assert t.latest_result(binary) == (None, b"41", "T")
    as_json = _resp(200, b'["NDI=", null]', content_type="application/json", x_garage_causality_token="T")
    assert t.latest_result(as_json) == (None, b"42", "T")
    two = _resp(200, b'["NDI=", "NDM="]', content_type="application/json", x_garage_causality_token="T")
    assert t.latest_result(two)[0] == "values"
    assert t.latest_result(_resp(404)) == (None, None, None)


def test_etcd_txn_requests_compare_mod_revisions():
    t = EtcdTarget("127.0.0.1:2379")
    method, path, _, _, body = split_request(t.cas("pk", "sk", b"v", None, "17"))
    obj = json.loads(body)
    key = base64.b64encode(b"pk/sk").decode()
    assert (method, path) == ("POST", "/v3/kv/txn")
    assert obj["compare"] == [{"key": key, "target": "MOD", "result": "EQUAL", "mod_revision": "17"}]
    assert obj["success"] == [{"request_put": {"key": key, "value": base64.b64encode(b"v").decode()}}]
    assert obj["failure"] == [{"request_range": {"key": key}}]
    obj = json.loads(split_request(t.cas("pk", "sk", b"v", None, None, read_on_failure=False))[4])
    assert obj["compare"][0]["mod_revision"] == "0" and obj["failure"] == []  # 0: the key does not exist
    obj = json.loads(split_request(t.txn("pk", [("a", "5"), ("b", None)], [("a", b"x"), ("b", b"y")]))[4])
    assert [c["mod_revision"] for c in obj["compare"]] == ["5", "0"]
    assert [base64.b64decode(p["request_put"]["key"]) for p in obj["success"]] == [b"pk/a", b"pk/b"]
    assert len(obj["failure"]) == 2


def test_etcd_txn_answers():
    t = EtcdTarget
    header = {"cluster_id": "1", "member_id": "2", "revision": "9", "raft_term": "2"}
    ok = {"header": header, "succeeded": True, "responses": [{"response_put": {"header": {"revision": "9"}}}]}
    assert t.cas_result(_resp(200, json.dumps(ok).encode())) == (None, "9")
    kv = {"key": "YS9i", "create_revision": "2", "mod_revision": "7", "version": "3", "value": "NDI="}
    failed = {"header": header, "responses": [{"response_range": {"header": header, "kvs": [kv], "count": "1"}}]}
    assert t.cas_result(_resp(200, json.dumps(failed).encode())) == ("412", "7")
    absent = {"header": header, "responses": [{"response_range": {"header": header}}]}
    assert t.cas_result(_resp(200, json.dumps(absent).encode())) == ("412", None)
    assert t.txn_result(_resp(200, json.dumps(ok).encode()), ["a", "b"]) == (None, ["9", "9"])
    two = {"header": header, "responses": [failed["responses"][0], absent["responses"][0]]}
    assert t.txn_result(_resp(200, json.dumps(two).encode()), ["a", "b"]) == ("412", ["7", None])
    assert t.latest_result(_resp(200, json.dumps({"header": header, "kvs": [kv]}).encode())) == (None, b"42", "7")
    assert t.latest_result(_resp(200, json.dumps({"header": header}).encode())) == (None, None, None)
    assert t.cas_result(_resp(500)) == ("500", None)


def test_hulykvs_requests_carry_a_token_the_server_accepts():
    from garagekv.api.hulykvs.auth import authorize_v2
    from garagekv.api.hulykvs.auth import verify as verify_token

    ws = "0f1e2d3c-4b5a-4678-9abc-def012345678"
    token = mint_huly_token("s3cret" * 6, ws)
    t = HulyTarget("127.0.0.1:3905", ws, token)
    method, path, _, headers, body = split_request(t.write("ns/1", "k 1", b"value"))
    assert (method, path, body) == ("PUT", f"/api2/{ws}/ns%2F1/k%201", b"value")
    claims = verify_token(headers["Authorization"], "s3cret" * 6)
    assert claims.workspace == ws and not claims.is_system
    authorize_v2(claims, ws)  # allowed in its workspace
    assert mint_huly_token("s3cret" * 6, ws) != token  # every client gets its own account
    method, path, _, headers, body = split_request(t.read("ns", "k"))
    assert (method, path, body, headers["Host"]) == ("GET", f"/api2/{ws}/ns/k", b"", "127.0.0.1:3905")
    assert (t.check_write(_resp(204)), t.check_write(_resp(201)), t.check_write(_resp(401))) == (None, None, "401")
    assert (t.check_read(_resp(200)), t.check_read(_resp(404))) == (None, "404")


def test_config_of_the_hulykvs_scenarios(tmp_path, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    dev = {
        "k2v_endpoint": "http://127.0.0.1:3904",
        "access_key_id": "GKa",
        "secret_access_key": "sec",
        "bucket": "b",
        "hulykvs_endpoint": "http://127.0.0.1:3905",
        "hulykvs_secret": "huly-secret",
        "hulykvs_default_workspace": "0f1e2d3c-4b5a-4678-9abc-def012345678",
        "nodes": [
            {"k2v_endpoint": "http://127.0.0.1:3904", "hulykvs_endpoint": "http://127.0.0.1:3905"},
            {"k2v_endpoint": "http://127.0.0.1:3914", "hulykvs_endpoint": "http://127.0.0.1:3915"},
        ],
    }
    f = tmp_path / "dev.json"
    f.write_text(json.dumps(dev) + "\n")
    cfg = bench_cli.config_from_args(_args(dev_json=f, mix="hulykvs-put"))
    assert cfg.hulykvs_endpoints == ["http://127.0.0.1:3905", "http://127.0.0.1:3915"]
    assert (cfg.hulykvs_secret, cfg.hulykvs_workspace) == ("huly-secret", dev["hulykvs_default_workspace"])
    cfg.validate()
    assert "huly-secret" not in json.dumps(summarize(cfg, [], None)["config"])
    cfg = bench_cli.config_from_args(_args(dev_json=f, mix="hulykvs-get", hulykvs_token="TOK"))
    assert (cfg.hulykvs_token, cfg.hulykvs_secret) == ("TOK", "")  # a given token wins over the secret
    with pytest.raises(BenchError, match="needs --hulykvs-endpoint"):
        bench_cli.config_from_args(_args(endpoint="127.0.0.1:1", mix="hulykvs-get")).validate()
    with pytest.raises(BenchError, match="not etcd"):
        bench_cli.config_from_args(_args(endpoint="127.0.0.1:1", target="etcd", mix="hulykvs-put")).validate()
    bench_cli.config_from_args(_args(endpoint="127.0.0.1:1", target="etcd", mix="counter")).validate()


def test_summarize_adds_up_the_counter_totals():
    from garagekv.bench.hist import Histogram

    def worker(increments: int, conflicts: int) -> dict:
        h = Histogram()
        h.record_many([2000] * increments)
        return {
            "stats": {
                "increment": {"hist": h.to_dict(), "ok": increments, "errors": {}, "items": 0},
                "conflict": {"hist": h.to_dict(), "ok": conflicts, "errors": {}, "items": 0},
            },
            "client_cpu": 0.1,
            "counter": {
                "attempts": increments + conflicts + 1,
                "increments": increments,
                "conflicts": conflicts,
                "rejected": 0,
            },
        }

    cfg = BenchConfig(endpoints=["127.0.0.1:1"], mix="counter", duration=2.0)
    s = summarize(cfg, [worker(10, 4), worker(6, 2)], server_cpu_s=None)
    assert s["ops"] == 16 and s["retries_per_sec"] == 3.0
    assert s["counter"] == {"attempts": 24, "increments": 16, "conflicts": 6, "rejected": 0}


# --- the watch scenario (PollRanges fan-out) -------------------------------------------------------


class _KeyLimits:
    """What the PollRanges body parser asks of a request context."""

    @staticmethod
    def check_key_len(name: str, value: str | None) -> None:
        pass


def test_poll_ranges_request_is_routed_signed_and_parsed_as_the_server_does():
    from garagekv.api.handlers.poll_ranges import parse_ranges
    from garagekv.api.routing import POLL_RANGES, parse_endpoint
    from garagekv.model.k2v.seen import RangeSeenMarker

    t = K2VTarget("127.0.0.1:3904", "my-bucket", AK, SK, REGION)
    marker = RangeSeenMarker().encode()
    data = t.poll_ranges([("p0", None), ("p1", marker), ("p/2 é", marker)], 7)
    method, body = verify(data)
    _, path, query, _, _ = split_request(data)
    assert (method, path, query) == ("POST", "/my-bucket", "poll_ranges=")
    assert parse_endpoint(method, path, query).name == POLL_RANGES
    assert json.loads(body) == {
        "timeout": 7,
        "ranges": [
            {"partitionKey": "p0"},
            {"partitionKey": "p1", "seenMarker": marker},
            {"partitionKey": "p/2 é", "seenMarker": marker},
        ],
    }
    ranges, timeout = parse_ranges(_KeyLimits(), json.loads(body))  # type: ignore[arg-type]
    assert timeout == 7 and [r.partition_key for r in ranges] == ["p0", "p1", "p/2 é"]
    assert [r.raw_marker for r in ranges] == [None, marker, marker]


def test_poll_ranges_answers_give_the_next_markers_and_the_sort_keys():
    t = K2VTarget
    sent: list[tuple[str, str | None]] = [("a", None), ("b", "MB"), ("c", "MC")]
    answer = {
        "ranges": [
            {"partitionKey": "a", "seenMarker": "MA1", "items": []},
            {"partitionKey": "b", "seenMarker": "MB2", "items": [{"sk": "x", "ct": "T", "v": ["dg=="]}]},
            {"partitionKey": "c", "seenMarker": "MC", "items": [{"sk": "y", "ct": "T", "v": [None]}, {"sk": "z"}]},
        ]
    }
    assert t.poll_ranges_result(_resp(200, json.dumps(answer).encode()), sent) == (
        None,
        [("a", "MA1"), ("b", "MB2"), ("c", "MC")],
        ["x", "y", "z"],
    )
    # a range whose first scan is not in this answer keeps the marker it was sent (none)
    answer["ranges"][0]["seenMarker"] = None
    assert t.poll_ranges_result(_resp(200, json.dumps(answer).encode()), sent)[1][0] == ("a", None)
    assert t.poll_ranges_result(_resp(304), sent) == (None, sent, [])
    assert t.poll_ranges_result(_resp(503), sent) == ("503", sent, [])
    for bad in [b"not json", b"{}", json.dumps({"ranges": answer["ranges"][:2]}).encode(),
                json.dumps({"ranges": answer["ranges"][::-1]}).encode()]:  # fmt: skip
        assert t.poll_ranges_result(_resp(200, bad), sent) == ("bad-answer", sent, [])


def test_watch_config_and_partitions(monkeypatch):
    from garagekv.bench.worker import Worker, watch_partitions

    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    base = {"endpoint": "127.0.0.1:1,127.0.0.1:2", "bucket": "b", "access_key_id": "a", "secret_access_key": "s"}
    cfg = bench_cli.config_from_args(_args(**base, mix="watch", conns=5, procs=2, watch_writers=3, watch_ranges=8))
    cfg.validate()
    cfg.run_id = "r1"
    assert (cfg.watch_writers, cfg.watch_ranges) == (3, 8)
    pks = watch_partitions(cfg)
    assert len(set(pks)) == 8 and all(pk.startswith("bench-watch-r1-") for pk in pks)
    # pollers and writers are dealt to the processes; writers go round-robin over the endpoints
    w0, w1 = Worker(cfg, 0), Worker(cfg, 1)
    assert [c.index for c in w0.conns] == [0, 2, 4] and [c.index for c in w1.conns] == [1, 3]
    assert [c.index for c in w0.watch_writers] == [0, 2] and [c.index for c in w1.watch_writers] == [1]
    assert [c.port for c in w0.watch_writers + w1.watch_writers] == [1, 1, 2]
    assert w0.watch_tag != w1.watch_tag
    for kw, message in [({"watch_ranges": 65}, "at most|1 to 64"), ({"watch_ranges": 0}, "1 to 64"),
                        ({"watch_writers": 0}, "at least 1")]:  # fmt: skip
        with pytest.raises(BenchError, match=message):
            bench_cli.config_from_args(_args(**base, mix="watch", **kw)).validate()
    with pytest.raises(BenchError, match="needs a K2V endpoint"):
        bench_cli.config_from_args(_args(endpoint="127.0.0.1:1", target="etcd", mix="watch")).validate()
