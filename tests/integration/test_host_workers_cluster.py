"""A host with two workers and two one-worker hosts, rf 3, one zone (real processes); and
`garagekv dev --workers 2`.

One zone makes zone redundancy 1, so only the host constraint keeps the two workers of the big
host from holding two replicas of a partition. Checked: the shared K2V port spreads connections
over both workers and writes through it succeed; each partition has its three replicas on three
hosts; a killed worker is restarted by its supervisor with the same identity; SIGTERM stops the
host cleanly.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from garagekv.rpc.layout import NB_PARTITIONS, LayoutHistory
from tests.support import FAST_PINGS, K2VHttp, NodeProcess, free_dev_port, free_port, wait_for
from tests.support.faults import make_bucket, status
from tests.support.hosts import HostProcess

pytestmark = pytest.mark.timeout(300)


def up_ids(node: NodeProcess) -> set[str]:
    return {x["id"] for x in status(node)["nodes"] if x["up"]}


@pytest.fixture
def hosts(tmp_path):
    big = HostProcess(
        tmp_path / "big",
        extra_config=f"replication_factor = 3\n{FAST_PINGS}",
        admin_port=free_port(),
        admin_token="host-admin-token",
    )
    big.start(timeout=60)
    small = [
        NodeProcess(
            tmp_path / f"small{i}",
            extra_config=f'replication_factor = 3\n{FAST_PINGS}bootstrap_peers = ["{big.peer_spec}"]\n',
        )
        for i in range(2)
    ]
    for n in small:
        n.start(timeout=60)
    yield big, small
    for n in [big, *small]:
        n.kill()


def k2v_requests_by_worker(big: HostProcess) -> dict[str, float]:
    """K2V requests answered per worker, from one scrape of the host's shared admin port."""
    with urllib.request.urlopen(f"http://127.0.0.1:{big.admin_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for m in re.finditer(r'^garagekv_api_k2v_requests_total\{host_worker="(\d+)",[^}]*\} (\S+)$', text, re.M):
        out[m[1]] = out.get(m[1], 0.0) + float(m[2])
    return out


def test_a_host_with_two_workers_acts_as_one(hosts):
    big, small = hosts
    workers = big.worker_ids()
    everyone = {*workers, *(n.node_id for n in small)}
    for node in [big, *small]:
        wait_for(lambda node=node: up_ids(node) >= everyone, timeout=60)

    # `layout assign` on the host id stages both workers, each with half the capacity.
    big.admin("layout.assign", {"nodes": [big.host_id[:10]], "zone": "dc1", "capacity": "2G"})
    for n in small:
        big.admin("layout.assign", {"nodes": [n.node_id[:10]], "zone": "dc1", "capacity": "1G"})
    roles = {r["id"]: r for r in big.admin("layout.get")["stagedRoleChanges"]}
    assert [roles[w]["capacity"] for w in workers] == [10**9, 10**9]
    assert {roles[w]["host"] for w in workers} == {big.host_id}
    big.admin("layout.apply", {"version": 1})
    for node in [big, *small]:
        wait_for(lambda node=node: status(node)["layout_version"] >= 1, timeout=60)

    # Every partition: three replicas on three hosts, one of them a worker of the big host.
    history = LayoutHistory.decode((small[0].metadata_dir / "cluster_layout").read_bytes())
    v = history.current()
    for p in range(NB_PARTITIONS):
        nodes = [n.hex() for n in v.nodes_of(p)]
        hosts_of_p = {big.host_id if n in workers else n for n in nodes}
        assert len(hosts_of_p) == 3, (p, nodes)
        assert sum(n in workers for n in nodes) == 1
    assert {n.hex() for n, used in v.usage().items() if used} == everyone

    # Writes through the host's one K2V port reach both workers (a new connection per request).
    creds = make_bucket(small[0], "hosts")
    through_host = K2VHttp(big.endpoint, creds["access_key"], creds["secret_key"])
    through_small = K2VHttp(small[1].endpoint, creds["access_key"], creds["secret_key"])
    # The key and bucket reach both workers (any of them may answer a connection).
    wait_for(lambda: all(through_host.request("GET", "/hosts", timeout=5).status == 200 for _ in range(8)), 60)
    for i in range(40):
        r = through_host.request("PUT", f"/hosts/pk{i}", f"sort_key=s{i}", body=f"v{i}")
        assert r.status == 204, (i, r.status, r.body)
    for i in range(0, 40, 7):
        r = through_small.request("GET", f"/hosts/pk{i}", f"sort_key=s{i}")
        assert r.status == 200 and r.json() == [base64.b64encode(f"v{i}".encode()).decode()], (i, r.status, r.body)
    served = k2v_requests_by_worker(big)
    assert set(served) == {"0", "1"} and all(n > 0 for n in served.values()), served

    # Kill worker 1: the supervisor restarts it, same identity, new process.
    before = big.worker_admin(1, "node.info")
    assert (before["host"], before["worker"]) == (big.host_id, 1)
    os.kill(before["pid"], signal.SIGKILL)

    def restarted():
        info = big.worker_admin(1, "node.info")
        return info if info["pid"] != before["pid"] else None

    after = wait_for(restarted, timeout=60)
    assert after["id"] == before["id"] == workers[1]
    assert big.proc.poll() is None  # the supervisor itself kept running
    wait_for(lambda: workers[1] in up_ids(small[0]), timeout=60)
    for i in range(40, 50):
        r = through_host.request("PUT", f"/hosts/pk{i}", f"sort_key=s{i}", body=f"v{i}")
        assert r.status == 204, (i, r.status, r.body)

    # SIGTERM: the supervisor stops both workers cleanly, and exits 0.
    pids = [big.worker_admin(i, "node.info")["pid"] for i in range(2)]
    t0 = time.monotonic()
    assert big.stop(signal.SIGTERM, timeout=90) == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    log = (big.root / "node.log").read_text()
    assert log.count("node stopped cleanly") >= 2 and "all workers stopped" in log, time.monotonic() - t0


def free_dev_block(nodes: int, workers: int) -> int:
    """A base port for `garagekv dev --nodes N --workers W`: its K2V/admin/Hulykvs ports and the
    workers' RPC ports (PORT+100+100i+w) all free."""
    for _ in range(200):
        base = free_dev_port(nodes)
        try:
            for port in [base + 100 + 100 * i + w for i in range(nodes) for w in range(workers)]:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port block")


def test_dev_workers_gives_each_dev_node_its_workers(tmp_path):
    """`garagekv dev --workers 2`: three hosts of two workers, still replication factor 3."""
    port = free_dev_block(3, 2)
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "garagekv.cli.main",
            "dev",
            "--json",
            "--dir",
            str(tmp_path / "dev"),
            "--port",
            str(port),
        ]
        + ["--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = p.stdout.readline()
        assert line, p.stderr.read()
        info = json.loads(line)
        nodes = info["nodes"]
        assert len(nodes) == 3 and len({n["host"] for n in nodes}) == 3
        assert all(len(n["workers"]) == 2 and n["workers"][0]["id"] == n["id"] for n in nodes)
        assert [n["workers"][1]["rpc_addr"] for n in nodes] == [f"127.0.0.1:{port + 101 + 100 * i}" for i in range(3)]
        first = NodeProcess(tmp_path / "dev" / "node0")  # only for its config file: the CLI's target
        layout = first.admin("layout.get")
        host_of = {r["id"]: r["host"] for r in layout["roles"]}
        assert host_of == {w["id"]: n["host"] for n in nodes for w in n["workers"]}
        assert first.admin("cluster.status")["layout_version"] == 1
        history = LayoutHistory.decode(
            (tmp_path / "dev" / "node0" / "meta" / "worker-0" / "cluster_layout").read_bytes()
        )
        v = history.current()
        assert v.replication_factor == 3
        assert all(len({v.roles[n].host for n in v.nodes_of(p)}) == 3 for p in range(NB_PARTITIONS))
        client = K2VHttp(info["k2v_endpoint"].removeprefix("http://"), info["access_key_id"], info["secret_access_key"])
        last = K2VHttp(
            nodes[2]["k2v_endpoint"].removeprefix("http://"), info["access_key_id"], info["secret_access_key"]
        )
        assert client.request("PUT", f"/{info['bucket']}/p", "sort_key=k", b"kept").status == 204
        assert last.request("GET", f"/{info['bucket']}/p", "sort_key=k").json() == ["a2VwdA=="]
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=90) == 0
