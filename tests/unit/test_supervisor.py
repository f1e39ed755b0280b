"""The supervisor of a multi-worker host: host id, worker configs, restart policy, merged metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from garagekv.admin.metrics import NodeMetrics, merge_host_metrics
from garagekv.net.identity import load_or_create_node_key
from garagekv.supervisor import (
    RESTART_MAX,
    RESTART_MIN,
    STABLE_AFTER,
    Supervisor,
    Worker,
    load_or_create_host_id,
    worker_config,
    worker_dir,
)
from garagekv.util.config import parse_config
from garagekv.util.errors import ConfigError


def config(tmp_path: Path, **extra):
    return parse_config(
        {"metadata_dir": str(tmp_path / "meta"), "s3_api": {"s3_region": "garage"}, "rpc_bind_addr": "0.0.0.0:3901"}
        | extra
    )


def test_the_host_id_is_made_once_and_kept(tmp_path):
    first = load_or_create_host_id(tmp_path)
    assert len(first) == 32 and load_or_create_host_id(tmp_path) == first
    (tmp_path / "host_id").write_bytes(b"short")
    with pytest.raises(ConfigError, match="should hold 32 bytes"):
        load_or_create_host_id(tmp_path)


def test_each_worker_knows_its_siblings(tmp_path):
    cfg = config(tmp_path)
    ids = [load_or_create_node_key(worker_dir(cfg.metadata_dir, i)).node_id for i in range(3)]
    w = worker_config(cfg, 1, b"\x01" * 32, 3)
    assert w.rpc_bind_addr == "0.0.0.0:3902" and w.metadata_dir == cfg.metadata_dir / "worker-1"
    # A wildcard bind address is dialled on loopback by the siblings.
    assert w.bootstrap_peers == (f"{ids[0].hex()}@127.0.0.1:3901", f"{ids[2].hex()}@127.0.0.1:3903")


class _Exited:
    pid = 4242


def _exit(sup: Supervisor, w: Worker, code: int, ran: float, monkeypatch) -> int | None:
    import garagekv.supervisor as mod

    now = 1000.0
    monkeypatch.setattr(mod.time, "monotonic", lambda: now)
    w.started_at = now - ran
    w.proc = _Exited()  # type: ignore[assignment]
    return sup._on_exit(w, 4242, code)


def test_a_dying_worker_is_restarted_later_and_later(tmp_path, monkeypatch):
    sup = Supervisor(config(tmp_path), tmp_path / "c.toml", 2)
    w = sup.workers[1]
    w.starts = 3
    delays = []
    for _ in range(10):
        assert _exit(sup, w, 1, ran=1.0, monkeypatch=monkeypatch) is None
        delays.append(w.restart_at - 1000.0)
        w.starts += 1
    assert delays[:4] == [RESTART_MIN, 2 * RESTART_MIN, 4 * RESTART_MIN, 8 * RESTART_MIN]
    assert max(delays) == RESTART_MAX
    # A run that lasted long enough starts the delays over.
    _exit(sup, w, -9, ran=STABLE_AFTER, monkeypatch=monkeypatch)
    assert w.restart_at - 1000.0 == RESTART_MIN


def test_an_error_at_the_first_start_stops_the_host_but_a_signal_does_not(tmp_path, monkeypatch):
    sup = Supervisor(config(tmp_path), tmp_path / "c.toml", 2)
    w = sup.workers[0]
    w.starts = 1
    assert _exit(sup, w, 1, ran=0.5, monkeypatch=monkeypatch) == 1
    assert _exit(sup, w, -9, ran=0.5, monkeypatch=monkeypatch) is None  # killed: restarted
    w.starts = 2
    assert _exit(sup, w, 3, ran=0.5, monkeypatch=monkeypatch) is None  # later runs: restarted


def test_host_metrics_merge_every_worker_under_its_label():
    texts = []
    for i in range(3):
        m = NodeMetrics(node_id=f"node{i}", version="v")
        m.observe_k2v("InsertItem", 204, None, 0.01 * (i + 1))
        texts.append((i, f"node{i}", m.render() if i != 2 else None))  # worker 2 did not answer
    merged = merge_host_metrics("h1", 3, texts).decode()
    families = {f.name: f for f in text_string_to_metric_families(merged)}  # a valid exposition
    requests = families["garagekv_api_k2v_requests"]
    totals = {s.labels["host_worker"]: s.value for s in requests.samples if s.name.endswith("_total")}
    assert totals == {"0": 1.0, "1": 1.0}
    info = {s.labels["host_worker"]: s.labels["node_id"] for s in families["garagekv_build_info"].samples}
    assert info == {"0": "node0", "1": "node1"}
    up = {s.labels["host_worker"]: s.value for s in families["garagekv_host_worker_up"].samples}
    assert up == {"0": 1.0, "1": 1.0, "2": 0.0}
    assert families["garagekv_host_workers"].samples[0].value == 3
    assert families["garagekv_host_workers_up"].samples[0].value == 2
    assert (
        merged.count("# TYPE garagekv_api_k2v_requests_total counter")
        + merged.count("# TYPE garagekv_api_k2v_requests counter")
        == 1
    )
