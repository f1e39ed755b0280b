"""What a benchmark run is asked to do, checked before anything connects."""

from __future__ import annotations

from dataclasses import dataclass, field

from garagekv.bench.http import parse_endpoint
from garagekv.bench.workload import KeySpace

MIXES: dict[str, tuple[str, ...]] = {
    "write": ("write",),
    "read": ("read",),
    "mixed": ("read", "write"),
    "batch": ("batch",),
    "index": ("index",),
    "poll": ("notify",),
    "ttl": ("write",),
    "cas": ("cas",),
    "txn": ("txn",),
    "counter": ("increment",),
    "hulykvs-put": ("put",),
    "hulykvs-get": ("get",),
    "watch": ("write",),
}
K2V_ONLY = frozenset({"batch", "index", "poll", "ttl", "watch"})
#: PollRanges takes at most this many ranges per call (docs/k2v-api.md §8).
MAX_POLL_RANGES = 64
#: Scenarios of the Hulykvs-compatible API (their connections go to the Hulykvs endpoints).
HULY_MIXES = frozenset({"hulykvs-put", "hulykvs-get"})
#: Scenarios that need a K2V or etcd target (the consensus path / etcd Txn).
CONSENSUS_MIXES = frozenset({"cas", "txn", "counter"})


class BenchError(Exception):
    """The benchmark cannot run (bad arguments, unreachable endpoint, failed prefill)."""


@dataclass
class BenchConfig:
    target: str = "k2v"  # or "etcd"
    endpoints: list[str] = field(default_factory=list)  # host:port or http://host:port
    bucket: str = ""
    access_key_id: str = ""
    secret_access_key: str = ""
    region: str = "garage"
    mix: str = "write"
    conns: int = 64
    procs: int = 1
    duration: float = 10.0
    warmup: float = 2.0
    value_size: int = 100
    keys: int = 10_000
    per_partition: int = 1000
    key_prefix: str = "bench"
    prefill: bool = False
    batch_size: int = 100
    poll_keys: int = 1
    poll_interval: float = 0.01
    poll_timeout: int = 10
    ttl: int = 2
    watch_writers: int = 16  # watch: InsertItem connections writing into the watched partitions
    watch_ranges: int = 64  # watch: partitions each poller follows in one PollRanges call
    timeout: float = 30.0
    cas_items: int = 1  # cas: items per connection, each connection in its own partition
    counter_read: str = "linearizable"  # counter: how K2V reads after a conflict (or "plain")
    hulykvs_endpoints: list[str] = field(default_factory=list)
    hulykvs_secret: str = ""  # mints one token per connection; or:
    hulykvs_token: str = ""  # one token shared by every connection
    hulykvs_workspace: str = ""
    server_pids: list[int] = field(default_factory=list)
    run_id: str = ""
    label: str = ""

    def validate(self) -> None:
        if self.target not in ("k2v", "etcd"):
            raise BenchError(f"unknown target {self.target!r} (k2v or etcd)")
        if self.mix not in MIXES:
            raise BenchError(f"unknown mix {self.mix!r} (one of {', '.join(MIXES)})")
        if self.target == "etcd" and self.mix in K2V_ONLY:
            raise BenchError(f"the {self.mix} scenario needs a K2V endpoint")
        if self.mix in HULY_MIXES:
            self._validate_huly()
            return self._validate_load()
        if not self.endpoints:
            raise BenchError("no endpoint given (--endpoint, --dev-json or --selftest)")
        for ep in self.endpoints:
            try:
                parse_endpoint(ep)
            except ValueError as e:
                raise BenchError(str(e))
        if self.target == "k2v" and not (self.bucket and self.access_key_id and self.secret_access_key):
            raise BenchError("a K2V target needs --bucket, --access-key-id and --secret-access-key (or --dev-json)")
        self._validate_load()

    def _validate_huly(self) -> None:
        if self.target != "k2v":
            raise BenchError(f"the {self.mix} scenario runs against garagekv's Hulykvs-compatible API, not etcd")
        if not self.hulykvs_endpoints:
            raise BenchError(f"the {self.mix} scenario needs --hulykvs-endpoint (or --dev-json)")
        for ep in self.hulykvs_endpoints:
            try:
                parse_endpoint(ep)
            except ValueError as e:
                raise BenchError(str(e))
        if not (self.hulykvs_secret or self.hulykvs_token):
            raise BenchError(f"the {self.mix} scenario needs --hulykvs-secret or --hulykvs-token (or --dev-json)")
        if not self.hulykvs_workspace:
            raise BenchError(f"the {self.mix} scenario needs --hulykvs-workspace (or --dev-json)")

    def _validate_load(self) -> None:
        if self.conns < 1 or self.procs < 1:
            raise BenchError("--conns and --procs must be at least 1")
        if self.procs > self.conns:
            raise BenchError("--procs cannot exceed --conns")
        if self.duration <= 0 or self.warmup < 0:
            raise BenchError("--duration must be positive and --warmup not negative")
        if self.keys < 1 or self.per_partition < 1 or self.batch_size < 1 or self.poll_keys < 1 or self.cas_items < 1:
            raise BenchError("--keys, --per-partition, --batch-size, --poll-keys and --cas-items must be at least 1")
        if self.mix == "poll" and self.value_size < 8:
            raise BenchError("the poll scenario needs --value-size of at least 8 (the value carries a timestamp)")
        if self.counter_read not in ("linearizable", "plain"):
            raise BenchError(f"--counter-read is linearizable or plain, not {self.counter_read!r}")
        if self.value_size < 0:
            raise BenchError("--value-size cannot be negative")
        if self.ttl < 1:
            raise BenchError("--ttl must be at least 1 second")
        if self.mix == "watch":
            if not 1 <= self.watch_ranges <= MAX_POLL_RANGES:
                raise BenchError(f"--watch-ranges must be 1 to {MAX_POLL_RANGES} (the PollRanges limit)")
            if self.watch_writers < 1:
                raise BenchError("--watch-writers must be at least 1")

    @property
    def keyspace(self) -> KeySpace:
        return KeySpace(self.key_prefix, self.keys, self.per_partition)


def host_header(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
