"""The ``garagekv`` command: run a node, run a local dev cluster, manage keys and buckets."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from dataclasses import replace

from garagekv.cli import bench, cluster, dev, hulykvs, k2v, maintenance, meta
from garagekv.cli.hints import use_config, with_config
from garagekv.util.config import Config, default_config_path, load_config, parse_workers
from garagekv.util.errors import ConfigError, GarageKVError
from garagekv.util.log import WorkerTag
from garagekv.util.log import setup_logging as log_setup
from garagekv.util.loop import new_runner


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="garagekv", description="A distributed K2V store (Garage's K2V API).")
    p.add_argument("-c", "--config", help=f"config file (default: $GARAGEKV_CONFIG or {default_config_path()})")
    p.add_argument("--rpc-host", metavar="ID@HOST:PORT", help="talk to this node instead of the config's own")
    sub = p.add_subparsers(dest="command", required=True)
    server = sub.add_parser("server", help="run a node")
    server.add_argument(
        "--stop-on-eof",
        type=int,
        metavar="FD",
        help="stop cleanly when this inherited file descriptor reaches end of file (used by garagekv dev)",
    )
    server.add_argument(
        "--workers",
        metavar="N",
        help='node processes on this host (default: the config\'s workers, else 1; "auto": one per CPU core)',
    )
    # A worker of a multi-worker host, started by its supervisor (garagekv/supervisor.py).
    server.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    server.add_argument("--host-id", help=argparse.SUPPRESS)
    dev.add_parser(sub)
    k2v.add_parser(sub)
    bench.add_parser(sub)
    meta.add_parsers(sub)
    cluster.add_parsers(sub)
    maintenance.add_parsers(sub)
    hulykvs.add_parser(sub)
    _accept_config_anywhere(sub)
    return p


def _accept_config_anywhere(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``garagekv server -c FILE`` works as well as ``garagekv -c FILE server``."""
    stack = list(sub.choices.values())
    seen: set[int] = set()
    while stack:
        parser = stack.pop()
        if id(parser) in seen:  # an aliased subcommand is listed once per name
            continue
        seen.add(id(parser))
        if parser.prog.endswith((" dev", " k2v")):
            continue
        children = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if children:
            stack.extend(children[0].choices.values())
        else:
            flags = ["--config"] if "-c" in parser._option_string_actions else ["-c", "--config"]
            parser.add_argument(*flags, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
            parser.add_argument("--rpc-host", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def setup_logging(level: str, fmt: str = "text", secrets: tuple[str | None, ...] = ()) -> None:
    """One line per event on stderr, JSON or text, with ``secrets`` (and any secret) redacted."""
    log_setup(level, fmt, secrets_=secrets)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    use_config(getattr(args, "config", None))
    try:
        if args.command == "dev":
            return dev.run(args)
        if args.command == "k2v":
            return k2v.run(args)
        if args.command == "bench":
            return bench.run(args)
        config = load_config(args.config)
        if args.command == "server":
            return _server(args, config)
        if args.command == "hulykvs":
            return hulykvs.run(args, config)
        if args.command in ("status", "node", "layout"):
            return asyncio.run(cluster.run(args, config))
        if args.command in maintenance.COMMANDS:
            return asyncio.run(maintenance.run(args, config))
        return asyncio.run(meta.run(args, config))
    except (ConfigError, GarageKVError) as e:
        msg = e.full_message if isinstance(e, GarageKVError) else str(e)
        print(f"Error: {with_config(msg)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`garagekv status --json | head`): nothing more to say to it.
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _server(args: argparse.Namespace, config: Config) -> int:
    """A node, or with several workers their supervisor (or one of them, as it starts them)."""
    from garagekv.server import run_node
    from garagekv.supervisor import supervise, worker_config

    workers = parse_workers(args.workers) if args.workers is not None else config.workers
    handler = log_setup(
        config.log_level,
        config.log_format,
        secrets_=(
            config.rpc_secret,
            config.admin.admin_token,
            config.admin.metrics_token,
            config.hulykvs_api.token_secret if config.hulykvs_api is not None else None,
        ),
    )
    if args.worker_index is not None:
        if args.host_id is None or not 0 <= args.worker_index < workers:
            raise ConfigError("--worker-index needs --host-id and --workers above it (set by the supervisor)")
        config = worker_config(
            replace(config, workers=workers), args.worker_index, bytes.fromhex(args.host_id), workers
        )
        handler.addFilter(WorkerTag(args.worker_index))
    elif workers > 1:
        return supervise(replace(config, workers=workers), workers, getattr(args, "stop_on_eof", None))
    with new_runner() as runner:
        runner.run(run_node(config, getattr(args, "stop_on_eof", None)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
