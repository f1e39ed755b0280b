"""`garagekv dev` with the Hulykvs API on every node, `garagekv hulykvs token`, and the
[hulykvs_api] listener's start-up: HULY_* overrides, ignored database variables, a port in use."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import uuid

import jwt
import pytest

from tests.support import NodeProcess, free_dev_port, free_port, wait_for
from tests.support.hulykvs_client import SECRET, SYSTEM, HulyHttp, section


def _dev(tmp_path, port: int) -> tuple[subprocess.Popen, dict]:
    p = subprocess.Popen(
        [sys.executable, "-m", "garagekv.cli.main", "dev", "--json", "--nodes", "2", "--dir", str(tmp_path / "dev"),
         "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    line = p.stdout.readline()
    assert line, p.stderr.read()
    return p, json.loads(line)


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def test_dev_serves_hulykvs_on_every_node(tmp_path):
    port = free_dev_port(2)
    p, info = _dev(tmp_path, port)
    try:
        assert {"hulykvs_endpoint", "hulykvs_secret", "hulykvs_token", "hulykvs_default_workspace"} <= set(info)
        assert info["hulykvs_endpoint"] == f"http://127.0.0.1:{port + 1}"
        assert [n["hulykvs_endpoint"] for n in info["nodes"]] == [
            f"http://127.0.0.1:{port + 1}",
            f"http://127.0.0.1:{port + 11}",
        ]
        claims = jwt.decode(info["hulykvs_token"], info["hulykvs_secret"], algorithms=["HS256"])
        assert claims["account"] == SYSTEM
        ws = info["hulykvs_default_workspace"]
        assert str(uuid.UUID(ws)) == ws
        first = HulyHttp(_port(info["nodes"][0]["hulykvs_endpoint"]), info["hulykvs_token"])
        second = HulyHttp(_port(info["nodes"][1]["hulykvs_endpoint"]), info["hulykvs_token"])
        # API v1 on one node is the default workspace of API v2 on the other
        assert first.request("POST", "/api/dev/k", b"hello").status == 204
        assert second.get(ws, "dev", "k").body == b"hello"
        assert second.request("GET", "/ready", auth=False).status == 200
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 0
    p, again = _dev(tmp_path, port)
    try:
        # the secret and the default workspace persist, and so does the data
        assert (again["hulykvs_secret"], again["hulykvs_default_workspace"]) == (
            info["hulykvs_secret"],
            info["hulykvs_default_workspace"],
        )
        h = HulyHttp(_port(again["hulykvs_endpoint"]), again["hulykvs_token"])
        assert h.request("GET", "/api/dev/k").body == b"hello"
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 0


@pytest.fixture(scope="module")
def token_node(tmp_path_factory):
    port = free_port()
    n = NodeProcess(tmp_path_factory.mktemp("tok"), extra_config=section(port))
    n.huly_port = port
    n.start()
    yield n
    n.stop()


def test_token_command_mints_tokens(token_node):
    tok = token_node.cli("hulykvs", "token").stdout.strip()
    assert jwt.get_unverified_header(tok)["alg"] == "HS256"
    assert jwt.decode(tok, SECRET, algorithms=["HS256"]) == {"account": SYSTEM}
    assert jwt.decode(token_node.cli("hulykvs", "token", "--system").stdout.strip(), SECRET, algorithms=["HS256"]) == {
        "account": SYSTEM
    }
    account, ws = uuid.uuid4(), uuid.uuid4()
    tok = token_node.cli("hulykvs", "token", "--account", account.hex, "--workspace", str(ws).upper(), "--ttl", "1h")
    claims = jwt.decode(tok.stdout.strip(), SECRET, algorithms=["HS256"])
    assert (claims["account"], claims["workspace"]) == (str(account), str(ws))
    assert time.time() + 3000 < claims["exp"] <= time.time() + 3600
    # the minted token works in its workspace only
    h = HulyHttp(token_node.huly_port, tok.stdout.strip())
    assert h.put(str(ws), "ns", "k", b"v").status == 204
    assert h.put(str(uuid.uuid4()), "ns", "k", b"v").status == 403


@pytest.mark.parametrize(
    "args,words",
    [(["--account", "nope"], "not a UUID"), (["--workspace", "nope"], "not a UUID"), (["--ttl", "soon"], "--ttl"),
     (["--ttl", "0"], "--ttl")],
)  # fmt: skip
def test_token_command_errors(token_node, args, words):
    r = token_node.cli("hulykvs", "token", *args, check=False)
    assert r.returncode == 1 and words in r.stderr and not r.stdout
    assert "Traceback" not in r.stderr


def test_token_command_needs_the_section(tmp_path):
    n = NodeProcess(tmp_path / "plain")
    n.write_config()
    r = n.cli("hulykvs", "token", check=False)
    assert r.returncode == 1 and "[hulykvs_api]" in r.stderr
    r = n.cli("hulykvs", "token", "--system", "--account", str(uuid.uuid4()), check=False)
    assert r.returncode == 2  # argparse: one or the other


def test_env_overrides_and_ignored_database_settings(tmp_path, monkeypatch):
    configured, overridden = free_port(), free_port()
    monkeypatch.setenv("HULY_BIND_PORT", str(overridden))
    monkeypatch.setenv("HULY_TOKEN_SECRET", "s" * 40)
    monkeypatch.setenv("HULY_DB_CONNECTION", "postgresql://root@huly.local:26257/defaultdb")
    n = NodeProcess(tmp_path / "env", extra_config=section(configured))
    n.start()
    try:
        wait_for(lambda: HulyHttp(overridden).request("GET", "/status", auth=False).status == 200)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", configured), timeout=2).close()
        tok = jwt.encode({"account": SYSTEM}, "s" * 40, algorithm="HS256")
        assert HulyHttp(overridden, tok).request("GET", "/api/ns").status == 200
        log = (n.root / "node.log").read_text()
        assert log.count("HULY_DB_CONNECTION") == 1 and "ignored" in log
    finally:
        n.stop()


def test_port_in_use_names_the_config_key(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        n = NodeProcess(tmp_path / "busy", extra_config=section(port))
        with pytest.raises(RuntimeError) as e:
            n.start()
    assert "[hulykvs_api] api_bind_addr" in str(e.value)
    assert "Traceback" not in str(e.value)
