"""Running a benchmark: one process or several on a shared clock, progress lines, server CPU sampling.

With ``procs > 1`` the connections are dealt to worker processes, each with its own event loop
(uvloop when installed), which start together on a shared monotonic clock and send back mergeable
histograms.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import queue as queue_mod
import secrets
import signal
import time
from collections.abc import Callable
from typing import Any

from garagekv.bench.config import BenchConfig, BenchError
from garagekv.bench.prefill import check_counter, prepare
from garagekv.bench.procstat import machine_busy_seconds, total_cpu_seconds, user_processes_cpu
from garagekv.bench.summary import summarize
from garagekv.bench.worker import Worker
from garagekv.util.loop import new_runner


class CpuSampler:
    """Server CPU (``pids``) and whole-machine busy CPU at the edges of the measured window."""

    def __init__(self, pids: list[int], own: set[int] | None = None) -> None:
        self.pids = pids
        self.own = set(pids) | (own or set())
        self.server: dict[str, float | None] = {}
        self.machine: dict[str, float | None] = {}
        self.others: dict[str, dict[int, float]] = {}

    def __call__(self, edge: str) -> None:
        self.server[edge] = total_cpu_seconds(self.pids) if self.pids else None
        self.machine[edge] = machine_busy_seconds()
        try:
            self.others[edge] = user_processes_cpu(self.own | {os.getpid()})
        except OSError:
            pass

    @property
    def other_seconds(self) -> float | None:
        """CPU used by other user processes in the window (processes that exited are missed)."""
        a, b = self.others.get("start"), self.others.get("end")
        if a is None or b is None:
            return None
        return sum(v - a.get(pid, 0.0) for pid, v in b.items() if v >= a.get(pid, 0.0))

    @staticmethod
    def _delta(d: dict[str, float | None]) -> float | None:
        a, b = d.get("start"), d.get("end")
        return None if a is None or b is None else b - a

    @property
    def server_seconds(self) -> float | None:
        return self._delta(self.server)

    @property
    def machine_seconds(self) -> float | None:
        return self._delta(self.machine)


class Progress:
    """Aggregates per-second deltas from the workers into one status line on ``stream``."""

    def __init__(self, cfg: BenchConfig, stream: Any = None, start: float = 0.0) -> None:
        self.cfg = cfg
        self.stream = stream
        self.start = start
        self.pending: dict[int, list[dict[str, Any]]] = {}
        self.tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())

    def __call__(self, msg: dict[str, Any]) -> None:
        if self.stream is None:
            return
        self.pending.setdefault(int(round(msg["at"] - self.start)), []).append(msg)
        # print a second once every worker reported it (or a later second arrived)
        for sec in sorted(self.pending):
            msgs = self.pending[sec]
            if len(msgs) < self.cfg.procs and sec == max(self.pending):
                break
            del self.pending[sec]
            self._print(sec, msgs)

    def _print(self, sec: int, msgs: list[dict[str, Any]]) -> None:
        ops = sum(m["ops"] for m in msgs)
        errs = sum(m["errors"] for m in msgs)
        lat = sum(m["latency"] for m in msgs)
        phase = "warmup" if sec <= self.cfg.warmup else "measure"
        total = self.cfg.warmup + self.cfg.duration
        mean = f"{lat / ops * 1e3:.2f} ms" if ops else "-"
        line = f"[{sec:>3.0f}/{total:.0f}s {phase:<7}] {ops:>8,} req/s  mean {mean:>9}  errors {errs}"
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.stream is not None and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def run_bench(
    cfg: BenchConfig, progress_stream: Any = None, log: Callable[[str], None] = lambda s: None
) -> dict[str, Any]:
    """Prefill if asked, run the scenario, and return the summary (see :func:`summarize`)."""
    cfg.validate()
    if not cfg.run_id:
        cfg.run_id = secrets.token_hex(4)
    with new_runner() as runner:
        setup = runner.run(prepare(cfg, log))
    server_cpu = CpuSampler(cfg.server_pids)
    t_wall = time.time()
    if cfg.procs == 1:
        results = [_run_single(cfg, progress_stream, server_cpu)]
    else:
        results = _run_multi(cfg, progress_stream, server_cpu)
    summary = summarize(cfg, results, server_cpu.server_seconds, server_cpu.machine_seconds, server_cpu.other_seconds)
    summary["started_at"] = t_wall
    summary.update(setup)
    if "counter" in summary:
        with new_runner() as runner:
            summary["counter"] = runner.run(check_counter(cfg, summary["counter"]))
    return summary


def _run_single(cfg: BenchConfig, progress_stream: Any, server_cpu: CpuSampler) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        w = Worker(cfg, 0)
        await w.connect_all()
        start = time.monotonic() + 0.05
        prog = Progress(cfg, progress_stream, start)
        try:
            return await w.run(start, prog, server_cpu)
        finally:
            prog.finish()

    with new_runner() as runner:
        return runner.run(main())


def _proc_main(cfg: BenchConfig, index: int, q: Any, go: Any, start_at: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle

    async def main() -> None:
        w = Worker(cfg, index)
        try:
            await w.connect_all()
        except BenchError as e:
            q.put(("error", index, str(e)))
            return
        q.put(("ready", index, None))
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, go.wait, 60.0):
            w.close()
            return
        result = await w.run(start_at.value, lambda m: q.put(("progress", index, m)))
        q.put(("result", index, result))

    try:
        with new_runner() as runner:
            runner.run(main())
    except Exception as e:  # noqa: BLE001 - reported to the parent, which fails the run
        q.put(("error", index, f"{type(e).__name__}: {e}"))


def _run_multi(cfg: BenchConfig, progress_stream: Any, server_cpu: CpuSampler) -> list[dict[str, Any]]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    go = ctx.Event()
    start_at = ctx.Value("d", 0.0)
    procs = [ctx.Process(target=_proc_main, args=(cfg, i, q, go, start_at), daemon=True) for i in range(cfg.procs)]
    for p in procs:
        p.start()
    results: dict[int, dict[str, Any]] = {}
    try:
        ready = 0
        deadline = time.monotonic() + 60
        while ready < cfg.procs:
            kind, index, payload = _get(q, procs, deadline)
            if kind == "error":
                raise BenchError(f"worker {index}: {payload}")
            if kind == "ready":
                ready += 1
        start = time.monotonic() + 0.2
        server_cpu.own |= {p.pid for p in procs if p.pid is not None}
        start_at.value = start
        go.set()
        prog = Progress(cfg, progress_stream, start)
        m_start, m_end = start + cfg.warmup, start + cfg.warmup + cfg.duration
        sampled = set()
        deadline = m_end + cfg.timeout + 30
        while len(results) < cfg.procs:
            now = time.monotonic()
            if "start" not in sampled and now >= m_start:
                sampled.add("start")
                server_cpu("start")
            if "end" not in sampled and now >= m_end:
                sampled.add("end")
                server_cpu("end")
            wake = m_start if "start" not in sampled else (m_end if "end" not in sampled else now + 0.5)
            try:
                kind, index, payload = _get(q, procs, deadline, timeout=max(0.001, min(0.5, wake - now)))
            except queue_mod.Empty:
                continue
            if kind == "error":
                raise BenchError(f"worker {index}: {payload}")
            if kind == "progress":
                prog(payload)
            elif kind == "result":
                results[index] = payload
        prog.finish()
        if "end" not in sampled:
            server_cpu("end")
    finally:
        go.set()
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
    return [results[i] for i in range(cfg.procs)]


def _get(q: Any, procs: list[Any], deadline: float, timeout: float | None = None) -> tuple[str, int, Any]:
    """The next worker message; fails if a worker died or the deadline passed."""
    while True:
        if time.monotonic() > deadline:
            raise BenchError("workers did not finish in time")
        try:
            message: tuple[str, int, Any] = q.get(timeout=0.5 if timeout is None else timeout)
            return message
        except queue_mod.Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise BenchError(f"a worker process exited with code {dead[0].exitcode}")
            if timeout is not None:
                raise


def start_null_server(value_size: int = 100) -> tuple[str, Any]:
    """Start the selftest server in its own process: (endpoint, process)."""
    from garagekv.bench.nullserver import run_process

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=run_process, args=(child, value_size), daemon=True)
    proc.start()
    child.close()
    if not parent.poll(30):
        proc.terminate()
        raise BenchError("the selftest server did not start")
    port, _pid = parent.recv()
    return f"127.0.0.1:{port}", proc


def stop_process(proc: Any) -> None:
    proc.terminate()
    proc.join(timeout=5)
    if proc.is_alive():
        proc.kill()
        proc.join(timeout=5)
