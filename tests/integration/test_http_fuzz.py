"""Random requests against one node's K2V, Hulykvs and admin APIs (tests/support/fuzz.py).

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

from tests.support import K2VHttp, NodeProcess, Response, free_port, wait_for
from tests.support.faults import bucket_visible, make_bucket
from tests.support.fuzz import Fuzzer, FuzzRequest
from tests.support.hulykvs_client import HulyHttp, section, token
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


def test_random_hulykvs_and_admin_requests_get_2xx_or_a_precise_4xx(fnode):
    fuzz = Fuzzer(3)
    huly_host, ws = f"127.0.0.1:{fnode.huly_port}", str(uuid.uuid4())
    bearer = {"Authorization": f"Bearer {token()}"}
    admin_host, admin = f"127.0.0.1:{fnode.admin_port}", {"Authorization": "Bearer fuzz-admin"}
    for _ in range(OTHER_REQUESTS):
        req = fuzz.hulykvs(ws)
        _check(_send(huly_host, req, {**req.headers, **bearer}), req, {"error"})
        req = fuzz.admin()
        _check(_send(admin_host, req, {**req.headers, **admin}), req, {"code", "message"})
    assert HulyHttp(fnode.huly_port, token()).put(ws, "ns", "after", b"v").status == 204
    assert fnode.admin_http("GET", "/v1/status").status == 200
