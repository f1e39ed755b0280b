"""``garagekv bench``: closed-loop load against a K2V endpoint (or etcd's JSON gateway).

Needs no config file: the endpoint and credentials come from flags or from the JSON line of
``garagekv dev --json`` (``--dev-json FILE`` or ``-`` for stdin), which also gives the node PIDs
used to report server CPU per operation.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from garagekv.bench.config import MIXES, BenchConfig, BenchError
from garagekv.bench.report import format_text
from garagekv.bench.runner import run_bench, start_null_server, stop_process

SELFTEST_MIXES = ("write", "read", "mixed", "batch")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bench",
        help="load-test a K2V endpoint (closed loop)",
        description="Closed-loop load generator for K2V endpoints (or etcd's v3 JSON gateway). "
        "Reports ops/s, latency percentiles, errors by status and server CPU per op.",
    )
    src = p.add_argument_group("target")
    src.add_argument(
        "--endpoint",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="endpoint (repeat or comma-separate for several: connections go round-robin)",
    )
    src.add_argument("--target", choices=("k2v", "etcd"), default="k2v", help="protocol (default k2v)")
    src.add_argument(
        "--dev-json",
        metavar="FILE|-",
        help="the JSON line of `garagekv dev --json` (endpoints of all nodes, credentials, PIDs)",
    )
    src.add_argument("--bucket", help="bucket name")
    src.add_argument("--access-key-id", help="access key id (default: --dev-json, then $AWS_ACCESS_KEY_ID)")
    src.add_argument("--secret-access-key", help="secret key (default: --dev-json, then $AWS_SECRET_ACCESS_KEY)")
    src.add_argument("--region", help="SigV4 region (default garage)")
    src.add_argument(
        "--server-pids",
        metavar="PID,...",
        help="server processes whose CPU time to report per op (default: the nodes of --dev-json)",
    )
    huly = p.add_argument_group("Hulykvs-compatible API (hulykvs-put, hulykvs-get; default: --dev-json)")
    huly.add_argument("--hulykvs-endpoint", action="append", default=[], metavar="HOST:PORT", help="endpoint(s)")
    huly.add_argument("--hulykvs-secret", help="token secret: each connection mints its own token")
    huly.add_argument("--hulykvs-token", help="one token for every connection (instead of --hulykvs-secret)")
    huly.add_argument("--hulykvs-workspace", metavar="UUID", help="the workspace the keys are written in")
    src.add_argument(
        "--selftest", action="store_true", help="run against a built-in null HTTP server: the generator's own ceiling"
    )
    load = p.add_argument_group("load")
    load.add_argument("--mix", choices=tuple(MIXES), default="write", help="scenario (default write)")
    load.add_argument("--conns", type=int, default=64, help="connections, one request in flight each (default 64)")
    load.add_argument("--procs", type=int, default=1, help="worker processes, each with its own event loop")
    load.add_argument("--duration", type=float, default=10.0, help="measured seconds (default 10)")
    load.add_argument("--warmup", type=float, default=2.0, help="seconds run before measuring (default 2)")
    load.add_argument("--value-size", type=int, default=100, help="value bytes (default 100)")
    load.add_argument("--keys", type=int, default=10_000, help="items read by read/mixed/batch (default 10000)")
    load.add_argument("--per-partition", type=int, default=1000, help="sort keys per partition key (default 1000)")
    load.add_argument("--key-prefix", default="bench", help="partition key prefix (default bench)")
    load.add_argument("--prefill", action="store_true", help="write the --keys items before the run")
    load.add_argument("--batch-size", type=int, default=100, help="items per ReadBatch range / ReadIndex page")
    load.add_argument("--poll-keys", type=int, default=1, help="poll: hot items the connections watch (default 1)")
    load.add_argument("--poll-interval", type=float, default=0.01, help="poll: seconds between updates (0.01)")
    load.add_argument(
        "--poll-timeout", type=int, default=10, help="poll, watch: PollItem/PollRanges timeout in seconds (default 10)"
    )
    load.add_argument(
        "--watch-writers", type=int, default=16, help="watch: writer connections besides the --conns pollers (16)"
    )
    load.add_argument(
        "--watch-ranges", type=int, default=64, help="watch: partitions each poller follows, at most 64 (64)"
    )
    load.add_argument("--ttl", type=int, default=2, help="ttl: seconds before each written value expires (default 2)")
    load.add_argument("--cas-items", type=int, default=1, help="cas: items per connection (default 1)")
    load.add_argument(
        "--counter-read",
        choices=("linearizable", "plain"),
        default="linearizable",
        help="counter: K2V read after a conflict, linearizable (a consensus round) or plain (a quorum read "
        "that may be stale: one more retry); etcd ranges are linearizable either way",
    )
    load.add_argument("--timeout", type=float, default=30.0, help="request timeout in seconds (default 30)")
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the result as one JSON object")
    out.add_argument("--quiet", action="store_true", help="no progress line")
    out.add_argument("--label", help="name of the run in the output")


def _read_dev_json(spec: str) -> dict[str, Any]:
    """The first JSON object line; from stdin, read only up to it (``garagekv dev --json |``
    keeps its stdout open while the cluster runs)."""
    lines = iter(sys.stdin.readline, "") if spec == "-" else Path(spec).read_text().splitlines()
    for line in lines:
        line = line.strip()
        if line.startswith("{"):
            doc: dict[str, Any] = json.loads(line)  # `garagekv dev --json` writes one object a line
            return doc
    raise BenchError(f"no JSON object in {'stdin' if spec == '-' else spec}")


def dev_pids(nodes: list[dict[str, Any]]) -> list[int]:
    """The server processes of a ``garagekv dev --json`` line: a node's, or its workers' for a
    node of several workers (its own process only supervises them)."""
    processes = [w for n in nodes for w in n.get("workers") or [n]]
    return [int(p["pid"]) for p in processes if p.get("pid")]


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    endpoints = [e.strip() for spec in args.endpoint for e in spec.split(",") if e.strip()]
    bucket, ak, sk, region = args.bucket, args.access_key_id, args.secret_access_key, args.region
    huly_eps = [e.strip() for spec in args.hulykvs_endpoint for e in spec.split(",") if e.strip()]
    huly_secret, huly_ws = args.hulykvs_secret, args.hulykvs_workspace
    pids: list[int] = []
    if args.dev_json:
        try:
            dev = _read_dev_json(args.dev_json)
        except (OSError, ValueError) as e:
            raise BenchError(f"cannot read --dev-json: {e}")
        nodes = dev.get("nodes") or [{"k2v_endpoint": dev["k2v_endpoint"]}]
        endpoints = endpoints or [n["k2v_endpoint"] for n in nodes]
        bucket = bucket or dev.get("bucket")
        ak = ak or dev.get("access_key_id")
        sk = sk or dev.get("secret_access_key")
        region = region or dev.get("region")
        huly_eps = huly_eps or [n["hulykvs_endpoint"] for n in nodes if n.get("hulykvs_endpoint")]
        huly_eps = huly_eps or ([dev["hulykvs_endpoint"]] if dev.get("hulykvs_endpoint") else [])
        if not args.hulykvs_token:
            huly_secret = huly_secret or dev.get("hulykvs_secret")
        huly_ws = huly_ws or dev.get("hulykvs_default_workspace")
        pids = [p for p in dev_pids(nodes) if Path(f"/proc/{p}").exists()]
    ak = ak or os.environ.get("AWS_ACCESS_KEY_ID")
    sk = sk or os.environ.get("AWS_SECRET_ACCESS_KEY")
    if args.server_pids:
        try:
            pids = [int(p) for p in args.server_pids.split(",") if p.strip()]
        except ValueError:
            raise BenchError(f"--server-pids must be comma-separated integers, got {args.server_pids!r}")
    return BenchConfig(
        target=args.target,
        endpoints=endpoints,
        bucket=bucket or "",
        access_key_id=ak or "",
        secret_access_key=sk or "",
        region=region or "garage",
        mix=args.mix,
        conns=args.conns,
        procs=args.procs,
        duration=args.duration,
        warmup=args.warmup,
        value_size=args.value_size,
        keys=args.keys,
        per_partition=args.per_partition,
        key_prefix=args.key_prefix,
        prefill=args.prefill,
        batch_size=args.batch_size,
        poll_keys=args.poll_keys,
        poll_interval=args.poll_interval,
        poll_timeout=args.poll_timeout,
        ttl=args.ttl,
        watch_writers=args.watch_writers,
        watch_ranges=args.watch_ranges,
        timeout=args.timeout,
        cas_items=args.cas_items,
        counter_read=args.counter_read,
        hulykvs_endpoints=huly_eps,
        hulykvs_secret=huly_secret or "",
        hulykvs_token=args.hulykvs_token or "",
        hulykvs_workspace=huly_ws or "",
        server_pids=pids,
        label=args.label or "",
    )


def run(args: argparse.Namespace) -> int:
    server = None
    try:
        cfg = config_from_args(args)
        if args.selftest:
            if args.mix not in SELFTEST_MIXES:
                raise BenchError(f"--selftest supports the mixes {', '.join(SELFTEST_MIXES)}")
            endpoint, server = start_null_server(cfg.value_size)
            cfg.target, cfg.endpoints, cfg.server_pids = "k2v", [endpoint], [server.pid]
            cfg.bucket, cfg.access_key_id, cfg.secret_access_key = "selftest", "GKselftest", "selftest-secret"
            cfg.label = cfg.label or f"selftest (null server) {cfg.mix}"
        log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
        summary = run_bench(cfg, None if args.quiet else sys.stderr, log)
    except BenchError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if server is not None:
            stop_process(server)
    if args.selftest:
        summary["selftest"] = True
    if args.json:
        print(json.dumps(summary))
    else:
        print(format_text(summary))
    return 0
