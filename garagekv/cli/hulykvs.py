"""``garagekv hulykvs token``: mint a Huly token from the config's ``[hulykvs_api] token_secret``.

For operators: a token for a service account or the system account, to try the Hulykvs API with
curl or to hand to a script. The token is printed alone on stdout.
"""

from __future__ import annotations

import argparse
import re
import sys

from garagekv.api.hulykvs.auth import SYSTEM_ACCOUNT, mint
from garagekv.api.hulykvs.errors import HulyError
from garagekv.util.config import Config, canonical_uuid

_TTL = re.compile(r"(\d+)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("hulykvs", help="Hulykvs-compatible API tools (docs/hulykvs.md)")
    hsub = p.add_subparsers(dest="hulykvs_command", required=True)
    t = hsub.add_parser(
        "token",
        help="mint an HS256 token from [hulykvs_api] token_secret",
        description="Print a token for --account (default: the system account, which may use every workspace).",
    )
    who = t.add_mutually_exclusive_group()
    who.add_argument("--account", metavar="UUID", help="the token's account")
    who.add_argument("--system", action="store_true", help=f"the system account ({SYSTEM_ACCOUNT}); the default")
    t.add_argument("--workspace", metavar="UUID", help="bind the token to this workspace")
    t.add_argument(
        "--ttl", metavar="DURATION", help='expire after this long ("90s", "30m", "1h", "7d"); default: never'
    )


def parse_ttl(text: str) -> int:
    """Seconds from ``"90s"``, ``"30m"``, ``"1h"``, ``"7d"`` or a plain number of seconds."""
    m = _TTL.fullmatch(text.strip())
    if m is None or int(m[1]) == 0:
        raise ValueError(f"--ttl {text!r} is not a positive duration such as 30m, 1h or 7d")
    return int(m[1]) * _UNITS[m[2]]


def run(args: argparse.Namespace, config: Config) -> int:
    huly = config.hulykvs_api
    if huly is None:
        where = f"{config.source}: " if config.source is not None else ""
        print(f"Error: {where}no [hulykvs_api] section, so no token secret to sign with", file=sys.stderr)
        return 1
    account = args.account or SYSTEM_ACCOUNT
    for flag, value in (("--account", args.account), ("--workspace", args.workspace)):
        if value is not None and canonical_uuid(value) is None:
            print(f"Error: {flag} {value!r} is not a UUID", file=sys.stderr)
            return 1
    try:
        ttl = None if args.ttl is None else parse_ttl(args.ttl)
        print(mint(huly.token_secret, account, args.workspace, ttl))
    except (ValueError, HulyError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    return 0
