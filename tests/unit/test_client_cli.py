"""``garagekv k2v`` argument parsing and settings resolution (no network)."""

from __future__ import annotations

import json

import pytest

from garagekv.cli import k2v
from garagekv.cli.main import build_parser, main

ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "GARAGEKV_K2V_ENDPOINT",
    "K2V_ENDPOINT",
    "GARAGEKV_BUCKET",
    "K2V_BUCKET",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def parse(*argv: str):
    return build_parser().parse_args(["k2v", *argv])


def test_token_starting_with_dash():
    args = parse("insert", "pk", "sk", "value", "--token=-AbC_123")
    assert args.token == "-AbC_123" and args.handler is k2v.cmd_insert


def test_json_flag_before_or_after_the_command():
    assert k2v._want_json(parse("--json", "read", "p", "s"))
    assert k2v._want_json(parse("read", "p", "s", "--json"))
    assert not k2v._want_json(parse("read", "p", "s"))
    with pytest.raises(SystemExit):
        parse("read", "p", "s", "--json", "--raw")


def test_watch_takes_ranges_and_poll_range_follows_one():
    assert parse("watch", "pk").handler is k2v.cmd_watch and parse("watch", "a", "b/c").ranges == ["a", "b/c"]
    assert parse("poll-range", "pk").follow is False
    assert parse("poll-range", "pk", "--follow", "--count", "2").count == 2


def test_settings_precedence(monkeypatch, tmp_path):
    dev = tmp_path / "dev.json"
    dev.write_text(
        json.dumps(
            {
                "k2v_endpoint": "http://dev:1",
                "region": "dev-region",
                "access_key_id": "GKdev",
                "secret_access_key": "devsecret",
                "bucket": "dev-bucket",
            }
        )
    )
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "GKenv")
    monkeypatch.setenv("GARAGEKV_BUCKET", "env-bucket")
    c = k2v.make_client(parse("--bucket", "flag-bucket", "--dev-json", str(dev), "read", "p", "s"))
    s = c.settings
    assert (s.endpoint, s.region, s.access_key_id, s.secret_access_key, s.bucket) == (
        "http://dev:1",
        "dev-region",
        "GKdev",
        "devsecret",
        "flag-bucket",
    )
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "envsecret")
    monkeypatch.setenv("GARAGEKV_K2V_ENDPOINT", "env:2")
    s = k2v.make_client(parse("--timeout", "3", "read", "p", "s")).settings
    assert (s.endpoint, s.region, s.access_key_id, s.bucket) == ("http://env:2", "garage", "GKenv", "env-bucket")


def test_missing_settings_and_bad_dev_json(capsys, tmp_path):
    assert main(["k2v", "read", "p", "s"]) == 1
    assert "missing K2V connection settings: endpoint, access_key_id" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    assert main(["k2v", "--dev-json", str(bad), "read", "p", "s"]) == 1
    assert "no JSON object" in capsys.readouterr().err
    assert main(["k2v", "--dev-json", str(tmp_path / "absent.json"), "read", "p", "s"]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_usage_errors_before_any_request(capsys, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "GK")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("GARAGEKV_K2V_ENDPOINT", "127.0.0.1:1")
    monkeypatch.setenv("GARAGEKV_BUCKET", "b")
    assert main(["k2v", "delete-range", "pk"]) == 2
    assert "--all" in capsys.readouterr().err
    assert main(["k2v", "insert", "p", "s", "v", "--b64", "AA=="]) == 2
    assert main(["k2v", "insert", "p", "s", "--b64", "!!"]) == 2
    assert main(["k2v", "read-range", "p", "--page-size", "0"]) == 2
    # and a connection error is an error, not a crash
    assert main(["k2v", "--timeout", "2", "read", "p", "s"]) == 1
    assert "cannot connect" in capsys.readouterr().err


@pytest.fixture
def settings(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "GK")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("GARAGEKV_K2V_ENDPOINT", "127.0.0.1:1")
    monkeypatch.setenv("GARAGEKV_BUCKET", "b")


@pytest.mark.parametrize(
    "argv,code",
    [
        (["read", "", "sk"], 2),
        (["insert", "", "sk", "v"], 2),
        (["delete", "", "sk", "--blind"], 2),
        (["poll-range", ""], 2),
        (["insert", "pk", "", "v", "--if-none-match", "--ttl", "0"], 2),
        (["insert", "pk", "sk", "\udcff"], 2),  # an argument that is not UTF-8
        # endpoints refused with the other connection settings, before any request
        (["--endpoint", "http://127.0.0.1:99999", "read", "p", "s"], 1),
        (["--endpoint", "http://127.0.0.1:notaport", "read", "p", "s"], 1),
        (["--endpoint", "http://u:p@127.0.0.1:3904", "read", "p", "s"], 1),
    ],
)
def test_arguments_the_client_refuses_are_one_line_errors(capsys, settings, argv, code):
    assert main(["k2v", *argv]) == code
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and err.count("\n") == 1 and "Traceback" not in err, err


def test_a_batch_file_that_is_not_utf8_is_an_error_not_a_traceback(capsys, settings, tmp_path):
    bad = tmp_path / "batch.jsonl"
    bad.write_bytes(b'{"pk": "p", "sk": "\xff", "v": null}\n')
    for cmd in ("insert-batch", "read-batch"):
        assert main(["k2v", cmd, "--file", str(bad)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("Error: ") and "Traceback" not in err, err


def test_stdin_that_carried_the_dev_json_carries_nothing_else(capsys, monkeypatch, tmp_path):
    import io

    dev = json.dumps({"k2v_endpoint": "127.0.0.1:1", "access_key_id": "GK", "secret_access_key": "s", "bucket": "b"})
    for argv in (["insert", "p", "s"], ["insert-batch"], ["txn", "p"]):

        class Stdin(io.TextIOWrapper):
            def isatty(self) -> bool:
                return False

        monkeypatch.setattr("sys.stdin", Stdin(io.BytesIO(dev.encode())))
        assert main(["k2v", "--dev-json", "-", *argv]) == 2, argv
        assert "standard input carried --dev-json -" in capsys.readouterr().err


def test_insert_batch_takes_items_as_read_range_prints_them():
    op = k2v._insert_op(1, {"pk": "p", "sk": "s", "ct": None, "v": ["aGVsbG8="], "exp": 1})
    assert (op.value, op.token) == (b"hello", None)
    assert k2v._insert_op(1, {"pk": "p", "sk": "s", "v": [None]}).value is None
    with pytest.raises(k2v.CliError, match="2 concurrent values"):
        k2v._insert_op(1, {"pk": "p", "sk": "s", "v": ["aGVsbG8=", None]})


@pytest.mark.parametrize("cmd", ["watch", "poll-range"])
async def test_a_server_that_stops_answering_is_an_error_not_the_end_of_a_watch(monkeypatch, cmd):
    """The client's own timeout (K2VTimeoutError is a TimeoutError) must not pass for the end of
    the watch's --timeout: the watch printed one change, then the server went silent."""
    from garagekv.client.errors import K2VTimeoutError

    class Client:
        async def watch(self, *args, **kwargs):
            yield _Change()
            raise K2VTimeoutError("no answer within 1s")

        async def watch_range(self, *args, **kwargs):
            yield _Change()
            raise K2VTimeoutError("no answer within 1s")

    printed = []
    args = parse("--timeout", "1", cmd, "pk", *(["--follow"] if cmd == "poll-range" else []), "--poll-timeout", "1")
    monkeypatch.setattr(k2v, "_print_changes", lambda *a: printed.append(a))
    monkeypatch.setattr(k2v, "_print_poll", lambda *a: printed.append(a))
    with pytest.raises(K2VTimeoutError):
        await args.handler(Client(), args)
    assert len(printed) == 1


class _Change:
    pass
