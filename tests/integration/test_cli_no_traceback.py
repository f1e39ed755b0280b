"""Every CLI command, given bad input or no node to talk to, ends in a message and an exit status.

The commands are found by walking the real argument parser, so a command added later is swept too.
A traceback on stderr means an operator mistake reached Python's default error path.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from garagekv.cli.main import build_parser
from tests.support import NodeProcess, free_port

GARAGEKV = [sys.executable, "-m", "garagekv.cli.main"]
# Long-running by design: a node, a dev cluster, a load generator.
NOT_SWEPT = {("server",), ("dev",), ("bench",)}
BAD = "zz-bad!!"


def leaf_commands() -> list[list[str]]:
    """Each leaf command with its required positionals and options filled with a bad value."""
    out: list[list[str]] = []

    def walk(parser: argparse.ArgumentParser, prefix: list[str]) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            if tuple(prefix) in NOT_SWEPT:
                return
            args = list(prefix)
            for action in parser._actions:
                if not action.option_strings and action.nargs != 0:
                    args.append(BAD)
                elif action.option_strings and action.required:
                    args += [action.option_strings[0], BAD]
            out.append(args)
            return
        seen: set[int] = set()
        for name, child in subs[0].choices.items():
            if id(child) not in seen:  # aliases list one parser under several names
                seen.add(id(child))
                walk(child, [*prefix, name])

    walk(build_parser(), [])
    return out


COMMANDS = leaf_commands()


def run_all(commands: list[list[str]], env: dict[str, str]) -> list[tuple[list[str], subprocess.CompletedProcess]]:
    def one(args: list[str]) -> tuple[list[str], subprocess.CompletedProcess]:
        r = subprocess.run([*GARAGEKV, *args], input="not json\n", capture_output=True, text=True, timeout=60, env=env)
        return args, r

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(one, commands))


def assert_clean(results: list[tuple[list[str], subprocess.CompletedProcess]]) -> None:
    bad = [(args, r.returncode, r.stderr[-600:]) for args, r in results if "Traceback" in r.stderr]
    assert not bad, bad
    for args, r in results:  # some commands take any name (key create, status): success is fine too
        assert r.returncode in (0, 1, 2, 3, 4), (args, r.returncode, r.stdout[-300:], r.stderr[-300:])
        assert r.returncode == 0 or r.stderr.strip(), (args, "failed without saying why")


def test_the_sweep_finds_every_command_family():
    families = {c[0] for c in COMMANDS}
    assert families >= {"k2v", "key", "bucket", "status", "node", "layout", "repair", "stats", "worker"}
    assert len(COMMANDS) >= 40


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    n = NodeProcess(tmp_path_factory.mktemp("sweep"))
    n.start()
    yield n
    n.stop()


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GARAGEKV_", "K2V_"))}
    env.update(extra)
    return env


def test_bad_input_against_a_running_node(node):
    operator = [c for c in COMMANDS if c[0] != "k2v"]
    results = run_all([["-c", str(node.config_path), *c] for c in operator], clean_env())
    assert_clean(results)


def test_no_node_to_talk_to(tmp_path):
    down = NodeProcess(tmp_path / "down")
    down.write_config()
    operator = [c for c in COMMANDS if c[0] != "k2v"]
    assert_clean(run_all([["-c", str(down.config_path), *c] for c in operator], clean_env()))
    missing = tmp_path / "no-such.toml"
    assert_clean(run_all([["-c", str(missing), *c] for c in operator[:5]], clean_env()))


def test_k2v_commands_without_credentials_or_endpoint():
    k2v = [c for c in COMMANDS if c[0] == "k2v"]
    assert_clean(run_all(k2v, clean_env()))
    unreachable = clean_env(
        AWS_ACCESS_KEY_ID="GK" + "0" * 24,
        AWS_SECRET_ACCESS_KEY="0" * 64,
        AWS_REGION="garage",
        GARAGEKV_K2V_ENDPOINT=f"http://127.0.0.1:{free_port()}",
        GARAGEKV_BUCKET="b",
    )
    assert_clean(run_all([[*c, "--timeout", "2"] if c[1] == "watch" else c for c in k2v], unreachable))
