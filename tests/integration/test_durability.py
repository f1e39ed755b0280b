"""Acknowledged means durable: SIGKILL during a write stream loses nothing that was answered 2xx."""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest

from tests.support import K2VHttp, NodeProcess
from tests.support.faults import k2v_client, make_bucket


def _setup(n: NodeProcess) -> K2VHttp:
    return k2v_client(n, make_bucket(n, "dur-bucket"))


@pytest.fixture
def fresh_node(tmp_path):
    n = NodeProcess(tmp_path / "n")
    n.start()
    yield n
    n.stop(signal.SIGKILL)


def test_sigkill_during_writes_loses_no_acknowledged_write(fresh_node):
    n = fresh_node
    client = _setup(n)
    acked: dict[str, int] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def writer(w: int) -> None:
        i = 0
        while not stop.is_set():
            sk = f"w{w}-{i % 20}"
            try:
                r = client.request("PUT", "/dur-bucket/p", f"sort_key={sk}", str(i).encode(), timeout=5)
            except OSError:
                return
            if r.status == 204:
                with lock:
                    acked[sk] = i
            i += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(acked) < 60 and time.monotonic() < deadline:
        time.sleep(0.05)
    n.kill()
    stop.set()
    for t in threads:
        t.join()
    assert len(acked) >= 60

    n.start()
    for sk, i in acked.items():
        r = client.request("GET", "/dur-bucket/p", f"sort_key={sk}")
        assert r.status == 200, (sk, r.body)
        # No token was used, so every write is a concurrent value: the acked one must be there.
        import base64

        values = [int(base64.b64decode(v)) for v in r.json()]
        assert i in values, (sk, i, values)


def test_sigterm_shuts_down_cleanly_and_cuts_polls(fresh_node):
    n = fresh_node
    client = _setup(n)
    assert client.request("PUT", "/dur-bucket/p", "sort_key=x", b"1").status == 204
    tok = client.request("GET", "/dur-bucket/p", "sort_key=x").header("X-Garage-Causality-Token")
    result: dict = {}

    def poll() -> None:
        try:
            result["r"] = client.request(
                "GET", "/dur-bucket/p", f"sort_key=x&causality_token={tok}&timeout=300", timeout=60
            )
        except OSError as e:
            result["err"] = e

    t = threading.Thread(target=poll)
    t.start()
    time.sleep(0.5)
    start = time.monotonic()
    assert n.stop(signal.SIGTERM, timeout=30) == 0
    t.join(timeout=30)
    assert not t.is_alive()
    assert time.monotonic() - start < 15
    # The poll was either answered or its connection closed: it did not hang until its timeout.
    assert "err" in result or result["r"].status in (304, 503)
    n.start()
    assert client.request("GET", "/dur-bucket/p", "sort_key=x").json() == ["MQ=="]


def test_sigterm_cuts_poll_ranges(fresh_node):
    n = fresh_node
    client = _setup(n)
    body = {"ranges": [{"partitionKey": "p"}, {"partitionKey": "q"}]}
    r = client.request("POST", "/dur-bucket", "poll_ranges", json.dumps(body).encode())
    assert r.status == 200, r.body
    markers = [rng["seenMarker"] for rng in r.json()["ranges"]]
    body = {
        "timeout": 300,
        "ranges": [{"partitionKey": p, "seenMarker": m} for p, m in zip("pq", markers, strict=True)],
    }
    result: dict = {}

    def poll() -> None:
        try:
            result["r"] = client.request("POST", "/dur-bucket", "poll_ranges", json.dumps(body).encode(), timeout=60)
        except OSError as e:
            result["err"] = e

    t = threading.Thread(target=poll)
    t.start()
    time.sleep(0.5)
    assert n.stop(signal.SIGTERM, timeout=30) == 0
    t.join(timeout=30)
    assert not t.is_alive()
    # Answered or its connection closed: it did not hang until its timeout, and no 500.
    assert "err" in result or result["r"].status in (304, 503)


def test_second_node_on_same_directory_is_refused(fresh_node, tmp_path):
    import subprocess
    import sys

    other = subprocess.run(
        [sys.executable, "-m", "garagekv.cli.main", "-c", str(fresh_node.config_path), "server"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert other.returncode != 0
    assert "locked by another garagekv process" in other.stderr
