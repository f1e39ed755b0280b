"""Local clusters for the benchmark suites: ``garagekv dev`` and etcd members, on loopback only.

Each cluster lives in its own directory and is stopped (SIGTERM, then SIGKILL) on exit, including
when the suite fails or is interrupted.
"""

from __future__ import annotations

import json
import os
import random
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_ports(offsets: list[int], lo: int = 20000, hi: int = 60000, tries: int = 200) -> int:
    """A base port such that every ``base + offset`` is free on loopback."""
    for _ in range(tries):
        base = random.randrange(lo, hi)
        if all(port_free(base + o) for o in offsets):
            return base
    raise RuntimeError("no free loopback ports found")


def _stop(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class DevCluster:
    """``garagekv dev --json --nodes N`` in ``root``; :attr:`info` is its JSON line."""

    def __init__(self, root: Path, nodes: int = 1, workers: int = 1) -> None:
        self.root = Path(root)
        self.nodes = nodes
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}
        self.json_path = self.root / "dev.json"

    def start(self, timeout: float = 90.0) -> DevCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        offsets = [o + 10 * i for i in range(self.nodes) for o in (0, -3, -1, 1)]  # K2V, RPC, admin, Hulykvs
        if self.workers > 1:  # the workers' RPC ports (garagekv dev --workers)
            offsets += [100 + 100 * i + w for i in range(self.nodes) for w in range(self.workers)]
        base = pick_ports(offsets, lo=20010)
        log = open(self.root / "dev.log", "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "garagekv.cli.main",
                "dev",
                "--json",
                "--nodes",
                str(self.nodes),
                "--dir",
                str(self.root / "state"),
                "--port",
                str(base),
                "--workers",
                str(self.workers),
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        line = _read_line(self.proc, timeout)
        if not line:
            self.stop()
            raise RuntimeError(f"garagekv dev did not start; see {self.root / 'dev.log'}")
        self.info = json.loads(line)
        self.json_path.write_text(line)
        os.chmod(self.json_path, 0o600)
        return self

    @property
    def endpoints(self) -> list[str]:
        return [n["k2v_endpoint"] for n in self.info["nodes"]]

    @property
    def pids(self) -> list[int]:
        """The server processes: each node's, or its workers' (``garagekv bench``'s ``dev_pids``)."""
        return [w["pid"] for n in self.info["nodes"] for w in n.get("workers") or [n]]

    @property
    def meta_dirs(self) -> list[Path]:
        return [self.root / "state" / f"node{i}" / "meta" for i in range(self.nodes)]

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc, timeout=60)
            self.proc = None

    def __enter__(self) -> DevCluster:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    assert proc.stdout is not None  # started with stdout=PIPE
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    buf = b""
    try:
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None and not sel.select(0):
                return ""
            if sel.select(min(left, 0.5)):
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    return ""
                buf += chunk
    finally:
        sel.close()
    return buf.split(b"\n", 1)[0].decode()


def etcd_binary() -> str | None:
    return shutil.which("etcd")


class EtcdCluster:
    """``members`` etcd processes on loopback (fsync on, etcd's defaults otherwise)."""

    def __init__(self, root: Path, members: int = 1, binary: str | None = None) -> None:
        self.root = Path(root)
        self.members = members
        self.binary = binary or etcd_binary() or "etcd"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.client_ports: list[int] = []

    def start(self, timeout: float = 60.0) -> EtcdCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        base = pick_ports([o + 10 * i for i in range(self.members) for o in (0, 1)])
        self.client_ports = [base + 10 * i for i in range(self.members)]
        peers = [base + 10 * i + 1 for i in range(self.members)]
        initial = ",".join(f"m{i}=http://127.0.0.1:{p}" for i, p in enumerate(peers))
        for i in range(self.members):
            log = open(self.root / f"m{i}.log", "ab")  # noqa: SIM115 - the child keeps it
            self.procs.append(
                subprocess.Popen(
                    [
                        self.binary,
                        "--name",
                        f"m{i}",
                        "--data-dir",
                        str(self.root / f"m{i}"),
                        "--listen-client-urls",
                        f"http://127.0.0.1:{self.client_ports[i]}",
                        "--advertise-client-urls",
                        f"http://127.0.0.1:{self.client_ports[i]}",
                        "--listen-peer-urls",
                        f"http://127.0.0.1:{peers[i]}",
                        "--initial-advertise-peer-urls",
                        f"http://127.0.0.1:{peers[i]}",
                        "--initial-cluster",
                        initial,
                        "--initial-cluster-token",
                        "garagekv-bench",
                        "--initial-cluster-state",
                        "new",
                        "--logger",
                        "zap",
                        "--log-level",
                        "warn",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
            log.close()
        deadline = time.monotonic() + timeout
        while not all(self._healthy(p) for p in self.client_ports):
            if any(p.poll() is not None for p in self.procs) or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"etcd did not become healthy; see {self.root}/m*.log")
            time.sleep(0.2)
        return self

    @staticmethod
    def _healthy(port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                return bool(json.loads(r.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    @property
    def endpoints(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.client_ports]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        self.procs = []

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def run_bench_cli(args: list[str], timeout: float = 600.0) -> dict[str, Any]:
    """``garagekv bench ARGS --json --quiet`` in a child process; its JSON summary."""
    cmd = [sys.executable, "-m", "garagekv.cli.main", "bench", *args, "--json", "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"garagekv bench {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    return result


def probe_replication(info: dict[str, Any], wait: float = 5.0) -> str | None:
    """Write an item through the first node and read it through each other one.

    Returns None when every node serves it within ``wait`` seconds, else what went wrong (a
    cluster without K2V replication gives 404s on the other nodes).
    """
    import asyncio

    from garagekv.bench.http import connect, parse_endpoint
    from garagekv.bench.workload import K2VTarget

    async def probe() -> str | None:
        nodes = info["nodes"]
        sk = f"probe-{random.getrandbits(32):08x}"

        async def call(endpoint: str, build: Any) -> int:
            host, port = parse_endpoint(endpoint)
            t = K2VTarget(
                f"{host}:{port}", info["bucket"], info["access_key_id"], info["secret_access_key"], info["region"]
            )
            http = await connect(host, port)
            try:
                return int((await asyncio.wait_for(http.send(build(t)), 10)).status)
            finally:
                http.close()

        status = await call(nodes[0]["k2v_endpoint"], lambda t: t.write("bench-probe", sk, b"x"))
        if status != 204:
            return f"InsertItem on node 0 answered {status}"
        for i, n in enumerate(nodes[1:], 1):
            deadline = time.monotonic() + wait
            while True:
                status = await call(n["k2v_endpoint"], lambda t: t.read("bench-probe", sk))
                if status == 200:
                    break
                if time.monotonic() > deadline:
                    return f"an item written on node 0 reads as {status} on node {i} after {wait:g}s"
                await asyncio.sleep(0.2)
        return None

    return asyncio.run(probe())


def wait_quiet(timeout: float, limit: float = 0.2, exclude: list[int] | None = None, window: float = 2.0) -> bool:
    """Wait until the machine's busy CPU, minus the ``exclude`` processes, stays under ``limit``
    cores for ``window`` seconds; False if that did not happen within ``timeout``."""
    from garagekv.bench.procstat import machine_busy_seconds, total_cpu_seconds

    deadline = time.monotonic() + timeout
    pids = [p for p in exclude or [] if Path(f"/proc/{p}").exists()]
    while True:
        m0, p0, t0 = machine_busy_seconds(), total_cpu_seconds(pids) or 0.0, time.monotonic()
        time.sleep(window)
        m1, p1, t1 = machine_busy_seconds(), total_cpu_seconds(pids) or 0.0, time.monotonic()
        if m0 is None or m1 is None:
            return True
        if ((m1 - m0) - (p1 - p0)) / (t1 - t0) < limit:
            return True
        if time.monotonic() > deadline:
            return False


def settle(pids: list[int], timeout: float, idle: float = 0.1, window: float = 2.0) -> float:
    """Wait until the processes ``pids`` are idle (together under ``idle`` cores for ``window``
    seconds): a node's background work (Merkle to-do, index counters, replication queues) left
    by the previous run must not be measured as part of the next. Returns the seconds waited."""
    from garagekv.bench.procstat import total_cpu_seconds

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        c0, w0 = total_cpu_seconds(pids), time.monotonic()
        time.sleep(window)
        c1, w1 = total_cpu_seconds(pids), time.monotonic()
        if c0 is None or c1 is None or (c1 - c0) / (w1 - w0) < idle:
            break
    return time.monotonic() - t0
