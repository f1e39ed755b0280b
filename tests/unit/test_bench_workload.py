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
from garagekv.bench.summary import summarize
from garagekv.bench.workload import EtcdTarget, K2VSigner, K2VTarget, KeySpace, encode_pairs
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
