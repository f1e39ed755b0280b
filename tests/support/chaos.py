"""A chaos run: concurrent clients through every node, the nemesis, a heal, then every checker.

Used by the bounded test (``tests/integration/test_history.py``, part of ``make test``) and by
``make chaos`` (``scripts/chaos.py``, long randomized schedules). The run:

1. starts 3 nodes (rf=3) behind the fault proxy, and a bucket;
2. starts the clients, each recording every operation: the read/write ``Workload`` (blind writes
   and read-modify-writes with tokens, on own and shared keys), the ``SetWorkload`` (InsertBatch of
   fresh keys, paged set reads), the ``WatchWriter`` (single writer of the watched items), the
   watchers (a PollRange watcher through each node, PollItem watchers through two of them) and
   the ``ConsensusWorkload`` (conditional writes, transactions and linearizable reads on hot
   partition keys, which the nemesis's layout changes are made to move);
3. runs the ``Nemesis`` for ``duration`` seconds, then heals everything and lets the clients run
   a few more seconds on the healed cluster before stopping the writers;
4. final reads of every key, every set partition, every watched item and every consensus object
   through every node, and waits (up to a deadline) for the watchers to observe the final states;
5. runs every checker (the linearizability checker over the consensus objects among them) and
   writes the history (JSON lines: one record per operation with its invoke and complete times,
   status, values and tokens; faults; the verdict last).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import K2VHttp, wait_for
from tests.support.checker import Anomaly, History, Workload, count_kinds, final_check, read_item
from tests.support.checker.registers import ConsensusHistory, ConsensusWorkload
from tests.support.checker.sets import SetHistory, SetWorkload, read_set
from tests.support.checker.watch import ItemWatcher, RangeWatcher, WatchHistory, WatchWriter
from tests.support.faults import FaultProxy, k2v_client, shared_bucket, start_cluster
from tests.support.nemesis import ChaosCluster, Nemesis

#: As in the fault tests: a 5 s RPC timeout, the first anti-entropy pass 1 s after start.
CHAOS_CONFIG = "rpc_timeout_msec = 5000\nsync_startup_delay_sec = 1\n"
WATCH_PK = "watch"
WATCH_ITEMS = 8
WATCH_WRITERS = 4
CONSENSUS_CLIENTS = 8


@dataclass
class Verdict:
    seed: int
    duration: float
    operations: int
    faults: int
    anomalies: list[Anomaly]
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.anomalies

    def record(self) -> dict[str, Any]:
        return {
            "type": "verdict",
            "valid": self.ok,
            "seed": self.seed,
            "duration": self.duration,
            "operations": self.operations,
            "faults": self.faults,
            "anomalies": len(self.anomalies),
            "anomaly_kinds": count_kinds(self.anomalies),
            "first_anomalies": [a.record() for a in self.anomalies[:100]],
            **self.details,
        }

    def summary(self) -> str:
        kinds = ", ".join(f"{k}={n}" for k, n in count_kinds(self.anomalies).items()) or "none"
        return (
            f"chaos seed={self.seed} duration={self.duration:.0f}s: operations={self.operations} "
            f"faults={self.faults} anomalies={len(self.anomalies)} ({kinds})"
        )


def consensus_summary(stats: dict[str, Any]) -> str:
    """One line of figures of the consensus workload and its linearizability check."""
    moves = stats["hot_partition_moves"]
    return (
        f"consensus: histories={stats['histories']} operations={stats['operations']} "
        f"{' '.join(f'{k}={n}' for k, n in stats['by_status'].items())} "
        f"largest-history={stats['largest_history']} non-linearizable={stats['non_linearizable']} "
        f"hot-partition-moves={len(moves)}"
        + (f" ({moves[0]['pk']}: {','.join(moves[0]['from'])} -> {','.join(moves[0]['to'])})" if moves else "")
    )


def final_watch_states(
    history: History, clients: dict[str, K2VHttp], bucket: str, keys: list, timeout: float = 60.0
) -> tuple[dict, list[Anomaly]]:
    """Each watched item's final state, once a read through every node shows the same one.

    Those reads count as final reads for the acknowledged-write checker too."""
    last: dict = {}

    def settled() -> bool:
        for key in keys:
            reads = [read_item(history, client, via, bucket, key, check=False) for via, client in clients.items()]
            if any(r is None for r in reads):
                return False
            last[key] = [r.seen for r in reads]
            if any(r.seen != reads[0].seen for r in reads):
                return False
            for r in reads:
                r.final = True
        return True

    try:
        wait_for(settled, timeout=timeout, interval=0.5)
        return {k: v[0] for k, v in last.items()}, []
    except AssertionError:
        out = {k: frozenset().union(*last.get(k, [frozenset()])) for k in keys}
        return out, [Anomaly("watch-final-unsettled", f"reads through the nodes never agreed: {last}")]


def run_chaos(
    root: Path, seed: int, duration: float, out: Path | None = None, log: Any = print, settle: float = 3.0
) -> Verdict:
    """One chaos run in ``root`` (node directories); the history and verdict go to ``out`` if given."""
    t0 = time.monotonic()
    proxy = FaultProxy()
    cluster = ChaosCluster(root, {}, proxy, CHAOS_CONFIG)
    stoppers: list[Any] = []
    try:
        nodes = start_cluster(root, 3, rf=3, extra=CHAOS_CONFIG, proxy=proxy)
        cluster.nodes = {f"n{i}": n for i, n in enumerate(nodes)}
        creds = shared_bucket(nodes, "chaos")
        bucket = creds["bucket"]
        bucket_id = bytes.fromhex(nodes[0].admin("bucket.info", {"name": bucket})["id"])
        clients = {name: k2v_client(n, creds) for name, n in cluster.nodes.items()}
        log(f"chaos seed={seed}: cluster up after {time.monotonic() - t0:.1f}s, nemesis for {duration:.0f}s")

        history = History()
        sets = SetHistory(history.t0)
        watch = WatchHistory(history)
        watch_keys = [(WATCH_PK, f"i{k}") for k in range(WATCH_ITEMS)]
        writer = WatchWriter(
            history=history, clients=clients, bucket=bucket, keys=watch_keys, threads=WATCH_WRITERS, seed=seed
        )
        writer.seed_items()
        watchers = [RangeWatcher(watch=watch, client=c, via=v, bucket=bucket, pk=WATCH_PK) for v, c in clients.items()]
        watchers += [
            ItemWatcher(watch=watch, client=clients[v], via=v, bucket=bucket, keys=watch_keys) for v in ("n1", "n2")
        ]
        workload = Workload(history, clients, bucket, threads=3, pk="rw", seed=seed, check=False)
        set_workload = SetWorkload(sets, clients, bucket, seed=seed)
        consensus = ConsensusHistory(history.t0)
        cas = ConsensusWorkload(consensus, clients, bucket, bucket_id, threads=CONSENSUS_CLIENTS, seed=seed)
        stoppers = [*watchers, writer, workload, set_workload, cas]
        for w in watchers:
            w.start()
        for w in (writer, workload, set_workload, cas):
            w.start()

        nemesis = Nemesis(cluster, seed, watchers=[cas])
        nemesis.run(duration)
        healed = nemesis.heal_all()
        log(f"chaos seed={seed}: {len(nemesis.faults)} faults {nemesis.counts()}, healed={healed}")
        time.sleep(settle)  # the clients keep going on the healed cluster for a moment
        for w in (writer, workload, set_workload, cas):
            w.stop()

        extra: list[Anomaly] = [] if healed else [Anomaly("heal-failed", "nodes not all up after the heal")]
        extra += [
            Anomaly("not-healed", f"{f.kind} on {f.node}: not seen up in time") for f in nemesis.faults if not f.healed
        ]
        final_check(history, clients, bucket, keys=[k for k in history.by_key if k[0] != WATCH_PK], patience=30)
        pks = list(set_workload.pks)
        for via, client in clients.items():
            try:
                wait_for(lambda via=via, client=client: read_set(sets, client, via, bucket, pks, final=True))
            except AssertionError:
                extra.append(Anomaly("final-read-failed", f"final set read via {via} failed"))
        extra += cas.final_reads()
        final, unsettled = final_watch_states(history, clients, bucket, watch_keys)
        extra += unsettled
        try:
            wait_for(lambda: watch.caught_up(final), timeout=30, interval=0.3)
        except AssertionError:
            pass  # the watch checker names who is behind
        for w in watchers:
            w.stop()

        checked = time.monotonic()
        anomalies = history.check_reads() + sets.check() + watch.check(final) + consensus.check() + extra
        checked = time.monotonic() - checked
        notes = history.check_resurrections()
        errors = workload.errors + set_workload.errors + writer.errors + cas.errors
        errors += [e for w in watchers for e in w.errors]
        anomalies += [Anomaly("harness-error", e) for e in errors]
        records = history.records() + sets.records() + watch.records() + consensus.records()
        operations = len(records)
        records += [f.record(history.t0) for f in nemesis.faults]
        records.sort(key=lambda r: r["invoke"])
        statuses: dict[str, int] = {}
        for r in records:
            if r["type"] != "fault":
                statuses[r["status"]] = statuses.get(r["status"], 0) + 1
        verdict = Verdict(
            seed,
            duration,
            operations,
            len(nemesis.faults),
            anomalies,
            {
                "fault_kinds": nemesis.counts(),
                "statuses": dict(sorted(statuses.items())),
                "acknowledged_writes": sum(1 for w in history.writes.values() if w.acked),
                "acknowledged_batches": sum(1 for b in sets.batches if b.status == "ok"),
                "watch_observations": len(watch.observations),
                "consensus": consensus.stats(),
                "check_seconds": round(checked, 1),
                "notes": [a.record() for a in notes[:50]],
                "elapsed": round(time.monotonic() - t0, 1),
            },
        )
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            with out.open("w") as f:
                for r in records:
                    f.write(json.dumps(r) + "\n")
                f.write(json.dumps(verdict.record()) + "\n")
        log(verdict.summary())
        log(consensus_summary(consensus.stats()))
        if notes:
            log(f"notes: {len(notes)} reads showed a value superseded by an acknowledged write ({notes[0].message})")
        return verdict
    finally:
        for s in stoppers:
            s.stop()
        cluster.close()
