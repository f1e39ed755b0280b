"""garagekv.util.config: the example parses, every error names its key, secrets stay secret."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from garagekv.util.config import (
    AdminConfig,
    Config,
    K2VApiConfig,
    MiB,
    S3ApiConfig,
    TiB,
    default_config_path,
    load_config,
    parse_config,
    parse_size,
    split_host_port,
)
from garagekv.util.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cluster.toml"
SECRET = "0123456789abcdef" * 4
NODE_ID = "ab" * 32
posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own GARAGEKV_* variables must not leak into these tests."""
    for name in list(os.environ):
        if name.startswith("GARAGEKV_"):
            monkeypatch.delenv(name)


def minimal(**extra: Any) -> dict[str, Any]:
    return {"metadata_dir": "/var/lib/garagekv/meta", "s3_api": {"s3_region": "garage"}, **extra}


def k2v(**section: Any) -> dict[str, Any]:
    return minimal(k2v_api={"api_bind_addr": "[::]:3904", **section})


def parse_error(data: dict[str, Any], base_dir: Path | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir)
    return str(info.value)


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


# --- the example file and defaults ------------------------------------------------------------


def test_example_file_parses() -> None:
    config = load_config(EXAMPLE)
    assert config.metadata_dir == EXAMPLE.parent / "node1" / "meta"
    assert config.replication_factor == 3
    assert config.consistency_mode == "consistent"
    assert config.rpc_bind_addr == "127.0.0.1:3901"
    assert config.rpc_secret_bytes == bytes(32)
    assert config.lmdb_map_size == TiB
    assert config.s3_api == S3ApiConfig(s3_region="garage")
    assert config.k2v_api == K2VApiConfig(api_bind_addr="127.0.0.1:3904")
    assert config.admin.api_bind_addr == "127.0.0.1:3903"
    assert config.admin.admin_token is None and config.admin.metrics_token is None


def test_minimal_config_defaults() -> None:
    config = parse_config(minimal())
    assert config == Config(metadata_dir=Path("/var/lib/garagekv/meta"), s3_api=S3ApiConfig(s3_region="garage"))
    assert config.data_dir is None
    assert config.db_engine == "lmdb"
    assert config.lmdb_map_size == TiB
    assert config.metadata_fsync is True
    assert config.replication_factor == 1
    assert config.rpc_bind_addr == "127.0.0.1:3901"
    assert config.rpc_public_addr is None
    assert config.rpc_secret is None and config.rpc_secret_bytes is None
    assert (config.rpc_ping_timeout_msec, config.rpc_timeout_msec) == (10_000, 300_000)
    assert config.bootstrap_peers == ()
    assert (config.log_level, config.log_format) == ("info", "text")
    assert config.tombstone_gc_delay_sec == 86_400
    assert config.allow_punycode is False and config.allow_world_readable_secrets is False
    assert config.k2v_api is None
    assert config.admin == AdminConfig()


def test_k2v_defaults() -> None:
    k2v = parse_config(minimal(k2v_api={"api_bind_addr": "[::]:3904"})).k2v_api
    assert k2v == K2VApiConfig(api_bind_addr="[::]:3904")
    assert (k2v.max_body_bytes, k2v.max_batch_items, k2v.max_key_bytes) == (16 * MiB, 1000, 479)
    assert k2v.cors_allowed_origins == ()


def test_config_is_frozen() -> None:
    config = parse_config(minimal())
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.replication_factor = 3  # type: ignore[misc]


def test_full_config_values() -> None:
    config = parse_config(
        minimal(
            replication_factor=3,
            consistency_mode="degraded",
            metadata_fsync=False,
            rpc_public_addr="node1.example.com:3901",
            bootstrap_peers=[f"{NODE_ID}@10.0.0.2:3901", f"{NODE_ID}@[fd00::2]:3901"],
            log_level="debug",
            log_format="json",
            tombstone_gc_delay_sec=0,
            db_engine="heed",
            k2v_api={"api_bind_addr": "0.0.0.0:3904", "cors_allowed_origins": ["*"], "max_batch_items": 10},
        )
    )
    assert config.replication_factor == 3
    assert config.consistency_mode == "degraded"
    assert config.metadata_fsync is False
    assert config.rpc_public_addr == "node1.example.com:3901"
    assert len(config.bootstrap_peers) == 2
    assert (config.log_level, config.log_format) == ("debug", "json")
    assert config.tombstone_gc_delay_sec == 0
    assert config.db_engine == "lmdb"  # heed is Garage's alias for its LMDB engine
    assert config.k2v_api is not None
    assert config.k2v_api.cors_allowed_origins == ("*",)
    assert config.k2v_api.max_batch_items == 10


# --- default path, file loading ---------------------------------------------------------------


def test_default_config_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert default_config_path() == Path("/etc/garagekv.toml")
    cfg = write(tmp_path / "c.toml", 'metadata_dir = "m"\n[s3_api]\ns3_region = "garage"\n')
    monkeypatch.setenv("GARAGEKV_CONFIG", str(cfg))
    assert default_config_path() == cfg
    assert load_config().metadata_dir == tmp_path / "m"


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    cfg = write(tmp_path / "bad.toml", 'metadata_dir = "m"\nreplication_factor = = 3\n')
    with pytest.raises(ConfigError, match="line 2") as info:
        load_config(cfg)
    assert str(info.value).startswith(f"{cfg}: ")


def test_missing_file_names_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file") as info:
        load_config(tmp_path / "nope.toml")
    assert str(info.value).startswith(str(tmp_path / "nope.toml"))


def test_non_utf8_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_bytes(b'metadata_dir = "\xff"\n')
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(cfg)


def test_validation_errors_start_with_file_path(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", 'metadata_dir = "m"\nreplication_factor = "3"\n[s3_api]\ns3_region = "g"\n')
    with pytest.raises(ConfigError) as info:
        load_config(str(cfg))
    assert str(info.value).startswith(f"{cfg}: 'replication_factor' must be an integer")


# --- relative paths ---------------------------------------------------------------------------


def test_relative_paths_resolve_against_config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "etc").mkdir()
    cfg = write(
        tmp_path / "etc" / "node.toml",
        'metadata_dir = "meta"\ndata_dir = "../data"\n[s3_api]\ns3_region = "garage"\n',
    )
    monkeypatch.chdir("/")
    config = load_config(cfg)
    assert config.metadata_dir == tmp_path / "etc" / "meta"
    assert config.data_dir == tmp_path / "etc" / ".." / "data"


def test_absolute_paths_unchanged(tmp_path: Path) -> None:
    assert parse_config(minimal(), base_dir=tmp_path).metadata_dir == Path("/var/lib/garagekv/meta")


def test_relative_paths_without_base_dir_stay_relative() -> None:
    assert parse_config(minimal(metadata_dir="meta")).metadata_dir == Path("meta")


def test_relative_path_with_parse_config_base_dir(tmp_path: Path) -> None:
    assert parse_config(minimal(metadata_dir="meta"), base_dir=tmp_path).metadata_dir == tmp_path / "meta"


def test_data_dir_list_form_accepted() -> None:
    config = parse_config(minimal(data_dir=[{"path": "/d1", "capacity": "1T"}, {"path": "/d2"}]))
    assert config.data_dir is None


# --- missing and unknown keys -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"s3_api": {"s3_region": "g"}}, "missing required key 'metadata_dir' (example: metadata_dir = \"/var/"),
        ({"metadata_dir": "m"}, "missing required section [s3_api] (example: [s3_api] s3_region ="),
        ({"metadata_dir": "m", "s3_api": {}}, "missing required key 's3_api.s3_region' (example: s3_region ="),
        (minimal(k2v_api={}), "missing required key 'k2v_api.api_bind_addr' (example: api_bind_addr ="),
    ],
)
def test_missing_required_key(data: dict[str, Any], needle: str) -> None:
    assert needle in parse_error(data)


@pytest.mark.parametrize(
    ("data", "key", "valid"),
    [
        (minimal(replication_factr=3), "replication_factr", "valid keys at top level: metadata_dir,"),
        (minimal(k2v_api={"api_bind": "[::]:3904"}), "k2v_api.api_bind", "valid keys in [k2v_api]: api_bind_addr,"),
        (minimal(s3_api={"s3_region": "g", "region": "x"}), "s3_api.region", "valid keys in [s3_api]: s3_region,"),
        (minimal(admin={"token": "x"}), "admin.token", "valid keys in [admin]: api_bind_addr, admin_token,"),
        (minimal(k2v={"api_bind_addr": "[::]:3904"}), "k2v", "k2v_api"),
        (minimal(k2v_api={"api_bind_addr": "[::]:1", "limits": {}}), "k2v_api.limits", "max_body_bytes"),
    ],
)
def test_unknown_key_is_an_error(data: dict[str, Any], key: str, valid: str) -> None:
    message = parse_error(data)
    assert message.startswith(f"unknown key '{key}'")
    assert valid in message


def test_unknown_key_suggests_close_match() -> None:
    assert "did you mean 'k2v_api.api_bind_addr'?" in parse_error(minimal(k2v_api={"api_bind": "[::]:3904"}))


def test_garage_only_keys_are_tolerated() -> None:
    config = parse_config(
        minimal(
            data_dir="/var/lib/garage/data",
            block_size="1M",
            block_ram_buffer_max="256MiB",
            compression_level=1,
            data_fsync=False,
            disable_scrub=True,
            use_local_tz=True,
            rpc_public_addr_subnet="10.0.0.0/24",
            rpc_bind_outgoing=True,
            metadata_snapshots_dir="/snap",
            metadata_auto_snapshot_interval="6h",
            allow_punycode=True,
            s3_web={"bind_addr": "[::]:3902", "root_domain": ".web.garage", "index": "index.html"},
            consul_discovery={"api": "catalog", "consul_http_addr": "http://127.0.0.1:8500"},
            kubernetes_discovery={"namespace": "garage", "service_name": "garage-daemon"},
            admin={"api_bind_addr": "[::]:3903", "trace_sink": "http://localhost:4317"},
        )
    )
    assert config.allow_punycode is True
    assert config.data_dir == Path("/var/lib/garage/data")
    # Snapshot keys are real now; the rest are named at start-up as ignored.
    assert config.metadata_snapshots_dir == Path("/snap") and config.metadata_auto_snapshot_interval == 6 * 3600
    assert set(config.ignored_keys) == {
        "block_size", "block_ram_buffer_max", "compression_level", "data_fsync", "disable_scrub", "use_local_tz",
        "rpc_public_addr_subnet", "rpc_bind_outgoing", "s3_web", "consul_discovery", "kubernetes_discovery",
        "admin.trace_sink",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("text", "seconds"), [("6h", 21600), ("30m", 1800), ("1d12h", 129600), ("90s", 90), (3600, 3600), ("1h 30m", 5400)]
)
def test_snapshot_interval_durations(text: Any, seconds: int) -> None:
    assert parse_config(minimal(metadata_auto_snapshot_interval=text)).metadata_auto_snapshot_interval == seconds


@pytest.mark.parametrize("bad", ["6", "h", "6x", "59s", 10, "1h-", True, "6hours"])
def test_bad_snapshot_intervals_are_refused(bad: Any) -> None:
    assert "metadata_auto_snapshot_interval" in parse_error(minimal(metadata_auto_snapshot_interval=bad))


def test_snapshot_defaults() -> None:
    config = parse_config(minimal())
    assert config.snapshots_dir == Path("/var/lib/garagekv/meta/snapshots")
    assert config.metadata_auto_snapshot_interval is None and config.metadata_snapshots_keep == 2
    assert config.ignored_keys == ()


def test_garage_quickstart_config_loads(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "garage.toml",
        f"""
metadata_dir = "/var/lib/garage/meta"
data_dir = "/var/lib/garage/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "[::]:3901"
rpc_public_addr = "127.0.0.1:3901"
rpc_secret = "{SECRET}"

[s3_api]
s3_region = "garage"
api_bind_addr = "[::]:3900"
root_domain = ".s3.garage.localhost"

[s3_web]
bind_addr = "[::]:3902"
root_domain = ".web.garage.localhost"
index = "index.html"

[k2v_api]
api_bind_addr = "[::]:3904"

[admin]
api_bind_addr = "[::]:3903"
admin_token = "admintoken"
metrics_token = "metricstoken"
""",
    )
    config = load_config(cfg)
    assert config.s3_api == S3ApiConfig(
        s3_region="garage", api_bind_addr="[::]:3900", root_domain=".s3.garage.localhost"
    )
    assert config.admin.admin_token == "admintoken"
    assert config.admin.metrics_token == "metricstoken"
    assert config.rpc_secret_bytes == bytes.fromhex(SECRET)


# --- types, ranges, choices -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (minimal(metadata_dir=5), "'metadata_dir' must be a string, got integer (example: metadata_dir ="),
        (minimal(metadata_dir=""), "'metadata_dir' must not be empty"),
        (minimal(replication_factor="3"), "'replication_factor' must be an integer, got string (example:"),
        (minimal(replication_factor=True), "'replication_factor' must be an integer, got boolean"),
        (minimal(replication_factor=3.0), "'replication_factor' must be an integer, got float"),
        (minimal(metadata_fsync="yes"), "'metadata_fsync' must be a boolean (true or false), got string"),
        (minimal(metadata_fsync=1), "'metadata_fsync' must be a boolean"),
        (minimal(allow_punycode=0), "'allow_punycode' must be a boolean"),
        (minimal(allow_world_readable_secrets="no"), "'allow_world_readable_secrets' must be a boolean"),
        (minimal(rpc_bind_addr=3901), "'rpc_bind_addr' must be a string, got integer"),
        (minimal(bootstrap_peers="x@y:1"), "'bootstrap_peers' must be a list of strings, got string"),
        (minimal(bootstrap_peers=[1]), "'bootstrap_peers[0]' must be a non-empty string, got integer"),
        (minimal(lmdb_map_size=1.5), "'lmdb_map_size' must be a size"),
        (minimal(lmdb_map_size=True), "'lmdb_map_size' must be a size"),
        (minimal(log_level=["info"]), "'log_level' must be a string, got array"),
        (minimal(s3_api="garage"), "'s3_api' must be a table"),
        (minimal(k2v_api=[]), "'k2v_api' must be a table"),
        (minimal(admin=True), "'admin' must be a table"),
        (minimal(s3_api={"s3_region": 1}), "'s3_api.s3_region' must be a string, got integer (example: s3_region"),
        (minimal(s3_api={"s3_region": "g", "root_domain": 1}), "'s3_api.root_domain' must be a string"),
        (minimal(k2v_api={"api_bind_addr": "[::]:1", "cors_allowed_origins": "*"}), "'k2v_api.cors_allowed_origins'"),
        (minimal(k2v_api={"api_bind_addr": "[::]:1", "max_batch_items": "10"}), "'k2v_api.max_batch_items' must"),
        (minimal(admin={"admin_token": 1234}), "'admin.admin_token' must be a string, got integer"),
        (minimal(admin={"metrics_token_file": ["f"]}), "'admin.metrics_token_file' must be a string"),
        (minimal(rpc_secret=1), "'rpc_secret' must be a string"),
    ],
)
def test_wrong_type_names_key_type_and_example(data: dict[str, Any], needle: str) -> None:
    message = parse_error(data)
    assert needle in message
    assert "example:" in message


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (minimal(replication_factor=0), "'replication_factor' must be between 1 and 7, got 0"),
        (minimal(replication_factor=8), "'replication_factor' must be between 1 and 7, got 8"),
        (minimal(rpc_ping_timeout_msec=0), "'rpc_ping_timeout_msec' must be at least 1"),
        (minimal(rpc_timeout_msec=-5), "'rpc_timeout_msec' must be at least 1"),
        (minimal(tombstone_gc_delay_sec=-1), "'tombstone_gc_delay_sec' must be at least 0"),
        (k2v(max_key_bytes=0), "'k2v_api.max_key_bytes' must be between 1 and 479"),
        (k2v(max_key_bytes=480), "'k2v_api.max_key_bytes' must be between 1 and 479"),
        (k2v(max_batch_items=0), "'k2v_api.max_batch_items' must be at least 1"),
        (k2v(max_body_bytes=0), "'k2v_api.max_body_bytes' must be at least 1"),
        (minimal(consistency_mode="strong"), "'consistency_mode' must be one of consistent, degraded, dangerous"),
        (minimal(log_level="trace"), "'log_level' must be one of debug, info, warning, error"),
        (minimal(log_format="xml"), "'log_format' must be one of text, json"),
        (minimal(db_engine="sqlite"), "'db_engine' is 'sqlite', but garagekv only supports \"lmdb\""),
        (minimal(db_engine="sled"), "only supports \"lmdb\""),
    ],
)  # fmt: skip
def test_out_of_range_or_bad_choice(data: dict[str, Any], needle: str) -> None:
    message = parse_error(data)
    assert needle in message
    assert "example:" in message


@pytest.mark.parametrize("value", [1, 7])
def test_replication_factor_bounds_accepted(value: int) -> None:
    assert parse_config(minimal(replication_factor=value)).replication_factor == value


@pytest.mark.parametrize("mode", ["consistent", "degraded", "dangerous"])
def test_consistency_modes(mode: str) -> None:
    assert parse_config(minimal(consistency_mode=mode)).consistency_mode == mode


# --- sizes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (0, 0),
        (12345, 12345),
        ("12345", 12345),
        ("100B", 100),
        ("1K", 1000),
        ("1k", 1000),
        ("1KB", 1000),
        ("100M", 100_000_000),
        ("512G", 512 * 10**9),
        ("1T", 10**12),
        ("1tb", 10**12),
        ("2P", 2 * 10**15),
        ("64KiB", 64 * 1024),
        ("64Ki", 64 * 1024),
        ("16MiB", 16 * MiB),
        ("1GiB", 1 << 30),
        ("1TiB", TiB),
        ("1 TiB", TiB),
        (" 1.5G ", 1_500_000_000),
        ("1.5KiB", 1536),
        ("0.0001K", 0),
    ],
)
def test_parse_size(text: int | str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "K", "1X", "1iB", "-1", "1.G", "1KiBB", "1e9", "one", -1, 1.5, True])
def test_parse_size_rejects(text: Any) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1T", 10**12 // 4096 * 4096),
        ("1TiB", TiB),
        (MiB + 4095, MiB),
        ("1MiB", MiB),
        ("512G", 512 * 10**9 // 4096 * 4096),
    ],
)
def test_lmdb_map_size_rounds_down_to_page(value: int | str, expected: int) -> None:
    size = parse_config(minimal(lmdb_map_size=value)).lmdb_map_size
    assert size == expected
    assert size % 4096 == 0


@pytest.mark.parametrize("value", [0, MiB - 1, "1M", "1000KiB", "64KiB"])
def test_lmdb_map_size_minimum(value: int | str) -> None:
    assert "'lmdb_map_size' must be at least 1 MiB" in parse_error(minimal(lmdb_map_size=value))


def test_lmdb_map_size_bad_syntax_names_key() -> None:
    message = parse_error(minimal(lmdb_map_size="lots"))
    assert message.startswith("'lmdb_map_size' must be a size")
    assert "example: lmdb_map_size = " in message


def test_max_body_bytes_size_syntax() -> None:
    k2v = parse_config(minimal(k2v_api={"api_bind_addr": "[::]:3904", "max_body_bytes": "1MiB"})).k2v_api
    assert k2v is not None and k2v.max_body_bytes == MiB
    message = parse_error(minimal(k2v_api={"api_bind_addr": "[::]:3904", "max_body_bytes": "big"}))
    assert message.startswith("'k2v_api.max_body_bytes' must be a size")


def test_max_item_bytes_default_and_bounds() -> None:
    """Items must fit in one RPC message: the limit is validated against the frame limit."""
    from garagekv.net.channel import MAX_RECORD_SIZE
    from garagekv.util.config import DEFAULT_MAX_ITEM_BYTES, RPC_FRAME_LIMIT

    assert RPC_FRAME_LIMIT == MAX_RECORD_SIZE
    assert DEFAULT_MAX_ITEM_BYTES + MiB <= RPC_FRAME_LIMIT  # room for the message envelope
    k2v = parse_config(minimal(k2v_api={"api_bind_addr": "[::]:3904"})).k2v_api
    assert k2v is not None and k2v.max_item_bytes == DEFAULT_MAX_ITEM_BYTES
    k2v = parse_config(minimal(k2v_api={"api_bind_addr": "[::]:3904", "max_item_bytes": "64KiB"})).k2v_api
    assert k2v is not None and k2v.max_item_bytes == 64 * 1024
    for bad in (0, "16MiB", RPC_FRAME_LIMIT):
        message = parse_error(minimal(k2v_api={"api_bind_addr": "[::]:3904", "max_item_bytes": bad}))
        assert message.startswith("'k2v_api.max_item_bytes' must be between 1 byte and"), message
        assert "RPC frame limit" in message


# --- addresses and peers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        ("127.0.0.1:3901", ("127.0.0.1", 3901)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("localhost:65535", ("localhost", 65535)),
        ("node-1.example.com:3901", ("node-1.example.com", 3901)),
        ("[::]:3901", ("::", 3901)),
        ("[::1]:3901", ("::1", 3901)),
        ("[fd00::1:2]:80", ("fd00::1:2", 80)),
    ],
)
def test_split_host_port(addr: str, expected: tuple[str, int]) -> None:
    assert split_host_port(addr) == expected
    assert parse_config(minimal(rpc_bind_addr=addr)).rpc_bind_addr == addr


@pytest.mark.parametrize(
    ("addr", "reason"),
    [
        ("127.0.0.1", "':port' part is missing"),
        ("127.0.0.1:", "port '' is not a number"),
        (":3901", "is not a host name"),
        ("127.0.0.1:65536", "port '65536' is not a number in 0..65535"),
        ("127.0.0.1:-1", "not a number"),
        ("127.0.0.1:39o1", "not a number"),
        ("::1:3901", "must be in brackets"),
        ("[::1]3901", "[addr]:port"),
        ("[::1]", "[addr]:port"),
        ("[nothost]:3901", "is not an IPv6 address"),
        ("bad host:3901", "is not a host name"),
        ("http://x:3901", "is not a host name"),
    ],
)
def test_bad_address(addr: str, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        split_host_port(addr)
    assert reason in str(info.value)
    for data, key in [
        (minimal(rpc_bind_addr=addr), "rpc_bind_addr"),
        (minimal(rpc_public_addr=addr), "rpc_public_addr"),
        (minimal(k2v_api={"api_bind_addr": addr}), "k2v_api.api_bind_addr"),
        (minimal(admin={"api_bind_addr": addr}), "admin.api_bind_addr"),
        (minimal(s3_api={"s3_region": "g", "api_bind_addr": addr}), "s3_api.api_bind_addr"),
    ]:
        message = parse_error(data)
        assert message.startswith(f"'{key}' is not a valid host:port address: ")
        assert reason in message
        assert "(example: " in message


@pytest.mark.parametrize(
    ("peer", "needle"),
    [
        ("10.0.0.2:3901", "node id of 64 hex characters followed by '@'"),
        (f"{NODE_ID[:-2]}@10.0.0.2:3901", "64 hex characters"),
        (f"{'zz' * 32}@10.0.0.2:3901", "64 hex characters"),
        (f"{NODE_ID}@10.0.0.2", "':port' part is missing"),
        (f"{NODE_ID}@::1:3901", "must be in brackets"),
    ],
)
def test_bad_bootstrap_peer(peer: str, needle: str) -> None:
    message = parse_error(minimal(bootstrap_peers=[f"{NODE_ID}@10.0.0.1:3901", peer]))
    assert message.startswith("'bootstrap_peers[1]'")
    assert needle in message
    assert "example: bootstrap_peers = " in message


# --- rpc_secret -------------------------------------------------------------------------------


def test_rpc_secret_value() -> None:
    config = parse_config(minimal(rpc_secret=SECRET.upper()))
    assert config.rpc_secret_bytes == bytes.fromhex(SECRET)
    assert config.rpc_secret_bytes is not None and len(config.rpc_secret_bytes) == 32


@pytest.mark.parametrize("secret", ["abc", SECRET[:-1], SECRET + "0", "g" * 64, " " + SECRET[1:]])
def test_rpc_secret_must_be_64_hex(secret: str) -> None:
    message = parse_error(minimal(rpc_secret=secret))
    assert message.startswith("'rpc_secret' must be exactly 64 hex characters")
    assert "openssl rand -hex 32" in message
    assert secret not in message


def test_rpc_secret_and_file_are_exclusive(tmp_path: Path) -> None:
    write(tmp_path / "s", SECRET)
    message = parse_error(minimal(rpc_secret=SECRET, rpc_secret_file="s"), tmp_path)
    assert "only one of 'rpc_secret' and 'rpc_secret_file' may be set" in message


@posix_only
def test_rpc_secret_file_0600_trailing_whitespace_trimmed(tmp_path: Path) -> None:
    write(tmp_path / "secret", SECRET + "\n  \n", 0o600)
    config = parse_config(minimal(rpc_secret_file="secret"), base_dir=tmp_path)
    assert config.rpc_secret == SECRET


@posix_only
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o601])
def test_rpc_secret_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path / "secret", SECRET, mode)
    message = parse_error(minimal(rpc_secret_file=str(path)))
    assert message.startswith("'rpc_secret_file': secret file")
    assert str(path) in message
    assert f"mode {mode:04o}" in message
    assert "allow_world_readable_secrets" in message


@posix_only
def test_rpc_secret_file_allow_world_readable(tmp_path: Path) -> None:
    write(tmp_path / "secret", SECRET, 0o644)
    config = parse_config(minimal(rpc_secret_file="secret", allow_world_readable_secrets=True), tmp_path)
    assert config.rpc_secret == SECRET


def test_rpc_secret_file_relative_to_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "rpc_secret", SECRET)
    cfg = write(tmp_path / "c.toml", 'metadata_dir = "m"\nrpc_secret_file = "rpc_secret"\n[s3_api]\ns3_region = "g"\n')
    monkeypatch.chdir("/")
    assert load_config(cfg).rpc_secret == SECRET


def test_rpc_secret_file_missing(tmp_path: Path) -> None:
    message = parse_error(minimal(rpc_secret_file="nope"), tmp_path)
    assert message.startswith("'rpc_secret_file': cannot read secret file")
    assert str(tmp_path / "nope") in message


def test_rpc_secret_file_empty(tmp_path: Path) -> None:
    write(tmp_path / "secret", "\n")
    assert "is empty" in parse_error(minimal(rpc_secret_file="secret"), tmp_path)


def test_rpc_secret_file_bad_content_names_file(tmp_path: Path) -> None:
    write(tmp_path / "secret", "not-a-secret")
    message = parse_error(minimal(rpc_secret_file="secret"), tmp_path)
    assert message.startswith("'rpc_secret_file' (")
    assert "must be exactly 64 hex characters" in message
    assert "not-a-secret" not in message


def test_rpc_secret_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GARAGEKV_RPC_SECRET", SECRET)
    assert parse_config(minimal()).rpc_secret == SECRET


def test_rpc_secret_from_env_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write(tmp_path / "secret", SECRET + "\n")
    monkeypatch.setenv("GARAGEKV_RPC_SECRET_FILE", str(path))
    assert parse_config(minimal()).rpc_secret == SECRET


@posix_only
def test_rpc_secret_env_file_permissions_checked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write(tmp_path / "secret", SECRET, 0o644)
    monkeypatch.setenv("GARAGEKV_RPC_SECRET_FILE", str(path))
    assert parse_error(minimal()).startswith("$GARAGEKV_RPC_SECRET_FILE: secret file")


def test_rpc_secret_env_both_is_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GARAGEKV_RPC_SECRET", SECRET)
    monkeypatch.setenv("GARAGEKV_RPC_SECRET_FILE", str(write(tmp_path / "secret", SECRET)))
    assert "only one of $GARAGEKV_RPC_SECRET and $GARAGEKV_RPC_SECRET_FILE" in parse_error(minimal())


def test_rpc_secret_config_wins_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GARAGEKV_RPC_SECRET", "ff" * 32)
    assert parse_config(minimal(rpc_secret=SECRET)).rpc_secret == SECRET


def test_rpc_secret_bad_env_names_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GARAGEKV_RPC_SECRET", "short")
    assert parse_error(minimal()).startswith("$GARAGEKV_RPC_SECRET must be exactly 64 hex characters")


def test_empty_env_secret_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GARAGEKV_RPC_SECRET", "")
    assert parse_config(minimal()).rpc_secret is None


# --- admin tokens -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["admin_token", "metrics_token"])
def test_token_value_and_file(tmp_path: Path, name: str) -> None:
    assert getattr(parse_config(minimal(admin={name: "tok"})).admin, name) == "tok"
    write(tmp_path / "tok", "from-file\n")
    assert getattr(parse_config(minimal(admin={f"{name}_file": "tok"}), tmp_path).admin, name) == "from-file"


@pytest.mark.parametrize("name", ["admin_token", "metrics_token"])
def test_token_value_and_file_both_is_error(tmp_path: Path, name: str) -> None:
    write(tmp_path / "tok", "x")
    message = parse_error(minimal(admin={name: "tok", f"{name}_file": "tok"}), tmp_path)
    assert f"only one of 'admin.{name}' and 'admin.{name}_file' may be set" in message


@pytest.mark.parametrize(
    ("name", "env"), [("admin_token", "GARAGEKV_ADMIN_TOKEN"), ("metrics_token", "GARAGEKV_METRICS_TOKEN")]
)
def test_token_from_env_without_admin_section(monkeypatch: pytest.MonkeyPatch, name: str, env: str) -> None:
    monkeypatch.setenv(env, "env-token")
    assert getattr(parse_config(minimal()).admin, name) == "env-token"


@pytest.mark.parametrize(
    ("name", "env"), [("admin_token", "GARAGEKV_ADMIN_TOKEN"), ("metrics_token", "GARAGEKV_METRICS_TOKEN")]
)
def test_token_from_env_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, env: str) -> None:
    monkeypatch.setenv(f"{env}_FILE", str(write(tmp_path / "tok", "file-token\n")))
    assert getattr(parse_config(minimal(admin={"api_bind_addr": "[::]:3903"})).admin, name) == "file-token"


@pytest.mark.parametrize(
    ("name", "env"), [("admin_token", "GARAGEKV_ADMIN_TOKEN"), ("metrics_token", "GARAGEKV_METRICS_TOKEN")]
)
def test_token_env_value_and_file_is_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, env: str
) -> None:
    monkeypatch.setenv(env, "x")
    monkeypatch.setenv(f"{env}_FILE", str(write(tmp_path / "tok", "y")))
    assert f"only one of ${env} and ${env}_FILE may be set" in parse_error(minimal())


@posix_only
def test_token_file_permissions(tmp_path: Path) -> None:
    write(tmp_path / "tok", "t", 0o644)
    message = parse_error(minimal(admin={"admin_token_file": "tok"}), tmp_path)
    assert message.startswith("'admin.admin_token_file': secret file")
    config = parse_config(minimal(allow_world_readable_secrets=True, admin={"admin_token_file": "tok"}), tmp_path)
    assert config.admin.admin_token == "t"


def test_config_token_wins_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GARAGEKV_ADMIN_TOKEN", "env")
    assert parse_config(minimal(admin={"admin_token": "conf"})).admin.admin_token == "conf"


# --- secrets never shown ----------------------------------------------------------------------


def test_repr_hides_secrets(tmp_path: Path) -> None:
    config = parse_config(
        minimal(rpc_secret=SECRET, admin={"admin_token": "s3cr3t-admin", "metrics_token": "s3cr3t-metrics"})
    )
    for text in (repr(config), str(config), repr(config.admin)):
        assert SECRET not in text
        assert "s3cr3t-admin" not in text
        assert "s3cr3t-metrics" not in text
    assert "rpc_secret" not in repr(config)
    assert config.admin.admin_token == "s3cr3t-admin"


def test_type_error_does_not_echo_token() -> None:
    assert "12345678" not in parse_error(minimal(admin={"admin_token": 12345678}))
