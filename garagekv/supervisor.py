"""``garagekv server`` with ``workers = N`` (N > 1): one host, N node processes acting as one.

A node is one Python process, bound to one core by the GIL. To use a host's cores, the process
that ``garagekv server`` starts becomes a supervisor of N *workers*, each a full node with its own
identity, LMDB environment (``metadata_dir/worker-<i>/``) and RPC port (``rpc_bind_addr``'s port
+ i), all sharing the host id persisted in ``metadata_dir/host_id``. The workers open the K2V,
admin and Hulykvs listeners with ``SO_REUSEPORT``, so the kernel spreads incoming connections
over them and clients see one endpoint per host. Every worker announces the host id in its
status and the layout keeps it in the roles, so the replicas of a partition land on distinct
hosts (``rpc/layout/assignment.py``).

The supervisor itself serves nothing. It creates the workers' node keys before starting them (so
each can be given its siblings as bootstrap peers), restarts a worker that exits on its own after
a growing delay (0.5 s, doubling up to 30 s; back to 0.5 s once a run lasted a minute), and on
SIGTERM/SIGINT/SIGHUP stops them all with SIGTERM (each shuts down cleanly, as a single node
does) and exits once they have. A worker that exits with an error within seconds of its very
first start (a port in use, a bad file) stops the whole host with its exit code: that does not
fix itself. A worker killed by a signal (the OOM killer, an operator) is always restarted. The
workers hold the read end of a pipe whose write end only the supervisor has, so however it ends
(even SIGKILL) they stop too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from garagekv.net.identity import PUB_FILE, load_or_create_node_key
from garagekv.rpc.layout import HOST_ID_LEN
from garagekv.util.config import Config, for_worker, split_host_port, worker_port
from garagekv.util.errors import ConfigError

log = logging.getLogger("garagekv.supervisor")

HOST_ID_FILE = "host_id"
RESTART_MIN = 0.5
RESTART_MAX = 30.0
#: A run at least this long resets the restart delay.
STABLE_AFTER = 60.0
#: A worker exiting this soon after its first start stops the host (a start-up error).
FIRST_START_GRACE = 5.0
#: How long each worker may take to stop cleanly before it is killed.
STOP_TIMEOUT = 60.0
POLL_INTERVAL = 0.1


def worker_dir(metadata_dir: Path, index: int) -> Path:
    return Path(metadata_dir) / f"worker-{index}"


def load_or_create_host_id(metadata_dir: Path) -> bytes:
    """The host id: random, created on the first start with workers, kept in ``metadata_dir``."""
    path = Path(metadata_dir) / HOST_ID_FILE
    Path(metadata_dir).mkdir(parents=True, exist_ok=True)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raw = b""
    if len(raw) == HOST_ID_LEN:
        return raw
    if raw:
        raise ConfigError(f"{path} should hold {HOST_ID_LEN} bytes, found {len(raw)}: delete it to make a new host id")
    host_id = os.urandom(HOST_ID_LEN)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(host_id)
    os.replace(tmp, path)
    return host_id


def _dialable(addr: str) -> str:
    """A sibling's RPC address as the workers of this host can dial it (loopback for a wildcard)."""
    host, port = split_host_port(addr)
    if host in ("0.0.0.0", ""):
        return f"127.0.0.1:{port}"
    if host == "::":
        return f"[::1]:{port}"
    return addr


def sibling_peers(config: Config, workers: int, node_ids: dict[int, bytes]) -> tuple[str, ...]:
    """``<id>@<addr>`` of every worker of the host, for the workers' bootstrap peers."""
    base = config.rpc_public_addr or config.rpc_bind_addr
    return tuple(f"{node_ids[i].hex()}@{_dialable(worker_port(base, i))}" for i in range(workers) if i in node_ids)


def worker_config(config: Config, index: int, host_id: bytes, workers: int) -> Config:
    """Worker ``index``'s config: ``for_worker`` plus its siblings (whose keys the supervisor made)."""
    ids = {}
    for i in range(workers):
        with contextlib.suppress(OSError):
            pub = (worker_dir(config.metadata_dir, i) / PUB_FILE).read_bytes()
            if len(pub) == 32:
                ids[i] = pub
    siblings = sibling_peers(config, workers, {i: n for i, n in ids.items() if i != index})
    return for_worker(config, index, host_id, siblings)


@dataclass
class Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    starts: int = 0
    restart_at: float | None = None
    delay: float = RESTART_MIN


class Supervisor:
    """Runs ``workers`` worker processes for ``config`` (read from ``config_path``) until stopped."""

    def __init__(self, config: Config, config_path: Path, workers: int, parent_fd: int | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.parent_fd = parent_fd  # stop at its end of file (``--stop-on-eof``, from garagekv dev)
        self.workers = [Worker(i) for i in range(workers)]
        self.stopping = False
        self.host_id = b""

    def prepare(self) -> None:
        """Host id and every worker's node key, before any worker starts."""
        self.host_id = load_or_create_host_id(self.config.metadata_dir)
        for w in self.workers:
            load_or_create_node_key(worker_dir(self.config.metadata_dir, w.index))
        old = Path(self.config.metadata_dir) / PUB_FILE
        if old.exists():
            log.warning(
                "%s holds the identity of node %s, which ran here with workers = 1; the %d workers are other "
                "nodes. If that node has a role, replace it: garagekv layout assign %s -z <zone> -c <capacity> "
                "--replace %s",
                self.config.metadata_dir,
                old.read_bytes().hex()[:16],
                len(self.workers),
                self.host_id.hex()[:16],
                old.read_bytes().hex()[:16],
            )

    def _command(self, w: Worker, lifeline: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "garagekv.cli.main",
            "-c",
            str(self.config_path),
            "server",
            "--workers",
            str(len(self.workers)),
            "--worker-index",
            str(w.index),
            "--host-id",
            self.host_id.hex(),
            "--stop-on-eof",
            str(lifeline),
        ]

    def _start(self, w: Worker, lifeline: int) -> None:
        w.proc = subprocess.Popen(
            self._command(w, lifeline),
            stdin=subprocess.DEVNULL,
            pass_fds=(lifeline,),
            start_new_session=True,  # a terminal's Ctrl-C reaches the supervisor, which stops them in order
        )
        w.started_at = time.monotonic()
        w.starts += 1
        w.restart_at = None
        log.info("worker %d started (pid %d)", w.index, w.proc.pid)

    def _on_exit(self, w: Worker, pid: int, code: int) -> int | None:
        """A worker exited on its own: schedule its restart, or return the host's exit code."""
        ran = time.monotonic() - w.started_at
        if w.starts == 1 and ran < FIRST_START_GRACE and code > 0:  # an error exit, not a signal
            log.error("worker %d failed at start-up (exit code %d): stopping the host", w.index, code)
            return code
        if ran >= STABLE_AFTER:
            w.delay = RESTART_MIN
        log.warning("worker %d (pid %d) exited with code %d; restarting it in %.1fs", w.index, pid, code, w.delay)
        w.restart_at = time.monotonic() + w.delay
        w.delay = min(w.delay * 2, RESTART_MAX)
        w.proc = None
        return None

    def _parent_gone(self) -> bool:
        if self.parent_fd is None:
            return False
        readable, _, _ = select.select([self.parent_fd], [], [], 0)
        if not readable:
            return False
        try:
            return os.read(self.parent_fd, 4096) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def request_stop(self, *_: Any) -> None:
        self.stopping = True

    def run(self) -> int:
        """Start the workers, keep them running until a signal, stop them; the exit code."""
        self.prepare()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self.request_stop)
        lifeline, keep = os.pipe()
        exit_code = 0
        try:
            for w in self.workers:
                self._start(w, lifeline)
            log.info("host %s: %d workers", self.host_id.hex()[:16], len(self.workers))
            while not self.stopping:
                if self._parent_gone():
                    log.info("parent process gone: stopping")
                    break
                now = time.monotonic()
                for w in self.workers:
                    if w.proc is not None and (code := w.proc.poll()) is not None:
                        fatal = self._on_exit(w, w.proc.pid, code)
                        if fatal is not None:
                            exit_code = fatal
                            self.stopping = True
                            break
                    elif w.proc is None and w.restart_at is not None and now >= w.restart_at:
                        self._start(w, lifeline)
                time.sleep(POLL_INTERVAL)
        finally:
            clean = self._stop_all()
            os.close(lifeline)
            os.close(keep)
        log.info("all workers stopped")
        return exit_code if exit_code else (0 if clean else 1)

    def _stop_all(self) -> bool:
        """SIGTERM to every running worker, then wait (SIGKILL past STOP_TIMEOUT); True if all exited 0."""
        running = [(w.index, w.proc) for w in self.workers if w.proc is not None and w.proc.poll() is None]
        for _, proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        clean = True
        deadline = time.monotonic() + STOP_TIMEOUT
        for index, proc in running:
            try:
                code = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d did not stop within %.0fs: killing it", index, STOP_TIMEOUT)
                proc.kill()
                code = proc.wait()
            clean = clean and code == 0
        return clean


def supervise(config: Config, workers: int, parent_fd: int | None = None) -> int:
    """``garagekv server`` for a host with ``workers`` > 1 (the config must come from a file)."""
    if config.source is None:
        raise ConfigError("a host with several workers needs its config file: the workers read it")
    for addr in (config.rpc_bind_addr, config.rpc_public_addr):
        if addr is not None:
            worker_port(addr, workers - 1)  # the last worker's RPC port must exist (ConfigError)
    return Supervisor(config, Path(config.source).absolute(), workers, parent_fd).run()
