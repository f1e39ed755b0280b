"""K2V client value types, error mapping and connection settings (no network)."""

from __future__ import annotations

import base64
import io
import json
import struct
from pathlib import Path

import pytest

from garagekv.client import (
    CausalityToken,
    IndexPage,
    Item,
    ItemPage,
    K2VClient,
    K2VClientSync,
    errors,
)
from garagekv.client.config import (
    check_bucket,
    dev_json_settings,
    env_settings,
    load_dev_json,
    normalize_endpoint,
    resolve,
)

DEV = {
    "k2v_endpoint": "http://127.0.0.1:3904",
    "region": "garage",
    "access_key_id": "GKabc",
    "secret_access_key": "secret",
    "bucket": "dev-bucket",
    "nodes": [{"id": "x"}],
}


def make_token(pairs: list[tuple[int, int]]) -> str:
    x = 0
    for n, t in pairs:
        x ^= n ^ t
    raw = struct.pack(">Q", x) + b"".join(struct.pack(">QQ", n, t) for n, t in sorted(pairs))
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# --- tokens -----------------------------------------------------------------------------------


def test_token_parse_and_clock():
    s = make_token([(1, 100), (7, 5)])
    tok = CausalityToken.parse(s)
    assert str(tok) == s and tok.clock() == [(1, 100), (7, 5)]
    assert CausalityToken.EMPTY.value == "AAAAAAAAAAA" and CausalityToken.EMPTY.clock() == []
    assert CausalityToken.coerce(s) == tok and CausalityToken.coerce(tok) is tok


@pytest.mark.parametrize(
    "bad", ["", "!!!", "AAAAAAAAAAA=", "AAAA+AAAAAA", "AAAAAAAA", make_token([(1, 2)])[:-2] + "AA"]
)
def test_token_parse_rejects(bad):
    with pytest.raises(ValueError):
        CausalityToken.parse(bad)


def test_token_construction_does_not_validate():
    assert CausalityToken("whatever").value == "whatever"  # the server is the judge


# --- items and pages --------------------------------------------------------------------------


def test_item_properties():
    tok = CausalityToken.EMPTY
    one = Item("p", "s", [b"v"], tok)
    assert one.value == b"v" and not one.is_conflict and not one.is_deleted and one.live_values == [b"v"]
    deleted = Item("p", "s", [None], tok)
    assert deleted.value is None and deleted.is_deleted and deleted.live_values == []
    conflict = Item("p", "s", [b"a", None], tok)
    assert conflict.is_conflict and not conflict.is_deleted and conflict.live_values == [b"a"]
    with pytest.raises(ValueError):
        _ = conflict.value
    assert conflict.to_json() == {"pk": "p", "sk": "s", "ct": "AAAAAAAAAAA", "v": ["YQ==", None]}
    assert Item.from_json("p", conflict.to_json()) == conflict


def test_pages_from_wire_json():
    page = ItemPage.from_json(
        {
            "partitionKey": "p",
            "prefix": None,
            "start": "a",
            "end": None,
            "limit": 2,
            "reverse": False,
            "singleItem": False,
            "conflictsOnly": False,
            "tombstones": True,
            "items": [{"sk": "a", "ct": "AAAAAAAAAAA", "v": [None]}],
            "more": True,
            "nextStart": "b",
        }
    )
    assert page.query.start == "a" and page.query.limit == 2 and page.query.tombstones
    assert page.items[0].values == [None] and page.items[0].partition_key == "p"
    assert page.more and page.next_start == "b"
    idx = IndexPage.from_json(
        {
            "prefix": None,
            "start": None,
            "end": None,
            "limit": None,
            "reverse": False,
            "partitionKeys": [{"pk": "x", "entries": 1, "conflicts": 0, "values": 1, "bytes": 3}],
            "more": False,
            "nextStart": None,
        }
    )
    assert idx.partition_keys[0].partition_key == "x" and idx.partition_keys[0].bytes == 3 and not idx.more


# --- errors -----------------------------------------------------------------------------------


def body(code: str, message: str = "m", path: str = "/b/p") -> bytes:
    return json.dumps({"code": code, "message": message, "region": "garage", "path": path}).encode()


@pytest.mark.parametrize(
    ("status", "code", "cls", "family"),
    [
        (400, "InvalidRequest", errors.InvalidRequest, errors.BadRequest),
        (400, "CausalityToken", errors.InvalidCausalityToken, errors.BadRequest),
        (400, "InvalidUtf8String", errors.InvalidUtf8String, errors.BadRequest),
        (400, "InvalidHeaderValue", errors.InvalidHeaderValue, errors.BadRequest),
        (400, "AuthorizationHeaderMalformed", errors.AuthorizationHeaderMalformed, errors.BadRequest),
        (400, "InvalidDigest", errors.InvalidDigest, errors.BadRequest),
        (403, "AccessDenied", errors.AccessDenied, errors.Forbidden),
        (403, "RequestTimeTooSkewed", errors.RequestTimeTooSkewed, errors.Forbidden),
        (404, "NoSuchKey", errors.NoSuchKey, errors.NotFound),
        (404, "NoSuchBucket", errors.NoSuchBucket, errors.NotFound),
        (406, "NotAcceptable", errors.NotAcceptable, errors.NotAcceptable),
        (413, "EntityTooLarge", errors.EntityTooLarge, errors.EntityTooLarge),
        (500, "InternalError", errors.InternalError, errors.ServerError),
        (503, "ServiceUnavailable", errors.ServiceUnavailable, errors.ServerError),
    ],
)
def test_error_mapping_by_code(status, code, cls, family):
    e = errors.error_from_response(status, body(code, "the message"))
    assert type(e) is cls and isinstance(e, family) and isinstance(e, errors.K2VError)
    assert (e.code, e.message, e.status, e.path, e.region) == (code, "the message", status, "/b/p", "garage")
    assert code in str(e) and str(status) in str(e)


def test_error_mapping_fallbacks():
    e = errors.error_from_response(400, body("SomethingNew"))
    assert type(e) is errors.BadRequest and e.code == "SomethingNew"
    e = errors.error_from_response(502, b"<html>Bad gateway</html>", "/b")
    assert type(e) is errors.ServerError and e.status == 502 and "Bad gateway" in e.message and e.path == "/b"
    e = errors.error_from_response(409, b"")
    assert type(e) is errors.Conflict and e.message == "HTTP 409"
    e = errors.error_from_response(418, b"{}")
    assert type(e) is errors.K2VError and e.status == 418
    assert isinstance(errors.K2VTimeoutError("t"), TimeoutError)
    assert errors.K2VConnectionError("x").status is None


# --- settings ---------------------------------------------------------------------------------


def test_normalize_endpoint():
    assert normalize_endpoint("127.0.0.1:3904") == "http://127.0.0.1:3904"
    assert normalize_endpoint("https://k2v.example.com/") == "https://k2v.example.com"
    for bad in ("", "ftp://x", "http://h/path", "http://h?x=1"):
        with pytest.raises(ValueError):
            normalize_endpoint(bad)


def test_check_bucket():
    assert check_bucket("dev-bucket") == "dev-bucket"
    for bad in ("", "a/b", "a b", "é"):
        with pytest.raises(ValueError):
            check_bucket(bad)


def test_load_dev_json_forms(tmp_path: Path):
    text = json.dumps(DEV)
    p = tmp_path / "dev.json"
    p.write_text(text + "\n")
    mixed = "starting...\n" + text + "\n# Try it\n"
    for src in (DEV, text, text.encode(), p, io.StringIO(text), mixed):
        assert load_dev_json(src)["bucket"] == "dev-bucket"
    with pytest.raises(ValueError):
        load_dev_json("no json here")
    assert dev_json_settings(DEV) == {
        "endpoint": "http://127.0.0.1:3904",
        "region": "garage",
        "access_key_id": "GKabc",
        "secret_access_key": "secret",
        "bucket": "dev-bucket",
    }
    with pytest.raises(ValueError, match="bucket"):
        dev_json_settings({**DEV, "bucket": None})


def test_env_settings_and_precedence():
    env = {
        "AWS_ACCESS_KEY_ID": "GKenv",
        "AWS_SECRET_ACCESS_KEY": "envsecret",
        "AWS_DEFAULT_REGION": "r1",
        "K2V_ENDPOINT": "h:1",
        "GARAGEKV_K2V_ENDPOINT": "h:2",
        "GARAGEKV_BUCKET": "b-env",
    }
    got = env_settings(env)
    assert got == {
        "endpoint": "h:2",
        "region": "r1",
        "access_key_id": "GKenv",
        "secret_access_key": "envsecret",
        "bucket": "b-env",
    }
    s = resolve({"bucket": "b-flag", "region": None}, got)
    assert (s.bucket, s.region, s.endpoint) == ("b-flag", "r1", "http://h:2")
    assert "envsecret" not in repr(s)
    assert (
        resolve({"endpoint": "h:1", "access_key_id": "a", "secret_access_key": "s", "bucket": "b"}).region == "garage"
    )
    with pytest.raises(ValueError, match="secret_access_key, bucket"):
        resolve({"endpoint": "h:1", "access_key_id": "a"})


def test_constructors():
    c = K2VClient.from_dev_json(json.dumps(DEV), timeout=5)
    assert (c.endpoint, c.bucket, c.settings.region, c.timeout) == ("http://127.0.0.1:3904", "dev-bucket", "garage", 5)
    env = {
        "AWS_ACCESS_KEY_ID": "GKenv",
        "AWS_SECRET_ACCESS_KEY": "x",
        "GARAGEKV_K2V_ENDPOINT": "h:9",
        "GARAGEKV_BUCKET": "b-env",
    }
    c = K2VClient.from_env(env, bucket="other")
    assert (c.endpoint, c.bucket, c.settings.region) == ("http://h:9", "other", "garage")
    with pytest.raises(ValueError):
        K2VClient.from_env({})
    with K2VClientSync.from_dev_json(DEV) as s:
        assert s.settings.bucket == "dev-bucket"
        thread = s._thread
        assert thread.is_alive()
    assert not thread.is_alive()
    s.close()  # idempotent
    with pytest.raises(RuntimeError):
        s.read_item("p", "s")
