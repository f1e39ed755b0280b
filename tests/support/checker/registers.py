"""Linearizability of the consensus path under faults: CAS, transactions and linearizable reads.

Client threads (``ConsensusWorkload``, eight by default) hammer a few *hot* partition keys
through every node with the operations of docs/k2v-api.md §5a/§5b:

- linearizable ReadItem (``X-Garage-Consistency: linearizable``) and read-only transactions;
- conditional InsertItem / DeleteItem: ``If-Match: <token>`` (with a token the client read or
  was given by a 204), ``If-None-Match: *``, ``If-Match: *``;
- transactions comparing values, tokens or absence and putting new values, with reads in the
  failure branch (so a failed compare also shows what it failed on).

Each hot partition key holds two *objects*: a register (one sort key) and a register pair (two
sort keys, read and written together by transactions, and one at a time by conditional writes and
ReadItem). Every value written is unique (``v<op id>.<register>``), so a token a client holds
stands for the value it was read with, and the history can be checked against a sequential model
of registers (``lincheck.REGISTERS``). Linearizability is compositional: each object's
sub-history is checked on its own. To keep each one small (the search is exponential in the
worst case), an object moves to fresh sort keys (a new *generation*) every ``GEN_OPS`` operations.

A 2xx is a known outcome, a 412 a known failure (nothing written). A 503, a lost connection or a
timeout (every request has one, so a paused node cannot hang a client) is *unknown*: the operation
may take effect at any point after its invocation, or never (``lincheck.UNKNOWN``). A refused
connection (the node is down) is ``failed``: the request never left, it is left out. Any other
answer to these well-formed requests is ``refused``.

The hot partition keys are not fixed: before the nemesis applies a layout change that moves
partitions (a fourth node joining or leaving, a capacity change), it shows the workload the
planned version, and if none of the hot partitions would move, one hot key is replaced by a key
whose partition will (``layout_planned``). After the change, ``layout_applied`` records which hot
partitions did move, from which nodes to which: the verdict says so.

Anomalies: ``non-linearizable`` (an object's history has no linearization: the message shows the
longest linearizable prefix), ``lincheck-undecided`` (the search gave up: not a pass),
``token-conflict`` (one causality token seen with two different states), ``refused``.
"""

from __future__ import annotations

import base64
import json
import random
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from tests.support import K2VHttp
from tests.support.checker.anomaly import Anomaly
from tests.support.checker.history import TOKEN
from tests.support.lincheck import INFINITY, LIVE, REGISTERS, UNKNOWN, Op, SearchLimitExceeded
from tests.support.lincheck import check as lincheck

CONSISTENCY = "X-Garage-Consistency"
GEN_OPS = 100  # operations per object generation: bounds each history the checker searches
MAX_STEPS = 1_000_000  # per object; beyond, the verdict is "undecided" (an anomaly, not a pass)
OBJECTS = {"reg": ("r",), "pair": ("a", "b")}  # object kind -> its registers' sort key prefixes
ABSENT = "absent"  # a compare target: no live value (If-None-Match: *, exists: false)
ANY = "any"  # a compare target: some live value (If-Match: *)


@dataclass(eq=False)
class CasOp:
    """One operation of one client on one object, as recorded.

    ``compares``: ``(register, target, expected value, token)`` with ``target`` one of ``token``,
    ``value``, ``absent``, ``any`` (the expected value is what the client read with the token,
    None for ``absent``); ``writes``: ``(register, new value or None)``; ``reads``: the registers a
    read shows; ``fail_reads``: the registers the failure branch shows (a 412's token included).
    """

    id: int
    client: int
    via: str
    obj: str  # "<pk>/<kind>/g<generation>"
    pk: str
    sks: tuple[str, ...]
    kind: str  # read-item | txn-read | if-match | if-none-match | if-match-any | txn
    compares: tuple[tuple[int, str, Any, str | None], ...] = ()
    writes: tuple[tuple[int, str | None], ...] = ()
    reads: tuple[int, ...] = ()
    fail_reads: tuple[int, ...] = ()
    start: float = 0.0
    end: float | None = None
    status: str = "pending"  # ok | unknown (5xx, error, timeout) | failed (never sent) | refused (another 4xx)
    http: int | None = None
    succeeded: bool | None = None
    observed: dict[int, Any] = field(default_factory=dict)  # register -> None, a value, or ("fork", ...)
    tokens: dict[int, str | None] = field(default_factory=dict)  # register -> token seen with it
    detail: str = ""
    final: bool = False

    def record(self, t0: float) -> dict[str, Any]:
        return {
            "type": "consensus",
            "id": self.id,
            "client": self.client,
            "via": self.via,
            "object": self.obj,
            "op": self.kind,
            "sks": list(self.sks),
            "compares": [[i, t, e, tok] for i, t, e, tok in self.compares],
            "writes": [list(w) for w in self.writes],
            "reads": list(self.reads),
            "fail_reads": list(self.fail_reads),
            "invoke": round(self.start - t0, 6),
            "complete": None if self.end is None else round(self.end - t0, 6),
            "status": self.status,
            "http": self.http,
            "succeeded": self.succeeded,
            "observed": {str(i): list(v) if isinstance(v, tuple) else v for i, v in self.observed.items()},
            "tokens": {str(i): t for i, t in self.tokens.items()},
            "detail": self.detail,
            "final": self.final,
        }


@dataclass
class ObjectResult:
    obj: str
    ops: int
    ok: bool
    explored: int = 0
    explanation: str = ""


class ConsensusHistory:
    """Thread-safe record of the consensus operations, and their linearizability check."""

    def __init__(self, t0: float | None = None) -> None:
        self.t0 = time.monotonic() if t0 is None else t0
        self._lock = threading.Lock()
        self.ops: list[CasOp] = []
        self.moves: list[dict[str, Any]] = []  # hot partitions a layout change moved
        self.results: list[ObjectResult] = []

    def begin(self, op: CasOp) -> CasOp:
        with self._lock:
            op.id = len(self.ops) + 1
            op.start = time.monotonic()
            self.ops.append(op)
        return op

    def value(self, op: CasOp, register: int) -> str:
        return f"v{op.id}.{register}"

    # ---- the check --------------------------------------------------------------------------------

    def token_states(self) -> tuple[dict[tuple[str, int, str], Any], list[Anomaly]]:
        """What each causality token of each register stands for: the state a read showed with
        it, or the value a write left with it. A token is an item's vector clock, so it names a
        state of that item only (the items a transaction writes share its dot, hence their
        tokens). One token of one register seen with two states is a ``token-conflict``."""
        states: dict[tuple[str, int, str], Any] = {}
        where: dict[tuple[str, int, str], int] = {}
        out: list[Anomaly] = []
        for op in self.ops:
            if op.status != "ok":
                continue
            seen: list[tuple[int, Any]] = []
            if op.succeeded:
                seen += list(op.writes)
            seen += [(i, v) for i, v in op.observed.items() if not isinstance(v, tuple)]
            for i, v in seen:
                tok = op.tokens.get(i)
                if tok is None:
                    continue
                key = (op.obj, i, tok)
                if key in states and states[key] != v:
                    out.append(
                        Anomaly(
                            "token-conflict",
                            f"{op.obj}: token {tok} of register {i} stood for {states[key]!r} (op {where[key]}) "
                            f"and for {v!r} (op {op.id})",
                        )
                    )
                states.setdefault(key, v)
                where.setdefault(key, op.id)
        return states, out

    def lin_ops(self, tokens: dict[tuple[str, int, str], Any] | None = None) -> list[Op]:
        """The recorded operations as the checker's ``Op`` (reads that failed prove nothing)."""
        if tokens is None:
            tokens = self.token_states()[0]
        out: list[Op] = []
        for op in self.ops:
            if op.status not in ("ok", "unknown"):
                continue
            call = op.start - self.t0
            if op.reads:
                if op.status == "ok":
                    value = tuple(op.observed[i] for i in op.reads)
                    out.append(Op(op.obj, ("read", op.reads), value, call, self._ret(op), op.client))
                continue
            compares = tuple((i, LIVE if t == ANY else e) for i, t, e, _ in op.compares)
            inp = ("txn", compares, op.writes, op.fail_reads)
            if op.status == "unknown":
                out.append(Op(op.obj, inp, UNKNOWN, call, INFINITY, op.client))
                continue
            observed = None
            if not op.succeeded and op.fail_reads:
                observed = tuple(self._observed(op, i, tokens) for i in op.fail_reads)
            out.append(Op(op.obj, inp, (bool(op.succeeded), observed), call, self._ret(op), op.client))
        return out

    def _ret(self, op: CasOp) -> float:
        assert op.end is not None
        return op.end - self.t0

    @staticmethod
    def _observed(op: CasOp, i: int, tokens: dict[tuple[str, int, str], Any]) -> Any:
        if i in op.observed:
            return op.observed[i]
        tok = op.tokens.get(i)
        if tok is None:  # a 412 without a token: the item was never written
            return None
        return tokens.get((op.obj, i, tok), UNKNOWN)

    def check(self, max_steps: int = MAX_STEPS) -> list[Anomaly]:
        """Every object's history against the register model; fills ``results``."""
        tokens, anomalies = self.token_states()
        by_obj: dict[str, list[Op]] = defaultdict(list)
        for o in self.lin_ops(tokens):
            by_obj[str(o.key)].append(o)
        self.results = []
        for obj, ops in by_obj.items():
            try:
                res = lincheck(ops, REGISTERS, max_steps=max_steps)
            except SearchLimitExceeded as e:
                self.results.append(ObjectResult(obj, len(ops), False, max_steps, str(e)))
                anomalies.append(Anomaly("lincheck-undecided", str(e)))
                continue
            k = res.keys[0]
            text = "" if res.ok else res.explain(REGISTERS)
            self.results.append(ObjectResult(obj, len(ops), res.ok, k.explored, text))
            if not res.ok:
                anomalies.append(Anomaly("non-linearizable", f"{obj}: {text}"))
        anomalies += [
            Anomaly("refused", f"op {op.id} ({op.kind} on {op.obj} via {op.via}): {op.detail}")
            for op in self.ops
            if op.status == "refused"
        ]
        return anomalies

    def stats(self) -> dict[str, Any]:
        """Figures for the verdict: histories (objects), operations by kind and status, moves."""
        kinds = Counter(op.kind for op in self.ops)
        statuses = Counter(op.status for op in self.ops)
        sizes = [r.ops for r in self.results]
        return {
            "histories": len(self.results),
            "operations": len(self.ops),
            "by_kind": dict(sorted(kinds.items())),
            "by_status": dict(sorted(statuses.items())),
            "succeeded": sum(1 for op in self.ops if op.status == "ok" and op.succeeded and op.writes),
            "compare_failed": sum(1 for op in self.ops if op.status == "ok" and op.succeeded is False),
            "largest_history": max(sizes, default=0),
            "search_steps": sum(r.explored for r in self.results),
            "non_linearizable": sum(1 for r in self.results if not r.ok),
            "hot_partition_moves": [{**m, "answered_within_10s": self._answered_after(m)} for m in self.moves],
        }

    def _answered_after(self, move: dict[str, Any], span: float = 10.0) -> int:
        """Operations on the moved partition key answered (ok) that started within ``span`` s of
        the layout change: the partition was in use while it moved."""
        at = self.t0 + move["at"]
        return sum(
            1
            for op in self.ops
            if op.pk == move["pk"] and op.status == "ok" and at <= op.start <= at + span and not op.final
        )

    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            return [op.record(self.t0) for op in self.ops]

    @classmethod
    def from_records(cls, records: list[dict[str, Any]]) -> ConsensusHistory:
        """The history back from its ``consensus`` records (e.g. a ``make chaos`` file), to check
        it again or to doctor it."""
        h = cls(0.0)
        for r in records:
            if r.get("type") != "consensus":
                continue
            h.ops.append(
                CasOp(
                    r["id"],
                    r["client"],
                    r["via"],
                    r["object"],
                    r["object"].split("/")[0],
                    tuple(r["sks"]),
                    r["op"],
                    tuple((i, t, e, tok) for i, t, e, tok in r["compares"]),
                    tuple((i, v) for i, v in r["writes"]),
                    tuple(r["reads"]),
                    tuple(r["fail_reads"]),
                    r["invoke"],
                    r["complete"],
                    r["status"],
                    r["http"],
                    r["succeeded"],
                    {int(i): tuple(v) if isinstance(v, list) else v for i, v in r["observed"].items()},
                    {int(i): t for i, t in r["tokens"].items()},
                    r["detail"],
                    r["final"],
                )
            )
        return h


# ---- the K2V calls ----------------------------------------------------------------------------------


def _values(raw: list[Any]) -> Any:
    """A read's state: None (absent, tombstones), the one live value, or a ``Fork``."""
    live = sorted(base64.b64decode(v).decode(errors="replace") for v in raw if v is not None)
    if not live:
        return None
    return live[0] if len(live) == 1 else ("fork", *live)


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def run_op(history: ConsensusHistory, client: K2VHttp, bucket: str, op: CasOp, timeout: float) -> CasOp:
    """Send ``op`` (already begun in ``history``) and record its outcome."""
    path = f"/{bucket}/{quote(op.pk, safe='')}"
    try:
        if op.kind == "read-item":
            (i,) = op.reads
            headers = {"Accept": "application/json", CONSISTENCY: "linearizable"}
            resp = client.request(
                "GET", path, f"sort_key={quote(op.sks[i], safe='')}", headers=headers, timeout=timeout
            )
            _outcome(op, resp.status, resp.body)
            if resp.status == 404:
                op.status, op.observed[i], op.tokens[i] = "ok", None, None
            elif resp.status == 200:
                op.status, op.observed[i], op.tokens[i] = "ok", _values(json.loads(resp.body)), resp.header(TOKEN)
        elif op.kind in ("if-match", "if-none-match", "if-match-any"):
            ((i, target, _, token),) = op.compares
            ((_, value),) = op.writes
            cond = "*" if target in (ABSENT, ANY) else str(token)
            headers = {"If-None-Match" if target == ABSENT else "If-Match": cond}
            body = None if value is None else value.encode()
            query = f"sort_key={quote(op.sks[i], safe='')}"
            resp = client.request("PUT" if value is not None else "DELETE", path, query, body, headers, timeout=timeout)
            _outcome(op, resp.status, resp.body)
            if resp.status in (200, 204, 412):
                op.status, op.succeeded = "ok", resp.status != 412
                op.tokens[i] = resp.header(TOKEN)
        else:  # a transaction
            resp = client.request("POST", path, "txn", json.dumps(_txn_body(op)).encode(), timeout=timeout)
            _outcome(op, resp.status, resp.body)
            if resp.status == 200:
                _txn_result(op, json.loads(resp.body))
    except ConnectionRefusedError as e:  # the node is down: the request never left
        op.status, op.detail = "failed", f"{type(e).__name__}: {e}"
    except Exception as e:  # noqa: BLE001 - a timeout or a lost connection: the outcome is unknown
        op.status, op.detail = "unknown", f"{type(e).__name__}: {e}"
    op.end = time.monotonic()
    return op


def _outcome(op: CasOp, status: int, body: bytes) -> None:
    op.http = status
    if status >= 500:
        op.status, op.detail = "unknown", body[:200].decode(errors="replace")
    elif status not in (200, 204, 404, 412):
        op.status, op.detail = "refused", f"{status} {body[:200].decode(errors='replace')}"


def _txn_body(op: CasOp) -> dict[str, Any]:
    compare = []
    for i, target, expected, token in op.compares:
        sk = op.sks[i]
        if target == "token":
            compare.append({"sk": sk, "target": "token", "token": token})
        elif target == "value":
            compare.append({"sk": sk, "target": "value", "value": _b64(expected)})
        else:
            compare.append({"sk": sk, "target": "exists", "exists": target == ANY})
    success: list[dict[str, Any]] = [
        {"op": "put", "sk": op.sks[i], "v": _b64(v)} if v is not None else {"op": "delete", "sk": op.sks[i]}
        for i, v in op.writes
    ]
    success += [{"op": "read", "sk": op.sks[i]} for i in op.reads]
    failure = [{"op": "read", "sk": op.sks[i]} for i in op.fail_reads]
    return {"compare": compare, "success": success, "failure": failure}


def _txn_result(op: CasOp, body: dict[str, Any]) -> None:
    op.status, op.succeeded = "ok", bool(body["succeeded"])
    index = {sk: i for i, sk in enumerate(op.sks)}
    for r in body["results"]:
        i = index[r["sk"]]
        op.tokens[i] = r.get("ct")
        if "v" in r:
            op.observed[i] = _values(r["v"])


# ---- the workload -------------------------------------------------------------------------------------


@dataclass
class ConsensusWorkload:
    """``threads`` clients, each sending its operations through the nodes in turn, on the objects
    of the hot partition keys (``hot``, ``hot_count`` of them, drawn from ``pool``)."""

    history: ConsensusHistory
    clients: dict[str, K2VHttp]
    bucket: str
    bucket_id: bytes = b""
    threads: int = 8
    hot_count: int = 2
    seed: int = 0
    timeout: float = 15.0
    prefix: str = "cas"
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.pool = [f"{self.prefix}-{i}" for i in range(256)]
        self.hot = self.pool[: self.hot_count]
        self.used = set(self.hot)
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()
        self._gens: set[tuple[str, str, int]] = set()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def start(self) -> ConsensusWorkload:
        for t in range(self.threads):
            th = threading.Thread(target=self._run, args=(t,), name=f"consensus-{t}", daemon=True)
            th.start()
            self._workers.append(th)
        return self

    def stop(self) -> None:
        self._stop.set()
        for th in self._workers:
            th.join(timeout=self.timeout * 3)

    # ---- objects ------------------------------------------------------------------------------------

    def _pick(self, rng: random.Random) -> tuple[str, str, int]:
        """A hot object, and its current generation (a new one every ``GEN_OPS`` operations)."""
        with self._lock:
            pk = rng.choice(self.hot)
            kind = rng.choice(sorted(OBJECTS))
            gen = self._counts[(pk, kind)] // GEN_OPS
            self._counts[(pk, kind)] += 1
            self._gens.add((pk, kind, gen))
        return pk, kind, gen

    def objects(self) -> list[tuple[str, str, int]]:
        with self._lock:
            return sorted(self._gens)

    @staticmethod
    def sort_keys(kind: str, gen: int) -> tuple[str, ...]:
        return tuple(f"{p}{gen}" for p in OBJECTS[kind])

    # ---- the clients --------------------------------------------------------------------------------

    def _run(self, t: int) -> None:
        rng = random.Random(self.seed * 1000 + 700 + t)
        vias = sorted(self.clients)
        known: dict[str, dict[int, tuple[str | None, Any]]] = defaultdict(dict)  # obj -> register -> (token, value)
        i = 0
        while not self._stop.is_set():
            i += 1
            via = vias[(t + i) % len(vias)]
            pk, kind, gen = self._pick(rng)
            obj = f"{pk}/{kind}/g{gen}"
            try:
                op = self._choose(rng, t, via, pk, kind, gen, known[obj])
                self.history.begin(op)
                op.writes = tuple((r, None if v is None else self.history.value(op, r)) for r, v in op.writes)
                run_op(self.history, self.clients[via], self.bucket, op, self.timeout)
                _learn(op, known[obj])
                if op.status != "ok":
                    self._stop.wait(0.1)  # not a hot loop against a node that is down
            except Exception as e:  # noqa: BLE001 - a bug of the harness, reported by the run
                self.errors.append(f"consensus client {t}: {type(e).__name__}: {e}")
                self._stop.wait(0.5)

    def _choose(
        self,
        rng: random.Random,
        t: int,
        via: str,
        pk: str,
        kind: str,
        gen: int,
        known: dict[int, tuple[str | None, Any]],
    ) -> CasOp:
        """The next operation, from what this client knows of the object (a token and its value).

        Written values are placeholders here (``"new"``); ``_run`` names them after the op id."""
        sks = self.sort_keys(kind, gen)
        n = len(sks)
        base = {"client": t, "via": via, "obj": f"{pk}/{kind}/g{gen}", "pk": pk, "sks": sks, "id": 0}
        regs = list(range(n))
        missing = [r for r in regs if r not in known]
        x = rng.random()
        if missing and x < 0.7 or x < 0.15:
            if rng.random() < (0.6 if n > 1 else 0.3):
                return CasOp(**base, kind="txn-read", reads=tuple(regs))
            return CasOp(**base, kind="read-item", reads=(rng.choice(missing or regs),))
        if missing or x < 0.25:
            # Blind conditions, needing nothing known: insert if absent, overwrite if live.
            r = rng.choice(regs)
            if rng.random() < 0.5:
                return _conditional(base, "if-none-match", r, ABSENT, None, None)
            return _conditional(base, "if-match-any", r, ANY, LIVE_TEXT, None)
        if x < 0.55:
            # A conditional write on one register, by token (or by absence when it was absent).
            r = rng.choice(regs)
            tok, value = known[r]
            if value is None:
                return _conditional(base, "if-none-match", r, ABSENT, None, None)
            if tok is None:
                return _conditional(base, "if-match-any", r, ANY, LIVE_TEXT, None)
            return _conditional(base, "if-match", r, "token", value, tok, delete=rng.random() < 0.15)
        # A transaction: compare every register (by value, token or absence), write one or all,
        # read every register in the failure branch.
        compares = []
        for r in regs:
            tok, value = known[r]
            if value is None:
                compares.append((r, ABSENT, None, None))
            else:
                compares.append((r, "token" if tok is not None and rng.random() < 0.4 else "value", value, tok))
        if n > 1 and rng.random() < 0.3:
            r = rng.choice(regs)
            writes = ((r, None if known[r][1] is not None and rng.random() < 0.3 else "new"),)
        else:
            writes = tuple((r, "new") for r in regs)
        return CasOp(**base, kind="txn", compares=tuple(compares), writes=writes, fail_reads=tuple(regs))

    # ---- the layout -----------------------------------------------------------------------------------

    def _partition(self, pk: str) -> bytes:
        from garagekv.model.k2v.item import partition_hash

        return partition_hash(self.bucket_id, pk)

    def layout_planned(self, old: Any, planned: Any) -> bool:
        """Before a layout change: make sure a hot partition is among those it moves (False if
        the change moves no partition at all, e.g. a capacity change on three nodes)."""

        def moves(pk: str) -> bool:
            h = self._partition(pk)
            return set(old.nodes_of_hash(h)) != set(planned.nodes_of_hash(h))

        with self._lock:
            if any(moves(pk) for pk in self.hot):
                return True
            fresh = next((pk for pk in self.pool if pk not in self.used and moves(pk)), None)
            if fresh is None:
                return False
            slot = len(self.used) % len(self.hot)
            self.hot[slot] = fresh
            self.used.add(fresh)
            return True

    def layout_applied(self, old: Any, new: Any, names: dict[bytes, str], at: float) -> str:
        """After a layout change: which hot partitions moved, from which nodes to which."""
        moved = []
        with self._lock:
            hot = list(self.hot)
        for pk in hot:
            h = self._partition(pk)
            before, after = old.nodes_of_hash(h), new.nodes_of_hash(h)
            if set(before) != set(after):
                move = {
                    "pk": pk,
                    "partition": h[0],
                    "from": sorted(names.get(n, n.hex()[:8]) for n in before),
                    "to": sorted(names.get(n, n.hex()[:8]) for n in after),
                    "version": new.version,
                    "at": round(at - self.history.t0, 3),
                }
                moved.append(move)
                self.history.moves.append(move)
        return "; ".join(f"{m['pk']} moved {','.join(m['from'])} -> {','.join(m['to'])}" for m in moved)

    # ---- after the run ------------------------------------------------------------------------------

    def final_reads(self, patience: float = 30.0) -> list[Anomaly]:
        """A linearizable read of every object through every node (retried while it is unknown)."""
        out: list[Anomaly] = []
        for pk, kind, gen in self.objects():
            sks = self.sort_keys(kind, gen)
            for via, client in self.clients.items():
                deadline = time.monotonic() + patience
                while True:
                    op = CasOp(0, -1, via, f"{pk}/{kind}/g{gen}", pk, sks, "txn-read", reads=tuple(range(len(sks))))
                    op.final = True
                    run_op(self.history, client, self.bucket, self.history.begin(op), self.timeout)
                    if op.status != "unknown" or time.monotonic() > deadline:
                        break
                    time.sleep(0.5)
                if op.status == "unknown":
                    out.append(Anomaly("final-read-failed", f"final read of {op.obj} via {via}: {op.detail}"))
        return out


LIVE_TEXT = "*"  # how ``If-Match: *`` / ``exists: true`` records its expected value


def _conditional(
    base: dict[str, Any], kind: str, r: int, target: str, expected: Any, token: str | None, delete: bool = False
) -> CasOp:
    """A conditional InsertItem (DeleteItem if ``delete``) of register ``r``; a 412's token is its
    failure read (``lin_ops`` turns it into the state that token stands for)."""
    write = (r, None if delete else "new")
    return CasOp(**base, kind=kind, compares=((r, target, expected, token),), writes=(write,), fail_reads=(r,))


def _learn(op: CasOp, known: dict[int, tuple[str | None, Any]]) -> None:
    """What the client knows of the object after ``op``: the token and value of each register."""
    if op.status == "failed":
        return
    if op.status != "ok":
        for r, _ in op.writes:
            known.pop(r, None)  # may or may not have applied
        return
    if op.succeeded:
        for r, v in op.writes:
            known[r] = (op.tokens.get(r), v)
    elif op.succeeded is False:
        for r, _, _, _ in op.compares:
            known.pop(r, None)
    for r, v in op.observed.items():
        if isinstance(v, tuple):
            known.pop(r, None)
        else:
            known[r] = (op.tokens.get(r), v)
