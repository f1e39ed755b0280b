"""A client that goes away mid-poll frees its subscription on the server."""

from __future__ import annotations

import http.client
import time

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials


def _wait_for(pred, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_disconnect_mid_poll_frees_subscription(node, creds, k2v, pk):
    assert k2v.request("PUT", f"/test-bucket/{pk}", "sort_key=s", b"1").status == 204
    tok = k2v.request("GET", f"/test-bucket/{pk}", "sort_key=s").header("X-Garage-Causality-Token")
    base = node.admin("node.info")["poll_subscriptions"]

    path = f"/test-bucket/{pk}?sort_key=s&causality_token={tok}&timeout=600"
    req = AWSRequest("GET", f"http://{node.endpoint}{path}", headers={"x-amz-content-sha256": "UNSIGNED-PAYLOAD"})
    SigV4Auth(Credentials(creds["access_key"], creds["secret_key"]), "k2v", "garage").add_auth(req)
    conns = []
    for _ in range(3):
        c = http.client.HTTPConnection(node.endpoint, timeout=30)
        c.request("GET", path, headers=dict(req.headers.items()))
        conns.append(c)
    assert _wait_for(lambda: node.admin("node.info")["poll_subscriptions"] == base + 3)
    for c in conns:
        c.sock.close()
        c.close()
    assert _wait_for(lambda: node.admin("node.info")["poll_subscriptions"] == base)
