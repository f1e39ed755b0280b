"""The operator CLI against a running node, and `garagekv dev`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from tests.support import K2VHttp, NodeProcess, free_dev_port


@pytest.fixture(scope="module")
def cli_node(tmp_path_factory):
    n = NodeProcess(tmp_path_factory.mktemp("cli"))
    n.start()
    yield n
    n.stop()


def test_key_lifecycle(cli_node):
    created = json.loads(cli_node.cli("key", "create", "app-key", "--json").stdout)
    assert created["accessKeyId"].startswith("GK") and len(created["accessKeyId"]) == 26
    assert len(created["secretAccessKey"]) == 64
    listed = json.loads(cli_node.cli("key", "list", "--json").stdout)
    assert {"id": created["accessKeyId"], "name": "app-key"} in listed
    info = json.loads(cli_node.cli("key", "info", "app-key", "--json").stdout)
    assert info["secretAccessKey"] is None
    info = json.loads(cli_node.cli("key", "info", created["accessKeyId"][:8], "--show-secret", "--json").stdout)
    assert info["secretAccessKey"] == created["secretAccessKey"]
    human = cli_node.cli("key", "info", "app-key").stdout
    assert "Secret key: (redacted)" in human and f"Key ID: {created['accessKeyId']}" in human
    assert cli_node.cli("key", "delete", "app-key", check=False).returncode == 1  # needs --yes
    cli_node.cli("key", "delete", "app-key", "--yes")
    r = cli_node.cli("key", "info", "app-key", check=False)
    assert r.returncode == 1 and "No key matching" in r.stderr
    # A deleted key id can never be imported again.
    r = cli_node.cli("key", "import", created["accessKeyId"], created["secretAccessKey"], check=False)
    assert r.returncode == 1 and "already exists" in r.stderr


def test_key_import_validation(cli_node):
    r = cli_node.cli("key", "import", "GKnothex", "00" * 32, check=False)
    assert r.returncode == 1 and "not a valid" in r.stderr
    kid, secret = "GK" + "ab" * 12, "cd" * 32
    out = json.loads(cli_node.cli("key", "import", kid, secret, "-n", "imported", "--json").stdout)
    assert out["accessKeyId"] == kid and out["secretAccessKey"] == secret


def test_bucket_lifecycle_and_permissions(cli_node):
    key = json.loads(cli_node.cli("key", "create", "bkey", "--json").stdout)
    r = cli_node.cli("bucket", "create", "Bad_Name", check=False)
    assert r.returncode == 1 and "Invalid bucket name" in r.stderr and "lowercase letters" in r.stderr
    r = cli_node.cli("bucket", "create", "bucket..x", check=False)
    assert r.returncode == 1 and "two dots in a row" in r.stderr
    assert "was created" in cli_node.cli("bucket", "create", "my-bucket").stdout
    r = cli_node.cli("bucket", "create", "my-bucket", check=False)
    assert r.returncode == 1 and "already exists" in r.stderr
    out = cli_node.cli("bucket", "allow", "my-bucket", "--read", "--write", "--key", "bkey").stdout
    assert "read true, write true, owner false" in out
    info = json.loads(cli_node.cli("bucket", "info", "my-bucket", "--json").stdout)
    assert info["globalAliases"] == ["my-bucket"]
    assert info["keys"][0]["permissions"] == {"read": True, "write": True, "owner": False}

    # Write an item, so the bucket is not empty and cannot be deleted.
    client = K2VHttp(cli_node.endpoint, key["accessKeyId"], key["secretAccessKey"])
    assert client.request("PUT", "/my-bucket/p", "sort_key=s", b"v").status == 204
    r = cli_node.cli("bucket", "delete", "my-bucket", "--yes", check=False)
    assert r.returncode == 1 and "not empty" in r.stderr

    # Aliases: a second global alias, then the last alias cannot be removed.
    cli_node.cli("bucket", "alias", "my-bucket", "other-name")
    assert client.request("GET", "/other-name/p", "sort_key=s").status == 200
    cli_node.cli("bucket", "unalias", "other-name")
    assert client.request("GET", "/other-name/p", "sort_key=s").status == 404
    r = cli_node.cli("bucket", "unalias", "my-bucket", check=False)
    assert r.returncode == 1 and "doesn't have other aliases" in r.stderr

    # A key-local alias resolves only for that key.
    cli_node.cli("bucket", "alias", "my-bucket", "mine", "--local", "bkey")
    assert client.request("GET", "/mine/p", "sort_key=s").status == 200

    # deny --write leaves read.
    cli_node.cli("bucket", "deny", "my-bucket", "--write", "--key", "bkey")
    assert client.request("PUT", "/my-bucket/p", "sort_key=s", b"w").status == 403
    assert client.request("GET", "/my-bucket/p", "sort_key=s").status == 200

    # Empty the bucket, then it can be deleted (after dropping the extra local alias).
    cli_node.cli("bucket", "allow", "my-bucket", "--write", "--key", "bkey")
    tok = client.request("GET", "/my-bucket/p", "sort_key=s").header("X-Garage-Causality-Token")
    assert (
        client.request("DELETE", "/my-bucket/p", "sort_key=s", headers={"X-Garage-Causality-Token": tok}).status == 204
    )
    cli_node.cli("bucket", "unalias", "mine", "--local", "bkey")
    import time

    deadline = time.monotonic() + 10
    while True:
        r = cli_node.cli("bucket", "delete", "my-bucket", "--yes", check=False)
        if r.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.returncode == 0, r.stderr
    names = [b["globalAliases"] for b in json.loads(cli_node.cli("bucket", "list", "--json").stdout)]
    assert ["my-bucket"] not in names


def test_cli_without_running_node_fails_clearly(tmp_path):
    n = NodeProcess(tmp_path / "down")
    n.write_config()
    r = n.cli("key", "list", check=False)
    assert r.returncode == 1 and "has this node been started?" in r.stderr
    n.start()
    n.stop()
    r = n.cli("key", "list", check=False)
    assert r.returncode == 1 and "is it running?" in r.stderr


def test_dev_prints_credentials_serves_and_persists(tmp_path):
    """The default `garagekv dev` is a 3-node cluster with replication factor 3."""
    port = free_dev_port(3)

    def start() -> tuple[subprocess.Popen, dict]:
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
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = p.stdout.readline()
        assert line, p.stderr.read()
        return p, json.loads(line)

    p, info = start()
    try:
        assert set(info) >= {"k2v_endpoint", "region", "access_key_id", "secret_access_key", "bucket", "nodes"}
        node = info["nodes"][0]
        assert set(node) == {"id", "k2v_endpoint", "rpc_addr", "admin_endpoint", "hulykvs_endpoint", "config", "pid"}
        client = K2VHttp(
            info["k2v_endpoint"].removeprefix("http://"),
            info["access_key_id"],
            info["secret_access_key"],
            info["region"],
        )
        assert client.request("PUT", f"/{info['bucket']}/p", "sort_key=k", b"kept").status == 204
        assert len(info["nodes"]) == 3
        last = K2VHttp(
            info["nodes"][2]["k2v_endpoint"].removeprefix("http://"),
            info["access_key_id"],
            info["secret_access_key"],
            info["region"],
        )
        assert last.request("GET", f"/{info['bucket']}/p", "sort_key=k").json() == ["a2VwdA=="]
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 0
    p, again = start()
    try:
        assert again["access_key_id"] == info["access_key_id"]
        assert client.request("GET", f"/{info['bucket']}/p", "sort_key=k").json() == ["a2VwdA=="]
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 0
