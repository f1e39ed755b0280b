"""``garagekv k2v ...``: a K2V command line over :mod:`garagekv.client` (modelled on Garage's k2v-cli).

Needs no config file. Connection settings come from, in order of precedence: the flags
(``--endpoint``, ``--region``, ``--bucket``, ``--access-key-id``, ``--secret-access-key``), the
JSON of ``garagekv dev --json`` (``--dev-json FILE``, ``-`` for stdin), and the environment
(``GARAGEKV_K2V_ENDPOINT``, ``AWS_REGION``, ``GARAGEKV_BUCKET``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``). The region defaults to ``garage``.

Output is text by default and JSON with ``--json`` (values as standard base64, ``null`` for a
tombstone; items as K2V's ``{"pk", "sk", "ct", "v"}``). ``--raw`` writes a single value's bytes.

Exit status: 0 success, 1 error, 2 usage, 3 item not found (or deleted, with ``--raw``),
4 a poll timed out without a change, 5 a conditional write's condition was false (nothing
written). A transaction whose compares fail still exits 0, as ``etcdctl txn`` does: it ran, and
its answer says which branch.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import datetime
import json
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from garagekv.client import (
    CausalityToken,
    Compare,
    DeleteQuery,
    InsertOp,
    Item,
    K2VClient,
    K2VError,
    NoSuchKey,
    PreconditionFailed,
    RangeChanges,
    RangeSpec,
    ReadQuery,
    TxnOp,
)
from garagekv.client.config import env_settings, load_dev_json, resolve
from garagekv.client.types import txn_op_from_json

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_TIMEOUT = 4
EXIT_PRECONDITION = 5


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


Handler = Callable[[K2VClient, argparse.Namespace], Coroutine[Any, Any, int]]


# --- parser ---------------------------------------------------------------------------------


def _output_flags(p: argparse.ArgumentParser, raw: bool = False) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_true", help="JSON output (values in base64)")
    if raw:
        g.add_argument("--raw", action="store_true", help="write the value's raw bytes (fails on concurrent values)")


def _range_flags(p: argparse.ArgumentParser, *, limit: bool = True, filters: bool = True) -> None:
    p.add_argument("--prefix", help="only keys starting with PREFIX")
    p.add_argument("--start", help="first key (included)")
    p.add_argument("--end", help="last key (excluded)")
    if limit:
        p.add_argument("--limit", type=int, help="at most LIMIT results (default: all, page after page)")
        p.add_argument("--reverse", action="store_true", help="in decreasing key order")
        p.add_argument("--page-size", type=int, default=1000, help="keys per request (default 1000)")
    if filters:
        p.add_argument("--tombstones", action="store_true", help="include items whose values are all tombstones")
        p.add_argument("--conflicts-only", action="store_true", help="only items with concurrent values")


def _token_flag(p: argparse.ArgumentParser, help: str) -> None:
    # Tokens are base64url and may start with "-": write --token=TOKEN so argparse reads it as a value.
    p.add_argument(
        "-t",
        "--token",
        "--causality",
        dest="token",
        metavar="TOKEN",
        help=help + '; write --token=TOKEN (a token may start with "-")',
    )


def _if_match_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--if-match",
        metavar="TOKEN|*",
        help=f"{what} only if the item's token is exactly TOKEN (nothing written since the read that gave it), "
        'or with "*" only if it has a live value; prints the new token. Write --if-match=TOKEN',
    )


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "k2v",
        help="K2V client: read, write, list and watch items",
        description="Talk to a K2V endpoint (no config file needed). Connection settings: flags, then "
        "--dev-json, then GARAGEKV_K2V_ENDPOINT / AWS_REGION / GARAGEKV_BUCKET / "
        "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.",
        epilog="exit status: 0 ok, 1 error, 2 usage, 3 not found, 4 poll timeout, 5 condition false",
    )
    p.add_argument("--endpoint", help="K2V endpoint URL, e.g. http://127.0.0.1:3904")
    p.add_argument("--region", help="region (default: $AWS_REGION or garage)")
    p.add_argument("--bucket", help="bucket name")
    p.add_argument("--access-key-id", help="access key id (default: $AWS_ACCESS_KEY_ID)")
    p.add_argument("--secret-access-key", help="secret key (default: $AWS_SECRET_ACCESS_KEY)")
    p.add_argument("--dev-json", metavar="FILE", help="the output of `garagekv dev --json` (- for stdin)")
    p.add_argument("--timeout", type=float, default=30.0, help="request timeout in seconds (default 30)")
    p.add_argument("--json", dest="json_global", action="store_true", help="JSON output for every command")
    cmds = p.add_subparsers(dest="k2v_command", required=True, metavar="COMMAND")

    c = cmds.add_parser("read", help="read an item")
    c.add_argument("partition_key")
    c.add_argument("sort_key")
    c.add_argument(
        "--linearizable",
        action="store_true",
        help="a consensus read: sees every conditional write and transaction acknowledged before it",
    )
    _output_flags(c, raw=True)
    c.set_defaults(handler=cmd_read)

    c = cmds.add_parser("insert", help="write an item (value from argument, --file or stdin)")
    c.add_argument("partition_key")
    c.add_argument("sort_key")
    c.add_argument("value", nargs="?", help="the value as text (default: --file, --b64, or stdin)")
    c.add_argument("-f", "--file", help="read the value from FILE (- for stdin)")
    c.add_argument("--b64", help="the value in base64")
    _token_flag(c, "causality token of the read this write replaces (without: a concurrent value is added)")
    _if_match_flag(c, "write")
    c.add_argument(
        "--if-none-match",
        action="store_true",
        help="write only if the item has no live value (never written, or deleted); prints the new token",
    )
    c.add_argument("--ttl", type=int, metavar="SECONDS", help="the value expires SECONDS after the write")
    _output_flags(c)
    c.set_defaults(handler=cmd_insert)

    c = cmds.add_parser("delete", help="delete an item")
    c.add_argument("partition_key")
    c.add_argument("sort_key")
    _token_flag(c, "causality token of the values to delete (default: read the item first and use its token)")
    c.add_argument("--blind", action="store_true", help="send no token: add a tombstone next to the values")
    _if_match_flag(c, "delete")
    _output_flags(c)
    c.set_defaults(handler=cmd_delete)

    c = cmds.add_parser("poll", help="wait for an item to change")
    c.add_argument("partition_key")
    c.add_argument("sort_key")
    _token_flag(c, "wait for a version newer than this token (default: the current one)")
    c.add_argument("--poll-timeout", type=int, default=300, help="seconds to wait (1..600, default 300)")
    _output_flags(c, raw=True)
    c.set_defaults(handler=cmd_poll)

    c = cmds.add_parser("read-index", help="list partition keys with their counters")
    _range_flags(c, filters=False)
    _output_flags(c)
    c.set_defaults(handler=cmd_read_index)

    c = cmds.add_parser("read-range", help="read the items of a partition")
    c.add_argument("partition_key")
    _range_flags(c)
    _output_flags(c)
    c.set_defaults(handler=cmd_read_range)

    c = cmds.add_parser("delete-range", help="delete the items of a range of a partition")
    c.add_argument("partition_key")
    _range_flags(c, limit=False, filters=False)
    c.add_argument("--all", action="store_true", help="delete the whole partition (needed without a filter)")
    _output_flags(c)
    c.set_defaults(handler=cmd_delete_range)

    for name, helptext, follow in (
        ("poll-range", "items of a range changed since a seen marker", False),
        ("watch", "print the changes of one or more ranges as they happen (one long poll for all)", True),
    ):
        c = cmds.add_parser(name, help=helptext)
        if follow:
            c.add_argument(
                "ranges",
                nargs="+",
                metavar="PK[/PREFIX]",
                help="a partition, or the keys starting with PREFIX in it (split at the first /); up to 64",
            )
        else:
            c.add_argument("partition_key")
        _range_flags(c, limit=False, filters=False)
        if follow:
            c.add_argument(
                "--seen-marker",
                action="append",
                help="resume from this marker: once per range, in order ('' for a range to scan afresh)",
            )
        else:
            c.add_argument("--seen-marker", help="marker of an earlier poll-range (without: the whole range at once)")
        c.add_argument("--poll-timeout", type=int, default=300, help="seconds to wait (1..600, default 300)")
        if not follow:
            c.add_argument("--follow", action="store_true", help="keep polling, one result per change")
        following = "" if follow else "with --follow: "
        c.add_argument("--count", type=int, help=f"{following}stop after COUNT results")
        c.add_argument(
            "--timeout",
            dest="watch_timeout",
            type=float,
            metavar="SECONDS",
            help=f"{following}stop after SECONDS in all (exit status 4 if nothing was printed by then)",
        )
        c.add_argument(
            "--no-initial",
            action="store_true",
            help=f"{following}without --seen-marker, skip the current state and print only changes",
        )
        _output_flags(c)
        c.set_defaults(handler=cmd_watch if follow else cmd_poll_range)

    c = cmds.add_parser(
        "txn",
        help="run a transaction on one partition (JSON body from FILE or stdin; prints the JSON answer)",
        description='Body: {"compare": [{"sk", "target": "token"|"exists"|"value"|"md5", ...}], '
        '"success": [{"op": "put"|"delete"|"read", "sk", "v"?, "ttl"?}], "failure": [...]}. '
        'Prints {"succeeded", "results"}; exits 0 whichever branch ran (check "succeeded").',
    )
    c.add_argument("partition_key")
    c.add_argument("file", nargs="?", default="-", metavar="FILE", help="the JSON body (default or -: stdin)")
    c.set_defaults(handler=cmd_txn)

    c = cmds.add_parser(
        "insert-batch", help='write items given as JSON lines {"pk","sk","v"|"text","ct"?,"ttl"?} on stdin'
    )
    c.add_argument("-f", "--file", default="-", help="read the JSON lines from FILE (default stdin)")
    _output_flags(c)
    c.set_defaults(handler=cmd_insert_batch)

    c = cmds.add_parser("read-batch", help="run ReadBatch queries given as JSON lines on stdin")
    c.add_argument("-f", "--file", default="-", help="read the JSON lines from FILE (default stdin)")
    _output_flags(c)
    c.set_defaults(handler=cmd_read_batch)

    c = cmds.add_parser("delete-batch", help="run DeleteBatch queries given as JSON lines on stdin")
    c.add_argument("-f", "--file", default="-", help="read the JSON lines from FILE (default stdin)")
    _output_flags(c)
    c.set_defaults(handler=cmd_delete_batch)


# --- output ---------------------------------------------------------------------------------


def _want_json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False) or getattr(args, "json_global", False))


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _value_text(v: bytes | None) -> str:
    if v is None:
        return "tombstone"
    try:
        text = v.decode("utf-8")
    except UnicodeDecodeError:
        return "base64: " + base64.b64encode(v).decode()
    if text.isprintable():
        return "utf-8: " + text
    return "base64: " + base64.b64encode(v).decode()


def _expiry_text(ms: int) -> str:
    when = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return f"{when.isoformat(timespec='milliseconds').replace('+00:00', 'Z')} ({ms})"


def _print_item(item: Item, with_key: bool = False) -> None:
    if with_key:
        print(f"sort key: {item.sort_key}")
    print(f"token: {item.token}")
    if item.expires is not None:
        print(f"expires: {_expiry_text(item.expires)}")
    for v in item.values:
        print(f"  {_value_text(v)}")


def _output_item(item: Item, args: argparse.Namespace) -> int:
    if getattr(args, "raw", False):
        if len(item.values) != 1:
            raise CliError(f"--raw needs a single value, the item has {len(item.values)} concurrent values")
        if item.values[0] is None:
            raise CliError("the item is deleted (tombstone)", EXIT_NOT_FOUND)
        sys.stdout.flush()
        sys.stdout.buffer.write(item.values[0])
        sys.stdout.buffer.flush()
    elif _want_json(args):
        _print_json(item.to_json())
    else:
        _print_item(item)
    return 0


# --- input ----------------------------------------------------------------------------------


#: Whether ``--dev-json -`` read standard input in this run: nothing else can come from it then.
_stdin_taken = False


def _stdin_bytes() -> bytes:
    if _stdin_taken:
        raise CliError("standard input carried --dev-json -: give this input as an argument or with --file", EXIT_USAGE)
    return sys.stdin.buffer.read()


def _read_source(path: str) -> bytes:
    if path == "-":
        return _stdin_bytes()
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise CliError(f"cannot read {path}: {e.strerror}")


def _json_lines(path: str) -> list[Any]:
    out = []
    for n, line in enumerate(_read_source(path).decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise CliError(f"line {n}: invalid JSON: {e}")
        if not isinstance(obj, dict):
            raise CliError(f"line {n}: expected a JSON object")
        out.append(obj)
    return out


# --- commands -------------------------------------------------------------------------------


async def cmd_read(client: K2VClient, args: argparse.Namespace) -> int:
    item = await client.read_item(args.partition_key, args.sort_key, linearizable=args.linearizable)
    return _output_item(item, args)


def _check_condition(args: argparse.Namespace) -> None:
    if_none_match = getattr(args, "if_none_match", False)
    if args.if_match is not None and if_none_match:
        raise CliError("--if-match and --if-none-match cannot be used together", 2)
    if args.token is not None and (args.if_match is not None or if_none_match):
        raise CliError("--token cannot be used with --if-match or --if-none-match (the condition is the token)", 2)
    if args.if_match == "":
        raise CliError('--if-match takes a causality token or "*"', 2)


def _conditional_done(args: argparse.Namespace, done: str, token: CausalityToken) -> int:
    if _want_json(args):
        _print_json({"pk": args.partition_key, "sk": args.sort_key, done: True, "ct": token.value})
    else:
        print(f"token: {token}")
    return 0


def _condition_false(args: argparse.Namespace, done: str, e: PreconditionFailed) -> int:
    current = e.current_token
    if _want_json(args):
        ct = None if current is None else current.value
        _print_json({"pk": args.partition_key, "sk": args.sort_key, done: False, "ct": ct})
    state = "the item was never written" if current is None else f"current token: {current}"
    print(f"Error: condition false, nothing written ({state})", file=sys.stderr)
    return EXIT_PRECONDITION


async def cmd_insert(client: K2VClient, args: argparse.Namespace) -> int:
    _check_condition(args)
    given = [x for x in (args.value, args.file, args.b64) if x is not None]
    if len(given) > 1:
        raise CliError("give the value once: as an argument, with --file or with --b64", 2)
    if args.value is not None:
        value = args.value.encode("utf-8")
    elif args.b64 is not None:
        try:
            value = base64.b64decode(args.b64, validate=True)
        except (binascii.Error, ValueError):
            raise CliError("--b64: invalid base64", 2)
    elif args.file is not None:
        value = _read_source(args.file)
    else:
        if sys.stdin.isatty():
            raise CliError("no value: give it as an argument, with --file, --b64, or on stdin", 2)
        value = _stdin_bytes()
    if args.if_match is not None or args.if_none_match:
        try:
            new = await client.insert_item(
                args.partition_key,
                args.sort_key,
                value,
                if_match=args.if_match,
                if_none_match=args.if_none_match,
                ttl=args.ttl,
            )
        except PreconditionFailed as e:
            return _condition_false(args, "inserted", e)
        assert new is not None
        return _conditional_done(args, "inserted", new)
    await client.insert_item(args.partition_key, args.sort_key, value, args.token, ttl=args.ttl)
    if _want_json(args):
        _print_json({"pk": args.partition_key, "sk": args.sort_key, "inserted": True, "bytes": len(value)})
    return 0


async def cmd_delete(client: K2VClient, args: argparse.Namespace) -> int:
    _check_condition(args)
    if args.if_match is not None:
        if args.blind:
            raise CliError("--blind cannot be used with --if-match", 2)
        try:
            new = await client.delete_item(args.partition_key, args.sort_key, if_match=args.if_match)
        except PreconditionFailed as e:
            return _condition_false(args, "deleted", e)
        return _conditional_done(args, "deleted", new)
    token = args.token
    if token is None and not args.blind:
        token = (await client.read_item(args.partition_key, args.sort_key)).token
    await client.delete_item(args.partition_key, args.sort_key, token)
    if _want_json(args):
        _print_json({"pk": args.partition_key, "sk": args.sort_key, "deleted": True})
    return 0


async def cmd_poll(client: K2VClient, args: argparse.Namespace) -> int:
    token: CausalityToken | str | None = args.token
    if token is None:
        try:
            token = (await client.read_item(args.partition_key, args.sort_key)).token
        except NoSuchKey:
            token = CausalityToken.EMPTY
    item = await client.poll_item(args.partition_key, args.sort_key, token, args.poll_timeout)
    if item is None:
        if _want_json(args):
            _print_json(None)
        else:
            print("timeout: no change", file=sys.stderr)
        return EXIT_TIMEOUT
    return _output_item(item, args)


def _check_page_args(args: argparse.Namespace) -> None:
    if args.limit is not None and args.limit < 0:
        raise CliError("--limit must be >= 0", 2)
    if args.page_size < 1:
        raise CliError("--page-size must be >= 1", 2)


async def cmd_read_index(client: K2VClient, args: argparse.Namespace) -> int:
    _check_page_args(args)
    entries, more, next_start = [], False, None
    start, remaining = args.start, args.limit
    while True:
        n = args.page_size if remaining is None else min(args.page_size, remaining)
        page = await client.read_index(prefix=args.prefix, start=start, end=args.end, limit=n, reverse=args.reverse)
        entries.extend(page.partition_keys)
        more, next_start = page.more, page.next_start
        if remaining is not None:
            remaining -= len(page.partition_keys)
        if not more or next_start is None or remaining == 0:
            break
        start = next_start
    if _want_json(args):
        _print_json({"partitionKeys": [e.to_json() for e in entries], "more": more, "nextStart": next_start})
    else:
        rows = [("partition key", "entries", "conflicts", "values", "bytes")]
        rows += [(e.partition_key, str(e.entries), str(e.conflicts), str(e.values), str(e.bytes)) for e in entries]
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if more:
            print(f"more: next start {next_start}")
    return 0


async def cmd_read_range(client: K2VClient, args: argparse.Namespace) -> int:
    _check_page_args(args)
    items: list[Item] = []
    more, next_start = False, None
    start, remaining = args.start, args.limit
    while True:
        n = args.page_size if remaining is None else min(args.page_size, remaining)
        page = await client.read_range(
            args.partition_key,
            prefix=args.prefix,
            start=start,
            end=args.end,
            limit=n,
            reverse=args.reverse,
            conflicts_only=args.conflicts_only,
            tombstones=args.tombstones,
        )
        items.extend(page.items)
        more, next_start = page.more, page.next_start
        if remaining is not None:
            remaining -= len(page.items)
        if not more or next_start is None or remaining == 0:
            break
        start = next_start
    if _want_json(args):
        _print_json({"items": [i.to_json() for i in items], "more": more, "nextStart": next_start})
    else:
        for item in items:
            _print_item(item, with_key=True)
        if more:
            print(f"more: next start {next_start}")
    return 0


async def cmd_delete_range(client: K2VClient, args: argparse.Namespace) -> int:
    if args.prefix is None and args.start is None and args.end is None and not args.all:
        raise CliError("give --prefix, --start or --end, or --all to delete the whole partition", 2)
    n = await client.delete_range(args.partition_key, prefix=args.prefix, start=args.start, end=args.end)
    if _want_json(args):
        _print_json({"deletedItems": n})
    else:
        print(f"deleted {n} items")
    return 0


async def cmd_poll_range(client: K2VClient, args: argparse.Namespace) -> int:
    follow = getattr(args, "follow", False)
    kw = {"prefix": args.prefix, "start": args.start, "end": args.end}
    if not follow:
        res = await client.poll_range(
            args.partition_key,
            seen_marker=args.seen_marker,
            timeout=args.poll_timeout if args.seen_marker else None,
            **kw,
        )
        if res is None:
            if _want_json(args):
                _print_json(None)
            else:
                print("timeout: no change", file=sys.stderr)
            return EXIT_TIMEOUT
        _print_poll(res, args)
        return 0
    count = 0
    scope = asyncio.timeout(args.watch_timeout)
    try:
        async with scope:
            async for res in client.watch_range(
                args.partition_key,
                seen_marker=args.seen_marker,
                timeout=args.poll_timeout,
                include_initial=not args.no_initial,
                **kw,
            ):
                _print_poll(res, args)
                count += 1
                if args.count is not None and count >= args.count:
                    break
    except TimeoutError:
        if not scope.expired():
            raise  # the client's own timeout (K2VTimeoutError): the server did not answer
        if count == 0:
            print("timeout: no change", file=sys.stderr)
            return EXIT_TIMEOUT
    return 0


def _watched_ranges(args: argparse.Namespace) -> list[RangeSpec]:
    if len(args.ranges) > 64:
        raise CliError(f"at most 64 ranges in one watch, got {len(args.ranges)}", 2)
    markers: list[str | None] = [None] * len(args.ranges)
    if args.seen_marker is not None:
        if len(args.seen_marker) != len(args.ranges):
            raise CliError(
                f"give --seen-marker once per range ({len(args.ranges)}), got {len(args.seen_marker)}; "
                "'' for a range without one",
                2,
            )
        markers = [m or None for m in args.seen_marker]
    out = []
    for arg, marker in zip(args.ranges, markers, strict=True):
        pk, slash, prefix = arg.partition("/")
        if not pk:
            raise CliError(f"{arg!r}: the partition key is empty", 2)
        if slash and args.prefix is not None:
            raise CliError(f"{arg!r}: give the prefix after / or with --prefix, not both", 2)
        out.append(RangeSpec(pk, prefix if slash else args.prefix, args.start, args.end, marker))
    return out


async def cmd_watch(client: K2VClient, args: argparse.Namespace) -> int:
    ranges = _watched_ranges(args)
    count = 0
    scope = asyncio.timeout(args.watch_timeout)
    try:
        async with scope:
            async for ch in client.watch(ranges, timeout=args.poll_timeout, include_initial=not args.no_initial):
                _print_changes(ch, args)
                count += 1
                if args.count is not None and count >= args.count:
                    break
    except TimeoutError:
        if not scope.expired():
            raise  # the client's own timeout (K2VTimeoutError): the server did not answer
        if count == 0:
            print("timeout: no change", file=sys.stderr)
            return EXIT_TIMEOUT
    return 0


def _print_changes(ch: RangeChanges, args: argparse.Namespace) -> None:
    if _want_json(args):
        _print_json({"index": ch.index, **ch.to_json()})
        return
    prefix = "" if ch.range.prefix is None else f" prefix: {ch.range.prefix}"
    print(f"range {ch.index}: partition key: {ch.partition_key}{prefix}")
    for item in ch.items:
        _print_item(item, with_key=True)
    print(f"seen marker: {ch.seen_marker}", flush=True)


def _txn_list(body: dict[str, Any], name: str) -> list[Any]:
    raw = body.get(name)
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise CliError(f"`{name}` must be a list")
    return raw


async def cmd_txn(client: K2VClient, args: argparse.Namespace) -> int:
    try:
        body = json.loads(_read_source(args.file))
    except ValueError as e:
        raise CliError(f"invalid JSON: {e}")
    if not isinstance(body, dict):
        raise CliError("the transaction must be a JSON object")
    try:
        compare = [Compare.from_json(c, f"compare[{i}]") for i, c in enumerate(_txn_list(body, "compare"))]
        branches: dict[str, list[TxnOp]] = {
            name: [txn_op_from_json(op, f"{name}[{i}]") for i, op in enumerate(_txn_list(body, name))]
            for name in ("success", "failure")
        }
        res = await client.txn(args.partition_key, compare, branches["success"], branches["failure"])
    except (ValueError, TypeError) as e:
        raise CliError(str(e))
    _print_json(res.to_json())
    return 0


def _print_poll(res: Any, args: argparse.Namespace) -> None:
    if _want_json(args):
        _print_json(res.to_json())
        return
    for item in res.items:
        _print_item(item, with_key=True)
    print(f"seen marker: {res.seen_marker}", flush=True)


def _b64_value(n: int, v: Any) -> bytes:
    try:
        return base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise CliError(f"item {n}: `v` must be base64 (or null for a tombstone)")


def _insert_op(n: int, obj: dict[str, Any]) -> InsertOp:
    pk, sk = obj.get("pk"), obj.get("sk")
    if not isinstance(pk, str) or not isinstance(sk, str):
        raise CliError(f"item {n}: `pk` and `sk` must be strings")
    if "text" in obj:
        if not isinstance(obj["text"], str):
            raise CliError(f"item {n}: `text` must be a string")
        value: bytes | None = obj["text"].encode("utf-8")
    else:
        v = obj.get("v")
        if isinstance(v, list):  # an item as read-range --json prints it: one value (no conflict)
            if len(v) != 1:
                raise CliError(f"item {n}: `v` holds {len(v)} concurrent values: give the one to write")
            v = v[0]
        value = None if v is None else _b64_value(n, v)
    ct = obj.get("ct")
    if ct is not None and not isinstance(ct, str):
        raise CliError(f"item {n}: `ct` must be a string")
    ttl = obj.get("ttl")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int)):
        raise CliError(f"item {n}: `ttl` must be an integer number of seconds")
    return InsertOp(pk, sk, value, None if ct is None else CausalityToken(ct), ttl)


async def cmd_insert_batch(client: K2VClient, args: argparse.Namespace) -> int:
    ops = [_insert_op(n, obj) for n, obj in enumerate(_json_lines(args.file), 1)]
    await client.insert_batch(ops)
    if _want_json(args):
        _print_json({"inserted": len(ops)})
    else:
        print(f"inserted {len(ops)} items")
    return 0


def _queries(args: argparse.Namespace, cls: Any) -> list[Any]:
    out = []
    for n, obj in enumerate(_json_lines(args.file), 1):
        if not isinstance(obj.get("partitionKey"), str):
            raise CliError(f"query {n}: `partitionKey` must be a string")
        out.append(cls.from_json(obj))
    return out


async def cmd_read_batch(client: K2VClient, args: argparse.Namespace) -> int:
    pages = await client.read_batch(_queries(args, ReadQuery))
    if _want_json(args):
        _print_json([p.to_json() for p in pages])
    else:
        for p in pages:
            print(f"partition key: {p.query.partition_key}")
            for item in p.items:
                _print_item(item, with_key=True)
            if p.more:
                print(f"more: next start {p.next_start}")
    return 0


async def cmd_delete_batch(client: K2VClient, args: argparse.Namespace) -> int:
    results = await client.delete_batch(_queries(args, DeleteQuery))
    if _want_json(args):
        _print_json([r.to_json() for r in results])
    else:
        for r in results:
            print(f"{r.query.partition_key}: deleted {r.deleted_items} items")
    return 0


# --- entry point ----------------------------------------------------------------------------


def make_client(args: argparse.Namespace) -> K2VClient:
    flags = {
        "endpoint": args.endpoint,
        "region": args.region,
        "bucket": args.bucket,
        "access_key_id": args.access_key_id,
        "secret_access_key": args.secret_access_key,
    }
    global _stdin_taken
    _stdin_taken = args.dev_json == "-"
    dev: dict[str, str | None] = {}
    if args.dev_json:
        src: Any = sys.stdin if args.dev_json == "-" else Path(args.dev_json)
        try:
            data = load_dev_json(src)
        except OSError as e:
            raise CliError(f"cannot read {args.dev_json}: {e.strerror}")
        except ValueError as e:
            raise CliError(str(e))
        dev = {
            "endpoint": data.get("k2v_endpoint"),
            "region": data.get("region"),
            "bucket": data.get("bucket"),
            "access_key_id": data.get("access_key_id"),
            "secret_access_key": data.get("secret_access_key"),
        }
    try:
        s = resolve(flags, dev, env_settings())
    except ValueError as e:
        raise CliError(f"{e} (see `garagekv k2v --help`)")
    return K2VClient(
        endpoint=s.endpoint,
        region=s.region,
        access_key_id=s.access_key_id,
        secret_access_key=s.secret_access_key,
        bucket=s.bucket,
        timeout=args.timeout,
    )


async def _main(args: argparse.Namespace) -> int:
    client = make_client(args)
    handler: Handler = args.handler
    async with client:
        return await handler(client, args)


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_main(args))
    except CliError as e:
        print(f"Error: {e}", file=sys.stderr)
        return e.code
    except NoSuchKey as e:
        print(f"Error: {e}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except K2VError as e:
        print(f"Error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        return 0
    except ValueError as e:  # an argument the client refuses (an empty key, bad UTF-8, a bad TTL)
        print(f"Error: {e}", file=sys.stderr)
        return EXIT_USAGE
