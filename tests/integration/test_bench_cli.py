"""``garagekv bench`` against the session node: a short closed-loop run succeeds without errors;
the consensus scenarios (cas, txn, counter) and the Hulykvs ones run and check what they claim."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

from tests.support import NodeProcess, free_port
from tests.support.hulykvs_client import DEFAULT_WS, SECRET, HulyHttp, q, section, token


def run_bench(*args: str, timeout: float = 60) -> dict:
    r = subprocess.run(
        [sys.executable, "-m", "garagekv.cli.main", "bench", *args, "--json", "--quiet"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_bench_write_against_a_node(node, creds):
    s = run_bench(
        "--endpoint",
        node.endpoint,
        "--bucket",
        creds["bucket"],
        "--access-key-id",
        creds["access_key"],
        "--secret-access-key",
        creds["secret_key"],
        "--region",
        "garage",
        "--key-prefix",
        f"bench-{uuid.uuid4().hex[:8]}",
        "--server-pids",
        str(node.proc.pid),
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--conns",
        "4",
    )
    assert s["ops"] > 0 and s["ops_per_sec"] > 0
    assert s["error_count"] == 0, s["errors"]
    assert s["latency_ms"]["p50"] > 0
    assert s["server_cpu"]["us_per_op"] > 0


def test_bench_selftest_reports_the_generator_ceiling():
    s = run_bench("--selftest", "--mix", "mixed", "--duration", "0.5", "--warmup", "0", "--conns", "2")
    assert s["selftest"] and s["error_count"] == 0
    assert s["by_op"]["read"]["ops"] > 0 and s["by_op"]["write"]["ops"] > 0
    assert s["client_cpu"]["us_per_request"] > 0


def k2v_args(node, creds) -> list[str]:
    return [
        "--endpoint",
        node.endpoint,
        "--bucket",
        creds["bucket"],
        "--access-key-id",
        creds["access_key"],
        "--secret-access-key",
        creds["secret_key"],
        "--key-prefix",
        f"bench-{uuid.uuid4().hex[:8]}",
        "--duration",
        "1",
        "--warmup",
        "0.2",
    ]


@pytest.mark.parametrize("mix", ["cas", "txn"])
def test_bench_chains_conditional_writes_and_transactions(node, creds, k2v, mix):
    s = run_bench(*k2v_args(node, creds), "--mix", mix, "--conns", "3", "--cas-items", "2")
    # each write after the first of an item names the token the previous one returned: a broken
    # chain would be a 412 here
    assert s["ops"] > 0 and s["error_count"] == 0, s["errors"]
    assert set(s["by_op"]) == {mix}
    cfg = s["config"]
    pk = f"{cfg['key_prefix']}-{mix}-{cfg['run_id']}-0000"
    for sk in ("0000", "0001") if mix == "cas" else ("a", "b"):
        r = k2v.request("GET", f"/{creds['bucket']}/{q(pk)}", f"sort_key={sk}", headers={"Accept": "application/json"})
        assert r.status == 200 and len(r.json()) == 1  # one value: every write replaced the previous


@pytest.mark.parametrize("read", ["linearizable", "plain"])
def test_bench_counter_ends_at_the_number_of_increments(node, creds, read):
    s = run_bench(*k2v_args(node, creds), "--mix", "counter", "--conns", "4", "--counter-read", read)
    c = s["counter"]
    assert c["ok"], c
    assert c["increments"] > 0 and s["ops"] > 0
    assert c["increments"] <= c["final"] <= c["increments"] + c["unknown"]
    assert c["attempts"] == c["increments"] + c["conflicts"] + c["rejected"] + c["unknown"]


def test_bench_watch_delivers_every_write_to_every_range_poller(node, creds):
    s = run_bench(
        *k2v_args(node, creds), "--mix", "watch", "--conns", "3", "--watch-writers", "2", "--watch-ranges", "4"
    )
    assert s["error_count"] == 0, s["errors"]
    by_op = s["by_op"]
    writes, notified = by_op["write"]["ops"], by_op["notify"]["ops"]
    assert s["ops"] == writes > 0  # the scenario's throughput is its writes
    # each write reaches each of the 3 pollers once (up to the edges of the measured window)
    assert 0.7 * 3 * writes <= notified <= 1.3 * 3 * writes, (writes, notified)
    assert by_op["answer"]["ops"] > 0 and by_op["answer"]["items_per_sec"] == pytest.approx(notified)  # 1 s window
    assert by_op["notify-from-send"]["ops"] == notified
    assert by_op["notify"]["latency_ms"]["p50"] <= by_op["notify-from-send"]["latency_ms"]["p50"]


@pytest.fixture(scope="module")
def huly_node(tmp_path_factory):
    port = free_port()
    n = NodeProcess(tmp_path_factory.mktemp("bench-huly"), extra_config=section(port))
    n.huly_port = port
    n.start()
    yield n
    n.stop()


def test_bench_hulykvs_put_and_get(huly_node):
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    common = [
        "--hulykvs-endpoint",
        f"127.0.0.1:{huly_node.huly_port}",
        "--hulykvs-secret",
        SECRET,
        "--hulykvs-workspace",
        DEFAULT_WS,
        "--server-pids",
        str(huly_node.proc.pid),
        "--key-prefix",
        prefix,
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--conns",
        "3",
    ]
    put = run_bench(*common, "--mix", "hulykvs-put")
    assert put["ops"] > 0 and put["error_count"] == 0, put["errors"]
    assert set(put["by_op"]) == {"put"} and put["server_cpu"]["us_per_op"] > 0
    get = run_bench(*common, "--mix", "hulykvs-get", "--prefill", "--keys", "40", "--per-partition", "20")
    assert get["ops"] > 0 and get["error_count"] == 0, get["errors"]  # every GET found its key
    assert get["prefill"]["items"] == 40
    # the keys are where a Hulykvs client finds them: namespace = partition, in the workspace
    r = HulyHttp(huly_node.huly_port, token()).request("GET", f"/api2/{DEFAULT_WS}/{q(prefix + '-p000001')}")
    assert r.status == 200 and r.json()["count"] == 20
