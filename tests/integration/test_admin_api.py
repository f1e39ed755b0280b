"""The admin HTTP API against a real node: tokens, health, status, keys and buckets, `garagekv dev`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request

import pytest

from tests.support import K2VHttp, NodeProcess, free_dev_port, free_port

ADMIN_TOKEN = "admin-token-for-tests-0123456789"
METRICS_TOKEN = "metrics-token-for-tests-0123456789"


def cli_json(node: NodeProcess, *args: str):
    return json.loads(node.cli(*args, "--json").stdout)


@pytest.fixture(scope="module")
def anode(tmp_path_factory):
    n = NodeProcess(tmp_path_factory.mktemp("admin"), admin_port=free_port(), admin_token=ADMIN_TOKEN)
    n.start()
    yield n
    n.stop()


def assert_error(r, status: int, code: str, path: str | None = None) -> dict:
    assert r.status == status, (r.status, r.body)
    body = r.json()
    assert set(body) == {"code", "message", "region", "path"}
    assert body["code"] == code and body["region"] == "garage"
    if path is not None:
        assert body["path"] == path
    return body


# ---- tokens ------------------------------------------------------------------------------------


def test_missing_and_wrong_tokens_are_refused(anode):
    for path in ("/v1/status", "/v1/health", "/v1/key", "/v1/bucket"):
        body = assert_error(anode.admin_http("GET", path, token=""), 403, "AccessDenied", path)
        assert "must be provided" in body["message"]
        body = assert_error(anode.admin_http("GET", path, token="wrong"), 403, "AccessDenied", path)
        assert "Invalid authorization token" in body["message"]
        # The right token in another scheme is no bearer token.
        r = anode.admin_http("GET", path, token="", headers={"Authorization": f"Basic {ADMIN_TOKEN}"})
        assert_error(r, 403, "AccessDenied")
        assert anode.admin_http("GET", path).status == 200
    # Case-insensitive scheme, surrounding whitespace tolerated (as Garage trims).
    r = anode.admin_http("GET", "/v1/status", token="", headers={"Authorization": f"bearer  {ADMIN_TOKEN} "})
    assert r.status == 200


def test_a_token_that_is_not_utf8_is_refused_like_any_wrong_token(anode):
    """Its bytes reach the server as lone surrogates: a 403 with a UTF-8 body, never a 500."""
    for path in ("/v1/status", "/v1/bucket"):
        for auth in (b"Bearer \xe9", b"Bearer " + ADMIN_TOKEN.encode() + b"\xff"):
            r = anode.admin_http("GET", path, token="", headers={"Authorization": auth})  # sent as these bytes
            assert_error(r, 403, "AccessDenied", path)


def test_admin_endpoints_disabled_without_admin_token(tmp_path):
    n = NodeProcess(tmp_path / "noadmin", admin_port=free_port(), metrics_token=METRICS_TOKEN)
    n.start()
    try:
        body = assert_error(n.admin_http("GET", "/v1/status", token="anything"), 403, "AccessDenied")
        assert "Admin token isn't configured" in body["message"]
        assert_error(n.admin_http("POST", "/v1/key", body={"name": "x"}, token=""), 403, "AccessDenied")
        # Liveness is fine but no layout was applied: not ready (see test_admin_health_cluster).
        r = n.admin_http("GET", "/health", token="")
        assert r.status == 503 and r.json()["status"] == "no-layout"
        # A metrics token is set: /metrics needs it.
        assert_error(n.admin_http("GET", "/metrics", token=""), 403, "AccessDenied")
        assert_error(n.admin_http("GET", "/metrics", token="wrong"), 403, "AccessDenied")
        assert n.admin_http("GET", "/metrics", token=METRICS_TOKEN).status == 200
    finally:
        n.stop()


def test_metrics_accepts_admin_token_when_both_are_set(tmp_path):
    n = NodeProcess(tmp_path / "both", admin_port=free_port(), admin_token=ADMIN_TOKEN, metrics_token=METRICS_TOKEN)
    n.start()
    try:
        assert n.admin_http("GET", "/metrics", token=METRICS_TOKEN).status == 200
        assert n.admin_http("GET", "/metrics", token=ADMIN_TOKEN).status == 200
        assert_error(n.admin_http("GET", "/metrics", token=""), 403, "AccessDenied")
        # The metrics token is not an admin token.
        assert_error(n.admin_http("GET", "/v1/status", token=METRICS_TOKEN), 403, "AccessDenied")
    finally:
        n.stop()


def test_no_admin_api_without_bind_addr(tmp_path):
    n = NodeProcess(tmp_path / "plain")
    n.start()
    try:
        assert n.admin("node.info")["admin_endpoint"] is None
    finally:
        n.stop()


# ---- health, status, routing -------------------------------------------------------------------


def test_health_and_status(anode):
    # A node on which no layout has been applied is alive (local checks pass) but not ready.
    r = anode.admin_http("GET", "/health", token="")
    assert r.status == 503 and r.header("Content-Type").startswith("application/json")
    body = r.json()
    assert body["status"] == "no-layout" and body["checks"] == {"running": "ok", "database": "ok", "k2vApi": "ok"}
    assert body["layoutVersion"] == 0
    assert r.header("X-Request-Id")

    detail = anode.admin_http("GET", "/v1/health").json()
    assert detail["status"] == "unavailable" and detail["health"] == "no-layout"
    assert {"knownNodes", "connectedNodes", "storageNodes", "partitions", "partitionsQuorum"} <= set(detail)

    status = anode.admin_http("GET", "/v1/status").json()
    info = anode.admin("node.info")
    assert status["node"] == info["id"]
    assert status["garagekvVersion"] and status["hostname"] and status["dbEngine"] == "lmdb"
    assert {"commits", "writes"} <= set(status["db"])
    assert {"key", "bucket", "bucket_alias", "k2v_item"} <= set(status["tables"])
    assert status["layoutVersion"] == 0 and status["layout"]["roles"] == []
    assert [n["id"] for n in status["nodes"]] == [info["id"]]
    assert info["admin_endpoint"] == f"http://127.0.0.1:{anode.admin_port}"


def test_routing_errors_and_options(anode):
    assert_error(anode.admin_http("GET", "/v1/nothing"), 400, "InvalidRequest", "/v1/nothing")
    # Routing comes before authentication, as in Garage.
    assert_error(anode.admin_http("GET", "/v1/nothing", token=""), 400, "InvalidRequest")
    assert_error(anode.admin_http("PATCH", "/v1/key"), 400, "InvalidRequest")
    assert_error(anode.admin_http("DELETE", "/v1/key"), 400, "InvalidRequest")  # no ?id=
    assert_error(anode.admin_http("POST", "/v1/key", body=b"{not json"), 400, "InvalidRequest")
    assert_error(anode.admin_http("POST", "/v1/key", body={"name": 3}), 400, "InvalidRequest")
    r = anode.admin_http("OPTIONS", "/v1/key", token="")
    assert r.status == 204 and r.header("Access-Control-Allow-Origin") == "*"


# ---- keys --------------------------------------------------------------------------------------


def test_keys_admin_api_to_cli(anode):
    created = anode.admin_http("POST", "/v1/key", body={"name": "api-key"}).json()
    kid = created["accessKeyId"]
    assert kid.startswith("GK") and len(created["secretAccessKey"]) == 64
    assert created["permissions"] == {"createBucket": False} and created["buckets"] == []
    assert {"id": kid, "name": "api-key"} in cli_json(anode, "key", "list")
    assert cli_json(anode, "key", "info", kid, "--show-secret")["secretAccessKey"] == created["secretAccessKey"]

    # ?list is accepted (and ignored) as in Garage.
    assert {"id": kid, "name": "api-key"} in anode.admin_http("GET", "/v1/key", "list").json()

    updated = anode.admin_http(
        "POST", "/v1/key", f"id={kid}", body={"name": "renamed", "allow": {"createBucket": True}}
    ).json()
    assert updated["name"] == "renamed" and updated["permissions"]["createBucket"] is True
    assert updated["secretAccessKey"] is None
    info = cli_json(anode, "key", "info", kid)
    assert info["name"] == "renamed" and info["permissions"]["createBucket"] is True
    anode.admin_http("POST", "/v1/key", f"id={kid}", body={"deny": {"createBucket": True}})
    assert cli_json(anode, "key", "info", kid)["permissions"]["createBucket"] is False

    r = anode.admin_http("DELETE", "/v1/key", f"id={kid}")
    assert r.status == 204 and r.body == b""
    assert kid not in [k["id"] for k in cli_json(anode, "key", "list")]
    assert_error(anode.admin_http("GET", "/v1/key", f"id={kid}"), 404, "NoSuchAccessKey")
    assert_error(anode.admin_http("DELETE", "/v1/key", f"id={kid}"), 404, "NoSuchAccessKey")


def test_keys_cli_to_admin_api(anode):
    created = cli_json(anode, "key", "create", "cli-key")
    kid = created["accessKeyId"]
    by_id = anode.admin_http("GET", "/v1/key", f"id={kid}").json()
    assert by_id["name"] == "cli-key" and by_id["secretAccessKey"] is None
    shown = anode.admin_http("GET", "/v1/key", f"id={kid}&showSecretKey=true").json()
    assert shown["secretAccessKey"] == created["secretAccessKey"]
    assert anode.admin_http("GET", "/v1/key", "search=cli-key").json()["accessKeyId"] == kid
    assert anode.admin_http("GET", "/v1/key", f"search={kid[:10]}").json()["accessKeyId"] == kid
    # ?id= is exact: a prefix is not an id.
    assert_error(anode.admin_http("GET", "/v1/key", f"id={kid[:10]}"), 404, "NoSuchAccessKey")
    assert_error(anode.admin_http("GET", "/v1/key", "search=no-such-key"), 404, "NoSuchAccessKey")
    anode.cli("key", "rename", kid, "cli-key-2")
    assert anode.admin_http("GET", "/v1/key", f"id={kid}").json()["name"] == "cli-key-2"


def test_key_import(anode):
    kid, secret = "GK" + "12" * 12, "34" * 32
    r = anode.admin_http(
        "POST", "/v1/key/import", body={"accessKeyId": kid, "secretAccessKey": secret, "name": "imported"}
    )
    assert r.status == 200 and r.json()["secretAccessKey"] == secret
    assert cli_json(anode, "key", "info", kid)["name"] == "imported"
    r = anode.admin_http("POST", "/v1/key/import", body={"accessKeyId": kid, "secretAccessKey": secret})
    assert "already exists" in assert_error(r, 409, "KeyAlreadyExists")["message"]
    for bad_id, bad_secret in [("GKbad", secret), (f"GK{'ab' * 12}\n", secret), (f"GK{'cd' * 12}", secret + "\n")]:
        r = anode.admin_http("POST", "/v1/key/import", body={"accessKeyId": bad_id, "secretAccessKey": bad_secret})
        assert "not a valid" in assert_error(r, 400, "InvalidRequest")["message"], (bad_id, bad_secret)
    assert_error(anode.admin_http("POST", "/v1/key/import", body={"accessKeyId": kid}), 400, "InvalidRequest")


# ---- buckets -----------------------------------------------------------------------------------


def test_buckets_admin_api_to_cli_and_k2v(anode):
    key = anode.admin_http("POST", "/v1/key", body={"name": "bucket-user"}).json()
    kid = key["accessKeyId"]
    b = anode.admin_http("POST", "/v1/bucket", body={"globalAlias": "api-bucket"}).json()
    bid = b["id"]
    assert len(bid) == 64 and b["globalAliases"] == ["api-bucket"] and b["keys"] == []
    assert bid in [x["id"] for x in cli_json(anode, "bucket", "list")]
    assert cli_json(anode, "bucket", "info", "api-bucket")["id"] == bid
    assert anode.admin_http("GET", "/v1/bucket", "globalAlias=api-bucket").json()["id"] == bid
    assert anode.admin_http("GET", "/v1/bucket", f"id={bid}").json()["globalAliases"] == ["api-bucket"]
    assert bid in [x["id"] for x in anode.admin_http("GET", "/v1/bucket").json()]

    r = anode.admin_http("POST", "/v1/bucket", body={"globalAlias": "api-bucket"})
    assert_error(r, 409, "BucketAlreadyExists")
    assert_error(anode.admin_http("POST", "/v1/bucket", body={"globalAlias": "Bad_Name"}), 400, "InvalidBucketName")

    allowed = anode.admin_http(
        "POST",
        "/v1/bucket/allow",
        body={"bucketId": bid, "accessKeyId": kid, "permissions": {"read": True, "write": True}},
    ).json()
    assert allowed["keys"][0]["accessKeyId"] == kid
    assert allowed["keys"][0]["permissions"] == {"read": True, "write": True, "owner": False}
    cli_info = cli_json(anode, "bucket", "info", bid)
    assert cli_info["keys"][0]["permissions"] == {"read": True, "write": True, "owner": False}
    k2v = K2VHttp(anode.endpoint, kid, key["secretAccessKey"])
    assert k2v.request("PUT", "/api-bucket/pk", "sort_key=sk", b"v").status == 204

    # Global aliases, both ways.
    r = anode.admin_http("PUT", "/v1/bucket/alias/global", f"id={bid}&alias=api-bucket-2")
    assert sorted(r.json()["globalAliases"]) == ["api-bucket", "api-bucket-2"]
    assert cli_json(anode, "bucket", "info", "api-bucket-2")["id"] == bid
    assert k2v.request("GET", "/api-bucket-2/pk", "sort_key=sk").status == 200
    anode.cli("bucket", "alias", "api-bucket", "cli-alias")
    assert "cli-alias" in anode.admin_http("GET", "/v1/bucket", f"id={bid}").json()["globalAliases"]
    r = anode.admin_http("DELETE", "/v1/bucket/alias/global", f"id={bid}&alias=api-bucket-2")
    assert sorted(r.json()["globalAliases"]) == ["api-bucket", "cli-alias"]
    anode.cli("bucket", "unalias", "cli-alias")
    # An alias of another bucket is not this bucket's.
    other = anode.admin_http("POST", "/v1/bucket", body={"globalAlias": "other-bucket"}).json()
    r = anode.admin_http("DELETE", "/v1/bucket/alias/global", f"id={other['id']}&alias=api-bucket")
    assert_error(r, 400, "InvalidRequest")
    # The last alias cannot be removed.
    r = anode.admin_http("DELETE", "/v1/bucket/alias/global", f"id={bid}&alias=api-bucket")
    assert "doesn't have other aliases" in assert_error(r, 400, "InvalidRequest")["message"]

    # Local aliases.
    r = anode.admin_http("PUT", "/v1/bucket/alias/local", f"id={bid}&accessKeyId={kid}&alias=mine")
    assert {"accessKeyId": kid, "alias": "mine"} in r.json()["localAliases"]
    assert k2v.request("GET", "/mine/pk", "sort_key=sk").status == 200
    assert "mine" in cli_json(anode, "key", "info", kid)["buckets"][0]["localAliases"]
    r = anode.admin_http("DELETE", "/v1/bucket/alias/local", f"id={bid}&accessKeyId={kid}&alias=mine")
    assert r.json()["localAliases"] == []

    # Deny, then the key can no longer write.
    denied = anode.admin_http(
        "POST", "/v1/bucket/deny", body={"bucketId": bid, "accessKeyId": kid, "permissions": {"write": True}}
    ).json()
    assert denied["keys"][0]["permissions"] == {"read": True, "write": False, "owner": False}
    assert k2v.request("PUT", "/api-bucket/pk", "sort_key=sk2", b"v").status == 403

    # A bucket that holds items cannot be deleted; an empty one can.
    assert_error(anode.admin_http("DELETE", "/v1/bucket", f"id={bid}"), 409, "BucketNotEmpty")
    r = anode.admin_http("DELETE", "/v1/bucket", f"id={other['id']}")
    assert r.status == 204
    assert other["id"] not in [x["id"] for x in cli_json(anode, "bucket", "list")]
    assert_error(anode.admin_http("GET", "/v1/bucket", f"id={other['id']}"), 404, "NoSuchBucket")


def test_a_bucket_written_just_before_is_not_empty(anode):
    """The index counters are queued for about 100 ms after a write: a deletion asks every node to
    send its queue first, so an item acknowledged just before is never deleted with its bucket."""
    key = anode.admin_http("POST", "/v1/key", body={"name": "racer"}).json()
    for i in range(5):
        bid = anode.admin_http("POST", "/v1/bucket", body={"globalAlias": f"race-{i}"}).json()["id"]
        perms = {"read": True, "write": True}
        anode.admin_http(
            "POST", "/v1/bucket/allow", body={"bucketId": bid, "accessKeyId": key["accessKeyId"], "permissions": perms}
        )
        k2v = K2VHttp(anode.endpoint, key["accessKeyId"], key["secretAccessKey"])
        assert k2v.request("PUT", f"/race-{i}/pk", "sort_key=sk", b"v").status == 204
        assert_error(anode.admin_http("DELETE", "/v1/bucket", f"id={bid}"), 409, "BucketNotEmpty")
        assert k2v.request("GET", f"/race-{i}/pk", "sort_key=sk").status == 200


def test_a_bucket_id_in_upper_case_names_the_same_bucket_everywhere(anode):
    bid = anode.admin_http("POST", "/v1/bucket", body={"globalAlias": "upcase-a"}).json()["id"]
    up = bid.upper()
    r = anode.admin_http("PUT", "/v1/bucket/alias/global", f"id={up}&alias=upcase-b")
    assert sorted(r.json()["globalAliases"]) == ["upcase-a", "upcase-b"]
    r = anode.admin_http("DELETE", "/v1/bucket/alias/global", f"id={up}&alias=upcase-b")
    assert r.status == 200 and r.json()["globalAliases"] == ["upcase-a"], r.body
    assert anode.admin_http("DELETE", "/v1/bucket", f"id={up}").status == 204


def test_bucket_lookup_errors(anode):
    assert_error(anode.admin_http("GET", "/v1/bucket", "id=nothex"), 400, "InvalidRequest")
    assert_error(anode.admin_http("GET", "/v1/bucket", "id=" + "0" * 64), 404, "NoSuchBucket")
    assert_error(anode.admin_http("GET", "/v1/bucket", "globalAlias=no-such-bucket"), 404, "NoSuchBucket")
    assert_error(anode.admin_http("POST", "/v1/bucket", body={}), 400, "InvalidRequest")
    r = anode.admin_http(
        "POST",
        "/v1/bucket/allow",
        body={"bucketId": "0" * 64, "accessKeyId": "GK" + "0" * 24, "permissions": {"read": True}},
    )
    assert r.status == 404


def test_bucket_cli_to_admin_api(anode):
    anode.cli("bucket", "create", "cli-bucket")
    key = cli_json(anode, "key", "create", "cli-bucket-key")
    anode.cli("bucket", "allow", "cli-bucket", "--read", "--owner", "--key", key["accessKeyId"])
    info = anode.admin_http("GET", "/v1/bucket", "globalAlias=cli-bucket").json()
    assert info["keys"] == [
        {
            "accessKeyId": key["accessKeyId"],
            "name": "cli-bucket-key",
            "permissions": {"read": True, "write": False, "owner": True},
            "bucketLocalAliases": [],
        }
    ]


def test_create_bucket_with_local_alias(anode):
    key = anode.admin_http("POST", "/v1/key", body={"name": "local-owner"}).json()
    kid = key["accessKeyId"]
    b = anode.admin_http(
        "POST", "/v1/bucket", body={"localAlias": {"accessKeyId": kid, "alias": "my-local", "allow": {"read": True}}}
    ).json()
    assert b["globalAliases"] == [] and b["localAliases"] == [{"accessKeyId": kid, "alias": "my-local"}]
    assert b["keys"][0]["permissions"] == {"read": True, "write": False, "owner": False}
    k2v = K2VHttp(anode.endpoint, kid, key["secretAccessKey"])
    assert k2v.request("GET", "/my-local/pk", "sort_key=x").status == 404  # readable, empty
    assert k2v.request("PUT", "/my-local/pk", "sort_key=x", b"v").status == 403
    # Both aliases at once; without "allow" the key gets read, write and owner (as the CLI does).
    b2 = anode.admin_http(
        "POST",
        "/v1/bucket",
        body={"globalAlias": "both-aliases", "localAlias": {"accessKeyId": kid, "alias": "both-local"}},
    ).json()
    assert b2["globalAliases"] == ["both-aliases"]
    assert b2["keys"][0]["permissions"] == {"read": True, "write": True, "owner": True}
    assert cli_json(anode, "bucket", "info", "both-aliases")["id"] == b2["id"]
    r = anode.admin_http("POST", "/v1/bucket", body={"localAlias": {"accessKeyId": "GK" + "f" * 24, "alias": "x1y"}})
    assert_error(r, 404, "NoSuchAccessKey")


# ---- garagekv dev ------------------------------------------------------------------------------


def test_dev_serves_admin_api(tmp_path):
    port = free_dev_port()
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
            "--nodes",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = p.stdout.readline()
        assert line, p.stderr.read()
        info = json.loads(line)
        endpoint, token = info["admin_endpoint"], info["admin_token"]
        assert endpoint == info["nodes"][0]["admin_endpoint"] and endpoint.startswith("http://127.0.0.1:")
        assert (tmp_path / "dev" / "admin_token").read_text().strip() == token
        assert (tmp_path / "dev" / "admin_token").stat().st_mode & 0o077 == 0
        req = urllib.request.Request(
            f"{endpoint}/v1/bucket?globalAlias={info['bucket']}", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            bucket = json.loads(r.read())
        assert bucket["keys"][0]["accessKeyId"] == info["access_key_id"]
        with urllib.request.urlopen(f"{endpoint}/health", timeout=10) as r:
            assert r.status == 200
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 0


@pytest.mark.parametrize(
    "body",
    [
        b'{"name": "\\ud800"}',  # a key name with a lone surrogate: no UTF-8 form
        b'{"name": "k", "\\udfff": 1}',
        b"[" * 20000,
        b'{"name": "k", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"name": NaN}',
    ],
    ids=["surrogate-name", "surrogate-key", "deep", "deep-balanced", "nan"],
)
def test_hostile_json_bodies_are_400(anode, body):
    before = anode.admin_http("GET", "/v1/key", query="list").json()
    assert_error(anode.admin_http("POST", "/v1/key", body=body), 400, "InvalidRequest")
    assert anode.admin_http("GET", "/v1/key", query="list").json() == before
