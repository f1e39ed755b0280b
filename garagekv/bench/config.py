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
}
K2V_ONLY = frozenset({"batch", "index", "poll", "ttl"})


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
    timeout: float = 30.0
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
        if not self.endpoints:
            raise BenchError("no endpoint given (--endpoint, --dev-json or --selftest)")
        for ep in self.endpoints:
            try:
                parse_endpoint(ep)
            except ValueError as e:
                raise BenchError(str(e))
        if self.target == "k2v" and not (self.bucket and self.access_key_id and self.secret_access_key):
            raise BenchError("a K2V target needs --bucket, --access-key-id and --secret-access-key (or --dev-json)")
        if self.conns < 1 or self.procs < 1:
            raise BenchError("--conns and --procs must be at least 1")
        if self.procs > self.conns:
            raise BenchError("--procs cannot exceed --conns")
        if self.duration <= 0 or self.warmup < 0:
            raise BenchError("--duration must be positive and --warmup not negative")
        if self.keys < 1 or self.per_partition < 1 or self.batch_size < 1 or self.poll_keys < 1:
            raise BenchError("--keys, --per-partition, --batch-size and --poll-keys must be at least 1")
        if self.mix == "poll" and self.value_size < 8:
            raise BenchError("the poll scenario needs --value-size of at least 8 (the value carries a timestamp)")
        if self.value_size < 0:
            raise BenchError("--value-size cannot be negative")
        if self.ttl < 1:
            raise BenchError("--ttl must be at least 1 second")

    @property
    def keyspace(self) -> KeySpace:
        return KeySpace(self.key_prefix, self.keys, self.per_partition)


def host_header(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
