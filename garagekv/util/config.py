"""Node configuration: a TOML file turned into typed, validated, frozen dataclasses.

Why so strict: a typo that silently falls back to a default is how a "3-way replicated" cluster
ends up running with ``replication_factor = 1``. So, unlike Garage, unknown keys are errors, and
every message names the full dotted key, what was expected and an example line to copy. Keys that
Garage accepts but a K2V-only node has no use for are tolerated, so an existing ``garage.toml``
still loads. Every value is checked here, once, so the rest of the node can trust ``Config``.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

from garagekv.util.errors import ConfigError

KiB = 1024
MiB = 1024 * KiB
TiB = MiB * MiB

CONFIG_ENV = "GARAGEKV_CONFIG"
DEFAULT_CONFIG_PATH = "/etc/garagekv.toml"
MAX_KEY_BYTES = 479  # docs/k2v-api.md §10: partition and sort keys fit in an LMDB key
LMDB_PAGE = 4096
CONSISTENCY_MODES = ("consistent", "degraded", "dangerous")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
#: The largest RPC message a node accepts (keep equal to ``garagekv.net.channel.MAX_RECORD_SIZE``;
#: this layer cannot import it). ``max_item_bytes`` must stay below it.
RPC_FRAME_LIMIT = 16 * MiB + 64 * KiB
#: Default ``[k2v_api] max_item_bytes``: an item (all its values and its causal context) must fit in
#: one RPC message with room to spare for the envelope, so replicas, reads and anti-entropy can
#: always move it.
DEFAULT_MAX_ITEM_BYTES = 15 * MiB


@dataclass(frozen=True, kw_only=True)
class S3ApiConfig:
    """``[s3_api]``: K2V only needs the region, which is also the SigV4 signing region."""

    s3_region: str
    api_bind_addr: str | None = None  # accepted for garage.toml compatibility; no S3 server here
    root_domain: str | None = None  # likewise accepted and unused


@dataclass(frozen=True, kw_only=True)
class K2VApiConfig:
    """``[k2v_api]``: the section's presence enables the K2V HTTP server; limits are enforced there."""

    api_bind_addr: str
    cors_allowed_origins: tuple[str, ...] = ()
    max_body_bytes: int = 16 * MiB
    max_batch_items: int = 1000
    max_key_bytes: int = MAX_KEY_BYTES
    max_item_bytes: int = DEFAULT_MAX_ITEM_BYTES


@dataclass(frozen=True, kw_only=True)
class AdminConfig:
    """``[admin]``: no admin token disables the admin endpoints; no metrics token leaves /metrics open."""

    api_bind_addr: str | None = None
    admin_token: str | None = field(default=None, repr=False)
    metrics_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True, kw_only=True)
class Config:
    """One node's configuration. Build it with ``load_config`` / ``parse_config`` (they validate)."""

    metadata_dir: Path
    s3_api: S3ApiConfig
    source: Path | None = None  # the file it was read from, for messages that must name it
    data_dir: Path | None = None  # accepted for garage.toml compatibility: K2V stores no blocks
    db_engine: str = "lmdb"
    lmdb_map_size: int = TiB
    metadata_fsync: bool = True  # unlike Garage: acknowledged writes must survive a power cut
    replication_factor: int = 1
    consistency_mode: str = "consistent"
    rpc_bind_addr: str = "127.0.0.1:3901"
    rpc_public_addr: str | None = None
    rpc_secret: str | None = field(default=None, repr=False)
    rpc_ping_timeout_msec: int = 10_000
    rpc_ping_interval_msec: int = 15_000
    rpc_timeout_msec: int = 300_000
    bootstrap_peers: tuple[str, ...] = ()
    allow_world_readable_secrets: bool = False
    allow_punycode: bool = False
    log_level: str = "info"
    log_format: str = "text"
    tombstone_gc_delay_sec: int = 86_400
    sync_interval_sec: int = 600
    sync_startup_delay_sec: int = 10
    metadata_snapshots_dir: Path | None = None  # None: metadata_dir/snapshots
    metadata_auto_snapshot_interval: float | None = None  # seconds; None: only on request
    metadata_snapshots_keep: int = 2
    ignored_keys: tuple[str, ...] = ()  # Garage keys present in the file that a K2V node ignores
    # Node processes this host runs (``workers``; "auto" = the CPU cores it may use). Above 1,
    # ``garagekv server`` supervises that many workers, each a node of its own (docs/deploy.md).
    workers: int = 1
    # Set only in a worker's own config (``for_worker``), never from the file: the supervising
    # process's persisted host id and this worker's index on the host.
    host_id: bytes | None = field(default=None, repr=False)
    worker_index: int | None = None
    k2v_api: K2VApiConfig | None = None
    admin: AdminConfig = field(default_factory=AdminConfig)
    hulykvs_api: HulykvsApiConfig | None = None

    @property
    def snapshots_dir(self) -> Path:
        return self.metadata_snapshots_dir or self.metadata_dir / "snapshots"

    @property
    def is_worker(self) -> bool:
        """This config is one worker's of a host running several (the listeners are shared)."""
        return self.worker_index is not None

    @property
    def single_node_deployment(self) -> bool:
        """``replication_factor = 1`` and no ``bootstrap_peers``: a node meant to run alone.

        Only such a node serves K2V before a layout is applied (see docs/operations.md); any
        other node waits for the cluster's layout rather than acknowledge writes on its own.
        """
        return self.replication_factor == 1 and not self.bootstrap_peers

    @property
    def rpc_secret_bytes(self) -> bytes | None:
        """The 32-byte network key, as the handshake wants it."""
        return bytes.fromhex(self.rpc_secret) if self.rpc_secret is not None else None


# Example values (TOML right-hand sides) quoted in error messages, by dotted key.
_EXAMPLES: dict[str, str] = {
    "metadata_dir": '"/var/lib/garagekv/meta"',
    "data_dir": '"/var/lib/garagekv/data"',
    "db_engine": '"lmdb"',
    "lmdb_map_size": '"1T"',
    "metadata_fsync": "true",
    "replication_factor": "3",
    "consistency_mode": '"consistent"',
    "rpc_bind_addr": '"[::]:3901"',
    "rpc_public_addr": '"10.0.0.1:3901"',
    "rpc_secret": '"<64 hex characters from `openssl rand -hex 32`>"',
    "rpc_secret_file": '"/etc/garagekv/rpc_secret"',
    "rpc_ping_timeout_msec": "10000",
    "rpc_ping_interval_msec": "15000",
    "rpc_timeout_msec": "300000",
    "bootstrap_peers": '["<node id: 64 hex>@10.0.0.2:3901"]',
    "allow_world_readable_secrets": "false",
    "allow_punycode": "false",
    "log_level": '"info"',
    "log_format": '"text"',
    "tombstone_gc_delay_sec": "86400",
    "sync_interval_sec": "600",
    "sync_startup_delay_sec": "10",
    "metadata_snapshots_dir": '"/var/lib/garagekv/snapshots"',
    "metadata_auto_snapshot_interval": '"6h"',
    "metadata_snapshots_keep": "2",
    "workers": '4 (or "auto": one per CPU core)',
    "s3_api.s3_region": '"garage"',
    "s3_api.api_bind_addr": '"[::]:3900"',
    "s3_api.root_domain": '".s3.garage.localhost"',
    "k2v_api.api_bind_addr": '"[::]:3904"',
    "k2v_api.cors_allowed_origins": '["https://app.example.com"]',
    "k2v_api.max_body_bytes": '"16MiB"',
    "k2v_api.max_batch_items": "1000",
    "k2v_api.max_key_bytes": "479",
    "k2v_api.max_item_bytes": '"15MiB"',
    "admin.api_bind_addr": '"[::]:3903"',
    "admin.admin_token": '"<random string from `openssl rand -base64 32`>"',
    "admin.admin_token_file": '"/etc/garagekv/admin_token"',
    "admin.metrics_token": '"<random string from `openssl rand -base64 32`>"',
    "admin.metrics_token_file": '"/etc/garagekv/metrics_token"',
}

_SECTION_EXAMPLES = {
    "s3_api": '[s3_api] s3_region = "garage"',
    "k2v_api": '[k2v_api] api_bind_addr = "[::]:3904"',
    "admin": '[admin] api_bind_addr = "[::]:3903"',
}

_TOP_KEYS = (
    "metadata_dir", "data_dir", "db_engine", "lmdb_map_size", "metadata_fsync", "replication_factor",
    "consistency_mode", "rpc_bind_addr", "rpc_public_addr", "rpc_secret", "rpc_secret_file",
    "rpc_ping_timeout_msec", "rpc_ping_interval_msec", "rpc_timeout_msec", "bootstrap_peers",
    "allow_world_readable_secrets",
    "allow_punycode", "log_level", "log_format", "tombstone_gc_delay_sec", "sync_interval_sec",
    "sync_startup_delay_sec", "metadata_snapshots_dir", "metadata_auto_snapshot_interval",
    "metadata_snapshots_keep", "workers", "s3_api", "k2v_api", "admin", "hulykvs_api",
)  # fmt: skip
# Garage keys with no meaning for a K2V-only node: accepted without any check so garage.toml loads.
_TOP_TOLERATED = frozenset({
    "block_size", "block_ram_buffer_max", "compression_level", "data_fsync", "disable_scrub",
    "use_local_tz", "rpc_public_addr_subnet", "rpc_bind_outgoing",
    "s3_web", "consul_discovery", "kubernetes_discovery",
})  # fmt: skip
_S3_KEYS = ("s3_region", "api_bind_addr", "root_domain")
_K2V_KEYS = (
    "api_bind_addr", "cors_allowed_origins", "max_body_bytes", "max_batch_items", "max_key_bytes", "max_item_bytes",
)  # fmt: skip
_ADMIN_KEYS = ("api_bind_addr", "admin_token", "admin_token_file", "metrics_token", "metrics_token_file")
_ADMIN_TOLERATED = frozenset({"trace_sink"})

_MISSING: Any = object()

V = TypeVar("V")


def _present(value: V | None) -> V:
    """A required key's value: reading it with the ``_MISSING`` default already raised if absent."""
    assert value is not None
    return value


_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_HOSTNAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?\.?")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?)(b?)", re.IGNORECASE)


def default_config_path() -> Path:
    """``$GARAGEKV_CONFIG``, else ``/etc/garagekv.toml`` (the CLI's ``-c`` overrides both)."""
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)


def load_config(path: str | Path | None = None) -> Config:
    """Read and validate a config file; every error message starts with the file's path."""
    path = Path(path) if path is not None else default_config_path()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror or e}")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: config file is not valid UTF-8 ({e.reason} at byte {e.start})")
    except tomllib.TOMLDecodeError as e:  # its message ends with "(at line L, column C)"
        raise ConfigError(f"{path}: invalid TOML: {e}")
    try:
        return replace(parse_config(data, base_dir=path.absolute().parent), source=path)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}")


def parse_config(data: Mapping[str, Any], base_dir: Path | None = None) -> Config:
    """Validate an already-parsed TOML document; relative paths are resolved against ``base_dir``."""
    top = _Table(data, "", _TOP_KEYS, _TOP_TOLERATED)
    allow_wr = top.boolean("allow_world_readable_secrets", False)

    engine = top.string("db_engine", "lmdb")
    if engine not in ("lmdb", "heed"):  # "heed" is Garage's other name for its LMDB engine
        raise top.error("db_engine", f'is {engine!r}, but garagekv only supports "lmdb"')

    map_size = top.size("lmdb_map_size", TiB) // LMDB_PAGE * LMDB_PAGE
    if map_size < MiB:
        raise top.error("lmdb_map_size", f"must be at least 1 MiB, got {map_size} bytes")

    rpc_secret, source = _secret(top, "rpc_secret", "GARAGEKV_RPC_SECRET", base_dir, allow_wr)
    if rpc_secret is not None and not _HEX64.fullmatch(rpc_secret):
        raise ConfigError(
            f"{source} must be exactly 64 hex characters, got {len(rpc_secret)} characters "
            f"(generate one with: openssl rand -hex 32)"
        )

    admin_table = top.table("admin", _ADMIN_KEYS, _ADMIN_TOLERATED)
    return Config(
        metadata_dir=_present(top.path("metadata_dir", base_dir, required=True)),
        data_dir=_data_dir(top, base_dir),
        db_engine="lmdb",
        lmdb_map_size=map_size,
        metadata_fsync=top.boolean("metadata_fsync", True),
        replication_factor=top.integer("replication_factor", 1, lo=1, hi=7),
        consistency_mode=top.choice("consistency_mode", "consistent", CONSISTENCY_MODES),
        rpc_bind_addr=_present(top.address("rpc_bind_addr", "127.0.0.1:3901")),
        rpc_public_addr=top.address("rpc_public_addr", None),
        rpc_secret=rpc_secret,
        rpc_ping_timeout_msec=top.integer("rpc_ping_timeout_msec", 10_000, lo=1),
        rpc_ping_interval_msec=top.integer("rpc_ping_interval_msec", 15_000, lo=10),
        rpc_timeout_msec=top.integer("rpc_timeout_msec", 300_000, lo=1),
        bootstrap_peers=_bootstrap_peers(top),
        allow_world_readable_secrets=allow_wr,
        allow_punycode=top.boolean("allow_punycode", False),
        log_level=top.choice("log_level", "info", LOG_LEVELS),
        log_format=top.choice("log_format", "text", LOG_FORMATS),
        tombstone_gc_delay_sec=top.integer("tombstone_gc_delay_sec", 86_400, lo=0),
        sync_interval_sec=top.integer("sync_interval_sec", 600, lo=1),
        sync_startup_delay_sec=top.integer("sync_startup_delay_sec", 10, lo=0),
        metadata_snapshots_dir=top.path("metadata_snapshots_dir", base_dir),
        metadata_auto_snapshot_interval=top.duration("metadata_auto_snapshot_interval"),
        metadata_snapshots_keep=top.integer("metadata_snapshots_keep", 2, lo=1),
        workers=parse_workers(top.data.get("workers", 1), f"'{top.name('workers')}'"),
        ignored_keys=tuple(top.ignored + (admin_table.ignored if admin_table is not None else [])),
        s3_api=_s3_api(top.table("s3_api", _S3_KEYS, required=True)),
        k2v_api=_k2v_api(top.table("k2v_api", _K2V_KEYS)),
        admin=_admin(admin_table, base_dir, allow_wr),
        hulykvs_api=_hulykvs_api(top.table("hulykvs_api", _HULYKVS_KEYS), base_dir, allow_wr),
    )


#: Most worker processes one host may run: every worker is a storage node of the layout, which
#: holds at most 256 of them.
MAX_WORKERS = 256


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def parse_workers(value: Any, what: str = "--workers") -> int:
    """``workers``: an integer in 1..256, or "auto" for one per available CPU core."""
    if value == "auto":
        return min(MAX_WORKERS, available_cores())
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WORKERS:
        raise ConfigError(
            f'{what} must be an integer between 1 and {MAX_WORKERS}, or "auto" (one per CPU core); got {value!r} '
            f"(example: workers = {_EXAMPLES['workers']})"
        )
    return value


def worker_port(addr: str, index: int) -> str:
    """``host:port`` with the port moved up by ``index``: worker i's RPC address."""
    host, port = split_host_port(addr)
    if port + index > 65535:
        raise ConfigError(f"{addr}: worker {index} would need port {port + index}, above 65535")
    return f"[{host}]:{port + index}" if ":" in host else f"{host}:{port + index}"


def for_worker(config: Config, index: int, host_id: bytes, siblings: tuple[str, ...] = ()) -> Config:
    """Worker ``index``'s own config on a host running several: a node of its own.

    Its metadata (node key, LMDB environment, layout and peer list) lives in
    ``metadata_dir/worker-<index>/`` (snapshots in ``<snapshots dir>/worker-<index>/``), its RPC
    listens on ``rpc_bind_addr``'s port + ``index`` (and announces ``rpc_public_addr``'s port +
    ``index``), and it knows its siblings (``<id>@<addr>``) as bootstrap peers. The K2V, admin and
    Hulykvs listeners keep their addresses: the workers share them (SO_REUSEPORT).
    """
    return replace(
        config,
        metadata_dir=config.metadata_dir / f"worker-{index}",
        metadata_snapshots_dir=config.snapshots_dir / f"worker-{index}",
        rpc_bind_addr=worker_port(config.rpc_bind_addr, index),
        rpc_public_addr=None if config.rpc_public_addr is None else worker_port(config.rpc_public_addr, index),
        bootstrap_peers=tuple(dict.fromkeys((*config.bootstrap_peers, *siblings))),
        host_id=host_id,
        worker_index=index,
    )


def split_host_port(addr: str) -> tuple[str, int]:
    """Split ``host:port`` or ``[v6addr]:port`` (brackets removed); ValueError says what is wrong."""
    if addr.startswith("["):
        host, sep, port = addr[1:].partition("]:")
        if not sep:
            raise ValueError("an IPv6 address must be written [addr]:port")
        if not _is_ipv6(host):
            raise ValueError(f"{host!r} is not an IPv6 address")
    else:
        host, sep, port = addr.rpartition(":")
        if not sep:
            raise ValueError("the ':port' part is missing")
        if ":" in host and _is_ipv6(host):
            raise ValueError("an IPv6 address must be in brackets, like [::1]:3901")
        if not _HOSTNAME.fullmatch(host):
            raise ValueError(f"{host!r} is not a host name or IPv4 address")
    if not (port.isascii() and port.isdigit() and int(port) <= 65535):
        raise ValueError(f"port {port!r} is not a number in 0..65535")
    return host, int(port)


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string like "1T", "512G", "100M" (powers of 1000, as Garage reads them)
    or "64KiB", "1Gi" (powers of 1024); fractions are rounded down. ValueError if malformed."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    m = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
    if m is None or (m[3] and not m[2]):
        raise ValueError(f"{value!r} is not a size")
    base = 1024 if m[3] else 1000
    return int(Fraction(m[1]) * base ** " kmgtp".index(m[2].lower() or " "))


_DURATION_PART = re.compile(r"(\d+)(d|h|m|s)")
_DURATION_UNITS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}


class _Table:
    """One TOML table plus its dotted name, so that every error can name the full key."""

    def __init__(
        self,
        data: Mapping[str, Any],
        section: str,
        keys: tuple[str, ...],
        tolerated: frozenset[str] = frozenset(),
    ) -> None:
        self.data, self.section = data, section
        # Tolerated keys that are present: the node says at start-up that it ignores them.
        self.ignored = [self.name(key) for key in data if key in tolerated and key not in keys]
        for key in data:
            if key not in keys and key not in tolerated:
                where = f"in [{section}]" if section else "at top level"
                close = difflib.get_close_matches(key, keys, n=1)
                hint = f"did you mean '{self.name(close[0])}'? " if close else ""
                raise ConfigError(f"unknown key '{self.name(key)}' ({hint}valid keys {where}: {', '.join(keys)})")

    def name(self, key: str) -> str:
        return f"{self.section}.{key}" if self.section else key

    def error(self, key: str, problem: str) -> ConfigError:
        """``'<dotted key>' <problem> (example: ...)``: the shape of every value error."""
        return ConfigError(f"'{self.name(key)}' {problem} (example: {_example(self.name(key))})")

    def _get(self, key: str, kinds: type | tuple[type, ...], expected: str, default: Any) -> Any:
        if key not in self.data:
            if default is _MISSING:
                raise ConfigError(f"missing required key '{self.name(key)}' (example: {_example(self.name(key))})")
            return default
        value = self.data[key]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in _as_tuple(kinds)):
            raise self.error(key, f"must be {expected}, got {_toml_type(value)}")
        return value

    def string(self, key: str, default: str | None = None) -> str | None:
        value: str | None = self._get(key, str, "a string", default)
        if value == "":
            raise self.error(key, "must not be empty")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        return bool(self._get(key, bool, "a boolean (true or false)", default))

    def integer(self, key: str, default: int, lo: int, hi: int | None = None) -> int:
        value: int = self._get(key, int, "an integer", default)
        if value < lo or (hi is not None and value > hi):
            bounds = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            raise self.error(key, f"must be {bounds}, got {value}")
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value: str = self._get(key, str, "a string", default)
        if value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    def size(self, key: str, default: int) -> int:
        value = self._get(key, (int, str), 'a size (bytes, or a string like "512M" or "64KiB")', default)
        try:
            return parse_size(value)
        except ValueError as e:
            raise self.error(key, f'must be a size in bytes or like "512M", "1T", "64KiB": {e}')

    def address(self, key: str, default: str | None, required: bool = False) -> str | None:
        value = self.string(key, _MISSING if required else default)
        if value is not None:
            try:
                split_host_port(value)
            except ValueError as e:
                raise self.error(key, f"is not a valid host:port address: {e}")
        return value

    def path(self, key: str, base_dir: Path | None, required: bool = False) -> Path | None:
        value = self.string(key, _MISSING if required else None)
        return _resolve(value, base_dir) if value is not None else None

    def duration(self, key: str) -> float | None:
        """``"6h"``, ``"30m"``, ``"1d12h"``, ``"90s"`` or a number of seconds; None when absent."""
        value = self._get(key, (str, int), 'a duration such as "6h" or "30m"', None)
        if value is None:
            return None
        seconds: float | None = None
        if isinstance(value, int):
            seconds = value
        else:
            parts = _DURATION_PART.findall(value.replace(" ", ""))
            if parts and "".join(n + u for n, u in parts) == value.replace(" ", ""):
                seconds = sum(int(n) * _DURATION_UNITS[u] for n, u in parts)
        if seconds is None or seconds < 60:
            raise self.error(key, f'must be a duration of at least a minute, such as "6h" or "30m"; got {value!r}')
        return float(seconds)

    def strings(self, key: str) -> tuple[str, ...]:
        value = self._get(key, list, "a list of strings", [])
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise ConfigError(
                    f"'{self.name(key)}[{i}]' must be a non-empty string, got {_toml_type(item)} "
                    f"(example: {_example(self.name(key))})"
                )
        return tuple(value)

    def table(
        self, key: str, keys: tuple[str, ...], tolerated: frozenset[str] = frozenset(), required: bool = False
    ) -> _Table | None:
        if key not in self.data and required:
            raise ConfigError(f"missing required section [{key}] (example: {_example(key)})")
        value = self._get(key, dict, f"a table (a [{key}] section)", None)
        return _Table(value, key, keys, tolerated) if value is not None else None


def _s3_api(t: _Table | None) -> S3ApiConfig:
    assert t is not None  # required section: _Table.table raised already
    return S3ApiConfig(
        s3_region=_present(t.string("s3_region", _MISSING)),
        api_bind_addr=t.address("api_bind_addr", None),
        root_domain=t.string("root_domain"),
    )


def _k2v_api(t: _Table | None) -> K2VApiConfig | None:
    if t is None:
        return None
    max_body = t.size("max_body_bytes", 16 * MiB)
    if max_body < 1:
        raise t.error("max_body_bytes", "must be at least 1 byte")
    max_item = t.size("max_item_bytes", DEFAULT_MAX_ITEM_BYTES)
    if not 1 <= max_item <= DEFAULT_MAX_ITEM_BYTES:
        raise t.error(
            "max_item_bytes",
            f"must be between 1 byte and {DEFAULT_MAX_ITEM_BYTES} bytes (15 MiB, safely below the "
            f"{RPC_FRAME_LIMIT}-byte RPC frame limit), got {max_item}",
        )
    return K2VApiConfig(
        api_bind_addr=_present(t.address("api_bind_addr", None, required=True)),
        cors_allowed_origins=t.strings("cors_allowed_origins"),
        max_body_bytes=max_body,
        max_batch_items=t.integer("max_batch_items", 1000, lo=1),
        max_key_bytes=t.integer("max_key_bytes", MAX_KEY_BYTES, lo=1, hi=MAX_KEY_BYTES),
        max_item_bytes=max_item,
    )


def _admin(t: _Table | None, base_dir: Path | None, allow_wr: bool) -> AdminConfig:
    """Always built, even without an [admin] section, because tokens may come from the environment."""
    t = t or _Table({}, "admin", _ADMIN_KEYS)
    return AdminConfig(
        api_bind_addr=t.address("api_bind_addr", None),
        admin_token=_secret(t, "admin_token", "GARAGEKV_ADMIN_TOKEN", base_dir, allow_wr)[0],
        metrics_token=_secret(t, "metrics_token", "GARAGEKV_METRICS_TOKEN", base_dir, allow_wr)[0],
    )


def _data_dir(top: _Table, base_dir: Path | None) -> Path | None:
    """Garage allows a path or a list of ``{path, capacity}`` tables; K2V uses neither, so a list
    is accepted as is and gives ``None``."""
    if isinstance(top.data.get("data_dir"), list):
        return None
    return top.path("data_dir", base_dir)


def _bootstrap_peers(top: _Table) -> tuple[str, ...]:
    peers = top.strings("bootstrap_peers")
    for i, peer in enumerate(peers):
        node_id, sep, addr = peer.partition("@")
        try:
            if not sep or not _HEX64.fullmatch(node_id):
                raise ValueError("it must start with a node id of 64 hex characters followed by '@'")
            split_host_port(addr)
        except ValueError as e:
            raise ConfigError(
                f"'{top.name('bootstrap_peers')}[{i}]' = {peer!r} is not <node id>@<host>:<port>: {e} "
                f"(example: {_example('bootstrap_peers')})"
            )
    return peers


def _secret(t: _Table, key: str, env: str, base_dir: Path | None, allow_world_readable: bool) -> tuple[str | None, str]:
    """A secret, and where it came from (for error messages), from ``key`` or ``key_file`` in the
    config, or else from ``$env`` / ``$env_FILE``. A value and a file at once is ambiguous: error."""
    file_key = f"{key}_file"
    value, file = t.string(key), t.string(file_key)
    value_src, file_src = f"'{t.name(key)}'", f"'{t.name(file_key)}'"
    path = _resolve(file, base_dir) if file is not None else None
    if value is None and file is None:
        env_file = os.environ.get(f"{env}_FILE")
        value, value_src = os.environ.get(env) or None, f"${env}"
        path, file_src = (Path(env_file) if env_file else None), f"${env}_FILE"
    if value is not None and path is not None:
        raise ConfigError(f"only one of {value_src} and {file_src} may be set")
    if path is None:
        return value, value_src
    return _read_secret_file(path, file_src, allow_world_readable), f"{file_src} ({path})"


def _read_secret_file(path: Path, src: str, allow_world_readable: bool) -> str:
    """Refuse secrets that other local users can read: they would let them join the cluster."""
    try:
        mode = path.stat().st_mode
        if os.name == "posix" and not allow_world_readable and mode & 0o077:
            raise ConfigError(
                f"{src}: secret file {path} is accessible by group or others (mode {mode & 0o777:04o}); "
                f"run `chmod 600 {path}` or set allow_world_readable_secrets = true"
            )
        secret = path.read_text(encoding="utf-8").rstrip()
    except OSError as e:
        raise ConfigError(f"{src}: cannot read secret file {path}: {e.strerror or e}")
    except UnicodeDecodeError:
        raise ConfigError(f"{src}: secret file {path} is not valid UTF-8")
    if not secret:
        raise ConfigError(f"{src}: secret file {path} is empty")
    return secret


def _resolve(value: str, base_dir: Path | None) -> Path:
    path = Path(value)
    return base_dir / path if base_dir is not None and not path.is_absolute() else path


def _example(dotted: str) -> str:
    if dotted in _SECTION_EXAMPLES:
        return _SECTION_EXAMPLES[dotted]
    section, _, key = dotted.rpartition(".")
    line = f"{key} = {_EXAMPLES.get(dotted, '...')}"
    return f"{line} in [{section}]" if section else line


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def _as_tuple(kinds: type | tuple[type, ...]) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def _toml_type(value: object) -> str:
    names = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}
    return names.get(type(value), type(value).__name__)


# ---- [hulykvs_api]: the Hulykvs-compatible HTTP API (docs/hulykvs.md) ------------------------------

#: Default payload limit of the Hulykvs API, as Hulykvs's own default (2 MiB).
HULYKVS_DEFAULT_PAYLOAD = 2 * MiB
#: A Hulykvs value is one K2V value: two of them (a K2V client writing concurrently) must fit in an item.
HULYKVS_MAX_PAYLOAD = 7 * MiB
#: The canonical form of a workspace UUID (8-4-4-4-12 lowercase hex digits).
_UUID_CANONICAL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_HULYKVS_KEYS = (
    "api_bind_addr", "bucket", "token_secret", "token_secret_file", "payload_size_limit", "default_workspace_uuid",
)  # fmt: skip
_EXAMPLES.update(
    {
        "hulykvs_api": '[hulykvs_api] api_bind_addr = "[::]:8094"',
        "hulykvs_api.api_bind_addr": '"[::]:8094"',
        "hulykvs_api.bucket": '"hulykvs"',
        "hulykvs_api.token_secret": '"<the token secret of the Huly deployment>"',
        "hulykvs_api.token_secret_file": '"/etc/garagekv/huly_token_secret"',
        "hulykvs_api.payload_size_limit": '"2MiB"',
        "hulykvs_api.default_workspace_uuid": '"4a5b1c2d-0000-4000-8000-000000000001"',
    }
)
_SECTION_EXAMPLES["hulykvs_api"] = _EXAMPLES["hulykvs_api"]


@dataclass(frozen=True, kw_only=True)
class HulykvsApiConfig:
    """``[hulykvs_api]``: the section's presence enables the Hulykvs-compatible listener."""

    api_bind_addr: str
    bucket: str = "hulykvs"
    token_secret: str = field(repr=False)
    payload_size_limit: int = HULYKVS_DEFAULT_PAYLOAD
    default_workspace_uuid: str  # canonical hyphenated lowercase
    ignored_env: tuple[str, ...] = ()  # HULY_* variables that make no sense here (logged at start-up)


def canonical_uuid(text: str) -> str | None:
    """A UUID in any of its usual spellings (hyphenated, 32 hex digits, ``{...}``, ``urn:uuid:...``;
    any case) as canonical lowercase hyphenated text, or None. Stricter than ``uuid.UUID``, which
    also accepts hyphens in any place, and than ``str.strip``: surrounding whitespace or control
    characters make it None (a request's workspace or a token's claim must be the UUID alone)."""
    t = text if isinstance(text, str) else ""
    if t[:9].lower() == "urn:uuid:":
        t = t[9:]
    elif t.startswith("{") and t.endswith("}"):
        t = t[1:-1]
    t = t.lower()
    if len(t) == 32 and re.fullmatch(r"[0-9a-f]{32}", t):
        t = f"{t[:8]}-{t[8:12]}-{t[12:16]}-{t[16:20]}-{t[20:]}"
    return t if _UUID_CANONICAL.fullmatch(t) else None


def _hulykvs_api(t: _Table | None, base_dir: Path | None, allow_wr: bool) -> HulykvsApiConfig | None:
    """Hulykvs's ``HULY_*`` environment variables override the file, as they configure Hulykvs."""
    if t is None:
        return None
    env = os.environ
    addr = t.address("api_bind_addr", None, required=True)
    host, port = split_host_port(_present(addr))
    env_host, env_port = env.get("HULY_BIND_HOST"), env.get("HULY_BIND_PORT")
    if env_host or env_port:
        host = env_host or host
        port_text = env_port or str(port)
        bracket = f"[{host}]" if ":" in host and not host.startswith("[") else host
        addr = f"{bracket}:{port_text}"
        try:
            split_host_port(addr)
        except ValueError as e:
            raise ConfigError(f"$HULY_BIND_HOST/$HULY_BIND_PORT give {addr!r}, not a valid host:port address: {e}")
    secret = env.get("HULY_TOKEN_SECRET") or None
    if secret is None:
        secret, _ = _secret(t, "token_secret", "GARAGEKV_HULY_TOKEN_SECRET", base_dir, allow_wr)
    if secret is None:
        raise ConfigError(
            f"missing required key '{t.name('token_secret')}' (example: {_example(t.name('token_secret'))}), "
            "or token_secret_file / $HULY_TOKEN_SECRET"
        )
    limit = t.size("payload_size_limit", HULYKVS_DEFAULT_PAYLOAD)
    if env.get("HULY_PAYLOAD_SIZE_LIMIT"):
        try:
            limit = parse_size(env["HULY_PAYLOAD_SIZE_LIMIT"])
        except ValueError as e:
            raise ConfigError(f"$HULY_PAYLOAD_SIZE_LIMIT: {e} (example: 2MiB)")
    if not 1 <= limit <= HULYKVS_MAX_PAYLOAD:
        raise t.error("payload_size_limit", f"must be between 1 byte and {HULYKVS_MAX_PAYLOAD} bytes, got {limit}")
    ws_text = env.get("HULY_DEFAULT_WORKSPACE_UUID") or t.string("default_workspace_uuid", _MISSING)
    ws = canonical_uuid(_present(ws_text).strip())
    if ws is None:
        raise t.error("default_workspace_uuid", f"must be a UUID, got {ws_text!r}")
    bucket = _present(t.string("bucket", "hulykvs"))
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        raise t.error("bucket", f"must be a bucket name (3-63 of a-z, 0-9, '.', '-'), got {bucket!r}")
    return HulykvsApiConfig(
        api_bind_addr=_present(addr),
        bucket=bucket,
        token_secret=secret,
        payload_size_limit=limit,
        default_workspace_uuid=ws,
        ignored_env=tuple(k for k in ("HULY_DB_CONNECTION", "HULY_DB_SCHEME") if k in env),
    )
