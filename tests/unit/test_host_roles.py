"""Hosts as operators see them: the `workers` key, worker configs, host ids in the status gossip,
`layout assign`/`remove` on a host, and the Host column of `status` and `layout show`.

The cluster operations run for real (the registry's ``OPS``) on a layout manager of a node that
is not started; the peers' announced hosts come from a stand-in ``host_of``.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from garagekv.admin.registry import OPS
from garagekv.cli.cluster import _print_status
from garagekv.rpc.layout import LayoutDigest
from garagekv.rpc.layout.manager import LayoutManager
from garagekv.rpc.messages import MalformedMessage
from garagekv.rpc.system_messages import NodeStatus
from garagekv.util.config import ConfigError, for_worker, parse_config, parse_workers, worker_port

SELF = b"\x10" * 32
HOST = b"\xaa" * 32  # SELF and W1, W2: the three workers of one host
W1, W2 = b"\x11" * 32, b"\x12" * 32
OTHER1, OTHER2 = b"\x21" * 32, b"\x22" * 32  # two one-node hosts
GB = 10**9

BASE = {"metadata_dir": "/var/lib/garagekv/meta", "s3_api": {"s3_region": "garage"}}


# ---------------------------------------------------------------------- configuration


@pytest.mark.parametrize(("value", "expected"), [(1, 1), (4, 4), ("3", 3), (256, 256)])
def test_workers_values(value, expected):
    assert parse_config({**BASE, "workers": value}).workers == expected
    assert parse_workers(value) == expected


def test_workers_auto_is_the_available_cores():
    import os

    assert parse_config({**BASE, "workers": "auto"}).workers == len(os.sched_getaffinity(0))
    assert parse_config(BASE).workers == 1


@pytest.mark.parametrize("bad", [0, 257, -1, "many", True, 1.5])
def test_bad_workers_are_refused(bad):
    with pytest.raises(ConfigError, match="'workers' must be an integer between 1 and 256, or \"auto\""):
        parse_config({**BASE, "workers": bad})


def test_a_worker_config_is_a_node_of_its_own():
    cfg = parse_config(
        {
            **BASE,
            "workers": 2,
            "rpc_bind_addr": "[::]:3901",
            "rpc_public_addr": "10.0.0.1:3901",
            "bootstrap_peers": ["ab" * 32 + "@10.0.0.2:3901"],
            "k2v_api": {"api_bind_addr": "[::]:3904"},
        }
    )
    sibling = "cd" * 32 + "@10.0.0.1:3901"
    w = for_worker(cfg, 1, HOST, (sibling, cfg.bootstrap_peers[0]))
    assert w.metadata_dir == Path("/var/lib/garagekv/meta/worker-1")
    assert w.snapshots_dir == Path("/var/lib/garagekv/meta/snapshots/worker-1")
    assert (w.rpc_bind_addr, w.rpc_public_addr) == ("[::]:3902", "10.0.0.1:3902")
    assert w.bootstrap_peers == ("ab" * 32 + "@10.0.0.2:3901", sibling)  # no duplicate
    assert w.k2v_api == cfg.k2v_api  # the listeners are shared
    assert (w.host_id, w.worker_index, w.is_worker, cfg.is_worker) == (HOST, 1, True, False)
    assert worker_port("127.0.0.1:65535", 0) == "127.0.0.1:65535"
    with pytest.raises(ConfigError, match="above 65535"):
        worker_port("127.0.0.1:65535", 1)


# ---------------------------------------------------------------------- gossip


def test_status_carries_host_and_worker_and_old_statuses_decode():
    digest = LayoutDigest(1, 1, b"\x00" * 32, b"\x00" * 32)
    st = NodeStatus("h", "127.0.0.1:3901", digest, 5, b"\x01" * 32, HOST, 2)
    assert NodeStatus.from_wire(st.to_wire()) == st
    plain = NodeStatus("h", "127.0.0.1:3901", digest, 5, b"\x01" * 32)
    assert "host" not in plain.to_wire() and NodeStatus.from_wire(plain.to_wire()) == plain
    with pytest.raises(MalformedMessage, match="host must be 32 bytes"):
        NodeStatus.from_wire({**st.to_wire(), "host": b"x"})
    with pytest.raises(MalformedMessage, match="worker"):
        NodeStatus.from_wire({**st.to_wire(), "worker": -1})


# ---------------------------------------------------------------------- layout operations


@pytest.fixture
def system(tmp_path):
    announced = {SELF: (HOST, 0), W1: (HOST, 1), W2: (HOST, 2)}
    return SimpleNamespace(
        node_id=SELF,
        peers={W1: None, W2: None, OTHER1: None, OTHER2: None},
        layout=LayoutManager(SELF, tmp_path, 3, "consistent"),
        host_of=lambda n: announced.get(n, (None, None)),
        public_addr="127.0.0.1:3901",
        hostname="h",
        is_up=lambda n: True,
    )


async def op(system, name, **args):
    return await OPS[name](SimpleNamespace(system=system), args)


async def test_assigning_a_host_assigns_all_its_workers_with_the_capacity_split(system):
    await op(system, "layout.assign", nodes=[HOST.hex()[:8]], zone="dc1", capacity="10G", tags=["ssd"])
    planned = system.layout.history.planned_roles()
    assert sorted(planned) == [SELF, W1, W2]
    assert [planned[n].capacity for n in (SELF, W1, W2)] == [3333333334, 3333333333, 3333333333]
    assert all(planned[n].host == HOST and planned[n].zone == "dc1" and planned[n].tags == ("ssd",) for n in planned)
    # Any worker's id stands for its host too; without -c the host keeps its total capacity.
    await op(system, "layout.assign", nodes=[W2.hex()[:6]], zone="dc2")
    planned = system.layout.history.planned_roles()
    assert {planned[n].zone for n in (SELF, W1, W2)} == {"dc2"}
    assert sum(planned[n].capacity for n in (SELF, W1, W2)) == 10 * GB
    for other in (OTHER1, OTHER2):
        await op(system, "layout.assign", nodes=[other.hex()[:4]], zone="dc1", capacity="10G")
    res = await op(system, "layout.apply", version=1)
    v = system.layout.history.current()
    assert res["version"] == 1
    for p in range(256):  # rf 3 on three hosts: one replica each, the big host's workers apart
        assert len({v.roles[n].host or n for n in v.nodes_of(p)}) == 3
    # status shows the host and the worker of each node
    st = await op(system, "cluster.status")
    by_id = {n["id"]: n for n in st["nodes"]}
    assert (by_id[W1.hex()]["host"], by_id[W1.hex()]["worker"]) == (HOST.hex(), 1)
    assert by_id[OTHER1.hex()]["host"] is None and by_id[W1.hex()]["role"]["host"] == HOST.hex()


async def test_removing_a_host_removes_its_workers_and_a_worker_alone(system):
    await op(system, "layout.assign", nodes=[HOST.hex()], zone="dc1", capacity="3G")
    await op(system, "layout.remove", node=W1.hex()[:6])
    assert system.layout.history.planned_roles().keys() == {SELF, W2}
    await op(system, "layout.remove", node=HOST.hex()[:6])
    assert system.layout.history.planned_roles() == {}


async def test_an_ambiguous_prefix_is_refused(system):
    from garagekv.util.errors import AdminError

    with pytest.raises(AdminError, match="matches several nodes or hosts"):
        await op(system, "layout.assign", nodes=[""], zone="dc1", capacity="1G")


async def test_staging_through_the_api_keeps_the_announced_host(system):
    await op(system, "layout.stage", changes=[{"id": W1.hex(), "zone": "dc1", "capacity": GB}])
    assert system.layout.history.planned_roles()[W1].host == HOST
    from garagekv.util.errors import AdminError

    with pytest.raises(AdminError, match="cannot be set"):
        await op(system, "layout.stage", changes=[{"id": W1.hex(), "zone": "dc1", "capacity": GB, "host": "00"}])


async def test_layout_show_and_status_group_a_hosts_workers(system, capsys):
    for target in (HOST.hex(), OTHER1.hex(), OTHER2.hex()):
        await op(system, "layout.assign", nodes=[target], zone="dc1", capacity="3G")
    text = (await op(system, "layout.show"))["text"]
    assert "ID                Host              Tags  Zone  Capacity" in text
    staged = text.split("==== STAGED ROLE CHANGES ====")[1].split("====")[0]
    rows = [line.split() for line in staged.strip().splitlines()[1:]]
    assert [r[1] for r in rows[:3]] == [HOST.hex()[:16]] * 3  # the workers of the host together
    assert [len(r) for r in rows] == [5, 5, 5, 4, 4]  # one-node hosts: no Host cell
    await op(system, "layout.apply", version=1)
    shown = await op(system, "layout.show")
    assert {r["host"] for r in shown["roles"] if r["id"] in (SELF.hex(), W1.hex(), W2.hex())} == {HOST.hex()}
    assert all("host" not in r for r in shown["roles"] if r["id"] in (OTHER1.hex(), OTHER2.hex()))
    _print_status(await op(system, "cluster.status"))
    out = capsys.readouterr().out
    assert f"{HOST.hex()[:16]}/1" in out and f"Host {HOST.hex()[:16]}: 3 workers, 3 up" in out


async def test_tables_without_hosts_are_unchanged(system):
    system.host_of = lambda n: (None, None)
    await op(system, "layout.assign", nodes=[OTHER1.hex()], zone="dc1", capacity="3G")
    text = (await op(system, "layout.show"))["text"]
    assert "Host" not in text
    assert "ID                Tags  Zone  Capacity" in text


def test_the_cli_of_a_multi_worker_host_talks_to_worker_0(tmp_path):
    from garagekv.admin.remote import local_target
    from garagekv.net.identity import load_or_create_node_key

    cfg = parse_config({**BASE, "metadata_dir": str(tmp_path), "rpc_bind_addr": "0.0.0.0:3901", "workers": 2})
    w0 = load_or_create_node_key(tmp_path / "worker-0").node_id
    assert local_target(cfg) == (w0, ("127.0.0.1", 3901))
    # A node that ran here before with workers = 1 keeps its key; the host's config still means worker 0.
    old = load_or_create_node_key(tmp_path).node_id
    assert local_target(cfg)[0] == w0
    assert local_target(parse_config({**BASE, "metadata_dir": str(tmp_path)}))[0] == old


def test_bench_counts_the_workers_of_a_dev_node_as_its_server():
    from garagekv.cli.bench import dev_pids

    nodes = [{"pid": 10}, {"pid": 20, "workers": [{"id": "a", "pid": 21}, {"id": "b", "pid": 22}]}, {"pid": None}]
    assert dev_pids(nodes) == [10, 21, 22]
