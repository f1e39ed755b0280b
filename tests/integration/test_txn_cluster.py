"""Partition transactions on a 3-node cluster, through every node (docs/k2v-api.md §5b).

Atomicity is checked by an invariant only a whole transaction keeps (transfers between two
items never change their sum, as seen by linearizable reads), and exactness by a hot counter.
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
import time

from tests.support.faults import k2v_client, shared_bucket


def _b64(n: int) -> str:
    return base64.b64encode(str(n).encode()).decode()


def _num(v: str) -> int:
    return int(base64.b64decode(v))


def _txn(client, creds: dict, pk: str, body: dict):
    return client.request("POST", f"/{creds['bucket']}/{pk}", "txn", json.dumps(body).encode())


def _read_all(client, creds, pk: str, sks: list[str]) -> list[dict]:
    r = _txn(client, creds, pk, {"success": [{"op": "read", "sk": sk} for sk in sks]})
    assert r.status == 200, r.body
    return json.loads(r.body)["results"]


def test_transfers_keep_the_sum_and_a_hot_counter_is_exact(cluster3):
    creds = shared_bucket(cluster3, "txn-bucket")
    clients = [k2v_client(n, creds) for n in cluster3]
    init = {"success": [{"op": "put", "sk": "a", "v": _b64(100)}, {"op": "put", "sk": "b", "v": _b64(0)}]}
    assert _txn(clients[0], creds, "bank", init).status == 200

    lock = threading.Lock()
    done, unknown, sums = [0], [0], []
    stop = threading.Event()

    def transfer(i: int) -> None:
        cl = clients[i % 3]
        for _ in range(4):
            while True:
                a, b = _read_all(cl, creds, "bank", ["a", "b"])
                body = {
                    "compare": [
                        {"sk": "a", "target": "token", "token": a["ct"]},
                        {"sk": "b", "target": "token", "token": b["ct"]},
                    ],
                    "success": [
                        {"op": "put", "sk": "a", "v": _b64(_num(a["v"][0]) - 1)},
                        {"op": "put", "sk": "b", "v": _b64(_num(b["v"][0]) + 1)},
                    ],
                }
                r = _txn(cl, creds, "bank", body)
                if r.status == 503:  # outcome unknown: counted apart and tried again
                    with lock:
                        unknown[0] += 1
                    continue
                assert r.status == 200, r.body
                if json.loads(r.body)["succeeded"]:
                    with lock:
                        done[0] += 1
                    break

    def auditor(i: int) -> None:
        cl = clients[i % 3]
        while not stop.is_set():
            a, b = _read_all(cl, creds, "bank", ["a", "b"])
            with lock:
                sums.append(_num(a["v"][0]) + _num(b["v"][0]))

    workers = [threading.Thread(target=transfer, args=(i,)) for i in range(8)]
    auditors = [threading.Thread(target=auditor, args=(i,)) for i in range(2)]
    for t in workers + auditors:
        t.start()
    for t in workers:
        t.join()
    stop.set()
    for t in auditors:
        t.join()
    assert done[0] == 32
    assert sums and set(sums) == {100}, sorted(set(sums))
    a, b = _read_all(clients[2], creds, "bank", ["a", "b"])
    assert _num(a["v"][0]) + _num(b["v"][0]) == 100
    assert 32 <= _num(b["v"][0]) <= 32 + unknown[0]

    # A hot counter: 16 clients, compare-the-value-read-then-put loops through different nodes.
    assert _txn(clients[0], creds, "hot", {"success": [{"op": "put", "sk": "n", "v": _b64(0)}]}).status == 200
    wins, unknown[0] = [0], 0

    def incrementer(i: int) -> None:
        cl = clients[i % 3]
        for _ in range(3):
            while True:
                (cur,) = _read_all(cl, creds, "hot", ["n"])
                (v,) = cur["v"]
                body = {
                    "compare": [{"sk": "n", "target": "value", "value": v}],
                    "success": [{"op": "put", "sk": "n", "v": _b64(_num(v) + 1)}],
                }
                r = _txn(cl, creds, "hot", body)
                if r.status == 503:
                    with lock:
                        unknown[0] += 1
                    continue
                assert r.status == 200, r.body
                if json.loads(r.body)["succeeded"]:
                    with lock:
                        wins[0] += 1
                    break

    threads = [threading.Thread(target=incrementer, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins[0] == 48
    ((cur,),) = [_read_all(clients[1], creds, "hot", ["n"])]
    assert 48 <= _num(cur["v"][0]) <= 48 + unknown[0], (cur, unknown[0])


def test_a_plain_write_racing_a_transaction_is_kept_as_a_concurrent_value(cluster3):
    creds = shared_bucket(cluster3, "txn-race")
    clients = [k2v_client(n, creds) for n in cluster3]
    (cur,) = _read_all(clients[0], creds, "p", ["k"])
    assert cur == {"sk": "k", "ct": None, "v": []}
    # A plain write lands between the read and the transaction that compares on what it read:
    # the compare is false, and the plain value is intact.
    r = clients[1].request("PUT", f"/{creds['bucket']}/p", "sort_key=k", b"plain")
    assert r.status == 204
    body = {
        "compare": [{"sk": "k", "target": "exists", "exists": False}],
        "success": [{"op": "put", "sk": "k", "v": ""}],
    }
    r = _txn(clients[2], creds, "p", body)
    assert r.status == 200 and json.loads(r.body)["succeeded"] is False
    # Plain writes with no token while transactions overwrite: a transaction supersedes exactly
    # the values its token compare saw, so every acknowledged plain value is still there or was
    # seen by a transaction that (may have) applied.
    stop = threading.Event()
    plain: list[bytes] = []

    def plain_writer() -> None:
        i = 0
        while not stop.is_set():
            v = f"p{i}".encode()
            if clients[0].request("PUT", f"/{creds['bucket']}/p", "sort_key=k", v).status == 204:
                plain.append(v)
            i += 1
            stop.wait(0.05)  # leave gaps in which a transaction's compare can hold

    t = threading.Thread(target=plain_writer)
    t.start()
    superseded: set[bytes] = {b"plain"}
    applied = 0
    deadline = time.monotonic() + 60
    for i in itertools.count():
        # Until both sides made progress (transactions may be much faster than the plain writer).
        if (applied >= 5 and len(plain) > 10) or time.monotonic() > deadline:
            break
        (cur,) = _read_all(clients[i % 3], creds, "p", ["k"])
        body = {
            "compare": [{"sk": "k", "target": "token", "token": cur["ct"]}],
            "success": [{"op": "put", "sk": "k", "v": _b64(i)}],
        }
        r = _txn(clients[(i + 1) % 3], creds, "p", body)
        assert r.status in (200, 503), r.body
        if r.status == 503 or json.loads(r.body)["succeeded"]:
            superseded |= {base64.b64decode(v) for v in cur["v"] if v is not None}
            applied += 1
    stop.set()
    t.join()
    (cur,) = _read_all(clients[0], creds, "p", ["k"])
    values = {base64.b64decode(v) for v in cur["v"] if v is not None}
    assert applied >= 5 and len(plain) > 10, (applied, len(plain))
    lost = [v for v in plain if v not in values and v not in superseded]
    assert not lost, (lost, values)
