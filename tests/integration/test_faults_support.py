"""The fault-test tools themselves: the history checker, the fault proxy and the clock-offset hook.

No node here: the checker is fed hand-made histories, the proxy fronts a local echo server with
this test process registered as a "node" (so rules apply to its connections).
"""

from __future__ import annotations

import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest

from tests.support.checker import History
from tests.support.faults import FaultProxy, proxy_supported

KEY = ("pk", "sk")


# ---- checker ------------------------------------------------------------------------------------------


def _write(h: History, status: str = "ok", read=None, key=KEY):
    w = h.begin_write(key, "n0", read.token if read else None, read.seen if read else frozenset())
    h.end_write(w, status)
    return w


def _read(h: History, *writes, key=KEY):
    start = time.monotonic()
    return h.record_read(key, "n1", start, [w.value for w in writes] if writes else None, "tok")


def test_checker_accepts_visible_and_superseded_writes():
    h = History()
    w1 = _write(h)
    w2 = _write(h)
    r = _read(h, w1, w2)
    w3 = _write(h, read=r)  # supersedes w1 and w2
    r2 = _read(h, w3)
    w4 = _write(h, read=r2)  # supersedes w3, hence w1 and w2 too
    _read(h, w4)
    assert not h.violations


def test_checker_flags_a_lost_acknowledged_write():
    h = History()
    w1 = _write(h)
    _write(h)
    _read(h, w1)
    assert len(h.violations) == 1 and "w2" in h.violations[0]


def test_checker_does_not_require_unacknowledged_writes():
    h = History()
    w1 = _write(h)
    _write(h, status="unknown")
    _read(h, w1)
    assert not h.violations


def test_checker_supersession_needs_evidence_that_the_superseding_write_happened():
    h = History()
    w1 = _write(h)
    r = _read(h, w1)
    _write(h, status="unknown", read=r)  # may never have happened
    _read(h)  # 404: w1 is gone and nothing shows that w2 replaced it
    assert len(h.violations) == 1 and "w1" in h.violations[0]


def test_checker_flags_superseded_values_that_come_back():
    h = History()
    w1 = _write(h)
    r = _read(h, w1)
    w2 = h.begin_write(KEY, "n0", r.token, r.seen, delete=True)
    h.end_write(w2, "ok")
    _read(h)  # 404: deleted
    assert not h.violations
    _read(h, w1)  # the deleted value is back
    assert len(h.violations) == 1 and "w1" in h.violations[0] and "superseded" in h.violations[0]


def test_checker_flags_values_nobody_wrote():
    h = History()
    h.record_read(KEY, "n0", time.monotonic(), [b"w999:forged", b"garbage"], None)
    w = _write(h, key=("other", "key"))
    h.record_read(KEY, "n0", time.monotonic(), [w.value], None)  # a value of another key
    assert len(h.violations) == 3


def test_checker_only_requires_writes_acknowledged_before_the_read_started():
    h = History()
    start = time.monotonic()
    w = _write(h)  # acknowledged after the read started: concurrent
    h.record_read(KEY, "n0", start, None, None)
    assert not h.violations
    assert h.acked_since(start) == 1 and h.acked_since(start, via="n1") == 0 and w.acked


# ---- proxy ----------------------------------------------------------------------------------------------


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def echo_proxy():
    if not proxy_supported():
        pytest.skip("the fault proxy needs /proc (Linux)")
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    proxy = FaultProxy()
    echo = SimpleNamespace(extra_config="", rpc_port=server.server_address[1], proc=None)
    me = SimpleNamespace(extra_config="", rpc_port=0, proc=SimpleNamespace(pid=os.getpid()))
    port = proxy.add("echo", echo)
    assert echo.extra_config == f'rpc_public_addr = "127.0.0.1:{port}"\n'
    yield proxy, port, me
    proxy.close()
    server.shutdown()
    server.server_close()


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.settimeout(2)
    return s


def _roundtrip(s: socket.socket, data: bytes = b"ping") -> bytes:
    s.sendall(data)
    out = b""
    while len(out) < len(data):
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
    return out


def test_proxy_passes_delays_and_heals(echo_proxy):
    proxy, port, me = echo_proxy
    proxy.watch("me", me)  # this process counts as node "me"
    with _connect(port) as s:
        assert _roundtrip(s) == b"ping"
        proxy.cut("me", "delay", delay=0.3)
        start = time.monotonic()
        assert _roundtrip(s) == b"ping"
        assert time.monotonic() - start >= 0.6  # both directions
        proxy.heal("me")
        start = time.monotonic()
        assert _roundtrip(s) == b"ping" and time.monotonic() - start < 0.3


def test_proxy_drop_resets_and_refuses(echo_proxy):
    proxy, port, me = echo_proxy
    proxy.watch("me", me)
    s = _connect(port)
    assert _roundtrip(s) == b"ping"
    proxy.cut("echo", "drop")  # a rule on either end applies
    with pytest.raises(OSError):
        if _roundtrip(s) == b"":
            raise ConnectionResetError("closed")
    s.close()
    with _connect(port) as s2, pytest.raises(OSError):
        if _roundtrip(s2) == b"":
            raise ConnectionResetError("closed")
    assert proxy.refused >= 1
    proxy.heal()
    with _connect(port) as s3:
        assert _roundtrip(s3) == b"ping"


def test_proxy_blackhole_swallows_then_resets_on_heal(echo_proxy):
    proxy, port, me = echo_proxy
    proxy.watch("me", me)
    s = _connect(port)
    assert _roundtrip(s) == b"ping"
    proxy.cut("me", "blackhole")
    s.settimeout(0.5)
    s.sendall(b"lost")
    with pytest.raises(TimeoutError):
        s.recv(10)
    proxy.heal("me")
    s.settimeout(2)
    with pytest.raises(OSError):
        if s.recv(10) == b"":
            raise ConnectionResetError("closed")
    s.close()
    with _connect(port) as s2:
        assert _roundtrip(s2) == b"ping"


def test_proxy_never_cuts_processes_that_are_not_nodes(echo_proxy):
    proxy, port, _ = echo_proxy  # this process is not registered: like the tests' admin calls
    proxy.cut("echo", "drop")
    with _connect(port) as s:
        assert _roundtrip(s) == b"ping"


# ---- clock hook -------------------------------------------------------------------------------------------


def test_clock_offset_hook_moves_now_ms():
    code = "import time; from garagekv.util.time import now_ms; print(now_ms() - time.time_ns() // 10**6)"
    env = dict(os.environ, GARAGEKV_CLOCK_OFFSET_MS="-3600000")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert -3_601_000 < int(out.stdout) <= -3_599_000
    env.pop("GARAGEKV_CLOCK_OFFSET_MS")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert abs(int(out.stdout)) < 1000
