"""The operator-command registry: one ``Op`` per name, arguments declared and checked once.

Checked without a node: the wire forms the CLI and the admin HTTP API send are accepted, and
unknown, missing and ill-typed arguments are a 400 before the operation runs."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest

from garagekv.admin.operation import NoArgs, Op, registry, required
from garagekv.admin.registry import OPS, run_op
from garagekv.util.errors import AdminError, NoSuchBucket

KEY = "GK0123456789abcdef01234567"
BID = "ab" * 32
NODE = "cd" * 32

# What the front ends send (garagekv.cli.* and garagekv.admin.http), None included where they
# pass an unset option through.
WIRE_FORMS: list[tuple[str, dict[str, Any]]] = [
    ("key.create", {"name": "k"}),
    ("key.create", {"name": None}),
    ("key.import", {"key_id": KEY, "secret": "s", "name": None}),
    ("key.list", {}),
    ("key.info", {"pattern": "k", "show_secret": False}),
    ("key.info", {"id": KEY, "show_secret": True}),
    ("key.rename", {"pattern": "k", "name": "n"}),
    ("key.delete", {"pattern": "k"}),
    ("key.delete", {"id": KEY}),
    ("key.set_create_bucket", {"pattern": "k", "allow": True}),
    ("key.update", {"id": KEY, "name": None, "allow_create_bucket": False}),
    ("bucket.create", {"name": "b"}),
    ("bucket.create", {"name": "b", "local_key": KEY}),
    (
        "bucket.create",
        {
            "global_alias": None,
            "local_alias": "b",
            "local_key_id": KEY,
            "local_permissions": {"read": True, "write": False, "owner": False},
        },
    ),
    ("bucket.list", {}),
    ("bucket.info", {"name": "b"}),
    ("bucket.info", {"id": BID}),
    ("bucket.info", {"global_alias": "b"}),
    ("bucket.delete", {"name": "b"}),
    ("bucket.delete", {"id": BID}),
    ("bucket.permissions", {"bucket": "b", "key": "k", "allow": True, "read": True, "write": True, "owner": False}),
    ("bucket.permissions", {"id": BID, "key_id": KEY, "allow": False, "read": True, "write": False, "owner": False}),
    ("bucket.alias", {"bucket": "b", "alias": "a", "local_key": None}),
    ("bucket.alias", {"id": BID, "alias": "a", "local_key_id": KEY}),
    ("bucket.unalias", {"alias": "a", "local_key": None}),
    ("bucket.unalias", {"id": BID, "alias": "a", "local_key_id": KEY}),
    ("cluster.status", {}),
    ("node.connect", {"peer": f"{NODE}@127.0.0.1:3901"}),
    ("node.info", {}),
    ("layout.show", {}),
    ("layout.history", {}),
    ("layout.get", {}),
    ("layout.assign", {"nodes": ["cd"], "zone": "z1", "capacity": "1G"}),
    (
        "layout.assign",
        {"nodes": ["cd"], "zone": None, "capacity": None, "gateway": True, "tags": ["t"], "replace": []},
    ),
    ("layout.stage", {"changes": [{"id": NODE, "remove": True}]}),
    ("layout.remove", {"node": "cd"}),
    ("layout.config", {"zone_redundancy": "maximum"}),
    ("layout.apply", {"version": 1}),
    ("layout.apply", {"version": None}),
    ("layout.revert", {}),
    ("layout.skip_dead_nodes", {"version": 2, "allow_missing_data": False}),
    ("table.local_digest", {}),
    ("table.local_digest", {"table": "k2v_item"}),
    ("repair", {"what": "tables"}),
    ("stats", {"all_nodes": True}),
    ("stats", {}),
    ("worker.list", {}),
    ("worker.info", {"tid": 3}),
    ("meta.snapshot", {"all_nodes": False}),
    ("node.forget", {"node": "ab12"}),
    ("meta.snapshot", {"all_nodes": True}),
]


@pytest.mark.parametrize("name, wire", WIRE_FORMS)
def test_the_front_ends_wire_forms_are_accepted(name, wire):
    OPS[name].parse(wire)


def test_every_registered_operation_is_sent_by_a_front_end():
    assert set(OPS) == {name for name, _ in WIRE_FORMS}


@pytest.mark.parametrize(
    "name, wire, message",
    [
        ("key.info", {"pattern": "k", "secret": True}, "unknown argument 'secret' for key.info"),
        ("key.import", {"key_id": KEY}, "missing argument 'secret' for key.import"),
        ("key.import", {"key_id": KEY, "secret": None}, "missing argument 'secret' for key.import"),
        ("layout.apply", {"version": "1"}, "invalid argument 'version' for layout.apply: expected an integer or null"),
        ("layout.apply", {"version": True}, "invalid argument 'version' for layout.apply"),
        ("stats", {"all_nodes": 1}, "invalid argument 'all_nodes' for stats: expected a boolean, got an integer"),
        ("layout.assign", {"nodes": ["ab", 3]}, "invalid argument 'nodes' for layout.assign: expected a list of"),
        ("layout.assign", {"nodes": "ab"}, "invalid argument 'nodes'"),
        ("bucket.create", {"local_permissions": []}, "invalid argument 'local_permissions'"),
        ("worker.info", {"tid": "x"}, "invalid argument 'tid' for worker.info"),
        ("key.list", ["x"], "the arguments of key.list must be a map"),
    ],
)
async def test_bad_arguments_are_a_400_before_the_operation_runs(name, wire, message):
    # No services at all: the operation must not be reached.
    with pytest.raises(AdminError) as e:
        await OPS[name](None, wire)
    assert message in e.value.message and e.value.status == 400


async def test_unknown_operation_and_missing_arguments_of_one_form():
    with pytest.raises(AdminError, match="unknown operation 'key.frobnicate'"):
        await run_op(None, "key.frobnicate", {})
    # `bucket.create` needs a name unless it is given aliases: known only once it runs.
    with pytest.raises(AdminError, match="missing argument 'name' for bucket.create"):
        await OPS["bucket.create"](
            SimpleNamespace(model=SimpleNamespace(helper=SimpleNamespace(create_bucket=None))), {}
        )


@dataclass(frozen=True, kw_only=True)
class _Args:
    count: int
    label: str | None = None
    flag: bool = True
    items: list[str] | None = None


async def _echo(services: Any, a: _Args) -> Any:
    return services, a, required(a.label, "label")


async def test_an_op_receives_typed_arguments_with_defaults():
    op = Op("test.echo", _Args, _echo)
    services, a, label = await op("svc", {"count": 2, "label": "x", "flag": None})
    assert services == "svc" and a == _Args(count=2, label="x", flag=True) and label == "x"
    with pytest.raises(AdminError, match="missing argument 'label' for test.echo"):
        await op("svc", {"count": 2})
    assert await Op("test.none", NoArgs, lambda s, a: _async(a))(None) == NoArgs()


async def _async(v: Any) -> Any:
    return v


def test_a_name_is_registered_once():
    op = Op("x", NoArgs, _async)
    with pytest.raises(ValueError, match="defined twice"):
        registry((op,), (op,))


async def test_bucket_create_with_permissions_reports_a_bucket_deleted_meanwhile_as_no_such_bucket():
    # The admin API's form: after narrowing the local key's permissions the bucket is read back;
    # another node may have deleted it in between, which is a 404, not a crash on a missing bucket.
    bucket = SimpleNamespace(id=bytes.fromhex(BID))
    calls: list[str] = []

    async def get_key(key_id: str) -> Any:
        return SimpleNamespace(key_id=key_id)

    async def create_bucket(name: str, local_key: str | None = None) -> Any:
        calls.append(f"create {name} {local_key}")
        return bucket

    async def change_permissions(bucket_name: str, key_pattern: str, **flags: bool) -> Any:
        calls.append(f"perms {bucket_name} {sorted(k for k, v in flags.items() if v)}")

    async def get_bucket(bucket_id: bytes) -> Any:
        return None

    helper = SimpleNamespace(
        get_key=get_key, create_bucket=create_bucket, change_permissions=change_permissions, get_bucket=get_bucket
    )
    wire = {"local_alias": "b", "local_key_id": KEY, "local_permissions": {"read": True}}
    with pytest.raises(NoSuchBucket):
        await OPS["bucket.create"](SimpleNamespace(model=SimpleNamespace(helper=helper)), wire)
    assert calls == [f"create b {KEY}", f"perms {BID} ['owner', 'write']"]
