"""Log capture on a real node at debug level: structured lines with request ids, and no secret ever."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support import K2VHttp, NodeProcess, free_port

RPC_SECRET = "ab" * 32  # what NodeProcess writes
ADMIN_TOKEN = "log-test-admin-token-5f1e2d3c"
METRICS_TOKEN = "log-test-metrics-token-9a8b7c"
WRONG_TOKEN = "log-test-wrong-token-4d5e6f"


def test_secrets_never_reach_the_logs(tmp_path):
    n = NodeProcess(
        tmp_path / "logs",
        admin_port=free_port(),
        admin_token=ADMIN_TOKEN,
        metrics_token=METRICS_TOKEN,
        extra_config='log_level = "debug"\nlog_format = "json"\n',
    )
    n.start()
    secrets = {RPC_SECRET, ADMIN_TOKEN, METRICS_TOKEN, WRONG_TOKEN}
    try:
        # Keys created and shown through the admin API, the CLI and imported with a chosen secret.
        key = n.admin_http("POST", "/v1/key", body={"name": "log-key"}).json()
        secrets.add(key["secretAccessKey"])
        shown = n.admin_http("GET", "/v1/key", f"id={key['accessKeyId']}&showSecretKey=true").json()
        assert shown["secretAccessKey"] == key["secretAccessKey"]
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "garagekv.cli.main",
                "-c",
                str(n.config_path),
                "key",
                "create",
                "cli-log-key",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode == 0, r.stderr
        secrets.add(json.loads(r.stdout)["secretAccessKey"])
        imported_secret = "9c" * 32
        n.admin_http(
            "POST", "/v1/key/import", body={"accessKeyId": "GK" + "9d" * 12, "secretAccessKey": imported_secret}
        )
        secrets.add(imported_secret)
        # Failed and successful admin calls, with wrong and right tokens.
        assert n.admin_http("GET", "/v1/status", token=WRONG_TOKEN).status == 403
        assert n.admin_http("GET", "/metrics", token=WRONG_TOKEN).status == 403
        assert n.admin_http("GET", "/metrics", token=METRICS_TOKEN).status == 200
        bucket = n.admin_http("POST", "/v1/bucket", body={"globalAlias": "log-bucket"}).json()
        n.admin_http(
            "POST",
            "/v1/bucket/allow",
            body={
                "bucketId": bucket["id"],
                "accessKeyId": key["accessKeyId"],
                "permissions": {"read": True, "write": True},
            },
        )
        # K2V requests signed with the secret: good, badly signed, and an internal-error-free 404.
        k2v = K2VHttp(n.endpoint, key["accessKeyId"], key["secretAccessKey"])
        put = k2v.request("PUT", "/log-bucket/pk", "sort_key=sk", b"value")
        assert put.status == 204
        assert k2v.request("GET", "/log-bucket/pk", "sort_key=sk").status == 200
        assert k2v.request("GET", "/log-bucket/pk", "sort_key=nope").status == 404
        bad = K2VHttp(n.endpoint, key["accessKeyId"], "00" * 32)
        assert bad.request("GET", "/log-bucket/pk", "sort_key=sk").status == 403
    finally:
        assert n.stop() == 0

    text = (n.root / "node.log").read_text()
    for secret in secrets:
        assert secret not in text, f"a secret ({secret[:6]}...) was logged"

    # The logs are there and useful: one JSON object per line, K2V access lines with request ids.
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    k2v_lines = [line for line in lines if line["logger"] == "garagekv.access.k2v"]
    assert len(k2v_lines) >= 4
    put_line = next(line for line in k2v_lines if line.get("request_id") == put.header("X-Request-Id"))
    assert put_line["endpoint"] == "InsertItem" and put_line["status"] == 204 and put_line["method"] == "PUT"
    assert any(line.get("error_code") == "AccessDenied" for line in k2v_lines)
    admin_lines = [line for line in lines if line["logger"] == "garagekv.access.admin"]
    assert any(line["endpoint"] == "CreateKey" and line["status"] == 200 for line in admin_lines)
    assert any(line["status"] == 403 for line in admin_lines)
