"""Structured logs: JSON or text lines, request ids, and secrets that never reach a line."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest

from garagekv.model.key_table import Key
from garagekv.util import log as ulog
from garagekv.util.config import AdminConfig, Config, S3ApiConfig

SECRET = "f" * 20 + "0123456789abcdef" * 2 + "e" * 12  # 64 hex, like a key secret or rpc_secret


@pytest.fixture
def capture():
    """Install the node's logging on a string buffer; restore the root logger afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    buf = io.StringIO()

    def install(fmt: str = "json", secrets: tuple = ()) -> io.StringIO:
        ulog.setup_logging("debug", fmt, secrets_=secrets, stream=buf)
        return buf

    yield install
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in saved[0]:
        root.addHandler(h)
    root.setLevel(saved[1])
    ulog.redactor.clear()


def lines(buf: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_json_lines_have_the_fields_and_extras(capture):
    buf = capture("json")
    logging.getLogger("garagekv.test").info('quote " and\nnewline %s', "arg", extra={"status": 204, "path": "/b/p"})
    logging.getLogger("garagekv.test").warning("second")
    out = lines(buf)
    assert len(out) == 2  # one object per line, even with a newline in the message
    first = out[0]
    assert first["level"] == "info" and first["logger"] == "garagekv.test"
    assert first["msg"] == 'quote " and\nnewline arg'
    assert first["status"] == 204 and first["path"] == "/b/p"
    assert first["ts"].endswith("Z") and "T" in first["ts"]
    assert "request_id" not in first
    assert out[1]["level"] == "warning"


def test_json_exception_is_one_line(capture):
    buf = capture("json")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("x").exception("failed")
    (line,) = lines(buf)
    assert "ValueError: boom" in line["exc"]


def test_text_format(capture):
    buf = capture("text")
    rid, token = ulog.bind_request_id()
    try:
        logging.getLogger("garagekv.t").info("hello %d", 5, extra={"status": 200})
    finally:
        ulog.request_id_var.reset(token)
    text = buf.getvalue()
    assert "INFO garagekv.t: hello 5" in text and f"[rid={rid}]" in text and "status=200" in text


def test_request_id_follows_the_task(capture):
    buf = capture("json")

    async def request(incoming: str | None) -> str:
        rid, _ = ulog.bind_request_id(incoming)
        await asyncio.sleep(0)
        assert ulog.current_request_id() == rid
        logging.getLogger("garagekv.req").info("serving")
        return rid

    async def main() -> list[str]:
        return await asyncio.gather(request(None), request("client-id-1"), request("bad id!"))

    rids = asyncio.run(main())
    assert rids[1] == "client-id-1" and rids[2] != "bad id!" and len(rids[0]) == 16
    served = [line for line in lines(buf) if line["logger"] == "garagekv.req"]
    assert sorted(line["request_id"] for line in served) == sorted(rids)
    assert ulog.current_request_id() is None


def test_registered_secrets_are_redacted_everywhere(capture):
    buf = capture("json", secrets=(SECRET, "the-admin-token", None))
    lg = logging.getLogger("garagekv.leak")
    lg.info("rpc secret is %s", SECRET)
    lg.info("token the-admin-token in the middle")
    lg.info("extra", extra={"detail": f"has {SECRET}", "nested": {"deep": [SECRET]}})
    try:
        raise RuntimeError(f"failure mentioning {SECRET}")
    except RuntimeError:
        lg.exception("oops")
    text = buf.getvalue()
    assert SECRET not in text and "the-admin-token" not in text
    assert text.count(ulog.REDACTED) >= 5


def test_secret_patterns_are_redacted_without_registration(capture):
    buf = capture("text")
    lg = logging.getLogger("garagekv.leak")
    key = Key.new("leaky")
    secret = key.params.secret_key
    lg.debug("key %r", key)  # the repr has no secret at all
    lg.debug("params secret_key=%s and secretAccessKey: %s", secret, secret)
    lg.debug('json {"secretAccessKey": "%s", "name": "x"}', secret)
    lg.debug("Secret key: %s", secret)
    lg.debug("headers {'Authorization': 'AWS4-HMAC-SHA256 Credential=GK1/x, Signature=%s'}", secret)
    lg.debug("Authorization: Bearer %s", "some-bearer-token-value")
    lg.debug("url /b/p?X-Amz-Signature=%s&x=1", secret)
    lg.debug("config rpc_secret = '%s'", secret)
    lg.debug("admin_token=%s metrics_token=%s", "tok-one-value", "tok-two-value")
    lg.debug(
        "fields", extra={"secret_access_key": secret, "authorization": "Bearer abcdefgh", "password": "hunter2hunter2"}
    )
    text = buf.getvalue()
    for leaked in (secret, "some-bearer-token-value", "tok-one-value", "tok-two-value", "abcdefgh", "hunter2hunter2"):
        assert leaked not in text, (leaked, text)
    assert "leaky" in text  # non-secret data stays readable


def test_names_that_merely_contain_a_secret_word_are_kept(capture):
    buf = capture("text")
    logging.getLogger("garagekv").info("GET /v1/key?id=GK1&showSecretKey=true and /b/p?causality_token=abcdef")
    assert "showSecretKey=true" in buf.getvalue() and "causality_token=abcdef" in buf.getvalue()


def test_ordinary_hex_is_kept(capture):
    buf = capture("text")
    bucket_id = "0123456789abcdef" * 4
    logging.getLogger("garagekv").info("bucket %s created; node %s", bucket_id, bucket_id[::-1])
    assert bucket_id in buf.getvalue()  # only secrets are redacted, not every 64-hex string


def test_config_reprs_hide_secrets():
    cfg = Config(
        metadata_dir="/m",
        s3_api=S3ApiConfig(s3_region="garage"),
        rpc_secret=SECRET,
        admin=AdminConfig(api_bind_addr="127.0.0.1:1", admin_token="adm-tok", metrics_token="met-tok"),
    )
    text = repr(cfg)
    assert SECRET not in text and "adm-tok" not in text and "met-tok" not in text


def test_a_request_id_from_elsewhere_is_one_line_of_the_allowed_characters():
    assert ulog.valid_request_id("rid-1.a:b_c") == "rid-1.a:b_c"
    for bad in ("rid\n", "rid\nforged log line", "", "x" * 65, "r id", 5):
        assert ulog.valid_request_id(bad) is None, bad
