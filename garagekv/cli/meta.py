"""``garagekv key ...`` and ``garagekv bucket ...``: run on the local node through its control socket."""

from __future__ import annotations

import argparse
from typing import Any

from garagekv.admin.remote import admin_call
from garagekv.cli import jsonout
from garagekv.util.config import Config
from garagekv.util.errors import AdminError


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    key = sub.add_parser("key", help="manage access keys").add_subparsers(dest="action", required=True)
    c = key.add_parser("create", help="create a key")
    c.add_argument("name", nargs="?", default="Unnamed key")
    key.add_parser("list", help="list keys")
    i = key.add_parser("info", help="show a key")
    i.add_argument("pattern")
    i.add_argument("--show-secret", action="store_true")
    d = key.add_parser("delete", help="delete a key")
    d.add_argument("pattern")
    d.add_argument("--yes", action="store_true")
    im = key.add_parser("import", help="import an existing key")
    im.add_argument("key_id")
    im.add_argument("secret")
    im.add_argument("-n", "--name", default="Imported key")
    im.add_argument("--yes", action="store_true")
    r = key.add_parser("rename", help="rename a key")
    r.add_argument("pattern")
    r.add_argument("name")
    for verb in ("allow", "deny"):
        a = key.add_parser(verb, help=f"{verb} key-wide permissions")
        a.add_argument("pattern")
        a.add_argument("--create-bucket", action="store_true")

    bucket = sub.add_parser("bucket", help="manage buckets").add_subparsers(dest="action", required=True)
    c = bucket.add_parser("create", help="create a bucket")
    c.add_argument("name")
    bucket.add_parser("list", help="list buckets")
    i = bucket.add_parser("info", help="show a bucket")
    i.add_argument("name")
    d = bucket.add_parser("delete", help="delete an empty bucket")
    d.add_argument("name")
    d.add_argument("--yes", action="store_true")
    for verb in ("allow", "deny"):
        a = bucket.add_parser(verb, help=f"{verb} a key on a bucket")
        a.add_argument("bucket")
        a.add_argument("--key", required=True)
        a.add_argument("--read", action="store_true")
        a.add_argument("--write", action="store_true")
        a.add_argument("--owner", action="store_true")
    al = bucket.add_parser("alias", help="add an alias to a bucket")
    al.add_argument("bucket")
    al.add_argument("alias")
    al.add_argument("--local", metavar="KEY")
    un = bucket.add_parser("unalias", help="remove an alias")
    un.add_argument("alias")
    un.add_argument("--local", metavar="KEY")

    for group in (key, bucket):
        for parser in group.choices.values():
            parser.add_argument("--json", action="store_true", help="machine-readable output")


def _print_key(info: dict[str, Any]) -> None:
    print(f"Key name: {info['name']}")
    print(f"Key ID: {info['accessKeyId']}")
    print(f"Secret key: {info['secretAccessKey'] or '(redacted)'}")
    print(f"Can create buckets: {info['permissions']['createBucket']}")
    print("Authorized buckets:")
    for b in info["buckets"]:
        p = b["permissions"]
        flags = ("R" if p["read"] else " ") + ("W" if p["write"] else " ") + ("O" if p["owner"] else " ")
        names = ", ".join(b["globalAliases"] + [f"{a} (local)" for a in b["localAliases"]])
        print(f"  {flags}  {names}\t{b['id']}")


def _print_bucket(info: dict[str, Any]) -> None:
    print(f"Bucket: {info['id']}")
    print("Global aliases: " + ", ".join(info["globalAliases"]))
    if info["localAliases"]:
        print("Key-specific aliases:")
        for la in info["localAliases"]:
            print(f"  {la['accessKeyId']}\t{la['alias']}")
    print("Authorized keys:")
    for k in info["keys"]:
        p = k["permissions"]
        flags = ("R" if p["read"] else " ") + ("W" if p["write"] else " ") + ("O" if p["owner"] else " ")
        print(f"  {flags}  {k['accessKeyId']}\t{k['name']}")


async def run(args: argparse.Namespace, config: Config) -> int:
    async def call(op: str, op_args: dict[str, Any] | None = None) -> Any:
        return await admin_call(config, op, op_args, rpc_host=args.rpc_host)

    a = args.action
    result: Any
    if args.command == "key":
        if a == "create":
            result = await call("key.create", {"name": args.name})
        elif a == "list":
            result = await call("key.list")
        elif a == "info":
            result = await call("key.info", {"pattern": args.pattern, "show_secret": args.show_secret})
        elif a == "delete":
            if not args.yes:
                raise AdminError("Add --yes flag to really perform this operation")
            result = await call("key.delete", {"pattern": args.pattern})
        elif a == "import":
            result = await call("key.import", {"key_id": args.key_id, "secret": args.secret, "name": args.name})
        elif a == "rename":
            result = await call("key.rename", {"pattern": args.pattern, "name": args.name})
        else:
            if not args.create_bucket:
                raise AdminError("Nothing to do: add --create-bucket")
            result = await call("key.set_create_bucket", {"pattern": args.pattern, "allow": a == "allow"})
    else:
        if a == "create":
            result = await call("bucket.create", {"name": args.name})
        elif a == "list":
            result = await call("bucket.list")
        elif a == "info":
            result = await call("bucket.info", {"name": args.name})
        elif a == "delete":
            if not args.yes:
                raise AdminError("Add --yes flag to really perform this operation")
            result = await call("bucket.delete", {"name": args.name})
        elif a in ("allow", "deny"):
            result = await call(
                "bucket.permissions",
                {
                    "bucket": args.bucket,
                    "key": args.key,
                    "allow": a == "allow",
                    "read": args.read,
                    "write": args.write,
                    "owner": args.owner,
                },
            )
        elif a == "alias":
            result = await call("bucket.alias", {"bucket": args.bucket, "alias": args.alias, "local_key": args.local})
        else:
            result = await call("bucket.unalias", {"alias": args.alias, "local_key": args.local})

    if args.json:
        print(jsonout.dumps(result))
        return 0
    _print_human(args.command, a, args, result)
    return 0


def _print_human(command: str, action: str, args: argparse.Namespace, result: Any) -> None:
    if command == "key":
        if action == "list":
            print("List of keys:")
            for k in result:
                print(f"  {k['id']}\t{k['name']}")
        elif action == "delete":
            print(f"Key {result['id']} was deleted successfully.")
        else:
            _print_key(result)
        return
    if action == "list":
        print("List of buckets:")
        for b in result:
            local = [la["alias"] for la in b["localAliases"]]
            print(f"  {', '.join(b['globalAliases'])}\t{', '.join(local)}\t{b['id']}")
    elif action == "create":
        print(f"Bucket {args.name} was created.")
    elif action == "delete":
        print(f"Bucket {result['id']} was deleted.")
    elif action in ("allow", "deny"):
        p = result["permissions"]
        flags = ", ".join(f"{name} {str(p[name]).lower()}" for name in ("read", "write", "owner"))
        print(f"New permissions for {result['key']} on {result['bucket']}: {flags}.")
    else:
        _print_bucket(result)
