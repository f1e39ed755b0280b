"""Shared fixtures: a real single node process, clusters of them, clients signed with botocore, and
one node's model in-process for unit tests."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator

import pytest
from aiohttp import web

from garagekv.client import K2VClientSync
from tests.support import FAST_PINGS, REGION, K2VHttp, NodeProcess, free_port
from tests.support.faults import make_bucket, start_cluster
from tests.support.scripted_server import Script
from tests.support.standalone import StandaloneModel

#: ``GARAGEKV_TEST_CLUSTER=3`` (``make test-cluster``): the session ``node`` is one node of a
#: 3-node cluster (rf=3, layout applied), so the single-node suite runs against a real cluster;
#: ``GARAGEKV_TEST_CLUSTER_NODE=i`` picks which one (default 1: not the node the others joined).
CLUSTER_SIZE = int(os.environ.get("GARAGEKV_TEST_CLUSTER") or 0)


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "chaos: the bounded chaos run with every history checker (about a minute)")


@pytest.fixture(scope="session")
def node(tmp_path_factory) -> NodeProcess:
    """One node for the whole session (tests use their own partition keys to stay independent)."""
    cors = 'cors_allowed_origins = ["https://app.example"]'
    if CLUSTER_SIZE > 1:
        nodes = start_cluster(tmp_path_factory.mktemp("cluster"), CLUSTER_SIZE, rf=min(CLUSTER_SIZE, 3), k2v_extra=cors)
        yield nodes[int(os.environ.get("GARAGEKV_TEST_CLUSTER_NODE") or 1) % len(nodes)]
        for n in nodes:
            n.stop()
        return
    n = NodeProcess(tmp_path_factory.mktemp("node"), k2v_extra=cors)
    n.start()
    yield n
    n.stop()


@pytest.fixture(scope="session")
def creds(node) -> dict:
    return make_bucket(node, "test-bucket")


@pytest.fixture(scope="session")
def k2v(node, creds) -> K2VHttp:
    return K2VHttp(node.endpoint, creds["access_key"], creds["secret_key"])


@pytest.fixture
def pk() -> str:
    """A fresh partition key per test."""
    return f"pk-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def standalone(tmp_path) -> Iterator[StandaloneModel]:
    """One node's model in this process on real LMDB, with no peers (tests/support/standalone.py)."""
    model = StandaloneModel(tmp_path / "db")
    yield model
    model.close()


@pytest.fixture
def make_cluster(tmp_path):
    """``make_cluster(n, **kw)`` starts n nodes with fast pings, each bootstrapped from the first."""
    started: list[NodeProcess] = []

    def make(
        n: int, rf: int | None = None, extra: str = "", admin_token: str | None = None, k2v_extra: str = ""
    ) -> list[NodeProcess]:
        """``admin_token``: each node also serves the admin API (``node.admin_port``) with that token;
        ``k2v_extra``: lines for each node's ``[k2v_api]`` section."""
        rf = rf or min(n, 3)
        nodes = [
            NodeProcess(
                tmp_path / f"n{len(started) + i}",
                extra_config=f"replication_factor = {rf}\n{FAST_PINGS}{extra}",
                admin_port=None if admin_token is None else free_port(),
                admin_token=admin_token,
                k2v_extra=k2v_extra,
            )
            for i in range(n)
        ]
        nodes[0].start()
        for node in nodes[1:]:
            node.extra_config += f'bootstrap_peers = ["{nodes[0].peer_spec}"]\n'
            node.start()
        started.extend(nodes)
        return nodes

    yield make
    for node in started:
        node.stop(signal.SIGKILL)


@pytest.fixture
def cluster3(tmp_path) -> list[NodeProcess]:
    """Three nodes, one zone each, replication factor 3, the layout applied; killed afterwards."""
    nodes = start_cluster(tmp_path / "cluster3", 3, rf=3)
    yield nodes
    for n in nodes:
        n.kill()


@pytest.fixture
async def serve():
    """Start scripted HTTP servers on loopback (``await serve(script)`` gives the endpoint) for
    tests of the client without a node; all are stopped at the end of the test."""
    runners = []

    async def start(script: Script) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", script.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"

    yield start
    for r in runners:
        await r.cleanup()


@pytest.fixture
def sync(node, creds):
    """The blocking Python client on the session node, with the session's key and bucket."""
    with K2VClientSync(
        endpoint=node.endpoint,
        region=REGION,
        access_key_id=creds["access_key"],
        secret_access_key=creds["secret_key"],
        bucket=creds["bucket"],
    ) as c:
        yield c
