"""A seeded random schedule of faults against a 3-node (rf=3) cluster behind the fault proxy.

One fault at a time, on one node at a time, so a quorum of every partition stays reachable:

- ``kill``: SIGKILL, then a restart after the hold time;
- ``pause``: SIGSTOP, then SIGCONT;
- ``cut-drop`` / ``cut-blackhole`` / ``cut-delay``: the fault proxy cuts the node off (connections
  reset, bytes silently discarded, or every chunk delayed), then heals it;
- ``clock``: the node restarts with its wall clock shifted (``GARAGEKV_CLOCK_OFFSET_MS``, up to
  five minutes either way: more than fifteen would make clients' signatures too skewed); it stays
  shifted until its next restart;
- ``layout``: a new layout version: a fourth node joins the layout (started on first use) or
  leaves it again, or an endpoint node's capacity changes. Layout watchers (``LayoutWatcher``)
  are shown the version the staged change will produce before it is applied (a workload can then
  aim at partitions that move), and the version applied after; what they say goes in the
  fault's detail.

After each fault the nemesis waits until the others see the node up again, then a short gap.
``heal_all`` ends every fault for the final checks. Every fault is recorded (``Fault``).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from garagekv.rpc.layout.errors import LayoutError
from garagekv.rpc.layout.version import LayoutVersion
from tests.support import NodeProcess, wait_for
from tests.support.faults import FaultProxy, commit_layout, join, layout_of, make_node, stage_layout, up_ids

#: The schedule deals faults from a shuffled deck holding each kind this many times, so even a
#: short run sees every kind (a deck is 9 faults).
DECK = {"kill": 2, "pause": 1, "cut-drop": 1, "cut-blackhole": 1, "cut-delay": 1, "clock": 1, "layout": 2}
CLOCK_ENV = "GARAGEKV_CLOCK_OFFSET_MS"
#: Seconds between showing watchers a planned layout version and applying it.
LAYOUT_LEAD = 1.0


class LayoutWatcher(Protocol):
    def layout_planned(self, old: LayoutVersion, planned: LayoutVersion) -> bool:
        """True if what the watcher works on will move (the nemesis then waits before applying)."""
        ...

    def layout_applied(self, old: LayoutVersion, new: LayoutVersion, names: dict[bytes, str], at: float) -> str: ...


@dataclass(eq=False)
class Fault:
    kind: str
    node: str
    start: float
    end: float | None = None
    detail: str = ""
    healed: bool = True  # the node was seen up again by the others afterwards

    def record(self, t0: float = 0.0) -> dict[str, Any]:
        return {
            "type": "fault",
            "kind": self.kind,
            "node": self.node,
            "invoke": round(self.start - t0, 6),
            "complete": None if self.end is None else round(self.end - t0, 6),
            "status": "ok" if self.healed else "not-healed",
            "detail": self.detail,
        }


@dataclass
class ChaosCluster:
    """The endpoint nodes n0..n2 (behind ``proxy``), and the spare n3 once the nemesis started it."""

    root: Path
    nodes: dict[str, NodeProcess]
    proxy: FaultProxy
    config: str = ""
    spare: NodeProcess | None = None
    spare_member: bool = False

    def running(self) -> list[NodeProcess]:
        every = list(self.nodes.values()) + ([self.spare] if self.spare is not None else [])
        return [n for n in every if n.proc is not None]

    def close(self) -> None:
        for n in list(self.nodes.values()) + ([self.spare] if self.spare is not None else []):
            if n.proc is not None:
                try:
                    n.proc.send_signal(signal.SIGCONT)
                except ProcessLookupError:
                    pass
                n.kill()
        self.proxy.close()


@dataclass
class Nemesis:
    cluster: ChaosCluster
    seed: int = 0
    hold: tuple[float, float] = (1.0, 3.0)
    gap: tuple[float, float] = (0.5, 2.0)
    faults: list[Fault] = field(default_factory=list)
    watchers: list[LayoutWatcher] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._deck: list[str] = []

    def _deal(self) -> str:
        if not self._deck:
            self._deck = [k for k, n in DECK.items() for _ in range(n)]
            self.rng.shuffle(self._deck)
        return self._deck.pop()

    def run(self, duration: float, stop: threading.Event | None = None) -> None:
        """Inject faults for ``duration`` seconds (the last one may run a little over)."""
        end = time.monotonic() + duration
        while time.monotonic() < end and not (stop is not None and stop.is_set()):
            self.step()
            time.sleep(self.rng.uniform(*self.gap))

    def step(self) -> Fault:
        kind = self._deal()
        name = self.rng.choice(sorted(self.cluster.nodes))
        f = Fault(kind, name, time.monotonic())
        with self._lock:
            self.faults.append(f)
        getattr(self, "_" + kind.split("-")[0])(f)
        f.end = time.monotonic()
        f.healed = self._wait_up(f.node)
        return f

    # ---- the faults -------------------------------------------------------------------------------

    def _hold(self) -> float:
        return self.rng.uniform(*self.hold)

    def _kill(self, f: Fault) -> None:
        node = self.cluster.nodes[f.node]
        node.kill()
        time.sleep(self._hold())
        self._start(node, None)

    def _pause(self, f: Fault) -> None:
        node = self.cluster.nodes[f.node]
        assert node.proc is not None
        node.proc.send_signal(signal.SIGSTOP)
        try:
            time.sleep(self._hold())
        finally:
            node.proc.send_signal(signal.SIGCONT)

    def _cut(self, f: Fault) -> None:
        mode = f.kind.split("-", 1)[1]
        delay = round(self.rng.uniform(0.2, 1.5), 2) if mode == "delay" else 0.0
        f.detail = f"{mode} {delay}s" if delay else mode
        self.cluster.proxy.cut(f.node, mode, delay)
        try:
            time.sleep(self._hold())
        finally:
            self.cluster.proxy.heal(f.node)

    def _clock(self, f: Fault) -> None:
        offset = self.rng.choice((-1, 1)) * self.rng.randint(20_000, 300_000)
        f.detail = f"clock offset {offset} ms"
        node = self.cluster.nodes[f.node]
        node.kill()
        self._start(node, offset)

    def _layout(self, f: Fault) -> None:
        c = self.cluster
        running = c.running()
        via = c.nodes[f.node]
        choice = self.rng.random()
        if choice < 0.6 and not c.spare_member:
            if c.spare is None:
                c.spare = make_node(c.root / "n3", 3, c.config)
                c.proxy.add("n3", c.spare)
                join(c.spare, c.nodes["n0"], c.proxy, "n0")
                ids = {n.node_id for n in c.running()}
                wait_for(lambda: all(up_ids(n) >= ids for n in c.running()), timeout=30)
            elif c.spare.proc is None:
                self._start(c.spare, None)
            f.node, f.detail = "n3", "n3 joins the layout"
            self._change_layout(f, via, [c.spare], [], c.running())
            c.spare_member = True
        elif choice < 0.6:
            assert c.spare is not None
            f.node, f.detail = "n3", "n3 leaves the layout"
            self._change_layout(f, via, [], [c.spare], running)
            c.spare_member = False
        else:
            cap = self.rng.choice(("1G", "2G", "3G"))
            f.detail = f"capacity {cap}"
            self._change_layout(f, via, [via], [], running, cap)

    def _change_layout(
        self,
        f: Fault,
        via: NodeProcess,
        assign: list[NodeProcess],
        remove: list[NodeProcess],
        wait_on: list[NodeProcess],
        capacity: str = "1G",
    ) -> None:
        """Stage, show the watchers the planned version, apply, show them the version applied."""
        stage_layout(via, assign, remove, capacity)
        before = layout_of(via)
        old = before.current()
        if self.watchers:
            try:
                planned, _ = before.preview_staged_changes()
            except LayoutError:
                planned = None  # the apply below reports why
            if planned is not None and any([w.layout_planned(old, planned) for w in self.watchers]):
                time.sleep(LAYOUT_LEAD)  # the clients start on what is about to move
        applied_at = time.monotonic()
        version = commit_layout(via, wait_on)
        if not self.watchers:
            return
        new = next((v for v in layout_of(via).versions if v.version == version), None)
        if new is None:
            return
        names = {bytes.fromhex(n.node_id): name for name, n in self.cluster.nodes.items()}
        if self.cluster.spare is not None:
            names[bytes.fromhex(self.cluster.spare.node_id)] = "n3"
        said = [w.layout_applied(old, new, names, applied_at) for w in self.watchers]
        f.detail = "; ".join([f.detail, *[x for x in said if x]])

    # ---- healing ----------------------------------------------------------------------------------

    def _start(self, node: NodeProcess, offset_ms: int | None) -> None:
        """Start ``node``, with its clock shifted by ``offset_ms`` if given (the env var is read at start)."""
        if offset_ms is None:
            node.start()
            return
        os.environ[CLOCK_ENV] = str(offset_ms)
        try:
            node.start()
        finally:
            del os.environ[CLOCK_ENV]

    def _node(self, name: str) -> NodeProcess:
        return self.cluster.spare if name == "n3" else self.cluster.nodes[name]  # type: ignore[return-value]

    def _wait_up(self, name: str, timeout: float = 30.0) -> bool:
        """The others see ``name`` up again (False, and the run goes on, if they do not in time)."""
        target = self._node(name)
        others = [n for n in self.cluster.running() if n is not target]
        try:
            wait_for(lambda: all(target.node_id in up_ids(o) for o in others), timeout=timeout, interval=0.2)
            return True
        except AssertionError:
            return False

    def heal_all(self) -> bool:
        """End every fault: proxy healed, paused nodes resumed, dead nodes restarted; all up for all."""
        c = self.cluster
        c.proxy.heal()
        for n in list(c.nodes.values()) + ([c.spare] if c.spare is not None else []):
            if n.proc is not None and n.proc.poll() is None:
                n.proc.send_signal(signal.SIGCONT)
            elif n is not c.spare or c.spare_member:
                n.proc = None
                self._start(n, None)
        ids = {n.node_id for n in c.running()}
        try:
            wait_for(lambda: all(up_ids(n) >= ids for n in c.running()), timeout=60, interval=0.3)
            return True
        except AssertionError:
            return False

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.faults:
            out[f.kind] = out.get(f.kind, 0) + 1
        return dict(sorted(out.items()))
