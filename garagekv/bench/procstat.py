"""CPU time and memory of server processes, read from ``/proc`` (Linux)."""

from __future__ import annotations

import os
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` (all its threads), or None if it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name is in parentheses and may contain spaces: split after the last ')'
    fields = data[data.rindex(")") + 2 :].split()
    # fields[0] is the state (field 3 of proc(5)); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def total_cpu_seconds(pids: list[int]) -> float | None:
    """Sum over ``pids``; None if any of them is gone (a partial sum would mislead)."""
    total = 0.0
    for pid in pids:
        s = cpu_seconds(pid)
        if s is None:
            return None
        total += s
    return total


def rss_bytes(pid: int, kind: str = "VmRSS") -> int | None:
    """Resident memory of ``pid`` in bytes, or None: ``VmRSS`` (all), ``RssAnon`` (heap: the
    process's own memory) or ``RssFile`` (mapped files: LMDB pages in the page cache)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(kind + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def disk_usage(path: str | os.PathLike[str]) -> int:
    """Bytes actually allocated under ``path`` (st_blocks, so sparse LMDB files count right)."""
    total = 0
    p = Path(path)
    files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
    for f in files:
        try:
            total += f.stat().st_blocks * 512
        except OSError:
            pass
    return total


def machine_busy_seconds() -> float | None:
    """CPU seconds all CPUs spent busy since boot (user, nice, system, irq, softirq, steal)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    v = [int(x) for x in fields[1:9]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / CLK_TCK


def user_processes_cpu(exclude: set[int]) -> dict[int, float]:
    """CPU seconds of every user-space process (kernel threads left out) not in ``exclude``.

    Kernel threads are excluded because the load being measured causes their work (journal
    commits after fsync, network softirqs); other user processes are what disturbs a run.
    """
    out: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid in exclude:
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rindex(")") + 2 :].split()
        # ppid (field 4) 2 is kthreadd's children; flags (field 9) & PF_KTHREAD also marks them
        if int(fields[1]) == 2 or pid == 2 or int(fields[6]) & 0x00200000:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out
