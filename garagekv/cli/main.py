"""The ``garagekv`` command: run a node, run a local dev cluster, manage keys and buckets."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from garagekv.cli import dev, meta
from garagekv.util.config import default_config_path, load_config
from garagekv.util.errors import ConfigError, GarageKVError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="garagekv", description="A distributed K2V store (Garage's K2V API).")
    p.add_argument("-c", "--config", help=f"config file (default: $GARAGEKV_CONFIG or {default_config_path()})")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("server", help="run a node")
    dev.add_parser(sub)
    meta.add_parsers(sub)
    _accept_config_anywhere(sub)
    return p


def _accept_config_anywhere(sub: argparse._SubParsersAction) -> None:
    """``garagekv server -c FILE`` works as well as ``garagekv -c FILE server``."""
    stack = list(sub.choices.values())
    while stack:
        parser = stack.pop()
        if parser.prog.endswith(" dev"):
            continue
        children = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if children:
            stack.extend(children[0].choices.values())
        else:
            parser.add_argument("-c", "--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def setup_logging(level: str, fmt: str = "text") -> None:
    if fmt == "json":
        log_format = '{"ts":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","msg":"%(message)s"}'
    else:
        log_format = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), format=log_format, stream=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "dev":
            return dev.run(args)
        config = load_config(args.config)
        if args.command == "server":
            from garagekv.server import run_node

            setup_logging(config.log_level, config.log_format)
            try:
                import uvloop  # type: ignore[import-not-found]

                uvloop.install()
            except ImportError:
                pass
            asyncio.run(run_node(config))
            return 0
        return asyncio.run(meta.run(args, config))
    except (ConfigError, GarageKVError) as e:
        msg = e.full_message if isinstance(e, GarageKVError) else str(e)
        print(f"Error: {msg}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
