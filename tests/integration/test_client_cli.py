"""``garagekv k2v ...`` end to end: a real node, the CLI as a subprocess, stdin/stdout."""

from __future__ import annotations

import base64
import json
import subprocess
import time

import pytest

from tests.support import REGION
from tests.support.client import command, run_env


@pytest.fixture
def cli(node, creds):
    def run(*args: str, input: bytes | str | None = None, with_creds: bool = True) -> subprocess.CompletedProcess:
        data = input.encode() if isinstance(input, str) else input
        return subprocess.run(
            command(*args),
            input=data if data is not None else b"",
            capture_output=True,
            timeout=60,
            env=run_env(node, creds, with_creds),
        )

    return run


def ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    return r.stdout.decode()


def test_insert_read_delete(cli, pk):
    ok(cli("insert", pk, "a", "hello"))
    item = json.loads(ok(cli("read", pk, "a", "--json")))
    assert item["pk"] == pk and item["sk"] == "a" and item["v"] == [base64.b64encode(b"hello").decode()]
    text = ok(cli("--json", "read", pk, "a"))  # --json before the sub-command works too
    assert json.loads(text)["ct"] == item["ct"]
    text = ok(cli("read", pk, "a"))
    assert f"token: {item['ct']}" in text and "utf-8: hello" in text

    blob = b"\x00\x01\xffbinary"
    ok(cli("insert", pk, "a", f"--token={item['ct']}", input=blob))  # value from stdin, replacing hello
    assert cli("read", pk, "a", "--raw").stdout == blob
    assert "base64: " in ok(cli("read", pk, "a"))

    ok(cli("delete", pk, "a"))  # reads the token first: deletes what is there
    assert json.loads(ok(cli("read", pk, "a", "--json")))["v"] == [None]
    r = cli("read", pk, "a", "--raw")
    assert r.returncode == 3 and b"tombstone" in r.stderr
    r = cli("read", pk, "missing")
    assert r.returncode == 3 and b"NoSuchKey" in r.stderr


def test_connection_flags_and_dev_json(cli, node, creds, pk, tmp_path):
    value = tmp_path / "value.bin"
    value.write_bytes(b"from a file")
    ok(
        cli(
            "--endpoint",
            node.endpoint,
            "--region",
            REGION,
            "--bucket",
            creds["bucket"],
            "--access-key-id",
            creds["access_key"],
            "--secret-access-key",
            creds["secret_key"],
            "insert",
            pk,
            "f",
            "--file",
            str(value),
            with_creds=False,
        )
    )
    dev = {
        "k2v_endpoint": f"http://{node.endpoint}",
        "region": REGION,
        "access_key_id": creds["access_key"],
        "secret_access_key": creds["secret_key"],
        "bucket": creds["bucket"],
        "nodes": [],
    }
    dev_file = tmp_path / "dev.json"
    dev_file.write_text(json.dumps(dev) + "\n")
    item = json.loads(ok(cli("--dev-json", str(dev_file), "read", pk, "f", "--json", with_creds=False)))
    assert base64.b64decode(item["v"][0]) == b"from a file"
    page = json.loads(ok(cli("--dev-json", "-", "read-range", pk, "--json", input=json.dumps(dev), with_creds=False)))
    assert [i["sk"] for i in page["items"]] == ["f"]
    r = cli("--bucket", "x-bucket", "read", pk, "f", with_creds=False)
    assert r.returncode == 1 and b"missing K2V connection settings" in r.stderr
    r = cli("--bucket", "no-such-bucket", "read", pk, "f")
    assert r.returncode == 1 and b"NoSuchBucket" in r.stderr


def test_ranges_index_and_batches(cli, sync, pk):
    lines = [json.dumps({"pk": pk, "sk": f"k{i}", "text": f"value {i}"}) for i in range(8)]
    lines += [
        json.dumps({"pk": pk, "sk": "bin", "v": base64.b64encode(b"\xff").decode()}),
        "",
        json.dumps({"pk": pk + "-other", "sk": "z", "v": "eg=="}),
    ]
    assert "inserted 10 items" in ok(cli("insert-batch", input="\n".join(lines)))

    page = json.loads(ok(cli("read-range", pk, "--prefix", "k", "--limit", "5", "--page-size", "2", "--json")))
    assert [i["sk"] for i in page["items"]] == [f"k{i}" for i in range(5)]
    assert page["more"] is True and page["nextStart"] == "k5"
    text = ok(cli("read-range", pk, "--reverse", "--start", "k2", "--end", "k"))
    assert text.index("sort key: k2") < text.index("sort key: k1") < text.index("sort key: k0")
    assert "bin" not in text and "utf-8: value 2" in text

    deadline = time.monotonic() + 10  # the index counters are asynchronous
    while len(sync.read_index(prefix=pk).partition_keys) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    index = json.loads(ok(cli("read-index", "--prefix", pk, "--json")))
    assert [(e["pk"], e["entries"]) for e in index["partitionKeys"]] == [(pk, 9), (pk + "-other", 1)]
    assert pk in ok(cli("read-index", "--prefix", pk, "--limit", "1"))

    queries = "\n".join(
        json.dumps(q)
        for q in (
            {"partitionKey": pk, "prefix": "k", "limit": 2},
            {"partitionKey": pk, "start": "bin", "singleItem": True},
        )
    )
    pages = json.loads(ok(cli("read-batch", "--json", input=queries)))
    assert [[i["sk"] for i in p["items"]] for p in pages] == [["k0", "k1"], ["bin"]]
    assert pages[0]["nextStart"] == "k2"

    r = cli("delete-range", pk)
    assert r.returncode == 2 and b"--all" in r.stderr
    assert json.loads(ok(cli("delete-range", pk, "--prefix", "k", "--json"))) == {"deletedItems": 8}
    res = json.loads(ok(cli("delete-batch", "--json", input=json.dumps({"partitionKey": pk}))))
    assert res[0]["deletedItems"] == 1 and res[0]["partitionKey"] == pk
    assert sync.read_range(pk).items == []


def test_poll_poll_range_and_watch(cli, node, creds, sync, pk):
    sync.insert_item(pk, "a", b"1")
    first = json.loads(ok(cli("poll-range", pk, "--json")))
    assert [i["sk"] for i in first["items"]] == ["a"] and first["seenMarker"]
    r = cli("poll", pk, "a", "--poll-timeout", "1")  # no token: waits for a change of the current version
    assert r.returncode == 4 and b"no change" in r.stderr

    env = run_env(node, creds)
    watch = subprocess.Popen(
        command("watch", pk, "--json", "--count", "2"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    poll = subprocess.Popen(
        command("poll-range", pk, "--seen-marker", first["seenMarker"], "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    token = sync.read_item(pk, "a").token
    item_poll = subprocess.Popen(
        command("poll", pk, "a", f"--token={token}", "--raw"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        initial = json.loads(watch.stdout.readline())  # the watch has started: its first line is the state
        assert [i["sk"] for i in initial["items"]] == ["a"]
        time.sleep(0.3)
        sync.insert_item(pk, "a", b"2", token)
        out, err = poll.communicate(timeout=20)
        assert poll.returncode == 0, err
        changed = json.loads(out)
        assert [(i["sk"], i["v"]) for i in changed["items"]] == [("a", ["Mg=="])]
        out, err = item_poll.communicate(timeout=20)
        assert item_poll.returncode == 0 and out == b"2", err
        out, err = watch.communicate(timeout=20)
        assert watch.returncode == 0, err
        nxt = json.loads(out.splitlines()[0])
        assert [i["v"] for i in nxt["items"]] == [["Mg=="]] and nxt["seenMarker"] != initial["seenMarker"]
    finally:
        for p in (watch, poll, item_poll):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_watch_stops_at_its_overall_timeout(cli, sync, pk):
    """`watch --count 1 --no-initial` with no change ends at --timeout (exit 4), not after the poll timeout."""
    sync.insert_item(pk, "a", b"1")
    r = cli("watch", pk, "--count", "1", "--no-initial", "--timeout", "1.5", "--poll-timeout", "300")
    assert r.returncode == 4, r.stderr
    assert b"timeout: no change" in r.stderr and r.stdout == b""
    r = cli("watch", pk, "--json", "--timeout", "1.5")  # something printed: the deadline is a normal end
    assert r.returncode == 0, r.stderr
    assert [i["sk"] for i in json.loads(r.stdout.splitlines()[0])["items"]] == ["a"]


def test_watch_help_names_only_its_own_flags(cli):
    out = cli("watch", "--help").stdout.decode()
    assert "--follow" not in out and "--timeout" in out
    assert "--follow" in cli("poll-range", "--help").stdout.decode()


# --- extensions: conditional writes, linearizable reads, transactions, multi-range watch ------


def test_conditional_insert_and_delete(cli, sync, pk):
    r = cli("insert", pk, "k", "v1", "--if-none-match")
    t1 = ok(r).strip().removeprefix("token: ")
    assert sync.read_item(pk, "k").token.value == t1

    r = cli("insert", pk, "k", "again", "--if-none-match")  # the item exists now: 412
    assert r.returncode == 5 and r.stdout == b""
    assert b"condition false" in r.stderr and t1.encode() in r.stderr

    out = json.loads(ok(cli("insert", pk, "k", "v2", f"--if-match={t1}", "--json")))
    assert out["inserted"] is True and out["ct"] == sync.read_item(pk, "k").token.value
    t2 = out["ct"]
    r = cli("insert", pk, "k", "stale", f"--if-match={t1}", "--json")
    assert r.returncode == 5
    assert json.loads(r.stdout) == {"pk": pk, "sk": "k", "inserted": False, "ct": t2}
    assert sync.read_item(pk, "k").values == [b"v2"]

    r = cli("insert", pk, "new", "x", "--if-match=*", "--json")
    assert r.returncode == 5 and json.loads(r.stdout)["ct"] is None and b"never written" in r.stderr

    t3 = ok(cli("delete", pk, "k", f"--if-match={t2}")).strip().removeprefix("token: ")
    item = sync.read_item(pk, "k")
    assert item.values == [None] and item.token.value == t3
    r = cli("delete", pk, "k", "--if-match=*")
    assert r.returncode == 5 and t3.encode() in r.stderr


def test_read_linearizable(cli, sync, pk):
    sync.insert_item(pk, "k", b"lin", if_none_match=True)
    item = json.loads(ok(cli("read", pk, "k", "--linearizable", "--json")))
    assert item["v"] == [base64.b64encode(b"lin").decode()] and item["ct"] == sync.read_item(pk, "k").token.value
    assert cli("read", pk, "k", "--linearizable", "--raw").stdout == b"lin"
    r = cli("read", pk, "missing", "--linearizable")
    assert r.returncode == 3 and b"NoSuchKey" in r.stderr


def test_txn_from_file_and_stdin(cli, sync, pk, tmp_path):
    b64 = lambda s: base64.b64encode(s.encode()).decode()  # noqa: E731
    body = {
        "compare": [{"sk": "a", "target": "exists", "exists": False}],
        "success": [{"op": "put", "sk": "a", "v": b64("one")}, {"op": "read", "sk": "a"}],
        "failure": [{"op": "read", "sk": "a"}],
    }
    f = tmp_path / "txn.json"
    f.write_text(json.dumps(body))
    res = json.loads(ok(cli("txn", pk, str(f))))
    assert res["succeeded"] is True and [r["sk"] for r in res["results"]] == ["a", "a"]
    token = sync.read_item(pk, "a").token.value
    assert res["results"][0]["ct"] == token and res["results"][1] == {"sk": "a", "ct": token, "v": [b64("one")]}

    # the compare fails now: the failure branch ran, which is not an error (as etcdctl txn)
    res = json.loads(ok(cli("txn", pk, input=json.dumps(body))))
    assert res == {"succeeded": False, "results": [{"sk": "a", "ct": token, "v": [b64("one")]}]}
    res = json.loads(ok(cli("txn", pk, "-", input='{"success": [{"op": "read", "sk": "none"}]}')))
    assert res == {"succeeded": True, "results": [{"sk": "none", "ct": None, "v": []}]}

    for bad, why in (
        ("not json", b"invalid JSON"),
        ("[]", b"JSON object"),
        ('{"success": [{"op": "grow", "sk": "a"}]}', b"success[0]: unknown op"),
        ('{"compare": [{"sk": "a", "target": "md5", "md5": "xyz"}]}', b"compare[0]"),
    ):
        r = cli("txn", pk, input=bad)
        assert r.returncode == 1 and why in r.stderr, (bad, r.stderr)
    assert sync.read_item(pk, "a").values == [b"one"]


def test_watch_several_ranges_and_resume(cli, node, creds, sync, pk):
    p1, p2 = pk + "-1", pk + "-2"
    sync.insert_item(p1, "a", b"1")
    env = run_env(node, creds)
    watch = subprocess.Popen(
        command("watch", p1, f"{p2}/x", "--json", "--count", "3", "--poll-timeout", "20"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        lines = [json.loads(watch.stdout.readline()) for _ in range(2)]  # the two initial states
        assert [(x["index"], x["partitionKey"], [i["sk"] for i in x["items"]]) for x in lines] == [
            (0, p1, ["a"]),
            (1, p2, []),
        ]
        assert lines[1]["prefix"] == "x" and all(x["seenMarker"] for x in lines)
        sync.insert_item(p2, "y", b"outside the prefix")
        sync.insert_item(p2, "x1", b"2")
        out, err = watch.communicate(timeout=30)
        assert watch.returncode == 0, err
        change = json.loads(out)
        assert (change["index"], [(i["sk"], i["v"]) for i in change["items"]]) == (1, [("x1", ["Mg=="])])
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()

    # resume from the saved markers: only what was written since, no initial state
    sync.insert_item(p1, "b", b"3")
    r = cli(
        "watch",
        p1,
        f"{p2}/x",
        f"--seen-marker={lines[0]['seenMarker']}",
        f"--seen-marker={change['seenMarker']}",
        "--count",
        "1",
        "--timeout",
        "20",
    )
    text = ok(r)
    assert f"range 0: partition key: {p1}" in text and "sort key: b" in text and "utf-8: 3" in text
    assert "sort key: a" not in text and p2 not in text

    r = cli("watch", p1, p2, "--seen-marker=x")  # one marker for two ranges: a usage error
    assert r.returncode == 2 and b"once per range" in r.stderr
