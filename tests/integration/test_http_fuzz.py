"""Random requests against one node's K2V, Hulykvs and admin APIs and its cluster RPC
(tests/support/fuzz.py).

Seeded, so a failure names the request to replay. Whatever a request holds, the answer is the
API's own (a 2xx, or a 4xx with its error body): never a 5xx, never a body that is not JSON.
The K2V requests are signed with botocore (the few meant to be unsigned aside), so they reach
the handlers; the node must still serve plain requests afterwards.
"""

from __future__ import annotations

import json
import os
import uuid

import pytest

from garagekv.net.netapp import NetApp
from garagekv.rpc.endpoint import endpoint_path
from garagekv.util.errors import BadRequest, InternalError, ServiceUnavailable
from tests.support import K2VHttp, NodeProcess, Response, free_port, wait_for
from tests.support.faults import bucket_visible, make_bucket
from tests.support.fuzz import Fuzzer, FuzzRequest
from tests.support.hulykvs_client import SECRET, HulyHttp, section, token
from tests.support.k2v import raw_send

K2V_REQUESTS = 1500
OTHER_REQUESTS = 600
#: ``GARAGEKV_FUZZ_SEEDS=3,4,5`` runs the K2V requests of other seeds (a longer hunt).
SEEDS = [int(s) for s in os.environ.get("GARAGEKV_FUZZ_SEEDS", "1,2").split(",")]


@pytest.fixture(scope="module")
def fnode(tmp_path_factory):
    port = free_port()
    n = NodeProcess(
        tmp_path_factory.mktemp("fuzz"), admin_port=free_port(), admin_token="fuzz-admin", extra_config=section(port)
    )
    n.huly_port = port
    n.start()
    n.creds = make_bucket(n, "fuzz-bucket")
    wait_for(lambda: bucket_visible(n, n.creds))
    yield n
    n.stop()


def _send(host: str, req: FuzzRequest, headers: dict[str, str]) -> Response:
    return raw_send(host, req.method, req.path + (f"?{req.query}" if req.query else ""), req.body, headers, 30)


def _check(r: Response, req: FuzzRequest, fields: set[str]) -> None:
    assert r.status < 500, f"{r.status} for {req}: {r.body[:300]!r}"
    if r.status >= 400 and req.method != "HEAD":
        body = json.loads(r.body.decode("utf-8"))  # valid UTF-8 JSON whatever the request quoted
        assert fields <= set(body), (req, body)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_k2v_requests_get_2xx_or_a_precise_4xx(fnode, seed):
    c = K2VHttp(fnode.endpoint, fnode.creds["access_key"], fnode.creds["secret_key"])
    fuzz = Fuzzer(seed)
    for _ in range(K2V_REQUESTS):
        req = fuzz.k2v(fnode.creds["bucket"])
        r = c.request(req.method, req.path, req.query, req.body, headers=req.headers, sign=req.sign)
        _check(r, req, {"code", "message"})
    assert c.request("PUT", "/fuzz-bucket/after", "sort_key=k", b"v").status == 204
    assert c.request("GET", "/fuzz-bucket/after", "sort_key=k", headers={"Accept": "*/*"}).body == b"v"


def test_valid_k2v_requests_with_one_field_off_get_2xx_or_a_precise_4xx(fnode):
    """Every endpoint, valid but for one field; tokens and seen markers from real answers, damaged."""
    c = K2VHttp(fnode.endpoint, fnode.creds["access_key"], fnode.creds["secret_key"])
    bucket = fnode.creds["bucket"]
    tokens, markers = [], []
    for pk in ("p1", "p2"):
        for sk in "abc":
            assert c.request("PUT", f"/{bucket}/{pk}", f"sort_key={sk}", b"v-" + sk.encode()).status == 204
            r = c.request("GET", f"/{bucket}/{pk}", f"sort_key={sk}", headers={"Accept": "application/json"})
            tokens.append(r.headers["X-Garage-Causality-Token"])
        r = c.request("POST", f"/{bucket}/{pk}", "poll_range", b'{"timeout": 1}')
        markers.append(r.json()["seenMarker"])
    fuzz = Fuzzer(5)
    for _ in range(K2V_REQUESTS // 4):
        req = fuzz.k2v_deep(bucket, tokens, markers)
        r = c.request(req.method, req.path, req.query, req.body, headers=req.headers)
        _check(r, req, {"code", "message"})


def test_random_hulykvs_and_admin_requests_get_2xx_or_a_precise_4xx(fnode):
    fuzz = Fuzzer(3)
    huly_host, ws = f"127.0.0.1:{fnode.huly_port}", str(uuid.uuid4())
    good = token()
    admin_host, admin = f"127.0.0.1:{fnode.admin_port}", {"Authorization": "Bearer fuzz-admin"}
    for _ in range(OTHER_REQUESTS):
        req = fuzz.hulykvs(ws)
        req.headers["Authorization"] = f"Bearer {good}" if fuzz.rng.random() < 0.7 else fuzz.bearer(good, SECRET)
        _check(_send(huly_host, req, req.headers), req, {"error"})
        req = fuzz.admin()
        _check(_send(admin_host, req, {**req.headers, **admin}), req, {"code", "message"})
    assert HulyHttp(fnode.huly_port, token()).put(ws, "ns", "after", b"v").status == 204
    assert fnode.admin_http("GET", "/v1/status").status == 200


def _rpc_paths() -> list[str]:
    paths = [endpoint_path("model/k2v", n) for n in ("rpc", "conditional", "conditional_batch")]
    paths += [endpoint_path("system", n) for n in ("ping", "layout_pull", "peers")]
    paths += [endpoint_path("consensus/acceptor", n) for n in ("Prepare", "Propose", "Commit", "Read", "Batch")]
    for table in ("k2v_item", "k2v_index_counter", "key", "bucket", "bucket_alias"):
        paths += [endpoint_path("table", "rpc", table), endpoint_path("table", "sync", table)]
    return paths + [endpoint_path("table", "gc", t) for t in ("k2v_item", "k2v_index_counter")]


async def test_random_rpc_messages_from_a_peer_are_refused_cleanly(fnode):
    """A peer holding the secret (a buggy one, another version) sends messages of the right
    outer shape and wrong content to every endpoint: each ends in an answer or an error the
    handler chose (never an unexpected exception), and the node keeps serving."""
    netapp = NetApp.client_only(bytes.fromhex(fnode.rpc_secret), default_timeout=5)
    node_id = bytes.fromhex(fnode.node_id)
    await netapp.connect(node_id, ("127.0.0.1", fnode.rpc_port))
    fuzz, paths = Fuzzer(4), _rpc_paths()
    try:
        for _ in range(OTHER_REQUESTS):
            path, body = fuzz.rng.choice(paths), fuzz.rpc_body()
            try:
                await netapp.call(node_id, path, body, timeout=5)
            except (BadRequest, ServiceUnavailable):
                pass  # refused, or not possible on this node now (no layout, a poll timing out)
            except InternalError as e:  # what an unexpected exception in a handler becomes
                raise AssertionError(f"{path} {body!r:.300}: {e.message}") from None
    finally:
        await netapp.close()
    assert fnode.admin_http("GET", "/v1/status").status == 200
